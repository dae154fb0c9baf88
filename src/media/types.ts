/**
 * The media layer's interfaces. A medium holds a sequence of files (tape terminology: the data between
 * filemarks); each backup stream is one file. Underneath, media move records; the backup code above only uses the
 * byte-level reader and writer (stream.ts), which cut streams into records and join them again.
 */

export type MediumKind = 'file' | 'pipe' | 'tap' | 'tape';

/** How a medium is opened: 'write' positions for a new stream and may create an image or file. */
export type OpenMode = 'read' | 'write';

/**
 * One open medium, record by record (DESIGN.md: "write record, write filemark, rewind, space, read record,
 * capacity warning"). Calls must not overlap: await each before the next. Operations a kind cannot do (a pipe
 * cannot rewind, a plain file has no filemarks) throw a MediaError saying so.
 */
export interface RecordMedium {
  readonly kind: MediumKind;
  /** for messages, e.g. "SIMH tape image /b/x.tap" */
  readonly description: string;
  /** preferred record size for writing, in bytes */
  readonly recordSize: number;
  /** bytes the medium holds when it has a configured capacity (tap images), else null */
  readonly capacity: number | null;
  /** 0-based number of the file the medium is positioned in (the filemarks passed since the beginning) */
  readonly fileNumber: number;
  /**
   * Reads the next record into `buf` and resolves its length, or 'filemark' (the position is then after it) or
   * 'end' (end of the recorded data; the position stays). A record longer than `buf` is an error naming its size.
   */
  readRecord(buf: Buffer): Promise<number | 'filemark' | 'end'>;
  /** Writes `data` as one record; throws MediumFullError (nothing of it written) when the medium has no room. */
  writeRecord(data: Buffer): Promise<void>;
  writeFilemark(): Promise<void>;
  rewind(): Promise<void>;
  /** Moves forward past `count` filemarks; throws MediaError 'ENOENT' when the recorded data ends first. */
  skipFiles(count: number): Promise<void>;
  /** Positions after the last filemark, to append a file (a torn or unterminated tail after it is dropped). */
  seekEndOfData(): Promise<void>;
  /** Inside the early-warning zone: there is room for little more than a filemark. */
  readonly earlyWarning: boolean;
  /** Makes everything written so far durable. */
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** Where a stream's bytes go. The caller may reuse `data` once the promise settles. */
export interface ByteSink {
  write(data: Buffer): Promise<void>;
}

/** Where a stream's bytes come from. Throws TruncatedMediumError when the file ends first. */
export interface ByteSource {
  readExact(length: number): Promise<Buffer>;
}

/** A stream being written to one file of a medium (stream.ts `openWriteStream`). */
export interface MediaStreamWriter extends ByteSink {
  readonly description: string;
  /** bytes accepted by `write` so far (some may still wait in the partial last record) */
  readonly bytesWritten: number;
  /** 0-based position of this stream's file on the medium */
  readonly fileNumber: number;
  /**
   * Writes the partial last record, a filemark on tap/tape, and syncs. Throws MediumFullError, with the medium
   * left readable, when the stream did not fit.
   */
  finish(): Promise<{ bytes: number; fileNumber: number }>;
  /**
   * Gives up, best effort, and never throws: on tap/tape the records already written are ended with a filemark so
   * the medium stays readable and appendable; a plain file this writer created is removed (one it replaced is left
   * empty). Also call it after a failed write or finish; after a MediumFullError or finish it does nothing.
   */
  abort(): Promise<void>;
}

/** A stream being read from one file of a medium (stream.ts `openReadStream`). */
export interface MediaStreamReader extends ByteSource {
  readonly description: string;
  readonly fileNumber: number;
  /** bytes handed out so far */
  readonly bytesRead: number;
  /** Up to `max` bytes (at least 1), or null at the end of the file. */
  readAvailable(max: number): Promise<Buffer | null>;
  close(): Promise<void>;
}

/** One file on a medium, as `thinvault media list` shows it. */
export interface ListedFile {
  /** 0-based (`media list` prints fileNumber + 1) */
  fileNumber: number;
  /** the first bytes of the file, up to the number asked for */
  head: Buffer;
  /** the file's length when it is cheap to know (tap images, plain files, pipes), null on a tape drive */
  bytes: number | null;
  /** false when the file is not terminated (no filemark after a torn or unfinished write) or has a bad record */
  complete: boolean;
  /** why the file is incomplete, for the listing */
  problem: string | null;
}
