/**
 * Writes a backup stream (docs/stream-format.md) from a ChunkSource to a ByteSink in one pass: header and chunk
 * table first (they do not depend on the data), then the data in batches while the CRCs are computed, then the
 * CRC table and the trailer. Reads run ahead of the sink so that reading the pool and writing the medium overlap.
 */
import { randomUUID } from 'node:crypto';
import { native } from '../native/index.js';
import { StreamError } from './errors.js';
import type { ByteSink, ChunkSource } from './io.js';
import { encodeStreamHead, encodeStreamTail, type StreamFields, type StreamHeader } from './stream-format.js';

/** default bytes per ChunkSource read: large enough for sequential throughput, small enough to keep memory low */
export const DEFAULT_READ_BATCH_BYTES = 1024 * 1024;
/** default number of batches being read while the previous one is written */
export const DEFAULT_READ_AHEAD = 3;
export const MAX_READ_AHEAD = 8;
/** onProgress is called at most this often (plus once at the end) */
export const PROGRESS_INTERVAL_MS = 100;

/** StreamFields with the per-stream values the writer can choose itself left optional */
export type StreamFieldsInput = Omit<StreamFields, 'streamUuid' | 'createdAt' | 'baseStreamUuid' | 'managementInfo'> & {
  /** default: a random UUID */
  streamUuid?: string;
  /** default: now */
  createdAt?: number;
  /** default: null (nil) */
  baseStreamUuid?: string | null;
  /** default: zeros */
  managementInfo?: Buffer;
};

export interface WriteStreamOptions {
  fields: StreamFieldsInput;
  source: ChunkSource;
  sink: ByteSink;
  /** called with bytes written so far and the stream's total, at most every 100 ms and once at the end */
  onProgress?: (doneBytes: number, totalBytes: number) => void;
  /** chunks per ChunkSource read (default: enough for 1 MiB) */
  readBatchChunks?: number;
  /** batches read ahead of the one being written, 1..8 (default 3) */
  readAhead?: number;
}

export interface WriteStreamResult {
  /** the header as written (stream UUID, created-at and layout fields filled in) */
  header: StreamHeader;
  /** stream bytes written (= header.totalBytes) */
  bytes: number;
  records: number;
  /** SHA-256 stream digest, lower-case hex (as in the trailer) */
  digest: string;
  /** CRC32C of each record's data, in stream order (as in the CRC table) */
  crcs: Uint32Array;
}

/** the writer's defaults applied to the optional fields */
export function resolveStreamFields(input: StreamFieldsInput): StreamFields {
  return {
    ...input,
    streamUuid: input.streamUuid ?? randomUUID(),
    createdAt: input.createdAt ?? Date.now(),
    baseStreamUuid: input.baseStreamUuid ?? null,
    managementInfo: input.managementInfo ?? Buffer.alloc(0),
  };
}

function positiveInteger(name: string, value: number, max: number): number {
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw new StreamError('EINVAL', `${name} ${value} is not an integer in 1..${max}`);
  }
  return value;
}

/**
 * Writes the whole stream. Errors of the source and the sink propagate unchanged (the caller knows what its media
 * errors mean, e.g. end of tape); invalid fields or entries throw StreamError 'EINVAL' before anything is written.
 */
export async function writeStream(opts: WriteStreamOptions): Promise<WriteStreamResult> {
  const { source, sink, onProgress } = opts;
  const fields = resolveStreamFields(opts.fields);
  const entries = source.entries;
  const head = encodeStreamHead(fields, entries);
  const { layout } = head;
  const n = layout.recordCount;
  const chunkSize = layout.chunkSize;
  const total = layout.totalBytes;

  const batchChunks = Math.min(
    positiveInteger(
      'readBatchChunks',
      opts.readBatchChunks ?? Math.max(1, Math.floor(DEFAULT_READ_BATCH_BYTES / chunkSize)),
      Math.floor(0xffff_ffff / chunkSize),
    ),
    Math.max(1, n),
  );
  const readAhead = positiveInteger('readAhead', opts.readAhead ?? DEFAULT_READ_AHEAD, MAX_READ_AHEAD);
  const batchCount = Math.ceil(n / batchChunks);
  // One buffer per batch in flight plus the one being written; the read of batch b + readAhead goes into the
  // buffer of batch b − 1, whose sink write has settled by then.
  const slots = Math.min(readAhead + 1, batchCount);
  const buffers: Buffer[] = [];
  const chunkViews: Buffer[][] = [];
  for (let s = 0; s < slots; s++) {
    // aligned, so that a source reading with O_DIRECT can fill it in place
    const buf = native.allocAligned(batchChunks * chunkSize);
    buffers.push(buf);
    const views: Buffer[] = [];
    for (let j = 0; j < batchChunks; j++) views.push(buf.subarray(j * chunkSize, (j + 1) * chunkSize));
    chunkViews.push(views);
  }
  const crcs = new Uint32Array(n);

  let done = 0;
  let lastProgress = performance.now();
  const progress = (force: boolean) => {
    if (!onProgress) return;
    const now = performance.now();
    if (force || now - lastProgress >= PROGRESS_INTERVAL_MS) {
      lastProgress = now;
      onProgress(done, total);
    }
  };
  const put = async (data: Buffer) => {
    if (data.length === 0) return;
    await sink.write(data);
    done += data.length;
    progress(false);
  };

  await put(head.header);
  await put(head.table);

  const reads: (Promise<void> | undefined)[] = new Array(slots);
  const batchLength = (b: number) => Math.min(batchChunks, n - b * batchChunks);
  const startRead = (b: number) => {
    const slot = b % slots;
    const count = batchLength(b);
    const p = source.readChunks(b * batchChunks, count, buffers[slot].subarray(0, count * chunkSize));
    // a read that fails while an earlier batch is being written is reported when its turn comes (or dropped if
    // the sink failed first); never an unhandled rejection
    p.catch(() => {});
    reads[slot] = p;
  };
  try {
    for (let b = 0; b < Math.min(readAhead, batchCount); b++) startRead(b);
    for (let b = 0; b < batchCount; b++) {
      const slot = b % slots;
      await reads[slot];
      reads[slot] = undefined;
      const first = b * batchChunks;
      const count = batchLength(b);
      const views = chunkViews[slot];
      for (let j = 0; j < count; j++) crcs[first + j] = native.crc32c(views[j]);
      if (b + readAhead < batchCount) startRead(b + readAhead);
      await put(count === batchChunks ? buffers[slot] : buffers[slot].subarray(0, count * chunkSize));
    }
  } catch (err) {
    // the caller may release the source as soon as we return: let reads still in flight finish first
    await Promise.allSettled(reads.filter((p): p is Promise<void> => p !== undefined));
    throw err;
  }

  const tail = encodeStreamTail(head, crcs);
  await put(tail.crcTable);
  await put(tail.trailer);
  if (done !== total) {
    // cannot happen unless the layout arithmetic and the writer disagree; refuse to report success
    throw new StreamError('EINVAL', `wrote ${done} stream bytes, the layout says ${total}`);
  }
  progress(true);
  return { header: head.streamHeader, bytes: done, records: n, digest: tail.digest, crcs };
}
