import path from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { Pool, type Volume } from '../src/pool/index.js';
import { VolumeModel, compareWithModel, crashImage, mulberry32, newPool, pattern, rmDir } from './pool-helpers.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const CS = 4096;

describe('generation map and count table', () => {
  test('the seed-002 walk-through: marks, advance, counts, changedChunks, reset', async () => {
    const { dir, pool } = await newPool('gen', { chunkSize: CS });
    cleanups.push(() => rmDir(path.dirname(dir)));
    cleanups.push(() => pool.close().catch(() => {}));
    await pool.createVolume('v', 16 * CS);
    const vol = pool.volume('v')!;
    expect(vol.generations()).toEqual({ current: 1, counts: [{ generation: 0, chunks: 16 }] });
    await vol.write(0, Buffer.alloc(3 * CS, 1), false); // chunks 0..2 in generation 1
    expect(vol.generations().counts).toEqual([{ generation: 0, chunks: 13 }, { generation: 1, chunks: 3 }]);
    await vol.write(10, Buffer.alloc(10, 2), false); // same chunk, same generation: no change
    expect(vol.generations().counts).toEqual([{ generation: 0, chunks: 13 }, { generation: 1, chunks: 3 }]);
    expect(await vol.advanceGeneration()).toBe(2);
    await vol.write(2 * CS, Buffer.alloc(2 * CS, 3), false); // chunk 2 moves 1 -> 2, chunk 3 moves 0 -> 2
    expect(vol.generations()).toEqual({
      current: 2,
      counts: [{ generation: 0, chunks: 12 }, { generation: 1, chunks: 2 }, { generation: 2, chunks: 2 }],
    });
    expect(vol.changedChunks(1)).toEqual([0, 1, 2, 3]);
    expect(vol.changedChunks(2)).toEqual([2, 3]);
    expect(vol.chunkGeneration(2)).toBe(2);
    expect(vol.chunkGeneration(5)).toBe(0);
    expect(() => vol.chunkGeneration(16)).toThrow();
    await vol.trim(0, CS, false); // trim of a mapped chunk changes it: generation 2
    expect(vol.chunkGeneration(0)).toBe(2);
    await vol.trim(8 * CS, CS, false); // never written: nothing changes
    expect(vol.chunkGeneration(8)).toBe(0);
    await vol.resetGenerations();
    expect(vol.generations()).toEqual({ current: 1, counts: [{ generation: 0, chunks: 16 }] });
    expect(vol.changedChunks(1)).toEqual([]);
    // grown chunks are marked: before an earlier shrink they may have held data the last backup has
    await pool.resizeVolume('v', 20 * CS);
    expect(vol.generations().counts).toEqual([{ generation: 0, chunks: 16 }, { generation: 1, chunks: 4 }]);
    await vol.write(19 * CS, Buffer.alloc(CS, 1), false);
    await pool.resizeVolume('v', 18 * CS);
    expect(vol.generations().counts).toEqual([{ generation: 0, chunks: 16 }, { generation: 1, chunks: 2 }]);
    await pool.close();
    const again = await Pool.open(dir);
    cleanups.push(() => again.close().catch(() => {}));
    expect(again.volume('v')!.generations()).toEqual({ current: 1, counts: [{ generation: 0, chunks: 16 }, { generation: 1, chunks: 2 }] });
  });

  test('shrink then grow within a generation: the chunks that came back are marked (a review found them at 0)', async () => {
    const { dir, pool } = await newPool('shrinkgrow', { chunkSize: CS });
    cleanups.push(() => rmDir(path.dirname(dir)));
    cleanups.push(() => pool.close().catch(() => {}));
    await pool.createVolume('v', 4 * CS);
    const vol = pool.volume('v')!;
    await vol.write(3 * CS, Buffer.alloc(CS, 0xab), false);
    await vol.resetGenerations(); // a full backup holds chunk 3 = 0xab
    await pool.resizeVolume('v', 3 * CS);
    await pool.resizeVolume('v', 4 * CS);
    const back = Buffer.alloc(CS, 1);
    expect(await vol.read(3 * CS, back)).toEqual([0, CS]); // reads zeros now: it changed since the backup
    expect(vol.changedChunks(1)).toEqual([3]);
  });

  test('random operations against a model, with reopen and crash images', async () => {
    const rnd = mulberry32(20261123);
    const { dir, pool: first } = await newPool("genrand", { chunkSize: CS, capacity: 8 * 1024 * 1024 });
    cleanups.push(() => rmDir(path.dirname(dir)));
    let pool = first;
    cleanups.push(() => pool.close().catch(() => {}));
    const names = ['a', 'b'];
    const models = new Map<string, VolumeModel>();
    for (const n of names) {
      const size = 64 * CS + 512 * Math.floor(rnd() * 8);
      await pool.createVolume(n, size);
      models.set(n, new VolumeModel(size, CS));
    }
    const vol = (n: string): Volume => pool.volume(n)!;
    const randRange = (size: number): [number, number] => {
      const r = rnd();
      let off: number;
      let len: number;
      if (r < 0.1) {
        off = Math.floor(rnd() * size);
        len = size - off; // up to the end
      } else {
        off = Math.floor(rnd() * size);
        if (rnd() < 0.5) off -= off % 512;
        len = 1 + Math.floor(rnd() * Math.min(6 * CS, size - off));
      }
      return [off, Math.max(1, Math.min(len, size - off))];
    };

    let seed = 1;
    const checkAll = async (label: string) => {
      for (const n of names) {
        const msg = await compareWithModel(vol(n), models.get(n)!);
        expect(msg, `${label}: volume ${n}`).toBe('');
      }
    };

    for (let step = 0; step < 600; step++) {
      const n = names[Math.floor(rnd() * names.length)];
      const m = models.get(n)!;
      const r = rnd();
      if (r < 0.4) {
        // a few concurrent writes on disjoint ranges
        const k = 1 + Math.floor(rnd() * 3);
        const ops: Array<Promise<void>> = [];
        const taken: Array<[number, number]> = [];
        for (let i = 0; i < k; i++) {
          const [off, len] = randRange(m.size);
          if (taken.some(([o, l]) => off < o + l && o < off + len)) continue;
          taken.push([off, len]);
          const data = pattern(len, seed++);
          m.write(off, data);
          ops.push(vol(n).write(off, data, rnd() < 0.2));
        }
        await Promise.all(ops);
      } else if (r < 0.55) {
        const [off, len] = randRange(m.size);
        m.discard(off, len);
        await vol(n).trim(off, len, rnd() < 0.3);
      } else if (r < 0.65) {
        const [off, len] = randRange(m.size);
        const noHole = rnd() < 0.5;
        if (noHole) m.zeroNoHole(off, len);
        else m.discard(off, len);
        await vol(n).zero(off, len, { noHole, fua: false });
      } else if (r < 0.72) {
        const size = 16 * CS + 512 * Math.floor(rnd() * 200);
        m.resize(size);
        await pool.resizeVolume(n, size);
      } else if (r < 0.8) {
        m.advance();
        expect(await vol(n).advanceGeneration()).toBe(m.current);
      } else if (r < 0.82) {
        m.reset();
        await vol(n).resetGenerations();
      } else if (r < 0.9) {
        await checkAll(`step ${step}`);
      } else if (r < 0.95) {
        await pool.close();
        pool = await Pool.open(dir, { checkpointBytes: 8192 });
        await checkAll(`after reopen at step ${step}`);
      } else {
        // crash image after a flush: what kill -9 right now would leave; replays checkpoint + journal
        await pool.flush();
        const image = await crashImage(dir, 'crash', pool);
        const crashed = await Pool.open(image);
        try {
          expect(crashed.recovery.cleanShutdown).toBe(false);
          for (const name of names) expect(await compareWithModel(crashed.volume(name)!, models.get(name)!), `crash image at step ${step}`).toBe('');
        } finally {
          await crashed.close();
          rmDir(path.dirname(image));
        }
      }
    }
    await checkAll('end');
    // the free path has settled: every chunk is used exactly by the mapped chunks of the volumes
    await pool.flush();
    await pool.settleFrees();
    const mapped = names.reduce((s, n) => s + models.get(n)!.mapped.filter(Boolean).length, 0);
    expect(pool.stats().chunksUsed).toBe(mapped);
    expect(pool.stats().chunksPendingFree).toBe(0);
  }, 120_000);
});
