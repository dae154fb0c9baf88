/**
 * The `qemu:dirty-bitmap:since-K` meta context through the real daemon and real clients: qemu-io writes in three
 * generations, then nbdinfo, qemu-img (qemu's own dirty-bitmap client path, x-dirty-bitmap) and a raw NBD client
 * read the changes; they must match the chunks written and `thinvault volume generations --map`. First,
 * Volume.changedExtents (what the context is built on) against a brute-force model over several map pages.
 */
import { describe, it, expect, beforeAll, afterAll, vi } from 'vitest';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_META_CONTEXT,
  NBD_REPLY_TYPE_BLOCK_STATUS,
} from '../src/nbd/constants.js';
import path from 'node:path';
import { ControlConnection } from './helpers/control-connection.js';
import { startDaemon, cliJson, tool, type Daemon } from './helpers/daemon.js';
import { RawClient, metaContextPayload, type OptionReply } from './helpers/nbd-harness.js';
import { mulberry32, newPool, rmDir } from './pool-helpers.js';

vi.setConfig({ testTimeout: 60_000, hookTimeout: 180_000 });

const KiB = 1024;
const MiB = 1024 * 1024;
/** not a multiple of the chunk size: the last chunk is partial (4608 bytes) */
const SIZE = 10 * MiB + 4608;
const DIRTY = 1;
const bitmap = (k: number | string): string => `qemu:dirty-bitmap:since-${k}`;

interface Range {
  offset: number;
  length: number;
}
interface GenerationsResult {
  current: number;
  chunkSize: number;
  map: Array<{ offset: number; length: number; generation: number }>;
}

/** Appends a range, merging it with the previous one when they touch. */
function pushRange(out: Range[], offset: number, length: number): void {
  const last = out[out.length - 1];
  if (last !== undefined && last.offset + last.length === offset) last.length += length;
  else out.push({ offset, length });
}

async function qemuIo(d: Daemon, name: string, cmds: string[]): Promise<string> {
  const out = await tool('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), d.uri(name)]);
  expect(out).not.toMatch(/failed/i);
  return out;
}

/** nbdinfo --map=CONTEXT --json: checks the extents tile the export, returns the ranges with `flag` set. */
async function nbdinfoMap(d: Daemon, name: string, context: string, flag: number, size: number): Promise<Range[]> {
  const extents = JSON.parse(await tool('nbdinfo', ['--json', `--map=${context}`, d.uri(name)])) as Array<{
    offset: number;
    length: number;
    type: number;
  }>;
  let pos = 0;
  const out: Range[] = [];
  for (const e of extents) {
    expect(e.offset).toBe(pos);
    pos += e.length;
    if ((e.type & flag) !== 0) pushRange(out, e.offset, e.length);
  }
  expect(pos).toBe(size);
  return out;
}

describe('NBD meta context qemu:dirty-bitmap:since-K', () => {
  let d: Daemon;
  let cs: number;
  /** the model: chunk -> generation it was last written in */
  const gen = new Map<number, number>();
  /** model of the snapshot taken after the third round of writes */
  let snapGen = new Map<number, number>();

  /** chunks touched by a write of `length` bytes at `offset`, marked with generation g in `model` */
  const mark = (model: Map<number, number>, offset: number, length: number, g: number): void => {
    for (let c = Math.floor(offset / cs); c * cs < offset + length; c++) model.set(c, g);
  };
  /** expected dirty byte ranges for since-k over [from, to) */
  const expected = (model: Map<number, number>, k: number, from = 0, to = SIZE): Range[] => {
    const out: Range[] = [];
    for (const c of [...model.keys()].sort((a, b) => a - b)) {
      if ((model.get(c) as number) < k) continue;
      const start = Math.max(from, c * cs);
      const end = Math.min(to, (c + 1) * cs, SIZE);
      if (start < end) pushRange(out, start, end - start);
    }
    return out;
  };
  /** writes with qemu-io and records them in the model */
  const write = async (name: string, g: number, writes: Array<[number, number, number]>): Promise<void> => {
    await qemuIo(d, name, [...writes.map(([pat, off, len]) => `write -P ${pat} ${off} ${len}`), 'flush']);
    for (const [, off, len] of writes) mark(gen, off, len, g);
  };

  beforeAll(async () => {
    d = await startDaemon();
    await cliJson(d, ['volume', 'create', 'v', '--size', String(SIZE)]);
    cs = (await cliJson<GenerationsResult>(d, ['volume', 'generations', 'v'])).chunkSize;
    expect(cs).toBe(64 * KiB);
    expect(SIZE % cs).not.toBe(0);
    // generation 1
    await write('v', 1, [
      [1, 0, 64 * KiB],
      [1, 1 * MiB, 100 * KiB],
      [1, 5 * MiB - 512, 1024], // straddles a chunk boundary
    ]);
    expect(await cliJson(d, ['volume', 'advance-generation', 'v'])).toMatchObject({ previous: 1, current: 2 });
    // generation 2
    await write('v', 2, [
      [2, 70000, 10], // chunk 1, unaligned
      [2, SIZE - 1000, 1000], // the last, partial chunk
      [2, 1 * MiB + 64 * KiB, 512], // chunk 17 again: moves from generation 1 to 2
    ]);
    expect(await cliJson(d, ['volume', 'advance-generation', 'v'])).toMatchObject({ previous: 2, current: 3 });
    // generation 3
    await write('v', 3, [
      [3, 2 * MiB, 64 * KiB],
      [3, 0, 512], // chunk 0 again
      [3, 3 * MiB + 3 * 64 * KiB, 3 * 64 * KiB], // three adjacent chunks in one run
    ]);
    await cliJson(d, ['snapshot', 'create', 'v', 'snap']);
    snapGen = new Map(gen);
    // after the snapshot: the volume changes, the snapshot keeps its map
    await write('v', 3, [[4, 8 * MiB, 4 * KiB]]);
  });

  afterAll(async () => {
    if (!d) return;
    expect((await d.cli(['pool', 'check'])).code).toBe(0);
    await d.stop();
  });

  it('nbdinfo --map=qemu:dirty-bitmap:since-K shows exactly the chunks written in generation K or later', async () => {
    const g = await cliJson<GenerationsResult>(d, ['volume', 'generations', 'v', '--map']);
    expect(g.current).toBe(3);
    for (const k of [1, 2, 3]) {
      const dirty = await nbdinfoMap(d, 'v', bitmap(k), DIRTY, SIZE);
      expect(dirty, `since-${k}`).toEqual(expected(gen, k));
      // the CLI's changed ranges (runs of one generation) filtered to >= K and merged say the same
      const fromCli: Range[] = [];
      for (const r of g.map) if (r.generation >= k) pushRange(fromCli, r.offset, r.length);
      expect(dirty, `since-${k} vs volume generations --map`).toEqual(fromCli);
    }
    // spot checks of the model itself (so that a wrong model cannot hide a wrong server)
    expect(expected(gen, 3)).toEqual([
      { offset: 0, length: cs },
      { offset: 2 * MiB, length: cs },
      { offset: 3 * MiB + 3 * cs, length: 3 * cs },
      { offset: 8 * MiB, length: cs },
    ]);
    expect(expected(gen, 2)).toContainEqual({ offset: SIZE - (SIZE % cs), length: SIZE % cs });
    expect(expected(gen, 1)).toContainEqual({ offset: 5 * MiB - cs, length: 2 * cs });
    // a generation nobody wrote in yet is accepted and all clean
    expect(await nbdinfoMap(d, 'v', bitmap(4), DIRTY, SIZE)).toEqual([]);
    expect(await nbdinfoMap(d, 'v', bitmap(4294967295), DIRTY, SIZE)).toEqual([]);
  });

  it('qemu-img reads the context through its own dirty-bitmap client path (dirty = "data": false)', async () => {
    const out = await tool('qemu-img', [
      'map',
      '--output=json',
      '--image-opts',
      `driver=nbd,server.type=unix,server.path=${d.nbdSocket},export=v,x-dirty-bitmap=${bitmap(2)}`,
    ]);
    const dirty: Range[] = [];
    for (const e of JSON.parse(out) as Array<{ start: number; length: number; data: boolean }>) {
      if (!e.data) pushRange(dirty, e.start, e.length);
    }
    expect(dirty).toEqual(expected(gen, 2));
  });

  it('a snapshot answers from its own generation map', async () => {
    for (const k of [1, 2, 3]) expect(await nbdinfoMap(d, 'snap', bitmap(k), DIRTY, SIZE)).toEqual(expected(snapGen, k));
    expect(expected(gen, 3)).not.toEqual(expected(snapGen, 3));
  });

  it('base:allocation still works; unsupported names are neither listed nor selectable', async () => {
    // nbdinfo --map without a name: base:allocation (type 3 = hole|zero); the allocated chunks are the written ones
    const holes = await nbdinfoMap(d, 'v', 'base:allocation', 1, SIZE);
    const allocated: Range[] = [];
    let pos = 0;
    for (const h of holes) {
      if (h.offset > pos) pushRange(allocated, pos, h.offset - pos);
      pos = h.offset + h.length;
    }
    if (pos < SIZE) pushRange(allocated, pos, SIZE - pos);
    expect(allocated).toEqual(expected(gen, 1));
    const plain = JSON.parse(await tool('nbdinfo', ['--json', '--map', d.uri('v')])) as unknown[];
    expect(plain.length).toBeGreaterThan(1);

    const list = JSON.parse(await tool('nbdinfo', ['--list', '--json', d.uri('v')])) as {
      exports: Array<{ 'export-name': string; contexts: string[] }>;
    };
    const v = list.exports.find((e) => e['export-name'] === 'v');
    expect(v?.contexts).toEqual(['base:allocation', bitmap(1), bitmap(2), bitmap(3)]);
    for (const bad of ['since-0', 'since-x', 'since-01', 'since-+1', 'since--1', 'since-4294967296', 'since-1 ', 'foo', '']) {
      await expect(tool('nbdinfo', ['--json', `--map=qemu:dirty-bitmap:${bad}`, d.uri('v')]), bad).rejects.toThrow(
        /does not support metadata context/,
      );
    }
  });

  describe('raw NBD client', () => {
    const names = (replies: OptionReply[]): string[] =>
      replies.filter((r) => r.type === NBD_REP_META_CONTEXT).map((r) => r.data.toString('utf8', 4));

    async function haggler(): Promise<RawClient> {
      const c = await RawClient.connect(d.nbdSocket);
      await c.greeting();
      c.sendClientFlags();
      expect((await c.option(NBD_OPT_STRUCTURED_REPLY))[0]?.type).toBe(NBD_REP_ACK);
      return c;
    }

    /** BLOCK_STATUS: per context name, the extents [length, flags] of its chunk */
    async function blockStatus(
      c: RawClient,
      contexts: Map<number, string>,
      offset: number,
      length: number,
      flags = 0,
    ): Promise<Map<string, Array<[number, number]>>> {
      c.sendRequest({ type: NBD_CMD_BLOCK_STATUS, cookie: 7n, offset, length, flags });
      const reply = await c.readAnyReply();
      expect(reply.error).toBe(0);
      const out = new Map<string, Array<[number, number]>>();
      for (const chunk of reply.chunks) {
        expect(chunk.type).toBe(NBD_REPLY_TYPE_BLOCK_STATUS);
        const name = contexts.get(chunk.payload.readUInt32BE(0));
        expect(name).toBeDefined();
        const extents: Array<[number, number]> = [];
        for (let p = 4; p < chunk.payload.length; p += 8) extents.push([chunk.payload.readUInt32BE(p), chunk.payload.readUInt32BE(p + 4)]);
        out.set(name as string, extents);
      }
      return out;
    }

    /** The expected extents of since-k over [offset, offset + length), alternating clean / dirty runs. */
    function expectedExtents(k: number, offset: number, length: number): Array<[number, number]> {
      const out: Array<[number, number]> = [];
      let pos = offset;
      for (const r of expected(gen, k, offset, offset + length)) {
        if (r.offset > pos) out.push([r.offset - pos, 0]);
        out.push([r.length, DIRTY]);
        pos = r.offset + r.length;
      }
      if (pos < offset + length) out.push([offset + length - pos, 0]);
      return out;
    }

    it('LIST_META_CONTEXT: qemu: and qemu:dirty-bitmap: list since-1..current; exact names; garbage ignored', async () => {
      const c = await haggler();
      const list = async (queries: string[]): Promise<string[]> => {
        const replies = await c.option(NBD_OPT_LIST_META_CONTEXT, metaContextPayload('v', queries));
        expect(replies[replies.length - 1]?.type).toBe(NBD_REP_ACK);
        return names(replies);
      };
      const since123 = [bitmap(1), bitmap(2), bitmap(3)];
      expect(await list(['qemu:dirty-bitmap:'])).toEqual(since123);
      expect(await list(['qemu:'])).toEqual(since123);
      expect(await list([])).toEqual(['base:allocation', ...since123]);
      expect(await list(['base:'])).toEqual(['base:allocation']);
      expect(await list([bitmap(2)])).toEqual([bitmap(2)]);
      // not listed under the namespace, but a name the export answers for
      expect(await list([bitmap(77)])).toEqual([bitmap(77)]);
      expect(await list(['qemu:dirty-bitmap:since-0', 'qemu:dirty-bitmap:foo', 'qemu:dirty-bitmap:since-x', 'qemu:allocation-depth'])).toEqual([]);
      c.destroy();
    });

    it('LIST is bounded to the 64 most recent generations', async () => {
      await cliJson(d, ['volume', 'create', 'many', '--size', '1MiB']);
      const ctl = await ControlConnection.open(d.control);
      try {
        for (let i = 0; i < 69; i++) expect((await ctl.call('volume.advance-generation', { name: 'many' }))?.ok).toBe(true);
      } finally {
        ctl.close();
      }
      const c = await haggler();
      const listed = names(await c.option(NBD_OPT_LIST_META_CONTEXT, metaContextPayload('many', ['qemu:dirty-bitmap:'])));
      expect(listed).toEqual(Array.from({ length: 64 }, (_, i) => bitmap(7 + i)));
      // older generations are still answered by name
      expect(names(await c.option(NBD_OPT_LIST_META_CONTEXT, metaContextPayload('many', [bitmap(1)])))).toEqual([bitmap(1)]);
      c.destroy();
    });

    it('SET_META_CONTEXT: base:allocation and two bitmaps at once, unaligned offset, last partial chunk, REQ_ONE', async () => {
      const c = await RawClient.connect(d.nbdSocket);
      const wanted = ['base:allocation', bitmap(2), bitmap(3), 'qemu:dirty-bitmap:since-0', 'qemu:dirty-bitmap:'];
      const { contexts } = await c.negotiate('v', { structured: true, metaContexts: wanted });
      expect([...contexts.values()].sort()).toEqual(['base:allocation', bitmap(2), bitmap(3)]);
      expect(new Set(contexts.keys()).size).toBe(3);

      // from inside chunk 1 (generation 2) across chunks 16-17 (generations 1 and 2) to inside chunk 40
      const offset = 70000;
      const length = 40 * cs + 123 - offset;
      let got = await blockStatus(c, contexts, offset, length);
      expect(got.get(bitmap(2))).toEqual(expectedExtents(2, offset, length));
      expect(got.get(bitmap(3))).toEqual(expectedExtents(3, offset, length));
      expect(got.get(bitmap(2))?.[0]).toEqual([2 * cs - offset, DIRTY]);
      const alloc = got.get('base:allocation') as Array<[number, number]>;
      expect(alloc[0]).toEqual([2 * cs - offset, 0]);
      expect(alloc.reduce((n, [l]) => n + l, 0)).toBe(length);

      // the last, partial chunk (written in generation 2), from an unaligned offset
      got = await blockStatus(c, contexts, SIZE - 3000, 3000);
      expect(got.get(bitmap(2))).toEqual([[3000, DIRTY]]);
      expect(got.get(bitmap(3))).toEqual([[3000, 0]]);
      expect(got.get('base:allocation')).toEqual([[3000, 0]]);

      // the whole export in one request
      got = await blockStatus(c, contexts, 0, SIZE);
      expect(got.get(bitmap(3))).toEqual(expectedExtents(3, 0, SIZE));

      // REQ_ONE: a single extent per context
      got = await blockStatus(c, contexts, 60000, 4 * MiB, NBD_CMD_FLAG_REQ_ONE);
      expect(got.get(bitmap(2))).toEqual([[2 * cs - 60000, DIRTY]]);
      expect(got.get(bitmap(3))).toEqual([[cs - 60000, DIRTY]]);
      c.destroy();
    });

    it('SET_META_CONTEXT with more than 64 names is refused as too big', async () => {
      const c = await haggler();
      const many = Array.from({ length: 65 }, (_, i) => bitmap(i + 1));
      const r = await c.option(NBD_OPT_SET_META_CONTEXT, metaContextPayload('v', many));
      expect(r.map((x) => x.type)).toEqual([NBD_REP_ERR_TOO_BIG]);
      const ok = await c.option(NBD_OPT_SET_META_CONTEXT, metaContextPayload('v', many.slice(0, 64)));
      expect(names(ok)).toHaveLength(64);
      c.destroy();
    });
  });
});

describe('Volume.changedExtents', () => {
  it('matches a per-chunk model for random ranges, across generation-map pages, and stops after maxRuns', async () => {
    const CS = 4096;
    const CHUNKS = 3 * 1024 + 300; // map pages hold 1024 entries: four pages, the last one partial
    const size = CHUNKS * CS - 1536; // a partial last chunk
    const { dir, pool } = await newPool('dirtybitmap', { chunkSize: CS });
    try {
      await pool.createVolume('v', size);
      const vol = pool.volume('v')!;
      const rnd = mulberry32(2024);
      const writeChunk = async (c: number): Promise<void> => {
        const off = c * CS + Math.floor(rnd() * 512);
        await vol.write(off, Buffer.alloc(Math.min(100, size - off), 7), false);
      };
      for (let g = 1; g <= 4; g++) {
        for (let i = 0; i < 150; i++) await writeChunk(Math.floor(rnd() * CHUNKS));
        // a dense run across the boundary of pages 1 and 2, rewritten in later generations in part
        for (let c = 2040 - g * 3; c < 2060; c++) await writeChunk(c);
        await writeChunk(CHUNKS - 1);
        if (g < 4) await vol.advanceGeneration();
      }
      const model = (k: number, c: number): boolean => vol.chunkGeneration(c) >= k;
      for (let iter = 0; iter < 400; iter++) {
        const k = 1 + Math.floor(rnd() * 5);
        const offset = iter === 0 ? 0 : Math.floor(rnd() * size);
        const length = iter === 0 ? size : Math.floor(rnd() * (size - offset + 1000)) + 1;
        const runs = vol.changedExtents(k, offset, length);
        const end = Math.min(size, offset + length);
        let pos = offset;
        let prev: boolean | undefined;
        for (const r of runs) {
          expect(r.length).toBeGreaterThan(0);
          expect(r.changed).not.toBe(prev); // merged: alike runs never follow each other
          prev = r.changed;
          for (let c = Math.floor(pos / CS); c * CS < pos + r.length; c++) {
            if (model(k, c) !== r.changed) expect.fail(`since-${k} ${offset}+${length}: chunk ${c} should be ${model(k, c)}`);
          }
          pos += r.length;
        }
        expect(pos).toBe(end);
      }
      // a bounded number of runs per call: it stops early, exactly at a run boundary
      const all = vol.changedExtents(1, 0, size);
      expect(all.length).toBeGreaterThan(10);
      const some = vol.changedExtents(1, 0, size, 10);
      expect(some).toEqual(all.slice(0, 10));
      // nothing is >= a generation not reached yet; offset at the very end gives nothing
      expect(vol.changedExtents(5, 100, size - 100)).toEqual([{ length: size - 100, changed: false }]);
      expect(vol.changedExtents(1, size, 10)).toEqual([]);
      expect(() => vol.changedExtents(0, 0, 10)).toThrow();
      expect(() => vol.changedExtents(1, size + 1, 10)).toThrow();
      expect(() => vol.changedExtents(1, -1, 10)).toThrow();
    } finally {
      await pool.close();
      rmDir(path.dirname(dir));
    }
  });
});
