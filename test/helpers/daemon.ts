/**
 * Test harness for the real product: runs `node dist/cli/main.js ...` as a child process (the same binary a
 * user runs), on a temporary pool, with NBD on a Unix socket in the temp dir. Stops only what it started.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
export const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
/** ../shared beside the checkout (CI clones main next to it): the nbd-vm and powerloss tools live there */
export const SHARED = path.resolve(ROOT, '../shared');
/** TV_TEST_CLI points the harness at another build (e.g. a deliberately broken copy, to check that a test catches it) */
export const CLI = process.env.TV_TEST_CLI ?? path.join(ROOT, 'dist/cli/main.js');

/** Build dist/ once per test process if it is missing or older than src/. */
let built = false;
export async function ensureBuilt(): Promise<void> {
  if (built) return;
  const newest = (dir: string): number =>
    fs.readdirSync(dir, { withFileTypes: true }).reduce((m, e) => {
      const p = path.join(dir, e.name);
      return Math.max(m, e.isDirectory() ? newest(p) : fs.statSync(p).mtimeMs);
    }, 0);
  const distTime = fs.existsSync(CLI) ? fs.statSync(CLI).mtimeMs : 0;
  if (distTime < newest(path.join(ROOT, 'src'))) {
    await execFileP('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: ROOT });
  }
  built = true;
}

export function tempDir(prefix = 'tv-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI to completion; never throws for a non-zero exit (the result says). */
export async function cli(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  try {
    const { stdout, stderr } = await execFileP(process.execPath, [CLI, ...args], {
      timeout: opts.timeoutMs ?? 30_000,
      env: { ...process.env, ...opts.env },
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) };
  }
}

/** Runs an external tool (nbdinfo, qemu-io, ...) and returns its output; throws with stderr on failure. */
export async function tool(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { timeout: timeoutMs, maxBuffer: 256 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    // qemu-io prints "write failed: ..." on stdout, libnbd tools on stderr: keep both
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${[e.stdout, e.stderr].filter(Boolean).join('\n') || e.message}`);
  }
}

function waitForSocket(socketPath: string, child: ChildProcess, log: () => string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      if (child.exitCode !== null || child.signalCode !== null) {
        reject(new Error(`daemon exited (${child.exitCode ?? child.signalCode}) before listening:\n${log()}`));
        return;
      }
      const s = net.createConnection(socketPath);
      s.once('connect', () => {
        s.destroy();
        resolve();
      });
      s.once('error', () => {
        s.destroy();
        if (Date.now() > deadline) reject(new Error(`daemon did not listen on ${socketPath}:\n${log()}`));
        else setTimeout(attempt, 50);
      });
    };
    attempt();
  });
}

export interface Daemon {
  pool: string;
  nbdSocket: string;
  control: string;
  child: ChildProcess;
  /** everything the daemon wrote to stderr (pino JSON lines) */
  log(): string;
  uri(exportName: string): string;
  /** runs a client subcommand against this daemon */
  cli(args: string[]): Promise<CliResult>;
  /** SIGTERM and wait for a clean exit */
  stop(): Promise<number | null>;
  /**
   * wait for the daemon to exit by itself (after `thinvault stop`); a SIGTERM then could land in the instant
   * the process is already exiting, when Node has put the default signal action back
   */
  waitExit(): Promise<number | null>;
  /** SIGKILL and wait */
  kill(): Promise<void>;
}

export interface StartOptions {
  pool?: string;
  init?: boolean;
  initArgs?: string[];
  serveArgs?: string[];
  env?: NodeJS.ProcessEnv;
  /** NBD Unix socket path (default: a fresh name next to the pool); reuse one to restart on a stale socket */
  nbdSocket?: string;
  /** how long to wait for the daemon to listen (default 20 s; recovery after a crash may need longer) */
  startTimeoutMs?: number;
}

export async function startDaemon(opts: StartOptions = {}): Promise<Daemon> {
  await ensureBuilt();
  const dir = opts.pool ? path.dirname(opts.pool) : tempDir();
  const pool = opts.pool ?? path.join(dir, 'pool');
  if (opts.init ?? !fs.existsSync(path.join(pool, 'pool.json'))) {
    const r = await cli(['init', pool, ...(opts.initArgs ?? [])]);
    if (r.code !== 0) throw new Error(`init failed: ${r.stderr}`);
  }
  const nbdSocket = opts.nbdSocket ?? path.join(dir, `nbd-${process.pid}-${Math.random().toString(36).slice(2, 8)}.sock`);
  const control = path.join(pool, 'control.sock');
  const child = spawn(process.execPath, [CLI, 'serve', pool, '--socket', nbdSocket, ...(opts.serveArgs ?? [])], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, THINVAULT_LOG_LEVEL: 'debug', ...opts.env },
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    stderr += d;
    if (stderr.length > 4_000_000) stderr = stderr.slice(-2_000_000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await waitForSocket(nbdSocket, child, () => stderr, opts.startTimeoutMs);
  await waitForSocket(control, child, () => stderr, opts.startTimeoutMs);
  return {
    pool,
    nbdSocket,
    control,
    child,
    log: () => stderr,
    uri: (name) => `nbd+unix:///${name}?socket=${nbdSocket}`,
    cli: (args) => cli([...args, '--control', control]),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
      return child.exitCode;
    },
    async waitExit() {
      await exited;
      return child.exitCode;
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/**
 * Starts the daemon again on the same pool and the same NBD socket path, as an operator would after a crash:
 * no clean-up in between (a stale lock file, control socket and NBD socket are the server's business).
 */
export function restartDaemon(d: Daemon, opts: Omit<StartOptions, 'pool' | 'init' | 'nbdSocket'> = {}): Promise<Daemon> {
  return startDaemon({ ...opts, pool: d.pool, init: false, nbdSocket: d.nbdSocket });
}

/** Runs a client subcommand with --json against the daemon and parses the result; throws with stderr on failure. */
export async function cliJson<T = unknown>(d: Daemon, args: string[]): Promise<T> {
  const r = await d.cli([...args, '--json']);
  if (r.code !== 0) throw new Error(`thinvault ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`);
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`thinvault ${args.join(' ')} printed no JSON: ${r.stdout.slice(0, 500)}`);
  }
}

/** `thinvault pool check --json` against the daemon: {ok, problems, ...}; an inconsistent pool is a result, not a throw. */
export async function poolCheck(d: Daemon): Promise<{ ok: boolean; problems: string[] }> {
  const r = await d.cli(['pool', 'check', '--json']);
  try {
    const res = JSON.parse(r.stdout) as { ok: boolean; problems: string[] };
    if (typeof res.ok === 'boolean' && Array.isArray(res.problems)) return res;
  } catch {
    // fall through
  }
  throw new Error(`thinvault pool check failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`);
}

/** Resolves when the child has exited (or at once if it already has), with its exit code or signal. */
export function childExit(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

/** True when CI=true (or 1): tests that need qemu and a kernel image must fail there instead of skipping. */
export const IN_CI = /^(1|true)$/i.test(process.env.CI ?? '');

/** /usr/bin/python3 has Debian's libnbd module (the pyenv python3 on PATH does not). */
export const PYTHON = '/usr/bin/python3';

/**
 * What a qemu-guest test (nbd-vm, powerloss) lacks on this machine: the harness script, the commands, and a
 * kernel image with its modules. Empty when everything is there.
 */
export function missingVmPrerequisites(harness: string, commands: string[]): string[] {
  const missing: string[] = [];
  if (!fs.existsSync(harness)) missing.push(harness);
  for (const cmd of commands) {
    const found = ['/usr/bin', '/bin', '/usr/sbin', '/sbin', ...(process.env.PATH ?? '').split(':')].some(
      (dir) => dir !== '' && fs.existsSync(path.join(dir, cmd)),
    );
    if (!found) missing.push(cmd);
  }
  const kernels = fs.existsSync('/boot')
    ? fs.readdirSync('/boot').filter((f) => f.startsWith('vmlinuz-') && fs.existsSync(`/lib/modules/${f.slice(8)}`))
    : [];
  if (kernels.length === 0) missing.push('a kernel image /boot/vmlinuz-<ver> with /lib/modules/<ver> (linux-image-amd64)');
  return missing;
}
