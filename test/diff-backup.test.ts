/**
 * Difference backups (seed 002) through the real daemon and real clients: a full backup and a diff after every
 * generation of random writes, trims and zero writes (qemu-io over NBD), checked against a model file; estimates
 * against the real stream sizes; chains restored whole, with redundant diffs left out thanks to overlapping scopes,
 * and one diff at a time --into; refusals before anything changes; --skip-gen; --verify-only; tap images; `-`.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { startDaemon, cliJson, tempDir, tool, CLI, childExit, type Daemon } from './helpers/daemon.js';
import { ControlConnection } from './helpers/control-connection.js';
import { mulberry32 } from './pool-helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 64 * KiB;
const SIZE = 64 * MiB;

interface VolumeRow {
  name: string;
  uuid: string;
  size: number;
  generation: number;
  allocatedChunks: number;
  backupChain: { baseStreamUuid: string; throughGeneration: number } | null;
}
interface Generations {
  current: number;
  counts: Array<{ generation: number; chunks: number; bytes: number }>;
  map: Array<{ offset: number; length: number; generation: number }>;
}
interface DumpResult {
  streamUuid: string;
  records: number;
  bytes: number;
  file: number;
  target: string;
  closedGeneration: number;
  currentGeneration: number;
  generationFrom?: number;
  generationTo?: number;
  baseStreamUuid?: string;
}
interface Estimate {
  kind: 'full' | 'diff';
  records: number;
  bytes: number;
  dataBytes: number;
  generationFrom: number;
  generationTo: number;
  exact: boolean;
}
interface RestoreResult {
  volume: string | null;
  generation: number | null;
  backupChain: VolumeRow['backupChain'];
  warnings: string[];
  verifyOnly: boolean;
  streams: Array<{ kind: string; generations: string; records: number; skipped: Array<{ generation: number; records: number; damaged: number }> }>;
}
/** a diff written by the tests, with its scope */
interface Diff {
  file: string;
  from: number;
  to: number;
  records: number;
}

function qemuIo(d: Daemon, name: string, cmds: string[], readOnly = false): Promise<string> {
  return tool('qemu-io', ['-f', 'raw', ...(readOnly ? ['-r'] : []), ...cmds.flatMap((c) => ['-c', c]), d.uri(name)], 120_000);
}

/** qemu-img compare of two raw images (NBD URIs or files): '' when identical, else what qemu-img said */
async function difference(a: string, b: string): Promise<string> {
  try {
    await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', a, b]);
    return '';
  } catch (err) {
    return (err as Error).message.split('\n').slice(-3).join(' ') || 'differ';
  }
}

/**
 * The bookkeeping queries (generations, info, status, create, delete) go over one control connection: a CLI process
 * costs about a second on a loaded 2-core machine. The commands under test (backup, estimate, restore, media list,
 * advance-generation) go through the CLI.
 */
const controls = new WeakMap<Daemon, ControlConnection>();
async function ctl<T>(d: Daemon, cmd: string, args: object = {}): Promise<T> {
  let c = controls.get(d);
  if (!c || c.dead) {
    c = await ControlConnection.open(d.control);
    controls.set(d, c);
  }
  const r = await c.call(cmd, args);
  if (!r) throw new Error(`${cmd}: no reply (daemon gone?)`);
  if (!r.ok) throw new Error(`${cmd} ${JSON.stringify(args)}: ${r.error?.code} ${r.error?.message}`);
  return r.result as T;
}

/** a volume's generation state without its name: what a restore must reproduce */
async function generations(d: Daemon, name: string): Promise<Generations> {
  const g = await ctl<Generations>(d, 'volume.generations', { name, map: true });
  return { current: g.current, counts: g.counts, map: g.map };
}

async function info(d: Daemon, name: string): Promise<VolumeRow> {
  const i = await ctl<VolumeRow & { openConnections?: number }>(d, 'volume.info', { name });
  delete i.openConnections;
  return i;
}

/**
 * Waits until the daemon has seen every NBD client of `name` go (qemu-io, qemu-img and nbdcopy have exited, but
 * the server notices the close on its own schedule), so that a restore --into it is not refused as busy.
 */
async function idle(d: Daemon, name: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const s = await ctl<{ connections: Array<{ export: string | null }> }>(d, 'status');
    if (!s.connections.some((c) => c.export === name)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`NBD clients of '${name}' did not go away`);
}

const createVolume = (d: Daemon, name: string, size: number) => ctl(d, 'volume.create', { name, size });
/** set-up steps whose CLI output is not what a test checks */
const setupRestore = (d: Daemon, from: string[], to: { as: string } | { into: string }) => ctl<RestoreResult>(d, 'restore', { from, ...to });
const setupBackup = (d: Daemon, kind: 'full' | 'diff', volume: string, to: string) => ctl<DumpResult>(d, `backup.${kind}`, { volume, to });
const deleteVolume = (d: Daemon, name: string) => ctl(d, 'volume.delete', { name });

/** chunks of the map with a generation in from..to */
function chunksIn(g: Generations, from: number, to: number): number {
  return g.map.filter((r) => r.generation >= from && r.generation <= to).reduce((n, r) => n + Math.ceil(r.length / CS), 0);
}

function restoreArgs(files: string[], ...rest: string[]): string[] {
  return ['restore', ...files.flatMap((f) => ['--from', f]), ...rest];
}

/** what the pool holds, to show that a refused command changed nothing (hidden staging volumes included) */
async function poolState(d: Daemon): Promise<{ names: string[]; volumes: number; chunksUsed: number }> {
  const s = await ctl<{ pool: { volumes: number; chunksUsed: number }; volumes: VolumeRow[] }>(d, 'status');
  return { names: s.volumes.map((v) => v.name).sort(), volumes: s.pool.volumes, chunksUsed: s.pool.chunksUsed };
}

/**
 * Runs a command that must be refused: non-zero exit, stderr matching every pattern, no volume created or left
 * behind, and the `into` volume (if any) unchanged in content, generation map, generation and chain.
 */
async function refused(d: Daemon, dir: string, args: string[], patterns: RegExp[], into?: string): Promise<string> {
  const before = await poolState(d);
  let image = '';
  let intoBefore: [VolumeRow, Generations] | null = null;
  if (into) {
    image = path.join(dir, `before-${into}.img`);
    fs.rmSync(image, { force: true });
    await tool('nbdcopy', [d.uri(into), image]);
    intoBefore = [await info(d, into), await generations(d, into)];
    await idle(d, into);
  }
  const r = await d.cli(args);
  expect(r.code, `thinvault ${args.join(' ')} should be refused; stdout ${r.stdout}`).not.toBe(0);
  for (const p of patterns) expect(r.stderr).toMatch(p);
  expect(await poolState(d)).toEqual(before);
  if (into) {
    expect(await difference(d.uri(into), image)).toBe('');
    expect([await info(d, into), await generations(d, into)]).toEqual(intoBefore);
    fs.rmSync(image, { force: true });
    await idle(d, into);
  }
  return r.stderr;
}

/** the parts of a stream docs/stream-format.md places by offset: header fields and the chunk table */
function parseStream(buf: Buffer): { n: number; chunkSize: number; dataOffset: number; streamUuid: string; records: Array<{ offset: number; generation: number }> } {
  expect(buf.subarray(0, 8).toString('latin1')).toBe('TVSTREAM');
  const n = Number(buf.readBigUInt64LE(80));
  const chunkSize = buf.readUInt32LE(48);
  const dataOffset = Number(buf.readBigUInt64LE(112));
  expect(dataOffset).toBe(4096 + Math.ceil((16 * n) / 4096) * 4096);
  const records = [];
  for (let i = 0; i < n; i++) {
    const at = 4096 + 16 * i;
    records.push({ offset: Number(buf.readBigUInt64LE(at)), generation: buf.readUInt32LE(at + 12) });
  }
  const hex = buf.subarray(16, 32).toString('hex');
  const streamUuid = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  return { n, chunkSize, dataOffset, streamUuid, records };
}

/** a copy of `file` with one data byte of record `index` flipped; returns the record's volume offset and generation */
function damageRecord(file: string, index: number, out: string): { offset: number; generation: number; n: number } {
  const buf = fs.readFileSync(file);
  const s = parseStream(buf);
  buf[s.dataOffset + index * s.chunkSize + 1234] ^= 0x20;
  fs.writeFileSync(out, buf);
  return { ...s.records[index], n: s.n };
}

/**
 * The shortest chain that restores everything up to the last diff: greedily the diff reaching furthest among those
 * that follow on. Overlapping scopes make some diffs redundant.
 */
function shortestChain(diffs: Diff[]): Diff[] {
  const target = diffs[diffs.length - 1].to;
  const chain: Diff[] = [];
  let t = 0;
  while (t < target) {
    const next = diffs.filter((x) => x.from <= t + 1 && x.to > t).reduce((a, b) => (b.to >= a.to ? b : a));
    chain.push(next);
    t = next.to;
  }
  return chain;
}

/** random bytes from the seeded generator, four at a time */
function randomBytes(rand: () => number, len: number): Buffer {
  const b = Buffer.alloc(Math.ceil(len / 4) * 4);
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(Math.floor(rand() * 0x1_0000_0000), i);
  return b.subarray(0, len);
}

/** The oracle: the volume's bytes in memory and in a sparse file (for qemu-img compare), changed like the volume. */
class ModelImage {
  readonly content = Buffer.alloc(SIZE);
  private readonly fd: number;
  private seq = 0;
  constructor(
    readonly file: string,
    private readonly opsDir: string,
  ) {
    this.fd = fs.openSync(file, 'w+');
    fs.ftruncateSync(this.fd, SIZE);
    fs.mkdirSync(opsDir, { recursive: true });
  }
  private set(offset: number, data: Buffer): void {
    data.copy(this.content, offset);
    fs.writeSync(this.fd, data, 0, data.length, offset);
  }
  /**
   * `count` random operations as qemu-io commands (then a flush), applied to the model: writes of random data and
   * of a byte pattern (1 byte to 1.6 MiB, any alignment, some crossing many chunks, some at the end of the volume),
   * trims (any alignment or whole chunks) and zero writes (with and without unmap).
   */
  mutate(rand: () => number, count: number): string[] {
    const cmds: string[] = [];
    for (let i = 0; i < count; i++) {
      const sizeKind = rand();
      let len = sizeKind < 0.3 ? 1 + Math.floor(rand() * 8192) : sizeKind < 0.8 ? 1 + Math.floor(rand() * 200_000) : 200_000 + Math.floor(rand() * 1_400_000);
      let off = rand() < 0.06 ? SIZE - len : Math.floor(rand() * (SIZE - len + 1));
      const op = rand();
      if (op < 0.5) {
        const data = randomBytes(rand, len);
        const src = path.join(this.opsDir, `op-${this.seq++}.bin`);
        fs.writeFileSync(src, data);
        cmds.push(`write -q -s ${src} ${off} ${len}`);
        this.set(off, data);
      } else if (op < 0.65) {
        const byte = 1 + Math.floor(rand() * 255);
        cmds.push(`write -q -P ${byte} ${off} ${len}`);
        this.set(off, Buffer.alloc(len, byte));
      } else if (op < 0.85) {
        if (rand() < 0.5) {
          // whole chunks: these become holes
          off = Math.floor(off / CS) * CS;
          len = Math.min(SIZE - off, Math.max(1, Math.round(len / CS)) * CS);
        }
        cmds.push(`discard -q ${off} ${len}`);
        this.set(off, Buffer.alloc(len));
      } else {
        cmds.push(`write -q -z ${rand() < 0.5 ? '-u ' : ''}${off} ${len}`);
        this.set(off, Buffer.alloc(len));
      }
    }
    cmds.push('flush');
    return cmds;
  }
  close(): void {
    fs.closeSync(this.fd);
  }
}

/**
 * One step of the oracle run: random operations in the current generation; `advance` times a
 * `volume advance-generation` followed by more operations; then a diff of scope: the default (after the last diff),
 * 'prev' (reaching back over the last dumped generation), 'back2' (over the last two) or a number.
 */
interface Step {
  ops: number;
  advance?: number;
  scope?: 'prev' | 'back2' | number;
}
const STEPS: Step[] = [
  { ops: 12 }, // 1..1
  { ops: 12 }, // 2..2
  { ops: 12, scope: 'prev' }, // 2..3: d2 is redundant
  { ops: 12 }, // 4..4
  { ops: 8, advance: 1 }, // 5..6: a generation advanced without a dump
  { ops: 10, scope: 1 }, // 1..7: cumulative, everything before is redundant
  { ops: 10 }, // 8..8
  { ops: 10, scope: 'prev' }, // 8..9
  { ops: 10, scope: 'back2' }, // 8..10: d7 and d8 redundant
  { ops: 6, advance: 2 }, // 11..13
  { ops: 0 }, // 14..14: no changes, an empty diff
  { ops: 10, scope: 'prev' }, // 14..15
];

describe('difference backups and chain restores', () => {
  let d: Daemon;
  let dir: string;
  let model: ModelImage;
  // the oracle run's chain, used by the later tests
  let full = '';
  let fullUuid = '';
  const diffs: Diff[] = [];

  beforeAll(async () => {
    d = await startDaemon();
    dir = tempDir('tv-diff-backup-');
    await createVolume(d, 'v', SIZE);
    model = new ModelImage(path.join(dir, 'model.img'), path.join(dir, 'ops'));
  }, 120_000);
  afterAll(async () => {
    model?.close();
    if (d) {
      controls.get(d)?.close();
      const check = await d.cli(['pool', 'check']);
      await d.stop();
      fs.rmSync(path.dirname(d.pool), { recursive: true, force: true });
      expect(check.code, check.stdout + check.stderr).toBe(0);
    }
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it(
    'oracle: a diff after each of 15 generations of random writes, trims and zero writes; every chain prefix restores to the model and the live volume',
    async () => {
      const rand = mulberry32(0x5eed_0002);
      const chainOf = (ds: Diff[]) => [full, ...ds.map((x) => x.file)];
      const expectLiveIsModel = async (when: string) => expect(await difference(d.uri('v'), model.file), `live volume vs model ${when}`).toBe('');

      // content before the chain starts
      await qemuIo(d, 'v', model.mutate(rand, 40));
      await expectLiveIsModel('before the full backup');
      const estFull = await cliJson<Estimate>(d, ['backup', 'estimate', 'v', '--full']);
      full = path.join(dir, 'full.tvs');
      const f = await cliJson<DumpResult>(d, ['backup', 'full', 'v', '--to', full]);
      fullUuid = f.streamUuid;
      expect(estFull.kind).toBe('full');
      expect(f.bytes).toBe(estFull.bytes);
      expect(fs.statSync(full).size).toBe(estFull.bytes);
      expect(f.records).toBe(estFull.records);
      expect(parseStream(fs.readFileSync(full)).streamUuid).toBe(fullUuid);
      expect(f.currentGeneration).toBe(1);
      expect(await generations(d, 'v')).toEqual({ current: 1, counts: [{ generation: 0, chunks: SIZE / CS, bytes: SIZE }], map: [] });
      expect((await info(d, 'v')).backupChain).toEqual({ baseStreamUuid: fullUuid, throughGeneration: 0 });

      let through = 0;
      let prefixRestores = 0;
      for (const [i, step] of STEPS.entries()) {
        const n = i + 1;
        if (step.ops > 0) await qemuIo(d, 'v', model.mutate(rand, step.ops));
        for (let a = 0; a < (step.advance ?? 0); a++) {
          const adv = await cliJson<{ previous: number; current: number }>(d, ['volume', 'advance-generation', 'v']);
          expect(adv.current).toBe(adv.previous + 1);
          await qemuIo(d, 'v', model.mutate(rand, step.ops));
        }
        await expectLiveIsModel(`in step ${n}`);

        const before = await generations(d, 'v');
        const g = before.current;
        const scope = step.scope === 'prev' ? through : step.scope === 'back2' ? through - 1 : step.scope;
        const from = scope ?? through + 1;
        const scopeArgs = scope === undefined ? [] : ['--scope', String(scope)];
        // (a) the estimate right before the dump is the stream's exact size, and counts the chunks of the map in from..g
        const est = await cliJson<Estimate>(d, ['backup', 'estimate', 'v', ...scopeArgs]);
        expect(est).toMatchObject({ kind: 'diff', generationFrom: from, generationTo: g, exact: true });
        expect(est.records, `step ${n}: estimate records vs the map's chunks in ${from}..${g}`).toBe(chunksIn(before, from, g));
        const file = path.join(dir, `d${n}.tvs`);
        const r = await cliJson<DumpResult>(d, ['backup', 'diff', 'v', '--to', file, ...scopeArgs]);
        expect(r).toMatchObject({ generationFrom: from, generationTo: g, currentGeneration: g + 1, baseStreamUuid: fullUuid, records: est.records, bytes: est.bytes });
        expect(fs.statSync(file).size, `step ${n}: file size vs estimate`).toBe(est.bytes);
        const stream = parseStream(fs.readFileSync(file));
        expect(stream.n).toBe(est.records);
        expect(stream.records.every((x) => x.generation >= from && x.generation <= g)).toBe(true);
        diffs.push({ file, from, to: g, records: r.records });
        through = g;
        // the dump changed the generation, not the map
        const after = await generations(d, 'v');
        expect(after.current).toBe(g + 1);
        expect(after.map).toEqual(before.map);
        const live = await info(d, 'v');
        expect(live.backupChain).toEqual({ baseStreamUuid: fullUuid, throughGeneration: g });

        // (b) the whole chain so far, as a new volume: the model's bytes, the live volume's map, generation and chain
        const check = async (ds: Diff[], name: string) => {
          const res = await cliJson<RestoreResult>(d, restoreArgs(chainOf(ds), '--as', name));
          expect(res.warnings).toEqual([]);
          expect(res.streams.map((s) => s.generations)).toEqual(['base', ...ds.map((x) => `${x.from}..${x.to}`)]);
          expect(await difference(d.uri(name), model.file), `${name} (${ds.map((x) => path.basename(x.file)).join(' ')}) vs model`).toBe('');
          expect(await difference(d.uri(name), d.uri('v')), `${name} vs live v`).toBe('');
          expect(await generations(d, name), `${name}: generation map`).toEqual(after);
          const restored = await info(d, name);
          expect(restored.backupChain).toEqual(live.backupChain);
          expect(restored.generation).toBe(g + 1);
          expect(res.backupChain).toEqual(live.backupChain);
          await deleteVolume(d, name);
        };
        await check(diffs, `all-${n}`);
        // and the shortest chain when overlapping scopes made some diffs redundant
        const short = shortestChain(diffs);
        if (short.length < diffs.length) {
          await check(short, `short-${n}`);
          prefixRestores++;
        }
      }
      expect(through).toBe(15);
      expect(diffs.map((x) => `${x.from}..${x.to}`)).toEqual([
        '1..1', '2..2', '2..3', '4..4', '5..6', '1..7', '8..8', '8..9', '8..10', '11..13', '14..14', '14..15',
      ]);
      expect(diffs[10].records).toBe(0);
      // the run exercised what it is meant to: chunks that became holes travel as all-zero records, and the merged
      // scopes hold records of several generations (not d12: generation 14 changed nothing)
      const zero = Buffer.alloc(CS);
      const gensIn = diffs.map((x) => {
        const b = fs.readFileSync(x.file);
        const st = parseStream(b);
        const zeros = st.records.filter((_, i) => b.subarray(st.dataOffset + i * CS, st.dataOffset + (i + 1) * CS).equals(zero)).length;
        return { zeros, generations: new Set(st.records.map((r) => r.generation)).size };
      });
      expect(gensIn.reduce((n, x) => n + x.zeros, 0)).toBeGreaterThan(0);
      for (const k of [2, 4, 5, 7, 8, 9]) expect(gensIn[k].generations, `d${k + 1}: generations among its records`).toBeGreaterThan(1);
      expect(shortestChain(diffs).map((x) => path.basename(x.file))).toEqual(['d6.tvs', 'd9.tvs', 'd10.tvs', 'd12.tvs']);
      expect(prefixRestores).toBeGreaterThanOrEqual(8);
      expect((await poolState(d)).names).toEqual(['v']);
    },
    150_000,
  );

  it('diffs applied one at a time --into the volume restored from the full; a volume written since is refused', async () => {
    expect(diffs.length).toBe(STEPS.length);
    const r0 = await cliJson<RestoreResult>(d, restoreArgs([full], '--as', 'R'));
    expect(r0.backupChain).toEqual({ baseStreamUuid: fullUuid, throughGeneration: 0 });
    expect(r0.generation).toBe(1);
    for (const x of diffs) {
      const r = await cliJson<RestoreResult>(d, restoreArgs([x.file], '--into', 'R'));
      expect(r.streams.map((s) => s.generations)).toEqual([`${x.from}..${x.to}`]);
      expect(r.backupChain).toEqual({ baseStreamUuid: fullUuid, throughGeneration: x.to });
      expect(r.generation).toBe(x.to + 1);
    }
    expect(await difference(d.uri('R'), model.file)).toBe('');
    expect(await difference(d.uri('R'), d.uri('v'))).toBe('');
    expect(await generations(d, 'R')).toEqual(await generations(d, 'v'));
    await idle(d, 'R');
    // the last diff again is out of order
    await refused(d, dir, restoreArgs([diffs[11].file], '--into', 'R'), [/out of order/, /generations up to 15 are already restored/], 'R');

    // a volume restored to generation 1, then written: the next diff does not apply over it
    await setupRestore(d, [full, diffs[0].file], { as: 'R2' });
    await qemuIo(d, 'R2', ['write -P 0x7e 3000 5000', 'flush']);
    await refused(d, dir, restoreArgs([diffs[1].file], '--into', 'R2'), [/volume 'R2' changed after generation 1/, /1 chunk\(s\) written since/], 'R2');
    // a restore of the whole chain --into it is still fine (it replaces the content)
    await cliJson(d, restoreArgs([full, ...diffs.map((x) => x.file)], '--into', 'R2'));
    expect(await difference(d.uri('R2'), d.uri('v'))).toBe('');
    expect(await generations(d, 'R2')).toEqual(await generations(d, 'v'));
    // a diff of the restored volume continues the chain: full + the original's diffs + R's diff restore R
    await qemuIo(d, 'R', ['write -P 0x5c 1000000 300000', 'discard 8M 256k', 'flush']);
    const dR = path.join(dir, 'R-d16.tvs');
    const rd = await cliJson<DumpResult>(d, ['backup', 'diff', 'R', '--to', dR]);
    expect(rd).toMatchObject({ generationFrom: 16, generationTo: 16, baseStreamUuid: fullUuid });
    // chunks 15..19 written; of 128..131 those that were mapped (a trim of a hole changes nothing)
    const rChunks = parseStream(fs.readFileSync(dR)).records.map((x) => x.offset / CS);
    expect(rChunks.filter((c) => c < 128)).toEqual([15, 16, 17, 18, 19]);
    expect(rChunks.every((c) => c < 20 || (c >= 128 && c <= 131))).toBe(true);
    await cliJson(d, restoreArgs([full, ...shortestChain(diffs).map((x) => x.file), dR], '--as', 'R3'));
    expect(await difference(d.uri('R3'), d.uri('R'))).toBe('');
    expect(await generations(d, 'R3')).toEqual(await generations(d, 'R'));
    for (const n of ['R', 'R2', 'R3']) await deleteVolume(d, n);
  });

  it('refused before anything changes: damaged, truncated, out of order, with a gap, of another volume, of another full', async () => {
    const [d1, d2, d3, d4] = diffs.map((x) => x.file);
    // T stands on the chain through generation 2
    await setupRestore(d, [full, d1, d2], { as: 'T' });
    expect((await info(d, 'T')).backupChain).toEqual({ baseStreamUuid: fullUuid, throughGeneration: 2 });

    // a flipped data byte: the record, its volume offset and its generation are named
    const rec = Math.floor(diffs[2].records / 2);
    const bad3 = path.join(dir, 'd3-flipped.tvs');
    const hit = damageRecord(d3, rec, bad3);
    const named = new RegExp(`record ${rec} of ${hit.n} \\(volume offset ${hit.offset}, generation ${hit.generation},.*CRC32C mismatch`);
    expect(hit.generation === 2 || hit.generation === 3).toBe(true);
    await refused(d, dir, restoreArgs([full, d1, d2, bad3], '--as', 'bad'), [named, /stream 4 .*diff of generations 2\.\.3/]);
    await refused(d, dir, restoreArgs([bad3], '--into', 'T'), [named], 'T');

    // a damaged header or chunk table: refused from the header pass / before any data is delivered
    const hdr2 = path.join(dir, 'd2-header.tvs');
    const h2 = fs.readFileSync(d2);
    h2[300] ^= 1; // inside the origin volume UUID
    fs.writeFileSync(hdr2, h2);
    await refused(d, dir, restoreArgs([full, d1, hdr2, d3], '--as', 'bad'), [/stream 3 .*header CRC mismatch/]);
    const tbl3 = path.join(dir, 'd3-table.tvs');
    const t3 = fs.readFileSync(d3);
    t3[4096 + 16 + 12] ^= 1; // record 1's generation
    fs.writeFileSync(tbl3, t3);
    await refused(d, dir, restoreArgs([full, d1, d2, tbl3], '--as', 'bad'), [/stream 4 .*chunk table/i]);
    await refused(d, dir, restoreArgs([tbl3], '--into', 'T'), [/chunk table/i], 'T');

    // truncated
    const cut3 = path.join(dir, 'd3-cut.tvs');
    const d3bytes = fs.readFileSync(d3);
    fs.writeFileSync(cut3, d3bytes.subarray(0, d3bytes.length - 6000));
    await refused(d, dir, restoreArgs([full, d1, d2, cut3], '--as', 'bad'), [/truncated/, /stream 4/]);
    await refused(d, dir, restoreArgs([cut3], '--into', 'T'), [/truncated/], 'T');

    // out of order, and gaps: the missing generations are named
    await refused(d, dir, restoreArgs([full, d2, d1], '--as', 'bad'), [/stream 2 .*generations 2\.\.2.*generation\(s\) 1\.\.1 are missing/]);
    await refused(d, dir, restoreArgs([full, d1, d3, d2], '--as', 'bad'), [/stream 4 .*generations 2\.\.2.*out of order: generations up to 3 are already restored/]);
    await refused(d, dir, restoreArgs([full, d2], '--as', 'bad'), [/generation\(s\) 1\.\.1 are missing/, /restored so far: up to generation 0/]);
    await refused(d, dir, restoreArgs([full, d1, d4], '--as', 'bad'), [/stream 3 .*generations 4\.\.4.*generation\(s\) 2\.\.3 are missing/]);
    await refused(d, dir, restoreArgs([d4], '--into', 'T'), [/generation\(s\) 3\.\.3 are missing/], 'T');
    await refused(d, dir, restoreArgs([d1], '--into', 'T'), [/out of order: generations up to 2 are already restored/], 'T');
    await refused(d, dir, restoreArgs([d1], '--as', 'bad'), [/is a difference backup: a chain starts with its full backup/]);
    await refused(d, dir, restoreArgs([full, full], '--as', 'bad'), [/stream 2 .*is a full: only the first stream of a chain/]);

    // another volume's chain
    await createVolume(d, 'w', SIZE);
    await qemuIo(d, 'w', ['write -P 0x31 0 1M', 'flush']);
    const fw = path.join(dir, 'w-full.tvs');
    const dw1 = path.join(dir, 'w-d1.tvs');
    await setupBackup(d, 'full', 'w', fw);
    await qemuIo(d, 'w', ['write -P 0x32 64k 64k', 'flush']);
    await setupBackup(d, 'diff', 'w', dw1);
    const vUuid = (await info(d, 'v')).uuid;
    const wUuid = (await info(d, 'w')).uuid;
    await refused(d, dir, restoreArgs([full, dw1], '--as', 'bad'), [new RegExp(`stream 2 .*is a backup of volume 'w' \\(${wUuid}\\), not of 'v' \\(${vUuid}\\)`)]);
    await refused(d, dir, restoreArgs([fw, d1], '--as', 'bad'), [new RegExp(`is a backup of volume 'v' \\(${vUuid}\\), not of 'w' \\(${wUuid}\\)`)]);
    await refused(d, dir, restoreArgs([dw1], '--into', 'T'), [/is a backup of volume 'w'.*not of 'v'.*the lineage of 'T'/], 'T');

    // a second full backup of v starts another chain: diffs of the two do not mix
    const full2 = path.join(dir, 'full2.tvs');
    const f2 = await setupBackup(d, 'full', 'v', full2);
    await qemuIo(d, 'v', ['write -P 0x44 128k 64k', 'flush']);
    const d2x1 = path.join(dir, 'full2-d1.tvs');
    await setupBackup(d, 'diff', 'v', d2x1);
    await refused(d, dir, restoreArgs([full, d2x1], '--as', 'bad'), [new RegExp(`extends full backup ${f2.streamUuid}, not ${fullUuid}.*belongs to another chain`)]);
    await refused(d, dir, restoreArgs([full2, d1], '--as', 'bad'), [new RegExp(`extends full backup ${fullUuid}, not ${f2.streamUuid}.*belongs to another chain`)]);
    await refused(d, dir, restoreArgs([d2x1], '--into', 'T'), [new RegExp(`extends full backup ${f2.streamUuid}; volume 'T' stands on full backup ${fullUuid}`)], 'T');
    // a replica image (a packed full) is never the base of a diff
    await ctl(d, 'replica.create', { source: 'v', name: 'rep' });
    const repImg = path.join(dir, 'rep.img');
    await tool('nbdcopy', [d.uri('rep'), repImg]);
    await idle(d, 'rep');
    await refused(d, dir, restoreArgs([repImg, d2x1], '--as', 'bad'), [/stream 2 .*cannot follow a replica/]);
    await ctl(d, 'replica.delete', { name: 'rep' });
    // the new chain itself restores
    await cliJson(d, restoreArgs([full2, d2x1], '--as', 'new'));
    expect(await difference(d.uri('new'), d.uri('v'))).toBe('');
    // and T, after all this, still takes its next diff
    await cliJson(d, restoreArgs([d3], '--into', 'T'));
    await setupRestore(d, [full, d1, d2, d3], { as: 'T3' });
    expect(await difference(d.uri('T'), d.uri('T3'))).toBe('');
    expect(await generations(d, 'T')).toEqual(await generations(d, 'T3'));
    for (const n of ['T', 'T3', 'new', 'w']) await deleteVolume(d, n);
  });

  it('--verify-only checks a whole chain and creates nothing', async () => {
    const all = [full, ...diffs.map((x) => x.file)];
    const before = await poolState(d);
    const ok = await cliJson<RestoreResult>(d, restoreArgs(all, '--verify-only'));
    expect(ok.verifyOnly).toBe(true);
    expect(ok.volume).toBeNull();
    expect(ok.warnings).toEqual([]);
    expect(ok.streams.length).toBe(all.length);
    expect(await poolState(d)).toEqual(before);
    const bad = path.join(dir, 'd5-flipped.tvs');
    const hit = damageRecord(diffs[4].file, 0, bad);
    await refused(d, dir, restoreArgs([full, ...diffs.slice(0, 4).map((x) => x.file), bad], '--verify-only'), [
      new RegExp(`stream 6 .*record 0 of ${hit.n} \\(volume offset ${hit.offset}, generation ${hit.generation},.*CRC32C mismatch`),
    ]);
    await refused(d, dir, restoreArgs([full, diffs[1].file], '--verify-only'), [/generation\(s\) 1\.\.1 are missing/]);
  });
});

describe('--skip-gen, tap images and - (seed 002 scenario on small volumes)', () => {
  const SMALL = 16 * MiB;
  let d: Daemon;
  let dir: string;
  beforeAll(async () => {
    d = await startDaemon();
    dir = tempDir('tv-diff-skip-');
  }, 120_000);
  afterAll(async () => {
    if (d) {
      controls.get(d)?.close();
      const check = await d.cli(['pool', 'check']);
      await d.stop();
      fs.rmSync(path.dirname(d.pool), { recursive: true, force: true });
      expect(check.code, check.stdout + check.stderr).toBe(0);
    }
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  async function dump(name: string): Promise<Buffer> {
    const file = path.join(dir, `${name}.img`);
    fs.rmSync(file, { force: true });
    await tool('nbdcopy', [d.uri(name), file]);
    const b = fs.readFileSync(file);
    fs.rmSync(file);
    return b;
  }

  it('--skip-gen: a damaged generation is taken from an overlapping diff, or left older with a warning naming the ranges', async () => {
    await createVolume(d, 's', SMALL);
    // base: chunks 0..31 with 0x10; the rest are holes
    await qemuIo(d, 's', ['write -P 0x10 0 2M', 'flush']);
    const full = path.join(dir, 's-full.tvs');
    await cliJson(d, ['backup', 'full', 's', '--to', full]);
    // generation 1: chunk 40 and 41
    await qemuIo(d, 's', ['write -P 0x21 2560k 128k', 'flush']);
    const d1 = path.join(dir, 's-d1.tvs');
    expect(await cliJson<DumpResult>(d, ['backup', 'diff', 's', '--to', d1])).toMatchObject({ generationFrom: 1, generationTo: 1 });
    // generation 2: chunks 10..15 (base content before), 40 (generation 1 before), 50 (a hole before), 20..21
    await qemuIo(d, 's', ['write -P 0x32 640k 384k', 'write -P 0x33 2560k 1000', 'write -P 0x34 3200k 64k', 'write -P 0x35 1280k 128k', 'flush']);
    const d2 = path.join(dir, 's-d2.tvs');
    expect(await cliJson<DumpResult>(d, ['backup', 'diff', 's', '--to', d2, '--scope', '1'])).toMatchObject({ generationFrom: 1, generationTo: 2 });
    // generation 3: chunk 15 and 20..21 again (so generation 3 in d3), chunk 60
    await qemuIo(d, 's', ['write -P 0x43 960k 64k', 'write -P 0x44 1280k 128k', 'write -P 0x45 3840k 64k', 'flush']);
    const d3 = path.join(dir, 's-d3.tvs');
    expect(await cliJson<DumpResult>(d, ['backup', 'diff', 's', '--to', d3, '--scope', '2'])).toMatchObject({ generationFrom: 2, generationTo: 3 });

    // d3's generation-2 records: chunks 10..14, 40, 50; damage the one of chunk 12
    const table = parseStream(fs.readFileSync(d3)).records;
    expect(table.map((r) => `${r.offset / CS}:${r.generation}`)).toEqual(['10:2', '11:2', '12:2', '13:2', '14:2', '15:3', '20:3', '21:3', '40:2', '50:2', '60:3']);
    const index = table.findIndex((r) => r.offset === 12 * CS && r.generation === 2);
    const bad3 = path.join(dir, 's-d3-bad.tvs');
    damageRecord(d3, index, bad3);
    const original = await dump('s');
    const sGens = await generations(d, 's');

    // without --skip-gen: refused, naming generation 2
    const base = await poolState(d);
    const r = await d.cli(restoreArgs([full, d1, d2, bad3], '--as', 'x'));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(new RegExp(`record ${index} of 11 \\(volume offset ${12 * CS}, generation 2,.*CRC32C mismatch`));
    expect(await poolState(d)).toEqual(base);

    // --skip-gen 2: d2 holds every generation-2 chunk, so nothing stays older
    const x = await cliJson<RestoreResult>(d, restoreArgs([full, d1, d2, bad3], '--as', 'x', '--skip-gen', '2'));
    expect(x.warnings.length).toBe(1);
    expect(x.warnings[0]).toMatch(/stream 4 .*1 damaged record\(s\) of generation 2 are not restored from it/);
    expect(x.warnings.join('\n')).not.toMatch(/older contents/);
    expect(x.streams[3].skipped).toEqual([{ generation: 2, records: 7, damaged: 1 }]);
    expect((await dump('x')).equals(original), 'x vs the original').toBe(true); // (not toEqual: 16 MiB Buffers)
    expect(await generations(d, 'x')).toEqual(sGens);

    // the other way round: generation 2 damaged in d2 (1..2) and intact in d3 (2..3): d3 gives it, nothing stays older
    const d2table = parseStream(fs.readFileSync(d2)).records;
    expect(d2table.map((r) => `${r.offset / CS}:${r.generation}`)).toEqual(['10:2', '11:2', '12:2', '13:2', '14:2', '15:2', '20:2', '21:2', '40:2', '41:1', '50:2']);
    const bad2 = path.join(dir, 's-d2-bad.tvs');
    damageRecord(d2, d2table.findIndex((t) => t.offset === 40 * CS), bad2);
    const x2 = await cliJson<RestoreResult>(d, restoreArgs([full, d1, bad2, d3], '--as', 'x2', '--skip-gen', '2'));
    expect(x2.warnings.length, x2.warnings.join('\n')).toBe(1);
    expect(x2.warnings[0]).toMatch(/stream 3 .*1 damaged record\(s\) of generation 2 are not restored from it/);
    expect(x2.streams[2].skipped).toEqual([{ generation: 2, records: 10, damaged: 1 }]);
    expect((await dump('x2')).equals(original), 'x2 vs the original').toBe(true);
    await deleteVolume(d, 'x2');

    // damage in another generation is still refused with --skip-gen 2
    const bad3g3 = path.join(dir, 's-d3-bad3.tvs');
    damageRecord(d3, table.findIndex((t) => t.offset === 20 * CS), bad3g3);
    const g3 = await d.cli(restoreArgs([full, d1, d2, bad3g3], '--as', 'y', '--skip-gen', '2'));
    expect(g3.code).not.toBe(0);
    expect(g3.stderr).toMatch(new RegExp(`volume offset ${20 * CS}, generation 3,.*CRC32C mismatch`));
    expect((await poolState(d)).names).toEqual(['s', 'x']);

    // full + d1 + d3 (scope 2..3 follows d1): d3's generation-2 records are skipped and nothing else holds them
    const y = await cliJson<RestoreResult>(d, restoreArgs([full, d1, bad3], '--as', 'y', '--skip-gen', '2'));
    const older = y.warnings.find((w) => /older contents/.test(w));
    expect(older, y.warnings.join('\n')).toBeDefined();
    const ranges = /volume bytes (.*)$/.exec(older!)![1].split(', ').map((s) => s.split('..').map(Number));
    const stale = new Set<number>();
    for (const [a, b] of ranges) {
      expect(a % CS).toBe(0);
      expect((b + 1) % CS).toBe(0);
      for (let c = a / CS; c <= b / CS; c++) stale.add(c);
    }
    expect([...stale].sort((p, q) => p - q)).toEqual([10, 11, 12, 13, 14, 40, 50]);
    expect(older).toMatch(/7 chunk\(s\) stay at older contents/);
    // those chunks hold what full + d1 gave them; every other byte is the original's
    await setupRestore(d, [full, d1], { as: 'z' });
    const [yb, zb] = [await dump('y'), await dump('z')];
    for (let c = 0; c < SMALL / CS; c++) {
      const part = (b: Buffer) => b.subarray(c * CS, (c + 1) * CS);
      if (stale.has(c)) {
        expect(part(yb).equals(part(zb)), `chunk ${c} should hold its older contents`).toBe(true);
        expect(part(yb).equals(part(original)), `chunk ${c} changed in generation 2`).toBe(false);
      } else {
        expect(part(yb).equals(part(original)), `chunk ${c} should be the original's`).toBe(true);
      }
    }
    // the same two cases applying the damaged d3 alone --into a volume standing on the earlier part of the chain
    await setupRestore(d, [full, d1, d2], { as: 'q' });
    const q = await cliJson<RestoreResult>(d, restoreArgs([bad3], '--into', 'q', '--skip-gen', '2'));
    expect(q.warnings.join('\n')).not.toMatch(/older contents/);
    expect((await dump('q')).equals(original), 'q vs the original').toBe(true);
    await setupRestore(d, [full, d1], { as: 'q1' });
    const q1 = await cliJson<RestoreResult>(d, restoreArgs([bad3], '--into', 'q1', '--skip-gen', '2'));
    expect(q1.warnings.find((w) => /older contents/.test(w))).toBe(older);
    expect((await dump('q1')).equals(yb), 'q1 vs y').toBe(true);
    for (const n of ['q', 'q1']) await deleteVolume(d, n);

    // a --verify-only of the damaged chain with --skip-gen passes and creates nothing
    const before = await poolState(d);
    const v = await cliJson<RestoreResult>(d, restoreArgs([full, d1, bad3], '--verify-only', '--skip-gen', '2'));
    expect(v.verifyOnly).toBe(true);
    expect(v.warnings.join('\n')).toMatch(/1 damaged record\(s\) of generation 2/);
    expect(await poolState(d)).toEqual(before);
    for (const n of ['x', 'y', 'z', 's']) await deleteVolume(d, n);
  });

  it('tap image: a full and three diffs appended, media list, restore by file number', async () => {
    await createVolume(d, 't', SMALL);
    const tap = path.join(dir, 'chain.tap');
    await qemuIo(d, 't', ['write -P 0x51 0 3M', 'flush']);
    const f = await cliJson<DumpResult>(d, ['backup', 'full', 't', '--to', `tap:${tap}`]);
    expect(f.file).toBe(1);
    const results: DumpResult[] = [f];
    // generation 1: chunks 16..17; generation 2: chunks 80..84 and 32..33 trimmed (zero records); generation 3: 15..16
    const writes = [['write -P 0x52 1M 100k'], ['write -P 0x53 5M 300k', 'discard 2M 128k'], ['write -P 0x54 1000k 70k']];
    for (const [i, w] of writes.entries()) {
      await qemuIo(d, 't', [...w, 'flush']);
      const scope = i === 2 ? ['--scope', '2'] : [];
      const est = await cliJson<Estimate>(d, ['backup', 'estimate', 't', ...scope]);
      const r = await cliJson<DumpResult>(d, ['backup', 'diff', 't', '--to', `tap:${tap}`, ...scope]);
      expect(r.file).toBe(i + 2);
      expect(r.bytes).toBe(est.bytes);
      results.push(r);
    }
    const listed = await cliJson<{ files: Array<{ file: number; kind: string; volume: string; generations: string; streamBytes: number; complete: boolean }> }>(d, [
      'media',
      'list',
      `tap:${tap}`,
    ]);
    expect(listed.files.map((x) => [x.file, x.kind, x.volume, x.generations, x.complete])).toEqual([
      [1, 'full', 't', 'base (next 1)', true],
      [2, 'diff', 't', '1..1', true],
      [3, 'diff', 't', '2..2', true],
      [4, 'diff', 't', '2..3', true],
    ]);
    expect(listed.files.map((x) => x.streamBytes)).toEqual(results.map((r) => r.bytes));
    const text = await d.cli(['media', 'list', `tap:${tap}`]);
    expect(text.stdout).toMatch(/diff\s+t\b.*2\.\.3/);

    await cliJson(d, restoreArgs([1, 2, 3, 4].map((n) => `tap:${tap}#${n}`), '--as', 'ta'));
    await cliJson(d, restoreArgs([1, 2, 4].map((n) => `tap:${tap}#${n}`), '--as', 'tb'));
    const tGens = await generations(d, 't');
    for (const n of ['ta', 'tb']) {
      expect(await difference(d.uri(n), d.uri('t')), n).toBe('');
      expect(await generations(d, n)).toEqual(tGens);
    }
    // one at a time from the tape, --into
    await cliJson(d, restoreArgs([`tap:${tap}#1`], '--as', 'tc'));
    for (const n of [2, 3, 4]) await cliJson(d, restoreArgs([`tap:${tap}#${n}`], '--into', 'tc'));
    expect(await difference(d.uri('tc'), d.uri('t'))).toBe('');
    // without #N a multi-file image is ambiguous; out of order from the tape is refused
    await refused(d, dir, restoreArgs([`tap:${tap}`, `tap:${tap}#2`], '--as', 'bad'), [/holds 4 files; pick one with .*#N/]);
    await refused(d, dir, restoreArgs([`tap:${tap}#1`, `tap:${tap}#3`], '--as', 'bad'), [/generation\(s\) 1\.\.1 are missing/]);
    for (const n of ['ta', 'tb', 'tc', 't']) await deleteVolume(d, n);
  });

  it('a diff holds the volume as it was when it started: writes during the dump go into the next diff', async () => {
    await createVolume(d, 'c', SMALL);
    await qemuIo(d, 'c', ['write -P 0x71 0 8M', 'flush']);
    const full = path.join(dir, 'c-full.tvs');
    await setupBackup(d, 'full', 'c', full);
    await qemuIo(d, 'c', ['write -P 0x72 0 4M', 'flush']);
    const before = await dump('c');
    // the dump writes into a pipe that is read a little and then left full while the volume is written
    const fifo = path.join(dir, 'c-d1.fifo');
    await tool('mkfifo', [fifo]);
    const job = d.cli(['backup', 'diff', 'c', '--to', `file:${fifo}`, '--overwrite', '--json']);
    let jobDone = false;
    void job.then(() => (jobDone = true));
    const parts: Buffer[] = [];
    const reader = fs.createReadStream(fifo);
    let started: () => void = () => {};
    const firstData = new Promise<void>((resolve) => (started = resolve));
    reader.on('data', (c) => {
      parts.push(c as Buffer);
      if (parts.length === 1) {
        reader.pause();
        started();
      }
    });
    const closed = new Promise<void>((resolve) => reader.on('close', () => resolve()));
    await firstData;
    await qemuIo(d, 'c', ['write -P 0x73 1M 4M', 'write -P 0x74 10M 1M', 'flush']);
    expect(jobDone, 'the dump is still running (blocked on the pipe)').toBe(false);
    reader.resume();
    await closed;
    const r = await job;
    expect(r.code, r.stderr).toBe(0);
    const res = JSON.parse(r.stdout) as DumpResult;
    expect(res).toMatchObject({ generationFrom: 1, generationTo: 1, records: 64, currentGeneration: 2 });
    const d1 = path.join(dir, 'c-d1.tvs');
    fs.writeFileSync(d1, Buffer.concat(parts));
    expect(fs.statSync(d1).size).toBe(res.bytes);
    await setupRestore(d, [full, d1], { as: 'c1' });
    expect((await dump('c1')).equals(before), 'full + d1 vs the volume when the diff started').toBe(true);
    // the writes made during the dump are generation 2: chunks 16..79 and 160..175
    const g = await generations(d, 'c');
    expect(g.map.filter((x) => x.generation === 2).map((x) => [x.offset / CS, x.length / CS])).toEqual([
      [16, 64],
      [160, 16],
    ]);
    const d2 = path.join(dir, 'c-d2.tvs');
    expect(await cliJson<DumpResult>(d, ['backup', 'diff', 'c', '--to', d2])).toMatchObject({ generationFrom: 2, generationTo: 2, records: 80 });
    await setupRestore(d, [full, d1, d2], { as: 'c2' });
    expect(await difference(d.uri('c2'), d.uri('c'))).toBe('');
    for (const n of ['c1', 'c2', 'c']) await deleteVolume(d, n);
  });

  it('a chain across resizes of the volume (grow, shrink to a partial last chunk, grow again) restores --as', async () => {
    await createVolume(d, 'g', SMALL);
    await qemuIo(d, 'g', ['write -P 0x81 0 12M', 'flush']);
    const full = path.join(dir, 'g-full.tvs');
    await setupBackup(d, 'full', 'g', full);
    const sizes = [24 * MiB, 10 * MiB + 4096, SMALL];
    const writes = [['write -P 0x82 20M 1M'], ['write -P 0x83 9M 1M', 'write -P 0x84 10M 4096'], ['write -P 0x85 0 64k']];
    const files: string[] = [];
    for (const [i, size] of sizes.entries()) {
      await ctl(d, 'volume.resize', { name: 'g', size });
      await qemuIo(d, 'g', [...writes[i], 'flush']);
      const est = await cliJson<Estimate>(d, ['backup', 'estimate', 'g']);
      const file = path.join(dir, `g-d${i + 1}.tvs`);
      const r = await cliJson<DumpResult>(d, ['backup', 'diff', 'g', '--to', file]);
      expect(r.bytes).toBe(est.bytes);
      expect(fs.statSync(file).size).toBe(est.bytes);
      files.push(file);
      await setupRestore(d, [full, ...files], { as: `g${i + 1}` });
      expect((await info(d, `g${i + 1}`)).size).toBe(size);
      expect(await difference(d.uri(`g${i + 1}`), d.uri('g')), `full + ${i + 1} diffs`).toBe('');
      expect(await generations(d, `g${i + 1}`)).toEqual(await generations(d, 'g'));
    }
    // what was cut off by the shrink comes back as zeros
    expect(await qemuIo(d, 'g3', ['read -P 0 11M 5M', 'read -P 0x85 0 64k', 'read -P 0x81 64k 8M'], true)).not.toMatch(/Pattern verification failed/);
    for (const n of ['g1', 'g2', 'g3', 'g']) await deleteVolume(d, n);
  });

  it('a chain restores only into a pool of the same chunk size (generations are tracked per chunk)', async () => {
    const full = path.join(dir, 's-full.tvs');
    const d1 = path.join(dir, 's-d1.tvs');
    expect(fs.existsSync(full) && fs.existsSync(d1)).toBe(true);
    const other = await startDaemon({ initArgs: ['--chunk-size', '128KiB'] });
    try {
      await refused(other, dir, restoreArgs([full, d1], '--as', 'bad'), [/stream 2 .*has 65536-byte chunks; this pool uses 131072-byte chunks/]);
      // the full alone restores, without a chain
      const r = await cliJson<RestoreResult>(other, restoreArgs([full], '--as', 'plain'));
      expect(r.backupChain).toBeNull();
    } finally {
      controls.get(other)?.close();
      await other.stop();
      fs.rmSync(path.dirname(other.pool), { recursive: true, force: true });
    }
  });

  it('- relays a diff through stdout and back through stdin', async () => {
    await createVolume(d, 'p', SMALL);
    await qemuIo(d, 'p', ['write -P 0x61 0 2M', 'flush']);
    const full = path.join(dir, 'p-full.tvs');
    await cliJson(d, ['backup', 'full', 'p', '--to', full]);
    await qemuIo(d, 'p', ['write -P 0x62 100k 300k', 'write -z 1M 64k', 'discard 8M 1M', 'write -P 0x63 15M 1M', 'flush']);
    const est = await cliJson<Estimate>(d, ['backup', 'estimate', 'p']);

    const out = path.join(dir, 'p-d1.tvs');
    const fd = fs.openSync(out, 'w');
    const child = spawn(process.execPath, [CLI, 'backup', 'diff', 'p', '--to', '-', '--control', d.control], { stdio: ['ignore', fd, 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c) => (stderr += c));
    expect((await childExit(child)).code, stderr).toBe(0);
    fs.closeSync(fd);
    expect(stderr).toMatch(/difference backup of p, generations 1\.\.1, written to standard output/);
    expect(fs.statSync(out).size).toBe(est.bytes);

    /** the CLI with `file` on its stdin; killed after 15 s (a hang is reported as such, not as a test timeout) */
    const fromStdin = async (args: string[], file = out) => {
      const inFd = fs.openSync(file, 'r');
      const c = spawn(process.execPath, [CLI, ...args, '--control', d.control], { stdio: [inFd, 'pipe', 'pipe'] });
      let err = '';
      c.stderr!.on('data', (x) => (err += x));
      let hung = false;
      const timer = setTimeout(() => {
        hung = true;
        c.kill('SIGKILL');
      }, 15_000);
      const code = (await childExit(c)).code;
      clearTimeout(timer);
      fs.closeSync(inFd);
      expect(hung, `thinvault ${args.join(' ')} < ${path.basename(file)} hung (killed after 15 s); stderr: ${err}`).toBe(false);
      return { code, err };
    };
    const chained = await fromStdin(restoreArgs([full, '-'], '--as', 'pa'));
    expect(chained.code, chained.err).toBe(0);
    expect(await difference(d.uri('pa'), d.uri('p'))).toBe('');
    expect(await generations(d, 'pa')).toEqual(await generations(d, 'p'));
    // the full from stdin, the diff from its file
    const fullIn = await fromStdin(restoreArgs(['-', out], '--as', 'pf'), full);
    expect(fullIn.code, fullIn.err).toBe(0);
    expect(await difference(d.uri('pf'), d.uri('p'))).toBe('');
    await deleteVolume(d, 'pf');
    // a diff from stdin --into the volume restored from the full
    await cliJson(d, restoreArgs([full], '--as', 'pb'));
    const into = await fromStdin(restoreArgs(['-'], '--into', 'pb'));
    expect(into.code, into.err).toBe(0);
    expect(await difference(d.uri('pb'), d.uri('p'))).toBe('');
    // a diff from stdin that the lineage check refuses after reading its header (here: after another full backup of
    // p): the daemon's message reaches the user, also when the CLI is still copying stdin into the closed pipe
    const full2 = path.join(dir, 'p-full2.tvs');
    await setupBackup(d, 'full', 'p', full2);
    for (let i = 0; i < 3; i++) {
      const wrong = await fromStdin(restoreArgs([full2, '-'], '--as', 'pw'));
      expect(wrong.code).not.toBe(0);
      expect(wrong.err).toMatch(/stream 2 \(.*stdin: diff of generations 1\.\.1\) extends full backup .*belongs to another chain/);
    }
    // --skip-gen reads every stream twice: not from a pipe. The daemon refuses before it opens the pipe; the CLI's
    // relay then has to give up its own pending open of the pipe (it hung about 1 run in 10 on a loaded machine when
    // this test was written: the relay opened and closed the other end before its own open had reached the kernel)
    const skip = await fromStdin(restoreArgs([full, '-'], '--as', 'pc', '--skip-gen', '1'));
    expect(skip.code).not.toBe(0);
    expect(skip.err).toMatch(/--skip-gen reads every stream twice/);
    expect((await poolState(d)).names).toEqual(['p', 'pa', 'pb']);
    for (const n of ['pa', 'pb', 'p']) await deleteVolume(d, n);
  });
});
