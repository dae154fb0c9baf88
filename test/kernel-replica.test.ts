/**
 * A compacted replica read through the real Linux kernel NBD client (nbd.ko + nbd-client) inside a qemu TCG guest
 * (../shared/tools/nbd-vm, see its README): "dd if=/dev/nbd1 of=/dev/st0 bs=256k through the kernel client is a full
 * backup" (src/exports/replica-export.ts).
 *
 * The host writes known data into parts of a 64 MiB volume (most of it stays unallocated) and runs `replica create`.
 * In the guest, the replica export `rep` is attached to /dev/nbd0 (it must come up read-only and refuse a write) and a
 * second, writable export `dump` to /dev/nbd1; `dd if=/dev/nbd0 of=/dev/nbd1 bs=256k conv=fsync` copies the packed
 * image, and the guest prints the SHA-256 of /dev/nbd0 and of the first imageBytes of /dev/nbd1. On the host: the
 * image nbdcopy reads from `rep` has the same hash and the same bytes as what the guest dd wrote into `dump`;
 * `restore --from <those bytes> --as r1`, `replica restore rep --as r2` and `replica restore rep --into other` (a
 * volume with different data) each equal the original volume by `qemu-img compare`.
 *
 * Needs qemu-system-x86_64, a kernel image in /boot with its modules, busybox-static and nbd-client (the nbd-vm
 * README's list), plus nbdcopy, nbdinfo, qemu-io and qemu-img. Without them the tests skip locally with a message,
 * and fail when CI=true.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon, cliJson, tempDir, tool, IN_CI, missingVmPrerequisites, type Daemon } from './helpers/daemon.js';
import { NBD_VM, assertPass, nbdVmTest } from './helpers/nbd-vm.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const VOL_SIZE = 64 * MiB;
/** the guest run (boot + script) must stay well inside this; the image is a few MiB */
const VM_TIMEOUT_S = 420;

const missing = missingVmPrerequisites(NBD_VM, ['qemu-system-x86_64', 'busybox', 'nbd-client', 'cpio', 'socat', 'nbdcopy', 'nbdinfo', 'qemu-io', 'qemu-img']);
const skipLocally = missing.length > 0 && !IN_CI;
if (skipLocally) {
  console.warn(`kernel-replica.test: SKIPPED, missing ${missing.join(', ')} (install them as the nbd-vm README says; with CI=true this fails)`);
}
const vmIt = skipLocally ? it.skip : it;

// ---- nbd-vm-test runner (the same as in kernel-client.test.ts)

// ---- what the host writes into the source volume: byte patterns and random data, chunk-aligned or not
interface Write {
  offset: number;
  length: number;
  /** a fill byte (qemu-io -P), or random bytes (qemu-io -s FILE) */
  pattern: number | 'random';
  why: string;
}
const WRITES: Write[] = [
  { offset: 0, length: 64 * KiB, pattern: 0xa1, why: 'the whole first chunk' },
  { offset: 1 * MiB + 4 * KiB, length: 300 * KiB, pattern: 'random', why: 'random, across chunk boundaries, partial first and last chunks' },
  { offset: 17 * MiB + 512, length: 3 * KiB, pattern: 0x5c, why: 'small and unaligned, inside one chunk' },
  { offset: 40 * MiB, length: 1 * MiB, pattern: 'random', why: '1 MiB of random data' },
  { offset: 52 * MiB + 12 * KiB, length: 20 * KiB, pattern: 0x00, why: 'zeros written as data' },
  { offset: VOL_SIZE - 8 * KiB, length: 8 * KiB, pattern: 0xee, why: 'up to the last byte' },
];
/** what the `into` target holds before the restore: data where the source has holes, and over its data */
const OTHER_WRITES: Write[] = [
  { offset: 0, length: 256 * KiB, pattern: 0x77, why: 'over the first chunk and beyond' },
  { offset: 8 * MiB, length: 2 * MiB, pattern: 'random', why: 'where the source has a hole' },
  { offset: VOL_SIZE - 1 * MiB, length: 1 * MiB, pattern: 0x33, why: 'the last MiB' },
];

async function writeVolume(d: Daemon, name: string, writes: Write[], work: string, expected?: Buffer): Promise<void> {
  const cmds: string[] = [];
  for (const [i, w] of writes.entries()) {
    let data: Buffer;
    if (w.pattern === 'random') {
      data = crypto.randomBytes(w.length);
      const file = path.join(work, `${name}-w${i}.bin`);
      fs.writeFileSync(file, data);
      cmds.push('-c', `write -q -s ${file} ${w.offset} ${w.length}`);
    } else {
      data = Buffer.alloc(w.length, w.pattern);
      cmds.push('-c', `write -q -P ${w.pattern} ${w.offset} ${w.length}`);
    }
    if (expected) data.copy(expected, w.offset);
  }
  await tool('qemu-io', ['-f', 'raw', d.uri(name), ...cmds]);
}

interface MapEntry {
  offset: number;
  length: number;
  type: number;
}
async function allocatedBytes(d: Daemon, name: string): Promise<number> {
  const map = JSON.parse(await tool('nbdinfo', ['--map', '--json', d.uri(name)])) as MapEntry[];
  return map.filter((e) => (e.type & 1) === 0).reduce((s, e) => s + e.length, 0);
}

interface ReplicaInfo {
  name: string;
  uuid: string;
  origin: { uuid: string; name: string };
  volumeSize: number;
  chunkSize: number;
  records: number;
  dataBytes: number;
  imageBytes: number;
}
interface RestoreResult {
  kind: string;
  volume: string | null;
  volumeSize: number;
  records: number;
  chunksWritten: number;
  chunksSkippedAsZero: number;
}

const sha256 = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');
const pad4k = (n: number) => Math.ceil(n / 4096) * 4096;

function guestScript(imageBytes: number): string {
  const sectors = imageBytes / 512;
  return [
    '#!/bin/sh',
    '# generated by test/kernel-replica.test.ts: read the replica export with dd, copy it onto a second export',
    'set -u',
    'step() { echo "NBDVM: [$(cut -d\' \' -f1 /proc/uptime)s] $*"; }',
    'fail() { echo "$*" > /tmp/nbdvm-fail-reason; echo "NBDVM: FAIL: $*"; dmesg | tail -n 30; nbd-client -d /dev/nbd1 >/dev/null 2>&1; nbd-client -d /dev/nbd0 >/dev/null 2>&1; exit 1; }',
    'attach() { # EXPORT DEV SECTORS: connect and wait for the size; SECTORS "" = any',
    '  step "connect: nbd-client -N $1 $NBDVM_HOST $NBDVM_PORT $2"',
    '  nbd-client -N "$1" "$NBDVM_HOST" "$NBDVM_PORT" "$2" || fail "nbd-client -N $1 $2 failed"',
    '  n=${2##*/}; i=0; while [ "$(cat /sys/block/$n/size)" = 0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done',
    '  step "$2: $(cat /sys/block/$n/size) sectors, ro=$(cat /sys/block/$n/ro)"',
    '  [ -z "$3" ] || [ "$(cat /sys/block/$n/size)" = "$3" ] || fail "$2 has $(cat /sys/block/$n/size) sectors, expected $3"',
    '}',
    `attach rep /dev/nbd0 ${sectors}`,
    '[ "$(blockdev --getro /dev/nbd0)" = 1 ] || fail "the replica device is not read-only: blockdev --getro says $(blockdev --getro /dev/nbd0)"',
    'if dd if=/dev/zero of=/dev/nbd0 bs=4096 count=1 conv=fsync 2>/tmp/ddw.err; then fail "dd wrote to the read-only replica device"; fi',
    'step "a write to /dev/nbd0 is refused: $(tr \'\\n\' \' \' < /tmp/ddw.err)"',
    'attach dump /dev/nbd1 ""',
    '[ "$(blockdev --getro /dev/nbd1)" = 0 ] || fail "the dump device is read-only"',
    'step "dd if=/dev/nbd0 of=/dev/nbd1 bs=256k conv=fsync"',
    'dd if=/dev/nbd0 of=/dev/nbd1 bs=256k conv=fsync 2>/tmp/dd.err || fail "dd from the replica failed: $(tr \'\\n\' \' \' < /tmp/dd.err)"',
    'step "dd: $(tr \'\\n\' \' \' < /tmp/dd.err)"',
    'sync',
    'echo 3 > /proc/sys/vm/drop_caches',
    'h0=$(sha256sum /dev/nbd0 | cut -d\' \' -f1)',
    '[ -n "$h0" ] || fail "sha256sum /dev/nbd0 failed"',
    'echo "NBDVM: REPLICA-SHA256 $h0"',
    `h1=$(head -c ${imageBytes} /dev/nbd1 | sha256sum | cut -d' ' -f1)`,
    'echo "NBDVM: DUMP-SHA256 $h1"',
    '[ "$h0" = "$h1" ] || fail "the image copied onto /dev/nbd1 reads back different in the guest"',
    'step "disconnect"',
    'nbd-client -d /dev/nbd1 || fail "nbd-client -d /dev/nbd1 failed"',
    'nbd-client -d /dev/nbd0 || fail "nbd-client -d /dev/nbd0 failed"',
    'step "guest part done"',
    'exit 0',
    '',
  ].join('\n');
}

describe('a compacted replica read by the Linux kernel NBD client (qemu guest) with dd', () => {
  let d: Daemon;
  let work: string;
  let rep: ReplicaInfo;
  /** the source volume's bytes */
  const expected = Buffer.alloc(VOL_SIZE);
  /** what the guest dd wrote into `dump`, cut to imageBytes (set by the guest test) */
  let guestImage: string | undefined;

  beforeAll(async () => {
    if (skipLocally) return;
    work = tempDir('tv-kreplica-');
    d = await startDaemon({ pool: path.join(work, 'pool') });
    await cliJson(d, ['volume', 'create', 'vol', '--size', '64MiB']);
    await writeVolume(d, 'vol', WRITES, work, expected);
  }, 120_000);

  afterAll(async () => {
    if (d) expect(await d.stop()).toBe(0);
    if (work) fs.rmSync(work, { recursive: true, force: true });
  }, 60_000);

  vmIt('replica create: a read-only export whose size is the packed image size', async () => {
    if (missing.length) throw new Error(`CI=true and the kernel-replica prerequisites are missing: ${missing.join(', ')}`);
    // the source holds what qemu-io wrote (else every compare below would be meaningless)
    const src = path.join(work, 'vol.raw');
    await tool('nbdcopy', [d.uri('vol'), src], 120_000);
    expect(fs.readFileSync(src).equals(expected), 'the source volume does not hold what qemu-io wrote').toBe(true);

    rep = await cliJson<ReplicaInfo>(d, ['replica', 'create', 'vol', 'rep']);
    console.log(`replica rep: ${rep.records} records of ${rep.chunkSize} bytes, image ${rep.imageBytes} bytes`);
    expect(rep).toMatchObject({ name: 'rep', volumeSize: VOL_SIZE, origin: { name: 'vol' } });
    const cs = rep.chunkSize;
    const chunksOf = (writes: Write[]) => {
      const set = new Set<number>();
      for (const w of writes) for (let c = Math.floor(w.offset / cs); c <= Math.floor((w.offset + w.length - 1) / cs); c++) set.add(c);
      return set.size;
    };
    // zeros written as data may or may not allocate; everything else does
    expect(rep.records).toBeGreaterThanOrEqual(chunksOf(WRITES.filter((w) => w.pattern !== 0)));
    expect(rep.records).toBeLessThanOrEqual(chunksOf(WRITES));
    expect(rep.dataBytes).toBe(rep.records * cs);
    // docs/stream-format.md: totalBytes = 4096 + pad4k(16n) + n × chunkSize + pad4k(4n) + 4096
    expect(rep.imageBytes).toBe(4096 + pad4k(16 * rep.records) + rep.records * cs + pad4k(4 * rep.records) + 4096);

    const size = Number((await tool('nbdinfo', ['--size', d.uri('rep')])).trim());
    expect(size).toBe(rep.imageBytes);
    const info = JSON.parse(await tool('nbdinfo', ['--json', d.uri('rep')])) as { exports: Array<{ is_read_only: boolean }> };
    expect(info.exports[0].is_read_only).toBe(true);
    // a write over NBD is refused (the image is compared again after the guest and the restores)
    await expect(tool('qemu-io', ['-f', 'raw', d.uri('rep'), '-c', 'write -P 0x55 0 4096'])).rejects.toThrow();
  }, 120_000);

  vmIt('in the guest: /dev/nbd0 (replica) is read-only, dd bs=256k copies it onto /dev/nbd1; the bytes equal what nbdcopy reads', async () => {
    if (missing.length) throw new Error(`CI=true and the kernel-replica prerequisites are missing: ${missing.join(', ')}`);
    expect(rep, 'replica create failed').toBeDefined();
    const dumpSize = Math.ceil(rep.imageBytes / MiB) * MiB + 1 * MiB;
    await cliJson(d, ['volume', 'create', 'dump', '--size', String(dumpSize)]);

    const script = path.join(work, 'guest-replica.sh');
    fs.writeFileSync(script, guestScript(rep.imageBytes), { mode: 0o755 });
    const r = await nbdVmTest(['--unix', d.nbdSocket, '--export', 'rep', '--guest-script', script, '--timeout', String(VM_TIMEOUT_S)], (VM_TIMEOUT_S + 30) * 1000);
    assertPass(r, 'nbd-vm-test replica script');
    console.log(`kernel client replica dd: PASS in ${(r.ms / 1000).toFixed(1)} s\n${r.stdout.split('\n').filter((l) => l.startsWith('NBDVM: ')).join('\n')}`);
    const guestHash = /NBDVM: REPLICA-SHA256 ([0-9a-f]{64})/.exec(r.stdout)?.[1];
    const guestDumpHash = /NBDVM: DUMP-SHA256 ([0-9a-f]{64})/.exec(r.stdout)?.[1];
    expect(guestHash, 'the guest printed no REPLICA-SHA256').toBeDefined();
    expect(guestDumpHash).toBe(guestHash);

    // the image as libnbd reads it on the host
    const hostImagePath = path.join(work, 'rep.img');
    await tool('nbdcopy', [d.uri('rep'), hostImagePath], 120_000);
    const hostImage = fs.readFileSync(hostImagePath);
    expect(hostImage.length).toBe(rep.imageBytes);
    expect(sha256(hostImage), 'the kernel client read other bytes from the replica than nbdcopy').toBe(guestHash);

    // what the guest's dd wrote into `dump`: the image, then zeros
    const dumpPath = path.join(work, 'dump.raw');
    await tool('nbdcopy', [d.uri('dump'), dumpPath], 120_000);
    const dump = fs.readFileSync(dumpPath);
    expect(dump.length).toBe(dumpSize);
    const head = dump.subarray(0, rep.imageBytes);
    if (!head.equals(hostImage)) {
      let at = 0;
      while (at < head.length && head[at] === hostImage[at]) at++;
      throw new Error(`the image dd wrote into dump differs from the replica export from byte ${at} (of ${rep.imageBytes})`);
    }
    expect(dump.subarray(rep.imageBytes).every((b) => b === 0), 'dump has data after the image').toBe(true);
    guestImage = path.join(work, 'guest-image.bin');
    fs.writeFileSync(guestImage, head);
  }, (VM_TIMEOUT_S + 120) * 1000);

  vmIt('the image restores: restore --from the guest dump --as, replica restore --as and --into equal the source (qemu-img compare)', async () => {
    if (missing.length) throw new Error(`CI=true and the kernel-replica prerequisites are missing: ${missing.join(', ')}`);
    expect(rep, 'replica create failed').toBeDefined();
    expect(guestImage, 'the guest test did not produce the dumped image').toBeDefined();
    const compare = (a: string, b: string) => tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', d.uri(a), d.uri(b)], 120_000);

    const r1 = await cliJson<RestoreResult>(d, ['restore', '--from', guestImage!, '--as', 'r1']);
    expect(r1).toMatchObject({ kind: 'replica', volume: 'r1', volumeSize: VOL_SIZE, records: rep.records });
    expect(await compare('vol', 'r1')).toMatch(/Images are identical/);

    const r2 = await cliJson<RestoreResult>(d, ['replica', 'restore', 'rep', '--as', 'r2']);
    expect(r2).toMatchObject({ kind: 'replica', volume: 'r2', volumeSize: VOL_SIZE, records: rep.records });
    expect(await compare('vol', 'r2')).toMatch(/Images are identical/);

    // restored volumes are thin: no more allocated than the replica's records
    for (const v of ['r1', 'r2']) expect(await allocatedBytes(d, v), `${v} allocation`).toBeLessThanOrEqual(rep.dataBytes);

    // into an existing volume of the same size that holds other data, also where the source has holes
    await cliJson(d, ['volume', 'create', 'other', '--size', '64MiB']);
    await writeVolume(d, 'other', OTHER_WRITES, work);
    await expect(compare('vol', 'other')).rejects.toThrow(/differ|mismatch/i);
    const r3 = await cliJson<RestoreResult>(d, ['replica', 'restore', 'rep', '--into', 'other']);
    expect(r3).toMatchObject({ kind: 'replica', volume: 'other', volumeSize: VOL_SIZE, records: rep.records });
    expect(await compare('vol', 'other')).toMatch(/Images are identical/);
    console.log(`restored r1 (guest dump), r2, other (--into): identical to vol; allocated ${await allocatedBytes(d, 'r2')} of ${rep.dataBytes} replica data bytes`);

    // the replica is still intact and deletable
    const again = path.join(work, 'rep-again.img');
    await tool('nbdcopy', [d.uri('rep'), again], 120_000);
    expect(sha256(fs.readFileSync(again))).toBe(sha256(fs.readFileSync(guestImage!)));
    await cliJson(d, ['replica', 'delete', 'rep']);
    const list = await cliJson<{ replicas: ReplicaInfo[] }>(d, ['replica', 'list']);
    expect(list.replicas.map((x) => x.name)).not.toContain('rep');
  }, 300_000);
});
