import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { ensureBuilt } from './helpers/daemon.js';
import { Pool, PoolError } from '../src/pool/index.js';
import { rmDir, tmpDir } from './pool-helpers.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const distPool = path.join(root, 'dist', 'pool', 'index.js');
let dir: string;

beforeAll(async () => {
  // the child processes run the compiled pool (dist/); build it when missing or older than the sources
  await ensureBuilt();
  expect(fs.existsSync(distPool)).toBe(true);
  dir = path.join(tmpDir('lock'), 'pool');
}, 120_000);

afterAll(() => rmDir(path.dirname(dir)));

function child(script: string): { proc: ChildProcess; out: Promise<string>; line: (re: RegExp) => Promise<string> } {
  const proc = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let buf = '';
  const listeners: Array<() => void> = [];
  proc.stdout!.on('data', (d) => {
    buf += d;
    for (const l of listeners) l();
  });
  proc.stderr!.on('data', (d) => (buf += d));
  const out = new Promise<string>((resolve) => proc.on('exit', () => resolve(buf)));
  const line = (re: RegExp) =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        const m = re.exec(buf);
        if (m) resolve(m[0]);
      };
      listeners.push(check);
      check();
      proc.on('exit', () => reject(new Error(`child exited: ${buf}`)));
    });
  return { proc, out, line };
}

test('a second open fails with ELOCKED naming the holder; after SIGKILL of the holder, open succeeds', async () => {
  await Pool.init(dir, { chunkSize: 4096, capacity: 1024 * 1024 });
  const holder = child(`
    import { Pool } from ${JSON.stringify(distPool)};
    const pool = await Pool.open(${JSON.stringify(dir)});
    await pool.createVolume('v', 65536);
    await pool.volume('v').write(0, Buffer.alloc(4096, 7), false);
    await pool.flush();
    console.log('HOLDING');
    setInterval(() => {}, 1000);
  `);
  await holder.line(/HOLDING/);

  // in this process
  const err = await Pool.open(dir).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PoolError);
  expect((err as PoolError).code).toBe('ELOCKED');
  expect((err as PoolError).message).toContain(dir);
  expect((err as PoolError).message).toContain(`PID ${holder.proc.pid}`);

  // in another process
  const other = child(`
    import { Pool } from ${JSON.stringify(distPool)};
    try { await Pool.open(${JSON.stringify(dir)}); console.log('OPENED'); } catch (e) { console.log('CODE=' + e.code); }
  `);
  expect(await other.out).toContain('CODE=ELOCKED');

  holder.proc.kill('SIGKILL');
  await holder.out;
  const pool = await Pool.open(dir);
  try {
    expect(pool.recovery.cleanShutdown).toBe(false);
    const buf = Buffer.alloc(4096);
    expect(await pool.volume('v')!.read(0, buf)).toEqual([]);
    expect(buf.every((b) => b === 7)).toBe(true);
    // while we hold it, a child cannot
    const third = child(`
      import { Pool } from ${JSON.stringify(distPool)};
      try { await Pool.open(${JSON.stringify(dir)}); console.log('OPENED'); } catch (e) { console.log('CODE=' + e.code + ' ' + e.message); }
    `);
    expect(await third.out).toContain(`PID ${process.pid}`);
  } finally {
    await pool.close();
  }
  // released on close
  const again = await Pool.open(dir);
  expect(again.recovery.cleanShutdown).toBe(true);
  await again.close();
}, 60_000);
