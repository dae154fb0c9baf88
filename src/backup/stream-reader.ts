/**
 * Reads and verifies a backup stream (docs/stream-format.md, "Verification order") from a ByteSource, handing each
 * record to a ChunkSink.
 *
 * The record CRCs follow the data, so the sink receives every record **before** it is verified: a restore stages
 * what it receives and commits only after readStream resolved. The chunk table is verified before any data is
 * delivered, so a record never arrives for a wrong position.
 */
import { createHash } from 'node:crypto';
import { native } from '../native/index.js';
import { StreamError, hex32, type CrcMismatch, type StreamPart, type StreamPosition } from './errors.js';
import type { ByteSource, ChunkSink } from './io.js';
import {
  CRC_ENTRY_SIZE,
  HEADER_SIZE,
  TRAILER_DIGESTED_BYTES,
  TRAILER_SIZE,
  checkChunkTable,
  chunkTableEntry,
  decodeStreamTrailer,
  headerLayout,
  readStreamHeader,
  recordStreamOffset,
  type StreamHeader,
} from './stream-format.js';

/** the metadata parts are read in pieces of at most this size (the source may hand out a buffer per call) */
const METADATA_READ_BYTES = 1024 * 1024;
export const DEFAULT_REPORTED_MISMATCHES = 20;
const PROGRESS_INTERVAL_MS = 100;

export interface ReadStreamOptions {
  /** only verify: the sink is not called and may be omitted */
  verifyOnly?: boolean;
  /**
   * called with the validated header before anything else is read; throw to refuse the stream (lineage checks
   * live in the caller). Its error propagates unchanged.
   */
  onHeader?: (header: StreamHeader) => void | Promise<void>;
  /** bytes read so far and the stream's total, at most every 100 ms and once at the end */
  onProgress?: (doneBytes: number, totalBytes: number) => void;
  /** CRC mismatches described in detail in the error (default 20); all are counted */
  maxReportedMismatches?: number;
  /**
   * records of these generations may fail their CRC check without failing the stream (a restore that skips a
   * damaged generation, `--skip-gen`): they are counted in `damaged` instead
   */
  tolerateGenerations?: ReadonlySet<number>;
}

export interface ReadStreamResult {
  header: StreamHeader;
  records: number;
  /** stream bytes read (= header.totalBytes) */
  bytes: number;
  /** SHA-256 stream digest, lower-case hex (verified against the trailer) */
  digest: string;
  /** tolerated CRC mismatches (tolerateGenerations): generation -> number of damaged records */
  damaged: Map<number, number>;
}

function describeRecord(m: CrcMismatch, recordCount: number): string {
  return (
    `record ${m.record} of ${recordCount} (volume offset ${m.volumeOffset}, generation ${m.generation}, ` +
    `stream bytes ${m.streamOffset}..${m.streamEnd}): CRC32C mismatch (stored ${hex32(m.stored)}, computed ${hex32(m.computed)})`
  );
}

/**
 * Reads the whole stream, delivering records to `sink`, and verifies it. Resolves only when every check passed;
 * any failure throws StreamError naming the problem and its position (errors of the sink and of onHeader
 * propagate unchanged).
 */
export async function readStream(
  source: ByteSource,
  sink: ChunkSink | null | undefined,
  opts: ReadStreamOptions = {},
): Promise<ReadStreamResult> {
  const deliver = !opts.verifyOnly;
  if (deliver && !sink) throw new StreamError('EINVAL', 'readStream needs a sink unless verifyOnly is set');
  const maxReported = opts.maxReportedMismatches ?? DEFAULT_REPORTED_MISMATCHES;

  let pos = 0;
  let total: number | undefined;
  let recordCount = 0;
  let lastProgress = performance.now();
  const progress = (force: boolean) => {
    if (!opts.onProgress || total === undefined) return;
    const now = performance.now();
    if (force || now - lastProgress >= PROGRESS_INTERVAL_MS) {
      lastProgress = now;
      opts.onProgress(pos, total);
    }
  };

  /** the next `length` bytes, in `part` (record: the data record being read) */
  const take = async (length: number, part: StreamPart, record?: number): Promise<Buffer> => {
    let buf: Buffer;
    try {
      buf = await source.readExact(length);
    } catch (err) {
      throw sourceFailure(err, pos, length, part, total, record, recordCount);
    }
    if (buf.length < length) {
      throw sourceFailure({ bytesRead: buf.length }, pos, length, part, total, record, recordCount);
    }
    pos += length;
    return buf.length === length ? buf : buf.subarray(0, length);
  };

  const hash = createHash('sha256');

  // 1. header
  const headerBlock = await take(HEADER_SIZE, 'header');
  const header = readStreamHeader(headerBlock);
  hash.update(headerBlock);
  const layout = headerLayout(header);
  total = layout.totalBytes;
  recordCount = header.recordCount;
  const n = recordCount;
  if (opts.onHeader) await opts.onHeader(header);

  // 2. chunk table, verified before any data is delivered
  const table = Buffer.allocUnsafe(layout.tableBytes);
  for (let off = 0; off < layout.tableBytes; off += METADATA_READ_BYTES) {
    const piece = await take(Math.min(METADATA_READ_BYTES, layout.tableBytes - off), 'chunk table');
    piece.copy(table, off);
    hash.update(piece);
  }
  checkChunkTable(header, table);
  progress(false);

  // 3. data
  const crcs = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const data = await take(layout.chunkSize, 'data', i);
    crcs[i] = native.crc32c(data);
    if (deliver) await sink!.writeChunk(chunkTableEntry(table, i), data);
    progress(false);
  }

  // 4. CRC table and trailer
  const crcTable = Buffer.allocUnsafe(layout.crcTableBytes);
  for (let off = 0; off < layout.crcTableBytes; off += METADATA_READ_BYTES) {
    const piece = await take(Math.min(METADATA_READ_BYTES, layout.crcTableBytes - off), 'CRC table');
    piece.copy(crcTable, off);
    hash.update(piece);
  }
  const trailerBlock = await take(TRAILER_SIZE, 'trailer');
  const trailer = decodeStreamTrailer(header, trailerBlock);
  hash.update(trailerBlock.subarray(0, TRAILER_DIGESTED_BYTES));

  // a damaged CRC table would otherwise show up as records failing their check, blaming the wrong bytes
  const crcTableCrc = native.crc32c(crcTable);
  if (crcTableCrc !== trailer.crcTableCrc) {
    throw new StreamError(
      'ECORRUPT',
      `CRC table CRC mismatch (stored ${hex32(trailer.crcTableCrc)} in the trailer, computed ${hex32(crcTableCrc)}; ` +
        `stream bytes ${layout.crcTableOffset}..${layout.trailerOffset - 1})`,
      { part: 'CRC table', streamOffset: layout.crcTableOffset, streamBytes: total, field: 'CRC table CRC' },
    );
  }

  const mismatches: CrcMismatch[] = [];
  let mismatchCount = 0;
  const damaged = new Map<number, number>();
  const tolerate = opts.tolerateGenerations;
  for (let i = 0; i < n; i++) {
    const stored = crcTable.readUInt32LE(i * CRC_ENTRY_SIZE);
    if (stored === crcs[i]) continue;
    const entry = chunkTableEntry(table, i);
    if (tolerate?.has(entry.generation)) {
      damaged.set(entry.generation, (damaged.get(entry.generation) ?? 0) + 1);
      continue;
    }
    mismatchCount++;
    if (mismatches.length < maxReported) {
      const streamOffset = recordStreamOffset(layout, i);
      mismatches.push({
        record: i,
        volumeOffset: entry.offset,
        generation: entry.generation,
        streamOffset,
        streamEnd: streamOffset + layout.chunkSize - 1,
        stored,
        computed: crcs[i],
      });
    }
  }
  if (mismatchCount > 0) {
    const listed = mismatches.map((m) => describeRecord(m, n)).join('; ');
    const more = mismatchCount > mismatches.length ? `; and ${mismatchCount - mismatches.length} more` : '';
    const message =
      mismatchCount === 1 ? listed : `${mismatchCount} of ${n} records fail their CRC32C check: ${listed}${more}`;
    const first = mismatches[0];
    throw new StreamError(
      'ECORRUPT',
      message,
      {
        part: 'data',
        streamOffset: first?.streamOffset,
        streamBytes: total,
        record: first?.record,
        recordCount: n,
        volumeOffset: first?.volumeOffset,
        generation: first?.generation,
      },
      { mismatches, mismatchCount },
    );
  }

  const digest = hash.digest('hex');
  if (digest !== trailer.digest) {
    throw new StreamError('ECORRUPT', `stream digest mismatch (stored ${trailer.digest}, computed ${digest})`, {
      part: 'trailer',
      streamOffset: layout.trailerOffset + TRAILER_DIGESTED_BYTES,
      streamBytes: total,
      field: 'digest',
    });
  }
  progress(true);
  return { header, records: n, bytes: pos, digest, damaged };
}

/** Turns a failed readExact into a StreamError with the position (see ByteSource in io.ts). */
function sourceFailure(
  err: unknown,
  pos: number,
  length: number,
  part: StreamPart,
  total: number | undefined,
  record: number | undefined,
  recordCount: number,
): unknown {
  if (err instanceof StreamError) return err;
  const e = (err ?? {}) as { syscall?: unknown; bytesRead?: unknown; message?: unknown };
  const of = total === undefined ? '' : ` of ${total}`;
  const where = record === undefined ? `in the ${part}` : `in the data, record ${record} of ${recordCount}`;
  const position: StreamPosition = { part, streamOffset: pos };
  if (total !== undefined) position.streamBytes = total;
  if (record !== undefined) Object.assign(position, { record, recordCount });
  const cause = err instanceof Error ? { cause: err } : undefined;
  if (typeof e.syscall === 'string') {
    return new StreamError(
      'EIO',
      `read error at stream bytes ${pos}..${pos + length - 1}${of} (${where}): ${String(e.message)}`,
      position,
      cause,
    );
  }
  const bytesRead = e.bytesRead;
  if (typeof bytesRead === 'number' && Number.isInteger(bytesRead) && bytesRead >= 0 && bytesRead < length) {
    position.streamOffset = pos + bytesRead;
    return new StreamError('ETRUNCATED', `stream truncated at byte ${pos + bytesRead}${of} (${where})`, position, cause);
  }
  return new StreamError(
    'ETRUNCATED',
    `stream truncated within bytes ${pos}..${pos + length - 1}${of} (${where})`,
    position,
    cause,
  );
}
