/**
 * Backup stream format, version 1 (docs/stream-format.md): constants, the layout arithmetic, and the encoders and
 * validating decoders of the header block, chunk table, CRC table and trailer block. The writer, the reader and a
 * random-access image exporter all build on these, so that every producer emits the same bytes.
 */
import { createHash } from 'node:crypto';
import { native } from '../native/index.js';
import { StreamError, hex32, type StreamPart } from './errors.js';
import type { StreamEntry } from './io.js';

export const STREAM_MAGIC = Buffer.from('TVSTREAM', 'latin1');
export const TRAILER_MAGIC = Buffer.from('TVTRAILR', 'latin1');
export const STREAM_FORMAT_VERSION = 1;
/** size of the header and trailer blocks, and the alignment of every part */
export const STREAM_BLOCK_SIZE = 4096;
export const HEADER_SIZE = STREAM_BLOCK_SIZE;
export const TRAILER_SIZE = STREAM_BLOCK_SIZE;
export const TABLE_ENTRY_SIZE = 16;
export const CRC_ENTRY_SIZE = 4;
export const MIN_STREAM_CHUNK_SIZE = 4096;
export const MAX_STREAM_CHUNK_SIZE = 1024 * 1024;
/** record indexes and counts are below 2^32 (a pool volume has at most 2^32 − 1 chunks) */
export const MAX_RECORD_COUNT = 0xffff_ffff;
export const MAX_NAME_BYTES = 255;
export const NAME_FIELD_BYTES = 256;
export const MANAGEMENT_INFO_BYTES = 512;
export const DIGEST_BYTES = 32;
/** flag bit 0, reserved for a later version's compression; a version 1 reader refuses it like any unknown bit */
export const STREAM_FLAG_COMPRESSED = 0x01;
/** the flags this reader understands: none */
export const KNOWN_STREAM_FLAGS = 0x00;
export const NIL_UUID = '00000000-0000-0000-0000-000000000000';

export type StreamKind = 'full' | 'diff' | 'replica';
export const STREAM_KIND_CODES: Readonly<Record<StreamKind, number>> = { full: 1, diff: 2, replica: 3 };
const KIND_BY_CODE: ReadonlyMap<number, StreamKind> = new Map(
  (Object.entries(STREAM_KIND_CODES) as [StreamKind, number][]).map(([k, c]) => [c, k]),
);

/** byte offsets in the header block */
export const HeaderField = {
  MAGIC: 0,
  VERSION: 8,
  KIND: 10,
  FLAGS: 11,
  HEADER_SIZE: 12,
  STREAM_UUID: 16,
  CREATED_AT: 32,
  VOLUME_SIZE: 40,
  CHUNK_SIZE: 48,
  GENERATION_FROM: 52,
  GENERATION_TO: 56,
  NEXT_GENERATION: 60,
  BASE_STREAM_UUID: 64,
  RECORD_COUNT: 80,
  DATA_BYTES: 88,
  TOTAL_BYTES: 96,
  TABLE_OFFSET: 104,
  DATA_OFFSET: 112,
  CRC_TABLE_OFFSET: 120,
  TRAILER_OFFSET: 128,
  TABLE_CRC: 136,
  ORIGIN_UUID: 256,
  ORIGIN_NAME_LENGTH: 272,
  ORIGIN_NAME: 280,
  SOURCE_UUID: 536,
  SOURCE_NAME_LENGTH: 552,
  SOURCE_NAME: 560,
  MANAGEMENT_INFO: 1024,
  HEADER_CRC: 4092,
} as const;

/** byte offsets in the trailer block */
export const TrailerField = {
  MAGIC: 0,
  STREAM_UUID: 8,
  RECORD_COUNT: 24,
  DATA_BYTES: 32,
  TOTAL_BYTES: 40,
  CRC_TABLE_CRC: 48,
  DIGEST: 56,
  TRAILER_CRC: 4092,
} as const;
/** the digest covers the trailer's bytes before the digest field */
export const TRAILER_DIGESTED_BYTES = TrailerField.DIGEST;

/** byte offsets in a chunk table entry */
export const TableEntryField = { VOLUME_OFFSET: 0, LENGTH: 8, GENERATION: 12 } as const;

export interface StreamIdentity {
  uuid: string;
  /** at most 255 bytes of UTF-8 */
  name: string;
}

/** What the producer of a stream chooses; everything else in the header derives from these and the record count. */
export interface StreamFields {
  kind: StreamKind;
  /** random per stream, never NIL_UUID */
  streamUuid: string;
  /** ms since 1970 */
  createdAt: number;
  /** the volume the lineage belongs to */
  origin: StreamIdentity;
  /** the object actually read: a snapshot, a replica or the volume itself */
  source: StreamIdentity;
  volumeSize: number;
  chunkSize: number;
  generationFrom: number;
  generationTo: number;
  /** the generation the volume is in after this stream was taken */
  nextGeneration: number;
  /** the full backup a diff extends; null for full and replica */
  baseStreamUuid: string | null;
  /** seed 001's management info: up to 512 bytes (zero padded in the header); decoded headers hold exactly 512 */
  managementInfo: Buffer;
}

/** A decoded (or encoded) header block. */
export interface StreamHeader extends StreamFields {
  version: number;
  flags: number;
  headerSize: number;
  recordCount: number;
  dataBytes: number;
  totalBytes: number;
  tableOffset: number;
  dataOffset: number;
  crcTableOffset: number;
  trailerOffset: number;
  /** CRC32C of the chunk table area including its padding */
  tableCrc: number;
}

export interface StreamTrailer {
  streamUuid: string;
  recordCount: number;
  dataBytes: number;
  totalBytes: number;
  /** CRC32C of the CRC table area including its padding */
  crcTableCrc: number;
  /** SHA-256, lower-case hex */
  digest: string;
}

export interface StreamLayout {
  recordCount: number;
  chunkSize: number;
  headerOffset: number;
  headerBytes: number;
  tableOffset: number;
  tableBytes: number;
  dataOffset: number;
  dataBytes: number;
  crcTableOffset: number;
  crcTableBytes: number;
  trailerOffset: number;
  trailerBytes: number;
  totalBytes: number;
}

// ---------------------------------------------------------------------------------------------------------------
// small codecs

/** u64 little-endian for values below 2^53 (no BigInt on the data path); NaN when the stored value is larger */
export function writeU64(buf: Buffer, value: number, offset: number): void {
  buf.writeUInt32LE(value % 0x1_0000_0000, offset);
  buf.writeUInt32LE(Math.floor(value / 0x1_0000_0000), offset + 4);
}
export function readU64(buf: Buffer, offset: number): number {
  const hi = buf.readUInt32LE(offset + 4);
  if (hi >= 0x20_0000) return Number.NaN;
  return hi * 0x1_0000_0000 + buf.readUInt32LE(offset);
}

const UUID_TEXT = /^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$/;

function isUuid(text: string): boolean {
  return typeof text === 'string' && UUID_TEXT.test(text);
}
function writeUuid(buf: Buffer, uuid: string, offset: number): void {
  buf.write(uuid.replace(/-/g, ''), offset, 16, 'hex');
}
function readUuid(buf: Buffer, offset: number): string {
  const h = buf.toString('hex', offset, offset + 16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
function isNilUuid(uuid: string): boolean {
  return /^[0-]+$/.test(uuid);
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

export function pad4k(bytes: number): number {
  return Math.ceil(bytes / STREAM_BLOCK_SIZE) * STREAM_BLOCK_SIZE;
}

function isChunkSize(n: number): boolean {
  return Number.isInteger(n) && n >= MIN_STREAM_CHUNK_SIZE && n <= MAX_STREAM_CHUNK_SIZE && (n & (n - 1)) === 0;
}

function isU32(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 0xffff_ffff;
}

// ---------------------------------------------------------------------------------------------------------------
// layout

/** Offsets and sizes of every part of a stream of `recordCount` records (computable before writing anything). */
export function streamLayout(recordCount: number, chunkSize: number): StreamLayout {
  if (!Number.isInteger(recordCount) || recordCount < 0 || recordCount > MAX_RECORD_COUNT) {
    throw new StreamError('EINVAL', `record count ${recordCount} is not an integer in 0..${MAX_RECORD_COUNT}`);
  }
  if (!isChunkSize(chunkSize)) {
    throw new StreamError(
      'EINVAL',
      `chunk size ${chunkSize} is not a power of two in ${MIN_STREAM_CHUNK_SIZE}..${MAX_STREAM_CHUNK_SIZE}`,
    );
  }
  const tableOffset = HEADER_SIZE;
  const tableBytes = pad4k(recordCount * TABLE_ENTRY_SIZE);
  const dataOffset = tableOffset + tableBytes;
  const dataBytes = recordCount * chunkSize;
  const crcTableOffset = dataOffset + dataBytes;
  const crcTableBytes = pad4k(recordCount * CRC_ENTRY_SIZE);
  const trailerOffset = crcTableOffset + crcTableBytes;
  return {
    recordCount,
    chunkSize,
    headerOffset: 0,
    headerBytes: HEADER_SIZE,
    tableOffset,
    tableBytes,
    dataOffset,
    dataBytes,
    crcTableOffset,
    crcTableBytes,
    trailerOffset,
    trailerBytes: TRAILER_SIZE,
    totalBytes: trailerOffset + TRAILER_SIZE,
  };
}

/** the stream byte where record `index`'s data starts */
export function recordStreamOffset(layout: StreamLayout, index: number): number {
  return layout.dataOffset + index * layout.chunkSize;
}

/** which part of a stream of this layout holds byte `offset` */
export function streamPartAt(layout: StreamLayout, offset: number): StreamPart {
  if (offset < layout.tableOffset) return 'header';
  if (offset < layout.dataOffset) return 'chunk table';
  if (offset < layout.crcTableOffset) return 'data';
  if (offset < layout.trailerOffset) return 'CRC table';
  return 'trailer';
}

// ---------------------------------------------------------------------------------------------------------------
// field rules, shared by the encoder (EINVAL: the caller's mistake) and the decoder (ECORRUPT: a damaged stream)

type Fail = (field: string, why: string) => never;

const FIELD_OFFSETS: Readonly<Record<string, number>> = {
  'format version': HeaderField.VERSION,
  kind: HeaderField.KIND,
  flags: HeaderField.FLAGS,
  'header size': HeaderField.HEADER_SIZE,
  'stream UUID': HeaderField.STREAM_UUID,
  'created-at': HeaderField.CREATED_AT,
  'volume size': HeaderField.VOLUME_SIZE,
  'chunk size': HeaderField.CHUNK_SIZE,
  'generation-from': HeaderField.GENERATION_FROM,
  'generation-to': HeaderField.GENERATION_TO,
  'next generation': HeaderField.NEXT_GENERATION,
  'base stream UUID': HeaderField.BASE_STREAM_UUID,
  'record count': HeaderField.RECORD_COUNT,
  'data bytes': HeaderField.DATA_BYTES,
  'total stream bytes': HeaderField.TOTAL_BYTES,
  'chunk table offset': HeaderField.TABLE_OFFSET,
  'data offset': HeaderField.DATA_OFFSET,
  'CRC table offset': HeaderField.CRC_TABLE_OFFSET,
  'trailer offset': HeaderField.TRAILER_OFFSET,
  'origin UUID': HeaderField.ORIGIN_UUID,
  'origin name': HeaderField.ORIGIN_NAME_LENGTH,
  'source UUID': HeaderField.SOURCE_UUID,
  'source name': HeaderField.SOURCE_NAME_LENGTH,
  'management info': HeaderField.MANAGEMENT_INFO,
};

function checkIdentity(which: 'origin' | 'source', id: StreamIdentity | undefined, fail: Fail): void {
  if (!id || !isUuid(id.uuid) || isNilUuid(id.uuid)) fail(`${which} UUID`, `${id?.uuid} is not a non-nil UUID`);
  if (typeof id.name !== 'string') fail(`${which} name`, 'not a string');
  const bytes = Buffer.byteLength(id.name, 'utf8');
  if (bytes > MAX_NAME_BYTES) fail(`${which} name`, `${bytes} bytes of UTF-8, at most ${MAX_NAME_BYTES} allowed`);
}

/** The rules on the fields a producer chooses (docs/stream-format.md, "Header block", "Generation fields by kind"). */
function checkFields(f: StreamFields, fail: Fail): void {
  if (!(f.kind in STREAM_KIND_CODES)) fail('kind', `unknown kind ${String(f.kind)}`);
  if (!isUuid(f.streamUuid) || isNilUuid(f.streamUuid)) fail('stream UUID', `${f.streamUuid} is not a non-nil UUID`);
  if (!Number.isFinite(f.createdAt)) fail('created-at', `${f.createdAt} is not a finite time`);
  checkIdentity('origin', f.origin, fail);
  checkIdentity('source', f.source, fail);
  if (!Number.isSafeInteger(f.volumeSize) || f.volumeSize <= 0) {
    fail('volume size', `${f.volumeSize} is not a positive integer below 2^53`);
  }
  if (!isChunkSize(f.chunkSize)) {
    fail('chunk size', `${f.chunkSize} is not a power of two in ${MIN_STREAM_CHUNK_SIZE}..${MAX_STREAM_CHUNK_SIZE}`);
  }
  for (const [field, v] of [
    ['generation-from', f.generationFrom],
    ['generation-to', f.generationTo],
    ['next generation', f.nextGeneration],
  ] as const) {
    if (!isU32(v)) fail(field, `${v} is not a u32`);
  }
  const base = f.baseStreamUuid ?? null;
  if (base !== null && !isUuid(base)) fail('base stream UUID', `${base} is not a UUID`);
  const hasBase = base !== null && !isNilUuid(base);
  if (f.kind === 'diff') {
    if (f.generationFrom < 1) fail('generation-from', `${f.generationFrom} in a diff (must be at least 1)`);
    if (f.generationTo < f.generationFrom) {
      fail('generation-to', `${f.generationTo} below generation-from ${f.generationFrom}`);
    }
    if (f.nextGeneration !== f.generationTo + 1) {
      fail('next generation', `${f.nextGeneration} in a diff of generations ..${f.generationTo} (must be ${f.generationTo + 1})`);
    }
    if (!hasBase) fail('base stream UUID', 'a diff names the full backup it extends (nil UUID found)');
  } else {
    if (f.generationFrom !== 0) fail('generation-from', `${f.generationFrom} in a ${f.kind} stream (must be 0)`);
    if (f.generationTo !== 0) fail('generation-to', `${f.generationTo} in a ${f.kind} stream (must be 0)`);
    if (f.kind === 'full' && f.nextGeneration !== 1) {
      fail('next generation', `${f.nextGeneration} in a full stream (must be 1)`);
    }
    if (f.nextGeneration < 1) fail('next generation', `${f.nextGeneration} in a ${f.kind} stream (must be at least 1)`);
    if (hasBase) fail('base stream UUID', `${base} in a ${f.kind} stream (must be nil)`);
  }
  if (!Buffer.isBuffer(f.managementInfo) || f.managementInfo.length > MANAGEMENT_INFO_BYTES) {
    fail('management info', `must be a Buffer of at most ${MANAGEMENT_INFO_BYTES} bytes`);
  }
}

/** the highest volume offset + length a record may reach */
function volumeEnd(h: Pick<StreamFields, 'volumeSize' | 'chunkSize'>): number {
  return Math.ceil(h.volumeSize / h.chunkSize) * h.chunkSize;
}

/** the most records a stream of this volume can hold */
function maxRecords(h: Pick<StreamFields, 'volumeSize' | 'chunkSize'>): number {
  return Math.min(MAX_RECORD_COUNT, Math.ceil(h.volumeSize / h.chunkSize));
}

/**
 * Why a chunk table entry breaks the rules (docs/stream-format.md, "Chunk table"), or null when it is fine.
 * `previousOffset` is the preceding entry's volume offset, −1 for the first.
 */
export function chunkEntryProblem(
  h: Pick<StreamFields, 'kind' | 'volumeSize' | 'chunkSize' | 'generationFrom' | 'generationTo'>,
  offset: number,
  length: number,
  generation: number,
  previousOffset: number,
): string | null {
  if (!Number.isSafeInteger(offset) || offset < 0) return `volume offset ${offset} is not an integer in 0..2^53`;
  if (offset % h.chunkSize !== 0) return `volume offset ${offset} is not a multiple of the chunk size ${h.chunkSize}`;
  if (offset <= previousOffset) {
    return `volume offset ${offset} does not follow the previous entry's ${previousOffset} (offsets must be strictly ascending)`;
  }
  if (length !== h.chunkSize) return `length ${length} is not the chunk size ${h.chunkSize}`;
  if (offset + length > volumeEnd(h)) {
    return `volume offset ${offset} + length ${length} is past the end of the volume (${volumeEnd(h)} bytes in whole chunks)`;
  }
  if (!isU32(generation)) return `generation ${generation} is not a u32`;
  if (h.kind === 'diff') {
    if (generation < h.generationFrom || generation > h.generationTo) {
      return `generation ${generation} outside ${h.generationFrom}..${h.generationTo} of this diff`;
    }
  } else if (generation !== 0) {
    return `generation ${generation} in a ${h.kind} stream (must be 0)`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------------------------
// header

function encodeName(buf: Buffer, id: StreamIdentity, lengthOffset: number, nameOffset: number): void {
  const n = buf.write(id.name, nameOffset, NAME_FIELD_BYTES, 'utf8');
  buf.writeUInt16LE(n, lengthOffset);
}

function invalid(what: string): Fail {
  return (field, why) => {
    throw new StreamError('EINVAL', `${what} field ${field}: ${why}`, { field });
  };
}

/** Encodes the header block of a stream with these fields and `layout.recordCount` records. */
export function encodeStreamHeader(fields: StreamFields, layout: StreamLayout, tableCrc: number): Buffer {
  checkFields(fields, invalid('stream'));
  if (layout.chunkSize !== fields.chunkSize) {
    throw new StreamError('EINVAL', `layout for chunk size ${layout.chunkSize}, fields say ${fields.chunkSize}`);
  }
  if (layout.recordCount > maxRecords(fields)) {
    throw new StreamError(
      'EINVAL',
      `${layout.recordCount} records do not fit a volume of ${fields.volumeSize} bytes in chunks of ${fields.chunkSize}`,
    );
  }
  const b = Buffer.alloc(HEADER_SIZE);
  STREAM_MAGIC.copy(b, HeaderField.MAGIC);
  b.writeUInt16LE(STREAM_FORMAT_VERSION, HeaderField.VERSION);
  b[HeaderField.KIND] = STREAM_KIND_CODES[fields.kind];
  b[HeaderField.FLAGS] = 0;
  b.writeUInt32LE(HEADER_SIZE, HeaderField.HEADER_SIZE);
  writeUuid(b, fields.streamUuid, HeaderField.STREAM_UUID);
  b.writeDoubleLE(fields.createdAt, HeaderField.CREATED_AT);
  writeU64(b, fields.volumeSize, HeaderField.VOLUME_SIZE);
  b.writeUInt32LE(fields.chunkSize, HeaderField.CHUNK_SIZE);
  b.writeUInt32LE(fields.generationFrom, HeaderField.GENERATION_FROM);
  b.writeUInt32LE(fields.generationTo, HeaderField.GENERATION_TO);
  b.writeUInt32LE(fields.nextGeneration, HeaderField.NEXT_GENERATION);
  if (fields.baseStreamUuid !== null) writeUuid(b, fields.baseStreamUuid, HeaderField.BASE_STREAM_UUID);
  writeU64(b, layout.recordCount, HeaderField.RECORD_COUNT);
  writeU64(b, layout.dataBytes, HeaderField.DATA_BYTES);
  writeU64(b, layout.totalBytes, HeaderField.TOTAL_BYTES);
  writeU64(b, layout.tableOffset, HeaderField.TABLE_OFFSET);
  writeU64(b, layout.dataOffset, HeaderField.DATA_OFFSET);
  writeU64(b, layout.crcTableOffset, HeaderField.CRC_TABLE_OFFSET);
  writeU64(b, layout.trailerOffset, HeaderField.TRAILER_OFFSET);
  b.writeUInt32LE(tableCrc >>> 0, HeaderField.TABLE_CRC);
  writeUuid(b, fields.origin.uuid, HeaderField.ORIGIN_UUID);
  encodeName(b, fields.origin, HeaderField.ORIGIN_NAME_LENGTH, HeaderField.ORIGIN_NAME);
  writeUuid(b, fields.source.uuid, HeaderField.SOURCE_UUID);
  encodeName(b, fields.source, HeaderField.SOURCE_NAME_LENGTH, HeaderField.SOURCE_NAME);
  fields.managementInfo.copy(b, HeaderField.MANAGEMENT_INFO);
  b.writeUInt32LE(native.crc32c(b.subarray(0, HeaderField.HEADER_CRC)), HeaderField.HEADER_CRC);
  return b;
}

function corruptHeader(field: string, why: string): never {
  const offset = FIELD_OFFSETS[field];
  const at = offset === undefined ? '' : ` (offset ${offset})`;
  throw new StreamError('ECORRUPT', `header field ${field}${at}: ${why}`, {
    part: 'header',
    field,
    ...(offset === undefined ? {} : { streamOffset: offset }),
  });
}

function printableMagic(buf: Buffer): string {
  const text = [...buf.subarray(0, 8)].map((c) => (c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : '.')).join('');
  return `0x${buf.toString('hex', 0, 8)} "${text}"`;
}

function decodeName(b: Buffer, which: 'origin' | 'source', lengthOffset: number, nameOffset: number): string {
  const length = b.readUInt16LE(lengthOffset);
  if (length > MAX_NAME_BYTES) corruptHeader(`${which} name`, `length ${length}, at most ${MAX_NAME_BYTES}`);
  try {
    return strictUtf8.decode(b.subarray(nameOffset, nameOffset + length));
  } catch {
    return corruptHeader(`${which} name`, 'not valid UTF-8');
  }
}

/**
 * Decodes and validates a header block (the first 4096 bytes of `buf`): magic, header CRC, version, flags, kind,
 * every field against the rules and the layout. For `media list` and for readStream.
 */
export function readStreamHeader(buf: Buffer): StreamHeader {
  if (buf.length < HEADER_SIZE) {
    const magicOk = buf.length >= 8 && buf.subarray(0, 8).equals(STREAM_MAGIC);
    if (buf.length >= 8 && !magicOk) {
      throw new StreamError('ENOTSTREAM', `not a thinvault stream (magic ${printableMagic(buf)})`, {
        part: 'header',
        streamOffset: 0,
        field: 'magic',
      });
    }
    throw new StreamError('ETRUNCATED', `stream truncated at byte ${buf.length} of at least ${HEADER_SIZE} (in the header)`, {
      part: 'header',
      streamOffset: buf.length,
    });
  }
  const b = buf.subarray(0, HEADER_SIZE);
  if (!b.subarray(0, 8).equals(STREAM_MAGIC)) {
    throw new StreamError('ENOTSTREAM', `not a thinvault stream (magic ${printableMagic(b)})`, {
      part: 'header',
      streamOffset: 0,
      field: 'magic',
    });
  }
  const storedCrc = b.readUInt32LE(HeaderField.HEADER_CRC);
  const computedCrc = native.crc32c(b.subarray(0, HeaderField.HEADER_CRC));
  if (storedCrc !== computedCrc) {
    throw new StreamError('ECORRUPT', `header CRC mismatch (stored ${hex32(storedCrc)}, computed ${hex32(computedCrc)})`, {
      part: 'header',
      streamOffset: HeaderField.HEADER_CRC,
      field: 'header CRC',
    });
  }
  const version = b.readUInt16LE(HeaderField.VERSION);
  if (version !== STREAM_FORMAT_VERSION) {
    throw new StreamError(
      'EUNSUPPORTED',
      `unsupported stream format version ${version} (this reader knows version ${STREAM_FORMAT_VERSION})`,
      { part: 'header', streamOffset: HeaderField.VERSION, field: 'format version' },
    );
  }
  const flags = b[HeaderField.FLAGS];
  const unknownFlags = flags & ~KNOWN_STREAM_FLAGS;
  if (unknownFlags !== 0) {
    const what = unknownFlags & STREAM_FLAG_COMPRESSED ? ' (compressed data)' : '';
    throw new StreamError('EUNSUPPORTED', `unsupported stream flags 0x${unknownFlags.toString(16).padStart(2, '0')}${what}`, {
      part: 'header',
      streamOffset: HeaderField.FLAGS,
      field: 'flags',
    });
  }
  const kindCode = b[HeaderField.KIND];
  const kind = KIND_BY_CODE.get(kindCode);
  if (kind === undefined) {
    throw new StreamError('EUNSUPPORTED', `unsupported stream kind ${kindCode}`, {
      part: 'header',
      streamOffset: HeaderField.KIND,
      field: 'kind',
    });
  }
  const baseStreamUuid = readUuid(b, HeaderField.BASE_STREAM_UUID);
  const h: StreamHeader = {
    version,
    flags,
    kind,
    headerSize: b.readUInt32LE(HeaderField.HEADER_SIZE),
    streamUuid: readUuid(b, HeaderField.STREAM_UUID),
    createdAt: b.readDoubleLE(HeaderField.CREATED_AT),
    origin: {
      uuid: readUuid(b, HeaderField.ORIGIN_UUID),
      name: decodeName(b, 'origin', HeaderField.ORIGIN_NAME_LENGTH, HeaderField.ORIGIN_NAME),
    },
    source: {
      uuid: readUuid(b, HeaderField.SOURCE_UUID),
      name: decodeName(b, 'source', HeaderField.SOURCE_NAME_LENGTH, HeaderField.SOURCE_NAME),
    },
    volumeSize: readU64(b, HeaderField.VOLUME_SIZE),
    chunkSize: b.readUInt32LE(HeaderField.CHUNK_SIZE),
    generationFrom: b.readUInt32LE(HeaderField.GENERATION_FROM),
    generationTo: b.readUInt32LE(HeaderField.GENERATION_TO),
    nextGeneration: b.readUInt32LE(HeaderField.NEXT_GENERATION),
    baseStreamUuid: isNilUuid(baseStreamUuid) ? null : baseStreamUuid,
    managementInfo: Buffer.from(b.subarray(HeaderField.MANAGEMENT_INFO, HeaderField.MANAGEMENT_INFO + MANAGEMENT_INFO_BYTES)),
    recordCount: readU64(b, HeaderField.RECORD_COUNT),
    dataBytes: readU64(b, HeaderField.DATA_BYTES),
    totalBytes: readU64(b, HeaderField.TOTAL_BYTES),
    tableOffset: readU64(b, HeaderField.TABLE_OFFSET),
    dataOffset: readU64(b, HeaderField.DATA_OFFSET),
    crcTableOffset: readU64(b, HeaderField.CRC_TABLE_OFFSET),
    trailerOffset: readU64(b, HeaderField.TRAILER_OFFSET),
    tableCrc: b.readUInt32LE(HeaderField.TABLE_CRC),
  };
  if (h.headerSize !== HEADER_SIZE) corruptHeader('header size', `${h.headerSize}, must be ${HEADER_SIZE}`);
  checkFields(h, corruptHeader);
  const n = h.recordCount;
  if (!Number.isSafeInteger(n) || n > maxRecords(h)) {
    corruptHeader(
      'record count',
      `${n} records do not fit a volume of ${h.volumeSize} bytes in chunks of ${h.chunkSize}`,
    );
  }
  const layout = streamLayout(n, h.chunkSize);
  const derived: [string, number, number][] = [
    ['data bytes', h.dataBytes, layout.dataBytes],
    ['total stream bytes', h.totalBytes, layout.totalBytes],
    ['chunk table offset', h.tableOffset, layout.tableOffset],
    ['data offset', h.dataOffset, layout.dataOffset],
    ['CRC table offset', h.crcTableOffset, layout.crcTableOffset],
    ['trailer offset', h.trailerOffset, layout.trailerOffset],
  ];
  for (const [field, stored, expected] of derived) {
    if (stored !== expected) {
      corruptHeader(field, `${stored}, but ${n} records of ${h.chunkSize} bytes make it ${expected}`);
    }
  }
  return h;
}

/** The layout a validated header describes. */
export function headerLayout(h: StreamHeader): StreamLayout {
  return streamLayout(h.recordCount, h.chunkSize);
}

// ---------------------------------------------------------------------------------------------------------------
// chunk table

/** Encodes the chunk table area (entries and padding), checking every entry against the fields. */
export function encodeChunkTable(fields: StreamFields, entries: readonly StreamEntry[]): Buffer {
  const layout = streamLayout(entries.length, fields.chunkSize);
  const t = Buffer.alloc(layout.tableBytes);
  let previous = -1;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i];
    const why = chunkEntryProblem(fields, e.offset, e.length, e.generation, previous);
    if (why !== null) {
      throw new StreamError('EINVAL', `stream entry ${i} of ${entries.length}: ${why}`, {
        part: 'chunk table',
        record: i,
        recordCount: entries.length,
        volumeOffset: e.offset,
        generation: e.generation,
      });
    }
    const o = i * TABLE_ENTRY_SIZE;
    writeU64(t, e.offset, o + TableEntryField.VOLUME_OFFSET);
    t.writeUInt32LE(e.length, o + TableEntryField.LENGTH);
    t.writeUInt32LE(e.generation, o + TableEntryField.GENERATION);
    previous = e.offset;
  }
  return t;
}

/** Entry `i` of an encoded chunk table. */
export function chunkTableEntry(table: Buffer, i: number): StreamEntry {
  const o = i * TABLE_ENTRY_SIZE;
  return {
    offset: readU64(table, o + TableEntryField.VOLUME_OFFSET),
    length: table.readUInt32LE(o + TableEntryField.LENGTH),
    generation: table.readUInt32LE(o + TableEntryField.GENERATION),
  };
}

/**
 * Validates a chunk table area read from a stream with this header: its CRC, then every entry's rules.
 * Throws StreamError ECORRUPT naming the entry.
 */
export function checkChunkTable(h: StreamHeader, table: Buffer): void {
  const layout = headerLayout(h);
  const crc = native.crc32c(table.subarray(0, layout.tableBytes));
  if (crc !== h.tableCrc) {
    throw new StreamError(
      'ECORRUPT',
      `chunk table CRC mismatch (stored ${hex32(h.tableCrc)} in the header, computed ${hex32(crc)}; ` +
        `stream bytes ${layout.tableOffset}..${layout.dataOffset - 1})`,
      { part: 'chunk table', streamOffset: layout.tableOffset, streamBytes: layout.totalBytes, field: 'chunk table CRC' },
    );
  }
  let previous = -1;
  for (let i = 0; i < h.recordCount; i++) {
    const o = i * TABLE_ENTRY_SIZE;
    const offset = readU64(table, o + TableEntryField.VOLUME_OFFSET);
    const length = table.readUInt32LE(o + TableEntryField.LENGTH);
    const generation = table.readUInt32LE(o + TableEntryField.GENERATION);
    const why = chunkEntryProblem(h, offset, length, generation, previous);
    if (why !== null) {
      const at = layout.tableOffset + o;
      throw new StreamError(
        'ECORRUPT',
        `chunk table entry ${i} of ${h.recordCount} (stream bytes ${at}..${at + TABLE_ENTRY_SIZE - 1}): ${why}`,
        {
          part: 'chunk table',
          streamOffset: at,
          streamBytes: layout.totalBytes,
          record: i,
          recordCount: h.recordCount,
          volumeOffset: offset,
          generation,
        },
      );
    }
    previous = offset;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// CRC table and trailer

/** Encodes the CRC table area (the record CRCs and padding). */
export function encodeCrcTable(crcs: ArrayLike<number>): Buffer {
  const t = Buffer.alloc(pad4k(crcs.length * CRC_ENTRY_SIZE));
  for (let i = 0; i < crcs.length; i++) t.writeUInt32LE(crcs[i] >>> 0, i * CRC_ENTRY_SIZE);
  return t;
}

/** Encodes the trailer block; the digest is computed over the given parts (docs/stream-format.md, "Trailer block"). */
export function encodeStreamTrailer(
  header: Buffer,
  table: Buffer,
  crcTable: Buffer,
): { trailer: Buffer; digest: string } {
  const t = Buffer.alloc(TRAILER_SIZE);
  TRAILER_MAGIC.copy(t, TrailerField.MAGIC);
  header.copy(t, TrailerField.STREAM_UUID, HeaderField.STREAM_UUID, HeaderField.STREAM_UUID + 16);
  header.copy(t, TrailerField.RECORD_COUNT, HeaderField.RECORD_COUNT, HeaderField.RECORD_COUNT + 8);
  header.copy(t, TrailerField.DATA_BYTES, HeaderField.DATA_BYTES, HeaderField.DATA_BYTES + 8);
  header.copy(t, TrailerField.TOTAL_BYTES, HeaderField.TOTAL_BYTES, HeaderField.TOTAL_BYTES + 8);
  t.writeUInt32LE(native.crc32c(crcTable), TrailerField.CRC_TABLE_CRC);
  const hash = createHash('sha256');
  hash.update(header);
  hash.update(table);
  hash.update(crcTable);
  hash.update(t.subarray(0, TRAILER_DIGESTED_BYTES));
  const digest = hash.digest();
  digest.copy(t, TrailerField.DIGEST);
  t.writeUInt32LE(native.crc32c(t.subarray(0, TrailerField.TRAILER_CRC)), TrailerField.TRAILER_CRC);
  return { trailer: t, digest: digest.toString('hex') };
}

/**
 * Decodes a trailer block and checks it against its header: magic, trailer CRC, stream UUID and counts.
 * The CRC table CRC and the digest are checked by the caller, which holds the parts they cover.
 */
export function decodeStreamTrailer(h: StreamHeader, buf: Buffer): StreamTrailer {
  const layout = headerLayout(h);
  const base = layout.trailerOffset;
  const fail = (field: string, offset: number, why: string): never => {
    throw new StreamError('ECORRUPT', why, {
      part: 'trailer',
      streamOffset: base + offset,
      streamBytes: layout.totalBytes,
      field,
    });
  };
  if (!buf.subarray(0, 8).equals(TRAILER_MAGIC)) {
    fail('magic', 0, `trailer magic ${printableMagic(buf)} at stream byte ${base}, expected "TVTRAILR"`);
  }
  const stored = buf.readUInt32LE(TrailerField.TRAILER_CRC);
  const computed = native.crc32c(buf.subarray(0, TrailerField.TRAILER_CRC));
  if (stored !== computed) {
    fail('trailer CRC', TrailerField.TRAILER_CRC, `trailer CRC mismatch (stored ${hex32(stored)}, computed ${hex32(computed)})`);
  }
  const tr: StreamTrailer = {
    streamUuid: readUuid(buf, TrailerField.STREAM_UUID),
    recordCount: readU64(buf, TrailerField.RECORD_COUNT),
    dataBytes: readU64(buf, TrailerField.DATA_BYTES),
    totalBytes: readU64(buf, TrailerField.TOTAL_BYTES),
    crcTableCrc: buf.readUInt32LE(TrailerField.CRC_TABLE_CRC),
    digest: buf.toString('hex', TrailerField.DIGEST, TrailerField.DIGEST + DIGEST_BYTES),
  };
  const same: [string, number, string | number, string | number][] = [
    ['stream UUID', TrailerField.STREAM_UUID, tr.streamUuid, h.streamUuid],
    ['record count', TrailerField.RECORD_COUNT, tr.recordCount, h.recordCount],
    ['data bytes', TrailerField.DATA_BYTES, tr.dataBytes, h.dataBytes],
    ['total stream bytes', TrailerField.TOTAL_BYTES, tr.totalBytes, h.totalBytes],
  ];
  for (const [field, offset, got, want] of same) {
    if (got !== want) fail(field, offset, `trailer field ${field} (offset ${offset}): ${got} differs from the header's ${want}`);
  }
  return tr;
}

// ---------------------------------------------------------------------------------------------------------------
// whole metadata

/** The parts of a stream that do not depend on the data. */
export interface StreamHead {
  header: Buffer;
  table: Buffer;
  layout: StreamLayout;
  streamHeader: StreamHeader;
}

export interface StreamTail {
  crcTable: Buffer;
  trailer: Buffer;
  /** SHA-256, lower-case hex */
  digest: string;
}

export interface StreamMetadata extends StreamHead, StreamTail {}

/** fields as given, with the management info padded to its 512 bytes (so the result equals a decoded header) */
function normalizedFields(fields: StreamFields): StreamFields {
  const info = Buffer.alloc(MANAGEMENT_INFO_BYTES);
  if (Buffer.isBuffer(fields.managementInfo)) fields.managementInfo.copy(info, 0, 0, MANAGEMENT_INFO_BYTES);
  const base = fields.baseStreamUuid;
  return {
    kind: fields.kind,
    streamUuid: fields.streamUuid,
    createdAt: fields.createdAt,
    origin: { uuid: fields.origin?.uuid, name: fields.origin?.name },
    source: { uuid: fields.source?.uuid, name: fields.source?.name },
    volumeSize: fields.volumeSize,
    chunkSize: fields.chunkSize,
    generationFrom: fields.generationFrom,
    generationTo: fields.generationTo,
    nextGeneration: fields.nextGeneration,
    baseStreamUuid: base === null || base === undefined || (isUuid(base) && isNilUuid(base)) ? null : base,
    managementInfo: info,
  };
}

/** Header block and chunk table of a stream of `entries` (validated); written before the data. */
export function encodeStreamHead(fields: StreamFields, entries: readonly StreamEntry[]): StreamHead {
  checkFields(fields, invalid('stream'));
  const f = normalizedFields(fields);
  const layout = streamLayout(entries.length, f.chunkSize);
  const table = encodeChunkTable(f, entries);
  const header = encodeStreamHeader(f, layout, native.crc32c(table));
  const streamHeader = readStreamHeader(header);
  return { header, table, layout, streamHeader };
}

/** CRC table and trailer, once the record CRCs are known; written after the data. */
export function encodeStreamTail(head: StreamHead, crcs: ArrayLike<number>): StreamTail {
  if (crcs.length !== head.layout.recordCount) {
    throw new StreamError('EINVAL', `${crcs.length} CRCs for ${head.layout.recordCount} records`);
  }
  const crcTable = encodeCrcTable(crcs);
  const { trailer, digest } = encodeStreamTrailer(head.header, head.table, crcTable);
  return { crcTable, trailer, digest };
}

/**
 * The exact bytes of every part of a stream except the data, given the record CRCs: a random-access producer (a
 * replica exported as a device) serves these around the data it reads in place.
 */
export function encodeStreamMetadata(
  fields: StreamFields,
  entries: readonly StreamEntry[],
  crcs: ArrayLike<number>,
): StreamMetadata {
  const head = encodeStreamHead(fields, entries);
  return { ...head, ...encodeStreamTail(head, crcs) };
}
