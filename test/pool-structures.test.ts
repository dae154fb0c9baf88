import { describe, expect, test } from 'vitest';
import { ChunkBitmap } from '../src/pool/chunk-bitmap.js';
import { GenerationMap } from '../src/pool/generation-map.js';
import { IoTracker } from '../src/pool/io-tracker.js';
import { PageShares, PagedTable, type Page } from '../src/pool/paged-table.js';
import { SyncCoalescer } from '../src/pool/sync-coalescer.js';
import { mulberry32 } from './pool-helpers.js';

describe('PagedTable', () => {
  test('sparse pages, widening, dropping, truncate, nextWhere against a Map', () => {
    const t = new PagedTable();
    const ref = new Map<number, number>();
    const rnd = mulberry32(1);
    const N = 50_000;
    for (let k = 0; k < 20_000; k++) {
      const i = Math.floor(rnd() * N);
      const r = rnd();
      const v = r < 0.3 ? 0 : r < 0.8 ? 1 + Math.floor(rnd() * 200) : r < 0.95 ? Math.floor(rnd() * 60000) : Math.floor(rnd() * 2 ** 32);
      const old = t.set(i, v);
      expect(old).toBe(ref.get(i) ?? 0);
      if (v === 0) ref.delete(i);
      else ref.set(i, v);
    }
    expect(t.count).toBe(ref.size);
    for (let i = 0; i < N; i++) expect(t.get(i)).toBe(ref.get(i) ?? 0);
    const seen: number[] = [];
    t.forEachNonZero(1000, 30_000, (i, v) => {
      expect(v).toBe(ref.get(i));
      seen.push(i);
    });
    expect(seen).toEqual([...ref.keys()].filter((i) => i >= 1000 && i < 30_000).sort((a, b) => a - b));
    for (const from of [0, 17, 1024, 4000, 49_999]) {
      let nz = from;
      while (nz < N && !ref.has(nz)) nz++;
      expect(t.nextWhere(from, N, true)).toBe(nz);
      let z = from;
      while (z < N && ref.has(z)) z++;
      expect(t.nextWhere(from, N, false)).toBe(z);
    }
    t.truncate(20_500);
    for (const i of [...ref.keys()]) if (i >= 20_500) ref.delete(i);
    expect(t.count).toBe(ref.size);
    for (let i = 20_000; i < N; i++) expect(t.get(i)).toBe(ref.get(i) ?? 0);
    for (const i of [...ref.keys()]) t.set(i, 0);
    expect(t.count).toBe(0);
    expect(t.pageCount).toBe(0);
  });

  test('memory: narrow pages for small values, none for zeros', () => {
    const t = new PagedTable();
    t.set(5, 0);
    expect(t.pageCount).toBe(0);
    t.set(5, 3);
    const small = t.memoryBytes;
    t.set(6, 70000);
    expect(t.memoryBytes - small).toBe(4096 - 1024);
    expect(t.get(5)).toBe(3);
  });
});

describe('GenerationMap', () => {
  test('counts stay exact under set / resize / reset', () => {
    const g = new GenerationMap(100);
    const ref = new Array(100).fill(0);
    const rnd = mulberry32(2);
    const check = () => {
      const m = new Map<number, number>();
      for (const x of ref) m.set(x, (m.get(x) ?? 0) + 1);
      expect(g.countTable()).toEqual([...m.entries()].sort((a, b) => a[0] - b[0]).map(([generation, chunks]) => ({ generation, chunks })));
      for (let c = 0; c < ref.length; c++) expect(g.get(c)).toBe(ref[c]);
    };
    for (let k = 0; k < 3000; k++) {
      const r = rnd();
      if (r < 0.9) {
        const c = Math.floor(rnd() * ref.length);
        const v = Math.floor(rnd() * 5);
        g.set(c, v);
        ref[c] = v;
      } else if (r < 0.98) {
        const n = 1 + Math.floor(rnd() * 3000);
        g.resize(n);
        if (n < ref.length) ref.length = n;
        else while (ref.length < n) ref.push(g.current); // grown chunks are marked with the current generation
      } else {
        g.reset();
        ref.fill(0);
      }
      if (k % 100 === 0) check();
    }
    check();
    expect(g.changedSince(3)).toEqual(ref.flatMap((x, c) => (x >= 3 ? [c] : [])));
  });
});

describe('ChunkBitmap', () => {
  test('findNext against a Set, with growth', () => {
    const b = new ChunkBitmap();
    const ref = new Set<number>();
    const rnd = mulberry32(3);
    b.grow(100);
    for (let k = 0; k < 5000; k++) {
      if (rnd() < 0.01) b.grow(b.size + Math.floor(rnd() * 5000));
      const i = Math.floor(rnd() * b.size);
      if (rnd() < 0.6) {
        b.set(i);
        ref.add(i);
      } else {
        b.clear(i);
        ref.delete(i);
      }
      if (k % 50 === 0) {
        const from = Math.floor(rnd() * b.size);
        let want = -1;
        for (let j = from; j < b.size; j++)
          if (ref.has(j)) {
            want = j;
            break;
          }
        expect(b.findNext(from)).toBe(want);
      }
    }
    expect(b.count).toBe(ref.size);
    b.setRange(b.size - 3, 3);
    expect(b.findNext(b.size - 3)).toBe(b.size - 3);
    expect(b.findNext(b.size)).toBe(-1);
  });
});

describe('IoTracker', () => {
  test('completedBelow advances past out-of-order completions; waiters wake; the ring grows', async () => {
    const t = new IoTracker();
    const ids = Array.from({ length: 3000 }, () => t.begin());
    const tag = t.nextId;
    let woke = false;
    const w = t.whenCompleted(tag).then(() => (woke = true));
    for (let k = ids.length - 1; k > 0; k--) t.end(ids[k]);
    expect(t.completedBelow).toBe(ids[0]);
    await Promise.resolve();
    expect(woke).toBe(false);
    t.end(ids[0]);
    expect(t.completedBelow).toBe(tag);
    await w;
    expect(woke).toBe(true);
    expect(t.inFlight).toBe(0);
    await t.whenIdle();
  });
});

describe('SyncCoalescer', () => {
  test('requests during a sync share the next one, which starts after the first', async () => {
    const log: string[] = [];
    let n = 0;
    const s = new SyncCoalescer(async () => {
      const k = ++n;
      log.push(`start ${k}`);
      await new Promise((r) => setTimeout(r, 10));
      log.push(`end ${k}`);
    });
    await Promise.all([s.sync(), s.sync(), s.sync(), s.sync()]);
    expect(log).toEqual(['start 1', 'end 1', 'start 2', 'end 2']);
  });

  test('a request joins the running sync when no modification completed since it started, else waits for the next', async () => {
    const log: string[] = [];
    let n = 0;
    let version = 0;
    const s = new SyncCoalescer(
      async () => {
        const k = ++n;
        log.push(`start ${k}`);
        await new Promise((r) => setTimeout(r, 10));
        log.push(`end ${k}`);
      },
      () => version,
    );
    // a burst of flushes with no write in between: one fdatasync serves them all
    await Promise.all([s.sync(), s.sync(), s.sync()]);
    expect(log).toEqual(['start 1', 'end 1']);
    // a write completes while a sync runs: a flush issued after it must not be served by the running sync
    version++;
    const first = s.sync();
    version++;
    const second = s.sync();
    let firstDone = false;
    void first.then(() => (firstDone = true));
    await second;
    expect(firstDone).toBe(true);
    expect(log).toEqual(['start 1', 'end 1', 'start 2', 'end 2', 'start 3', 'end 3']);
    // nothing completed since the last sync started: already durable, no new fdatasync
    await s.sync();
    expect(n).toBe(3);
    version++;
    await s.sync();
    expect(n).toBe(4);
  });

  test('a failed sync does not count as durable', async () => {
    let calls = 0;
    const s = new SyncCoalescer(
      async () => {
        calls++;
        if (calls === 1) throw new Error('EIO');
      },
      () => 7,
    );
    await expect(s.sync()).rejects.toThrow('EIO');
    await s.sync();
    expect(calls).toBe(2);
    await s.sync();
    expect(calls).toBe(2);
  });
});

describe('PagedTable page sharing', () => {
  test('shared tables never see each other\'s changes, and the ownership hooks keep per-page references exact', () => {
    const rnd = mulberry32(99);
    const shares = new PageShares();
    /** references per value = number of distinct live page objects holding it (what the allocator keeps) */
    const refs = new Map<number, number>();
    const add = (v: number, d: number) => refs.set(v, (refs.get(v) ?? 0) + d);
    shares.hooks = {
      copied: (page: Page) => {
        for (const v of page) if (v !== 0) add(v, 1);
      },
      dropped: (v: number) => add(v, -1),
    };
    const N = 5000;
    const tables: Array<{ t: PagedTable; model: Map<number, number> } | null> = [{ t: new PagedTable(shares), model: new Map() }];
    let nextValue = 1;
    for (let step = 0; step < 6000; step++) {
      const live = tables.map((x, i) => (x ? i : -1)).filter((i) => i >= 0);
      const k = live[Math.floor(rnd() * live.length)];
      const { t, model } = tables[k]!;
      const r = rnd();
      if (r < 0.6) {
        const i = Math.floor(rnd() * N);
        const old = t.get(i);
        const v = rnd() < 0.2 ? 0 : nextValue++;
        t.set(i, v); // like a MAP/UNMAP: the old value loses this table's reference, the new one gains it
        if (old !== 0) add(old, -1);
        if (v !== 0) add(v, 1);
        if (v === 0) model.delete(i);
        else model.set(i, v);
      } else if (r < 0.75 && live.length < 6) {
        const copy = new PagedTable(shares);
        t.shareInto(copy);
        tables.push({ t: copy, model: new Map(model) });
      } else if (r < 0.85 && live.length > 1) {
        t.releaseAll();
        tables[k] = null;
      } else if (r < 0.9) {
        const from = Math.floor(rnd() * N);
        t.truncate(from);
        for (const i of [...model.keys()]) if (i >= from) model.delete(i);
      }
    }
    for (const x of tables) {
      if (!x) continue;
      for (let i = 0; i < N; i++) expect(x.t.get(i), `entry ${i}`).toBe(x.model.get(i) ?? 0);
    }
    // every value still referenced is held by exactly as many distinct page objects as the hooks counted
    const seen = new Set<Page>();
    const expected = new Map<number, number>();
    for (const x of tables) {
      x?.t.forEachPage((_pi, page) => {
        if (seen.has(page)) return;
        seen.add(page);
        for (const v of page) if (v !== 0) expected.set(v, (expected.get(v) ?? 0) + 1);
      });
    }
    for (const [v, n] of refs) expect(n, `references of value ${v}`).toBe(expected.get(v) ?? 0);
    expect(shares.sharedPages).toBeLessThanOrEqual(seen.size);
  });
});
