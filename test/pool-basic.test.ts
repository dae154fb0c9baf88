import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { Pool, PoolError } from '../src/pool/index.js';
import { newPool, pattern, readAll, rmDir, tmpDir } from './pool-helpers.js';

const KiB = 1024;
const MiB = 1024 * 1024;
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function setup(opts: { chunkSize?: number; capacity?: number } = {}) {
  const { dir, pool } = await newPool('basic', { chunkSize: 64 * KiB, ...opts });
  cleanups.push(() => rmDir(path.dirname(dir)));
  cleanups.push(() => pool.close().catch(() => {}));
  return { dir, pool };
}

async function expectCode(p: Promise<unknown> | (() => unknown), code: string) {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    expect(err).toBeInstanceOf(PoolError);
    expect((err as PoolError).code).toBe(code);
    return err as PoolError;
  }
  throw new Error(`expected ${code}`);
}

describe('pool init/open', () => {
  test('init creates the layout and refuses an existing pool', async () => {
    const dir = path.join(tmpDir('init'), 'p');
    cleanups.push(() => rmDir(path.dirname(dir)));
    await Pool.init(dir, { chunkSize: 4096 });
    expect(fs.existsSync(path.join(dir, 'pool.json'))).toBe(true);
    expect(fs.existsSync(path.join(dir, 'checkpoint.1'))).toBe(true);
    const err = await expectCode(Pool.init(dir), 'EEXIST');
    expect(err.message).toMatch(/already a thinvault pool/);
    const pool = await Pool.open(dir);
    expect(pool.chunkSize).toBe(4096);
    expect(pool.uuid).toMatch(/^[0-9a-f-]{36}$/);
    await pool.close();
  });

  test('bad options and non-pools', async () => {
    const dir = tmpDir('initbad');
    cleanups.push(() => rmDir(dir));
    await expectCode(Pool.init(path.join(dir, 'a'), { chunkSize: 3000 }), 'EINVAL');
    await expectCode(Pool.init(path.join(dir, 'b'), { chunkSize: 2 * MiB }), 'EINVAL');
    await expectCode(Pool.init(path.join(dir, 'c'), { capacity: -1 }), 'EINVAL');
    await expectCode(Pool.open(path.join(dir, 'nothing')), 'ENOTPOOL');
    fs.mkdirSync(path.join(dir, 'd'));
    fs.writeFileSync(path.join(dir, 'd', 'unrelated.txt'), 'x');
    await Pool.init(path.join(dir, 'd')); // a non-empty directory without pool files is fine
  });
});

describe('volumes', () => {
  test('create / list / info / name validation / delete', async () => {
    const { pool } = await setup();
    const info = await pool.createVolume('vol-0.a_b', 10 * MiB);
    expect(info).toMatchObject({ name: 'vol-0.a_b', size: 10 * MiB, generation: 1, allocatedChunks: 0, allocatedBytes: 0 });
    expect(new Date(info.createdAt).getTime()).toBeGreaterThan(0);
    for (const bad of ['', '.hidden', 'a/b', 'x'.repeat(65), 'sp ace', 'é']) await expectCode(pool.createVolume(bad, MiB), 'EINVAL');
    await pool.createVolume('x'.repeat(64), 512);
    for (const size of [0, -512, 1000, 1.5, Number.MAX_SAFE_INTEGER]) await expectCode(pool.createVolume('s', size), 'EINVAL');
    await expectCode(pool.createVolume('vol-0.a_b', MiB), 'EEXIST');
    expect(pool.listVolumes().map((v) => v.name)).toEqual(['vol-0.a_b', 'x'.repeat(64)]);
    expect(pool.volume('nope')).toBeUndefined();
    await expectCode(pool.deleteVolume('nope'), 'ENOENT');
    await expectCode(pool.resizeVolume('nope', MiB), 'ENOENT');
    const v = pool.volume('vol-0.a_b')!;
    v.acquire();
    await expectCode(pool.deleteVolume('vol-0.a_b'), 'EBUSY');
    v.release();
    await pool.deleteVolume('vol-0.a_b');
    expect(pool.volume('vol-0.a_b')).toBeUndefined();
    await expectCode(v.write(0, Buffer.alloc(512), false), 'ENOENT');
    expect(pool.stats().volumes).toBe(1);
  });

  test('delete with force while open', async () => {
    const { pool } = await setup();
    await pool.createVolume('v', MiB);
    const v = pool.volume('v')!;
    v.acquire();
    await pool.deleteVolume('v', { force: true });
    expect(pool.listVolumes()).toEqual([]);
  });
});

describe('data path', () => {
  test('never-written ranges are holes; writes read back; partial chunk rest reads zero', async () => {
    const { pool } = await setup();
    await pool.createVolume('v', 16 * MiB);
    const vol = pool.volume('v')!;
    const buf = Buffer.alloc(MiB, 7);
    expect(await vol.read(0, buf)).toEqual([0, MiB]);
    expect(buf.every((b) => b === 7)).toBe(true); // holes are not written into
    const d = pattern(1000, 1);
    await vol.write(70000, d, false); // inside chunk 1 (65536..131071)
    const holes = await vol.read(0, Buffer.alloc(4 * 65536));
    expect(holes).toEqual([0, 65536, 131072, 131072]);
    const r = await readAll(vol, 65536, 65536);
    expect(r.subarray(70000 - 65536, 70000 - 65536 + 1000).equals(d)).toBe(true);
    expect(r.subarray(0, 70000 - 65536).every((b) => b === 0)).toBe(true);
    expect(r.subarray(70000 - 65536 + 1000).every((b) => b === 0)).toBe(true);
    expect(vol.info().allocatedChunks).toBe(1);
    expect(vol.allocation(0, 16 * MiB)).toEqual([
      { length: 65536, allocated: false },
      { length: 65536, allocated: true },
      { length: 16 * MiB - 131072, allocated: false },
    ]);
    expect(vol.allocation(100000, 50000)).toEqual([{ length: 31072, allocated: true }, { length: 18928, allocated: false }]);
  });

  test('cross-chunk writes, unaligned, and one-syscall sequential runs', async () => {
    const { pool } = await setup();
    await pool.createVolume('v', 8 * MiB);
    const vol = pool.volume('v')!;
    const d = pattern(3 * 65536 + 123, 2);
    await vol.write(65536 - 100, d, false);
    const r = await readAll(vol, 0, 8 * MiB);
    expect(r.subarray(65536 - 100, 65536 - 100 + d.length).equals(d)).toBe(true);
    expect(r.subarray(0, 65536 - 100).every((b) => b === 0)).toBe(true);
    expect(r.subarray(65536 - 100 + d.length).every((b) => b === 0)).toBe(true);
    // sequential 1 MiB writes get physically consecutive chunks
    const big = pattern(MiB, 3);
    await vol.write(2 * MiB, big, false);
    await vol.write(3 * MiB, big, false);
    expect((await readAll(vol, 2 * MiB, 2 * MiB)).equals(Buffer.concat([big, big]))).toBe(true);
    const st = (vol as unknown as { state: { physical(c: number): number } }).state;
    const first = st.physical(32);
    for (let c = 32; c < 64; c++) expect(st.physical(c)).toBe(first + (c - 32));
    // overwrite in place keeps the mapping
    await vol.write(2 * MiB + 10, Buffer.from('hello'), false);
    expect(st.physical(32)).toBe(first);
    expect((await readAll(vol, 2 * MiB + 10, 5)).toString()).toBe('hello');
  });

  test('range errors', async () => {
    const { pool } = await setup();
    await pool.createVolume('v', MiB);
    const vol = pool.volume('v')!;
    await expectCode(vol.read(MiB - 10, Buffer.alloc(11)), 'EINVAL');
    await expectCode(vol.write(-1, Buffer.alloc(1), false), 'EINVAL');
    await expectCode(vol.trim(0, MiB + 1, false), 'EINVAL');
    await expectCode(vol.zero(MiB, 1, { noHole: false, fua: false }), 'EINVAL');
    expect(await vol.read(MiB, Buffer.alloc(0))).toEqual([]);
    expect(() => vol.allocation(MiB + 1, 1)).toThrow(PoolError);
    expect(vol.allocation(MiB, 10)).toEqual([]);
  });

  test('trim whole and partial chunks; reads return zeros; space comes back', async () => {
    const { pool } = await setup();
    await pool.createVolume('v', 4 * MiB);
    const vol = pool.volume('v')!;
    const d = pattern(MiB, 4);
    await vol.write(0, d, false);
    expect(pool.stats().chunksUsed).toBe(16);
    // from the middle of chunk 1 to the middle of chunk 4: chunks 2,3 unmapped, edges zero-written
    await vol.trim(65536 + 1000, 3 * 65536, true);
    const expected = Buffer.from(d);
    expected.fill(0, 65536 + 1000, 4 * 65536 + 1000);
    expect((await readAll(vol, 0, MiB)).equals(expected)).toBe(true);
    expect(vol.info().allocatedChunks).toBe(14);
    expect(vol.allocation(0, MiB).map((e) => e.allocated)).toEqual([true, false, true]);
    expect(pool.stats().chunksUsed).toBe(14);
    await pool.settleFrees();
    expect(pool.stats().chunksPendingFree).toBe(0);
    // a trim inside one chunk only zeroes
    await vol.trim(10, 20, false);
    expected.fill(0, 10, 30);
    expect((await readAll(vol, 0, MiB)).equals(expected)).toBe(true);
    expect(vol.info().allocatedChunks).toBe(14);
    // trimming never-written space is a no-op
    await vol.trim(2 * MiB, 2 * MiB, false);
    expect(vol.info().allocatedChunks).toBe(14);
  });

  test('zero with and without NO_HOLE', async () => {
    const { pool } = await setup();
    await pool.createVolume('v', 4 * MiB);
    const vol = pool.volume('v')!;
    const d = pattern(MiB, 5);
    await vol.write(0, d, false);
    await vol.zero(0, 4 * 65536, { noHole: false, fua: false });
    expect(vol.info().allocatedChunks).toBe(12);
    await vol.zero(4 * 65536, 4 * 65536, { noHole: true, fua: true });
    expect(vol.info().allocatedChunks).toBe(12);
    // NO_HOLE over never-written space allocates (clean chunks) without data
    await vol.zero(2 * MiB, 2 * 65536 + 512, { noHole: true, fua: false });
    expect(vol.info().allocatedChunks).toBe(15);
    const expected = Buffer.alloc(4 * MiB);
    d.copy(expected);
    expected.fill(0, 0, 8 * 65536);
    expect((await readAll(vol, 0, 4 * MiB)).equals(expected)).toBe(true);
    expect(await vol.read(2 * MiB, Buffer.alloc(65536))).toEqual([]); // allocated, so not a hole
  });

  test('resize grow and shrink', async () => {
    const { pool } = await setup();
    await pool.createVolume('v', 2 * MiB);
    const vol = pool.volume('v')!;
    const d = pattern(2 * MiB, 6);
    await vol.write(0, d, false);
    // shrink to a non-chunk-aligned size: chunks past the end freed, the tail zeroed
    const info = await pool.resizeVolume('v', MiB + 512);
    expect(info.size).toBe(MiB + 512);
    expect(vol.size).toBe(MiB + 512);
    expect(info.allocatedChunks).toBe(17);
    await expectCode(vol.read(MiB, Buffer.alloc(1024)), 'EINVAL');
    expect((await readAll(vol, 0, MiB + 512)).equals(d.subarray(0, MiB + 512))).toBe(true);
    // grow: the old data past the former end never comes back
    await pool.resizeVolume('v', 3 * MiB);
    const r = await readAll(vol, 0, 3 * MiB);
    expect(r.subarray(0, MiB + 512).equals(d.subarray(0, MiB + 512))).toBe(true);
    expect(r.subarray(MiB + 512).every((b) => b === 0)).toBe(true);
    await vol.write(3 * MiB - 512, Buffer.alloc(512, 1), false);
    expect(pool.stats().provisionedBytes).toBe(3 * MiB);
    await pool.settleFrees();
    expect(pool.stats().chunksUsed).toBe(18);
  });

  test('delete frees space and chunks are reused after flush', async () => {
    const { pool } = await setup();
    await pool.createVolume('a', 4 * MiB);
    const a = pool.volume('a')!;
    await a.write(0, pattern(4 * MiB, 7), false);
    expect(pool.stats().chunksUsed).toBe(64);
    const phys = (a as unknown as { state: { physical(c: number): number } }).state.physical(0);
    await pool.deleteVolume('a');
    expect(pool.stats().chunksUsed).toBe(0);
    await pool.flush();
    await pool.settleFrees();
    const s = pool.stats();
    expect(s.chunksPendingFree).toBe(0);
    expect(s.chunksFree).toBe(s.chunksTotal);
    // a new volume gets (some of) those chunks back, and they read as zeros, never the old data
    await pool.createVolume('b', 4 * MiB);
    const b = pool.volume('b')!;
    await b.write(0, Buffer.alloc(512, 9), false);
    const st = (b as unknown as { state: { physical(c: number): number } }).state;
    expect(st.physical(0)).toBeGreaterThanOrEqual(0);
    const r = await readAll(b, 0, 65536);
    expect(r.subarray(0, 512).every((x) => x === 9)).toBe(true);
    expect(r.subarray(512).every((x) => x === 0)).toBe(true);
    expect(phys).toBeGreaterThanOrEqual(0);
  });

  test('stats and flush', async () => {
    const { pool } = await setup();
    await pool.createVolume('v', 64 * MiB);
    const s = pool.stats();
    expect(s.chunkSize).toBe(64 * KiB);
    expect(s.capacity).toBe(0);
    expect(s.chunksTotal * s.chunkSize).toBe(s.dataFileBytes);
    expect(s.chunksUsed + s.chunksFree + s.chunksPendingFree).toBe(s.chunksTotal);
    expect(s.provisionedBytes).toBe(64 * MiB);
    expect(s.metadataMemoryBytes).toBeGreaterThan(0);
    const vol = pool.volume('v')!;
    await Promise.all(Array.from({ length: 32 }, (_, i) => vol.write(i * 65536 * 3, pattern(4096, i), false)));
    await vol.flush();
    expect(pool.stats().journalBytes).toBeGreaterThan(64);
  });

  test('operations after close fail', async () => {
    const { pool } = await setup();
    await pool.createVolume('v', MiB);
    const vol = pool.volume('v')!;
    await pool.close();
    await expectCode(vol.write(0, Buffer.alloc(512), false), 'EIO');
    await pool.close(); // idempotent
  });
});
