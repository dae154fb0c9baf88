/**
 * kill -9 of the real daemon (`node dist/cli/main.js serve`) under concurrent NBD load, many times, then a restart
 * on the same pool with no clean-up, and an exact check of what survived:
 *
 *  - test/tools/load-oracle.py drives 4 connections x 16 pipelined requests (writes 4 KiB..1 MiB, many not aligned
 *    to the 64 KiB chunk, trims, write-zeroes, FUA, a FLUSH every 20-60 requests per connection) and logs, with
 *    fsync, what it issued and what the server acknowledged durable (see the oracle's header for the format);
 *  - after the restart it checks that (1) every acknowledged-durable write reads back exactly and trimmed/zeroed
 *    ranges read zeros, nothing in flight left a torn or misplaced sector; (2) `pool check` is ok; (3) tracking
 *    never under-reports: every chunk whose content changed since the trial's advance-generation carries a
 *    generation >= that one in `volume generations --map`; (4) the pool takes new writes.
 *
 * Reproduce a failure with the seed it prints: TV_CRASH_SEED=<seed> npx vitest run test/crash.test.ts
 * (TV_CRASH_TRIALS=N changes the number of load trials; the work directory of a failing trial is kept, with the
 * pool, the oracle logs, the generation maps and the full verify reports). Kill times depend on the machine, so a
 * seed repeats the workload and the kill delays, not the exact interleaving.
 * To check that the test still catches bugs, point it at a deliberately broken build: TV_TEST_CLI=/copy/dist/cli/main.js
 * (checked with three mutants of dist/pool/records.js replay: marks not replayed -> tracking_missing in trial 2;
 * unmaps not replayed -> the daemon refuses the pool, ECORRUPT; single-chunk maps not replayed -> lost writes).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mulberry32 } from './pool-helpers.js';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  startDaemon,
  restartDaemon,
  cliJson,
  poolCheck,
  childExit,
  tempDir,
  tool,
  CLI,
  type Daemon,
} from './helpers/daemon.js';
import { lastJson, startOracle, waitBounded } from './helpers/load-oracle.js';
import { ControlConnection } from './helpers/control-connection.js';

const MiB = 1024 * 1024;
const VOLUME = 'load';
const VOLUME_SIZE = 512 * MiB;
const CHUNK = 64 * 1024;
const SEED = Number(process.env.TV_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
const TRIALS = Number(process.env.TV_CRASH_TRIALS ?? 8);

// every random choice of the test (kill delays, oracle seeds) comes from SEED
const rnd = mulberry32(SEED);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


interface VerifyReport {
  ok: boolean;
  lost: unknown[];
  bad: unknown[];
  tracking_missing: unknown[];
  errors: string[];
  notes: string[];
  durable: number;
  ops: number;
  checked_bytes: number;
  required_chunks?: number;
}

async function verifyTrial(d: Daemon, work: string, tag: string, logFile: string): Promise<VerifyReport> {
  const gm = await cliJson(d, ['volume', 'generations', VOLUME, '--map']);
  const gmFile = path.join(work, `genmap-${tag}.json`);
  fs.writeFileSync(gmFile, JSON.stringify(gm));
  const v = startOracle(['verify', '--uri', d.uri(VOLUME), '--log', logFile, '--genmap', gmFile, '--report', path.join(work, `report-${tag}.json`)]);
  await waitBounded(v, 180_000, 'oracle verify');
  return lastJson(v.stdout()) as unknown as VerifyReport;
}

/**
 * Starts `serve` on the crashed pool and SIGKILLs it (by its PID) after `ms`, typically while it is still recovering;
 * the next start must recover from that as well.
 */
async function killDuringRecovery(d: Daemon, ms: number): Promise<string> {
  const child = spawn(process.execPath, [CLI, 'serve', d.pool, '--socket', d.nbdSocket], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr!.setEncoding('utf8').on('data', (x: string) => (log = (log + x).slice(-20_000)));
  const exited = childExit(child);
  await sleep(ms);
  const wasRunning = child.exitCode === null && child.signalCode === null;
  child.kill('SIGKILL');
  await exited;
  if (!wasRunning) throw new Error(`serve exited by itself during recovery (${child.exitCode}):\n${log}`);
  const opened = /"msg":"(pool recovered|pool opened)/.test(log);
  return ` | 2nd kill -9 ${ms} ms into the restart (${opened ? 'after' : 'before'} the pool was open)`;
}

/** (4): the pool still takes writes after the restart, and they read back */
async function newWritesWork(d: Daemon, offset: number): Promise<void> {
  await tool('qemu-io', ['-f', 'raw', d.uri(VOLUME), '-c', `write -P 0x5a ${offset} 192k`, '-c', 'flush', '-c', `read -P 0x5a ${offset} 192k`]);
}

function describeFailure(tag: string, work: string, parts: Record<string, unknown>): string {
  return `${tag} failed (TV_CRASH_SEED=${SEED}; work dir kept: ${work})\n${JSON.stringify(parts, null, 1).slice(0, 12_000)}`;
}

describe('kill -9 under concurrent write load, then restart and verify', () => {
  let d: Daemon;
  let work: string;
  let failed = false;

  beforeAll(async () => {
    console.log(`crash.test: TV_CRASH_SEED=${SEED} trials=${TRIALS}`);
    work = tempDir('tv-crash-');
    d = await startDaemon({ pool: path.join(work, 'pool'), initArgs: ['--chunk-size', '64KiB'] });
    await cliJson(d, ['volume', 'create', VOLUME, '--size', String(VOLUME_SIZE)]);
  }, 60_000);

  afterAll(async () => {
    if (d) await d.kill();
    if (!failed && work) fs.rmSync(work, { recursive: true, force: true });
  }, 30_000);

  /** one trial: advance, load, kill at a random moment, restart, verify. Returns a line for the log. */
  async function trial(n: number, opts: { duringLoad?: (d: Daemon) => Promise<() => Promise<Record<string, unknown>>> } = {}) {
    try {
      return await trialBody(n, opts);
    } catch (err) {
      failed = true;
      const msg = (err as Error).message;
      throw new Error(msg.includes('TV_CRASH_SEED') ? msg : `trial ${n} (TV_CRASH_SEED=${SEED}; work dir kept: ${work}): ${msg}`);
    }
  }

  async function trialBody(n: number, opts: { duringLoad?: (d: Daemon) => Promise<() => Promise<Record<string, unknown>>> }) {
    const tag = `trial-${n}`;
    const t0 = Date.now();
    const adv = await cliJson<{ previous: number; current: number }>(d, ['volume', 'advance-generation', VOLUME]);
    const G = adv.current;
    expect(G).toBe(adv.previous + 1);
    const logFile = path.join(work, `oracle-${tag}.log`);
    const oracleSeed = Math.floor(rnd() * 2 ** 31);
    // each epoch of the oracle walks `span` bytes from `base`: small spans rewrite (durable) data of the same trial
    // many times, large ones keep allocating; the base moves so that trials hit fresh and old space alike
    const span = [64, 128, 256, 512][Math.floor(rnd() * 4)] * MiB;
    const base = Math.floor((rnd() * (VOLUME_SIZE - span)) / CHUNK) * CHUNK + (rnd() < 0.5 ? 512 * Math.floor(rnd() * 128) : 0);
    const o = startOracle(['run', '--uri', d.uri(VOLUME), '--log', logFile, '--trial', String(n), '--seed', String(oracleSeed),
      '--generation', String(G), '--chunk', String(CHUNK), '--conns', '4', '--depth', '16', '--base', String(base),
      '--span', String(span), '--max-seconds', '60']);
    await o.ready;
    const side = opts.duringLoad ? await opts.duringLoad(d) : undefined;
    const delay = 500 + Math.floor(rnd() * 2500);
    await sleep(delay);
    const stillRunning = o.child.exitCode === null && o.child.signalCode === null;
    const oldPid = d.child.pid;
    await d.kill(); // SIGKILL of the daemon's PID while the load runs
    await waitBounded(o, 60_000, 'oracle run');
    const sideResult = side ? await side() : undefined;
    const run = lastJson(o.stdout());
    // every third trial: a second kill -9 while the restarted daemon is still opening/recovering the pool
    let recoveryKill = '';
    if (n % 3 === 0) recoveryKill = await killDuringRecovery(d, 100 + Math.floor(rnd() * 300));
    const t1 = Date.now();
    const restartedFrom = d;
    d = await restartDaemon(restartedFrom, { startTimeoutMs: 60_000 });
    const restartMs = Date.now() - t1;
    expect(d.child.pid).not.toBe(oldPid);
    const report = await verifyTrial(d, work, tag, logFile);
    const check = await poolCheck(d);
    const problems: Record<string, unknown> = {};
    if (!stillRunning) problems.loadEndedBeforeKill = run;
    if ((await o.done).code !== 0) problems.oracleExit = { code: (await o.done).code, stderr: o.stderr().slice(-3000) };
    if (Number(run.errors) > 0) problems.serverErrorsBeforeKill = run;
    if (!report.ok) problems.verify = report;
    if (!check.ok) problems.poolCheck = check;
    if (!/recover/i.test(d.log())) problems.recoveryNotLogged = d.log().slice(0, 3000);
    if (Object.keys(problems).length) {
      failed = true;
      throw new Error(describeFailure(tag, work, { trial: n, oracleSeed, base, span, killAfterMs: delay, recoveryKill, generation: G, run, ...problems, side: sideResult }));
    }
    await newWritesWork(d, (n % 64) * 4 * MiB + 12_288);
    const line =
      `${tag}: span ${span / MiB} MiB @${base}, kill after ${delay} ms: ${run.issued} issued, ${run.completed} completed, ${run.durable} durable ` +
      `(${Math.round(Number(run.bytes_written) / MiB)} MiB, ${run.flushes} flushes, ${run.fua} FUA, ${run.trims} trims, ` +
      `${run.zeroes} zeroes, ${run.epochs_done} epoch(s) done)${recoveryKill} | restart ${restartMs} ms | verified ${report.durable} durable ops, ` +
      `${Math.round(report.checked_bytes / MiB)} MiB read, ${report.required_chunks} chunks must be tracked | pool check ok | ${Date.now() - t0} ms` +
      (sideResult ? ` | control: ${JSON.stringify(sideResult)}` : '');
    console.log(line);
    return { run, report, side: sideResult };
  }

  it(`survives ${TRIALS} kill -9s under load: acknowledged data intact, metadata consistent, tracking complete`, async () => {
    for (let n = 1; n <= TRIALS; n++) await trial(n);
  }, 900_000);

  it('survives a kill -9 during volume create/resize/delete traffic on the control socket (plus the NBD load)', async () => {
    const ctl = new ControlTraffic();
    const { side } = await trial(100, {
      duringLoad: async (dd) => {
        ctl.start(dd);
        return async () => ctl.stopped();
      },
    });
    expect(ctl.completed()).toBeGreaterThan(0);
    expect(ctl.dataWrites.ok).toBeGreaterThan(0);
    expect(ctl.history.filter((h) => h.state === 'error')).toEqual([]);
    // every volume is where the acknowledged history says (in-flight requests may or may not have happened)
    const { volumes } = await cliJson<{ volumes: Array<{ name: string; size: number }> }>(d, ['volume', 'list']);
    const actual = new Map(volumes.filter((v) => v.name !== VOLUME).map((v) => [v.name, v.size]));
    const wrong: string[] = [];
    for (const [name, allowed] of ctl.allowedFinalStates()) {
      const got = actual.has(name) ? actual.get(name)! : 'absent';
      if (!allowed.has(got)) wrong.push(`${name}: ${got}, allowed ${[...allowed].join(' | ')}`);
      actual.delete(name);
    }
    for (const name of actual.keys()) wrong.push(`${name}: exists but was never created`);
    if (wrong.length) {
      failed = true;
      throw new Error(describeFailure('control trial', work, { wrong, history: ctl.history, side }));
    }
    // clean up what is left, then check that a new volume never shows old data of deleted ones
    for (const v of volumes) if (v.name !== VOLUME) await cliJson(d, ['volume', 'delete', v.name, '--force']);
    expect(await poolCheck(d)).toMatchObject({ ok: true, problems: [] });
    await cliJson(d, ['volume', 'create', 'fresh', '--size', '64MiB']);
    const u = d.uri('fresh');
    // partial writes into new chunks: the rest of each chunk must read zeros, not somebody's old bytes
    await tool('qemu-io', ['-f', 'raw', u, '-c', 'write -P 0x11 4k 4k', '-c', 'write -P 0x22 1092k 8k', '-c', 'flush']);
    await tool('qemu-io', ['-f', 'raw', u, '-c', 'read -P 0 0 4k', '-c', 'read -P 0x11 4k 4k', '-c', 'read -P 0 8k 56k',
      '-c', 'read -P 0 1024k 68k', '-c', 'read -P 0x22 1092k 8k', '-c', 'read -P 0 1100k 52k', '-c', 'read -P 0 2M 62M']);
    await cliJson(d, ['volume', 'delete', 'fresh']);
    expect(await poolCheck(d)).toMatchObject({ ok: true, problems: [] });
  }, 300_000);

  it('survives a kill -9 while idle right after writes that were never flushed', async () => {
    const adv = await cliJson<{ current: number }>(d, ['volume', 'advance-generation', VOLUME]);
    const logFile = path.join(work, 'oracle-idle.log');
    const o = startOracle(['run', '--uri', d.uri(VOLUME), '--log', logFile, '--trial', '200', '--seed', String(Math.floor(rnd() * 2 ** 31)),
      '--generation', String(adv.current), '--chunk', String(CHUNK), '--no-flush', '--max-ops', '600', '--max-seconds', '60']);
    await o.ready;
    await waitBounded(o, 90_000, 'oracle run (no flush)');
    const run = lastJson(o.stdout());
    expect(run.errors, JSON.stringify(run)).toBe(0);
    expect(run.completed).toBe(run.issued);
    // every request answered, nothing flushed: kill the idle daemon at once
    await d.kill();
    d = await restartDaemon(d, { startTimeoutMs: 60_000 });
    const report = await verifyTrial(d, work, 'idle', logFile);
    const check = await poolCheck(d);
    if (!report.ok || !check.ok) {
      failed = true;
      throw new Error(describeFailure('idle kill', work, { run, report, check }));
    }
    await newWritesWork(d, 300 * MiB + 512);
    console.log(`idle kill: ${run.issued} unflushed requests (${Math.round(Number(run.bytes_written) / MiB)} MiB) | verified, ${report.required_chunks} chunks must be tracked | pool check ok`);
  }, 300_000);
});

// ------------------------------------------------------------------------------------------------------------------

type VolState = number | 'absent';
interface CtlRecord {
  stream: number;
  name: string;
  cmd: string;
  target: VolState;
  state: 'sent' | 'ok' | 'error';
  error?: string;
}

/**
 * Two sequential NDJSON streams on the control socket, each cycling through create -> write (qemu-io) -> resize
 * -> resize -> delete of its own volumes, recording every request and whether it was answered. After the crash,
 * `allowedFinalStates` says for each volume what may be there: the result of the last acknowledged request, or
 * of the one in flight.
 */
class ControlTraffic {
  history: CtlRecord[] = [];
  dataWrites = { ok: 0, failed: 0 };
  private running = false;
  private loops: Promise<void>[] = [];

  start(d: Daemon): void {
    this.running = true;
    for (let s = 0; s < 2; s++) this.loops.push(this.loop(d, s));
  }

  async stopped(): Promise<Record<string, unknown>> {
    this.running = false;
    await Promise.all(this.loops);
    return {
      requests: this.history.length,
      acked: this.completed(),
      inFlight: this.history.filter((h) => h.state === 'sent').length,
      errors: this.history.filter((h) => h.state === 'error').map((h) => `${h.cmd} ${h.name}: ${h.error}`),
      dataWrites: this.dataWrites,
    };
  }

  completed(): number {
    return this.history.filter((h) => h.state === 'ok').length;
  }

  allowedFinalStates(): Map<string, Set<VolState>> {
    const out = new Map<string, Set<VolState>>();
    for (const h of this.history) {
      let allowed = out.get(h.name) ?? new Set<VolState>(['absent']);
      if (h.state === 'ok') allowed = new Set([h.target]);
      else if (h.state === 'sent') allowed.add(h.target);
      out.set(h.name, allowed);
    }
    return out;
  }

  private async loop(d: Daemon, stream: number): Promise<void> {
    const conn = await ControlConnection.open(d.control).catch(() => undefined);
    if (!conn) return;
    try {
      for (let k = 0; this.running && k < 10_000; k++) {
        const name = `ct-${stream}-${k}`;
        const size = (1 + Math.floor(rnd() * 16)) * MiB;
        if (!(await this.request(conn, stream, name, 'volume.create', { name, size }, size))) return;
        // some data, so that deletes free real chunks (qemu-io connects, writes, flushes, disconnects)
        try {
          await tool('qemu-io', ['-f', 'raw', d.uri(name), '-c', `write -P 0x${(0x30 + (k % 64)).toString(16)} 0 ${Math.min(size, 2 * MiB)}`], 10_000);
          this.dataWrites.ok++;
        } catch {
          this.dataWrites.failed++;
          if (!this.running || conn.dead) return;
        }
        const bigger = size + (1 + Math.floor(rnd() * 8)) * MiB;
        if (!(await this.request(conn, stream, name, 'volume.resize', { name, size: bigger }, bigger))) return;
        const smaller = Math.max(MiB, bigger - (1 + Math.floor(rnd() * 4)) * MiB + 512 * Math.floor(rnd() * 8));
        if (!(await this.request(conn, stream, name, 'volume.resize', { name, size: smaller }, smaller))) return;
        if (!(await this.request(conn, stream, name, 'volume.delete', { name, force: true }, 'absent'))) return;
      }
    } finally {
      conn.close();
    }
  }

  /** false when the daemon is gone (the request stays 'sent': it may or may not have happened) */
  private async request(conn: ControlConnection, stream: number, name: string, cmd: string, args: object, target: VolState): Promise<boolean> {
    if (conn.dead) return false; // never sent: not in the history
    const rec: CtlRecord = { stream, name, cmd, target, state: 'sent' };
    this.history.push(rec);
    const reply = await conn.call(cmd, args, undefined, 30_000);
    if (reply === undefined) return false;
    if (reply.ok) rec.state = 'ok';
    else {
      rec.state = 'error';
      rec.error = JSON.stringify(reply.error);
      return false;
    }
    return true;
  }
}

