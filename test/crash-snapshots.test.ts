/**
 * kill -9 of the real daemon (`node dist/cli/main.js serve`) during snapshot create/delete, replica create, volume
 * copy and full backup, then a restart on the same pool with no clean-up, and an exact check of what survived:
 * `pool check` is ok, every write acknowledged with a flush (or FUA) reads back, every object whose command
 * returned success is there and complete (or gone, for a delete), an object whose command was in flight at the kill
 * is either complete or absent (never half made), and the space comes back once everything is deleted.
 *
 *  1. snapshots: test/tools/load-oracle.py writes to volume `load` (4 connections, FUA/FLUSH, log of what was
 *     acknowledged durable) while two CLI loops run: one writes to volume `ref` (known content, qemu-io + flush),
 *     takes read-only and writable snapshots of it, writes to the writable ones and deletes some; the other takes
 *     and deletes snapshots of `load` itself. kill -9 at a random moment; after the restart the oracle verifies
 *     `load`, and every snapshot is checked against its history (content compared for those of `ref`). Then, at a
 *     quiet point, one snapshot of each volume with known content and a kill -9 while idle: the next start writes
 *     them into its checkpoint sharing every page with their sources, and the next trial's writes to the sources
 *     and restart (which loads that checkpoint) must leave them intact. Snapshots live on across trials; at the end
 *     a clean restart, writes to both sources, every snapshot compared again, everything deleted and
 *     pool.chunksUsed equal to the volumes' own chunks.
 *  2. replica create of a 64 MiB volume (~57 MiB allocated; timed to choose the kill window), killed at random
 *     points: afterwards the replica is complete (its exported image, read with nbdcopy, restores to the volume's
 *     content; so does `replica restore`) or absent without a trace (no volume, no metadata file); the source is
 *     unchanged; creating it again works. The restart log tells a kill mid-create (half-made replica removed).
 *  3. volume copy of 256 MiB with writes (qemu-io write + flush) to the source and the copy while copying, killed
 *     mid-copy (once twice: again while the resumed copy runs): the copy resumes at restart and ends with the
 *     expected content (writes acknowledged before the kill exactly, writes in flight old or new per sector);
 *     after the source is deleted the copies still read the same.
 *  4. backup full killed mid-stream: the hidden view is gone after restart, the generation map is not reset, a cut
 *     stream does not restore (one whose trailer made it restores exactly), and a new backup works and restores.
 *
 * Reproduce with the seed it prints: TV_CRASH_SEED=<seed> npx vitest run test/crash-snapshots.test.ts (kill times
 * depend on the machine, so a seed repeats the choices, not the interleaving; TV_CRASH_SNAP_TRIALS=N sets the
 * number of snapshot trials). The work directory of a failing part is kept and named in the error.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon, restartDaemon, cliJson, poolCheck, tempDir, tool, type Daemon } from './helpers/daemon.js';
import { lastJson, startOracle, waitBounded } from './helpers/load-oracle.js';
import { ControlConnection, type Reply } from './helpers/control-connection.js';
import type { CopyProgress } from '../src/pool/index.js';
import { mulberry32 } from './pool-helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 64 * KiB;
const SEED = Number(process.env.TV_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


/** one generator per part, so that the number of draws in one part (timing dependent) does not shift the others */
function rng(part: number): () => number {
  return mulberry32((SEED ^ Math.imul(part + 1, 0x9e3779b1)) >>> 0);
}

// ------------------------------------------------------------------------------------------------ content helpers

/** random bytes with some zero stretches (left unallocated or zero-written: both must read as zeros) */
function makeContent(size: number, rnd: () => number, holes: number): Buffer {
  const buf = crypto.randomBytes(size);
  for (let i = 0; i < holes; i++) {
    const len = (1 + Math.floor(rnd() * 32)) * 64 * KiB;
    const off = Math.floor((rnd() * (size - len)) / (4 * KiB)) * 4 * KiB;
    buf.fill(0, off, off + len);
  }
  return buf;
}

/** writes `buf` into the export `name` (nbdcopy --flush: acknowledged durable when it returns) */
async function fillVolume(d: Daemon, work: string, name: string, buf: Buffer): Promise<void> {
  const file = path.join(work, `fill-${name}.img`);
  fs.writeFileSync(file, buf);
  await tool('nbdcopy', ['--flush', file, d.uri(name)], 120_000);
  fs.rmSync(file, { force: true });
}

/** reads the whole export `name` with nbdcopy */
async function readVolume(d: Daemon, work: string, name: string): Promise<Buffer> {
  const file = path.join(work, `read-${name}-${process.hrtime.bigint()}.img`);
  try {
    await tool('nbdcopy', [d.uri(name), file], 120_000);
    return fs.readFileSync(file);
  } finally {
    fs.rmSync(file, { force: true });
  }
}

interface PendingWrite {
  off: number;
  len: number;
  pattern: number;
}

/**
 * null if `actual` equals `expected`, where the sectors of writes that were in flight at the kill (`pending`) may
 * also hold the written pattern; otherwise a description of the first wrong sectors.
 */
function compareContent(actual: Buffer, expected: Buffer, pending: PendingWrite[] = []): string | null {
  if (actual.length !== expected.length) return `size ${actual.length}, expected ${expected.length}`;
  if (actual.equals(expected)) return null;
  const problems: string[] = [];
  const BLOCK = 64 * KiB;
  for (let b = 0; b < actual.length && problems.length < 4; b += BLOCK) {
    const e = Math.min(actual.length, b + BLOCK);
    if (actual.subarray(b, e).equals(expected.subarray(b, e))) continue;
    for (let s = b; s < e && problems.length < 4; s += 512) {
      const a = actual.subarray(s, s + 512);
      if (a.equals(expected.subarray(s, s + 512))) continue;
      const alt = pending.find((p) => s >= p.off && s + 512 <= p.off + p.len);
      if (alt && a.every((x) => x === alt.pattern)) continue;
      problems.push(`sector at ${s}: found ${a.subarray(0, 8).toString('hex')}.., expected ${expected.subarray(s, s + 8).toString('hex')}..` +
        (alt ? ` or the pattern 0x${alt.pattern.toString(16)} of a write in flight` : ''));
    }
  }
  return problems.length ? problems.join('; ') : null;
}

function applyWrite(buf: Buffer, w: PendingWrite): void {
  buf.fill(w.pattern, w.off, w.off + w.len);
}

/**
 * The expected content of a large volume, kept in a file: a test process holding gigabytes of buffers makes every
 * spawn (qemu-io, nbdcopy, the CLI) slow, since fork has to copy its page tables.
 */
class ExpectedImage {
  constructor(readonly file: string) {}

  static fromBuffer(file: string, buf: Buffer): ExpectedImage {
    fs.writeFileSync(file, buf);
    return new ExpectedImage(file);
  }

  copyTo(file: string): ExpectedImage {
    fs.copyFileSync(this.file, file);
    return new ExpectedImage(file);
  }

  apply(w: PendingWrite): void {
    const fd = fs.openSync(this.file, 'r+');
    try {
      fs.writeSync(fd, Buffer.alloc(w.len, w.pattern), 0, w.len, w.off);
    } finally {
      fs.closeSync(fd);
    }
  }

  set(buf: Buffer): void {
    fs.writeFileSync(this.file, buf);
  }

  read(): Buffer {
    return fs.readFileSync(this.file);
  }
}

/** qemu-io writes + flush: resolves true when acknowledged, false when the daemon went away (never throws) */
async function qemuWrite(d: Daemon, name: string, writes: PendingWrite[]): Promise<{ ok: boolean; error?: string }> {
  const args = ['-f', 'raw', d.uri(name)];
  for (const w of writes) args.push('-c', `write -P 0x${w.pattern.toString(16)} ${w.off} ${w.len}`);
  args.push('-c', 'flush');
  try {
    const out = await tool('qemu-io', args, 30_000);
    // qemu-io exits 0 even when a command failed: it says so on stdout
    if (/failed|error/i.test(out)) return { ok: false, error: out.slice(0, 500) };
    return { ok: true };
  } catch (err) {
    return { ok: false, error: (err as Error).message.slice(0, 500) };
  }
}

function randomWrite(rnd: () => number, size: number, pattern: number, maxLen = MiB): PendingWrite {
  const len = Math.max(4 * KiB, Math.floor((rnd() * maxLen) / (4 * KiB)) * 4 * KiB);
  // 512-aligned starts: many writes are partial in their first and last chunk (copy-on-write of a part)
  const off = Math.floor((rnd() * (size - len)) / 512) * 512;
  return { off, len, pattern };
}

// ------------------------------------------------------------------------------------------ the daemon, directly


interface VolumeInfo {
  name: string;
  uuid: string;
  size: number;
  kind: string;
  readOnly: boolean;
  copying: boolean;
  allocatedChunks: number;
  generation: number;
}

async function listVolumes(d: Daemon): Promise<VolumeInfo[]> {
  return (await cliJson<{ volumes: VolumeInfo[] }>(d, ['volume', 'list'])).volumes;
}

/** what `volume list` and `status` show must be user volumes only: no internal view, no staging, no half replica */
async function noInternalVolumes(d: Daemon): Promise<string[]> {
  const bad: string[] = [];
  const st = await cliJson<{ volumes: VolumeInfo[] }>(d, ['status']);
  for (const [where, vols] of [['volume list', await listVolumes(d)], ['status', st.volumes]] as const) {
    for (const v of vols) {
      if (!['volume', 'snapshot', 'copy', 'replica'].includes(v.kind) || v.name.startsWith('.')) bad.push(`${where}: ${v.name} (kind ${v.kind})`);
    }
  }
  return bad;
}

/** pool.chunksUsed must come back to the chunks the remaining volumes map themselves (nothing shared, nothing leaked) */
async function expectSpaceReturned(d: Daemon): Promise<{ chunksUsed: number; own: number }> {
  let last = { chunksUsed: -1, own: -2 };
  for (let i = 0; i < 50; i++) {
    const st = await cliJson<{ pool: { chunksUsed: number }; volumes: VolumeInfo[] }>(d, ['status']);
    last = { chunksUsed: st.pool.chunksUsed, own: st.volumes.reduce((s, v) => s + v.allocatedChunks, 0) };
    if (last.chunksUsed === last.own) return last;
    await sleep(200);
  }
  throw new Error(`space not returned: pool.chunksUsed ${last.chunksUsed}, the volumes' own chunks ${last.own}`);
}

/** `pool check` must be ok; the error names what was done before and lists the problems */
async function expectPoolOk(d: Daemon, what: string): Promise<void> {
  const check = await poolCheck(d);
  if (!check.ok || check.problems.length) throw new Error(`pool check after ${what}: ${JSON.stringify(check, null, 1).slice(0, 8000)}`);
}

/** SIGKILL through the child handle (our own PID), then the same pool again */
async function crashAndRestart(d: Daemon): Promise<{ d: Daemon; restartMs: number }> {
  const oldPid = d.child.pid;
  await d.kill();
  const t = Date.now();
  const nd = await restartDaemon(d, { startTimeoutMs: 60_000 });
  if (nd.child.pid === oldPid) throw new Error('restart reused the old process');
  return { d: nd, restartMs: Date.now() - t };
}

// ------------------------------------------------------------------------------------------------ the load oracle


/** a describe's work dir: kept when something failed, removed otherwise */
function failureText(part: string, work: string, err: unknown): Error {
  const msg = err instanceof Error ? err.message : String(err);
  return new Error(`${part} failed (TV_CRASH_SEED=${SEED}; work dir kept: ${work})\n${msg}`);
}

/** SHA-1 of every 64 KiB block: the expected content of a large volume without keeping it in memory */
function blockHashes(buf: Buffer): string[] {
  const out: string[] = [];
  for (let o = 0; o < buf.length; o += CHUNK) out.push(crypto.createHash('sha1').update(buf.subarray(o, o + CHUNK)).digest('base64'));
  return out;
}

function compareHashes(actual: Buffer, expected: string[]): string | null {
  const got = blockHashes(actual);
  if (got.length !== expected.length) return `size ${actual.length}, expected ${expected.length * CHUNK}`;
  const bad = got.flatMap((h, i) => (h === expected[i] ? [] : [i * CHUNK]));
  return bad.length ? `${bad.length} blocks of 64 KiB differ, the first at offsets ${bad.slice(0, 6).join(', ')}` : null;
}

// ===================================================================================================== 1. snapshots

type SnapState = 'present' | 'maybe-created' | 'maybe-deleted' | 'absent';

interface SnapModel {
  name: string;
  source: 'ref' | 'load';
  writable: boolean;
  state: SnapState;
  /** ref snapshots: the content it must read (the source's at creation, plus acknowledged writes to it) */
  content?: Buffer;
  /** load snapshots taken while the load was stopped: block hashes of the content */
  hashes?: string[];
  /** writes to it that were in flight at the kill */
  pending: PendingWrite[];
}

describe('kill -9 during snapshot create/delete under write load', () => {
  const LOAD = 'load';
  const LOAD_SIZE = 128 * MiB;
  const REF = 'ref';
  const REF_SIZE = 16 * MiB;
  const TRIALS = Number(process.env.TV_CRASH_SNAP_TRIALS ?? 4);
  const rnd = rng(1);
  let d: Daemon;
  let work: string;
  let failed = false;
  let refContent: Buffer;
  let refPending: PendingWrite[] = [];
  const snaps = new Map<string, SnapModel>();
  const totals = { creates: 0, deletes: 0, snapWrites: 0, inDoubt: 0, inDoubtPresent: 0, compared: 0 };

  beforeAll(async () => {
    console.log(`crash-snapshots.test: TV_CRASH_SEED=${SEED}`);
    work = tempDir('tv-crash-snap-');
    d = await startDaemon({ pool: path.join(work, 'pool'), initArgs: ['--chunk-size', '64KiB'] });
    await cliJson(d, ['volume', 'create', LOAD, '--size', String(LOAD_SIZE)]);
    await cliJson(d, ['volume', 'create', REF, '--size', String(REF_SIZE)]);
    refContent = makeContent(REF_SIZE, rnd, 3);
    await fillVolume(d, work, REF, refContent);
  }, 120_000);

  afterAll(async () => {
    if (d) await d.kill();
    if (!failed && work) fs.rmSync(work, { recursive: true, force: true });
  }, 30_000);

  /** the two CLI loops of one trial; `markKilled()` just before the kill, `stop()` waits for them */
  function snapshotTraffic(n: number) {
    let running = true;
    let killed = false;
    const errors: string[] = [];
    const counts = { creates: 0, deletes: 0, writes: 0 };

    /** a CLI command: 'ok', 'doubt' (the daemon died meanwhile: it may or may not have happened) or 'error' */
    const run = async (args: string[]): Promise<'ok' | 'doubt' | 'error'> => {
      const r = await d.cli([...args, '--json']);
      if (r.code === 0) return 'ok';
      if (killed) return 'doubt';
      errors.push(`thinvault ${args.join(' ')}: exit ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
      return 'error';
    };

    const createSnap = async (source: 'ref' | 'load', name: string, writable: boolean): Promise<boolean> => {
      const m: SnapModel = { name, source, writable, state: 'maybe-created', pending: [], content: source === REF ? Buffer.from(refContent) : undefined };
      snaps.set(name, m);
      const r = await run(['snapshot', 'create', source, name, ...(writable ? ['--writable'] : [])]);
      if (r === 'ok') {
        m.state = 'present';
        counts.creates++;
      } else if (r === 'error') m.state = 'absent';
      return r === 'ok';
    };

    const deleteSnap = async (m: SnapModel): Promise<void> => {
      m.state = 'maybe-deleted';
      const r = await run(['snapshot', 'delete', m.name]);
      if (r === 'ok') {
        m.state = 'absent';
        m.content = undefined; // (memory: a test process holding large buffers spawns slowly)
        counts.deletes++;
      } else if (r === 'error') m.state = 'present';
    };

    const write = async (name: string, w: PendingWrite, content: Buffer, pending: PendingWrite[]): Promise<void> => {
      const r = await qemuWrite(d, name, [w]);
      if (r.ok) {
        applyWrite(content, w);
        counts.writes++;
      } else if (killed) pending.push(w);
      else errors.push(`write to ${name} failed while the daemon ran: ${r.error}`);
    };

    const present = (source: string) => [...snaps.values()].filter((s) => s.source === source && s.state === 'present');

    const refLoop = async () => {
      for (let k = 0; running && k < 1000; k++) {
        // change the source, so that every snapshot holds a different content
        await write(REF, randomWrite(rnd, REF_SIZE, 0x10 + ((n * 16 + k) % 0xe0)), refContent, refPending);
        if (!running) break;
        const writable = k % 2 === 1;
        const name = `r${n}-${k}${writable ? 'w' : ''}`;
        if (!(await createSnap(REF, name, writable)) || !running) break;
        // a write into a writable snapshot (this one or one of an earlier trial): copy-on-write of shared chunks
        const ws = present(REF).filter((s) => s.writable);
        if (ws.length) {
          const target = ws[Math.floor(rnd() * ws.length)];
          await write(target.name, randomWrite(rnd, REF_SIZE, 0xf0 + (k % 15), 512 * KiB), target.content!, target.pending);
          if (!running) break;
        }
        const live = present(REF).filter((s) => !s.name.startsWith('q'));
        if (live.length > 3) await deleteSnap(live[Math.floor(rnd() * live.length)]);
      }
    };

    const loadLoop = async () => {
      for (let k = 0; running && k < 1000; k++) {
        if (!(await createSnap(LOAD, `l${n}-${k}`, k % 3 === 2)) || !running) break;
        const live = present(LOAD).filter((s) => !s.hashes);
        if (live.length > 2) await deleteSnap(live[0]);
      }
    };

    const loops = Promise.all([refLoop(), loadLoop()]);
    return {
      markKilled: () => {
        killed = true;
        running = false;
      },
      stop: async () => {
        running = false;
        await loops;
        return { ...counts, errors };
      },
    };
  }

  /** every snapshot where its history allows it, with the content it must have; settles the in-doubt ones */
  async function verifySnapshots(): Promise<string[]> {
    const wrong: string[] = [];
    const vols = await listVolumes(d);
    const byName = new Map(vols.map((v) => [v.name, v]));
    const listed = (await cliJson<{ snapshots: VolumeInfo[] }>(d, ['snapshot', 'list'])).snapshots.map((s) => s.name).sort();
    const snapKind = vols.filter((v) => v.kind === 'snapshot').map((v) => v.name).sort();
    if (JSON.stringify(listed) !== JSON.stringify(snapKind)) wrong.push(`snapshot list ${listed.join(',')} != volume list snapshots ${snapKind.join(',')}`);
    for (const v of vols) {
      if (v.name === LOAD || v.name === REF) {
        if (v.kind !== 'volume' || v.readOnly || v.copying) wrong.push(`${v.name}: kind ${v.kind}, readOnly ${v.readOnly}, copying ${v.copying}`);
      } else if (!snaps.has(v.name)) wrong.push(`${v.name} (kind ${v.kind}) exists but was never created`);
    }
    for (const m of snaps.values()) {
      const v = byName.get(m.name);
      const inDoubt = m.state === 'maybe-created' || m.state === 'maybe-deleted';
      if (inDoubt) {
        totals.inDoubt++;
        if (v) totals.inDoubtPresent++;
      }
      if (!v) {
        if (m.state === 'present') wrong.push(`${m.name}: its create succeeded, it is gone`);
        m.state = 'absent';
        m.content = undefined;
        m.hashes = undefined;
        continue;
      }
      if (m.state === 'absent') {
        wrong.push(`${m.name}: its delete succeeded (or it was never made), it is listed (kind ${v.kind})`);
        continue;
      }
      const size = m.source === REF ? REF_SIZE : LOAD_SIZE;
      if (v.kind !== 'snapshot' || v.readOnly !== !m.writable || v.size !== size || v.copying) {
        wrong.push(`${m.name}: half made? kind ${v.kind}, readOnly ${v.readOnly} (writable ${m.writable}), size ${v.size}, copying ${v.copying}`);
      }
      m.state = 'present';
      if (m.content) {
        const actual = await readVolume(d, work, m.name);
        const diff = compareContent(actual, m.content, m.pending);
        if (diff) wrong.push(`${m.name} (snapshot of ${m.source}${inDoubt ? ', command in flight at the kill' : ''}): content differs: ${diff}`);
        else m.content = actual; // the in-flight writes are settled now
        m.pending = [];
        totals.compared++;
      } else if (m.hashes) {
        const diff = compareHashes(await readVolume(d, work, m.name), m.hashes);
        if (diff) wrong.push(`${m.name} (snapshot of ${m.source}): content differs: ${diff}`);
        totals.compared++;
      }
    }
    const refNow = await readVolume(d, work, REF);
    const diff = compareContent(refNow, refContent, refPending);
    if (diff) wrong.push(`${REF}: content differs: ${diff}`);
    else refContent = refNow;
    refPending = [];
    return wrong;
  }

  async function expectHealthy(what: string, extra: Record<string, unknown> = {}): Promise<void> {
    const check = await poolCheck(d);
    const snapProblems = await verifySnapshots();
    const internal = await noInternalVolumes(d);
    const problems: Record<string, unknown> = { ...extra };
    if (!check.ok) problems.poolCheck = check;
    if (snapProblems.length) problems.snapshots = snapProblems;
    if (internal.length) problems.internalVolumes = internal;
    if (Object.keys(problems).length > Object.keys(extra).length) throw new Error(`${what}: ${JSON.stringify(problems, null, 1).slice(0, 12_000)}`);
  }

  async function trial(n: number): Promise<string> {
    const t0 = Date.now();
    const adv = await cliJson<{ current: number }>(d, ['volume', 'advance-generation', LOAD]);
    const logFile = path.join(work, `oracle-${n}.log`);
    const span = 64 * MiB;
    const base = Math.floor((rnd() * (LOAD_SIZE - span)) / CHUNK) * CHUNK + (rnd() < 0.5 ? 512 * Math.floor(rnd() * 128) : 0);
    const o = startOracle(['run', '--uri', d.uri(LOAD), '--log', logFile, '--trial', String(n), '--seed', String(Math.floor(rnd() * 2 ** 31)),
      '--generation', String(adv.current), '--chunk', String(CHUNK), '--conns', '4', '--depth', '16', '--base', String(base),
      '--span', String(span), '--max-seconds', '60']);
    await o.ready;
    const traffic = snapshotTraffic(n);
    const delay = 600 + Math.floor(rnd() * 2600);
    await sleep(delay);
    const stillRunning = o.child.exitCode === null && o.child.signalCode === null;
    traffic.markKilled();
    const { d: nd, restartMs } = await crashAndRestart(d);
    d = nd;
    await waitBounded(o, 60_000, 'oracle run');
    const side = await traffic.stop();
    const run = lastJson(o.stdout());
    // the load volume: every acknowledged-durable write, tracking complete
    const gm = await cliJson(d, ['volume', 'generations', LOAD, '--map']);
    const gmFile = path.join(work, `genmap-${n}.json`);
    fs.writeFileSync(gmFile, JSON.stringify(gm));
    const v = startOracle(['verify', '--uri', d.uri(LOAD), '--log', logFile, '--genmap', gmFile, '--report', path.join(work, `report-${n}.json`)]);
    await waitBounded(v, 120_000, 'oracle verify');
    const report = lastJson(v.stdout());
    const problems: Record<string, unknown> = { trial: n, killAfterMs: delay, run };
    if (!stillRunning) problems.loadEndedBeforeKill = true;
    if (Number(run.errors) > 0) problems.serverErrorsBeforeKill = run.errors;
    if (!report.ok) problems.verify = report;
    if (side.errors.length) problems.commandErrors = side.errors;
    if (Object.keys(problems).length > 3) throw new Error(`trial ${n}: ${JSON.stringify(problems, null, 1).slice(0, 12_000)}`);
    await expectHealthy(`trial ${n} after the kill during the traffic`, problems);
    // new writes work
    await tool('qemu-io', ['-f', 'raw', d.uri(LOAD), '-c', `write -P 0x5a ${n * 4 * MiB + 12_288} 192k`, '-c', 'flush', '-c', `read -P 0x5a ${n * 4 * MiB + 12_288} 192k`]);
    totals.creates += side.creates;
    totals.deletes += side.deletes;
    totals.snapWrites += side.writes;

    // a quiet point: snapshots of both volumes whose content is known exactly, then kill -9 while idle, so that
    // the next start writes them into its checkpoint still sharing every page with their sources; the next trial
    // writes to the sources, and the restart after it loads that checkpoint
    for (const old of [...snaps.values()].filter((s) => s.hashes && s.state === 'present').slice(0, -1)) {
      await cliJson(d, ['snapshot', 'delete', old.name]);
      old.state = 'absent';
      totals.deletes++;
    }
    const loadHashes = blockHashes(await readVolume(d, work, LOAD));
    await cliJson(d, ['snapshot', 'create', REF, `q${n}`]);
    snaps.set(`q${n}`, { name: `q${n}`, source: REF, writable: false, state: 'present', content: Buffer.from(refContent), pending: [] });
    await cliJson(d, ['snapshot', 'create', LOAD, `lq${n}`]);
    snaps.set(`lq${n}`, { name: `lq${n}`, source: LOAD, writable: false, state: 'present', hashes: loadHashes, pending: [] });
    totals.creates += 2;
    d = (await crashAndRestart(d)).d;
    await expectPoolOk(d, `trial ${n}: quiet snapshots q${n} and lq${n}, then an idle kill -9 and a restart`);
    const live = [...snaps.values()].filter((s) => s.state === 'present');
    return `snapshots trial ${n}: kill after ${delay} ms: load ${run.completed} completed / ${run.durable} durable ops; ` +
      `CLI ${side.creates} creates, ${side.deletes} deletes, ${side.writes} writes acknowledged | restart ${restartMs} ms | ` +
      `verified ${report.durable} durable ops, ${live.length} live snapshots | pool check ok | + idle kill | ${Date.now() - t0} ms`;
  }

  it(`${TRIALS} kill -9s while snapshots are created, written and deleted: pool consistent, nothing lost, nothing half made`, async () => {
    try {
      for (let n = 1; n <= TRIALS; n++) console.log(await trial(n));
      // the traffic must have done something, or the test proved nothing
      expect(totals.creates - 2 * TRIALS, 'snapshot creates of the CLI loops').toBeGreaterThanOrEqual(TRIALS);
      expect(totals.deletes).toBeGreaterThan(0);
      expect(totals.snapWrites).toBeGreaterThan(0);
      // a clean restart (the checkpoint written at close is loaded), then writes to both sources: every snapshot
      // still reads what it held
      await d.stop();
      d = await restartDaemon(d, { startTimeoutMs: 60_000 });
      const w1 = randomWrite(rnd, REF_SIZE, 0x0f, 4 * MiB);
      const w2 = { off: w1.off >= REF_SIZE / 2 ? 0 : REF_SIZE / 2, len: 2 * MiB, pattern: 0x0e };
      expect(await qemuWrite(d, REF, [w1, w2])).toEqual({ ok: true });
      applyWrite(refContent, w1);
      applyWrite(refContent, w2);
      await tool('qemu-io', ['-f', 'raw', d.uri(LOAD), '-c', 'write -P 0x0d 0 96M', '-c', 'flush']);
      await expectHealthy('after a clean restart and writes to the sources');
      // delete everything: the space returns to the volumes' own
      for (const m of snaps.values()) {
        if (m.state !== 'present') continue;
        await cliJson(d, ['snapshot', 'delete', m.name]);
        m.state = 'absent';
      }
      expect((await cliJson<{ snapshots: unknown[] }>(d, ['snapshot', 'list'])).snapshots).toEqual([]);
      expect((await listVolumes(d)).map((v) => v.name).sort()).toEqual([LOAD, REF]);
      await expectPoolOk(d, 'deleting every snapshot');
      const space = await expectSpaceReturned(d);
      expect(compareContent(await readVolume(d, work, REF), refContent)).toBeNull();
      console.log(`snapshots: ${totals.creates} creates, ${totals.deletes} deletes, ${totals.snapWrites} writes to snapshots acknowledged; ` +
        `${totals.inDoubt} commands in flight at a kill (${totals.inDoubtPresent} of them took effect); ${totals.compared} snapshot contents compared; ` +
        `after deleting all, chunksUsed ${space.chunksUsed} = own ${space.own}`);
    } catch (err) {
      failed = true;
      throw failureText('snapshot crash test', work, err);
    }
  }, 300_000);
});

// ============================================================================================ 2. replica create

describe('kill -9 during replica create', () => {
  const SRC = 'src';
  const SIZE = 64 * MiB;
  const TRIALS = 4;
  const rnd = rng(2);
  let d: Daemon;
  let work: string;
  let failed = false;
  let content: Buffer;
  let srcImage: string;

  beforeAll(async () => {
    work = tempDir('tv-crash-replica-');
    d = await startDaemon({ pool: path.join(work, 'pool'), initArgs: ['--chunk-size', '64KiB'] });
    await cliJson(d, ['volume', 'create', SRC, '--size', String(SIZE)]);
    // 64 MiB with zero stretches: about 48 MiB allocated, so the replica packs fewer chunks than the volume has
    content = makeContent(SIZE, rnd, 8);
    await fillVolume(d, work, SRC, content);
    srcImage = path.join(work, 'src.img');
    fs.writeFileSync(srcImage, content);
  }, 120_000);

  afterAll(async () => {
    if (d) await d.kill();
    if (!failed && work) fs.rmSync(work, { recursive: true, force: true });
  }, 30_000);

  /**
   * the replica is complete: `replica restore` gives the source's content, and (`viaImage`) so does its exported
   * image read with nbdcopy and restored as a stream
   */
  async function verifyReplica(name: string, viaImage: boolean): Promise<number> {
    const info = await cliJson<{ volumeSize: number; records: number; imageBytes: number }>(d, ['replica', 'info', name]);
    expect(info.volumeSize).toBe(SIZE);
    const restored: string[] = [];
    if (viaImage) {
      const image = path.join(work, `${name}.replica`);
      await tool('nbdcopy', [d.uri(name), image], 60_000);
      expect(fs.statSync(image).size).toBe(info.imageBytes);
      await cliJson(d, ['restore', '--from', image, '--as', 'from-image']);
      fs.rmSync(image, { force: true });
      restored.push('from-image');
    }
    await cliJson(d, ['replica', 'restore', name, '--as', 'from-replica']);
    restored.push('from-replica');
    for (const v of restored) {
      await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', srcImage, d.uri(v)], 60_000);
      await cliJson(d, ['volume', 'delete', v]);
    }
    return info.records;
  }

  /** replicas listed, volumes listed and metadata files must agree; returns the replica names */
  async function consistentListing(): Promise<string[]> {
    const replicas = (await cliJson<{ replicas: Array<{ name: string; uuid: string }> }>(d, ['replica', 'list'])).replicas;
    const vols = await listVolumes(d);
    const names = vols.map((v) => v.name).sort();
    const expected = [SRC, ...replicas.map((r) => r.name)].sort();
    if (JSON.stringify(names) !== JSON.stringify(expected)) throw new Error(`volumes ${names.join(',')} but replicas ${replicas.map((r) => r.name).join(',')}`);
    for (const v of vols) {
      if (v.name === SRC ? v.kind !== 'volume' : v.kind !== 'replica' || !v.readOnly) throw new Error(`${v.name}: kind ${v.kind}, readOnly ${v.readOnly}`);
    }
    const internal = await noInternalVolumes(d);
    if (internal.length) throw new Error(`internal volumes visible: ${internal.join(', ')}`);
    // no metadata file left by an interrupted create (the restart removes them)
    const dir = path.join(d.pool, 'replicas');
    const files = fs.existsSync(dir) ? fs.readdirSync(dir).sort() : [];
    const live = replicas.map((r) => `${r.uuid}.meta`).sort();
    if (JSON.stringify(files) !== JSON.stringify(live)) throw new Error(`replica metadata files ${files.join(',')}, live replicas ${live.join(',')}`);
    return replicas.map((r) => r.name);
  }

  it(`${TRIALS} kill -9s at random points of replica create: complete or absent, source unchanged, create works again`, async () => {
    try {
      // time one create to choose the kill window
      const conn = await ControlConnection.open(d.control);
      let createMs = Infinity;
      for (const name of ['timed', 'timed2']) {
        const t0 = performance.now();
        const r0 = await conn.call('replica.create', { source: SRC, name });
        createMs = Math.min(createMs, performance.now() - t0);
        expect(r0?.ok, JSON.stringify(r0)).toBe(true);
      }
      conn.close();
      const records = await verifyReplica('timed', true);
      await cliJson(d, ['replica', 'delete', 'timed']);
      await cliJson(d, ['replica', 'delete', 'timed2']);
      const ownChunks = (await listVolumes(d)).find((v) => v.name === SRC)!.allocatedChunks;
      expect(records).toBe(ownChunks);
      console.log(`replica create of ${records} chunks (${(records * CHUNK) / MiB} MiB of ${SIZE / MiB} MiB) took ${createMs.toFixed(0)} ms (the faster of two)`);
      const outcomes: Record<string, number> = { 'before the clone': 0, 'mid-create': 0, complete: 0 };
      let windowMs = createMs;
      // TRIALS kills (more while none has landed mid-create), plus retries when the create won the race (then the
      // window shrinks)
      for (let n = 1, attempts = 0; (n <= TRIALS || outcomes['mid-create'] === 0) && attempts < 3 * TRIALS; attempts++) {
        // spread over the job: the clone step at the start, the CRC pass, the metadata file and the flag at the end
        const delay = Math.max(1, Math.round(windowMs * (n === 1 ? 0.03 : 0.1 + 0.85 * rnd())));
        const c = await ControlConnection.open(d.control);
        let progress = { done: 0, total: 0 };
        let answered: Reply | undefined;
        const reply = c.call('replica.create', { source: SRC, name: 'rep' }, (p) => (progress = p)).then((r) => (answered = r));
        await sleep(delay);
        const { d: nd, restartMs } = await crashAndRestart(d);
        d = nd;
        await reply;
        c.close();
        await expectPoolOk(d, `kill -9 ${delay} ms into replica create`);
        const present = (await consistentListing()).includes('rep');
        if (answered?.ok && !present) throw new Error(`kill -9 ${delay} ms into replica create: it answered ok before the kill, the replica is gone`);
        // an unfinished replica is an INCOMPLETE volume, removed (and logged) at open
        const removed = d.log().split('\n').some((l) => l.includes('removing an internal volume') && l.includes('"volume":"rep"'));
        if (present && removed) throw new Error(`replica 'rep' both removed at open and listed`);
        if (present) await verifyReplica('rep', true);
        // the source is unchanged
        await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', srcImage, d.uri(SRC)], 60_000);
        // creating it again works (after deleting the one that survived)
        if (present) await cliJson(d, ['replica', 'delete', 'rep']);
        const again = await cliJson<{ records: number }>(d, ['replica', 'create', SRC, 'rep']);
        expect(again.records).toBe(ownChunks);
        if (n === TRIALS) expect(await verifyReplica('rep', false)).toBe(ownChunks);
        await cliJson(d, ['replica', 'delete', 'rep']);
        await expectPoolOk(d, `a replica created again after a kill and deleted`);
        const outcome = present ? 'complete' : removed ? 'mid-create' : 'before the clone';
        outcomes[outcome]++;
        console.log(`replica: kill after ${delay} ms (window ${windowMs.toFixed(0)} ms; progress ${progress.done}/${progress.total}${answered ? ', answered' : ''}): ` +
          `${present ? 'complete replica, restores exactly' : removed ? 'half-made replica removed at open' : 'no replica'} | restart ${restartMs} ms | source unchanged | created again ok`);
        if (present) windowMs = delay; // too late: aim earlier
        else n++;
      }
      console.log(`replica outcomes: ${JSON.stringify(outcomes)}`);
      expect(outcomes['mid-create'], 'no kill landed in the middle of a replica create').toBeGreaterThan(0);
      const space = await expectSpaceReturned(d);
      expect(space.chunksUsed).toBe(ownChunks);
    } catch (err) {
      failed = true;
      throw failureText('replica crash test', work, err);
    }
  }, 180_000);
});

// =============================================================================================== 3. volume copy

describe('kill -9 during volume copy', () => {
  const VOL = 'orig';
  const SIZE = 256 * MiB;
  const TRIALS = 3;
  const rnd = rng(3);
  let d: Daemon;
  let work: string;
  let failed = false;
  let orig: ExpectedImage;
  const copies: Array<{ name: string; expected: ExpectedImage }> = [];

  beforeAll(async () => {
    work = tempDir('tv-crash-copy-');
    d = await startDaemon({ pool: path.join(work, 'pool'), initArgs: ['--chunk-size', '64KiB'] });
    await cliJson(d, ['volume', 'create', VOL, '--size', String(SIZE)]);
    const buf = makeContent(SIZE, rnd, 6);
    await fillVolume(d, work, VOL, buf);
    orig = ExpectedImage.fromBuffer(path.join(work, `expect-${VOL}.img`), buf);
  }, 120_000);

  afterAll(async () => {
    if (d) await d.kill();
    if (!failed && work) fs.rmSync(work, { recursive: true, force: true });
  }, 30_000);


  async function copyStatus(conn: ControlConnection, name: string): Promise<CopyProgress | undefined> {
    const r = await conn.call('volume.copy-status', { name }, undefined, 10_000);
    if (!r?.ok) throw new Error(`volume.copy-status ${name}: ${JSON.stringify(r)}`);
    return (r.result!.copies as CopyProgress[])[0];
  }

  /** polls copy-status until the copy is `fraction` done or finished; bounded */
  async function waitForProgress(name: string, fraction: number, conn?: ControlConnection): Promise<CopyProgress | undefined> {
    const c = conn ?? (await ControlConnection.open(d.control));
    try {
      const deadline = Date.now() + 60_000;
      for (;;) {
        const row = await copyStatus(c, name);
        if (row && (row.finished || row.error || row.doneChunks >= fraction * row.totalChunks)) return row;
        if (Date.now() > deadline) throw new Error(`copy of ${name} made no progress: ${JSON.stringify(row)}`);
        await sleep(2);
      }
    } finally {
      if (!conn) c.close();
    }
  }

  function resumedInLog(name: string): boolean {
    return d
      .log()
      .split('\n')
      .some((l) => l.includes('resuming the background copy') && l.includes(`"volume":"${name}"`));
  }

  async function waitCopied(name: string): Promise<CopyProgress | undefined> {
    const deadline = Date.now() + 90_000;
    for (;;) {
      const info = await cliJson<VolumeInfo>(d, ['volume', 'info', name]);
      if (!info.copying) break;
      if (Date.now() > deadline) throw new Error(`copy of ${name} still running after 90 s`);
      await sleep(200);
    }
    const rows = (await cliJson<{ copies: CopyProgress[] }>(d, ['volume', 'copy-status', name])).copies;
    return rows[0];
  }

  it(`${TRIALS} kill -9s during background copies with writes to source and copy: the copy resumes and ends exact`, async () => {
    try {
      let mids = 0;
      // TRIALS kills in the middle of a copy; a copy that wins the race against the kill is checked too and retried
      for (let n = 1; mids < TRIALS && n <= 2 * TRIALS; n++) {
        const t0 = Date.now();
        const name = `cp${n}`;
        // `volume copy` answers at once; the writes start as soon as the job shows in copy-status (not after the
        // CLI process has exited: the copy of 256 MiB takes only a few hundred ms)
        const cliCopy = d.cli(['volume', 'copy', VOL, name, '--json']);
        const conn = await ControlConnection.open(d.control);
        for (const deadline = Date.now() + 30_000; !(await copyStatus(conn, name)); await sleep(2)) {
          if (Date.now() > deadline) throw new Error(`copy ${name} did not start: ${JSON.stringify(await cliCopy)}`);
        }
        const expected = orig.copyTo(path.join(work, `expect-${name}.img`));
        copies.push({ name, expected });
        // writes to both while the copy runs (each: qemu-io write + flush); the kill comes once they are answered and
        // the copy is past a random point, or at 90 % of the copy if they take longer: then they are in flight, and
        // each of their sectors may hold the old or the new data (only writes acknowledged by the flush must be there)
        const wv = [randomWrite(rnd, SIZE, 0x40 + n), randomWrite(rnd, SIZE, 0x50 + n, 64 * KiB)];
        const wc = [randomWrite(rnd, SIZE, 0x80 + n), randomWrite(rnd, SIZE, 0x90 + n, 64 * KiB)];
        let killed = false;
        let settled = 0;
        const writeResults: Array<{ ok: boolean; error?: string }> = [];
        const writes = Promise.all([qemuWrite(d, VOL, wv), qemuWrite(d, name, wc)].map((p, i) => p.then((r) => {
          writeResults[i] = { ...r, error: r.ok || killed ? undefined : r.error };
          settled++;
        })));
        const fraction = 0.1 + 0.5 * rnd();
        let atKill: CopyProgress | undefined;
        for (const deadline = Date.now() + 60_000; ; await sleep(2)) {
          atKill = await copyStatus(conn, name);
          if (!atKill || atKill.finished || atKill.error) break;
          if (settled === 2 && atKill.doneChunks >= fraction * atKill.totalChunks) break;
          if (atKill.doneChunks >= 0.9 * atKill.totalChunks) break;
          if (Date.now() > deadline) throw new Error(`copy of ${name} made no progress: ${JSON.stringify(atKill)}`);
        }
        conn.close();
        killed = true;
        const ackedAtKill = settled;
        let restarted = await crashAndRestart(d);
        d = restarted.d;
        await writes;
        const copyReply = await cliCopy;
        expect(copyReply.code, `volume copy: ${copyReply.stderr}`).toBe(0);
        expect(JSON.parse(copyReply.stdout)).toMatchObject({ name, copying: true, source: VOL });
        const pendingV: PendingWrite[] = [];
        const pendingC: PendingWrite[] = [];
        for (const [i, ws, img, pending] of [[0, wv, orig, pendingV], [1, wc, expected, pendingC]] as const) {
          const r = writeResults[i];
          if (r.error) throw new Error(`a write during the copy failed while the daemon ran: ${r.error}`);
          for (const w of ws) (r.ok ? img.apply(w) : pending.push(w));
        }
        const ackedWrites = writeResults.filter((r) => r.ok).length;
        // mid-copy = the flag was still set at the kill: the job resumes at open and copy-status shows it; otherwise
        // the copy finished (flag cleared durably) before the kill landed
        const resumed = resumedInLog(name);
        if (resumed) {
          const conn = await ControlConnection.open(d.control);
          const row = await copyStatus(conn, name);
          conn.close();
          expect(row, `copy-status ${name} after the restart that resumed it`).toBeDefined();
        } else {
          const info = await cliJson<VolumeInfo>(d, ['volume', 'info', name]);
          expect(info.copying, `${name} still marked copying after the restart, and no copy job resumed:\n${d.log().slice(0, 3000)}`).toBe(false);
        }
        let second = '';
        if (resumed && mids === 1) {
          // kill again while the resumed copy runs (its walk starts over, skipping what is copied)
          const row = await waitForProgress(name, 0.3 + 0.4 * rnd());
          restarted = await crashAndRestart(d);
          d = restarted.d;
          second = `, killed again at ${row?.doneChunks}/${row?.totalChunks}${row?.finished ? ' (finished)' : ''}${resumedInLog(name) ? ', resumed again' : ''}`;
        }
        // (pool check only once the copy is done: while a copy runs it reports the chunks of the batch in flight,
        // allocated and not mapped yet, as "refcount 1, but 0 mapping(s)")
        const final = await waitCopied(name);
        if (final) expect(final.error, `copy of ${name}: ${final.error}`).toBeUndefined();
        // (the writes in flight are settled once checked: the expected content becomes what was read)
        const cpNow = await readVolume(d, work, name);
        const cpDiff = compareContent(cpNow, expected.read(), pendingC);
        if (!cpDiff && pendingC.length) expected.set(cpNow);
        const volNow = await readVolume(d, work, VOL);
        const volDiff = compareContent(volNow, orig.read(), pendingV);
        if (!volDiff && pendingV.length) orig.set(volNow);
        if (cpDiff || volDiff) throw new Error(`copy ${n}: after the kill: ${name}: ${cpDiff ?? 'ok'}; ${VOL}: ${volDiff ?? 'ok'}`);
        await expectPoolOk(d, `copy ${n}: kill -9 during the copy of ${name}, restart, copy finished`);
        if (resumed) mids++;
        const outcome = resumed
          ? `killed at ${atKill!.doneChunks}/${atKill!.totalChunks} chunks (${atKill!.copiedChunks} copied; ${ackedAtKill}/2 write+flush answered, ${ackedWrites}/2 acknowledged in the end)${second}, ` +
            `resumed, finished (${final?.copiedChunks ?? '?'} copied after the restart)`
          : `the copy finished before the kill landed (status ${atKill?.doneChunks}/${atKill?.totalChunks}${atKill?.finished ? ' finished' : ''})`;
        console.log(`copy ${n}: ${outcome} | ${name} and ${VOL} exact | pool check ok | ${Date.now() - t0} ms`);
      }
      expect(mids, 'kills in the middle of a copy').toBe(TRIALS);
      // the copies share nothing with the source any more
      await cliJson(d, ['volume', 'delete', VOL]);
      await expectPoolOk(d, `deleting ${VOL}`);
      for (const c of copies) {
        const diff = compareContent(await readVolume(d, work, c.name), c.expected.read());
        if (diff) throw new Error(`${c.name} after ${VOL} was deleted: ${diff}`);
      }
      await expectSpaceReturned(d);
    } catch (err) {
      failed = true;
      throw failureText('volume copy crash test', work, err);
    }
  }, 180_000);
});

// ============================================================================================== 4. backup full

describe('kill -9 during backup full', () => {
  const VOL = 'bk';
  const SIZE = 64 * MiB;
  const TRIALS = 3;
  const rnd = rng(4);
  let d: Daemon;
  let work: string;
  let failed = false;
  let content: Buffer;

  beforeAll(async () => {
    work = tempDir('tv-crash-backup-');
    d = await startDaemon({ pool: path.join(work, 'pool'), initArgs: ['--chunk-size', '64KiB'] });
    await cliJson(d, ['volume', 'create', VOL, '--size', String(SIZE)]);
    content = makeContent(SIZE, rnd, 4);
    await fillVolume(d, work, VOL, content);
    // a second generation, so that "not reset" means something
    await cliJson(d, ['volume', 'advance-generation', VOL]);
    const ws = [randomWrite(rnd, SIZE, 0x61), randomWrite(rnd, SIZE, 0x62)];
    expect(await qemuWrite(d, VOL, ws)).toEqual({ ok: true });
    for (const w of ws) applyWrite(content, w);
  }, 120_000);

  afterAll(async () => {
    if (d) await d.kill();
    if (!failed && work) fs.rmSync(work, { recursive: true, force: true });
  }, 30_000);

  interface Generations {
    current: number;
    counts: Array<{ generation: number; chunks: number }>;
    map: Array<{ offset: number; length: number; generation: number }>;
  }

  it(`${TRIALS} kill -9s mid-stream: no hidden view left, generation map not reset, a new backup works`, async () => {
    try {
      // time one backup of the same data (a writable snapshot, so that the volume's own map stays as it is)
      await cliJson(d, ['snapshot', 'create', VOL, 'timing', '--writable']);
      const conn = await ControlConnection.open(d.control);
      const t0 = performance.now();
      const r0 = await conn.call('backup.full', { volume: 'timing', to: path.join(work, 'timing.tvb') });
      const backupMs = performance.now() - t0;
      conn.close();
      expect(r0?.ok, JSON.stringify(r0)).toBe(true);
      await cliJson(d, ['snapshot', 'delete', 'timing']);
      console.log(`backup full of ${SIZE / MiB} MiB took ${backupMs.toFixed(0)} ms`);
      const outcomes: Record<string, number> = { 'before the view': 0, 'mid-stream': 0, 'after the trailer': 0, finished: 0 };
      let windowMs = backupMs;
      const contentFile = path.join(work, 'content.img');
      fs.writeFileSync(contentFile, content);
      for (let n = 1, attempts = 0; (n <= TRIALS || outcomes['mid-stream'] === 0) && attempts < 3 * TRIALS; attempts++) {
        let before = await cliJson<Generations>(d, ['volume', 'generations', VOL, '--map']);
        if (before.map.length === 0) {
          // a backup finished and restarted the map: give it changed chunks again, or "not reset" proves nothing
          const w = randomWrite(rnd, SIZE, 0x70 + attempts);
          expect(await qemuWrite(d, VOL, [w])).toEqual({ ok: true });
          applyWrite(content, w);
          fs.writeFileSync(contentFile, content);
          before = await cliJson<Generations>(d, ['volume', 'generations', VOL, '--map']);
        }
        const file = path.join(work, `killed-${attempts}.tvb`);
        const delay = Math.max(1, Math.round(windowMs * (0.1 + 0.8 * rnd())));
        const c = await ControlConnection.open(d.control);
        let progress = { done: 0, total: 0 };
        let answered: Reply | undefined;
        const reply = c.call('backup.full', { volume: VOL, to: file }, (p) => (progress = p)).then((r) => (answered = r));
        await sleep(delay);
        const { d: nd, restartMs } = await crashAndRestart(d);
        d = nd;
        await reply;
        c.close();
        await expectPoolOk(d, `kill -9 ${delay} ms into backup full`);
        const internal = await noInternalVolumes(d);
        expect(internal, 'hidden views left after the restart').toEqual([]);
        expect((await listVolumes(d)).map((v) => v.name)).toEqual([VOL]);
        expect((await cliJson<{ volumes: VolumeInfo[] }>(d, ['status'])).volumes.map((v) => v.name)).toEqual([VOL]);
        // a view left by the kill is removed at open (and the generation it started folded back), and says so
        const viewRemoved = d
          .log()
          .split('\n')
          .some((l) => l.includes('a backup was interrupted') || (l.includes('removing an internal volume') && l.includes('"volume":".backup-')));
        const after = await cliJson<Generations>(d, ['volume', 'generations', VOL, '--map']);
        let outcome: string;
        const mapRestarted = before.map.length > 0 && after.map.length === 0;
        if (answered?.ok || mapRestarted) {
          // the backup finished (its answer may have been lost in the kill): the map restarted, so the stream must be
          // complete on the medium and restore exactly
          const r = await d.cli(['restore', '--from', file, '--as', 'finished', '--json']);
          if (r.code !== 0) throw new Error(`the map restarted after a kill ${delay} ms into backup full, but its stream does not restore: ${r.stderr || r.stdout}`);
          const diff = compareContent(await readVolume(d, work, 'finished'), content);
          if (diff) throw new Error(`the stream of a backup that restarted the map restores to something else: ${diff}`);
          await cliJson(d, ['volume', 'delete', 'finished']);
          outcome = `finished before the kill${answered?.ok ? '' : ' (its answer lost in the kill)'}: map restarted, stream restores exactly`;
          outcomes.finished++;
          windowMs = delay; // too late: aim earlier
        } else {
          // the map is what it was; the current generation may have moved on by one (the view's snapshot point)
          expect(after.map, 'generation map after a killed backup').toEqual(before.map);
          expect(after.counts, 'generation counts after a killed backup').toEqual(before.counts);
          expect([before.current, before.current + 1]).toContain(after.current);
          // what the killed backup left on the medium: a cut stream does not restore (and creates nothing); a stream
          // whose trailer was written before the kill (killed before the map restart) restores exactly
          let stream = 'not created';
          let complete = false;
          if (fs.existsSync(file)) {
            const bytes = fs.statSync(file).size;
            const r = await d.cli(['restore', '--from', file, '--as', 'partial', '--json']);
            if (r.code === 0) {
              const diff = compareContent(await readVolume(d, work, 'partial'), content);
              if (diff) throw new Error(`the stream of a killed backup restored, to something else: ${diff}`);
              await cliJson(d, ['volume', 'delete', 'partial']);
              stream = `of ${bytes} bytes complete (killed after its trailer), restores exactly`;
              complete = true;
            } else {
              stream = `of ${bytes} bytes refused by restore`;
            }
            expect((await listVolumes(d)).map((v) => v.name)).toEqual([VOL]);
          }
          const kind = !viewRemoved ? 'before the view' : complete ? 'after the trailer' : 'mid-stream';
          outcome = `${kind}${viewRemoved ? ', hidden view removed at open' : ''} (progress ${progress.done}/${progress.total}): ` +
            `map unchanged, generation ${before.current} -> ${after.current}; stream ${stream}`;
          outcomes[kind]++;
          if (complete) windowMs = delay; // late: aim earlier
          n++;
        }
        await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', contentFile, d.uri(VOL)], 60_000);
        console.log(`backup: kill after ${delay} ms (window ${windowMs.toFixed(0)} ms): ${outcome} | restart ${restartMs} ms | volume unchanged`);
      }
      console.log(`backup outcomes: ${JSON.stringify(outcomes)}`);
      expect(outcomes['mid-stream'], 'no kill landed in the middle of a backup').toBeGreaterThan(0);
      // a new backup works, restores exactly, and restarts the map
      const final = path.join(work, 'final.tvb');
      const res = await cliJson<{ currentGeneration: number; records: number }>(d, ['backup', 'full', VOL, '--to', final]);
      await cliJson(d, ['restore', '--from', final, '--as', 'restored']);
      const diff = compareContent(await readVolume(d, work, 'restored'), content);
      expect(diff, 'restore of the new backup').toBeNull();
      const gens = await cliJson<Generations>(d, ['volume', 'generations', VOL, '--map']);
      expect(gens.current).toBe(res.currentGeneration);
      expect(gens.map).toEqual([]);
      await cliJson(d, ['volume', 'delete', 'restored']);
      await expectPoolOk(d, 'a new backup and its restore');
      await expectSpaceReturned(d);
    } catch (err) {
      failed = true;
      throw failureText('backup crash test', work, err);
    }
  }, 120_000);
});
