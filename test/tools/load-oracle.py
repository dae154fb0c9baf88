#!/usr/bin/python3
"""Concurrent crash-load oracle for an NBD export (libnbd, Debian's python3-libnbd: run it with /usr/bin/python3).

  load-oracle.py run    --uri URI --log FILE --trial N --seed S --generation G [--chunk 65536] [--conns 4]
                        [--depth 16] [--flush-every 20-60] [--base B --span N] [--max-seconds 60]
                        [--max-epochs K] [--max-ops N] [--no-flush]
  load-oracle.py verify --uri URI --log FILE [--genmap FILE] [--report FILE]

run: several connections (--conns), each with up to --depth pipelined requests: writes of 4 KiB .. 1 MiB (512-byte
or 4 KiB aligned, many not aligned to the chunk, some spanning chunks), trims, write-zeroes (with and without
NO_HOLE), some with FUA, and a FLUSH on a connection every 20-60 of its requests. It runs until the server dies
(every connection broken), --max-seconds pass, or --max-epochs epochs are complete, and then prints one JSON
summary line on stdout (after a line "READY ..." once all connections are up).

Content: every 512-byte sector of a write carries a 24-byte header (magic "TVLOAD01", trial u32, seq u32, the
sector's byte offset in the export u64) followed by 488 filler bytes derived from (trial, seq). So a sector read
back names the write that produced it and where that write meant to put it: lost, torn, stale and misdirected
writes are all told apart.

Byte ranges never overlap while in flight: an "epoch" walks the export from --base to --base + --span, handing each operation a
fresh range (with random gaps). At the end of the export the oracle waits for everything in flight, sends a FLUSH
and only then starts the next epoch over the same space. So for any sector at most one operation that is not
known durable can cover it, and it is the last one: the verifier knows the exact set of allowed contents.

The log (append-only, fsync'd before the requests it describes are submitted, and after durability is learned):
  S {json}                        header: trial, seed, generation, size, conns, depth, multi_conn, ...
  I seq conn kind off len fua epoch   issued (kind W write, T trim, Z zero, N zero with NO_HOLE), before submission
  P seq c:hash:nz ...             trims/zeroes only: per chunk touched, blake2b-64 of the range's bytes inside that
                                  chunk as read just before the trim was issued, and whether they were non-zero
  C seq                           completed successfully (the reply arrived)
  D seq ...                       acknowledged durable: completed before a FLUSH that then completed, or FUA
  B epoch                         epoch barrier: all of the epoch's operations are durable
  E seq message                   a request failed while the connections were alive (a server error)
  X {json}                        end summary

verify: reads the log, reads the export back and checks
  (1) every acknowledged-durable operation reads back exactly (written pattern, or zeros for trim/zero),
  (2) sectors outside the in-flight operations hold what the durable history says, and sectors of operations that
      were in flight hold either the new or the previous content, never anything else (no torn sector, no stamp of
      another operation or another place),
  (3) with --genmap (the JSON of `thinvault volume generations NAME --map --json`): every chunk whose content
      changed in this trial has generation >= the trial's generation (tracking never under-reports; a chunk
      "changed" when it holds a sector of this trial's write, when an acknowledged-durable write covered it, or
      when a trim/zero of it changed non-zero bytes). Over-reporting is fine.
It prints one JSON report line and exits 0 when nothing is wrong, 1 otherwise.
"""
import argparse
import hashlib
import json
import os
import random
import select
import struct
import sys
import time

import nbd

SECTOR = 512
MAGIC = b"TVLOAD01"
HDR = struct.Struct("<8sIIQ")  # 24 bytes
FILL_WORDS = (SECTOR - HDR.size) // 8  # 61
KiB = 1024
MiB = 1024 * 1024
MAX_READ = 8 * MiB


def filler(trial, seq):
    v = ((trial * 1000003 + seq) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    return v.to_bytes(8, "little") * FILL_WORDS


def make_data(trial, seq, off, length):
    """The exact bytes of write `seq` of `trial` at [off, off+length) (both multiples of 512)."""
    n = length // SECTOR
    buf = bytearray((bytes(HDR.size) + filler(trial, seq)) * n)
    pack = HDR.pack_into
    for i in range(n):
        pack(buf, i * SECTOR, MAGIC, trial, seq, off + i * SECTOR)
    return buf


def chunk_parts(off, length, chunk):
    """[(chunk index, start, end)] of the byte range split at chunk boundaries."""
    out = []
    pos, end = off, off + length
    while pos < end:
        c = pos // chunk
        e = min(end, (c + 1) * chunk)
        out.append((c, pos, e))
        pos = e
    return out


def digest(b):
    return hashlib.blake2b(b, digest_size=8).hexdigest()


# ------------------------------------------------------------------------------------------------------------ run


class Log:
    def __init__(self, path, ack_path=None):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.ack_fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if ack_path else None
        self.buf = []
        self.acks = []

    def add(self, line):
        self.buf.append(line)
        if self.ack_fd is not None and line.startswith("D "):
            self.acks.extend(line[2:].split())

    def sync(self):
        if self.buf:
            os.write(self.fd, ("\n".join(self.buf) + "\n").encode())
            self.buf = []
            os.fsync(self.fd)
        if self.acks:
            os.write(self.ack_fd, ("\n".join(self.acks) + "\n").encode())
            self.acks = []
            os.fsync(self.ack_fd)

    def close(self):
        self.sync()
        os.close(self.fd)
        if self.ack_fd is not None:
            os.close(self.ack_fd)


class Op:
    __slots__ = ("seq", "conn", "kind", "off", "len", "fua", "epoch", "cookie", "data", "pre")

    def __init__(self, seq, conn, kind, off, length, fua, epoch):
        self.seq, self.conn, self.kind, self.off, self.len, self.fua, self.epoch = seq, conn, kind, off, length, fua, epoch
        self.cookie = None
        self.data = None
        self.pre = None  # nbd.Buffer of the pre-read (trim/zero)


def run(args):
    rnd = random.Random(args.seed)
    uri = args.uri
    handles = []
    for _ in range(args.conns):
        h = nbd.NBD()
        h.connect_uri(uri)
        handles.append(h)
    h0 = handles[0]
    size = h0.get_size()
    can_fua, can_trim, can_zero, multi = h0.can_fua(), h0.can_trim(), h0.can_zero(), h0.can_multi_conn()
    chunk = args.chunk
    log = Log(args.log, args.ack_log)
    header = {"base": args.base, "span": args.span, "trial": args.trial, "seed": args.seed, "generation": args.generation, "size": size, "chunk": chunk,
              "conns": args.conns, "depth": args.depth, "multi_conn": multi, "can_fua": can_fua,
              "can_trim": can_trim, "can_zero": can_zero, "no_flush": args.no_flush, "uri": uri}
    log.add("S " + json.dumps(header, separators=(",", ":")))
    log.sync()
    print(f"READY size={size} conns={args.conns} multi_conn={multi}", flush=True)

    fe_lo, fe_hi = (int(x) for x in args.flush_every.split("-"))
    alive = [True] * args.conns
    inflight = [dict() for _ in range(args.conns)]   # cookie -> Op (data ops and pre-reads)
    flushes = [dict() for _ in range(args.conns)]    # cookie -> [seqs covered]
    since_flush = [0] * args.conns
    next_flush = [rnd.randint(fe_lo, fe_hi) for _ in range(args.conns)]
    completed_pending = [[] for _ in range(args.conns)]  # completed ok, not yet covered by a flush (per connection)
    stats = {"issued": 0, "completed": 0, "durable": 0, "flushes": 0, "fua": 0, "trims": 0, "zeroes": 0,
             "bytes_written": 0, "epochs_done": 0, "errors": 0}
    seq = 0
    epoch = 0
    # each epoch walks [base, limit) of the export
    base = min(args.base, size - SECTOR) // SECTOR * SECTOR
    limit = size if not args.span else min(size, base + args.span)
    cursor = base
    barrier = None  # None | "drain" | {(conn, cookie), ...} (the barrier FLUSHes in flight)
    stop_reason = None
    t0 = time.monotonic()
    deadline = t0 + args.max_seconds
    server_error = False

    def fail_msg(e):
        return str(e).replace("\n", " ")[:200]

    def next_range():
        """Reserve the next byte range of this epoch, or None at the end of the export."""
        nonlocal cursor
        r = rnd.random()
        if r < 0.25:
            cursor += rnd.randint(1, 256) * SECTOR               # a gap
        elif r < 0.45:
            cursor = -(-cursor // chunk) * chunk                # chunk aligned start
        align = SECTOR if rnd.random() < 0.5 else 4 * KiB
        cursor = -(-cursor // align) * align
        if rnd.random() < 0.15:
            length = rnd.randint(1, 4) * chunk                   # whole chunks (aligned if the start is)
        else:
            length = int(4 * KiB * (256 ** rnd.random()))          # log-uniform 4 KiB .. 1 MiB
            length = max(align, length // align * align)
        if cursor + length > limit:
            length = (limit - cursor) // SECTOR * SECTOR
        if length <= 0:
            return None
        off = cursor
        cursor += length
        return off, length

    def issue_flush(i):
        h = handles[i]
        if multi:
            covered = [s for lst in completed_pending for s in lst]
            for lst in completed_pending:
                lst.clear()
        else:
            covered = completed_pending[i][:]
            completed_pending[i].clear()
        cookie = h.aio_flush()
        flushes[i][cookie] = covered
        stats["flushes"] += 1
        since_flush[i] = 0
        next_flush[i] = rnd.randint(fe_lo, fe_hi)
        return cookie

    def submit(i, op):
        """Log 'I' (synced by the caller before this runs) and submit."""
        h = handles[i]
        flags = nbd.CMD_FLAG_FUA if op.fua else 0
        if op.kind == "W":
            op.cookie = h.aio_pwrite(op.data, op.off, flags=flags)
        elif op.kind == "T":
            op.cookie = h.aio_trim(op.len, op.off, flags=flags)
        else:
            if op.kind == "N":
                flags |= nbd.CMD_FLAG_NO_HOLE
            op.cookie = h.aio_zero(op.len, op.off, flags=flags)
        inflight[i][op.cookie] = op
        stats["issued"] += 1

    def total_inflight():
        return sum(len(d) for d in inflight) + sum(len(d) for d in flushes)

    loops = 0
    while True:
        loops += 1
        if not any(alive):
            stop_reason = stop_reason or "server gone"
            break
        now = time.monotonic()
        if stop_reason is None and now > deadline:
            stop_reason = "time"
        if stop_reason is None and args.max_epochs and stats["epochs_done"] >= args.max_epochs:
            stop_reason = "epochs"
        if stop_reason is None and args.max_ops and seq >= args.max_ops:
            stop_reason = "ops"
        if stop_reason is None and barrier == "drain" and args.no_flush:
            stop_reason = "end of export"
        if stop_reason is not None and total_inflight() == 0:
            break
        if stop_reason is not None and now > deadline + 30:
            break  # requests hanging after the end: give up (bounded)

        # ---- submit
        to_submit = []
        if stop_reason is None and barrier is None:
            for i in range(args.conns):
                if not alive[i]:
                    continue
                while len(inflight[i]) < args.depth and barrier is None and not (args.max_ops and seq >= args.max_ops):
                    if not args.no_flush and since_flush[i] >= next_flush[i]:
                        try:
                            issue_flush(i)
                        except nbd.Error as e:
                            alive[i] = False
                            break
                        continue
                    rg = next_range()
                    if rg is None:
                        barrier = "drain"
                        break
                    off, length = rg
                    r = rnd.random()
                    kind = "W"
                    if r < 0.10 and can_trim:
                        kind = "T"
                    elif r < 0.16 and can_zero:
                        kind = "Z"
                    elif r < 0.20 and can_zero:
                        kind = "N"
                    fua = can_fua and not args.no_flush and rnd.random() < (0.15 if kind == "W" else 0.2)
                    seq += 1
                    op = Op(seq, i, kind, off, length, fua, epoch)
                    since_flush[i] += 1
                    if kind == "W":
                        op.data = nbd.Buffer.from_bytearray(make_data(args.trial, seq, off, length))
                        to_submit.append(op)
                    else:
                        # read the range first (nobody else touches it in this epoch), log its digest, then trim
                        op.pre = nbd.Buffer(length)
                        try:
                            c = handles[i].aio_pread(op.pre, off)
                        except nbd.Error:
                            alive[i] = False
                            break
                        op.cookie = ("pre", c)
                        inflight[i][c] = op
        for op in to_submit:
            log.add(f"I {op.seq} {op.conn} {op.kind} {op.off} {op.len} {int(op.fua)} {op.epoch}")
        if to_submit:
            log.sync()
        for op in to_submit:
            try:
                submit(op.conn, op)
            except nbd.Error:
                alive[op.conn] = False

        # ---- barrier: everything of the epoch answered -> FLUSH -> next epoch
        if barrier == "drain" and stop_reason is None and all(len(d) == 0 for d in inflight):
            # with multi-conn one FLUSH covers the replies of every connection; without, flush each connection
            live = [i for i in range(args.conns) if alive[i]]
            if live and not server_error:
                pending = set()
                for i in (live[:1] if multi else live):
                    try:
                        pending.add((i, issue_flush(i)))
                    except nbd.Error:
                        alive[i] = False
                if len(pending) == (1 if multi else len(live)):
                    barrier = pending

        # ---- poll
        fds = []
        p = select.poll()
        for i, h in enumerate(handles):
            if not alive[i]:
                continue
            try:
                # a handle that died without a poll event (the server vanished) wants no direction at all:
                # it must count as gone here, or the loop would wait for it until the deadline
                if h.aio_is_dead() or h.aio_is_closed():
                    alive[i] = False
                    continue
                d = h.aio_get_direction()
            except nbd.Error:
                alive[i] = False
                continue
            ev = 0
            if d & nbd.AIO_DIRECTION_READ:
                ev |= select.POLLIN
            if d & nbd.AIO_DIRECTION_WRITE:
                ev |= select.POLLOUT
            if ev:
                fd = h.aio_get_fd()
                p.register(fd, ev)
                fds.append((fd, i))
        if not fds:
            if all(not a for a in alive):
                continue
            time.sleep(0.001)
            continue
        events = dict(p.poll(100))
        for fd, i in fds:
            rev = events.get(fd, 0)
            if not rev:
                continue
            h = handles[i]
            try:
                if rev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    h.aio_notify_read()
                elif rev & select.POLLOUT:
                    h.aio_notify_write()
            except nbd.Error:
                alive[i] = False
            if h.aio_is_dead() or h.aio_is_closed():
                alive[i] = False

        # ---- completions
        newly_pre = []
        for i, h in enumerate(handles):
            while True:
                try:
                    cookie = h.aio_peek_command_completed()
                except nbd.Error:
                    cookie = 0
                if not cookie or cookie < 0:
                    break
                ok, err = True, None
                try:
                    h.aio_command_completed(cookie)
                except nbd.Error as e:
                    ok, err = False, e
                if cookie in flushes[i]:
                    covered = flushes[i].pop(cookie)
                    if ok:
                        if covered:
                            log.add("D " + " ".join(map(str, covered)))
                            stats["durable"] += len(covered)
                        if isinstance(barrier, set) and (i, cookie) in barrier:
                            barrier.discard((i, cookie))
                            if not barrier:
                                log.add(f"B {epoch}")
                                stats["epochs_done"] += 1
                                epoch += 1
                                cursor = base
                                barrier = None
                    else:
                        # not durable after all: a later FLUSH (on any connection, with multi-conn) may cover them
                        if multi:
                            completed_pending[i].extend(covered)
                        else:
                            completed_pending[i][:0] = covered
                        alive_now = not (h.aio_is_dead() or h.aio_is_closed())
                        if alive_now:
                            log.add(f"E flush {fail_msg(err)}")
                            server_error = True
                            stats["errors"] += 1
                        else:
                            alive[i] = False
                    continue
                op = inflight[i].pop(cookie, None)
                if op is None:
                    continue
                if isinstance(op.cookie, tuple):  # the pre-read of a trim/zero
                    if ok:
                        newly_pre.append(op)
                    else:
                        if not (h.aio_is_dead() or h.aio_is_closed()):
                            log.add(f"E {op.seq} pre-read: {fail_msg(err)}")
                            server_error = True
                            stats["errors"] += 1
                        else:
                            alive[i] = False
                    continue
                if ok:
                    stats["completed"] += 1
                    log.add(f"C {op.seq}")
                    if op.kind == "W":
                        stats["bytes_written"] += op.len
                    if op.fua:
                        stats["fua"] += 1
                        stats["durable"] += 1
                        log.add(f"D {op.seq}")
                    else:
                        completed_pending[i].append(op.seq)
                    if op.kind == "T":
                        stats["trims"] += 1
                    elif op.kind in "ZN":
                        stats["zeroes"] += 1
                else:
                    if not (h.aio_is_dead() or h.aio_is_closed()):
                        log.add(f"E {op.seq} {fail_msg(err)}")
                        server_error = True
                        stats["errors"] += 1
                    else:
                        alive[i] = False
                op.data = None
        if server_error and stop_reason is None:
            stop_reason = "server error"

        # ---- trims/zeroes whose pre-read is done: log digest + issue record, then submit
        if newly_pre:
            ready = []
            for op in newly_pre:
                if not alive[op.conn]:
                    continue
                raw = op.pre.to_bytearray()
                items = []
                for c, s, e in chunk_parts(op.off, op.len, chunk):
                    b = bytes(raw[s - op.off:e - op.off])
                    items.append(f"{c}:{digest(b)}:{int(b.count(0) != len(b))}")
                op.pre = None
                log.add(f"P {op.seq} " + " ".join(items))
                log.add(f"I {op.seq} {op.conn} {op.kind} {op.off} {op.len} {int(op.fua)} {op.epoch}")
                op.cookie = None
                ready.append(op)
            log.sync()
            for op in ready:
                try:
                    submit(op.conn, op)
                except nbd.Error:
                    alive[op.conn] = False
        log.sync()

    stats["seconds"] = round(time.monotonic() - t0, 3)
    stats["stop"] = stop_reason
    stats["epoch"] = epoch
    stats["ops"] = seq
    stats["loops"] = loops
    log.add("X " + json.dumps(stats, separators=(",", ":")))
    log.close()
    for h in handles:
        try:
            if not (h.aio_is_dead() or h.aio_is_closed()):
                h.shutdown()
        except nbd.Error:
            pass
    print(json.dumps(stats), flush=True)
    return 2 if server_error else 0


# --------------------------------------------------------------------------------------------------------- verify


class Rec:
    __slots__ = ("seq", "conn", "kind", "off", "len", "fua", "epoch", "pre", "durable", "completed")

    def __init__(self, seq, conn, kind, off, length, fua, epoch):
        self.seq, self.conn, self.kind, self.off, self.len, self.fua, self.epoch = seq, conn, kind, off, length, fua, epoch
        self.pre = None
        self.durable = False
        self.completed = False


def parse_log(path):
    header, ops, barriers, errors, summary = None, {}, set(), [], None
    pre = {}
    durable = set()
    completed = set()
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            t, _, rest = line.partition(" ")
            if t == "S":
                header = json.loads(rest)
            elif t == "I":
                s, conn, kind, off, length, fua, ep = rest.split()
                ops[int(s)] = Rec(int(s), int(conn), kind, int(off), int(length), fua == "1", int(ep))
            elif t == "P":
                parts = rest.split()
                pre[int(parts[0])] = [(int(c), h, nz == "1") for c, h, nz in (p.split(":") for p in parts[1:])]
            elif t == "C":
                completed.add(int(rest))
            elif t == "D":
                durable.update(int(x) for x in rest.split())
            elif t == "B":
                barriers.add(int(rest))
            elif t == "E":
                errors.append(rest)
            elif t == "X":
                summary = json.loads(rest)
    for s, parts in pre.items():
        if s in ops:
            ops[s].pre = parts
    for s in durable:
        if s in ops:
            ops[s].durable = True
    for s in completed:
        if s in ops:
            ops[s].completed = True
    return header, ops, barriers, errors, summary


class Segments:
    """Non-overlapping [start, end) -> op, painted in order."""

    def __init__(self):
        self.items = []  # sorted (start, end, op)

    def paint(self, start, end, op):
        out = []
        for s, e, o in self.items:
            if e <= start or s >= end:
                out.append((s, e, o))
                continue
            if s < start:
                out.append((s, start, o))
            if e > end:
                out.append((end, e, o))
        out.append((start, end, op))
        out.sort(key=lambda x: x[0])
        self.items = out

    def paint_many(self, ops):
        # ops of one epoch never overlap each other: merge in one pass
        new = sorted(((o.off, o.off + o.len, o) for o in ops), key=lambda x: x[0])
        if not new:
            return
        out = []
        j = 0
        for s, e, o in self.items:
            # cut [s, e) by every new range overlapping it
            pos = s
            while j < len(new) and new[j][1] <= pos:
                j += 1
            k = j
            while pos < e:
                if k < len(new) and new[k][0] < e:
                    ns, ne, _ = new[k]
                    if ns > pos:
                        out.append((pos, min(ns, e), o))
                    pos = max(pos, ne)
                    k += 1
                else:
                    out.append((pos, e, o))
                    pos = e
        out.extend(new)
        out.sort(key=lambda x: x[0])
        self.items = out

    def overlapping(self, start, end):
        return [(max(s, start), min(e, end), o) for s, e, o in self.items if s < end and e > start]


def expected_bytes(trial, op, start, end):
    """Content op leaves at [start, end) (inside op's range)."""
    if op.kind == "W":
        rel0 = (start - op.off) // SECTOR * SECTOR
        rel1 = -(-(end - op.off) // SECTOR) * SECTOR
        full = make_data(trial, op.seq, op.off + rel0, rel1 - rel0)
        return bytes(full[start - op.off - rel0:end - op.off - rel0])
    return bytes(end - start)


def read_range(h, off, length):
    out = bytearray()
    pos = off
    while pos < off + length:
        n = min(MAX_READ, off + length - pos)
        out += h.pread(n, pos)
        pos += n
    return bytes(out)


def verify(args):
    header, ops, barriers, errors, summary = parse_log(args.log)
    report = {"ok": True, "trial": None, "ops": len(ops), "durable": 0, "checked_bytes": 0, "lost": [], "bad": [],
              "tracking_missing": [], "errors": errors, "notes": []}
    if header is None:
        report["ok"] = False
        report["notes"].append("log has no header")
        print(json.dumps(report))
        return 1
    trial, chunk, G = header["trial"], header["chunk"], header["generation"]
    report["trial"] = trial
    report["generation"] = G
    report["summary"] = summary
    h = nbd.NBD()
    h.connect_uri(args.uri)
    if h.get_size() != header["size"]:
        report["notes"].append(f"export size {h.get_size()} != {header['size']}")
        report["ok"] = False

    by_epoch = {}
    for o in ops.values():
        by_epoch.setdefault(o.epoch, []).append(o)
    epochs = sorted(by_epoch)
    last = epochs[-1] if epochs else 0
    # all operations of earlier epochs must be durable (the barrier guarantees it); anything else is an oracle bug
    for e in epochs[:-1]:
        if e not in barriers:
            report["notes"].append(f"epoch {e} has no barrier record")
            report["ok"] = False
        for o in by_epoch[e]:
            if not o.durable:
                report["notes"].append(f"op {o.seq} of completed epoch {e} not durable")
                report["ok"] = False
    base = Segments()
    for e in epochs[:-1]:
        base.paint_many(by_epoch[e])
    top = sorted(by_epoch.get(last, []), key=lambda o: o.off) if epochs else []
    top_complete = last in barriers  # the last epoch finished (e.g. --max-epochs): everything durable
    report["durable"] = sum(1 for o in ops.values() if o.durable)

    required = set()  # chunks that must carry generation >= G

    def chunks_of(start, end):
        return range(start // chunk, (end - 1) // chunk + 1)

    def sector_owner(buf, rel, abs_off):
        """(trial, seq, offset) stamped in the sector at buf[rel:rel+512] if it is a well-formed sector of a
        known write of this trial at its own place, 'zero', or a description of what is there."""
        sec = buf[rel:rel + SECTOR]
        if sec.count(0) == SECTOR:
            return "zero"
        if sec[:8] != MAGIC:
            return "foreign"
        _, t, s, o = HDR.unpack_from(sec, 0)
        if t != trial:
            return ("old", t, s, o)
        op = ops.get(s)
        if op is None or op.kind != "W":
            return ("unknown-seq", t, s, o)
        if o != abs_off:
            return ("misplaced", t, s, o)
        if sec[HDR.size:] != filler(t, s):
            return ("torn", t, s, o)
        return ("mine", t, s, o)

    def describe(x):
        return x if isinstance(x, str) else f"{x[0]}(trial {x[1]} seq {x[2]} off {x[3]})"

    def check_range(start, end, allowed, strict_prev):
        """Per sector of [start,end): the content must be one of `allowed` (list of ops, or None meaning the
        unknown pre-trial content). Returns (problems, {write seq: chunks where its sectors were found})."""
        buf = read_range(h, start, end - start)
        report["checked_bytes"] += end - start
        found = {}
        problems = []
        # fast path: the whole range equals one allowed op's content
        for a in allowed:
            if a is not None and buf == expected_bytes(trial, a, start, end):
                if a.kind == "W":
                    found[a.seq] = set(chunks_of(start, end))
                return problems, found
        allowed_seqs = {a.seq for a in allowed if a is not None and a.kind == "W"}
        allow_zero = any(a is not None and a.kind != "W" for a in allowed)
        allow_unknown = None in allowed
        for rel in range(0, end - start, SECTOR):
            abs_off = start + rel
            w = sector_owner(buf, rel, abs_off)
            if w == "zero":
                if allow_zero or allow_unknown:
                    continue
            elif isinstance(w, tuple) and w[0] == "mine" and w[2] in allowed_seqs:
                found.setdefault(w[2], set()).add(abs_off // chunk)
                continue
            elif allow_unknown and (w == "foreign" or (isinstance(w, tuple) and w[0] == "old")):
                continue  # content from before this trial
            problems.append({"sector": abs_off, "found": describe(w),
                             "allowed": [("unknown" if a is None else f"{a.kind}{a.seq}") for a in allowed]})
            if len(problems) >= 4:
                break
        return problems, found

    def note_lost(op, problems, kind):
        report["ok"] = False
        entry = {"seq": op.seq, "kind": op.kind, "off": op.off, "len": op.len, "fua": op.fua, "epoch": op.epoch,
                 "durable": op.durable, "completed": op.completed, "first_problems": problems}
        report[kind].append(entry)

    # (1) + (2a): the base (completed epochs) where no top op covers it, exactly
    top_ranges = Segments()
    for o in top:
        top_ranges.items.append((o.off, o.off + o.len, o))
    for s, e, o in base.items:
        # parts of [s, e) not covered by a top op
        pos = s
        for ts, te, _ in top_ranges.overlapping(s, e):
            if ts > pos:
                probs, found = check_range(pos, ts, [o], True)
                if probs:
                    note_lost(o, probs, "lost")
            pos = max(pos, te)
        if pos < e:
            probs, found = check_range(pos, e, [o], True)
            if probs:
                note_lost(o, probs, "lost")
    # every write of a completed epoch was durable and covered its chunks: required (even if overwritten later)
    for e in epochs[:-1]:
        for o in by_epoch[e]:
            if o.kind == "W":
                required.update(chunks_of(o.off, o.off + o.len))
    # (1) + (2b): the last epoch
    for o in top:
        if o.durable or top_complete:
            probs, found = check_range(o.off, o.off + o.len, [o], True)
            if probs:
                note_lost(o, probs, "lost")
            if o.kind == "W":
                required.update(chunks_of(o.off, o.off + o.len))
        else:
            # in flight at the kill: each sector holds o's content or the previous content
            prev = base.overlapping(o.off, o.off + o.len)
            pos = o.off
            pieces = []
            for s, e, b in prev:
                if s > pos:
                    pieces.append((pos, s, None))
                pieces.append((s, e, b))
                pos = e
            if pos < o.off + o.len:
                pieces.append((pos, o.off + o.len, None))
            for s, e, b in pieces:
                probs, found = check_range(s, e, [o, b], False)
                if probs:
                    note_lost(o, probs, "bad")
                if o.kind == "W" and o.seq in found:
                    required.update(found[o.seq])  # the chunks where sectors of o landed changed
        # (3) trims/zeroes: a chunk whose non-zero bytes were zeroed changed
        if o.kind != "W" and o.pre:
            for c, dig, nz in o.pre:
                if not nz:
                    continue
                cs, ce = max(o.off, c * chunk), min(o.off + o.len, (c + 1) * chunk)
                now = read_range(h, cs, ce - cs)
                if o.durable or digest(now) != dig:
                    required.add(c)
    # trims/zeroes of completed epochs: durable, so a non-zero pre-content means the chunk changed
    for e in epochs[:-1]:
        for o in by_epoch[e]:
            if o.kind != "W" and o.pre:
                required.update(c for c, _, nz in o.pre if nz)

    if args.genmap:
        with open(args.genmap) as f:
            gm = json.load(f)
        if gm.get("current", 0) < G:
            report["ok"] = False
            report["notes"].append(f"current generation {gm.get('current')} < {G} after recovery")
        gen_of = {}
        cs = gm.get("chunkSize", chunk)
        for r in gm.get("map", []):
            for c in range(r["offset"] // cs, (r["offset"] + r["length"] - 1) // cs + 1):
                gen_of[c] = r["generation"]
        missing = sorted(c for c in required if gen_of.get(c, 0) < G)
        report["required_chunks"] = len(required)
        if missing:
            report["ok"] = False
            report["tracking_missing"] = [{"chunk": c, "generation": gen_of.get(c, 0)} for c in missing[:50]]
            report["tracking_missing_count"] = len(missing)
    if errors:
        report["ok"] = False
    h.shutdown()
    out = json.dumps(report)
    if args.report:
        with open(args.report, "w") as f:
            f.write(out + "\n")
    print(out, flush=True)
    return 0 if report["ok"] else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run")
    r.add_argument("--uri", required=True)
    r.add_argument("--log", required=True)
    r.add_argument("--trial", type=int, required=True)
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--generation", type=int, default=0)
    r.add_argument("--chunk", type=int, default=65536)
    r.add_argument("--conns", type=int, default=4)
    r.add_argument("--depth", type=int, default=16)
    r.add_argument("--flush-every", default="20-60")
    r.add_argument("--max-seconds", type=float, default=60)
    r.add_argument("--max-epochs", type=int, default=0)
    r.add_argument("--base", type=int, default=0, help="where each epoch starts (bytes)")
    r.add_argument("--span", type=int, default=0, help="bytes each epoch walks from --base (default: to the end)")
    r.add_argument("--max-ops", type=int, default=0, help="stop issuing after this many operations")
    r.add_argument("--ack-log", help="also append the seq of every acknowledged-durable operation here, one a line")
    r.add_argument("--no-flush", action="store_true", help="never FLUSH and never FUA-acknowledge (idle-kill test)")
    v = sub.add_parser("verify")
    v.add_argument("--uri", required=True)
    v.add_argument("--log", required=True)
    v.add_argument("--genmap")
    v.add_argument("--report")
    args = ap.parse_args()
    if args.mode == "run":
        return run(args)
    return verify(args)


if __name__ == "__main__":
    sys.exit(main())
