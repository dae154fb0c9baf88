/**
 * Running ../shared/tools/nbd-vm/nbd-vm-test (the kernel NBD client in a qemu guest) from tests: the harness path,
 * a bounded run, and the PASS check shared by the kernel-client suites.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { expect } from 'vitest';
import { SHARED, childExit } from './daemon.js';

export const NBD_VM = process.env.NBDVM_TEST ?? path.join(SHARED, 'tools/nbd-vm/nbd-vm-test');

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** runs nbd-vm-test; on timeout TERM (its trap stops qemu and the relays by PID), then KILL */
export async function nbdVmTest(args: string[], timeoutMs: number): Promise<RunResult> {
  const t0 = Date.now();
  const child = spawn(NBD_VM, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout = (stdout + d).slice(-400_000)));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-100_000)));
  const exited = childExit(child);
  const term = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
  const kill = setTimeout(() => child.kill('SIGKILL'), timeoutMs + 15_000);
  const { code, signal } = await exited;
  clearTimeout(term);
  clearTimeout(kill);
  return { code, signal, stdout, stderr, ms: Date.now() - t0 };
}

export function assertPass(r: RunResult, what: string): void {
  const tail = `\n--- stdout (tail) ---\n${r.stdout.slice(-6000)}\n--- stderr ---\n${r.stderr.slice(-3000)}`;
  expect(r.code, `${what}: exit ${r.code ?? r.signal}${tail}`).toBe(0);
  expect(r.stdout, `${what}: no PASS marker${tail}`).toMatch(/NBDVM RESULT PASS \[token=[0-9a-f]+\]/);
  expect(r.stderr, `${what}${tail}`).toMatch(/nbd-vm-test: PASS/);
}
