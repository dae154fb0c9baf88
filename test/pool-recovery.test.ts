import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Pool } from '../src/pool/index.js';
import { createJournalFile } from '../src/pool/journal.js';
import { VolumeModel, captureLogger, compareWithModel, crashImage, mulberry32, newPool, pattern, readAll, rmDir, tmpDir } from './pool-helpers.js';

const CS = 4096;
const CHUNKS = 64;

function cloneModel(m: VolumeModel): VolumeModel {
  const c = new VolumeModel(m.size, m.cs);
  c.content = Buffer.from(m.content);
  c.mapped = [...m.mapped];
  c.gen = [...m.gen];
  c.current = m.current;
  return c;
}

function journalFile(dir: string): string {
  const names = fs.readdirSync(dir).filter((n) => /^journal\.\d+$/.test(n));
  expect(names.length).toBe(1);
  return path.join(dir, names[0]);
}

function copyDir(src: string): string {
  const dest = path.join(tmpDir('rcopy'), 'pool');
  fs.mkdirSync(dest);
  for (const n of fs.readdirSync(src)) fs.copyFileSync(path.join(src, n), path.join(dest, n));
  return dest;
}

/**
 * A pool where every operation produced exactly one journal record and was flushed, with the model state and
 * the journal size after each operation: truncating the journal anywhere must recover exactly the state after
 * the last complete record.
 */
let base: string;
let image: string;
let models: VolumeModel[];
let ends: number[];
let journalStart: number;
const toRemove: string[] = [];

beforeAll(async () => {
  const { dir, pool } = await newPool('recovery', { chunkSize: CS, capacity: 2 * 1024 * 1024 });
  base = dir;
  toRemove.push(path.dirname(dir));
  await pool.createVolume('v', CHUNKS * CS);
  await pool.flush();
  const vol = pool.volume('v')!;
  const jf = journalFile(dir);
  journalStart = fs.statSync(jf).size;
  const m = new VolumeModel(CHUNKS * CS, CS);
  models = [cloneModel(m)];
  ends = [journalStart];
  const rnd = mulberry32(7);
  let seed = 100;
  for (let i = 0; i < 40; i++) {
    const r = rnd();
    const c = Math.floor(rnd() * CHUNKS);
    if (r < 0.15) {
      m.advance();
      await vol.advanceGeneration(); // GEN_SET
    } else if (r < 0.3 && m.mapped[c]) {
      m.discard(c * CS, CS);
      await vol.trim(c * CS, CS, false); // UNMAP
    } else if (!m.mapped[c] || m.gen[c] !== m.current) {
      const off = c * CS + 512 * Math.floor(rnd() * 4);
      const data = pattern(512 + 512 * Math.floor(rnd() * 3), seed++);
      m.write(off, data);
      await vol.write(off, data, false); // MAP or MARK
    } else {
      continue;
    }
    await pool.flush();
    const size = fs.statSync(jf).size;
    if (size === ends[ends.length - 1]) throw new Error('operation without a record');
    models.push(cloneModel(m));
    ends.push(size);
  }
  image = await crashImage(dir, 'rimage', pool);
  toRemove.push(path.dirname(image));
  await pool.close();
});

afterAll(() => {
  for (const d of toRemove) rmDir(d);
});

async function openAndCompare(dir: string, expected: VolumeModel) {
  const { logger, lines } = captureLogger();
  const pool = await Pool.open(dir, { logger });
  try {
    expect(await compareWithModel(pool.volume('v')!, expected)).toBe('');
    return { pool, lines };
  } finally {
    await pool.close();
  }
}

/**
 * After cutting the journal after record k (of a history whose data writes all reached the data file), the
 * metadata must equal models[k] exactly. Content: an unmapped chunk reads zeros; a mapped chunk holds one of its
 * versions from models[k..] (a real crash could not have written the later data before its record was durable,
 * but this test wrote everything first and cuts the journal afterwards).
 */
async function openAndCompareCut(dir: string, k: number) {
  const { logger, lines } = captureLogger();
  const pool = await Pool.open(dir, { logger });
  try {
    const vol = pool.volume('v')!;
    const m = models[k];
    const meta = Object.assign(cloneModel(m), {});
    const content = await readAll(vol, 0, m.size);
    meta.content = content; // content is checked per chunk below
    expect(await compareWithModel(vol, meta)).toBe('');
    for (let c = 0; c < m.chunks; c++) {
      const got = content.subarray(c * CS, (c + 1) * CS);
      if (!m.mapped[c]) {
        expect(got.every((b) => b === 0), `unmapped chunk ${c} reads zeros`).toBe(true);
        continue;
      }
      const versions = models.slice(k).map((x) => x.content.subarray(c * CS, (c + 1) * CS));
      expect(versions.some((v) => v.equals(got)) || got.every((b) => b === 0), `chunk ${c} holds a version of itself`).toBe(true);
    }
    return { pool, lines };
  } finally {
    await pool.close();
  }
}

describe('journal replay', () => {
  test('the whole journal replays to the final state', async () => {
    const d = copyDir(image);
    try {
      const { lines, pool } = await openAndCompare(d, models[models.length - 1]);
      expect(pool.recovery.recordsReplayed).toBe(models.length - 1 + 1); // + VOLUME_CREATE
      expect(pool.recovery.cleanShutdown).toBe(false);
      expect(lines.some((l) => l.msg === 'pool recovered after an unclean shutdown')).toBe(true);
    } finally {
      rmDir(path.dirname(d));
    }
  });

  test('truncated at random offsets: recovers the last complete record, logs and truncates the tail', async () => {
    const rnd = mulberry32(99);
    const total = ends[ends.length - 1];
    const cuts = [journalStart, total - 1, ...Array.from({ length: 14 }, () => journalStart + Math.floor(rnd() * (total - journalStart)))];
    for (const cut of cuts) {
      const d = copyDir(image);
      try {
        fs.truncateSync(journalFile(d), cut);
        let k = 0;
        while (k + 1 < ends.length && ends[k + 1] <= cut) k++;
        const { lines, pool } = await openAndCompareCut(d, k);
        if (cut !== ends[k]) {
          const warn = lines.find((l) => l.msg === 'journal tail discarded (torn or corrupt records after the last valid one)');
          expect(warn, `cut ${cut}`).toBeDefined();
          expect(warn!.truncatedAt).toBe(ends[k]);
          expect(pool.recovery.journals[0].truncatedAt).toBe(ends[k]);
        }
      } finally {
        rmDir(path.dirname(d));
      }
    }
  }, 60_000);

  test('a flipped byte in the last record, or in a middle record, stops replay there', async () => {
    for (const k of [ends.length - 2, Math.floor(ends.length / 2)]) {
      const d = copyDir(image);
      try {
        const jf = journalFile(d);
        const buf = fs.readFileSync(jf);
        const at = ends[k] + 21 + ((k * 7) % Math.max(1, ends[k + 1] - ends[k] - 21)); // inside record k+1's payload
        buf[at] ^= 0x40;
        fs.writeFileSync(jf, buf);
        const { pool } = await openAndCompareCut(d, k);
        expect(pool.recovery.journals[0].reason).toMatch(/CRC/);
      } finally {
        rmDir(path.dirname(d));
      }
    }
  });

  test('chunks whose mapping was lost are zeroed before reuse', async () => {
    // cut right after VOLUME_CREATE: every MAP is lost, but the data blocks hold the old bytes
    const d = copyDir(image);
    try {
      fs.truncateSync(journalFile(d), ends[0]);
      const pool = await Pool.open(d);
      try {
        expect(pool.recovery.freeChunksZeroed).toBeGreaterThan(0);
        const vol = pool.volume('v')!;
        for (let c = 0; c < CHUNKS; c++) await vol.write(c * CS, Buffer.alloc(100, 0xab), false);
        for (let c = 0; c < CHUNKS; c++) {
          const r = await readAll(vol, c * CS, CS);
          expect(r.subarray(0, 100).every((b) => b === 0xab)).toBe(true);
          expect(r.subarray(100).every((b) => b === 0), `chunk ${c}`).toBe(true);
        }
      } finally {
        await pool.close();
      }
      // a clean close: the next open trusts the free chunks
      const again = await Pool.open(d);
      expect(again.recovery.cleanShutdown).toBe(true);
      expect(again.recovery.freeChunksZeroed).toBe(0);
      await again.close();
    } finally {
      rmDir(path.dirname(d));
    }
  });
});

describe('crash during a checkpoint', () => {
  test('a leftover checkpoint .tmp and a new journal without its checkpoint', async () => {
    const d = copyDir(image);
    try {
      const epochs = fs.readdirSync(d).filter((n) => n.startsWith('checkpoint.')).map((n) => Number(n.split('.')[1]));
      const next = Math.max(...epochs) + 1;
      fs.writeFileSync(path.join(d, `checkpoint.${next}.tmp`), pattern(5000, 1));
      const uuid = JSON.parse(fs.readFileSync(path.join(d, 'pool.json'), 'utf8')).uuid;
      fs.closeSync(await createJournalFile(d, next, uuid));
      const { pool } = await openAndCompare(d, models[models.length - 1]);
      expect(pool.recovery.removedTmpFiles).toEqual([`checkpoint.${next}.tmp`]);
      expect(pool.recovery.journals.map((j) => j.epoch)).toEqual([next - 1, next]);
      expect(fs.readdirSync(d).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    } finally {
      rmDir(path.dirname(d));
    }
  });

  test('a new journal whose header is torn', async () => {
    const d = copyDir(image);
    try {
      const epochs = fs.readdirSync(d).filter((n) => n.startsWith('checkpoint.')).map((n) => Number(n.split('.')[1]));
      fs.writeFileSync(path.join(d, `journal.${Math.max(...epochs) + 1}`), pattern(30, 2));
      await openAndCompare(d, models[models.length - 1]);
    } finally {
      rmDir(path.dirname(d));
    }
  });

  test('old and new checkpoint both present; a corrupt newest checkpoint falls back to the old one + both journals', async () => {
    const d = copyDir(image);
    const pool = await Pool.open(d);
    const m = cloneModel(models[models.length - 1]);
    const vol = pool.volume('v')!;
    await vol.write(5 * CS + 7, pattern(3000, 55), false);
    m.write(5 * CS + 7, pattern(3000, 55));
    await pool.flush();
    const imageA = await crashImage(d, 'rA', pool);
    await pool.checkpointNow();
    await vol.advanceGeneration();
    m.advance();
    await vol.write(9 * CS, pattern(CS * 2, 56), false);
    m.write(9 * CS, pattern(CS * 2, 56));
    await vol.trim(5 * CS, CS, false);
    m.discard(5 * CS, CS);
    await pool.flush();
    const imageB = await crashImage(d, 'rB', pool);
    await pool.close();
    try {
      const oldFiles = fs.readdirSync(imageA).filter((n) => /^(checkpoint|journal)\.\d+$/.test(n));
      expect(oldFiles.length).toBe(2);
      // crash after the rename but before the old epoch's files were removed
      const both = copyDir(imageB);
      for (const n of oldFiles) fs.copyFileSync(path.join(imageA, n), path.join(both, n));
      const r1 = await openAndCompare(both, m);
      expect(r1.pool.recovery.checkpointEpoch).toBeGreaterThan(Number(oldFiles[0].split('.')[1]));
      // the newest checkpoint unreadable: the previous checkpoint + both journals give the same state
      const fallback = copyDir(imageB);
      for (const n of oldFiles) fs.copyFileSync(path.join(imageA, n), path.join(fallback, n));
      const newest = fs.readdirSync(imageB).find((n) => n.startsWith('checkpoint.'))!;
      const buf = fs.readFileSync(path.join(fallback, newest));
      buf[buf.length - 3] ^= 1;
      fs.writeFileSync(path.join(fallback, newest), buf);
      const r2 = await openAndCompare(fallback, m);
      expect(r2.pool.recovery.badCheckpoints.length).toBe(1);
      expect(r2.pool.recovery.journals.length).toBe(2);
      for (const x of [both, fallback]) rmDir(path.dirname(x));
    } finally {
      rmDir(path.dirname(imageA));
      rmDir(path.dirname(imageB));
      rmDir(path.dirname(d));
    }
  });

  test('periodic checkpoints under load keep the state', async () => {
    const { dir, pool: p0 } = await newPool('ckload', { chunkSize: CS, capacity: 8 * 1024 * 1024 });
    let pool = p0;
    try {
      await pool.close();
      pool = await Pool.open(dir, { checkpointBytes: 4096 });
      await pool.createVolume('v', 256 * CS);
      const m = new VolumeModel(256 * CS, CS);
      const vol = pool.volume('v')!;
      const rnd = mulberry32(3);
      for (let i = 0; i < 300; i++) {
        const off = Math.floor(rnd() * 255) * CS + Math.floor(rnd() * 8) * 512;
        const data = pattern(512 + Math.floor(rnd() * 3) * 512, i);
        m.write(off, data);
        const p = vol.write(off, data, false);
        if (i % 10 === 0) {
          await p;
          m.advance();
          await vol.advanceGeneration();
        } else if (i % 7 === 0) await p;
      }
      await pool.flush();
      const img = await crashImage(dir, 'ckl', pool);
      expect(fs.readdirSync(dir).filter((n) => n.startsWith('checkpoint.')).length).toBeLessThanOrEqual(2);
      const crashed = await Pool.open(img);
      expect(await compareWithModel(crashed.volume('v')!, m)).toBe('');
      await crashed.close();
      rmDir(path.dirname(img));
      expect(await compareWithModel(vol, m)).toBe('');
    } finally {
      await pool.close();
      rmDir(path.dirname(dir));
    }
  });
});
