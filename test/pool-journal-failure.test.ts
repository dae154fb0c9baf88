/**
 * A journal write failure with records still staged behind the failing commit: requests get EIO, close() does not
 * hang, and the pool reopens. (A review found close() waiting forever for a journal that would never go idle.)
 */
import { describe, it, expect } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Pool } from '../src/pool/index.js';
import { tmpDir, rmDir } from './pool-helpers.js';

describe('journal failure', () => {
  it('fails pending and later requests with EIO, closes without hanging, and reopens', async () => {
    const base = tmpDir('jfail');
    const dir = path.join(base, 'pool');
    const CS = 65536;
    await Pool.init(dir, { chunkSize: CS, capacity: 64 * 1024 * 1024 });
    const pool = await Pool.open(dir);
    try {
      await pool.createVolume('v', 64 * CS);
      const v = pool.volume('v')!;
      // the journal's next pwrite fails: its fd now points at a file opened read-only (EBADF on write)
      const journal = (pool as unknown as { journal: { file: { fd: number } } }).journal;
      const readOnly = fs.openSync(path.join(dir, 'pool.json'), 'r');
      const realFd = journal.file.fd;
      journal.file.fd = readOnly;
      const first = v.write(0, Buffer.alloc(4096, 1), true).then(() => 'ok', (e: { code?: string }) => e.code);
      await new Promise((r) => setImmediate(r)); // the commit is under way
      const second = v.write(CS, Buffer.alloc(4096, 2), true).then(() => 'ok', (e: { code?: string }) => e.code);
      expect(await first).toBe('EIO');
      expect(await second).toBe('EIO');
      const closed = await Promise.race([pool.close().then(() => 'closed', () => 'closed'), new Promise((r) => setTimeout(() => r('hung'), 5000))]);
      expect(closed).toBe('closed');
      // the pool closed the descriptor it was given (readOnly); the real journal descriptor is ours to close
      fs.closeSync(realFd);
    } finally {
      await pool.close().catch(() => {});
    }
    const again = await Pool.open(dir);
    try {
      expect(again.volume('v')).toBeDefined();
      await again.volume('v')!.write(0, Buffer.alloc(4096, 3), true);
      expect(again.check().ok).toBe(true);
    } finally {
      await again.close();
      rmDir(base);
    }
  });
});
