/**
 * kill -9 in the middle of a write/trim/advance workload (a real process, not a copy), then recovery:
 * every acknowledged operation is there, in-flight ones are old or new, and tracking never under-reports.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { ensureBuilt } from './helpers/daemon.js';
import { Pool } from '../src/pool/index.js';
import { pattern, readAll, rmDir, tmpDir } from './pool-helpers.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const distPool = path.join(root, 'dist', 'pool', 'index.js');
const CS = 4096;
const CHUNKS = 256;
let base: string;

beforeAll(async () => {
  // the child processes run the compiled pool (dist/); build it when missing or older than the sources
  await ensureBuilt();
  base = tmpDir('crash');
}, 120_000);

afterAll(() => rmDir(base));

// The child: 8 workers on disjoint chunk sets; every op prints B (begin) and A (ack) lines; advances happen with
// all workers paused. Seeds identify contents: pattern(CS, seed); seed 0 = zeros (trim).
const childScript = (dir: string, startSeed: number) => `
import { Pool } from ${JSON.stringify(distPool)};
const pool = await Pool.open(${JSON.stringify(dir)}, { checkpointBytes: 16384 });
const vol = pool.volume('v');
const CS = ${CS}, CHUNKS = ${CHUNKS};
function pattern(len, seed) {
  const b = Buffer.allocUnsafe(len); let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < len; i++) { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; b[i] = x & 0xff; }
  return b;
}
let seed = ${startSeed};
let r = ${startSeed} >>> 0;
const rnd = () => { r = (Math.imul(r, 1103515245) + 12345) >>> 0; return r / 4294967296; };
const out = (s) => process.stdout.write(s + '\\n');
for (let round = 0; ; round++) {
  await Promise.all(Array.from({ length: 8 }, async (_, w) => {
    for (let k = 0; k < 6; k++) {
      const c = w + 8 * Math.floor(rnd() * (CHUNKS / 8));
      const s = seed++;
      const fua = rnd() < 0.5;
      if (rnd() < 0.2) {
        out('B ' + c + ' 0');
        await vol.trim(c * CS, CS, fua);
      } else {
        out('B ' + c + ' ' + s);
        await vol.write(c * CS, pattern(CS, s), fua);
      }
      if (!fua) await pool.flush();
      out('A ' + c);
    }
  }));
  out('G ' + (await vol.advanceGeneration()));
}
`;

test('kill -9 during writes, trims and generation advances, three times in a row', async () => {
  const dir = path.join(base, 'pool');
  await Pool.init(dir, { chunkSize: CS, capacity: 8 * 1024 * 1024 });
  {
    const pool = await Pool.open(dir);
    await pool.createVolume('v', CHUNKS * CS);
    await pool.close();
  }
  // expected state: per chunk the acknowledged seed, plus a possibly in-flight one
  const acked = new Array<number>(CHUNKS).fill(0);
  const inflight = new Array<number | undefined>(CHUNKS).fill(undefined);
  /** content of each chunk when the last acknowledged advance happened (all workers were idle then) */
  let atAdvance = new Array<number>(CHUNKS).fill(0);
  let lastAdvance = 1;

  for (let life = 0; life < 3; life++) {
    const proc = spawn(process.execPath, ['--input-type=module', '-e', childScript(dir, 1000 + life * 100000)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    let err = '';
    proc.stdout.on('data', (d) => (text += d));
    proc.stderr.on('data', (d) => (err += d));
    await new Promise<void>((resolve) => {
      const timer = setInterval(() => {
        if ((text.match(/^G /gm) ?? []).length >= 2 + life) {
          clearInterval(timer);
          setTimeout(resolve, 7 + life * 13); // land somewhere in the middle of the next round
        }
      }, 5);
    });
    proc.kill('SIGKILL');
    await new Promise((r) => proc.on('exit', r));
    expect(err).toBe('');
    if (process.env.POOL_CRASH_DEBUG) console.log(`life ${life}: ${text.split('\n').length} lines, in flight at kill: ${text.split('\n').filter((l) => l.startsWith('B')).length - text.split('\n').filter((l) => l.startsWith('A')).length}`);
    inflight.fill(undefined);
    for (const line of text.split('\n')) {
      const [kind, a, b] = line.split(' ');
      if (kind === 'B') inflight[Number(a)] = Number(b);
      else if (kind === 'A') {
        acked[Number(a)] = inflight[Number(a)]!;
        inflight[Number(a)] = undefined;
      } else if (kind === 'G') {
        lastAdvance = Number(a);
        atAdvance = [...acked];
      }
    }

    const pool = await Pool.open(dir);
    try {
      expect(pool.recovery.cleanShutdown).toBe(false);
      const vol = pool.volume('v')!;
      const g = vol.generations();
      expect(g.current === lastAdvance || g.current === lastAdvance + 1).toBe(true);
      const content = await readAll(vol, 0, CHUNKS * CS);
      const zero = Buffer.alloc(CS);
      const seedBuf = (s: number) => (s === 0 ? zero : pattern(CS, s));
      for (let c = 0; c < CHUNKS; c++) {
        const got = content.subarray(c * CS, (c + 1) * CS);
        const options = [acked[c]];
        if (inflight[c] !== undefined) options.push(inflight[c]!);
        const which = options.find((s) => seedBuf(s).equals(got));
        expect(which, `chunk ${c}: acked ${acked[c]}, in flight ${inflight[c]}`).toBeDefined();
        // tracking never under-reports: changed since the last advance => marked with it (or later)
        if (!got.equals(seedBuf(atAdvance[c]))) expect(vol.chunkGeneration(c), `chunk ${c}`).toBeGreaterThanOrEqual(lastAdvance);
        acked[c] = which!;
      }
      const counted = g.counts.reduce((n, x) => n + x.chunks, 0);
      expect(counted).toBe(CHUNKS);
      lastAdvance = g.current;
      atAdvance = [...acked];
    } finally {
      await pool.close();
    }
  }
}, 120_000);
