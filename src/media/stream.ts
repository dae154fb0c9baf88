/**
 * Backup streams on media: the byte-level writer and reader the backup code uses, and the listing behind
 * `thinvault media list`. A stream is one file on the medium, cut into records of the target's record size (the
 * last one shorter); streams are self-delimiting, so the reader hands out bytes and leaves completeness to the
 * stream's own header.
 */
import { CorruptMediumError, MediaError, MediumFullError, TruncatedMediumError, type FileEnding } from './errors.js';
import { PipeMedium, PlainFileMedium } from './file.js';
import { TapImage } from './tap.js';
import { TapeDrive } from './tape.js';
import { MAX_RECORD_SIZE, checkRecordSize, holdsSeveralFiles, type MediaTarget } from './target.js';
import type { ListedFile, MediaStreamReader, MediaStreamWriter, OpenMode, RecordMedium } from './types.js';

/** Any open medium: the record interface plus the listing each kind does its own way. */
export type Medium = RecordMedium & { listFiles(headerBytes: number): Promise<ListedFile[]> };

export interface OpenMediumOptions {
  /** plain file: replace a file that already holds data (tap/tape: see WriteStreamOptions) */
  overwrite?: boolean;
  /** default: the target's record size */
  recordSize?: number;
}

/** Opens a target as a record medium, positioned where the kind starts (a tape drive stays where its tape is). */
export async function openMedium(target: MediaTarget, mode: OpenMode, options: OpenMediumOptions = {}): Promise<Medium> {
  const recordSize = checkRecordSize(options.recordSize ?? target.recordSize, target.spec);
  switch (target.kind) {
    case 'pipe':
      return mode === 'read'
        ? PipeMedium.forReading(process.stdin, recordSize)
        : PipeMedium.forWriting(process.stdout, recordSize, 'standard output', process.stdout.fd);
    case 'file':
      return PlainFileMedium.open(target.path, mode, { overwrite: options.overwrite, recordSize });
    case 'tap':
      return TapImage.open(target, mode, recordSize);
    case 'tape':
      return TapeDrive.open(target.device, mode, recordSize);
  }
}

export interface WriteStreamOptions {
  /** tap/tape: write after the last file on the medium; the default unless `overwrite` */
  append?: boolean;
  /** tap/tape: start the medium over at file 0 (a tap image is cut there); plain file: replace its data */
  overwrite?: boolean;
  /** bytes per record, default the target's record-size */
  recordSize?: number;
}

/** Opens a new stream on the medium: a new file after the last one on tap/tape, the whole of a plain file or pipe. */
export async function openWriteStream(target: MediaTarget, options: WriteStreamOptions = {}): Promise<MediaStreamWriter> {
  if ((target.kind === 'tap' || target.kind === 'tape') && target.fileNumber !== null) {
    throw new MediaError('EINVAL', `'${target.spec}': a file number selects a file to read; a new stream goes after the last file`);
  }
  if (options.append && options.overwrite) throw new MediaError('EINVAL', 'append and overwrite exclude each other');
  if (options.append && !holdsSeveralFiles(target)) {
    throw new MediaError('EINVAL', `'${target.spec}' holds one stream; appending needs a tap: or tape: target`);
  }
  const medium = await openMedium(target, 'write', options);
  try {
    if (holdsSeveralFiles(medium)) {
      if (options.overwrite) await medium.rewind();
      else await medium.seekEndOfData();
    }
  } catch (err) {
    await medium.close().catch(() => {});
    throw err;
  }
  return new RecordStreamWriter(medium);
}

/**
 * Opens file `fileNumber` (0-based; default the target's `#N`, else the first) for reading. A tape drive is
 * rewound first, since it may be anywhere.
 */
export async function openReadStream(target: MediaTarget, fileNumber?: number): Promise<MediaStreamReader> {
  const wanted = fileNumber ?? (target.kind === 'tap' || target.kind === 'tape' ? target.fileNumber : null) ?? 0;
  if (!Number.isSafeInteger(wanted) || wanted < 0) throw new MediaError('EINVAL', `invalid file number ${wanted}`);
  if (wanted > 0 && !holdsSeveralFiles(target)) {
    throw new MediaError('ENOENT', `'${target.spec}' holds one stream; there is no file #${wanted + 1}`);
  }
  const medium = await openMedium(target, 'read');
  const noSuchFile = (cause?: unknown) => {
    const held = medium.fileNumber;
    return new MediaError('ENOENT', `there is no file #${wanted + 1} on ${medium.description}: it holds ${held} file${held === 1 ? '' : 's'}`, {
      cause,
    });
  };
  try {
    if (holdsSeveralFiles(medium)) {
      await medium.rewind();
      await medium.skipFiles(wanted).catch((err: unknown) => {
        throw err instanceof MediaError && err.code === 'ENOENT' ? noSuchFile(err) : err;
      });
    }
    const reader = new RecordStreamReader(medium, wanted);
    // Spacing over the last filemark succeeds, and lands at the end of the data, not at a file.
    if (holdsSeveralFiles(medium) && (await reader.isAtEndOfData())) throw noSuchFile();
    return reader;
  } catch (err) {
    await medium.close().catch(() => {});
    throw err;
  }
}

/**
 * Every file on the medium with its first `headerBytes` bytes, its length where that is cheap to know, and whether
 * it ended properly. Damage ends the list with an incomplete entry rather than an exception.
 */
export async function listFiles(target: MediaTarget, headerBytes: number): Promise<ListedFile[]> {
  if (!Number.isSafeInteger(headerBytes) || headerBytes < 0) throw new MediaError('EINVAL', `invalid header size ${headerBytes}`);
  const medium = await openMedium(target, 'read');
  try {
    return await medium.listFiles(headerBytes);
  } finally {
    await medium.close();
  }
}

/**
 * Cuts a stream into records. Bytes gather in one preallocated record buffer; when a write starts on a record
 * boundary, whole records go to the medium straight from the caller's buffer (the caller waits for each write, so
 * the buffer is not reused under it).
 */
class RecordStreamWriter implements MediaStreamWriter {
  readonly description: string;
  readonly fileNumber: number;
  private readonly recordSize: number;
  private readonly record: Buffer;
  /** bytes waiting in `record` */
  private filled = 0;
  /** bytes of the stream on the medium */
  private written = 0;
  /** false once the medium is closed (finished, aborted, or stopped at a full medium) */
  private open = true;
  /** the error that ended the stream; later calls report it again */
  private failure: unknown = null;

  constructor(private readonly medium: Medium) {
    this.description = medium.description;
    this.fileNumber = medium.fileNumber;
    this.recordSize = medium.recordSize;
    this.record = Buffer.allocUnsafe(this.recordSize);
  }

  get bytesWritten(): number {
    return this.written + this.filled;
  }

  async write(data: Buffer): Promise<void> {
    this.checkUsable();
    try {
      let offset = 0;
      while (offset < data.length) {
        if (this.filled === 0 && data.length - offset >= this.recordSize) {
          await this.putRecord(data.subarray(offset, offset + this.recordSize));
          offset += this.recordSize;
          continue;
        }
        const copied = data.copy(this.record, this.filled, offset, Math.min(data.length, offset + this.recordSize - this.filled));
        this.filled += copied;
        offset += copied;
        if (this.filled === this.recordSize) {
          await this.putRecord(this.record);
          this.filled = 0;
        }
      }
    } catch (err) {
      this.failure = err;
      throw err;
    }
  }

  async finish(): Promise<{ bytes: number; fileNumber: number }> {
    this.checkUsable();
    try {
      if (this.filled > 0) {
        await this.putRecord(this.record.subarray(0, this.filled));
        this.filled = 0;
      }
      if (holdsSeveralFiles(this.medium)) {
        if (this.written === 0) {
          // Two filemarks in a row mean "end of recorded data" to tape software: an empty file would hide every
          // file after it from SIMH's tools and from tape drives. Streams always have a header, so this is a bug.
          throw new MediaError('EINVAL', `an empty stream cannot be written to ${this.description}`);
        }
        await this.medium.writeFilemark();
      }
      await this.medium.sync();
    } catch (err) {
      if (this.open) this.failure = err;
      throw err;
    }
    this.open = false;
    await this.medium.close();
    return { bytes: this.written, fileNumber: this.fileNumber };
  }

  async abort(): Promise<void> {
    if (!this.open) return;
    this.open = false;
    this.failure ??= new MediaError('EINVAL', `the stream to ${this.description} was aborted`);
    try {
      // Records already written stay; ending them with a filemark keeps the medium readable and appendable.
      if (holdsSeveralFiles(this.medium) && this.written > 0) await this.medium.writeFilemark();
      if (this.medium instanceof PlainFileMedium) await this.medium.discard();
    } catch {
      // best effort: the medium is closed below either way
    } finally {
      await this.medium.close().catch(() => {});
    }
  }

  private checkUsable(): void {
    if (this.failure !== null) throw this.failure;
    if (!this.open) throw new MediaError('EINVAL', `the stream to ${this.description} is already finished`);
  }

  /**
   * Writes one record, or ends the stream at a full medium. Once the medium is in its early-warning zone no
   * further record is written: the zone is kept for the filemark that ends this file.
   */
  private async putRecord(record: Buffer): Promise<void> {
    if (this.medium.earlyWarning) return this.stopAtFullMedium(null);
    try {
      await this.medium.writeRecord(record);
    } catch (err) {
      if (err instanceof MediumFullError) return this.stopAtFullMedium(err);
      throw err;
    }
    this.written += record.length;
  }

  /** Ends the file cleanly where the medium filled up, then throws MediumFullError. */
  private async stopAtFullMedium(cause: MediumFullError | null): Promise<never> {
    this.open = false;
    // The medium counts what reached it, which includes a partial record a tape drive took at the physical end.
    if (cause !== null) this.written = Math.max(this.written, cause.bytesWritten);
    try {
      // A file with no records gets no filemark: it would be an empty file, i.e. a false end of data.
      if (holdsSeveralFiles(this.medium) && this.written > 0) await this.medium.writeFilemark();
      await this.medium.sync();
    } catch {
      // Without its filemark the file lists as unterminated, which is the truth; the error stays "medium full".
    } finally {
      await this.medium.close().catch(() => {});
    }
    const error = new MediumFullError(this.description, this.written, this.medium.capacity, { cause });
    this.failure = error;
    throw error;
  }
}

/** Joins records back into a byte stream; record boundaries are invisible to the caller. */
class RecordStreamReader implements MediaStreamReader {
  readonly description: string;
  private readonly record: Buffer;
  /** unread bytes of the current record: record[start, end) */
  private start = 0;
  private end = 0;
  private delivered = 0;
  /** set once the file has ended */
  private ending: { endedBy: FileEnding; corruption?: CorruptMediumError } | null = null;

  constructor(
    private readonly medium: Medium,
    readonly fileNumber: number,
  ) {
    this.description = medium.description;
    // Records on tape and in images may have been written with any record size: read with room for the largest.
    // (Untouched pages of the buffer cost no memory.)
    this.record = Buffer.allocUnsafe(holdsSeveralFiles(medium) ? MAX_RECORD_SIZE : medium.recordSize);
  }

  get bytesRead(): number {
    return this.delivered;
  }

  async readExact(length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length);
    let filled = 0;
    while (filled < length) {
      if (this.start === this.end && !(await this.nextRecord())) throw this.truncated(length - filled);
      filled += this.take(out, filled, length - filled);
    }
    return out;
  }

  async readAvailable(max: number): Promise<Buffer | null> {
    if (max < 1) throw new MediaError('EINVAL', `readAvailable needs a positive length, not ${max}`);
    if (this.start === this.end && !(await this.nextRecord())) {
      if (this.ending?.endedBy === 'corrupt-record') throw this.truncated(null);
      return null;
    }
    const out = Buffer.allocUnsafe(Math.min(max, this.end - this.start));
    this.take(out, 0, out.length);
    return out;
  }

  async close(): Promise<void> {
    await this.medium.close();
  }

  /** Loads the first record: true when the recorded data ends before this file begins. */
  async isAtEndOfData(): Promise<boolean> {
    return this.delivered === 0 && this.start === this.end && !(await this.nextRecord()) && this.ending?.endedBy === 'end-of-medium';
  }

  /** Copies up to `count` bytes of the current record into `out` at `at`; returns how many. */
  private take(out: Buffer, at: number, count: number): number {
    const n = this.record.copy(out, at, this.start, Math.min(this.end, this.start + count));
    this.start += n;
    this.delivered += n;
    return n;
  }

  /** Loads the next record of this file; false once the file has ended (the filemark is never read past). */
  private async nextRecord(): Promise<boolean> {
    while (this.ending === null) {
      let result: number | 'filemark' | 'end';
      try {
        result = await this.medium.readRecord(this.record);
      } catch (err) {
        if (!(err instanceof CorruptMediumError)) throw err;
        this.ending = { endedBy: 'corrupt-record', corruption: err };
        return false;
      }
      if (result === 'filemark') this.ending = { endedBy: 'filemark' };
      else if (result === 'end') this.ending = { endedBy: holdsSeveralFiles(this.medium) ? 'end-of-medium' : 'end-of-file' };
      else if (result > 0) {
        this.start = 0;
        this.end = result;
        return true;
      }
    }
    return false;
  }

  private truncated(missing: number | null): TruncatedMediumError {
    return new TruncatedMediumError({
      medium: this.description,
      fileNumber: this.fileNumber,
      bytesRead: this.delivered,
      missing,
      endedBy: this.ending?.endedBy ?? 'end-of-file',
      corruption: this.ending?.corruption,
    });
  }
}
