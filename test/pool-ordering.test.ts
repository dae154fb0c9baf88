/**
 * The ordering rules of commit-rules.ts, observed at the system-call boundary: the native addon is wrapped so
 * that the test sees (and can delay or fail) every pwrite, fdatasync, fallocate and zeroRange.
 */
import path from 'node:path';
import { afterEach, expect, test, vi } from 'vitest';
import { Pool, PoolError } from '../src/pool/index.js';
import { newPool, pattern, readAll, rmDir } from './pool-helpers.js';

type Call = { op: string; fd: number; pos: number; len: number };
type Hook = (call: Call) => Promise<void> | void;
const h = vi.hoisted(() => ({ hook: null as null | ((call: { op: string; fd: number; pos: number; len: number }) => Promise<void> | void) }));

vi.mock('../src/native/index.js', async (importOriginal) => {
  const orig = (await importOriginal()) as typeof import('../src/native/index.js');
  const real = orig.native;
  const wrap =
    <A extends unknown[], R>(op: string, fn: (...a: A) => Promise<R>, describe: (...a: A) => Omit<Call, 'op'>) =>
    async (...args: A): Promise<R> => {
      if (h.hook) await h.hook({ op, ...describe(...args) });
      return fn(...args);
    };
  const native = Object.create(real);
  native.pwrite = wrap('pwrite', real.pwrite.bind(real), (fd: number, buf: Buffer, pos: number) => ({ fd, pos, len: buf.length }));
  native.pwritev = wrap('pwritev', real.pwritev.bind(real), (fd: number, bufs: Buffer[], pos: number) => ({ fd, pos, len: bufs.reduce((n, b) => n + b.length, 0) }));
  native.fdatasync = wrap('fdatasync', real.fdatasync.bind(real), (fd: number) => ({ fd, pos: 0, len: 0 }));
  native.fallocate = wrap('fallocate', real.fallocate.bind(real), (fd: number, pos: number, len: number) => ({ fd, pos, len }));
  native.zeroRange = wrap('zeroRange', real.zeroRange.bind(real), (fd: number, pos: number, len: number) => ({ fd, pos, len }));
  return { ...orig, native };
});

const CS = 4096;
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  h.hook = null;
  while (cleanups.length) await cleanups.pop()!();
});

interface Internals {
  data: { fd: number };
  journal: { fd: number; durableSeq: number; lastSeq: number };
}
const internals = (pool: Pool) => pool as unknown as Internals;
const physical = (pool: Pool, name: string, c: number) =>
  (pool.volume(name) as unknown as { state: { physical(c: number): number } }).state.physical(c);

async function setup(capacity = 1024 * 1024) {
  const { dir, pool } = await newPool('order', { chunkSize: CS, capacity });
  cleanups.push(() => rmDir(path.dirname(dir)));
  cleanups.push(() => pool.close().catch(() => {}));
  await pool.createVolume('v', 64 * CS);
  return { dir, pool, vol: pool.volume('v')! };
}

test('W1 issues the data write at once; W3 only after its MARK is durable; W2 writes no metadata', async () => {
  const { pool, vol } = await setup();
  const j = internals(pool).journal;
  const dataFd = internals(pool).data.fd;
  const seen: Array<{ durable: number; last: number }> = [];
  const record: Hook = (c) => {
    if (c.op === 'pwrite' && c.fd === dataFd) seen.push({ durable: j.durableSeq, last: j.lastSeq });
  };
  h.hook = record;

  await vol.write(0, Buffer.alloc(512, 1), false); // W1: MAP queued, data issued before it is durable
  expect(seen.length).toBe(1);
  expect(seen[0].durable).toBeLessThan(seen[0].last);
  await pool.flush();

  const before = j.lastSeq;
  await vol.write(512, Buffer.alloc(512, 2), false); // W2: nothing journaled
  expect(j.lastSeq).toBe(before);

  await vol.advanceGeneration();
  const markSeq = j.lastSeq + 1;
  seen.length = 0;
  await vol.write(1024, Buffer.alloc(512, 3), false); // W3: MARK durable first
  expect(j.lastSeq).toBe(markSeq);
  expect(seen.length).toBe(1);
  expect(seen[0].durable).toBeGreaterThanOrEqual(markSeq);
  expect(vol.chunkGeneration(0)).toBe(2);
});

test('FREE: a freed chunk is zeroed only after its UNMAP is durable and older I/O completed, then synced before reuse', async () => {
  const { pool, vol } = await setup();
  const dataFd = internals(pool).data.fd;
  const j = internals(pool).journal;
  await vol.write(0, pattern(CS, 1), false);
  await pool.flush();
  const p = physical(pool, 'v', 0);
  const events: string[] = [];
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  h.hook = async (c) => {
    if (c.fd !== dataFd) return;
    if (c.op === 'pwrite' && c.pos === p * CS) {
      events.push('slow write starts');
      await gate;
      events.push('slow write done');
    } else if (c.op === 'zeroRange' && c.pos <= p * CS && c.pos + c.len > p * CS) {
      events.push(`zeroRange (unmap durable: ${j.durableSeq >= unmapSeq})`);
    } else if (c.op === 'fdatasync' && events.length > 0 && events[events.length - 1].startsWith('zeroRange')) {
      events.push('data fdatasync');
    }
  };
  let unmapSeq = Infinity;
  const slow = vol.write(0, pattern(CS, 2), false); // hot path, stalls in the kernel
  await new Promise((r) => setTimeout(r, 20));
  await vol.trim(0, CS, false);
  unmapSeq = j.lastSeq;
  await pool.flush();
  await new Promise((r) => setTimeout(r, 50));
  expect(events).toEqual(['slow write starts']); // not zeroed while the old write is in flight
  expect(pool.stats().chunksPendingFree).toBe(1);
  release();
  await slow;
  await pool.settleFrees();
  expect(events).toEqual(['slow write starts', 'slow write done', 'zeroRange (unmap durable: true)', 'data fdatasync']);
  expect(pool.stats().chunksPendingFree).toBe(0);
  // the chunk reads as zeros from now on, whoever gets it
  expect(await vol.read(0, Buffer.alloc(CS))).toEqual([0, CS]);
  await vol.write(0, Buffer.alloc(10, 9), false);
  const r = await readAll(vol, 0, CS);
  expect(r.subarray(10).every((b) => b === 0)).toBe(true);
});

test('a data write error is EIO with the cause; the pool keeps working', async () => {
  const { pool, vol } = await setup();
  const dataFd = internals(pool).data.fd;
  h.hook = (c) => {
    if (c.op === 'pwrite' && c.fd === dataFd) throw Object.assign(new Error('injected'), { code: 'EIO', syscall: 'pwrite' });
  };
  const err = await vol.write(0, Buffer.alloc(512, 1), false).then(
    () => undefined,
    (e: unknown) => e as PoolError,
  );
  expect(err).toBeInstanceOf(PoolError);
  expect(err!.code).toBe('EIO');
  expect((err!.cause as Error).message).toBe('injected');
  h.hook = null;
  await vol.write(0, Buffer.alloc(512, 1), true);
  expect((await readAll(vol, 0, 512)).every((b) => b === 1)).toBe(true);
});

test('a journal failure stops the pool cleanly; reopening recovers what was durable', async () => {
  const { dir, pool, vol } = await setup();
  await vol.write(0, Buffer.alloc(CS, 1), true);
  const jfd = internals(pool).journal.fd;
  h.hook = (c) => {
    if (c.op === 'fdatasync' && c.fd === jfd) throw Object.assign(new Error('journal disk gone'), { code: 'EIO' });
  };
  await vol.advanceGeneration().then(
    () => expect.fail('advance should fail'),
    (e: PoolError) => expect(e.code).toBe('EIO'),
  );
  await vol.write(CS, Buffer.alloc(10), false).then(
    () => expect.fail('write should fail'),
    (e: PoolError) => expect(e.code).toBe('EIO'),
  );
  h.hook = null;
  await pool.close();
  const again = await Pool.open(dir);
  cleanups.push(() => again.close().catch(() => {}));
  expect((await readAll(again.volume('v')!, 0, CS)).every((b) => b === 1)).toBe(true);
});

test('a failed data fdatasync is final: later flushes fail too, even when fdatasync would succeed again', async () => {
  const { pool, vol } = await setup();
  const dataFd = internals(pool).data.fd;
  await vol.write(0, Buffer.alloc(CS, 1), false);
  h.hook = (c) => {
    if (c.op === 'fdatasync' && c.fd === dataFd) throw Object.assign(new Error('writeback error'), { code: 'EIO' });
  };
  await pool.flush().then(
    () => expect.fail('flush should fail'),
    (e: PoolError) => expect(e.code).toBe('EIO'),
  );
  h.hook = null; // the disk "recovers": a retried fdatasync would now succeed without the lost pages
  await vol.write(CS, Buffer.alloc(CS, 2), false);
  await pool.flush().then(
    () => expect.fail('a later flush must not acknowledge writes that may be lost'),
    (e: PoolError) => expect(e.message).toMatch(/fdatasync of the data file failed/),
  );
  await vol.write(2 * CS, Buffer.alloc(CS, 3), true).then(
    () => expect.fail('FUA must fail as well'),
    (e: PoolError) => expect(e.code).toBe('EIO'),
  );
});

test('fallocate ENOSPC: writes needing space fail with ENOSPC, and succeed once the filesystem has room again', async () => {
  const { dir, pool: p0 } = await newPool('order-fa', { chunkSize: CS });
  let pool = p0;
  cleanups.push(() => rmDir(path.dirname(dir)));
  cleanups.push(() => pool.close().catch(() => {}));
  await pool.close();
  // reopen with a data file that cannot grow
  let full = true;
  h.hook = (c) => {
    if (c.op === 'fallocate' && full) throw Object.assign(new Error('no space'), { code: 'ENOSPC' });
  };
  // (the first open already grew the file; start from an empty data file to exercise the failure)
  const fs = await import('node:fs');
  fs.truncateSync(path.join(dir, 'data'), 0);
  pool = await Pool.open(dir);
  await pool.createVolume('v', 64 * CS);
  const vol = pool.volume('v')!;
  await vol.write(0, Buffer.alloc(512), false).then(
    () => expect.fail('should be ENOSPC'),
    (e: PoolError) => expect(e.code).toBe('ENOSPC'),
  );
  full = false;
  await new Promise((r) => setTimeout(r, 1100)); // the grow retry interval
  await vol.write(0, Buffer.alloc(512, 4), false);
  expect((await readAll(vol, 0, 512)).every((b) => b === 4)).toBe(true);
});

test('COPY: a partial write into a chunk shared with a snapshot copies it, and the journal write holding the new mapping comes after a data fdatasync that followed the copy', async () => {
  const { pool, vol } = await setup();
  const { VolumeFlag } = await import('../src/pool/index.js');
  await vol.write(0, pattern(4 * CS, 1), false);
  await pool.cloneVolume('v', 'snap', { flags: VolumeFlag.SNAPSHOT | VolumeFlag.READ_ONLY });
  await pool.flush();
  const dataFd = internals(pool).data.fd;
  const jfd = () => (internals(pool).journal as unknown as { fd: number }).fd;
  const events: string[] = [];
  const oldP = physical(pool, 'v', 1);
  h.hook = (c) => {
    if (c.op === 'pwrite' && c.fd === dataFd && c.len === CS) events.push(c.pos === oldP * CS ? 'write-old' : 'copy-or-data');
    else if (c.op === 'fdatasync' && c.fd === dataFd) events.push('data-sync');
    else if (c.op === 'pwrite' && c.fd === jfd()) events.push('journal-write');
  };
  await vol.write(CS + 100, Buffer.alloc(200, 9), false); // chunk 1, partially
  await pool.flush();
  h.hook = null;
  expect(events).not.toContain('write-old'); // the shared chunk is never written in place
  const copyAt = events.indexOf('copy-or-data');
  const journalAt = events.indexOf('journal-write', copyAt);
  expect(copyAt).toBeGreaterThanOrEqual(0);
  expect(journalAt).toBeGreaterThan(copyAt);
  expect(events.slice(copyAt, journalAt)).toContain('data-sync');
  expect(physical(pool, 'v', 1)).not.toBe(oldP);
  expect(physical(pool, 'snap', 1)).toBe(oldP);
  const expected = pattern(4 * CS, 1);
  expect((await readAll(pool.volume('snap')!, 0, 4 * CS)).equals(expected)).toBe(true);
  Buffer.alloc(200, 9).copy(expected, CS + 100);
  expect((await readAll(vol, 0, 4 * CS)).equals(expected)).toBe(true);
});

test('SHARE: a write covering chunks shared with a snapshot writes the new data to chunks of its own before their mapping is queued, and that mapping is committed only after a data fdatasync that followed the data', async () => {
  const { pool, vol } = await setup();
  const { VolumeFlag } = await import('../src/pool/index.js');
  await vol.write(0, pattern(4 * CS, 1), false);
  await pool.cloneVolume('v', 'snap', { flags: VolumeFlag.SNAPSHOT | VolumeFlag.READ_ONLY });
  await vol.advanceGeneration();
  await pool.flush();
  const dataFd = internals(pool).data.fd;
  const jfd = () => (internals(pool).journal as unknown as { fd: number }).fd;
  const events: string[] = [];
  const oldPs = [1, 2].map((c) => physical(pool, 'v', c));
  h.hook = (c) => {
    if (c.op === 'pwrite' && c.fd === dataFd) events.push(oldPs.some((p) => c.pos >= p * CS && c.pos < (p + 1) * CS) ? 'write-old' : 'data');
    else if (c.op === 'pread' && c.fd === dataFd) events.push('read');
    else if (c.op === 'fdatasync' && c.fd === dataFd) events.push('data-sync');
    else if (c.op === 'pwrite' && c.fd === jfd()) events.push('journal-write');
  };
  // chunks 1 and 2 wholly, plus a journal commit forced by another write right after (a FLUSH on another connection
  // would do the same): the mappings must not become durable before the data they point at
  await Promise.all([vol.write(CS, Buffer.alloc(2 * CS, 9), false), pool.flush()]);
  await pool.flush();
  h.hook = null;
  expect(events).not.toContain('write-old'); // the shared chunks are never written in place
  expect(events).not.toContain('read'); // nothing to copy: the write replaces them whole
  const firstJournal = events.indexOf('journal-write');
  const lastData = events.lastIndexOf('data');
  expect(lastData).toBeGreaterThanOrEqual(0);
  // the first journal write after the data (the one that can carry the MAPs) is preceded by a data sync after it
  const journalAfter = events.indexOf('journal-write', lastData);
  expect(journalAfter).toBeGreaterThan(lastData);
  expect(events.slice(lastData, journalAfter)).toContain('data-sync');
  // any journal write before the data did not carry the new mappings: they were not queued yet
  if (firstJournal >= 0 && firstJournal < lastData) expect(events.slice(0, firstJournal)).not.toContain('data');
  for (const c of [1, 2]) {
    expect(physical(pool, 'v', c)).not.toBe(oldPs[c - 1]);
    expect(physical(pool, 'snap', c)).toBe(oldPs[c - 1]);
  }
  const expected = pattern(4 * CS, 1);
  expect((await readAll(pool.volume('snap')!, 0, 4 * CS)).equals(expected)).toBe(true);
  Buffer.alloc(2 * CS, 9).copy(expected, CS);
  expect((await readAll(vol, 0, 4 * CS)).equals(expected)).toBe(true);
  // the write is a change of generation G for both chunks (tracking), made durable with the mapping
  const G = vol.generations().current;
  expect([1, 2].map((c) => vol.chunkGeneration(c))).toEqual([G, G]);
});
