/** Shared helpers of the pool test suites (temp pools, captured logs, crash images, a reference model). */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { Pool, type PoolInitOptions, type Volume } from '../src/pool/index.js';

export function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `thinvault-${tag}-`));
}

export function rmDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

/** A pino logger whose lines are collected as parsed objects. */
export function captureLogger(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l.trim()) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { logger: pino({ level: 'debug' }, stream), lines };
}

export async function newPool(tag: string, opts: PoolInitOptions = {}): Promise<{ dir: string; pool: Pool }> {
  const dir = path.join(tmpDir(tag), 'pool');
  await Pool.init(dir, opts);
  const pool = await Pool.open(dir);
  return { dir, pool };
}

/**
 * Copies the pool directory as it is now (what `kill -9` would leave: file contents as the kernel sees them),
 * without the lock, into a new directory. The copy is not atomic, so a background checkpoint (which renames and
 * deletes files) must not run meanwhile: the pool's current one is awaited first and the copy is synchronous.
 */
export async function crashImage(dir: string, tag = 'crash', pool?: Pool): Promise<string> {
  if (pool) await (pool as unknown as { checkpointing: Promise<void> | null }).checkpointing;
  const dest = path.join(tmpDir(tag), 'pool');
  fs.mkdirSync(dest);
  for (const name of fs.readdirSync(dir)) {
    if (name === 'lock') continue;
    fs.copyFileSync(path.join(dir, name), path.join(dest, name));
  }
  return dest;
}

export function pattern(len: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

/** Reads [offset, offset+len) and fills the holes with zeros, checking the hole list is well-formed. */
export async function readAll(vol: Volume, offset: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len, 0xee);
  const holes = await vol.read(offset, buf);
  let prevEnd = -1;
  for (let k = 0; k < holes.length; k += 2) {
    const [o, l] = [holes[k], holes[k + 1]];
    if (o < 0 || l <= 0 || o + l > len || o <= prevEnd) throw new Error(`bad hole list ${JSON.stringify(holes)}`);
    prevEnd = o + l;
    buf.fill(0, o, o + l);
  }
  return buf;
}

export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The reference model of one volume: content, which chunks are mapped, per-chunk generation, current generation.
 * It encodes the documented rules (commit-rules.ts, volume.ts) for which chunks an operation marks.
 */
export class VolumeModel {
  content: Buffer;
  mapped: boolean[];
  gen: number[];
  current = 1;

  constructor(
    public size: number,
    readonly cs: number,
  ) {
    this.content = Buffer.alloc(size);
    const n = Math.ceil(size / cs);
    this.mapped = new Array(n).fill(false);
    this.gen = new Array(n).fill(0);
  }

  get chunks(): number {
    return this.mapped.length;
  }

  write(offset: number, data: Buffer): void {
    data.copy(this.content, offset);
    for (let c = Math.floor(offset / this.cs); c <= Math.floor((offset + data.length - 1) / this.cs); c++) {
      this.mapped[c] = true;
      this.gen[c] = this.current;
    }
  }

  /** trim and zero without NO_HOLE */
  discard(offset: number, length: number): void {
    const cs = this.cs;
    const end = offset + length;
    this.content.fill(0, offset, end);
    const firstFull = Math.ceil(offset / cs);
    const endFull = end >= this.size ? this.chunks : Math.floor(end / cs);
    for (let c = Math.floor(offset / cs); c <= Math.floor((end - 1) / cs); c++) {
      if (!this.mapped[c]) continue;
      if (c >= firstFull && c < endFull) this.mapped[c] = false;
      this.gen[c] = this.current;
    }
  }

  zeroNoHole(offset: number, length: number): void {
    this.write(offset, Buffer.alloc(length));
  }

  resize(size: number): void {
    const cs = this.cs;
    const n = Math.ceil(size / cs);
    if (size > this.size) {
      const c = Math.floor(this.size / cs);
      if (this.size % cs !== 0 && this.mapped[c]) this.gen[c] = this.current;
      const content = Buffer.alloc(size);
      this.content.copy(content);
      this.content = content;
      // grown chunks count as changed: they may have held data before an earlier shrink
      while (this.mapped.length < n) {
        this.mapped.push(false);
        this.gen.push(this.current);
      }
    } else if (size < this.size) {
      this.content = Buffer.from(this.content.subarray(0, size));
      this.mapped.length = n;
      this.gen.length = n;
      const c = Math.floor(size / cs);
      if (size % cs !== 0 && this.mapped[c]) this.gen[c] = this.current;
    }
    this.size = size;
  }

  advance(): void {
    this.current++;
  }

  reset(): void {
    this.gen.fill(0);
    this.current = 1;
  }

  counts(): Array<{ generation: number; chunks: number }> {
    const m = new Map<number, number>();
    for (const g of this.gen) m.set(g, (m.get(g) ?? 0) + 1);
    return [...m.entries()].sort((a, b) => a[0] - b[0]).map(([generation, chunks]) => ({ generation, chunks }));
  }

  allocation(): Array<{ length: number; allocated: boolean }> {
    const out: Array<{ length: number; allocated: boolean }> = [];
    for (let c = 0; c < this.chunks; c++) {
      const len = Math.min(this.cs, this.size - c * this.cs);
      const last = out[out.length - 1];
      if (last && last.allocated === this.mapped[c]) last.length += len;
      else out.push({ length: len, allocated: this.mapped[c] });
    }
    return out;
  }
}

/** Asserts the volume equals the model (content byte-exact, mapping, generations, counts); returns a message or ''. */
export async function compareWithModel(vol: Volume, model: VolumeModel): Promise<string> {
  if (vol.size !== model.size) return `size ${vol.size} != ${model.size}`;
  const content = await readAll(vol, 0, model.size);
  if (!content.equals(model.content)) {
    let i = 0;
    while (content[i] === model.content[i]) i++;
    return `content differs first at byte ${i} (chunk ${Math.floor(i / model.cs)}): ${content[i]} != ${model.content[i]}`;
  }
  const g = vol.generations();
  if (g.current !== model.current) return `current generation ${g.current} != ${model.current}`;
  for (let c = 0; c < model.chunks; c++) {
    if (vol.chunkGeneration(c) !== model.gen[c]) return `chunk ${c}: generation ${vol.chunkGeneration(c)} != ${model.gen[c]}`;
  }
  const want = JSON.stringify(model.counts());
  if (JSON.stringify(g.counts) !== want) return `counts ${JSON.stringify(g.counts)} != ${want}`;
  const alloc = JSON.stringify(vol.allocation(0, model.size));
  if (alloc !== JSON.stringify(model.allocation())) return `allocation ${alloc} != ${JSON.stringify(model.allocation())}`;
  const info = vol.info();
  const mappedCount = model.mapped.filter(Boolean).length;
  if (info.allocatedChunks !== mappedCount) return `allocatedChunks ${info.allocatedChunks} != ${mappedCount}`;
  return '';
}
