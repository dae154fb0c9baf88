/**
 * The dd pseudo-devices of difference backups on the host, with libnbd's nbdcopy and nbdinfo as the clients (the
 * kernel client in a guest is kernel-diff.test.ts): what `diff export` and `restore export` promise beyond the
 * happy path, and compression.
 *
 * - a diff export is exactly the stream `backup diff` would write, survives a daemon restart, `diff remove` moves the
 *   chain on and `--abandon` (or `volume delete`) leaves its generations for the next diff;
 * - a restore export: nbdcopy writes with many requests in flight (out of order), and its final FLUSH returns only
 *   once the stream is applied; garbage, a truncated stream and a cancelled session change nothing, later writes and
 *   flushes fail with EIO, and `restore status` says why;
 * - `--compress`: the file is gzip, smaller, restores identically, and the estimate is an upper bound.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { startDaemon, restartDaemon, cliJson, tempDir, tool, poolCheck, type Daemon } from './helpers/daemon.js';

const MiB = 1024 * 1024;

interface DiffInfo {
  name: string;
  volume: string | null;
  generationFrom: number;
  generationTo: number;
  bytes: number;
  records: number;
}
interface SessionInfo {
  state: string;
  bytesDone: number;
  streamBytes: number | null;
  error?: { code: string; message: string };
  result?: { volume: string; generation: number };
}
interface VolumeInfo {
  name: string;
  kind: string;
  generation: number;
  backupChain: { baseStreamUuid: string; throughGeneration: number } | null;
}

async function qemuIo(d: Daemon, name: string, cmds: string[]): Promise<void> {
  await tool('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), d.uri(name)]);
}

async function identical(d: Daemon, a: string, b: string): Promise<boolean> {
  try {
    await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', d.uri(a), d.uri(b)]);
    return true;
  } catch {
    return false;
  }
}

function sha(file: string): string {
  return execFileSync('sha256sum', [file]).toString().split(' ')[0];
}

describe('diff export and restore export (dd pseudo-devices) on the host', () => {
  let d: Daemon;
  let dir: string;
  beforeAll(async () => {
    d = await startDaemon();
    dir = tempDir('tv-diffdev-');
    await cliJson(d, ['volume', 'create', 'v', '--size', '64MiB']);
    await qemuIo(d, 'v', ['write -P 0x11 0 6M', 'write -P 0x22 30M 1M', 'flush']);
    await cliJson(d, ['backup', 'full', 'v', '--to', path.join(dir, 'full.tv')]);
  }, 60_000);
  afterAll(async () => {
    if (d) {
      expect((await poolCheck(d)).ok).toBe(true);
      await d.stop();
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a diff export holds exactly the stream backup diff writes, survives a restart, and diff remove moves the chain on', async () => {
    await qemuIo(d, 'v', ['write -P 0x33 1M 200k', 'write -P 0x44 40M 64k', 'discard 30M 128k', 'flush']);
    const est = await cliJson<{ bytes: number; records: number }>(d, ['backup', 'estimate', 'v']);
    const ex = await cliJson<DiffInfo>(d, ['diff', 'export', 'v', '--name', 'd1']);
    expect(ex).toMatchObject({ volume: 'v', generationFrom: 1, generationTo: 1, bytes: est.bytes, records: est.records });
    // the volume moved on at once: new writes are generation 2 and not in d1
    expect((await cliJson<VolumeInfo>(d, ['volume', 'info', 'v'])).generation).toBe(2);
    await qemuIo(d, 'v', ['write -P 0x55 50M 64k', 'flush']);
    const info = JSON.parse(await tool('nbdinfo', ['--json', d.uri('d1')]));
    expect(info.exports[0]['export-size']).toBe(est.bytes);
    expect(info.exports[0]['is_read_only']).toBe(true);
    await expect(qemuIo(d, 'd1', ['write 0 4k'])).rejects.toThrow(/Permission denied|read-only|EPERM/i);
    const a = path.join(dir, 'd1-a.tv');
    await tool('nbdcopy', [d.uri('d1'), a]);
    expect(fs.statSync(a).size).toBe(est.bytes);
    // a daemon restart keeps the export, byte for byte (a failed dd can be repeated)
    d = await (async () => {
      await d.stop();
      return restartDaemon(d);
    })();
    const list = await cliJson<{ diffs: DiffInfo[] }>(d, ['diff', 'list']);
    expect(list.diffs.map((x) => x.name)).toEqual(['d1']);
    const b = path.join(dir, 'd1-b.tv');
    await tool('nbdcopy', [d.uri('d1'), b]);
    expect(sha(b)).toBe(sha(a));
    // the stream restores (full + d1) to the volume as it was when d1 was made: that point, minus generation 2's write
    await cliJson(d, ['restore', '--from', path.join(dir, 'full.tv'), '--from', a, '--as', 'r1']);
    await qemuIo(d, 'r1', ['write -P 0x55 50M 64k', 'flush']);
    expect(await identical(d, 'v', 'r1')).toBe(true);
    // removing it while it is attached is refused; then it counts as dumped
    const removed = await cliJson<DiffInfo & { abandoned: boolean }>(d, ['diff', 'remove', 'd1']);
    expect(removed.abandoned).toBe(false);
    expect((await cliJson<VolumeInfo>(d, ['volume', 'info', 'v'])).backupChain?.throughGeneration).toBe(1);
    expect((await cliJson<{ generationFrom: number }>(d, ['backup', 'estimate', 'v'])).generationFrom).toBe(2);
    await cliJson(d, ['volume', 'delete', 'r1']);
  }, 120_000);

  it('diff remove --abandon and volume delete of a diff export leave its generations for the next diff', async () => {
    const before = await cliJson<VolumeInfo>(d, ['volume', 'info', 'v']);
    const e2 = await cliJson<DiffInfo>(d, ['diff', 'export', 'v', '--name', 'd2']);
    expect(e2.generationFrom).toBe(before.backupChain!.throughGeneration + 1);
    await cliJson(d, ['diff', 'remove', 'd2', '--abandon']);
    expect((await cliJson<VolumeInfo>(d, ['volume', 'info', 'v'])).backupChain).toEqual(before.backupChain);
    const e3 = await cliJson<DiffInfo>(d, ['diff', 'export', 'v', '--name', 'd3']);
    expect(e3.generationFrom).toBe(e2.generationFrom); // generation 2 is still owed
    expect(e3.generationTo).toBe(e2.generationTo + 1);
    await cliJson(d, ['volume', 'delete', 'd3']);
    expect((await cliJson<VolumeInfo>(d, ['volume', 'info', 'v'])).backupChain).toEqual(before.backupChain);
    const r = await d.cli(['diff', 'remove', 'd3']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/no diff export named 'd3'/);
  }, 60_000);

  it('restore export: nbdcopy (out of order, many requests in flight) restores a chain piece by piece; its final flush waits for the commit', async () => {
    const d4 = path.join(dir, 'd4.tv');
    await qemuIo(d, 'v', ['write -P 0x66 8M 3M', 'flush']);
    await cliJson(d, ['backup', 'diff', 'v', '--to', d4]);
    // full into a new volume, then the diffs into it, each through its own device
    await cliJson(d, ['restore', 'export', 'rx', '--as', 'rv']);
    await tool('nbdcopy', ['--flush', '--requests=32', '--request-size=262144', path.join(dir, 'full.tv'), d.uri('rx')]);
    // no polling: the flush nbdcopy ended with returned only after the stream was applied
    const s1 = await cliJson<SessionInfo>(d, ['restore', 'status', 'rx']);
    expect(s1.state).toBe('done');
    expect(s1.bytesDone).toBe(fs.statSync(path.join(dir, 'full.tv')).size);
    await cliJson(d, ['restore', 'remove', 'rx']);
    // d1 was dumped above and d2/d3 abandoned; the diff taken now covers generations 2..G
    await cliJson(d, ['restore', 'export', 'ry', '--into', 'rv']);
    await tool('nbdcopy', ['--flush', path.join(dir, 'd1-a.tv'), d.uri('ry')]);
    expect((await cliJson<SessionInfo>(d, ['restore', 'status', 'ry'])).state).toBe('done');
    await cliJson(d, ['restore', 'remove', 'ry']);
    await cliJson(d, ['restore', 'export', 'rz', '--into', 'rv']);
    await tool('nbdcopy', ['--flush', d4, d.uri('rz')]);
    expect((await cliJson<SessionInfo>(d, ['restore', 'status', 'rz'])).state).toBe('done');
    await cliJson(d, ['restore', 'remove', 'rz']);
    expect(await identical(d, 'v', 'rv')).toBe(true);
    const [vi, ri] = [await cliJson<VolumeInfo>(d, ['volume', 'info', 'v']), await cliJson<VolumeInfo>(d, ['volume', 'info', 'rv'])];
    expect(ri.backupChain).toEqual(vi.backupChain);
    expect(ri.generation).toBe(vi.generation);
  }, 120_000);

  it('restore export refuses garbage, a truncated stream and a damaged one, changing nothing; writes and flushes then fail with EIO', async () => {
    await cliJson(d, ['volume', 'create', 'target', '--size', '64MiB']);
    await qemuIo(d, 'target', ['write -P 0x77 0 2M', 'flush']);
    await cliJson(d, ['snapshot', 'create', 'target', 'target-before']);
    const volumesBefore = (await cliJson<{ volumes: VolumeInfo[] }>(d, ['volume', 'list'])).volumes.map((v) => v.name).sort();

    // garbage: not a stream
    const junk = path.join(dir, 'junk.bin');
    fs.writeFileSync(junk, Buffer.alloc(1 * MiB, 0x41));
    await cliJson(d, ['restore', 'export', 'g1', '--into', 'target']);
    await expect(tool('nbdcopy', ['--flush', junk, d.uri('g1')])).rejects.toThrow();
    const s1 = await cliJson<SessionInfo>(d, ['restore', 'status', 'g1']);
    expect(s1.state).toBe('failed');
    expect(s1.error?.message).toMatch(/not a thinvault stream/);
    await expect(qemuIo(d, 'g1', ['write 1M 4k'])).rejects.toThrow(/Input\/output error/);
    await cliJson(d, ['restore', 'remove', 'g1']);

    // a damaged record: the CRC failure names the record and its generation
    const good = path.join(dir, 'd4.tv');
    const bad = path.join(dir, 'd4-bad.tv');
    const bytes = fs.readFileSync(good);
    const dataOffset = 4096 + Math.ceil((16 * bytes.readUInt32LE(80)) / 4096) * 4096;
    bytes[dataOffset + 5000] ^= 0xff;
    fs.writeFileSync(bad, bytes);
    // into a volume standing on the chain: the restored one
    await cliJson(d, ['restore', '--from', path.join(dir, 'full.tv'), '--from', path.join(dir, 'd1-a.tv'), '--as', 'rb']);
    await cliJson(d, ['snapshot', 'create', 'rb', 'rb-before']);
    await cliJson(d, ['restore', 'export', 'g2', '--into', 'rb']);
    await expect(tool('nbdcopy', ['--flush', bad, d.uri('g2')])).rejects.toThrow();
    const s2 = await cliJson<SessionInfo>(d, ['restore', 'status', 'g2']);
    expect(s2.state).toBe('failed');
    expect(s2.error?.message).toMatch(/record 0 of \d+ \(volume offset \d+, generation \d+, .*CRC32C mismatch/);
    expect(await identical(d, 'rb', 'rb-before')).toBe(true);
    await cliJson(d, ['restore', 'remove', 'g2']);

    // truncated: the writer stops half-way and the session is removed: cancelled, nothing changed
    const half = path.join(dir, 'd4-half.tv');
    fs.writeFileSync(half, fs.readFileSync(good).subarray(0, Math.floor(fs.statSync(good).size / 2 / 4096) * 4096));
    await cliJson(d, ['restore', 'export', 'g3', '--into', 'rb']);
    await tool('nbdcopy', ['--flush', half, d.uri('g3')]); // the flush returns: all it sent was consumed
    const s3 = await cliJson<SessionInfo>(d, ['restore', 'status', 'g3']);
    expect(s3.state).toBe('receiving');
    const removed = await cliJson<SessionInfo>(d, ['restore', 'remove', 'g3']);
    expect(removed.state).toBe('cancelled');
    expect(await identical(d, 'rb', 'rb-before')).toBe(true);

    // nothing left behind: no staging volume, the target unchanged
    expect(await identical(d, 'target', 'target-before')).toBe(true);
    const volumesAfter = (await cliJson<{ volumes: VolumeInfo[] }>(d, ['volume', 'list'])).volumes.map((v) => v.name).sort();
    expect(volumesAfter).toEqual([...volumesBefore, 'rb', 'rb-before'].sort());
    expect((await poolCheck(d)).ok).toBe(true);
  }, 120_000);

  it('restore export argument errors: a taken name, a missing target, both or neither of into/as', async () => {
    const bad = async (args: string[], message: RegExp) => {
      const r = await d.cli(args);
      expect(r.code, r.stdout).not.toBe(0);
      expect(r.stderr).toMatch(message);
    };
    await bad(['restore', 'export', 'v', '--as', 'x'], /'v' is a volume name/);
    await bad(['restore', 'export', 'e1', '--into', 'nope'], /no volume named 'nope'/);
    await bad(['restore', 'export', 'e1', '--as', 'v'], /a volume named 'v' exists/);
    await bad(['restore', 'export', 'e1'], /exactly one of into or as/);
    await bad(['restore', 'status', 'nope'], /no restore export named 'nope'/);
    await bad(['diff', 'export', 'nope', '--name', 'x'], /no volume named 'nope'/);
    await cliJson(d, ['volume', 'create', 'fresh', '--size', '1MiB']);
    await bad(['diff', 'export', 'fresh', '--name', 'x'], /no full backup to extend/);
    await bad(['backup', 'diff', 'fresh', '--to', path.join(dir, 'never.tv')], /no full backup to extend/);
    expect(fs.existsSync(path.join(dir, 'never.tv'))).toBe(false);
  }, 60_000);

  it('--compress: a gzip file that restores identically; the estimate is an upper bound and says so', async () => {
    await qemuIo(d, 'v', ['write -P 0x12 10M 4M', 'flush']);
    const est = await cliJson<{ bytes: number; streamBytes: number; exact: boolean; compressed: boolean }>(d, ['backup', 'estimate', 'v', '--compress']);
    expect(est).toMatchObject({ exact: false, compressed: true });
    expect(est.bytes).toBeGreaterThan(est.streamBytes);
    const gz = path.join(dir, 'dz.tv.gz');
    const r = await cliJson<{ bytes: number; bytesOnMedium: number; compressed: boolean }>(d, ['backup', 'diff', 'v', '--to', gz, '--compress']);
    expect(r.compressed).toBe(true);
    expect(r.bytes).toBe(est.streamBytes);
    expect(fs.statSync(gz).size).toBe(r.bytesOnMedium);
    expect(r.bytesOnMedium).toBeLessThan(r.bytes / 10); // patterns compress well
    expect(fs.readFileSync(gz).subarray(0, 2)).toEqual(Buffer.from([0x1f, 0x8b]));
    // zcat gives the plain stream: it verifies as one
    const plain = path.join(dir, 'dz.tv');
    fs.writeFileSync(plain, execFileSync('zcat', [gz], { maxBuffer: 512 * MiB }));
    expect(fs.statSync(plain).size).toBe(r.bytes);
    await cliJson(d, ['restore', '--from', plain, '--verify-only']);
    // media list sees through it
    const listed = await cliJson<{ files: Array<{ kind: string; compressed: boolean; generations: string }> }>(d, ['media', 'list', gz]);
    expect(listed.files[0]).toMatchObject({ kind: 'diff', compressed: true });
    // a cut compressed file is refused (a flipped bit inside deflate data may decode to the same bytes, e.g. a
    // match distance inside a run; what matters is that the expanded stream is checked, and a cut one cannot pass)
    const broken = path.join(dir, 'dz-broken.tv.gz');
    fs.writeFileSync(broken, fs.readFileSync(gz).subarray(0, Math.floor(fs.statSync(gz).size / 2)));
    const v = await d.cli(['restore', '--from', broken, '--verify-only']);
    expect(v.code).not.toBe(0);
    expect(v.stderr).toMatch(/compressed stream is damaged|truncated|ends after/);
    // a compressed stream is not taken by a restore device
    await cliJson(d, ['restore', 'export', 'gz1', '--as', 'gzv']);
    await expect(tool('nbdcopy', ['--flush', gz, d.uri('gz1')])).rejects.toThrow();
    expect((await cliJson<SessionInfo>(d, ['restore', 'status', 'gz1'])).error?.message).toMatch(/compressed \(gzip\) stream/);
    await cliJson(d, ['restore', 'remove', 'gz1']);
  }, 120_000);
});
