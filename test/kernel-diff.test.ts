/**
 * Difference backups dumped and restored with dd through the real Linux kernel NBD client (nbd.ko + nbd-client)
 * inside a qemu TCG guest (../shared/tools/nbd-vm, see its README), with ext4 on the volume: "files written in
 * several generations come back after restoring full + diffs into a new volume".
 *
 * The guest sees nothing but NBD exports, so every stream reaches it as an export: the diff exports themselves
 * (`diff export`, read-only, exactly the stream's size), plain volumes the guest dumped them into (`dumpN`, created
 * with exactly the stream's size, so a later `dd if=` of them is the stream again), and `fullimg`, a volume holding
 * the bytes of the full backup file. Five guest runs, each a short script, with host steps in between:
 *
 *   run 1  mkfs.ext4 on `src`, generation 1 of the files.                      host: backup full, restore export rfull --as restored
 *   run 2  dd fullimg -> rfull (16 TiB default device); generation 2 of the files.   host: rfull done, restored = src at the full; diff export d1
 *   run 3  dd d1 -> dump1 (and d1 refuses writes); generation 3 of the files.        host: dump1 = d1 byte for byte; diff remove d1; diff export d2; restore export rd1 --into restored
 *   run 4  dd d2 -> dump2; dd dump1 -> rd1.                                    host: rd1 done, restored = src at d1; diff remove d2; restore export rd2 --into restored, rbad --into victim
 *   run 5  dd dump2 -> rd2; restored: e2fsck, mount read-only, every file's md5, deleted files gone; dd of a
 *          stream with one flipped byte -> rbad must fail (the FLUSH of conv=fsync gets EIO).
 *   host   restored = src (qemu-img compare), same generation map and backup chain; restore --from full --from d1
 *          --from d2 --as restored2 (the files the guest dumped) = src; rbad failed naming the record and its
 *          generation, and `victim` is unchanged.
 *
 * Needs qemu-system-x86_64, a kernel image in /boot with its modules, busybox-static, nbd-client and e2fsprogs (the
 * nbd-vm README's list), plus nbdcopy, nbdinfo and qemu-img. Without them the tests skip locally with a message, and
 * fail when CI=true.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon, cliJson, tempDir, tool, poolCheck, IN_CI, missingVmPrerequisites, type Daemon } from './helpers/daemon.js';
import { NBD_VM, assertPass, nbdVmTest } from './helpers/nbd-vm.js';

const MiB = 1024 * 1024;
const VOL_SIZE = 128 * MiB;
/** a whole guest run (boot + script) must stay well inside this; each moves a few tens of MiB at most */
const VM_TIMEOUT_S = 300;
const VM_IT_TIMEOUT_MS = (VM_TIMEOUT_S + 120) * 1000;
/** `restore export --as` without --size: a 16 TiB device (src/backup/restore-session.ts DEFAULT_AS_DEVICE_BYTES) */
const DEFAULT_AS_DEVICE_BYTES = 2 ** 44;

const missing = missingVmPrerequisites(NBD_VM, ['qemu-system-x86_64', 'busybox', 'nbd-client', 'mkfs.ext4', 'e2fsck', 'cpio', 'socat', 'nbdcopy', 'nbdinfo', 'qemu-img']);
const skipLocally = missing.length > 0 && !IN_CI;
if (skipLocally) {
  console.warn(`kernel-diff.test: SKIPPED, missing ${missing.join(', ')} (install them as the nbd-vm README says; with CI=true this fails)`);
}
const vmIt = skipLocally ? it.skip : it;
function requirePrerequisites(): void {
  if (missing.length) throw new Error(`CI=true and the kernel-diff prerequisites are missing: ${missing.join(', ')}`);
}

// ---- what the CLI prints with --json (the fields used here)
interface BackupChain {
  baseStreamUuid: string;
  throughGeneration: number;
}
interface VolumeInfo {
  name: string;
  size: number;
  generation: number;
  allocatedChunks: number;
  backupChain: BackupChain | null;
}
interface FullBackupResult {
  streamUuid: string;
  records: number;
  bytes: number;
  currentGeneration: number;
}
interface DiffExportInfo {
  name: string;
  volume: string | null;
  generationFrom: number;
  generationTo: number;
  baseStreamUuid: string;
  streamUuid: string;
  records: number;
  dataBytes: number;
  bytes: number;
  clients: number;
}
interface RestoreResult {
  streams: Array<{ kind: string; generations: string; records: number }>;
  volume: string | null;
  volumeSize: number;
  generation: number | null;
  backupChain: BackupChain | null;
  records: number;
}
interface RestoreSessionInfo {
  name: string;
  into: string | null;
  as: string | null;
  deviceBytes: number;
  state: 'waiting' | 'receiving' | 'done' | 'failed' | 'cancelled';
  bytesDone: number;
  streamBytes: number | null;
  bytesIgnored: number;
  error?: { code: string; message: string };
  result?: RestoreResult;
}
interface Generations {
  current: number;
  chunkSize: number;
  counts: Array<{ generation: number; chunks: number; bytes: number }>;
  map?: Array<{ offset: number; length: number; generation: number }>;
}

const sha256 = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');
const pad4k = (n: number) => Math.ceil(n / 4096) * 4096;
/** docs/stream-format.md: totalBytes = 4096 + pad4k(16n) + n × chunkSize + pad4k(4n) + 4096 */
const streamBytes = (records: number, chunkSize: number) => 4096 + pad4k(16 * records) + records * chunkSize + pad4k(4 * records) + 4096;
const sectors = (bytes: number) => bytes / 512;

// ---- the guest side: a common prelude, the file changes of each generation, and one script per run

/** busybox sh helpers shared by every run (no "${" in here: this is a template literal) */
const PRELUDE = `#!/bin/sh
# generated by test/kernel-diff.test.ts
set -u
MNT=/mnt/fs
mkdir -p $MNT
step() { echo "NBDVM: [$(cut -d' ' -f1 /proc/uptime)s] $*"; }
oneline() { tr '\\n' ' ' < "$1"; }
cleanup() { umount $MNT >/dev/null 2>&1; for n in 0 1 2 3; do nbd-client -d /dev/nbd$n >/dev/null 2>&1; done; }
fail() { echo "$*" > /tmp/nbdvm-fail-reason; echo "NBDVM: FAIL: $*"; dmesg | tail -n 30; cleanup; exit 1; }
run() { eval "$1" || fail "$1: failed"; }
size_of() { cat /sys/block/$(basename "$1")/size; }
# attach EXPORT DEV SECTORS(""=any) rw|ro: connect (netlink), wait for the size, check size and read-only flag
attach() {
  nbd-client -N "$1" "$NBDVM_HOST" "$NBDVM_PORT" "$2" >/tmp/nbd.out 2>&1 || fail "nbd-client -N $1 $2 failed: $(oneline /tmp/nbd.out)"
  i=0; while [ "$(size_of $2)" = 0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  step "attached $1 as $2: $(size_of $2) sectors, ro=$(blockdev --getro $2)"
  [ -z "$3" ] || [ "$(size_of $2)" = "$3" ] || fail "$2 ($1) has $(size_of $2) sectors, expected $3"
  want=0; [ "$4" = ro ] && want=1
  [ "$(blockdev --getro $2)" = "$want" ] || fail "$2 ($1): blockdev --getro says $(blockdev --getro $2), expected $want"
}
detach() {
  sync
  nbd-client -d "$1" >/tmp/nbd.out 2>&1 || fail "nbd-client -d $1 failed: $(oneline /tmp/nbd.out)"
  i=0; while [ "$(size_of $1)" != 0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
}
# ddcopy FROM TO [dd options]: all of FROM onto TO with dd bs=256k
ddcopy() {
  from=$1; to=$2; shift 2
  step "dd if=$from of=$to bs=256k $*"
  dd if="$from" of="$to" bs=256k "$@" 2>/tmp/dd.err || fail "dd if=$from of=$to bs=256k $* failed: $(oneline /tmp/dd.err)"
  step "dd: $(oneline /tmp/dd.err)"
}
mountfs() { mount -t ext4 "$@" 2>/tmp/mount.err || fail "mount $* failed: $(oneline /tmp/mount.err) $(dmesg | tail -n 3 | tr '\\n' ' ')"; }
# the md5 of every file under $MNT, as NBDVM: SUM lines (the host reads them from the console)
manifest() {
  (cd $MNT && find . -type f | sort | while read -r f; do md5sum "$f" || exit 1; done) > /tmp/manifest || fail "md5sum of the files failed"
  sed 's/^/NBDVM: SUM /' /tmp/manifest
}
stream_sha() { # LABEL DEV: the SHA-256 of the whole device
  h=$(sha256sum "$2" | cut -d' ' -f1)
  [ -n "$h" ] || fail "sha256sum $2 failed"
  echo "NBDVM: $1-SHA256 $h"
}
`;

/**
 * The changes of each generation, on the ext4 filesystem mounted at $MNT: new files, files rewritten in place, an
 * append, deletes, a rename and a truncate, so that data and metadata chunks change in every generation.
 */
const GENERATIONS: Record<1 | 2 | 3, string[]> = {
  1: [
    'mkdir -p $MNT/g1/small',
    'dd if=/dev/urandom of=$MNT/g1/big bs=64k count=48 2>/dev/null',
    'seq 1 20000 > $MNT/g1/seq.txt',
    'for i in $(seq 1 30); do head -c $((i * 700 + 1)) /dev/urandom > $MNT/g1/small/s$i || fail "writing s$i failed"; done',
    'dd if=/dev/urandom of=$MNT/g1/keep bs=4k count=20 2>/dev/null',
    'echo gen1 > $MNT/generation',
  ],
  2: [
    'mkdir $MNT/g2',
    'dd if=/dev/urandom of=$MNT/g2/new bs=64k count=32 2>/dev/null',
    'dd if=/dev/urandom of=$MNT/g1/big bs=4k seek=100 count=16 conv=notrunc 2>/dev/null',
    'for i in $(seq 1 10); do rm $MNT/g1/small/s$i || fail "rm s$i failed"; done',
    'seq 20001 25000 >> $MNT/g1/seq.txt',
    'dd if=/dev/urandom of=$MNT/g2/doomed bs=64k count=8 2>/dev/null',
    'echo gen2 > $MNT/generation',
  ],
  3: [
    'rm $MNT/g2/doomed',
    'mkdir $MNT/g3',
    'mv $MNT/g1/small/s20 $MNT/g3/moved-s20',
    'dd if=/dev/urandom of=$MNT/g3/new bs=64k count=16 2>/dev/null',
    'dd if=/dev/urandom of=$MNT/g2/new bs=4k seek=10 count=4 conv=notrunc 2>/dev/null',
    'truncate -s 1000000 $MNT/g1/big',
    'echo gen3 > $MNT/generation',
  ],
};
/** files that existed in some generation and are gone in the last one */
const DELETED = ['g1/small/s1', 'g1/small/s5', 'g1/small/s10', 'g1/small/s20', 'g2/doomed'];

/** attach src, (mkfs,) mount, write generation `gen`, print the manifest, unmount, detach */
function writeGeneration(gen: 1 | 2 | 3): string {
  return [
    `attach src /dev/nbd0 ${sectors(VOL_SIZE)} rw`,
    gen === 1
      ? 'step "mkfs.ext4 /dev/nbd0"; mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 -L tvdiff /dev/nbd0 >/tmp/mkfs.out 2>&1 || fail "mkfs.ext4 failed: $(oneline /tmp/mkfs.out)"'
      : '',
    'mountfs /dev/nbd0 $MNT',
    `step "generation ${gen}: writing"`,
    ...GENERATIONS[gen].map((c) => `run '${c}'`),
    'sync',
    `step "generation ${gen} written: $(df -k $MNT | tail -n 1 | tr -s ' ')"`,
    'manifest',
    'umount $MNT || fail "umount failed"',
    'detach /dev/nbd0',
  ].join('\n');
}

/** dd a diff export (read-only, exactly the stream's size) onto a volume of the same size; print both hashes */
function dumpDiff(diff: string, dump: string, bytes: number): string {
  return [
    `attach ${diff} /dev/nbd1 ${sectors(bytes)} ro`,
    `if dd if=/dev/zero of=/dev/nbd1 bs=4096 count=1 conv=fsync 2>/tmp/ddw.err; then fail "dd wrote to the read-only diff export ${diff}"; fi`,
    `step "a write to /dev/nbd1 (${diff}) is refused: $(oneline /tmp/ddw.err)"`,
    `attach ${dump} /dev/nbd2 ${sectors(bytes)} rw`,
    'ddcopy /dev/nbd1 /dev/nbd2 conv=fsync',
    'echo 3 > /proc/sys/vm/drop_caches',
    `stream_sha ${diff.toUpperCase()} /dev/nbd1`,
    `stream_sha ${dump.toUpperCase()} /dev/nbd2`,
    'detach /dev/nbd2',
    'detach /dev/nbd1',
  ].join('\n');
}

/**
 * dd a stream (a volume of exactly its size) into a restore export, O_DIRECT, then fsync: the FLUSH returns only once
 * the stream is applied. With `newVolume` (a restore --as), that volume must be listed by the server the moment dd
 * returns (it appears only when the restore commits).
 */
function restoreStream(from: string, fromBytes: number, session: string, deviceBytes: number, newVolume?: string): string {
  return [
    `attach ${from} /dev/nbd1 ${sectors(fromBytes)} rw`,
    `attach ${session} /dev/nbd2 ${sectors(deviceBytes)} rw`,
    'ddcopy /dev/nbd1 /dev/nbd2 oflag=direct conv=fsync',
    newVolume
      ? `nbd-client -l "$NBDVM_HOST" "$NBDVM_PORT" >/tmp/list.out 2>&1; grep -q '^${newVolume}:' /tmp/list.out || fail "dd conv=fsync into ${session} returned, but the server does not list ${newVolume} yet: $(oneline /tmp/list.out)"; step "${newVolume} is listed as soon as dd returned"`
      : '',
    'detach /dev/nbd2',
    'detach /dev/nbd1',
  ].join('\n');
}

function script(...parts: string[]): string {
  return [PRELUDE, ...parts, 'step "guest part done"', 'exit 0', ''].join('\n');
}

/** the md5 manifest the guest printed last: "md5  ./path" lines */
function parseManifest(stdout: string): string[] {
  return [...stdout.matchAll(/^NBDVM: SUM ([0-9a-f]{32}  \.\/[^\r\n]+)\r?$/gm)].map((m) => m[1]);
}

describe('diff and restore exports through the Linux kernel NBD client (qemu guest): dd dump and restore, with ext4 on the volume', () => {
  let d: Daemon;
  let work: string;
  let full: FullBackupResult;
  let fullFile: string;
  const diffs: DiffExportInfo[] = [];
  const diffFiles: string[] = [];
  /** the final generation's manifest printed by the guest */
  let finalManifest: string[] = [];
  let victimBefore: { info: VolumeInfo; sha: string } | undefined;
  let bad: { record: number; records: number; volumeOffset: number; generation: number } | undefined;
  let lastRunOk = false;

  const compare = (a: string, b: string) => tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', d.uri(a), d.uri(b)], 120_000);
  const volumeInfo = (name: string) => cliJson<VolumeInfo>(d, ['volume', 'info', name]);
  const status = (name: string) => cliJson<RestoreSessionInfo>(d, ['restore', 'status', name]);
  const hashVolume = async (name: string) => {
    const file = path.join(work, `${name}.hash.raw`);
    await tool('nbdcopy', [d.uri(name), file], 120_000);
    const h = sha256(fs.readFileSync(file));
    fs.rmSync(file);
    return h;
  };
  /** a plain volume of exactly `bytes` holding `file` (so that dd of its device in the guest is the file) */
  const volumeFromFile = async (name: string, file: string) => {
    const bytes = fs.statSync(file).size;
    await cliJson(d, ['volume', 'create', name, '--size', String(bytes)]);
    await tool('nbdcopy', [file, d.uri(name)], 120_000);
  };
  /** the guest's connections close a moment after it detached: wait until the export has no clients */
  const waitNoClients = async (diffName: string) => {
    for (let i = 0; i < 100; i++) {
      if ((await cliJson<DiffExportInfo>(d, ['diff', 'info', diffName])).clients === 0) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`diff export ${diffName} still has NBD clients`);
  };
  const guestRun = async (label: string, text: string) => {
    const file = path.join(work, `guest-${label}.sh`);
    fs.writeFileSync(file, text, { mode: 0o755 });
    const r = await nbdVmTest(['--unix', d.nbdSocket, '--export', 'src', '--guest-script', file, '--timeout', String(VM_TIMEOUT_S)], (VM_TIMEOUT_S + 30) * 1000);
    const steps = r.stdout
      .split('\n')
      .filter((l) => l.startsWith('NBDVM: ') && !l.startsWith('NBDVM: SUM '))
      .join('\n');
    console.log(`guest ${label}: exit ${r.code ?? r.signal} in ${(r.ms / 1000).toFixed(1)} s\n${steps}`);
    assertPass(r, `guest ${label}`);
    return r;
  };
  /** the restore export's stream was restored: state done, the whole stream consumed, nothing past it */
  const expectDone = async (name: string, volume: string, stream: number): Promise<RestoreSessionInfo> => {
    const s = await status(name);
    expect(s.state, `restore export ${name}: ${JSON.stringify(s.error ?? s)}`).toBe('done');
    expect(s).toMatchObject({ bytesDone: stream, streamBytes: stream, bytesIgnored: 0 });
    expect(s.result!.volume).toBe(volume);
    return s;
  };
  /** the generation map from generation 1 on (what diffs restore): the same in the restored volume as in the original */
  const changedMap = async (name: string) => {
    const g = await cliJson<Generations>(d, ['volume', 'generations', name, '--map']);
    return { current: g.current, map: (g.map ?? []).filter((m) => m.generation >= 1) };
  };
  const exportDiff = async (name: string, expectFrom: number): Promise<DiffExportInfo> => {
    const before = await volumeInfo('src');
    const info = await cliJson<DiffExportInfo>(d, ['diff', 'export', 'src', '--name', name]);
    console.log(`diff export ${name}: generations ${info.generationFrom}..${info.generationTo}, ${info.records} records, ${info.bytes} bytes`);
    expect(info).toMatchObject({ name, volume: 'src', generationFrom: expectFrom, generationTo: before.generation, baseStreamUuid: full.streamUuid, clients: 0 });
    expect(info.records).toBeGreaterThan(0);
    expect(info.bytes).toBe(streamBytes(info.records, info.dataBytes / info.records));
    // VOL moves to the next generation at once
    expect((await volumeInfo('src')).generation).toBe(before.generation + 1);
    // the export: read-only, exactly the stream's size
    expect(Number((await tool('nbdinfo', ['--size', d.uri(name)])).trim())).toBe(info.bytes);
    const ni = JSON.parse(await tool('nbdinfo', ['--json', d.uri(name)])) as { exports: Array<{ is_read_only: boolean }> };
    expect(ni.exports[0].is_read_only).toBe(true);
    const list = await cliJson<{ diffs: DiffExportInfo[] }>(d, ['diff', 'list']);
    expect(list.diffs.map((x) => x.name)).toContain(name);
    return info;
  };
  /** after the guest dumped a diff export onto `dump`: the same bytes as nbdcopy reads from the export; kept as a file */
  const checkDump = async (stdout: string, diff: DiffExportInfo, dump: string): Promise<string> => {
    const guestDiff = new RegExp(`NBDVM: ${diff.name.toUpperCase()}-SHA256 ([0-9a-f]{64})`).exec(stdout)?.[1];
    const guestDump = new RegExp(`NBDVM: ${dump.toUpperCase()}-SHA256 ([0-9a-f]{64})`).exec(stdout)?.[1];
    expect(guestDiff, `the guest printed no hash of ${diff.name}`).toBeDefined();
    expect(guestDump, `the guest read back other bytes from ${dump} than from ${diff.name}`).toBe(guestDiff);
    const hostFile = path.join(work, `${diff.name}.nbdcopy`);
    await tool('nbdcopy', [d.uri(diff.name), hostFile], 120_000);
    const hostStream = fs.readFileSync(hostFile);
    expect(hostStream.length).toBe(diff.bytes);
    expect(sha256(hostStream), `the kernel client read other bytes from ${diff.name} than nbdcopy`).toBe(guestDiff);
    const dumpFile = path.join(work, `${diff.name}.tv`);
    await tool('nbdcopy', [d.uri(dump), dumpFile], 120_000);
    const dumped = fs.readFileSync(dumpFile);
    if (!dumped.equals(hostStream)) {
      let at = 0;
      while (at < dumped.length && dumped[at] === hostStream[at]) at++;
      throw new Error(`what the guest's dd wrote into ${dump} differs from the diff export ${diff.name} from byte ${at} (of ${diff.bytes})`);
    }
    expect(dumped.subarray(0, 8).toString('latin1')).toBe('TVSTREAM');
    return dumpFile;
  };
  /** `diff remove NAME`: gone from the list, its generations count as dumped in src's chain */
  const removeDiff = async (diff: DiffExportInfo) => {
    await waitNoClients(diff.name);
    const r = await cliJson<DiffExportInfo & { abandoned: boolean }>(d, ['diff', 'remove', diff.name]);
    expect(r).toMatchObject({ name: diff.name, abandoned: false, generationTo: diff.generationTo });
    const list = await cliJson<{ diffs: DiffExportInfo[] }>(d, ['diff', 'list']);
    expect(list.diffs.map((x) => x.name)).not.toContain(diff.name);
    expect((await volumeInfo('src')).backupChain).toEqual({ baseStreamUuid: full.streamUuid, throughGeneration: diff.generationTo });
  };

  beforeAll(async () => {
    if (skipLocally) return;
    work = tempDir('tv-kdiff-');
    d = await startDaemon({ pool: path.join(work, 'pool') });
    await cliJson(d, ['volume', 'create', 'src', '--size', String(VOL_SIZE)]);
  }, 120_000);

  afterAll(async () => {
    if (d) expect(await d.stop()).toBe(0);
    if (work) fs.rmSync(work, { recursive: true, force: true });
  }, 60_000);

  vmIt('run 1: mkfs.ext4 and generation 1 of the files in the guest; backup full; a restore export --as with the default device size', async () => {
    requirePrerequisites();
    await guestRun('1-gen1', script(writeGeneration(1)));

    fullFile = path.join(work, 'full.tv');
    full = await cliJson<FullBackupResult>(d, ['backup', 'full', 'src', '--to', fullFile]);
    console.log(`backup full: ${full.records} records, ${full.bytes} bytes`);
    expect(fs.statSync(fullFile).size).toBe(full.bytes);
    expect(full.currentGeneration).toBe(1);
    expect((await volumeInfo('src')).backupChain).toEqual({ baseStreamUuid: full.streamUuid, throughGeneration: 0 });
    // ground truth for later: src as the full backup holds it
    await cliJson(d, ['snapshot', 'create', 'src', 'at-full']);
    // the full stream reaches the guest as a volume of exactly its size
    await volumeFromFile('fullimg', fullFile);
    const s = await cliJson<RestoreSessionInfo>(d, ['restore', 'export', 'rfull', '--as', 'restored']);
    expect(s).toMatchObject({ name: 'rfull', as: 'restored', into: null, state: 'waiting', deviceBytes: DEFAULT_AS_DEVICE_BYTES });
    expect(Number((await tool('nbdinfo', ['--size', d.uri('rfull')])).trim())).toBe(DEFAULT_AS_DEVICE_BYTES);
    // the target of the damaged stream in run 5: a volume standing on the full backup, as a diff of it needs
    const victim = await cliJson<RestoreResult>(d, ['restore', '--from', fullFile, '--as', 'victim']);
    expect(victim.backupChain).toEqual({ baseStreamUuid: full.streamUuid, throughGeneration: 0 });
  }, VM_IT_TIMEOUT_MS);

  vmIt('run 2: dd of the full stream into the restore export (16 TiB device); generation 2 of the files; diff export d1', async () => {
    requirePrerequisites();
    expect(full, 'run 1 failed').toBeDefined();
    await guestRun('2-full-gen2', script(restoreStream('fullimg', full.bytes, 'rfull', DEFAULT_AS_DEVICE_BYTES, 'restored'), writeGeneration(2)));

    const s = await expectDone('rfull', 'restored', full.bytes);
    expect(s.result).toMatchObject({ volumeSize: VOL_SIZE, generation: 1, backupChain: { baseStreamUuid: full.streamUuid, throughGeneration: 0 } });
    expect(await compare('at-full', 'restored')).toMatch(/Images are identical/);

    diffs.push(await exportDiff('d1', 1));
    await cliJson(d, ['snapshot', 'create', 'src', 'at-d1']);
    await cliJson(d, ['volume', 'create', 'dump1', '--size', String(diffs[0].bytes)]);
  }, VM_IT_TIMEOUT_MS);

  vmIt('run 3: dd of diff export d1 onto a volume (the same bytes as nbdcopy reads); generation 3 of the files; diff remove d1, diff export d2', async () => {
    requirePrerequisites();
    expect(diffs.length, 'run 2 failed').toBe(1);
    const [d1] = diffs;
    const r = await guestRun('3-d1-gen3', script(dumpDiff('d1', 'dump1', d1.bytes), writeGeneration(3)));
    // the manifest printed after generation 3 was written (the guest's console echoed on stdout)
    finalManifest = parseManifest(r.stdout.slice(r.stdout.lastIndexOf('generation 3 written')));
    expect(finalManifest.length, 'the guest printed no manifest of generation 3').toBeGreaterThan(20);

    diffFiles.push(await checkDump(r.stdout, d1, 'dump1'));
    await removeDiff(d1);
    const d2 = await exportDiff('d2', d1.generationTo + 1);
    diffs.push(d2);
    await cliJson(d, ['volume', 'create', 'dump2', '--size', String(d2.bytes)]);
    const s = await cliJson<RestoreSessionInfo>(d, ['restore', 'export', 'rd1', '--into', 'restored']);
    expect(s).toMatchObject({ name: 'rd1', into: 'restored', state: 'waiting' });
    // default device size for --into: room for a full stream of the volume
    expect(s.deviceBytes).toBe(streamBytes(Math.ceil(VOL_SIZE / (d1.dataBytes / d1.records)), d1.dataBytes / d1.records));
  }, VM_IT_TIMEOUT_MS);

  vmIt('run 4: dd of diff export d2 onto a volume; dd of the dumped d1 into the restore export --into restored', async () => {
    requirePrerequisites();
    expect(diffs.length, 'run 3 failed').toBe(2);
    const [d1, d2] = diffs;
    const rd1 = await status('rd1');
    const r = await guestRun('4-d2-rd1', script(dumpDiff('d2', 'dump2', d2.bytes), restoreStream('dump1', d1.bytes, 'rd1', rd1.deviceBytes)));

    diffFiles.push(await checkDump(r.stdout, d2, 'dump2'));
    await removeDiff(d2);
    const s = await expectDone('rd1', 'restored', d1.bytes);
    expect(s.result).toMatchObject({ generation: d1.generationTo + 1, backupChain: { baseStreamUuid: full.streamUuid, throughGeneration: d1.generationTo } });
    expect(await compare('at-d1', 'restored')).toMatch(/Images are identical/);
    expect(await cliJson(d, ['restore', 'export', 'rd2', '--into', 'restored'])).toMatchObject({ name: 'rd2', state: 'waiting' });

    // the damaged stream: d1 as the guest dumped it, one byte flipped in the middle of a record's data
    const stream = Buffer.from(fs.readFileSync(diffFiles[0]));
    const records = d1.records;
    const record = Math.floor(records / 2);
    const chunkSize = d1.dataBytes / records;
    const dataOffset = Number(stream.readBigUInt64LE(112));
    expect(dataOffset).toBe(4096 + pad4k(16 * records));
    const entry = 4096 + 16 * record;
    bad = { record, records, volumeOffset: Number(stream.readBigUInt64LE(entry)), generation: stream.readUInt32LE(entry + 12) };
    stream[dataOffset + record * chunkSize + 777] ^= 0x10;
    const badFile = path.join(work, 'd1-damaged.tv');
    fs.writeFileSync(badFile, stream);
    await volumeFromFile('badimg', badFile);
    victimBefore = { info: await volumeInfo('victim'), sha: await hashVolume('victim') };
    expect(await cliJson(d, ['restore', 'export', 'rbad', '--into', 'victim'])).toMatchObject({ name: 'rbad', into: 'victim', state: 'waiting' });
  }, VM_IT_TIMEOUT_MS);

  vmIt('run 5: dd of the dumped d2 into restore export rd2; the restored ext4 holds every file of the last generation; a damaged stream is refused', async () => {
    requirePrerequisites();
    expect(bad, 'run 4 failed').toBeDefined();
    expect(finalManifest.length).toBeGreaterThan(0);
    const [d1, d2] = diffs;
    const rd2 = await status('rd2');
    const rbad = await status('rbad');
    const verify = [
      // the FLUSH of rd2 returned only once the stream was applied: restored is complete now
      `attach restored /dev/nbd3 ${sectors(VOL_SIZE)} rw`,
      'blockdev --setro /dev/nbd3 || fail "blockdev --setro failed"',
      'e2fsck -fn /dev/nbd3 >/tmp/fsck.out 2>&1 || fail "e2fsck -fn of the restored volume: $(oneline /tmp/fsck.out)"',
      'step "e2fsck -fn: $(tail -n 1 /tmp/fsck.out)"',
      'mountfs -o ro /dev/nbd3 $MNT',
      "cat > /tmp/expected <<'EOF'",
      ...finalManifest,
      'EOF',
      '(cd $MNT && md5sum -c /tmp/expected) >/tmp/md5.out 2>&1 || fail "md5sum -c on the restored filesystem: $(grep -v \': OK$\' /tmp/md5.out | head -n 5 | tr \'\\n\' \' \')"',
      'step "md5sum -c: $(grep -c \': OK$\' /tmp/md5.out) files OK"',
      "cut -c35- /tmp/expected | sort > /tmp/want",
      '(cd $MNT && find . -type f | sort) > /tmp/found',
      'cmp -s /tmp/want /tmp/found || fail "the restored filesystem holds other files: $(diff /tmp/want /tmp/found | tr \'\\n\' \' \')"',
      ...DELETED.map((f) => `[ ! -e $MNT/${f} ] || fail "${f} was deleted but is back"`),
      '[ "$(cat $MNT/generation)" = gen3 ] || fail "generation file says $(cat $MNT/generation)"',
      'step "restored filesystem: every file of generation 3 with its md5, the deleted ones gone"',
      'umount $MNT || fail "umount failed"',
      'detach /dev/nbd3',
    ].join('\n');
    const refused = [
      `attach badimg /dev/nbd1 ${sectors(d1.bytes)} rw`,
      `attach rbad /dev/nbd2 ${sectors(rbad.deviceBytes)} rw`,
      'step "dd of the damaged stream into rbad"',
      'if dd if=/dev/nbd1 of=/dev/nbd2 bs=256k oflag=direct conv=fsync 2>/tmp/dd.err; then fail "dd of the damaged stream succeeded: $(oneline /tmp/dd.err)"; fi',
      'step "refused, as it must be: $(oneline /tmp/dd.err)"',
      'nbd-client -d /dev/nbd2 >/dev/null 2>&1',
      'detach /dev/nbd1',
    ].join('\n');
    await guestRun('5-rd2-verify-bad', script(restoreStream('dump2', d2.bytes, 'rd2', rd2.deviceBytes), verify, refused));
    lastRunOk = true;

    const s = await expectDone('rd2', 'restored', d2.bytes);
    const srcInfo = await volumeInfo('src');
    expect(srcInfo.backupChain).toEqual({ baseStreamUuid: full.streamUuid, throughGeneration: d2.generationTo });
    expect(s.result).toMatchObject({ generation: srcInfo.generation, backupChain: srcInfo.backupChain });
    // src has not changed since d2 was exported (the guest mounted the restored volume read-only)
    expect(await compare('src', 'restored')).toMatch(/Images are identical/);
    expect((await volumeInfo('restored')).backupChain).toEqual(srcInfo.backupChain);
    expect(await changedMap('restored')).toEqual(await changedMap('src'));

    // the damaged stream: refused, the reason names the record and its generation, victim unchanged
    const b = await status('rbad');
    expect(b.state).toBe('failed');
    console.log(`rbad: ${b.error?.message}`);
    expect(b.error?.message).toContain(`record ${bad!.record} of ${bad!.records} (volume offset ${bad!.volumeOffset}, generation ${bad!.generation},`);
    expect(b.error?.message).toMatch(/CRC32C mismatch/);
    expect(b.result).toBeUndefined();
    const victimAfter = await volumeInfo('victim');
    expect(victimAfter).toMatchObject({ generation: victimBefore!.info.generation, backupChain: victimBefore!.info.backupChain, allocatedChunks: victimBefore!.info.allocatedChunks });
    expect(await hashVolume('victim'), 'the damaged stream changed victim').toBe(victimBefore!.sha);
    expect(await compare('at-full', 'victim')).toMatch(/Images are identical/);
  }, VM_IT_TIMEOUT_MS);

  vmIt('restore --from full --from d1 --from d2 (the files the guest dumped) --as restored2 equals src; the pool checks out', async () => {
    requirePrerequisites();
    expect(lastRunOk, 'run 5 failed').toBe(true);
    const [d1, d2] = diffs;
    const r = await cliJson<RestoreResult>(d, ['restore', '--from', fullFile, '--from', diffFiles[0], '--from', diffFiles[1], '--as', 'restored2']);
    expect(r.streams.map((x) => `${x.kind} ${x.generations}`)).toEqual([
      'full base',
      `diff ${d1.generationFrom}..${d1.generationTo}`,
      `diff ${d2.generationFrom}..${d2.generationTo}`,
    ]);
    expect(r.records).toBe(full.records + d1.records + d2.records);
    const srcInfo = await volumeInfo('src');
    expect(r).toMatchObject({ volume: 'restored2', volumeSize: VOL_SIZE, generation: srcInfo.generation, backupChain: srcInfo.backupChain });
    expect(await compare('src', 'restored2')).toMatch(/Images are identical/);
    expect(await changedMap('restored2')).toEqual(await changedMap('src'));
    const check = await poolCheck(d);
    expect(check.problems).toEqual([]);
    expect(check.ok).toBe(true);
  }, 300_000);
});
