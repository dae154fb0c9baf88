/**
 * kill -9 of the real daemon under write load across a growing chain of difference backups: after every crash, the
 * next `backup diff` (default scope) must hold every chunk that may differ from the last good backup, so that the
 * full backup plus all the good diffs so far restore to exactly the live volume.
 *
 * Setup: a pool (64 KiB chunks), a 128 MiB volume filled with random data (some holes), `backup full`.
 * Then rounds, each one:
 *  1. test/tools/load-oracle.py writes to the volume (4 connections x 16 pipelined writes/trims/zeroes, FUA, FLUSH,
 *     a log of what was acknowledged durable) and the daemon is killed with SIGKILL (its PID) at a random moment:
 *     - `load`: simply under the load;
 *     - `diff-cut`: while a `backup diff` runs under the load, once its stream file has reached a random size short
 *       of the stream's size: after the restart the view is gone, the generation it started is folded back (the
 *       volume is at the generation the load started in again, the chain did not move on), and the cut file is
 *       refused by restore (a file that turns out complete, or a diff whose commit made it before the kill, is
 *       accepted and joins the chain instead);
 *     - `diff-done`: a `backup diff` completes under the load (it joins the chain), then the kill.
 *  2. restart on the same pool with no clean-up; `pool check` must be clean;
 *  3. `backup diff` with the default scope: its generations follow on from the chain's last one;
 *  4. `restore --from FULL --from D1 ... --as rN`, compared byte for byte (qemu-img compare) with the live volume
 *     (nothing writes to it in between): a difference is a change the tracking missed (or a restore bug; the error
 *     names the differing chunks, their generation in the live map and the oracle write each side holds);
 *  5. the oracle verifies the restored volume (every acknowledged-durable write of the round is there, in-flight ones
 *     old or new, nothing torn) and the live volume with its generation map (every chunk the round changed carries a
 *     generation >= the one the round started in). Oracle failures are collected and the chain goes on, so that one
 *     run reports every round; the test fails at the end with all of them.
 * The chain grows across all the crashes (one diff after each, plus the diffs taken under load).
 *
 * Reproduce with the seed it prints: TV_CRASH_SEED=<seed> npx vitest run test/crash-diff.test.ts
 * (TV_CRASH_DIFF_ROUNDS=N for more rounds; kill times depend on the machine, so a seed repeats the choices, not the
 * interleaving). The work directory of a failing run is kept (pool, streams, oracle logs and reports).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon, restartDaemon, cliJson, poolCheck, tempDir, tool, type Daemon } from './helpers/daemon.js';
import { lastJson, startOracle, waitBounded } from './helpers/load-oracle.js';
import { ControlConnection, type Reply } from './helpers/control-connection.js';
import { mulberry32 } from './pool-helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 64 * KiB;
const VOL = 'load';
const SIZE = 128 * MiB;
const SEED = Number(process.env.TV_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
const PLAN = ['load', 'diff-cut', 'diff-done', 'diff-cut', 'load'] as const;
const ROUNDS = Number(process.env.TV_CRASH_DIFF_ROUNDS ?? PLAN.length);
type RoundKind = (typeof PLAN)[number];

const rnd = mulberry32(SEED);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface VolumeInfo {
  name: string;
  generation: number;
  kind: string;
  backupChain: { baseStreamUuid: string; throughGeneration: number } | null;
}

interface DiffResult {
  streamUuid: string;
  records: number;
  bytes: number;
  closedGeneration: number;
  currentGeneration: number;
  generationFrom: number;
  generationTo: number;
  baseStreamUuid: string;
}

interface GenMap {
  current: number;
  chunkSize: number;
  map: Array<{ offset: number; length: number; generation: number }>;
}

interface VerifyReport {
  ok: boolean;
  durable: number;
  ops: number;
  checked_bytes: number;
  required_chunks?: number;
  lost: unknown[];
  bad: unknown[];
  tracking_missing: unknown[];
  notes: string[];
  errors: string[];
}

/** random bytes with some zero stretches */
function makeContent(size: number, holes: number): Buffer {
  const buf = crypto.randomBytes(size);
  for (let i = 0; i < holes; i++) {
    const len = (1 + Math.floor(rnd() * 64)) * CHUNK;
    const off = Math.floor((rnd() * (size - len)) / (4 * KiB)) * 4 * KiB;
    buf.fill(0, off, off + len);
  }
  return buf;
}

async function volumeInfo(d: Daemon): Promise<VolumeInfo> {
  return cliJson<VolumeInfo>(d, ['volume', 'info', VOL]);
}

/** what a sector holds, as the oracle stamps it: "trial T seq S @off", "zero" or "other" */
function sectorOwner(buf: Buffer, at: number): string {
  const s = buf.subarray(at, at + 512);
  if (s.every((x) => x === 0)) return 'zero';
  if (s.subarray(0, 8).toString('latin1') !== 'TVLOAD01') return 'other (not an oracle sector: initial fill?)';
  return `trial ${s.readUInt32LE(8)} seq ${s.readUInt32LE(12)} @${Number(s.readBigUInt64LE(16))}`;
}

/**
 * One line per kind of problem of an oracle report: acknowledged-durable writes lost, in-flight writes that left
 * something other than their old or new content (with the 64 KiB chunks and what was found), tracking gaps.
 */
function summarize(r: VerifyReport): string {
  const parts: string[] = [`${r.durable} durable of ${r.ops} ops`];
  const detail = (list: unknown[]) =>
    (list as Array<{ seq: number; off: number; len: number; durable: boolean; completed: boolean; first_problems: Array<{ sector: number; found: string }> }>)
      .slice(0, 6)
      .map((o) => `seq ${o.seq} [${o.off}+${o.len}${o.durable ? ', durable' : o.completed ? ', completed' : ', in flight'}]: ` +
        o.first_problems.slice(0, 2).map((p) => `sector ${p.sector} (chunk ${Math.floor(p.sector / CHUNK)}) holds ${p.found}`).join(', '))
      .join('; ');
  if (r.lost.length) parts.push(`${r.lost.length} durable op(s) LOST: ${detail(r.lost)}`);
  if (r.bad.length) parts.push(`${r.bad.length} in-flight op range(s) hold neither old nor new content: ${detail(r.bad)}`);
  if (r.tracking_missing.length) parts.push(`tracking missing for ${JSON.stringify(r.tracking_missing.slice(0, 10))}`);
  if (r.notes.length || r.errors.length) parts.push(`notes ${JSON.stringify(r.notes.slice(0, 5))} errors ${JSON.stringify(r.errors.slice(0, 5))}`);
  return parts.join(' | ');
}

/** waits until the oracle's log has a D (acknowledged durable) line */
async function firstDurable(logFile: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!/^D /m.test(fs.existsSync(logFile) ? fs.readFileSync(logFile, 'latin1') : '')) {
    if (Date.now() > deadline) throw new Error(`the load had nothing acknowledged durable after ${timeoutMs} ms (machine overloaded?)`);
    await sleep(20);
  }
}

/** the 64 KiB chunks named by the first problems of a report */
function problemChunks(r: VerifyReport): number[] {
  const out = new Set<number>();
  for (const o of [...r.lost, ...r.bad] as Array<{ first_problems: Array<{ sector: number }> }>) {
    for (const p of o.first_problems) out.add(Math.floor(p.sector / CHUNK));
  }
  return [...out].sort((a, b) => a - b).slice(0, 16);
}

/**
 * "chunk: data|hole,zero (reads all zero)" for each chunk: NBD block status (nbdinfo --map), and whether the whole
 * chunk reads zeros (a mapped chunk that reads zeros where the old or the new data should be: the mapping became
 * durable before its data was written)
 */
async function allocation(uri: string, chunks: number[], scratch: string): Promise<string> {
  try {
    await tool('nbdcopy', [uri, scratch], 120_000);
    const img = fs.readFileSync(scratch);
    fs.rmSync(scratch, { force: true });
    const zero = (c: number) => img.subarray(c * CHUNK, (c + 1) * CHUNK).every((x) => x === 0);
    const extents = (await tool('nbdinfo', ['--map', uri]))
      .trim()
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .map(([off, len, , ...desc]) => ({ off: Number(off), len: Number(len), desc: desc.join(' ') }));
    return chunks
      .map((c) => `${c}: ${extents.find((e) => c * CHUNK >= e.off && c * CHUNK < e.off + e.len)?.desc ?? '?'}${zero(c) ? ' (reads all zero)' : ''}`)
      .join(', ');
  } catch (err) {
    return `(nbdinfo failed: ${(err as Error).message.slice(0, 200)})`;
  }
}

describe('kill -9 under write load across a chain of difference backups', () => {
  let d: Daemon;
  let work: string;
  let failed = false;
  /** the good streams so far, oldest first: the full backup, then the diffs */
  const chain: string[] = [];
  /** the generation the chain holds through (0 after the full backup) */
  let through = 0;
  const outcomes: Record<string, number> = { 'diff cut mid-stream': 0, 'diff complete, not committed': 0, 'diff committed': 0, 'diff finished before the kill': 0, 'diff killed before its stream': 0 };
  let diffsAfterCrash = 0;
  /** oracle verification failures (reported together at the end) */
  const verifyProblems: string[] = [];

  beforeAll(async () => {
    console.log(`crash-diff.test: TV_CRASH_SEED=${SEED} rounds=${ROUNDS}`);
    work = tempDir('tv-crash-diff-');
    d = await startDaemon({ pool: path.join(work, 'pool'), initArgs: ['--chunk-size', '64KiB'] });
    await cliJson(d, ['volume', 'create', VOL, '--size', String(SIZE)]);
    const fill = path.join(work, 'fill.img');
    fs.writeFileSync(fill, makeContent(SIZE, 12));
    await tool('nbdcopy', ['--flush', fill, d.uri(VOL)], 120_000);
    fs.rmSync(fill);
    const full = path.join(work, 'full.tvb');
    const r = await cliJson<{ currentGeneration: number; records: number }>(d, ['backup', 'full', VOL, '--to', full]);
    expect(r.currentGeneration).toBe(1);
    chain.push(full);
    const info = await volumeInfo(d);
    expect(info.backupChain?.throughGeneration).toBe(0);
  }, 120_000);

  afterAll(async () => {
    if (d) await d.kill();
    if (!failed && work) fs.rmSync(work, { recursive: true, force: true });
  }, 30_000);

  async function expectPoolOk(what: string): Promise<void> {
    const check = await poolCheck(d);
    if (!check.ok || check.problems.length) throw new Error(`pool check after ${what}: ${JSON.stringify(check).slice(0, 6000)}`);
  }

  async function verify(uri: string, logFile: string, tag: string, genmap?: GenMap): Promise<VerifyReport> {
    const args = ['verify', '--uri', uri, '--log', logFile, '--report', path.join(work, `report-${tag}.json`)];
    if (genmap) {
      const gmFile = path.join(work, `genmap-${tag}.json`);
      fs.writeFileSync(gmFile, JSON.stringify(genmap));
      args.push('--genmap', gmFile);
    }
    const v = startOracle(args);
    await waitBounded(v, 120_000, `oracle verify (${tag})`);
    return lastJson(v.stdout()) as unknown as VerifyReport;
  }

  /** the chunks in which the live volume and the restored one differ, with what each holds (for the error) */
  async function explainMismatch(restored: string, genmap: GenMap): Promise<string> {
    const a = path.join(work, 'live.img');
    const b = path.join(work, 'restored.img');
    await tool('nbdcopy', [d.uri(VOL), a], 120_000);
    await tool('nbdcopy', [d.uri(restored), b], 120_000);
    const live = fs.readFileSync(a);
    const back = fs.readFileSync(b);
    const genOf = (c: number) => genmap.map.find((r) => c * CHUNK >= r.offset && c * CHUNK < r.offset + r.length)?.generation ?? 0;
    const bad: string[] = [];
    let count = 0;
    for (let c = 0; c < SIZE / CHUNK; c++) {
      const o = c * CHUNK;
      if (live.subarray(o, o + CHUNK).equals(back.subarray(o, o + CHUNK))) continue;
      count++;
      if (bad.length >= 8) continue;
      let s = o;
      while (live.subarray(s, s + 512).equals(back.subarray(s, s + 512))) s += 512;
      bad.push(`chunk ${c} (offset ${o}, generation ${genOf(c)} in the live map): first differing sector ${s}: live ${sectorOwner(live, s)}, restored ${sectorOwner(back, s)}`);
    }
    return `${count} chunks differ (images kept: ${a}, ${b}):\n  ${bad.join('\n  ')}`;
  }

  async function round(n: number, kind: RoundKind): Promise<string> {
    const tag = `round-${n}`;
    const t0 = Date.now();
    const before = await volumeInfo(d);
    const G = before.generation;
    expect(before.backupChain?.throughGeneration).toBe(through);
    const logFile = path.join(work, `oracle-${tag}.log`);
    // small spans make the oracle's epochs rewrite this round's own durable data (the content an in-flight write
    // must leave, old or new, is then known exactly); large ones change most of the volume
    const span = [16, 32, 64, 128][Math.floor(rnd() * 4)] * MiB;
    const base = span === SIZE ? 0 : Math.floor((rnd() * (SIZE - span)) / CHUNK) * CHUNK + (rnd() < 0.5 ? 512 * Math.floor(rnd() * 128) : 0);
    const o = startOracle(['run', '--uri', d.uri(VOL), '--log', logFile, '--trial', String(n), '--seed', String(Math.floor(rnd() * 2 ** 31)),
      '--generation', String(G), '--chunk', String(CHUNK), '--conns', '4', '--depth', '16', '--base', String(base),
      '--span', String(Math.min(span, SIZE - base)), '--max-seconds', '30']);
    await o.ready;
    // the kill delays count from the first acknowledged-durable write (on a busy machine a FLUSH can take seconds)
    await firstDurable(logFile, 30_000);
    let what = '';
    let killedDiff: { file: string; answered: Reply | undefined } | undefined;
    const oldPid = d.child.pid;
    const loadRunning = () => o.child.exitCode === null && o.child.signalCode === null;
    let runningAtKill = true;
    if (kind === 'load') {
      const delay = 500 + Math.floor(rnd() * 2000);
      await sleep(delay);
      runningAtKill = loadRunning();
      await d.kill();
      what = `kill ${delay} ms into the load`;
    } else if (kind === 'diff-done') {
      const delay = 300 + Math.floor(rnd() * 700);
      await sleep(delay);
      const file = path.join(work, `diff-${n}-under-load.tvb`);
      const r = await cliJson<DiffResult>(d, ['backup', 'diff', VOL, '--to', file]);
      expect(r.generationFrom, 'scope of a diff under load').toBe(through + 1);
      expect(r.generationTo).toBe(G);
      expect(r.currentGeneration).toBe(G + 1);
      chain.push(file);
      through = r.generationTo;
      outcomes['diff finished before the kill']++;
      const after = 200 + Math.floor(rnd() * 1300);
      await sleep(after);
      runningAtKill = loadRunning();
      await d.kill();
      what = `backup diff ${r.generationFrom}..${r.generationTo} under load after ${delay} ms (${r.records} chunks), kill ${after} ms later`;
    } else {
      const delay = 300 + Math.floor(rnd() * 700);
      await sleep(delay);
      const file = path.join(work, `diff-${n}-killed.tvb`);
      // the stream only grows from this estimate (the view is taken later, and the count in k..G only grows)
      const est = await cliJson<{ bytes: number }>(d, ['backup', 'estimate', VOL]);
      const target = Math.max(64 * KiB, Math.floor(est.bytes * (0.1 + 0.6 * rnd())));
      const c = await ControlConnection.open(d.control);
      let answered: Reply | undefined;
      const reply = c.call('backup.diff', { volume: VOL, to: file }).then((r) => (answered = r));
      const deadline = Date.now() + 30_000;
      let size = 0;
      while (answered === undefined && Date.now() < deadline) {
        size = fs.existsSync(file) ? fs.statSync(file).size : 0;
        if (size >= target) break;
        await sleep(1);
      }
      runningAtKill = loadRunning();
      await d.kill();
      await reply;
      c.close();
      killedDiff = { file, answered };
      what = `kill during backup diff (${delay} ms into the load; file ${size} bytes, aimed at ${target} of >= ${est.bytes}${answered ? `, answered ${JSON.stringify(answered).slice(0, 200)}` : ''})`;
    }
    await waitBounded(o, 60_000, 'oracle run');
    const run = lastJson(o.stdout());
    expect(runningAtKill, `the load had ended before the kill: ${JSON.stringify(run)}`).toBe(true);
    expect(Number(run.errors), `server errors before the kill: ${JSON.stringify(run)}`).toBe(0);
    expect(Number(run.durable), 'no write was acknowledged durable before the kill').toBeGreaterThan(0);

    const t1 = Date.now();
    d = await restartDaemon(d, { startTimeoutMs: 60_000 });
    const restartMs = Date.now() - t1;
    expect(d.child.pid).not.toBe(oldPid);
    await expectPoolOk(`the restart of ${tag} (${what})`);
    const vols = (await cliJson<{ volumes: VolumeInfo[] }>(d, ['volume', 'list'])).volumes.map((v) => v.name);
    expect(vols, 'volumes after the restart (no view left behind)').toEqual([VOL]);
    const afterRestart = await volumeInfo(d);

    if (killedDiff) {
      const { file } = killedDiff;
      const committed = (afterRestart.backupChain?.throughGeneration ?? 0) > through;
      const listed = fs.existsSync(file)
        ? (await cliJson<{ files: Array<{ streamBytes: number | null; bytesOnMedium: number | null; complete: boolean | null }> }>(d, ['media', 'list', file])).files[0]
        : undefined;
      const bytes = fs.existsSync(file) ? fs.statSync(file).size : 0;
      const r = await d.cli(['restore', ...[...chain, file].flatMap((f) => ['--from', f]), '--verify-only', '--json']);
      if (committed) {
        // the commit record made it before the kill (its answer did not): the stream must be complete and join the chain
        expect(afterRestart.backupChain?.throughGeneration).toBe(G);
        expect(afterRestart.generation).toBe(G + 1);
        if (r.code !== 0) throw new Error(`${tag}: the chain moved on to ${G} at the kill, but the diff's stream does not restore: ${r.stderr || r.stdout}`);
        chain.push(file);
        through = G;
        outcomes['diff committed']++;
        what += ' -> the diff had committed (stream complete, joins the chain)';
      } else {
        // not committed: the generation the view started is folded back and the chain did not move on
        expect(afterRestart.generation, `generation after a diff killed mid-stream (started in ${G})`).toBe(G);
        expect(afterRestart.backupChain?.throughGeneration).toBe(through);
        if (bytes > 0) expect(d.log(), 'the restart log tells that the view was folded back').toMatch(/folded back/);
        if (r.code === 0) {
          // killed after the trailer was synced, before the commit record: complete and valid, but not needed
          expect(listed?.complete, JSON.stringify(listed)).not.toBe(false);
          expect(bytes).toBe(listed?.streamBytes);
          outcomes['diff complete, not committed']++;
          what += ' -> stream complete but not committed (folded back; not used)';
        } else if (bytes === 0) {
          outcomes['diff killed before its stream']++;
          what += ' -> killed before the stream started; generation folded back';
        } else {
          const msg = (r.stderr || r.stdout).trim();
          if (listed && listed.streamBytes !== null) expect(bytes, `a refused stream that is not cut: ${msg}`).toBeLessThan(listed.streamBytes);
          expect(msg).not.toBe('');
          outcomes['diff cut mid-stream']++;
          what += ` -> cut at ${bytes} of ${listed?.streamBytes ?? '?'} bytes, refused (${msg.split('\n').pop()?.slice(0, 160)}); generation folded back to ${G}`;
        }
      }
      // a refused restore created nothing
      expect((await cliJson<{ volumes: VolumeInfo[] }>(d, ['volume', 'list'])).volumes.map((v) => v.name)).toEqual([VOL]);
    }

    // the diff after the crash: default scope, following on from the chain
    const diffFile = path.join(work, `diff-${n}.tvb`);
    const dr = await cliJson<DiffResult>(d, ['backup', 'diff', VOL, '--to', diffFile]);
    expect(dr.generationFrom, 'default scope after the crash').toBe(through + 1);
    expect(dr.generationTo).toBe(afterRestart.generation);
    chain.push(diffFile);
    through = dr.generationTo;
    diffsAfterCrash++;
    const genmap = await cliJson<GenMap>(d, ['volume', 'generations', VOL, '--map']);
    fs.writeFileSync(path.join(work, `genmap-${tag}-after-diff.json`), JSON.stringify(genmap));

    // full + every good diff so far = the live volume, byte for byte
    const restored = `r${n}`;
    const rr = await cliJson<{ streams: unknown[]; records: number }>(d, ['restore', ...chain.flatMap((f) => ['--from', f]), '--as', restored]);
    expect(rr.streams.length).toBe(chain.length);
    try {
      await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', d.uri(VOL), d.uri(restored)], 120_000);
    } catch (err) {
      const detail = await explainMismatch(restored, genmap).catch((e) => `(could not explain: ${(e as Error).message})`);
      throw new Error(`${tag} (${what}): the chain of ${chain.length} streams does not restore to the live volume: ` +
        `${(err as Error).message.slice(0, 300)}\n${detail}\nchain: ${chain.map((f) => path.basename(f)).join(', ')}`);
    }
    // the round's acknowledged-durable writes are in the restored volume; the live map tracks every change. A
    // failure here is noted and the chain goes on (the restore already equals the live volume), so that one run
    // tells about every round; the test fails at the end.
    const rep = await verify(d.uri(restored), logFile, `${tag}-restored`);
    if (!rep.ok) verifyProblems.push(`${tag} (${what}): oracle verify of the RESTORED volume: ${summarize(rep)}`);
    const live = await verify(d.uri(VOL), logFile, `${tag}-live`, genmap);
    if (!live.ok) {
      verifyProblems.push(`${tag}: oracle verify of the LIVE volume (generation map after the diff): ${summarize(live)}` +
        ` | block status of those chunks in the live volume: ${await allocation(d.uri(VOL), problemChunks(live), path.join(work, 'scratch.img'))}`);
    }
    await cliJson(d, ['volume', 'delete', restored]);
    await expectPoolOk(`${tag}: diff, restore and delete`);

    return (
      `${tag} [${kind}]: ${what} | oracle ${run.issued} issued, ${run.durable} durable, ${Math.round(Number(run.bytes_written) / MiB)} MiB, ` +
      `${run.trims} trims, ${run.zeroes} zeroes | restart ${restartMs} ms, pool check ok | diff ${dr.generationFrom}..${dr.generationTo}: ` +
      `${dr.records} chunks | chain of ${chain.length} restored = live; ${rep.durable} durable ops verified in it, ` +
      `${live.required_chunks} chunks tracked${rep.ok && live.ok ? '' : ' | ORACLE VERIFY FAILED (see the end)'} | ${Date.now() - t0} ms`
    );
  }

  it(`${ROUNDS} kill -9s under load (some mid-diff): full + all good diffs restore to the live volume every time`, async () => {
    try {
      let n = 1;
      for (; n <= ROUNDS; n++) console.log(await round(n, PLAN[(n - 1) % PLAN.length]));
      // at least one diff really cut mid-stream (a kill that came too late gets another try)
      for (let extra = 0; outcomes['diff cut mid-stream'] === 0 && extra < 2; extra++, n++) console.log(await round(n, 'diff-cut'));
      console.log(`outcomes: ${JSON.stringify(outcomes)}; ${diffsAfterCrash} diffs after a crash; chain of ${chain.length} streams`);
      expect(outcomes['diff cut mid-stream'], 'no kill landed in the middle of a diff').toBeGreaterThan(0);
      expect(diffsAfterCrash).toBeGreaterThanOrEqual(3);
      expect(verifyProblems, `the oracle found wrong content (work dir: ${work}):\n${verifyProblems.join('\n')}`).toEqual([]);
    } catch (err) {
      failed = true;
      const msg = err instanceof Error ? err.message : String(err);
      throw new Error(`crash-diff failed (TV_CRASH_SEED=${SEED}; work dir kept: ${work})\n${msg}`);
    }
  }, 300_000);
});
