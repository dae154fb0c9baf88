import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { expect, test } from 'vitest';
import { newPool, rmDir } from './pool-helpers.js';

const MiB = 2 ** 20;
const TiB = 2 ** 40;

/**
 * Resident metadata for a sparse 1 TiB volume. The full measurement (10 GiB in 10240 extents) is
 * bench/pool-memory.mjs; here 1024 random 1 MiB extents (1 GiB), which keeps the test fast.
 */
test('a 1 TiB volume with random 1 MiB extents stays far below 128 MiB of metadata per TiB', async () => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const { dir, pool } = await newPool('mem', { chunkSize: 64 * 1024 });
  try {
    await pool.createVolume('big', TiB);
    const vol = pool.volume('big')!;
    gc();
    const before = process.memoryUsage();
    const metaBefore = pool.stats().metadataMemoryBytes;
    const data = Buffer.alloc(MiB, 0x5a);
    const slots = TiB / MiB;
    let x = 987654321;
    const extents = 1024;
    const pending: Array<Promise<void>> = [];
    for (let i = 0; i < extents; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      pending.push(vol.write((x % slots) * MiB, data, false));
      if (pending.length >= 16) await Promise.all(pending.splice(0));
    }
    await Promise.all(pending);
    await pool.flush();
    gc();
    const after = process.memoryUsage();
    const s = pool.stats();
    const delta = after.heapUsed + after.arrayBuffers - (before.heapUsed + before.arrayBuffers);
    expect(vol.info().allocatedChunks).toBeGreaterThan(extents * 16 * 0.99);
    // pages of 1024 chunks (64 MiB of volume): each extent touches one or two pages of each table
    expect(s.metadataMemoryBytes - metaBefore).toBeLessThan(extents * 2 * (4096 + 1024) + 4 * MiB);
    expect(s.metadataMemoryBytes).toBeLessThan(128 * MiB);
    // the accounting is close to what the process really holds
    expect(delta).toBeLessThan(2 * (s.metadataMemoryBytes - metaBefore) + 8 * MiB);
    console.log(
      `1 TiB volume, ${extents} x 1 MiB random extents: metadata accounting ${(s.metadataMemoryBytes / MiB).toFixed(1)} MiB, ` +
        `heap+arrayBuffers growth ${(delta / MiB).toFixed(1)} MiB`,
    );
  } finally {
    await pool.close();
    rmDir(path.dirname(dir));
  }
}, 120_000);
