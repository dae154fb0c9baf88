/**
 * Snapshots, copies, full backups, restores, media and replicas through the real daemon and real clients
 * (qemu-io, qemu-img, nbdinfo, nbdcopy): what a user does, and what must be refused with a clear message and
 * without changing anything.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { startDaemon, cliJson, tempDir, tool, CLI, childExit, type Daemon } from './helpers/daemon.js';

const MiB = 1024 * 1024;

interface VolumeRow {
  name: string;
  kind: string;
  readOnly: boolean;
  allocatedBytes: number;
  generation: number;
  uuid: string;
}

async function qemuIo(d: Daemon, name: string, cmds: string[], readOnly = false): Promise<string> {
  return tool('qemu-io', ['-f', 'raw', ...(readOnly ? ['-r'] : []), ...cmds.flatMap((c) => ['-c', c]), d.uri(name)]);
}

async function identical(d: Daemon, a: string, b: string): Promise<boolean> {
  try {
    await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', d.uri(a), d.uri(b)]);
    return true;
  } catch {
    return false;
  }
}

async function volumes(d: Daemon): Promise<VolumeRow[]> {
  return (await cliJson<{ volumes: VolumeRow[] }>(d, ['volume', 'list'])).volumes;
}

/** failing CLI call: exit code 1, stderr with the message */
async function fails(d: Daemon, args: string[], message: RegExp): Promise<string> {
  const r = await d.cli(args);
  expect(r.code, `thinvault ${args.join(' ')} should fail; stdout ${r.stdout}`).not.toBe(0);
  expect(r.stderr).toMatch(message);
  return r.stderr;
}

describe('snapshots, backups, restores, media and replicas', () => {
  let d: Daemon;
  let dir: string;
  beforeAll(async () => {
    d = await startDaemon();
    dir = tempDir('tv-backup-');
    await cliJson(d, ['volume', 'create', 'v', '--size', '64MiB']);
    await qemuIo(d, 'v', ['write -P 0x5a 0 8M', 'write -P 0x33 20M 1M', 'write -P 0x11 63M 100k', 'flush']);
  }, 60_000);
  afterAll(async () => {
    expect((await d.cli(['pool', 'check'])).code).toBe(0);
    await d.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('snapshots: read-only export with the old data, writable ones independent, hidden source, list/info/delete', async () => {
    const created = await cliJson<{ name: string; readOnly: boolean; createMs: number }>(d, ['snapshot', 'create', 'v', 'snap1']);
    expect(created).toMatchObject({ name: 'snap1', readOnly: true });
    await qemuIo(d, 'v', ['write -P 0x99 0 1M', 'flush']);
    // the snapshot still has the old data, and refuses writes
    expect(await qemuIo(d, 'snap1', ['read -P 0x5a 0 1M'], true)).toMatch(/read 1048576\/1048576/);
    const info = JSON.parse(await tool('nbdinfo', ['--json', d.uri('snap1')]));
    expect(info.exports[0]['is_read_only']).toBe(true);
    await expect(qemuIo(d, 'snap1', ['write 0 4k'])).rejects.toThrow(/Permission denied|read-only|EPERM/i);
    // a writable snapshot is an independent volume
    await cliJson(d, ['snapshot', 'create', 'snap1', 'snap2', '--writable']);
    await qemuIo(d, 'snap2', ['write -P 0x42 4096 512', 'flush']);
    expect(await qemuIo(d, 'snap2', ['read -P 0x42 4096 512', 'read -P 0x5a 0 4096', 'read -P 0x5a 4608 1M'], true)).not.toMatch(/Pattern verification failed/);
    expect(await qemuIo(d, 'snap1', ['read -P 0x5a 0 2M'], true)).not.toMatch(/Pattern verification failed/);
    expect(await qemuIo(d, 'v', ['read -P 0x99 0 1M', 'read -P 0x5a 1M 7M'], true)).not.toMatch(/Pattern verification failed/);
    // hidden source identity (seed 003): only with --show-source
    const v = (await volumes(d)).find((x) => x.name === 'v')!;
    const plain = await cliJson<Record<string, unknown>>(d, ['snapshot', 'info', 'snap2']);
    expect(plain.source).toBeUndefined();
    const shown = await cliJson<{ source: { uuid: string; name: string }; origin: { uuid: string; name: string }; uuid: string }>(d, ['snapshot', 'info', 'snap2', '--show-source']);
    expect(shown.source.name).toBe('snap1');
    expect(shown.origin).toEqual({ uuid: v.uuid, name: 'v' });
    expect(shown.uuid).not.toBe(v.uuid);
    const text = await d.cli(['snapshot', 'info', 'snap2', '--show-source']);
    expect(text.stdout).toMatch(/source:\s+snap1/);
    const list = await cliJson<{ snapshots: VolumeRow[] }>(d, ['snapshot', 'list', '--source', 'v']);
    expect(list.snapshots.map((s) => s.name)).toEqual(['snap1']);
    // errors
    await fails(d, ['snapshot', 'create', 'nope', 'x'], /no volume named 'nope'/);
    await fails(d, ['snapshot', 'create', 'v', 'snap1'], /exists/);
    await fails(d, ['snapshot', 'delete', 'v'], /'v' is a volume, not a snapshot/);
    await fails(d, ['snapshot', 'create', 'v', '.hidden'], /volume names/);
    await fails(d, ['volume', 'resize', 'snap1', '--size', '128MiB'], /read-only/);
    // delete in any order
    await cliJson(d, ['snapshot', 'delete', 'snap1']);
    expect(await qemuIo(d, 'snap2', ['read -P 0x5a 0 4096'], true)).not.toMatch(/Pattern verification failed/);
    await cliJson(d, ['snapshot', 'delete', 'snap2']);
    expect((await volumes(d)).map((x) => x.name)).toEqual(['v']);
  });

  it('volume copy: usable at once, then a full independent copy', async () => {
    const r = await cliJson<{ name: string; copiedChunks: number }>(d, ['volume', 'copy', 'v', 'vcopy', '--wait']);
    expect(r.name).toBe('vcopy');
    expect(await identical(d, 'v', 'vcopy')).toBe(true);
    const status = await cliJson<{ copies: Array<{ volume: string; finished: boolean }> }>(d, ['volume', 'copy-status', 'vcopy']);
    expect(status.copies[0]).toMatchObject({ volume: 'vcopy', finished: true });
    await qemuIo(d, 'vcopy', ['write -P 0x01 0 64k', 'flush']);
    expect(await identical(d, 'v', 'vcopy')).toBe(false);
    await cliJson(d, ['volume', 'delete', 'vcopy']);
  });

  it('full backup to a file and restore it both ways; the generation map restarts at the backup', async () => {
    await qemuIo(d, 'v', ['write -P 0x21 40M 64k', 'flush']);
    const before = await cliJson<{ current: number; counts: Array<{ generation: number; chunks: number }> }>(d, ['volume', 'generations', 'v']);
    expect(before.counts.some((c) => c.generation > 0)).toBe(true);
    const file = path.join(dir, 'full.tvs');
    const r = await d.cli(['backup', 'full', 'v', '--to', file]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/backup v: 100% .* of .*ETA/); // progress with bytes and ETA
    expect(r.stdout).toMatch(/full backup of v written/);
    const after = await cliJson<{ current: number; counts: Array<{ generation: number; chunks: number }> }>(d, ['volume', 'generations', 'v']);
    expect(after.current).toBe(1);
    expect(after.counts).toEqual([{ generation: 0, chunks: 1024, bytes: 1024 * 65536 }]);
    // a file that holds data is not overwritten by accident
    await fails(d, ['backup', 'full', 'v', '--to', file], /already holds data.*--overwrite/);
    // --verify-only changes nothing
    const verified = await cliJson<{ verifyOnly: boolean; records: number }>(d, ['restore', '--from', file, '--verify-only']);
    expect(verified.verifyOnly).toBe(true);
    // restore as a new volume: identical, thin
    await cliJson(d, ['restore', '--from', file, '--as', 'r1']);
    expect(await identical(d, 'v', 'r1')).toBe(true);
    const rows = await volumes(d);
    expect(rows.find((x) => x.name === 'r1')!.allocatedBytes).toBe(rows.find((x) => x.name === 'v')!.allocatedBytes);
    // restore into an existing volume of the same size
    await cliJson(d, ['volume', 'create', 'other', '--size', '64MiB']);
    await qemuIo(d, 'other', ['write -P 0x77 0 32M', 'flush']);
    await cliJson(d, ['restore', '--from', file, '--into', 'other']);
    expect(await identical(d, 'v', 'other')).toBe(true);
    // a volume of another size is refused, naming both sizes
    await cliJson(d, ['volume', 'create', 'small', '--size', '32MiB']);
    await fails(d, ['restore', '--from', file, '--into', 'small'], /33554432 bytes.*67108864-byte volume/);
    for (const n of ['r1', 'other', 'small']) await cliJson(d, ['volume', 'delete', n]);
  });

  it('a second backup of a volume while one runs is refused; the first completes', async () => {
    // the first backup waits for a reader of its FIFO target, so it is surely running when the second comes
    const fifo = path.join(dir, 'slow.fifo');
    await tool('mkfifo', [fifo]);
    const first = d.cli(['backup', 'full', 'v', '--to', `file:${fifo}`, '--overwrite', '--json']);
    await new Promise((r) => setTimeout(r, 1500));
    await fails(d, ['backup', 'full', 'v', '--to', path.join(dir, 'second.tvs')], /a backup of 'v' is already running/);
    const sink = fs.createReadStream(fifo);
    let bytes = 0;
    sink.on('data', (c) => (bytes += c.length));
    const closed = new Promise<void>((resolve) => sink.on('close', () => resolve()));
    const r = await first;
    await closed;
    expect(r.code, r.stderr).toBe(0);
    expect(bytes).toBe(JSON.parse(r.stdout).bytes);
  });

  it('damaged streams are refused before anything changes, naming what and where', async () => {
    const file = path.join(dir, 'full.tvs');
    const good = fs.readFileSync(file);
    const names = async () => (await volumes(d)).map((v) => v.name).sort();
    const start = await names();
    // a flipped data byte: the record, its volume offset and generation are named
    const flipped = Buffer.from(good);
    const dataOffset = 4096 + Math.ceil((16 * 179) / 4096) * 4096; // header + chunk table
    flipped[dataOffset + 65536 * 3 + 100] ^= 0x40;
    fs.writeFileSync(path.join(dir, 'flipped.tvs'), flipped);
    const err = await fails(d, ['restore', '--from', path.join(dir, 'flipped.tvs'), '--as', 'bad'], /record 3 of \d+ \(volume offset \d+, generation 0.*CRC32C mismatch/);
    expect(err).toMatch(/ECORRUPT/);
    // truncated
    fs.writeFileSync(path.join(dir, 'cut.tvs'), good.subarray(0, good.length - 5000));
    await fails(d, ['restore', '--from', path.join(dir, 'cut.tvs'), '--as', 'bad'], /truncated/);
    // not a stream
    fs.writeFileSync(path.join(dir, 'junk.tvs'), Buffer.alloc(8192, 7));
    await fails(d, ['restore', '--from', path.join(dir, 'junk.tvs'), '--as', 'bad'], /not a thinvault stream/);
    // into an existing volume: it keeps its content
    await cliJson(d, ['volume', 'create', 'keep', '--size', '64MiB']);
    await qemuIo(d, 'keep', ['write -P 0x66 0 1M', 'flush']);
    await fails(d, ['restore', '--from', path.join(dir, 'flipped.tvs'), '--into', 'keep'], /CRC32C mismatch/);
    expect(await qemuIo(d, 'keep', ['read -P 0x66 0 1M'], true)).not.toMatch(/Pattern verification failed/);
    await cliJson(d, ['volume', 'delete', 'keep']);
    expect(await names()).toEqual(start);
    // nothing half-restored is left (internal staging volumes are gone)
    const status = await cliJson<{ pool: { volumes: number } }>(d, ['status']);
    expect(status.pool.volumes).toBe(start.length);
  });

  it('SIMH tape image: several backups, media list, restore by number, end of medium, damaged images', async () => {
    const tap = path.join(dir, 'b.tap');
    await cliJson(d, ['backup', 'full', 'v', '--to', `tap:${tap}`]);
    await qemuIo(d, 'v', ['write -P 0x44 30M 2M', 'flush']);
    const second = await cliJson<{ file: number; bytes: number }>(d, ['backup', 'full', 'v', '--to', `tap:${tap}`]);
    expect(second.file).toBe(2);
    const listed = await cliJson<{ files: Array<{ file: number; kind: string; volume: string; streamBytes: number; complete: boolean; generations: string }> }>(d, ['media', 'list', `tap:${tap}`]);
    expect(listed.files.map((f) => [f.file, f.kind, f.volume, f.complete])).toEqual([
      [1, 'full', 'v', true],
      [2, 'full', 'v', true],
    ]);
    expect(listed.files[1].streamBytes).toBe(second.bytes);
    await fails(d, ['restore', '--from', `tap:${tap}`, '--as', 'x'], /holds 2 files; pick one with .*#N/);
    await cliJson(d, ['restore', '--from', `tap:${tap}#2`, '--as', 't2']);
    expect(await identical(d, 'v', 't2')).toBe(true);
    await cliJson(d, ['restore', '--from', `tap:${tap}#1`, '--as', 't1']);
    expect(await identical(d, 'v', 't1')).toBe(false); // the older backup: before the 0x44 write
    expect(await qemuIo(d, 't1', ['read -P 0x5a 1M 1M', 'read -P 0 30M 1M'], true)).toMatch(/read/);
    await fails(d, ['restore', '--from', `tap:${tap}#3`, '--as', 'x'], /no file #3/);
    // end of medium in the middle of a backup: a clear failure, the medium stays usable, the map is unchanged
    await qemuIo(d, 'v', ['write -P 0x45 50M 1M', 'flush']);
    const gensBefore = await cliJson(d, ['volume', 'generations', 'v']);
    const small = path.join(dir, 'small.tap');
    const full = await d.cli(['backup', 'full', 'v', '--to', `tap:${small}?capacity=4MiB`]);
    expect(full.code).not.toBe(0);
    expect(full.stderr).toMatch(/medium full: .* holds .* of this stream \(capacity 4 MiB\)/);
    expect(await cliJson(d, ['volume', 'generations', 'v'])).toEqual(gensBefore);
    const smallList = await cliJson<{ files: Array<{ complete: boolean }> }>(d, ['media', 'list', `tap:${small}`]);
    expect(smallList.files.map((f) => f.complete)).toEqual([false]);
    await fails(d, ['restore', '--from', `tap:${small}`, '--as', 'x'], /truncated/);
    // truncated and corrupted images
    const img = fs.readFileSync(tap);
    fs.writeFileSync(path.join(dir, 'cut.tap'), img.subarray(0, 5_000_000));
    await fails(d, ['restore', '--from', `tap:${path.join(dir, 'cut.tap')}#2`, '--as', 'x'], /no file #2|truncated|torn/);
    const corrupt = Buffer.from(img);
    corrupt.writeUInt32LE(0x12345, 4 + 262144); // the trailing length word of the first record
    fs.writeFileSync(path.join(dir, 'corrupt.tap'), corrupt);
    await fails(d, ['restore', '--from', `tap:${path.join(dir, 'corrupt.tap')}#1`, '--as', 'x'], /byte 262148|length word|corrupt/i);
    expect((await volumes(d)).map((v) => v.name).sort()).toEqual(['t1', 't2', 'v']);
    for (const n of ['t1', 't2']) await cliJson(d, ['volume', 'delete', n]);
  });

  it('a tape target that is not a tape, and a missing device, are clear errors', async () => {
    const plain = path.join(dir, 'not-a-tape');
    fs.writeFileSync(plain, 'x');
    await fails(d, ['backup', 'full', 'v', '--to', `tape:${plain}`], /not a tape device/);
    await fails(d, ['backup', 'full', 'v', '--to', 'tape:/dev/null'], /not a tape device/);
    await fails(d, ['backup', 'full', 'v', '--to', 'tape:/dev/nst9'], /no such device/);
    const gens = await cliJson<{ current: number }>(d, ['volume', 'generations', 'v']);
    expect(gens.current).toBeGreaterThanOrEqual(1);
  });

  it('- relays the stream through stdout and stdin', async () => {
    const out = path.join(dir, 'stdout.tvs');
    const fd = fs.openSync(out, 'w');
    const child = spawn(process.execPath, [CLI, 'backup', 'full', 'v', '--to', '-', '--control', d.control], { stdio: ['ignore', fd, 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c) => (stderr += c));
    expect((await childExit(child)).code, stderr).toBe(0);
    fs.closeSync(fd);
    expect(stderr).toMatch(/full backup of v written to standard output/);
    expect(fs.statSync(out).size).toBeGreaterThan(8 * MiB);
    const inFd = fs.openSync(out, 'r');
    const restore = spawn(process.execPath, [CLI, 'restore', '--from', '-', '--as', 'piped', '--control', d.control], { stdio: [inFd, 'pipe', 'pipe'] });
    let rerr = '';
    restore.stderr!.on('data', (c) => (rerr += c));
    expect((await childExit(restore)).code, rerr).toBe(0);
    fs.closeSync(inFd);
    expect(await identical(d, 'v', 'piped')).toBe(true);
    await cliJson(d, ['volume', 'delete', 'piped']);
  });

  it('replicas: packed image export, its size, restore as a new volume and into one, restore of the dumped image', async () => {
    const v = (await volumes(d)).find((x) => x.name === 'v')!;
    const rep = await cliJson<{ records: number; dataBytes: number; imageBytes: number; chunkSize: number }>(d, ['replica', 'create', 'v', 'rep']);
    expect(rep.dataBytes).toBe(v.allocatedBytes);
    const n = rep.records;
    expect(rep.imageBytes).toBe(4096 + Math.ceil((16 * n) / 4096) * 4096 + n * 65536 + Math.ceil((4 * n) / 4096) * 4096 + 4096);
    const info = JSON.parse(await tool('nbdinfo', ['--json', d.uri('rep')]));
    expect(info.exports[0]['export-size']).toBe(rep.imageBytes);
    expect(info.exports[0]['is_read_only']).toBe(true);
    // the image read by a client is a stream that restores (what dd to a tape would hold)
    const img = path.join(dir, 'rep.img');
    await tool('nbdcopy', [d.uri('rep'), img]);
    expect(fs.readFileSync(img).subarray(0, 8).toString('latin1')).toBe('TVSTREAM');
    await cliJson(d, ['restore', '--from', img, '--as', 'fromimg']);
    expect(await identical(d, 'v', 'fromimg')).toBe(true);
    await cliJson(d, ['replica', 'restore', 'rep', '--as', 'rx']);
    expect(await identical(d, 'v', 'rx')).toBe(true);
    await qemuIo(d, 'rx', ['write -P 0x13 0 5M', 'flush']);
    await cliJson(d, ['replica', 'restore', 'rep', '--into', 'rx']);
    expect(await identical(d, 'v', 'rx')).toBe(true);
    const list = await cliJson<{ replicas: Array<{ name: string }> }>(d, ['replica', 'list']);
    expect(list.replicas.map((r) => r.name)).toEqual(['rep']);
    // the replica is a point-in-time view: later writes to v do not change it
    await qemuIo(d, 'v', ['write -P 0x14 0 1M', 'flush']);
    await cliJson(d, ['replica', 'restore', 'rep', '--as', 'ry']);
    expect(await identical(d, 'fromimg', 'ry')).toBe(true);
    for (const x of ['fromimg', 'rx', 'ry']) await cliJson(d, ['volume', 'delete', x]);
    await cliJson(d, ['replica', 'delete', 'rep']);
    await fails(d, ['replica', 'info', 'rep'], /no replica named 'rep'/);
  });
});

describe('restore into a full pool', () => {
  it('fails with ENOSPC, leaves no staging volume behind and gives the space back', async () => {
    const d = await startDaemon({ initArgs: ['--capacity', '32MiB'] });
    const dir = tempDir('tv-backup-full-pool-');
    try {
      await cliJson(d, ['volume', 'create', 'v', '--size', '64MiB']);
      await qemuIo(d, 'v', ['write -P 3 0 20M', 'flush']);
      const file = path.join(dir, 'b.tvs');
      await cliJson(d, ['backup', 'full', 'v', '--to', file]);
      const before = await cliJson<{ pool: { chunksUsed: number; volumes: number } }>(d, ['status']);
      await fails(d, ['restore', '--from', file, '--as', 'r'], /pool is full.*\[ENOSPC\]/);
      const after = await cliJson<{ pool: { chunksUsed: number; volumes: number } }>(d, ['status']);
      expect(after.pool.volumes).toBe(before.pool.volumes);
      expect(after.pool.chunksUsed).toBe(before.pool.chunksUsed);
      expect(await qemuIo(d, 'v', ['read -P 3 0 20M'], true)).not.toMatch(/Pattern verification failed/);
      expect((await d.cli(['pool', 'check'])).code).toBe(0);
    } finally {
      await d.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
