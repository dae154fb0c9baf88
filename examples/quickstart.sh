#!/usr/bin/env bash
# thinvault quickstart: create a pool, run the daemon, create a thin volume and use it with real NBD clients
# (nbdinfo from libnbd-bin, qemu-io from qemu-utils), then stop the daemon cleanly.
#
#   examples/quickstart.sh [WORKDIR]     # WORKDIR (default: a new /tmp/thinvault-quickstart.XXXXXX) keeps the pool
#
# The thinvault command: $THINVAULT if set, else `thinvault` on PATH, else this checkout's dist/cli/main.js
# (build it with `npx tsc -p tsconfig.json`). Everything listens on a Unix socket in WORKDIR only.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -n "${THINVAULT:-}" ]; then read -r -a TV <<<"$THINVAULT"
elif command -v thinvault >/dev/null 2>&1; then TV=(thinvault)
else TV=(node "$HERE/../dist/cli/main.js"); fi
for tool in nbdinfo qemu-io; do
    command -v "$tool" >/dev/null || { echo "quickstart: $tool is missing (apt-get install libnbd-bin qemu-utils)" >&2; exit 1; }
done

WORK=${1:-$(mktemp -d /tmp/thinvault-quickstart.XXXXXX)}
mkdir -p "$WORK"
POOL=$WORK/pool
SOCK=$WORK/nbd.sock
URI="nbd+unix:///vol0?socket=$SOCK"
DAEMON=''
stop_daemon() {   # SIGTERM to the PID we started: the daemon drains connections and closes the pool cleanly
    if [ -n "$DAEMON" ]; then
        kill "$DAEMON" 2>/dev/null || true
        wait "$DAEMON" 2>/dev/null || true
        DAEMON=''
    fi
}
trap stop_daemon EXIT

echo "== 1. a pool is a directory; the chunk size (the unit of allocation and change tracking) is fixed here"
"${TV[@]}" init "$POOL" --chunk-size 64KiB

echo "== 2. the daemon: NBD on a Unix socket, control socket at $POOL/control.sock"
"${TV[@]}" serve "$POOL" --socket "$SOCK" 2>"$WORK/daemon.log" &
DAEMON=$!
echo "daemon PID $DAEMON (log: $WORK/daemon.log)"
for _ in $(seq 1 200); do   # up to 20 s
    [ -S "$SOCK" ] && "${TV[@]}" status --pool "$POOL" >/dev/null 2>&1 && break
    kill -0 "$DAEMON" 2>/dev/null || { echo "the daemon exited:" >&2; cat "$WORK/daemon.log" >&2; exit 1; }
    sleep 0.1
done

echo "== 3. a thin 1 GiB volume: it is the NBD export of the same name, and uses no space yet"
"${TV[@]}" volume create vol0 --size 1GiB --pool "$POOL"
nbdinfo "$URI"

echo "== 4. write with qemu-io (one write with FUA), flush, and read back"
qemu-io -f raw "$URI" -c 'write -P 0xab 0 1M' -c 'write -P 0xcd 64M 64k' -c 'write -f -P 0xef 100M 4k' -c 'flush'
qemu-io -f raw "$URI" -c 'read -P 0xab 0 1M' -c 'read -P 0 1M 1M' -c 'read -P 0xcd 64M 64k' -c 'read -P 0xef 100M 4k'

echo "== 5. only the written chunks are allocated (nbdinfo --map: data vs hole,zero)"
nbdinfo --map "$URI"

echo "== 6. discard 1 MiB and look again: the chunks are free again"
qemu-io -f raw "$URI" -c 'discard 0 1M' -c 'flush'
nbdinfo --map --totals "$URI"

echo "== 7. generations: every chunk changed since the base carries the generation it changed in"
"${TV[@]}" volume generations vol0 --pool "$POOL"
"${TV[@]}" status --pool "$POOL"

echo "== 8. stop the daemon (SIGTERM to PID $DAEMON)"
stop_daemon
echo "quickstart done; the pool stays in $WORK (serve it again with: ${TV[*]} serve $POOL --socket $SOCK)"
