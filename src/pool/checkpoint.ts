/**
 * Checkpoints: a full image of the pool metadata (docs/pool-format.md, "Checkpoint file"). Serialization is
 * synchronous so that the image is a consistent point; writing is asynchronous (tmp, fdatasync, rename, dir fsync).
 */
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../native/index.js';
import { PoolError } from './errors.js';
import {
  CHECKPOINT_FLAG_CLEAN,
  CHECKPOINT_HEADER_SIZE,
  CHECKPOINT_MAGIC,
  CHECKPOINT_VERSION,
  MAX_CHUNKS,
  PAGE_ENTRIES,
  TMP_SUFFIX,
  bytesToUuid,
  checkpointName,
  readU64,
  uuidToBytes,
  writeU64,
} from './format.js';
import { PoolMetadata } from './metadata.js';
import type { Page, PagedTable } from './paged-table.js';
import { VolumeState } from './volume-state.js';
import { fsyncDir } from './fs-util.js';

const BLOCK = 8 * 1024 * 1024;

export interface CheckpointInfo {
  epoch: number;
  lastSeq: number;
  clean: boolean;
}

/** Appends bytes into a list of large blocks (no single huge allocation, no concatenation). */
class BlockWriter {
  readonly blocks: Buffer[] = [];
  private cur = Buffer.allocUnsafe(BLOCK);
  private pos = 0;
  total = 0;

  reserve(n: number): { buf: Buffer; o: number } {
    if (this.pos + n > this.cur.length) {
      this.seal();
      this.cur = Buffer.allocUnsafe(Math.max(BLOCK, n));
    }
    const o = this.pos;
    this.pos += n;
    this.total += n;
    return { buf: this.cur, o };
  }

  finish(): Buffer[] {
    this.seal();
    return this.blocks;
  }

  private seal(): void {
    if (this.pos > 0) this.blocks.push(this.cur.subarray(0, this.pos));
    this.pos = 0;
  }
}

function writeTable(w: BlockWriter, table: PagedTable): void {
  const { buf, o } = w.reserve(4);
  buf.writeUInt32LE(table.pageCount, o);
  table.forEachPage((pi, page) => {
    const r = w.reserve(5 + page.byteLength);
    r.buf.writeUInt32LE(pi, r.o);
    r.buf[r.o + 4] = page.BYTES_PER_ELEMENT;
    Buffer.from(page.buffer, page.byteOffset, page.byteLength).copy(r.buf, r.o + 5);
  });
}

/** Serializes the metadata (synchronously) into header + body buffers. */
export function serializeCheckpoint(
  meta: PoolMetadata,
  poolUuid: string,
  info: CheckpointInfo,
): Buffer[] {
  const w = new BlockWriter();
  const head = w.reserve(4);
  head.buf.writeUInt32LE(meta.volumes.size, head.o);
  for (const v of meta.volumes.values()) {
    const name = Buffer.from(v.name, 'utf8');
    const { buf, o } = w.reserve(4 + 4 + 8 + 8 + 16 + 2 + name.length);
    buf.writeUInt32LE(v.id, o);
    buf.writeUInt32LE(v.gens.current, o + 4);
    writeU64(buf, v.size, o + 8);
    buf.writeDoubleLE(v.createdAt, o + 16);
    uuidToBytes(v.uuid).copy(buf, o + 24);
    buf.writeUInt16LE(name.length, o + 40);
    name.copy(buf, o + 42);
    writeTable(w, v.map);
    writeTable(w, v.gens.entries);
  }
  const body = w.finish();
  let crc = 0;
  for (const b of body) crc = native.crc32c(b, crc);
  const h = Buffer.alloc(CHECKPOINT_HEADER_SIZE);
  h.writeUInt32LE(CHECKPOINT_MAGIC, 0);
  h.writeUInt16LE(CHECKPOINT_VERSION, 4);
  h.writeUInt16LE(info.clean ? CHECKPOINT_FLAG_CLEAN : 0, 6);
  writeU64(h, info.epoch, 8);
  writeU64(h, info.lastSeq, 16);
  uuidToBytes(poolUuid).copy(h, 24);
  h.writeUInt32LE(meta.chunkSize, 40);
  h.writeUInt32LE(meta.nextVolumeId, 44);
  writeU64(h, w.total, 48);
  h.writeUInt32LE(crc >>> 0, 56);
  h.writeUInt32LE(native.crc32c(h.subarray(0, 60)) >>> 0, 60);
  return [h, ...body];
}

/** Writes checkpoint.<epoch> durably: tmp file, fdatasync, rename, directory fsync. */
export async function writeCheckpointFile(dir: string, epoch: number, parts: Buffer[]): Promise<void> {
  const file = path.join(dir, checkpointName(epoch));
  const tmp = file + TMP_SUFFIX;
  const fh = await fs.promises.open(tmp, 'w', 0o600);
  try {
    let pos = 0;
    for (const p of parts) {
      await fh.write(p, 0, p.length, pos);
      pos += p.length;
    }
    await fh.datasync();
  } finally {
    await fh.close();
  }
  await fs.promises.rename(tmp, file);
  fsyncDir(dir);
}

function readTable(buf: Buffer, o: number, table: PagedTable, chunks: number, maxValue: number, what: string): number {
  const bad = (why: string): never => {
    throw new PoolError('ECORRUPT', `checkpoint: ${what}: ${why}`);
  };
  if (o + 4 > buf.length) bad('truncated');
  const n = buf.readUInt32LE(o);
  o += 4;
  let prev = -1;
  for (let k = 0; k < n; k++) {
    if (o + 5 > buf.length) bad('truncated');
    const pi = buf.readUInt32LE(o);
    const width = buf[o + 4];
    o += 5;
    if (width !== 1 && width !== 2 && width !== 4) bad(`page width ${width}`);
    if (pi <= prev || pi * PAGE_ENTRIES >= chunks) bad(`page index ${pi}`);
    prev = pi;
    const bytes = PAGE_ENTRIES * width;
    if (o + bytes > buf.length) bad('truncated');
    const ab = buf.buffer.slice(buf.byteOffset + o, buf.byteOffset + o + bytes);
    const page: Page = width === 1 ? new Uint8Array(ab) : width === 2 ? new Uint16Array(ab) : new Uint32Array(ab);
    const base = pi * PAGE_ENTRIES;
    for (let s = 0; s < PAGE_ENTRIES; s++) {
      const v = page[s];
      if (v !== 0 && (base + s >= chunks || v > maxValue)) bad(`entry ${base + s} = ${v} out of range`);
    }
    table.loadPage(pi, page);
    o += bytes;
  }
  return o;
}

export interface LoadedCheckpoint extends CheckpointInfo {
  meta: PoolMetadata;
}

/** Reads and validates checkpoint.<epoch>; throws ECORRUPT with the reason when it is not usable. */
export function readCheckpointFile(dir: string, epoch: number, poolUuid: string, chunkSize: number): LoadedCheckpoint {
  const file = path.join(dir, checkpointName(epoch));
  const buf = fs.readFileSync(file);
  const bad = (why: string): never => {
    throw new PoolError('ECORRUPT', `${file}: ${why}`);
  };
  if (buf.length < CHECKPOINT_HEADER_SIZE) bad('short header');
  if (buf.readUInt32LE(0) !== CHECKPOINT_MAGIC) bad('bad magic');
  if ((native.crc32c(buf.subarray(0, 60)) >>> 0) !== buf.readUInt32LE(60)) bad('bad header CRC');
  if (buf.readUInt16LE(4) !== CHECKPOINT_VERSION) bad(`unsupported version ${buf.readUInt16LE(4)}`);
  if (readU64(buf, 8) !== epoch) bad(`epoch ${readU64(buf, 8)} does not match the file name`);
  if (bytesToUuid(buf, 24) !== poolUuid.toLowerCase()) bad('belongs to another pool');
  if (buf.readUInt32LE(40) !== chunkSize) bad(`chunk size ${buf.readUInt32LE(40)} differs from pool.json`);
  const bodyLength = readU64(buf, 48);
  if (buf.length !== CHECKPOINT_HEADER_SIZE + bodyLength) bad(`body is ${buf.length - CHECKPOINT_HEADER_SIZE} bytes, expected ${bodyLength}`);
  const body = buf.subarray(CHECKPOINT_HEADER_SIZE);
  if ((native.crc32c(body) >>> 0) !== buf.readUInt32LE(56)) bad('bad body CRC');

  const meta = new PoolMetadata(chunkSize);
  let o = 0;
  const count = body.readUInt32LE(o);
  o += 4;
  for (let k = 0; k < count; k++) {
    if (o + 42 > body.length) bad('truncated volume');
    const id = body.readUInt32LE(o);
    const current = body.readUInt32LE(o + 4);
    const size = readU64(body, o + 8);
    const createdAt = body.readDoubleLE(o + 16);
    const uuid = bytesToUuid(body, o + 24);
    const nameLen = body.readUInt16LE(o + 40);
    const name = body.toString('utf8', o + 42, o + 42 + nameLen);
    o += 42 + nameLen;
    if (!(size > 0) || Math.ceil(size / chunkSize) > MAX_CHUNKS) bad(`volume ${name}: bad size ${size}`);
    const v = new VolumeState(id, name, uuid, size, createdAt, chunkSize);
    v.gens.current = current;
    o = readTable(body, o, v.map, v.chunks, MAX_CHUNKS, `volume ${name} mapping table`);
    o = readTable(body, o, v.gens.entries, v.chunks, 0xffff_ffff, `volume ${name} generation map`);
    v.gens.recount();
    if (meta.volumes.has(id) || meta.byName.has(name)) bad(`duplicate volume ${id} ${name}`);
    meta.addVolume(v);
  }
  if (o !== body.length) bad('trailing bytes');
  meta.nextVolumeId = Math.max(meta.nextVolumeId, buf.readUInt32LE(44));
  return {
    meta,
    epoch,
    lastSeq: readU64(buf, 16),
    clean: (buf.readUInt16LE(6) & CHECKPOINT_FLAG_CLEAN) !== 0,
  };
}
