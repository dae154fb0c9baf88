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
export const CLI = path.join(ROOT, 'dist/cli/main.js');

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
  /** SIGKILL and wait */
  kill(): Promise<void>;
}

export interface StartOptions {
  pool?: string;
  init?: boolean;
  initArgs?: string[];
  serveArgs?: string[];
  env?: NodeJS.ProcessEnv;
}

export async function startDaemon(opts: StartOptions = {}): Promise<Daemon> {
  await ensureBuilt();
  const dir = opts.pool ? path.dirname(opts.pool) : tempDir();
  const pool = opts.pool ?? path.join(dir, 'pool');
  if (opts.init ?? !fs.existsSync(path.join(pool, 'pool.json'))) {
    const r = await cli(['init', pool, ...(opts.initArgs ?? [])]);
    if (r.code !== 0) throw new Error(`init failed: ${r.stderr}`);
  }
  const nbdSocket = path.join(dir, `nbd-${process.pid}-${Math.random().toString(36).slice(2, 8)}.sock`);
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
  await waitForSocket(nbdSocket, child, () => stderr);
  await waitForSocket(control, child, () => stderr);
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
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}
