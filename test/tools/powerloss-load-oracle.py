#!/usr/bin/python3
"""Adapter: lets /work/shared/tools/powerloss/powerloss-test drive test/tools/load-oracle.py (POWERLOSS_ORACLE=this).

  powerloss-load-oracle.py write URI ACKLOG    # concurrent load until the connection breaks
  powerloss-load-oracle.py verify URI ACKLOG   # prints "verified N acknowledged blocks, M lost"; exit 1 on loss

crash-oracle.py (the harness default) writes 64 KiB blocks, one request at a time on one connection. This adapter
runs the load oracle instead: 2 connections x 8 pipelined requests of 4 KiB..1 MiB, trims and write-zeroes, FUA,
FLUSH every 20-60 requests (multi-conn semantics). ACKLOG gets one line per acknowledged-durable operation (so the
harness's "writes acked" counts them); the full log is ACKLOG.full. The verify is the load oracle's (1)+(2) without
the tracking check (the control socket is inside the guest). Environment: POWERLOSS_LOAD_CONNS, _DEPTH, _SEED.
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ORACLE = os.path.join(HERE, "load-oracle.py")


def main():
    mode, uri, ack = sys.argv[1], sys.argv[2], sys.argv[3]
    full = ack + ".full"
    if mode == "write":
        seed = int(os.environ.get("POWERLOSS_LOAD_SEED") or int.from_bytes(os.urandom(4), "little"))
        cmd = [sys.executable, ORACLE, "run", "--uri", uri, "--log", full, "--ack-log", ack, "--trial", "1",
               "--seed", str(seed), "--conns", os.environ.get("POWERLOSS_LOAD_CONNS", "2"),
               "--depth", os.environ.get("POWERLOSS_LOAD_DEPTH", "8"), "--max-seconds", "600"]
        print("load-oracle seed", seed, flush=True)
        # exec: the harness kills this PID after the cut if it does not notice the broken connection
        os.execv(sys.executable, cmd)
    r = subprocess.run([sys.executable, ORACLE, "verify", "--uri", uri, "--log", full], capture_output=True, text=True,
                       timeout=3000)
    sys.stderr.write(r.stderr)
    try:
        rep = json.loads(r.stdout.strip().splitlines()[-1])
    except Exception:
        print(r.stdout)
        print("load-oracle verify printed no report")
        return 2
    print(json.dumps(rep)[:20000])
    lost = len(rep.get("lost", [])) + len(rep.get("bad", []))
    if not rep.get("ok") and lost == 0:
        lost = 1  # notes/errors: count as a failure
    print(f"verified {rep.get('durable', 0)} acknowledged blocks, {lost} lost")
    return 0 if rep.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
