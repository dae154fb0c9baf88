/**
 * Power cut under FUA/FLUSH writes: ../shared/tools/powerloss/powerloss-test runs `thinvault serve` inside a qemu
 * TCG guest with the pool on a virtio disk, writes acknowledged blocks from the host, SIGKILLs qemu (all guest RAM,
 * page cache included, is gone), boots again on the same disk and checks every acknowledged write (see its README).
 *
 *  - the default disk model (no volatile write cache) and `--write-cache volatile` (every write the guest did not
 *    flush is lost at the cut), 3 trials each, with the harness's crash-oracle.py (64 KiB writes, FUA or FLUSH);
 *  - 2 more trials with the volatile model driven by test/tools/load-oracle.py through
 *    test/tools/powerloss-load-oracle.py: concurrent pipelined writes of 4 KiB..1 MiB, trims and write-zeroes, FUA,
 *    FLUSH with multi-conn semantics (what crash-oracle.py does not cover).
 *
 * The project image: the harness copies --project into a read-only ext4 image. Instead of the whole work tree
 * (sources, tests, .git, dev dependencies: typescript, vitest, esbuild, rollup ...) the test stages only what
 * `thinvault serve` needs at run time: dist/, build/Release/thinvault_native.node (dist/native/index.js loads it by
 * the relative path ../../build/Release/), package.json, and the production dependencies that the code loads
 * (the dependency closure of package.json "dependencies" without the build-time-only node-gyp and
 * node-addon-api), about 11 MB and 1,500 files instead of 80 MB. The staged copy is checked on the host first.
 *
 * Needs qemu-system-x86_64, a kernel image in /boot with modules, busybox-static, e2fsprogs, cpio,
 * /usr/bin/python3 with the nbd module, nbdkit (volatile model). Skips locally without them; fails with CI=true.
 * Reproduce cut times with TV_POWERLOSS_SEED=<seed> (the harness's --seed).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ROOT, SHARED, PYTHON, IN_CI, childExit, tempDir, ensureBuilt, missingVmPrerequisites } from './helpers/daemon.js';

const POWERLOSS = process.env.POWERLOSS_TEST ?? path.join(SHARED, 'tools/powerloss/powerloss-test');
const LOAD_ADAPTER = path.join(ROOT, 'test/tools/powerloss-load-oracle.py');
const SEED = Number(process.env.TV_POWERLOSS_SEED ?? Math.floor(Math.random() * 1_000_000));
const TRIALS = Number(process.env.TV_POWERLOSS_TRIALS ?? 3);
/** packages in "dependencies" that only build the addon at install time; nothing imports them at run time */
const BUILD_ONLY = new Set(['node-gyp', 'node-addon-api']);

function missingPrerequisites(): string[] {
  const missing = missingVmPrerequisites(POWERLOSS, ['qemu-system-x86_64', 'busybox', 'mke2fs', 'cpio', 'nbdkit']);
  try {
    execFileSync(PYTHON, ['-c', 'import nbd'], { stdio: 'ignore' });
  } catch {
    missing.push(`${PYTHON} with the nbd module (python3-libnbd)`);
  }
  return missing;
}

const missing = missingPrerequisites();
const skipLocally = missing.length > 0 && !IN_CI;
if (skipLocally) console.warn(`powerloss.test: SKIPPED, missing ${missing.join(', ')} (see the powerloss README; with CI=true this fails)`);
const vmIt = skipLocally ? it.skip : it;

/** The run-time dependency closure of the project: directories under ROOT (node_modules/x, node_modules/a/node_modules/b). */
function runtimePackages(): string[] {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
  const found = new Set<string>();
  const resolve = (name: string, fromDir: string): string => {
    // Node's lookup: node_modules/<name> in fromDir and each parent, up to the project root
    for (let dir = fromDir; ; dir = path.dirname(dir)) {
      const candidate = path.join(dir, 'node_modules', name);
      if (fs.existsSync(path.join(candidate, 'package.json'))) return candidate;
      if (dir === ROOT || dir === path.dirname(dir)) throw new Error(`cannot resolve ${name} from ${fromDir} (run npm ci)`);
    }
  };
  const queue: Array<[string, string]> = Object.keys(pkg.dependencies ?? {})
    .filter((n) => !BUILD_ONLY.has(n))
    .map((n) => [n, ROOT]);
  for (let i = 0; i < queue.length && i < 10_000; i++) {
    const [name, from] = queue[i];
    const dir = resolve(name, from);
    if (found.has(dir)) continue;
    found.add(dir);
    const p = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as {
      dependencies?: Record<string, string>;
      optionalDependencies?: Record<string, string>;
    };
    for (const dep of Object.keys(p.dependencies ?? {})) queue.push([dep, dir]);
    for (const dep of Object.keys(p.optionalDependencies ?? {})) {
      try {
        resolve(dep, dir);
        queue.push([dep, dir]);
      } catch {
        // an optional dependency that is not installed on this platform
      }
    }
  }
  return [...found].map((d) => path.relative(ROOT, d)).sort();
}

function stageProject(stage: string): { files: number; bytes: number } {
  const copy = (rel: string) => fs.cpSync(path.join(ROOT, rel), path.join(stage, rel), { recursive: true, dereference: true });
  copy('dist');
  copy('package.json');
  copy('build/Release/thinvault_native.node');
  for (const rel of runtimePackages()) {
    // copy the package without its own nested node_modules (those are in the closure when they are needed)
    fs.cpSync(path.join(ROOT, rel), path.join(stage, rel), {
      recursive: true,
      dereference: true,
      filter: (src) => !path.relative(path.join(ROOT, rel), src).split(path.sep).includes('node_modules'),
    });
  }
  let files = 0;
  let bytes = 0;
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else {
        files++;
        bytes += fs.statSync(p).size;
      }
    }
  };
  walk(stage);
  return { files, bytes };
}

// In the guest (busybox sh in /app, the staged project, read-only). The setup boot creates the pool and the
// volume with a daemon on a Unix socket, then stops it with SIGTERM (a clean shutdown).
const SETUP =
  'node dist/cli/main.js init {DATA}/pool && { node dist/cli/main.js serve {DATA}/pool --socket /tmp/setup.sock & p=$!; ' +
  'i=0; while [ ! -S {DATA}/pool/control.sock ] && [ $i -lt 240 ]; do sleep 0.5; i=$((i+1)); done; ' +
  'node dist/cli/main.js volume create disk --size 256MiB --pool {DATA}/pool; r=$?; kill $p; wait $p; exit $r; }';
// The only non-loopback listener in the test suite: 0.0.0.0:10809 *inside* the qemu guest, whose network is
// libslirp with restrict=on (nothing leaves the guest); the host reaches it only through qemu's hostfwd on
// 127.0.0.1. The harness requires the server to listen on the guest's port 10809.
const START = 'node dist/cli/main.js serve {DATA}/pool --listen 0.0.0.0:{PORT}';

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

async function powerloss(args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<RunResult> {
  const t0 = Date.now();
  const child = spawn(POWERLOSS, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-200_000)));
  const exited = childExit(child);
  // on timeout: TERM (the harness's trap kills qemu, nbdkit and the oracle by their PIDs), then KILL
  const term = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
  const kill = setTimeout(() => child.kill('SIGKILL'), timeoutMs + 20_000);
  const { code, signal } = await exited;
  clearTimeout(term);
  clearTimeout(kill);
  return { code, signal, stdout, stderr, ms: Date.now() - t0 };
}

function assertNoLoss(r: RunResult, what: string, trials: number): number {
  const detail = `${what} (TV_POWERLOSS_SEED=${SEED}): exit ${r.code ?? r.signal}\n--- stdout ---\n${r.stdout}\n--- stderr (tail) ---\n${r.stderr.slice(-8000)}`;
  expect(r.code, detail).toBe(0);
  const summary = /powerloss: (\d+) trials, (\d+) with lost acknowledged writes \((\d+) writes acknowledged\)/.exec(r.stdout);
  expect(summary, detail).not.toBeNull();
  expect(Number(summary![1]), detail).toBe(trials);
  expect(Number(summary![2]), detail).toBe(0);
  expect(Number(summary![3]), detail).toBeGreaterThan(0);
  const trialLines = r.stdout.split('\n').filter((l) => l.startsWith('trial '));
  expect(trialLines.length, detail).toBe(trials);
  for (const l of trialLines) {
    expect(l, detail).toMatch(/: PASS /);
    expect(l, detail).toMatch(/verified \d+ acknowledged blocks, 0 lost/);
  }
  return Number(summary![3]);
}

describe('power loss (qemu guest, SIGKILL of qemu) under FUA/FLUSH writes', () => {
  let stage: string;
  let workdir: string;

  beforeAll(async () => {
    if (skipLocally) return;
    await ensureBuilt();
    stage = tempDir('tv-powerloss-project-');
    workdir = tempDir('tv-powerloss-runs-');
    const t0 = Date.now();
    const { files, bytes } = stageProject(stage);
    // the staged copy must run on its own: load every module, the addon, and create a pool
    const scratch = tempDir('tv-powerloss-check-');
    execFileSync(process.execPath, [path.join(stage, 'dist/cli/main.js'), 'init', path.join(scratch, 'pool')], { cwd: stage, stdio: 'pipe' });
    fs.rmSync(scratch, { recursive: true, force: true });
    console.log(`powerloss: staged project ${stage}: ${files} files, ${(bytes / 1024 / 1024).toFixed(1)} MiB (${Date.now() - t0} ms); seed ${SEED}`);
  }, 120_000);

  afterAll(() => {
    for (const d of [stage, workdir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  const common = () => [
    '--project', stage, '--export', 'disk', '--setup', SETUP, '--start', START, '--seed', String(SEED),
    '--write-time', '2-6', '--timeout', '300', '--workdir', workdir,
  ];

  vmIt(`default disk model (no volatile cache): ${TRIALS} power cuts, 0 acknowledged writes lost`, async () => {
    if (missing.length) throw new Error(`CI=true and the powerloss prerequisites are missing: ${missing.join(', ')}`);
    const r = await powerloss([...common(), '--trials', String(TRIALS)], {}, 900_000);
    const acked = assertNoLoss(r, 'powerloss default model', TRIALS);
    console.log(`powerloss default model: ${acked} acknowledged writes, 0 lost, ${(r.ms / 1000).toFixed(0)} s\n${r.stdout.trim()}`);
  }, 960_000);

  vmIt(`volatile disk write cache: ${TRIALS} power cuts, 0 acknowledged writes lost`, async () => {
    if (missing.length) throw new Error(`CI=true and the powerloss prerequisites are missing: ${missing.join(', ')}`);
    const r = await powerloss([...common(), '--trials', String(TRIALS), '--write-cache', 'volatile'], {}, 900_000);
    const acked = assertNoLoss(r, 'powerloss volatile cache', TRIALS);
    console.log(`powerloss volatile cache: ${acked} acknowledged writes, 0 lost, ${(r.ms / 1000).toFixed(0)} s\n${r.stdout.trim()}`);
  }, 960_000);

  vmIt('volatile disk write cache, concurrent load oracle (trims, zeroes, pipelined multi-conn writes): 2 power cuts', async () => {
    if (missing.length) throw new Error(`CI=true and the powerloss prerequisites are missing: ${missing.join(', ')}`);
    const r = await powerloss([...common(), '--trials', '2', '--write-cache', 'volatile'],
      { POWERLOSS_ORACLE: LOAD_ADAPTER, POWERLOSS_LOAD_SEED: String(SEED) }, 600_000);
    const acked = assertNoLoss(r, 'powerloss volatile cache, load oracle', 2);
    console.log(`powerloss volatile cache, load oracle: ${acked} acknowledged operations, 0 lost, ${(r.ms / 1000).toFixed(0)} s\n${r.stdout.trim()}`);
  }, 660_000);
});
