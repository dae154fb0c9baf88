/** Errors of the backup stream layer. `code` says what kind of failure; `position` says where in the stream. */
export type StreamErrorCode =
  /** the bytes are not a thinvault stream (wrong magic) */
  | 'ENOTSTREAM'
  /** a valid stream of a version, kind or flag this reader does not know */
  | 'EUNSUPPORTED'
  /** damaged or inconsistent: a CRC, the digest, or a field that breaks the format's rules */
  | 'ECORRUPT'
  /** the stream ended before its last byte */
  | 'ETRUNCATED'
  /** the byte source failed with a system error */
  | 'EIO'
  /** the writer was given fields or entries the format cannot represent */
  | 'EINVAL';

/** the parts of a stream, in stream order (docs/stream-format.md) */
export type StreamPart = 'header' | 'chunk table' | 'data' | 'CRC table' | 'trailer';

export interface StreamPosition {
  part?: StreamPart;
  /** first stream byte concerned (for a truncation: the first byte that is missing, when known) */
  streamOffset?: number;
  /** the stream's total size, when the header was readable */
  streamBytes?: number;
  /** the header/trailer field or table entry field at fault */
  field?: string;
  /** record (chunk table entry) index, 0-based */
  record?: number;
  recordCount?: number;
  volumeOffset?: number;
  generation?: number;
}

/** one record whose data does not match its stored CRC */
export interface CrcMismatch {
  record: number;
  volumeOffset: number;
  generation: number;
  /** the record's stream bytes, first and last (inclusive) */
  streamOffset: number;
  streamEnd: number;
  stored: number;
  computed: number;
}

export class StreamError extends Error {
  readonly code: StreamErrorCode;
  readonly position: StreamPosition;
  /** CRC mismatches in detail (the first few); mismatchCount has the total */
  readonly mismatches?: readonly CrcMismatch[];
  readonly mismatchCount?: number;

  constructor(
    code: StreamErrorCode,
    message: string,
    position: StreamPosition = {},
    options?: { cause?: unknown; mismatches?: readonly CrcMismatch[]; mismatchCount?: number },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'StreamError';
    this.code = code;
    this.position = position;
    if (options?.mismatches) {
      this.mismatches = options.mismatches;
      this.mismatchCount = options.mismatchCount ?? options.mismatches.length;
    }
  }
}

/** "0x1a2b3c4d" */
export function hex32(value: number): string {
  return `0x${(value >>> 0).toString(16).padStart(8, '0')}`;
}
