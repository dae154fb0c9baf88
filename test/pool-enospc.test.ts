import path from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { Pool, PoolError } from '../src/pool/index.js';
import { newPool, pattern, readAll, rmDir } from './pool-helpers.js';

const MiB = 1024 * 1024;
const CS = 64 * 1024;
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function expectENOSPC(p: Promise<unknown>) {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PoolError);
  expect((err as PoolError).code).toBe('ENOSPC');
  expect((err as PoolError).message).toMatch(/pool is full/);
}

test('a 4 MiB pool fills, refuses new chunks with ENOSPC, keeps data, and recovers space after trim/delete', async () => {
  const { dir, pool: p0 } = await newPool('enospc', { chunkSize: CS, capacity: 4 * MiB });
  let pool = p0;
  cleanups.push(() => rmDir(path.dirname(dir)));
  cleanups.push(() => pool.close().catch(() => {}));
  await pool.createVolume('a', 16 * MiB);
  await pool.createVolume('b', 16 * MiB);
  const a = pool.volume('a')!;
  const data = pattern(3 * MiB, 1);
  await a.write(0, data, false);
  const b = pool.volume('b')!;
  await b.write(0, pattern(MiB, 2), false);
  let s = pool.stats();
  expect(s.chunksTotal).toBe(64);
  expect(s.dataFileBytes).toBe(4 * MiB);
  expect(s.chunksUsed).toBe(64);
  expect(s.chunksFree).toBe(0);

  // new chunks: ENOSPC, for small and large requests, and nothing gets half-allocated
  await expectENOSPC(a.write(3 * MiB, Buffer.alloc(512, 1), false));
  await expectENOSPC(a.write(8 * MiB, pattern(2 * MiB, 3), true));
  await expectENOSPC(a.zero(10 * MiB, MiB, { noHole: true, fua: false }));
  expect(pool.stats().chunksUsed).toBe(64);
  expect(a.info().allocatedChunks).toBe(48);
  // overwrites of allocated chunks still work, trims of never-written ranges too
  await a.write(100, Buffer.alloc(1000, 0x55), false);
  data.fill(0x55, 100, 1100);
  await a.trim(12 * MiB, MiB, false);
  expect((await readAll(a, 0, 3 * MiB)).equals(data)).toBe(true);
  await pool.flush();

  // trim frees: a write needing new chunks waits for the free path instead of failing
  await a.trim(2 * MiB, MiB, false);
  data.fill(0, 2 * MiB, 3 * MiB);
  await a.write(5 * MiB, pattern(MiB, 4), false);
  expect((await readAll(a, 5 * MiB, MiB)).equals(pattern(MiB, 4))).toBe(true);
  await expectENOSPC(a.write(7 * MiB, Buffer.alloc(512), false));

  // delete frees the other volume's space; after a flush it is reusable
  await pool.deleteVolume('b');
  await pool.flush();
  await pool.settleFrees();
  s = pool.stats();
  expect(s.chunksFree).toBe(16);
  await a.write(9 * MiB, pattern(MiB, 5), true);
  expect((await readAll(a, 0, 3 * MiB)).equals(data)).toBe(true);
  expect((await readAll(a, 9 * MiB, MiB)).equals(pattern(MiB, 5))).toBe(true);

  // consistent across a reopen
  await pool.close();
  pool = await Pool.open(dir);
  expect(pool.stats().chunksUsed).toBe(64);
  expect(pool.stats().chunksTotal).toBe(64);
  expect((await readAll(pool.volume('a')!, 9 * MiB, MiB)).equals(pattern(MiB, 5))).toBe(true);
  await expectENOSPC(pool.volume('a')!.write(15 * MiB, Buffer.alloc(512), false));
});

test('concurrent writers racing for the last chunks: each either fully succeeds or gets ENOSPC', async () => {
  const { dir, pool } = await newPool('enospc2', { chunkSize: CS, capacity: MiB });
  cleanups.push(() => rmDir(path.dirname(dir)));
  cleanups.push(() => pool.close().catch(() => {}));
  await pool.createVolume('v', 8 * MiB);
  const v = pool.volume('v')!;
  const results = await Promise.allSettled(
    Array.from({ length: 24 }, (_, i) => v.write(i * CS * 2, pattern(CS + 512, i), false)),
  );
  const ok = results.filter((r) => r.status === 'fulfilled').length;
  expect(ok).toBe(8); // 16 chunks, 2 per write
  for (const r of results) if (r.status === 'rejected') expect((r.reason as PoolError).code).toBe('ENOSPC');
  expect(pool.stats().chunksUsed).toBe(16);
  for (let i = 0; i < 24; i++) {
    if (results[i].status !== 'fulfilled') continue;
    expect((await readAll(v, i * CS * 2, CS + 512)).equals(pattern(CS + 512, i))).toBe(true);
  }
});
