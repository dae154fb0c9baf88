/** pool.check(): consistent after real work, and it does notice damage (so a green check means something). */
import { describe, it, expect } from 'vitest';
import { newPool, rmDir } from './pool-helpers.js';
import path from 'node:path';

describe('pool consistency check', () => {
  it('is ok after writes, trims, resizes and deletes, and reports injected damage', async () => {
    const { dir, pool } = await newPool('check');
    try {
      await pool.createVolume('a', 8 * 1024 * 1024);
      await pool.createVolume('b', 8 * 1024 * 1024);
      const a = pool.volume('a')!;
      const b = pool.volume('b')!;
      await a.write(0, Buffer.alloc(3 * 65536 + 100, 1), false);
      await b.write(65536 * 5, Buffer.alloc(65536, 2), false);
      await a.advanceGeneration();
      await a.write(10, Buffer.alloc(10, 3), false);
      await a.trim(65536, 65536, false);
      await pool.resizeVolume('b', 4 * 65536);
      await pool.flush();
      expect(pool.check()).toMatchObject({ ok: true, problems: [] });
      expect(pool.check().checked.mappedChunks).toBe(3);

      // damage the in-memory tables behind the pool's back: a mapping to a chunk the allocator thinks is free,
      // and a generation entry the count table does not know about
      const state = a.state;
      state.map.set(100, 5000 + 1);
      state.gens.entries.set(101, 1);
      const report = pool.check();
      expect(report.ok).toBe(false);
      expect(report.problems.join('\n')).toMatch(/chunk 5000: refcount 0, but 1 mapping/);
      expect(report.problems.join('\n')).toMatch(/count table says/);
      state.map.set(100, 0);
      state.gens.entries.set(101, 0);
    } finally {
      await pool.close();
      rmDir(path.dirname(dir));
    }
  });
});
