/**
 * The interfaces the stream writer and reader work against. The media layer (src/media/) implements ByteSink and
 * ByteSource; the pool side implements ChunkSource (dump) and ChunkSink (restore). They are declared here, in the
 * shapes both sides agreed on, so that src/backup/ does not import either of them.
 */

/** Where a stream's bytes go (a file, a pipe, a tape). */
export interface ByteSink {
  /** the caller may reuse `data` after the promise settles */
  write(data: Buffer): Promise<void>;
}

/**
 * Where a stream's bytes come from.
 *
 * A source that ends before `length` bytes throws. The reader reports any such error as a truncated stream
 * (StreamError 'ETRUNCATED'), except an error that carries a `syscall` property (a failed system call, the
 * convention of node:fs and the native addon), which it reports as 'EIO'. A source that knows how many of the
 * `length` bytes it still had may set a numeric `bytesRead` on the error; the reader then names the exact byte
 * where the stream ended.
 */
export interface ByteSource {
  /** resolves exactly `length` bytes or throws; the returned buffer may be reused by the source on the next call */
  readExact(length: number): Promise<Buffer>;
}

/** One record of a stream: `length` bytes of the volume at `offset`, last changed in `generation`. */
export interface StreamEntry {
  /** byte offset in the volume, a multiple of the chunk size */
  offset: number;
  /** always the chunk size (the last chunk of a volume whose size is not a multiple is zero padded) */
  length: number;
  generation: number;
}

/** The pool side of a dump: the chunks to write, in stream order. */
export interface ChunkSource {
  /** ascending offset, no duplicates */
  readonly entries: readonly StreamEntry[];
  /** fills count × chunkSize bytes of `into` with the data of entries[firstIndex .. firstIndex + count − 1] */
  readChunks(firstIndex: number, count: number, into: Buffer): Promise<void>;
}

/**
 * The restore side. The stream reader delivers data **before** the stream is verified (the CRCs follow the data):
 * a sink stages what it receives and commits only after readStream resolved.
 */
export interface ChunkSink {
  /** `data` is valid only until the promise settles */
  writeChunk(entry: StreamEntry, data: Buffer): Promise<void>;
}
