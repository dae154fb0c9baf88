/**
 * Plain files and pipes: media that hold exactly one stream and have no filemarks. Also `LocalFile`, the open
 * regular file both a plain file and a SIMH image (tap.ts) are kept in.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { promisify } from 'node:util';
import { native } from '../native/index.js';
import { MediaError, MediumFullError, errnoCode, isNoSpace, systemError } from './errors.js';
import type { ListedFile, OpenMode, RecordMedium } from './types.js';

const fstat = promisify(fs.fstat);
const ftruncate = promisify(fs.ftruncate);
const close = promisify(fs.close);
const unlink = promisify(fs.unlink);

/**
 * A file opened for a medium. Writers hold an exclusive flock on it so that two backups cannot interleave their
 * records in one image; readers take no lock (listing an image during a backup shows the backup as unfinished).
 */
export class LocalFile {
  private directorySynced = false;

  private constructor(
    readonly path: string,
    readonly description: string,
    readonly fd: number,
    private readonly stats: fs.Stats,
    /** this open created the file (so abandoning the write may remove it) */
    readonly created: boolean,
  ) {}

  /**
   * Opens `file`; writing creates it when missing. `readBack` opens a file being written for reading too (a tap
   * image is searched for its end of data); a plain file is opened write-only, as a FIFO needs.
   */
  static async open(file: string, description: string, mode: OpenMode, readBack = false): Promise<LocalFile> {
    const { O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL } = fs.constants;
    const access = mode === 'read' ? O_RDONLY : readBack ? O_RDWR : O_WRONLY;
    let fd: number;
    let created = false;
    try {
      if (mode === 'read') {
        fd = await native.open(file, access, 0o666);
      } else {
        // O_EXCL first: only a file this open created may be removed again by an abort.
        try {
          fd = await native.open(file, access | O_CREAT | O_EXCL, 0o666);
          created = true;
        } catch (err) {
          if (errnoCode(err) !== 'EEXIST') throw err;
          fd = await native.open(file, access, 0o666);
        }
      }
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') {
        throw new MediaError(
          'ENOENT',
          mode === 'read' ? `${description} does not exist` : `cannot create ${description}: ${path.dirname(file)} does not exist`,
          { cause: err },
        );
      }
      throw systemError(`cannot open ${description}`, err);
    }
    try {
      const stats = await fstat(fd);
      if (mode === 'write' && stats.isFile() && !native.flock(fd, 'exclusive', true)) {
        throw new MediaError('EBUSY', `${description} is being written by another process`);
      }
      return new LocalFile(file, description, fd, stats, created);
    } catch (err) {
      fs.closeSync(fd);
      throw systemError(`cannot open ${description}`, err);
    }
  }

  /** a regular file (not a FIFO or a device given as a path) */
  get isRegular(): boolean {
    return this.stats.isFile();
  }

  /** regular files and block devices take positional I/O; FIFOs and character devices only move forward */
  get isSeekable(): boolean {
    return this.stats.isFile() || this.stats.isBlockDevice();
  }

  async size(): Promise<number> {
    return (await fstat(this.fd)).size;
  }

  async truncate(length: number): Promise<void> {
    try {
      await ftruncate(this.fd, length);
    } catch (err) {
      throw systemError(`cannot truncate ${this.description} to ${length} bytes`, err);
    }
  }

  /** fdatasync, and once for a file this open created, its directory (the new name must survive a crash too) */
  async sync(): Promise<void> {
    try {
      if (this.isSeekable) await native.fdatasync(this.fd);
      if (this.created && !this.directorySynced) {
        const dir = await native.open(path.dirname(this.path), fs.constants.O_RDONLY | fs.constants.O_DIRECTORY, 0);
        try {
          await native.fsync(dir);
        } finally {
          fs.closeSync(dir);
        }
        this.directorySynced = true;
      }
    } catch (err) {
      throw systemError(`cannot sync ${this.description}`, err);
    }
  }

  async remove(): Promise<void> {
    await unlink(this.path);
  }

  async close(): Promise<void> {
    await close(this.fd);
  }
}

/** bytes written through the page cache between background fdatasyncs (write-behind) */
const WRITE_BEHIND_BYTES = 64 * 1024 * 1024;
/** direct I/O wants buffers, offsets and lengths aligned to the logical block size; 4096 covers every disk */
const DIRECT_ALIGN = 4096;

/** A plain file (or a FIFO or device named as a path) holding one stream. */
export class PlainFileMedium implements RecordMedium {
  readonly kind = 'file';
  readonly capacity = null;
  readonly fileNumber = 0;
  /** a filesystem gives no warning before it is full */
  readonly earlyWarning = false;
  readonly description: string;
  private position = 0;
  /** write-behind: an fdatasync started in the background, and where the last one started */
  private backgroundSync: Promise<void> | null = null;
  private backgroundSyncError: unknown = null;
  /** bytes written through the page cache since the last background sync started */
  private bufferedSinceSync = 0;
  /**
   * A second descriptor on the same regular file, opened with O_DIRECT, and its aligned bounce buffer. A backup
   * read from the pool's page cache and written through the page cache again spent most of its time in the
   * kernel's copies (perf: copy_folio_from_iter_atomic); direct writes skip one of them. -1 where the filesystem
   * refuses O_DIRECT (tmpfs).
   */
  private directFd = -1;
  private bounce: Buffer | null = null;

  private constructor(
    private readonly file: LocalFile,
    private readonly mode: OpenMode,
    readonly recordSize: number,
  ) {
    this.description = file.description;
  }

  private async openDirect(): Promise<void> {
    if (this.mode !== 'write' || !this.file.isRegular) return;
    try {
      this.directFd = await native.open(this.file.path, fs.constants.O_WRONLY | native.constants.O_DIRECT, 0o666);
    } catch {
      this.directFd = -1; // buffered writes only
    }
  }

  /**
   * Opens `file` for one stream. Writing refuses a regular file that already holds data unless `overwrite`, and
   * then empties it.
   */
  static async open(file: string, mode: OpenMode, options: { overwrite?: boolean; recordSize: number }): Promise<PlainFileMedium> {
    const local = await LocalFile.open(file, `file ${file}`, mode);
    try {
      if (mode === 'write' && local.isRegular && (await local.size()) > 0) {
        if (!options.overwrite) {
          throw new MediaError('EEXIST', `${local.description} already holds data; pass --overwrite to replace it`);
        }
        await local.truncate(0);
      }
    } catch (err) {
      await local.close();
      throw err;
    }
    const medium = new PlainFileMedium(local, mode, options.recordSize);
    await medium.openDirect();
    return medium;
  }

  async readRecord(buf: Buffer): Promise<number | 'end'> {
    let n: number;
    try {
      n = this.file.isSeekable ? await native.pread(this.file.fd, buf, this.position) : await native.read(this.file.fd, buf);
    } catch (err) {
      throw systemError(`cannot read ${this.description}`, err);
    }
    this.position += n;
    return n === 0 ? 'end' : n;
  }

  async writeRecord(data: Buffer): Promise<void> {
    if (this.mode !== 'write') throw new MediaError('EINVAL', `${this.description} was opened for reading`);
    const direct = this.directFd >= 0 && data.length % DIRECT_ALIGN === 0 && this.position % DIRECT_ALIGN === 0;
    try {
      if (direct) {
        if (this.bounce === null || this.bounce.length < data.length) this.bounce = native.allocAligned(Math.max(data.length, this.recordSize), DIRECT_ALIGN);
        data.copy(this.bounce);
        await native.pwrite(this.directFd, this.bounce.subarray(0, data.length), this.position);
      } else if (this.file.isSeekable) {
        await native.pwrite(this.file.fd, data, this.position);
      } else {
        await writeFully(this.file.fd, data);
      }
    } catch (err) {
      // Never leave part of a record behind: what is in the file is exactly the records that were written.
      if (this.file.isRegular) await this.file.truncate(this.position).catch(() => {});
      if (isNoSpace(err)) throw new MediumFullError(this.description, this.position, null, { cause: err });
      if (errnoCode(err) === 'EPIPE') throw new MediaError('EIO', `the reader of ${this.description} went away`, { cause: err });
      throw systemError(`cannot write ${this.description}`, err);
    }
    this.position += data.length;
    if (!direct) this.bufferedSinceSync += data.length;
    if (this.file.isRegular && this.backgroundSync === null && this.bufferedSinceSync >= WRITE_BEHIND_BYTES) {
      // Start writing back what is in the page cache while the stream goes on: otherwise a large backup sits in
      // memory until the final sync and then costs a second, serial pass over the disk.
      this.bufferedSinceSync = 0;
      this.backgroundSync = native.fdatasync(this.file.fd).then(
        () => {
          this.backgroundSync = null;
        },
        (err) => {
          this.backgroundSyncError ??= err;
          this.backgroundSync = null;
        },
      );
    }
  }

  async writeFilemark(): Promise<void> {
    throw new MediaError('ENOTSUP', `${this.description} holds exactly one stream and has no filemarks`);
  }

  async rewind(): Promise<void> {
    if (!this.file.isSeekable) throw new MediaError('ENOTSUP', `${this.description} cannot be rewound`);
    this.position = 0;
  }

  async skipFiles(count: number): Promise<void> {
    if (count > 0) throw new MediaError('ENOENT', `${this.description} holds exactly one stream`);
  }

  async seekEndOfData(): Promise<void> {
    throw new MediaError('ENOTSUP', `${this.description} holds exactly one stream; nothing can be appended to it`);
  }

  async sync(): Promise<void> {
    await this.backgroundSync;
    // a failed fdatasync may have dropped the pages it could not write: the stream is not safely on disk
    if (this.backgroundSyncError !== null) throw systemError(`cannot sync ${this.description}`, this.backgroundSyncError);
    await this.file.sync();
  }

  async close(): Promise<void> {
    await this.backgroundSync;
    if (this.directFd >= 0) {
      fs.closeSync(this.directFd);
      this.directFd = -1;
    }
    await this.file.close();
  }

  /** Undoes this writer's work: removes the file it created, or empties the file it was replacing. */
  async discard(): Promise<void> {
    if (this.file.created) await this.file.remove();
    else if (this.file.isRegular) await this.file.truncate(0);
    this.position = 0;
  }

  async listFiles(headerBytes: number): Promise<ListedFile[]> {
    return listSingleStream(this, headerBytes, this.file.isRegular ? await this.file.size() : null);
  }
}

/**
 * Standard input or output. Node streams, not the raw descriptors: they cope with non-blocking pipes, and a write
 * completes only once the data has left the stream, so the caller may reuse its buffer afterwards.
 */
export class PipeMedium implements RecordMedium {
  readonly kind = 'pipe';
  readonly capacity = null;
  readonly fileNumber = 0;
  readonly earlyWarning = false;
  private pending: Buffer = Buffer.alloc(0);
  private bytesMoved = 0;
  private chunks: AsyncIterator<Buffer | string> | null = null;
  private inputEnded = false;
  /** an 'error' event without a listener would crash the process; the failed write's callback reports it */
  private readonly ignoreErrorEvent = (): void => {};

  private constructor(
    readonly description: string,
    readonly recordSize: number,
    private readonly input: Readable | null,
    private readonly output: Writable | null,
    /** the descriptor behind `output`, to fdatasync it when the shell redirected it to a file */
    private readonly outputFd: number | null,
  ) {
    output?.on('error', this.ignoreErrorEvent);
  }

  static forReading(input: Readable, recordSize: number, description = 'standard input'): PipeMedium {
    return new PipeMedium(description, recordSize, input, null, null);
  }

  static forWriting(output: Writable, recordSize: number, description = 'standard output', fd: number | null = null): PipeMedium {
    return new PipeMedium(description, recordSize, null, output, fd);
  }

  async readRecord(buf: Buffer): Promise<number | 'end'> {
    if (this.input === null) throw new MediaError('EINVAL', `${this.description} is written, not read`);
    while (this.pending.length === 0) {
      if (this.inputEnded) return 'end';
      this.chunks ??= this.input[Symbol.asyncIterator]();
      let next: IteratorResult<Buffer | string>;
      try {
        next = await this.chunks.next();
      } catch (err) {
        throw systemError(`cannot read ${this.description}`, err);
      }
      if (next.done) this.inputEnded = true;
      else this.pending = typeof next.value === 'string' ? Buffer.from(next.value) : next.value;
    }
    const n = this.pending.copy(buf, 0, 0, Math.min(buf.length, this.pending.length));
    this.pending = this.pending.subarray(n);
    this.bytesMoved += n;
    return n;
  }

  async writeRecord(data: Buffer): Promise<void> {
    const output = this.output;
    if (output === null) throw new MediaError('EINVAL', `${this.description} is read, not written`);
    try {
      await new Promise<void>((resolve, reject) => output.write(data, (err) => (err ? reject(err) : resolve())));
    } catch (err) {
      if (isNoSpace(err)) throw new MediumFullError(this.description, this.bytesMoved, null, { cause: err });
      if (errnoCode(err) === 'EPIPE') throw new MediaError('EIO', `the reader of ${this.description} went away`, { cause: err });
      throw systemError(`cannot write ${this.description}`, err);
    }
    this.bytesMoved += data.length;
  }

  async writeFilemark(): Promise<void> {
    throw new MediaError('ENOTSUP', `${this.description} carries exactly one stream and has no filemarks`);
  }

  async rewind(): Promise<void> {
    throw new MediaError('ENOTSUP', `${this.description} cannot be rewound`);
  }

  async skipFiles(count: number): Promise<void> {
    if (count > 0) throw new MediaError('ENOENT', `${this.description} carries exactly one stream`);
  }

  async seekEndOfData(): Promise<void> {
    throw new MediaError('ENOTSUP', `${this.description} carries exactly one stream; nothing can be appended to it`);
  }

  async sync(): Promise<void> {
    if (this.outputFd === null) return;
    // `thinvault backup ... --to - > file`: the file deserves the same durability as a plain file target.
    const isFile = await fstat(this.outputFd).then((s) => s.isFile(), () => false);
    if (!isFile) return;
    try {
      await native.fdatasync(this.outputFd);
    } catch (err) {
      throw systemError(`cannot sync ${this.description}`, err);
    }
  }

  /** Leaves the stream itself open: standard input and output belong to the process. */
  async close(): Promise<void> {
    this.output?.off('error', this.ignoreErrorEvent);
  }

  async listFiles(headerBytes: number): Promise<ListedFile[]> {
    return listSingleStream(this, headerBytes, null);
  }
}

/**
 * The listing of a one-stream medium: its head, and its length, given as `size` or, where there is nothing to
 * ask (a pipe cannot be skipped over), counted by reading to the end.
 */
async function listSingleStream(medium: RecordMedium, headerBytes: number, size: number | null): Promise<ListedFile[]> {
  const head = Buffer.alloc(headerBytes);
  let got = 0;
  let ended = false;
  while (got < headerBytes && !ended) {
    const n = await medium.readRecord(head.subarray(got));
    if (typeof n === 'number') got += n;
    else ended = true;
  }
  let bytes = got;
  if (size !== null) bytes = size;
  else if (!ended) {
    const buf = Buffer.allocUnsafe(medium.recordSize);
    for (let n = await medium.readRecord(buf); typeof n === 'number'; n = await medium.readRecord(buf)) bytes += n;
  }
  return [{ fileNumber: 0, head: head.subarray(0, got), bytes, complete: true, problem: null }];
}

/** write(2) until all of `data` is out: FIFOs and character devices may take less than asked. */
async function writeFully(fd: number, data: Buffer): Promise<void> {
  let done = 0;
  while (done < data.length) done += await native.write(fd, data.subarray(done));
}
