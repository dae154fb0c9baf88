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
  CHECKPOINT_VERSION_V1,
  CHECKPOINT_VERSION_V2,
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
import { readBackupChain } from './records.js';
import type { Page, PagedTable } from './paged-table.js';
import type { VolumeIdentity, VolumeState } from './volume-state.js';
import { fsyncDir } from '../util/durable-file.js';

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

/** width byte of a page entry that refers to a page object written earlier (shared between volumes) */
const SHARED_PAGE = 0;
/** name length marking an absent identity */
const NO_IDENTITY = 0xffff;

/**
 * Writes one table. A page object already written for an earlier volume (a page shared by snapshots) is written
 * as a reference to that volume, so that loading restores the sharing and with it the reference counts.
 */
function writeTable(w: BlockWriter, table: PagedTable, vol: number, written: Map<Page, number>): void {
  const { buf, o } = w.reserve(4);
  buf.writeUInt32LE(table.pageCount, o);
  table.forEachPage((pi, page) => {
    const owner = written.get(page);
    if (owner !== undefined) {
      const r = w.reserve(9);
      r.buf.writeUInt32LE(pi, r.o);
      r.buf[r.o + 4] = SHARED_PAGE;
      r.buf.writeUInt32LE(owner, r.o + 5);
      return;
    }
    if (table.isPageShared(pi)) written.set(page, vol);
    const r = w.reserve(5 + page.byteLength);
    r.buf.writeUInt32LE(pi, r.o);
    r.buf[r.o + 4] = page.BYTES_PER_ELEMENT;
    Buffer.from(page.buffer, page.byteOffset, page.byteLength).copy(r.buf, r.o + 5);
  });
}

function writeIdentity(w: BlockWriter, id: VolumeIdentity | null): void {
  const name = Buffer.from(id?.name ?? '', 'utf8');
  const { buf, o } = w.reserve(18 + name.length);
  if (id) uuidToBytes(id.uuid).copy(buf, o);
  else buf.fill(0, o, o + 16);
  buf.writeUInt16LE(id ? name.length : NO_IDENTITY, o + 16);
  name.copy(buf, o + 18);
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
  const writtenMaps = new Map<Page, number>();
  const writtenGens = new Map<Page, number>();
  for (const v of meta.volumes.values()) {
    const name = Buffer.from(v.name, 'utf8');
    const { buf, o } = w.reserve(4 + 4 + 8 + 8 + 16 + 4 + 2 + name.length);
    buf.writeUInt32LE(v.id, o);
    buf.writeUInt32LE(v.gens.current, o + 4);
    writeU64(buf, v.size, o + 8);
    buf.writeDoubleLE(v.createdAt, o + 16);
    uuidToBytes(v.uuid).copy(buf, o + 24);
    buf.writeUInt32LE(v.flags, o + 40);
    buf.writeUInt16LE(name.length, o + 44);
    name.copy(buf, o + 46);
    writeIdentity(w, v.source);
    writeIdentity(w, v.origin);
    const chain = w.reserve(20);
    chain.buf.fill(0, chain.o, chain.o + 20);
    if (v.chain) {
      uuidToBytes(v.chain.baseStreamUuid).copy(chain.buf, chain.o);
      chain.buf.writeUInt32LE(v.chain.throughGeneration, chain.o + 16);
    }
    writeTable(w, v.map, v.id, writtenMaps);
    writeTable(w, v.gens.entries, v.id, writtenGens);
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

interface TableReadContext {
  /** volumes loaded so far, for shared-page references */
  earlier: (id: number) => PagedTable | undefined;
  allowShared: boolean;
}

function readTable(buf: Buffer, o: number, table: PagedTable, chunks: number, maxValue: number, what: string, ctx: TableReadContext): number {
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
    if (pi <= prev || pi * PAGE_ENTRIES >= chunks) bad(`page index ${pi}`);
    prev = pi;
    if (width === SHARED_PAGE && ctx.allowShared) {
      if (o + 4 > buf.length) bad('truncated');
      const owner = buf.readUInt32LE(o);
      o += 4;
      const from = ctx.earlier(owner);
      const page = from?.pageAt(pi);
      if (!from || !page) bad(`page ${pi} refers to volume ${owner}, which has no such page`);
      const base = pi * PAGE_ENTRIES;
      for (let s = 0; s < PAGE_ENTRIES; s++) if (page![s] !== 0 && base + s >= chunks) bad(`shared page ${pi} maps chunk ${base + s} past the end`);
      table.adoptPageFrom(from!, pi);
      continue;
    }
    if (width !== 1 && width !== 2 && width !== 4) bad(`page width ${width}`);
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

function readIdentity(body: Buffer, o: number, bad: (why: string) => never): [VolumeIdentity | null, number] {
  if (o + 18 > body.length) bad('truncated identity');
  const len = body.readUInt16LE(o + 16);
  if (len === NO_IDENTITY) return [null, o + 18];
  if (o + 18 + len > body.length) bad('truncated identity');
  return [{ uuid: bytesToUuid(body, o), name: body.toString('utf8', o + 18, o + 18 + len) }, o + 18 + len];
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
  const version = buf.readUInt16LE(4);
  if (version !== CHECKPOINT_VERSION && version !== CHECKPOINT_VERSION_V2 && version !== CHECKPOINT_VERSION_V1) bad(`unsupported version ${version}`);
  /** v2 added flags, identities and shared pages; v3 the backup chain */
  const v2 = version >= CHECKPOINT_VERSION_V2;
  const v3 = version >= CHECKPOINT_VERSION;
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
  const tables: TableReadContext['earlier'] = (id) => meta.volumes.get(id)?.map;
  const genTables: TableReadContext['earlier'] = (id) => meta.volumes.get(id)?.gens.entries;
  const fixed = v2 ? 46 : 42;
  for (let k = 0; k < count; k++) {
    if (o + fixed > body.length) bad('truncated volume');
    const id = body.readUInt32LE(o);
    const current = body.readUInt32LE(o + 4);
    const size = readU64(body, o + 8);
    const createdAt = body.readDoubleLE(o + 16);
    const uuid = bytesToUuid(body, o + 24);
    const flags = v2 ? body.readUInt32LE(o + 40) : 0;
    const nameLen = body.readUInt16LE(o + fixed - 2);
    const name = body.toString('utf8', o + fixed, o + fixed + nameLen);
    o += fixed + nameLen;
    if (!(size > 0) || Math.ceil(size / chunkSize) > MAX_CHUNKS) bad(`volume ${name}: bad size ${size}`);
    const v = meta.newVolumeState(id, name, uuid, size, createdAt);
    v.gens.current = current;
    v.flags = flags;
    if (v2) {
      [v.source, o] = readIdentity(body, o, bad);
      [v.origin, o] = readIdentity(body, o, bad);
    }
    if (v3) {
      if (o + 20 > body.length) bad('truncated backup chain');
      v.chain = readBackupChain(body, o);
      o += 20;
    }
    o = readTable(body, o, v.map, v.chunks, MAX_CHUNKS, `volume ${name} mapping table`, { earlier: tables, allowShared: v2 });
    o = readTable(body, o, v.gens.entries, v.chunks, 0xffff_ffff, `volume ${name} generation map`, { earlier: genTables, allowShared: v2 });
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
