/**
 * Snapshots in the pool (seed 003): copy-on-write isolation against a model under concurrent random I/O on every
 * side, snapshots of snapshots, deletion in every order with the space coming back, persistence through clean
 * reopen and crash images, and creation work that does not grow with the volume size.
 */
import path from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { Pool, VolumeFlag, type Volume } from '../src/pool/index.js';
import { VolumeModel, compareWithModel, crashImage, mulberry32, newPool, pattern, readAll, rmDir } from './pool-helpers.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const CS = 4096;

function cloneModel(m: VolumeModel): VolumeModel {
  const c = new VolumeModel(m.size, m.cs);
  m.content.copy(c.content);
  c.mapped = [...m.mapped];
  c.gen = [...m.gen];
  c.current = m.current;
  return c;
}

async function expectAllMatch(pool: Pool, models: Map<string, VolumeModel>, when: string): Promise<void> {
  for (const [name, model] of models) {
    const vol = pool.volume(name);
    expect(vol, `${when}: volume ${name} exists`).toBeDefined();
    expect(await compareWithModel(vol!, model), `${when}: volume ${name}`).toBe('');
  }
  const check = pool.check();
  expect(check.problems, when).toEqual([]);
}

describe('snapshots', () => {
  test('isolation under concurrent random writes on all sides, snapshots of snapshots, reopen and crash images', async () => {
    const { dir, pool: first } = await newPool('snap', { chunkSize: CS });
    cleanups.push(() => rmDir(path.dirname(dir)));
    let pool = first;
    cleanups.push(() => pool.close().catch(() => {}));
    const SIZE = 96 * CS + 1536; // a partial last chunk
    await pool.createVolume('v', SIZE);
    const models = new Map<string, VolumeModel>([['v', new VolumeModel(SIZE, CS)]]);
    const readOnly = new Set<string>();
    const rnd = mulberry32(4242);
    let seed = 1;
    let snapCount = 0;

    const randomRange = (size: number, maxLen: number): [number, number] => {
      const off = Math.floor(rnd() * size);
      const len = Math.max(1, Math.min(size - off, 1 + Math.floor(rnd() * maxLen)));
      return [off, len];
    };

    for (let round = 0; round < 40; round++) {
      // a batch of concurrent operations: one per writable volume, plus a snapshot of a random volume mid-batch
      const writable = [...models.keys()].filter((n) => !readOnly.has(n));
      const ops: Array<Promise<unknown>> = [];
      for (const name of writable) {
        const model = models.get(name)!;
        const vol = pool.volume(name)!;
        const k = rnd();
        const [off, len] = randomRange(model.size, 6 * CS);
        if (k < 0.7) {
          const data = pattern(len, seed++);
          model.write(off, data);
          ops.push(vol.write(off, data, false));
        } else if (k < 0.85) {
          model.discard(off, len);
          ops.push(vol.trim(off, len, false));
        } else {
          model.zeroNoHole(off, len);
          ops.push(vol.zero(off, len, { noHole: true, fua: false }));
        }
      }
      await Promise.all(ops);
      if (round % 3 === 0 && models.size < 9) {
        const names = [...models.keys()];
        const src = names[Math.floor(rnd() * names.length)];
        const name = `s${++snapCount}`;
        const writableSnap = rnd() < 0.6;
        await pool.cloneVolume(src, name, { flags: VolumeFlag.SNAPSHOT | (writableSnap ? 0 : VolumeFlag.READ_ONLY) });
        models.set(name, cloneModel(models.get(src)!));
        if (!writableSnap) readOnly.add(name);
      }
      if (round % 7 === 6 && models.size > 4) {
        // delete a random volume (sources and snapshots alike)
        const names = [...models.keys()];
        const victim = names[Math.floor(rnd() * names.length)];
        await pool.deleteVolume(victim);
        models.delete(victim);
        readOnly.delete(victim);
      }
      if (round % 5 === 4) await pool.volume([...models.keys()][0])!.advanceGeneration().then(() => models.get([...models.keys()][0])!.advance());
      await expectAllMatch(pool, models, `round ${round}`);
      if (round % 10 === 9) {
        // a crash image after a flush holds everything, including the sharing
        await pool.flush();
        const image = await crashImage(dir, 'snapcrash', pool);
        const crashed = await Pool.open(image);
        await expectAllMatch(crashed, models, `crash image after round ${round}`);
        await crashed.close();
        rmDir(path.dirname(image));
        // and a clean reopen (checkpoint with shared pages)
        await pool.close();
        pool = await Pool.open(dir);
        await expectAllMatch(pool, models, `reopen after round ${round}`);
      }
    }
    // read-only snapshots refuse writes and stay unchanged
    const ro = [...readOnly][0];
    if (ro) await expect(pool.volume(ro)!.write(0, Buffer.alloc(10), false)).rejects.toMatchObject({ code: 'EPERM' });
    // delete everything; the space comes back
    for (const name of [...models.keys()]) {
      await pool.deleteVolume(name);
      models.delete(name);
      expect(pool.check().problems).toEqual([]);
    }
    await pool.settleFrees();
    expect(pool.stats().chunksUsed).toBe(0);
  });

  test('deletion in every order of a volume, its snapshot and a snapshot of the snapshot frees exactly the unshared chunks', async () => {
    const orders = [
      ['v', 's', 't'],
      ['v', 't', 's'],
      ['s', 'v', 't'],
      ['s', 't', 'v'],
      ['t', 'v', 's'],
      ['t', 's', 'v'],
    ];
    for (const order of orders) {
      const { dir, pool } = await newPool('snapdel', { chunkSize: CS });
      cleanups.push(() => rmDir(path.dirname(dir)));
      cleanups.push(() => pool.close().catch(() => {}));
      await pool.createVolume('v', 32 * CS);
      const v = pool.volume('v')!;
      await v.write(0, pattern(16 * CS, 1), false); // chunks 0..15
      await pool.cloneVolume('v', 's', { flags: VolumeFlag.SNAPSHOT });
      await v.write(0, pattern(4 * CS, 2), false); // v: 0..3 now its own
      await pool.cloneVolume('s', 't', { flags: VolumeFlag.SNAPSHOT });
      await pool.volume('s')!.write(8 * CS + 100, pattern(CS, 3), false); // s: partial writes into 8 and 9 (copied)
      await pool.volume('t')!.write(20 * CS, pattern(CS, 4), false); // t: a new chunk
      const expected = {
        v: Buffer.concat([pattern(4 * CS, 2), pattern(16 * CS, 1).subarray(4 * CS), Buffer.alloc(16 * CS)]),
        s: await readAll(pool.volume('s')!, 0, 32 * CS),
        t: await readAll(pool.volume('t')!, 0, 32 * CS),
      };
      // distinct chunks: 16 original + 4 (v) + 2 (s) + 1 (t)
      expect(pool.stats().chunksUsed).toBe(23);
      const alive = new Set(['v', 's', 't']);
      for (const name of order) {
        await pool.deleteVolume(name);
        alive.delete(name);
        expect(pool.check().problems, `after deleting ${name} (order ${order})`).toEqual([]);
        for (const other of alive) {
          expect((await readAll(pool.volume(other)!, 0, 32 * CS)).equals(expected[other as 'v' | 's' | 't']), `${other} after deleting ${name}`).toBe(true);
        }
      }
      await pool.settleFrees();
      expect(pool.stats().chunksUsed, `order ${order}`).toBe(0);
    }
  });

  test('creation work is one step per mapping page, the same for a 1 GiB and a 1 TiB sparse volume', async () => {
    const { dir, pool } = await newPool('snapflat');
    cleanups.push(() => rmDir(path.dirname(dir)));
    cleanups.push(() => pool.close().catch(() => {}));
    const shares = (pool as unknown as { meta: { shares: { map: { shareSteps: number }; gens: { shareSteps: number } } } }).meta.shares;
    const steps: number[] = [];
    for (const [name, size] of [
      ['small', 1024 ** 3],
      ['huge', 1024 ** 4],
    ] as const) {
      await pool.createVolume(name, size);
      const vol = pool.volume(name)!;
      // the same 8 MiB of data (2 mapping pages at 64 KiB chunks) at the start and in the middle of the volume
      await vol.write(0, pattern(4 * 1024 * 1024, 7), false);
      await vol.write(Math.floor(size / 2 / 65536) * 65536, pattern(4 * 1024 * 1024, 8), false);
      const before = shares.map.shareSteps + shares.gens.shareSteps;
      const journalBefore = pool.stats().journalBytes;
      await pool.cloneVolume(name, `${name}-snap`, { flags: VolumeFlag.SNAPSHOT });
      steps.push(shares.map.shareSteps + shares.gens.shareSteps - before);
      expect(pool.stats().journalBytes - journalBefore).toBeLessThan(200); // one record
    }
    expect(steps[0]).toBe(4); // 2 mapping pages + 2 generation pages
    expect(steps[1]).toBe(steps[0]);
  });

  test('a snapshot taken while writes are in flight sees each write entirely or not at all', async () => {
    const { dir, pool } = await newPool('snapgate', { chunkSize: CS });
    cleanups.push(() => rmDir(path.dirname(dir)));
    cleanups.push(() => pool.close().catch(() => {}));
    await pool.createVolume('v', 256 * CS);
    const v: Volume = pool.volume('v')!;
    const writes: Array<Promise<void>> = [];
    for (let i = 0; i < 64; i++) writes.push(v.write(i * 4 * CS, pattern(4 * CS, 100 + i), false));
    const snap = pool.cloneVolume('v', 'snap', { flags: VolumeFlag.SNAPSHOT | VolumeFlag.READ_ONLY, advanceSourceGeneration: true });
    await new Promise((r) => setImmediate(r));
    for (let i = 0; i < 64; i++) writes.push(v.write(i * 4 * CS, pattern(4 * CS, 200 + i), false));
    const { closedGeneration } = await snap;
    await Promise.all(writes);
    expect(closedGeneration).toBe(1);
    const s = pool.volume('snap')!;
    let after = 0;
    for (let i = 0; i < 64; i++) {
      const got = await readAll(s, i * 4 * CS, 4 * CS);
      const ok = got.equals(pattern(4 * CS, 100 + i)) || got.equals(Buffer.alloc(4 * CS)) || got.equals(pattern(4 * CS, 200 + i));
      expect(ok, `range ${i} is one whole write`).toBe(true);
      if (!got.equals(pattern(4 * CS, 200 + i))) after++;
    }
    // the second writes that came after the view are exactly the chunks in generation 2 on the source
    expect(after).toBeGreaterThan(0);
    for (let i = 0; i < 64; i++) expect(await readAll(v, i * 4 * CS, 4 * CS)).toEqual(pattern(4 * CS, 200 + i));
    expect(v.generations().current).toBe(2);
    expect(v.generations().counts.find((c) => c.generation === 2)?.chunks).toBe(after * 4);
  });
});

describe('volume copy (seed 000 pseudo-copy)', () => {
  test('usable at once, on-demand copy of what is read or written while the background job runs, restart in the middle', async () => {
    const { dir, pool: first } = await newPool('copy', { chunkSize: CS });
    cleanups.push(() => rmDir(path.dirname(dir)));
    let pool = first;
    cleanups.push(() => pool.close().catch(() => {}));
    const SIZE = 4096 * CS; // 16 MiB, 4096 chunks
    await pool.createVolume('src', SIZE);
    const src = pool.volume('src')!;
    const original = Buffer.alloc(SIZE);
    for (let i = 0; i < 300; i++) {
      const off = Math.floor(((i * 7919) % 4000) * CS + (i % 3) * 512);
      const data = pattern(3 * CS, 500 + i);
      data.copy(original, off);
      await src.write(off, data, false);
    }
    await pool.cloneVolume('src', 'cp', { flags: VolumeFlag.COPYING });
    expect(pool.volume('cp')!.info()).toMatchObject({ kind: 'copy', copying: true });
    // restart in the middle: the pool closes before the job got far, the job resumes at open
    expect(pool.copyProgress('cp')[0].finished).toBe(false);
    await pool.close();
    pool = await Pool.open(dir);
    const cp = pool.volume('cp')!;
    expect(cp.info().copying).toBe(true);
    // reads and a partial write on the copy while the job runs (copied on demand); the source stays writable
    const expectedCopy = Buffer.from(original);
    const reads = [readAll(cp, 3900 * CS, 64 * CS), readAll(cp, 2000 * CS, 64 * CS)];
    // copies in flight hold clean chunks not mapped yet: pool check must not call them leaked (it once did)
    for (let i = 0; i < 20 && !pool.copyProgress('cp')[0]?.finished; i++) {
      expect(pool.check().problems).toEqual([]);
      await new Promise((r) => setImmediate(r));
    }
    await cp.write(3980 * CS + 100, pattern(200, 9), false);
    pattern(200, 9).copy(expectedCopy, 3980 * CS + 100);
    await pool.volume('src')!.write(3990 * CS, pattern(CS, 10), false);
    const expectedSrc = Buffer.from(original);
    pattern(CS, 10).copy(expectedSrc, 3990 * CS);
    const [r1, r2] = await Promise.all(reads);
    expect(r1.equals(original.subarray(3900 * CS, 3964 * CS))).toBe(true);
    expect(r2.equals(original.subarray(2000 * CS, 2064 * CS))).toBe(true);
    const progress = await pool.waitForCopy('cp');
    expect(pool.volume('cp')!.info().copying).toBe(false);
    if (progress) expect(progress.finished).toBe(true);
    expect((await readAll(pool.volume('cp')!, 0, SIZE)).equals(expectedCopy)).toBe(true);
    expect((await readAll(pool.volume('src')!, 0, SIZE)).equals(expectedSrc)).toBe(true);
    // nothing is shared any more: deleting the source frees all of its chunks
    const usedBefore = pool.stats().chunksUsed;
    const srcChunks = pool.volume('src')!.info().allocatedChunks;
    await pool.deleteVolume('src');
    await pool.settleFrees();
    expect(pool.stats().chunksUsed).toBe(usedBefore - srcChunks);
    expect(pool.check().problems).toEqual([]);
  });
});

describe('backup views and the generation map', () => {
  test('finished: the map restarts at the view; abandoned or cut by a crash: the generation folds back, the view goes', async () => {
    const { dir, pool: first } = await newPool('bview', { chunkSize: CS });
    cleanups.push(() => rmDir(path.dirname(dir)));
    let pool = first;
    cleanups.push(() => pool.close().catch(() => {}));
    await pool.createVolume('v', 16 * CS);
    const v = () => pool.volume('v')!;
    await v().write(0, pattern(2 * CS, 1), false); // chunks 0,1 in generation 1
    const flags = VolumeFlag.HIDDEN | VolumeFlag.READ_ONLY | VolumeFlag.BACKUP_VIEW;
    // abandoned: generation 2 (started at the view) folds back into 1
    await pool.cloneVolume('v', '.view1', { flags, advanceSourceGeneration: true });
    await v().write(5 * CS, pattern(CS, 2), false); // chunk 5 in generation 2
    await pool.abandonBackupView('v', '.view1');
    expect(v().generations()).toEqual({ current: 1, counts: [{ generation: 0, chunks: 13 }, { generation: 1, chunks: 3 }] });
    expect(pool.volume('.view1')).toBeUndefined();
    // finished: chunks before the view become 0, the one written after it is generation 1
    await pool.cloneVolume('v', '.view2', { flags, advanceSourceGeneration: true });
    await v().write(7 * CS, pattern(CS, 3), false);
    await pool.finishBackupView('v', '.view2');
    expect(v().generations()).toEqual({ current: 1, counts: [{ generation: 0, chunks: 15 }, { generation: 1, chunks: 1 }] });
    expect(v().chunkGeneration(7)).toBe(1);
    // a crash while a view exists: the next open folds its generation back and removes it
    await pool.cloneVolume('v', '.view3', { flags, advanceSourceGeneration: true });
    await v().write(9 * CS, pattern(CS, 4), false);
    await pool.flush();
    const image = await crashImage(dir, 'bviewcrash', pool);
    await pool.close();
    pool = await Pool.open(image);
    cleanups.push(() => rmDir(path.dirname(image)));
    expect(pool.listVolumes({ includeHidden: true }).map((x) => x.name)).toEqual(['v']);
    expect(v().generations()).toEqual({ current: 1, counts: [{ generation: 0, chunks: 14 }, { generation: 1, chunks: 2 }] });
    expect(v().chunkGeneration(9)).toBe(1);
    expect(pool.check().problems).toEqual([]);
  });
});

describe('sharing survives checkpoints', () => {
  test('after a reopen (checkpoint with shared pages), writes to the source or the snapshot never reach the other', async () => {
    const { dir, pool: first } = await newPool('snapckpt', { chunkSize: CS });
    cleanups.push(() => rmDir(path.dirname(dir)));
    let pool = first;
    cleanups.push(() => pool.close().catch(() => {}));
    await pool.createVolume('v', 3000 * CS); // three mapping pages
    const original = pattern(3000 * CS, 77);
    await pool.volume('v')!.write(0, original, false);
    await pool.cloneVolume('v', 'ro', { flags: VolumeFlag.SNAPSHOT | VolumeFlag.READ_ONLY });
    await pool.cloneVolume('v', 'rw', { flags: VolumeFlag.SNAPSHOT });
    await pool.cloneVolume('ro', 'ro2', { flags: VolumeFlag.SNAPSHOT | VolumeFlag.READ_ONLY });
    // the pages are shared in the checkpoint written by close; the reopened tables must copy before writing
    await pool.close();
    pool = await Pool.open(dir);
    expect(pool.check().problems).toEqual([]);
    const v = pool.volume('v')!;
    const rw = pool.volume('rw')!;
    const expectV = Buffer.from(original);
    const expectRw = Buffer.from(original);
    await v.write(5 * CS + 7, pattern(100, 1), false); // partial, page 0
    pattern(100, 1).copy(expectV, 5 * CS + 7);
    await v.write(1500 * CS, pattern(2 * CS, 2), false); // whole chunks, page 1
    pattern(2 * CS, 2).copy(expectV, 1500 * CS);
    await rw.write(2500 * CS + 1, pattern(CS, 3), false); // partial, page 2
    pattern(CS, 3).copy(expectRw, 2500 * CS + 1);
    await v.trim(2900 * CS, 4 * CS, false);
    expectV.fill(0, 2900 * CS, 2904 * CS);
    expect((await readAll(v, 0, 3000 * CS)).equals(expectV)).toBe(true);
    expect((await readAll(rw, 0, 3000 * CS)).equals(expectRw)).toBe(true);
    for (const name of ['ro', 'ro2']) expect((await readAll(pool.volume(name)!, 0, 3000 * CS)).equals(original), name).toBe(true);
    expect(pool.check().problems).toEqual([]);
    // and once more through a checkpoint and a crash image (journal replay onto shared pages)
    await pool.close();
    pool = await Pool.open(dir);
    await pool.volume('ro2')!.read(0, Buffer.alloc(CS));
    await pool.volume('v')!.write(10 * CS, pattern(CS, 4), false);
    pattern(CS, 4).copy(expectV, 10 * CS);
    await pool.flush();
    const image = await crashImage(dir, 'snapckptcrash', pool);
    const crashed = await Pool.open(image);
    cleanups.push(() => rmDir(path.dirname(image)));
    expect((await readAll(crashed.volume('v')!, 0, 3000 * CS)).equals(expectV)).toBe(true);
    for (const name of ['ro', 'ro2']) expect((await readAll(crashed.volume(name)!, 0, 3000 * CS)).equals(original), name).toBe(true);
    await crashed.volume('ro')!.read(0, Buffer.alloc(CS));
    await crashed.volume('v')!.write(11 * CS, pattern(CS, 5), false);
    expect((await readAll(crashed.volume('ro')!, 0, 3000 * CS)).equals(original)).toBe(true);
    expect(crashed.check().problems).toEqual([]);
    await crashed.close();
    for (const name of ['v', 'rw', 'ro', 'ro2']) await pool.deleteVolume(name);
    await pool.settleFrees();
    expect(pool.stats().chunksUsed).toBe(0);
  });
});
