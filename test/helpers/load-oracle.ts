/** Driving test/tools/load-oracle.py (the write-load oracle of the kill -9 suites) from tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { PYTHON, ROOT, childExit } from './daemon.js';

export const ORACLE = path.join(ROOT, 'test/tools/load-oracle.py');

export interface Oracle {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  ready: Promise<void>;
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function startOracle(args: string[]): Oracle {
  const child = spawn(PYTHON, [ORACLE, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8');
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => (err = (err + d).slice(-20_000)));
  const done = childExit(child);
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`oracle not READY after 30 s: ${out}\n${err}`)), 30_000);
    child.stdout!.on('data', (d: string) => {
      out += d;
      if (out.includes('READY')) {
        clearTimeout(timer);
        resolve();
      }
    });
    void done.then(() => {
      clearTimeout(timer);
      if (!out.includes('READY')) reject(new Error(`oracle exited before READY: ${out}\n${err}`));
    });
  });
  ready.catch(() => undefined); // verify mode never prints READY; only awaiting callers see the rejection
  return { child, stdout: () => out, stderr: () => err, ready, done };
}

/** waits for a child we started, SIGKILLing it (by its PID, through the handle) after `ms` */
export async function waitBounded(o: Oracle, ms: number, what: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), ms)));
  const r = await Promise.race([o.done, timeout]);
  clearTimeout(timer);
  if (r === 'timeout') {
    o.child.kill('SIGKILL');
    await o.done;
    throw new Error(`${what} did not finish within ${ms} ms; stdout: ${o.stdout().slice(-2000)} stderr: ${o.stderr().slice(-2000)}`);
  }
}

export function lastJson(text: string): Record<string, unknown> {
  const lines = text.trim().split('\n').filter((l) => l.startsWith('{'));
  if (lines.length === 0) throw new Error(`no JSON line in: ${text.slice(-2000)}`);
  return JSON.parse(lines[lines.length - 1]) as Record<string, unknown>;
}
