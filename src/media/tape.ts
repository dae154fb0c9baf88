/**
 * A tape drive through the Linux st driver (docs/media.md, "Tape drives"; notes: kernel Documentation/scsi/st.rst).
 * The drive runs in variable block mode, so each write(2) is one record on tape and each read(2) returns one
 * record. Positioning and filemarks are MTIOCTOP ioctls through the native addon, off the event loop: a rewind or
 * a space to end of data can take minutes.
 */
import fs from 'node:fs';
import { promisify } from 'node:util';
import { native } from '../native/index.js';
import { MediaError, MediumFullError, errnoCode, errnoText, systemError } from './errors.js';
import { MAX_RECORD_SIZE } from './target.js';
import type { ListedFile, OpenMode, RecordMedium } from './types.js';

const close = promisify(fs.close);

/** MTIOCTOP operation numbers, as <sys/mtio.h> defines them on this system. */
function tapeOp(name: 'MTWEOF' | 'MTREW' | 'MTFSF' | 'MTEOM' | 'MTSETBLK'): number {
  const op = native.tapeOps[name];
  if (op === undefined) throw new Error(`the native addon does not export ${name}`);
  return op;
}

export class TapeDrive implements RecordMedium {
  readonly kind = 'tape';
  /** a drive reports the end of its tape only when a write meets it */
  readonly capacity = null;
  readonly description: string;
  private currentFile: number;
  private fileBytes = 0;
  /** a write met the early-warning point (ENOSPC); the writer has room left for a filemark */
  private pastEarlyWarning = false;
  /** the last read returned a filemark: st signals end of data as two zero-byte reads in a row */
  private lastReadWasFilemark = false;

  private constructor(
    readonly device: string,
    private readonly fd: number,
    private readonly mode: OpenMode,
    readonly recordSize: number,
    fileNumber: number,
  ) {
    this.description = `tape drive ${device}`;
    this.currentFile = fileNumber;
  }

  /**
   * Opens the drive where its tape is (a non-rewinding device such as /dev/nst0 keeps its position between
   * opens), checks that it is a tape with a tape loaded, and puts it in variable block mode.
   */
  static async open(device: string, mode: OpenMode, recordSize: number): Promise<TapeDrive> {
    let fd: number;
    try {
      fd = await native.open(device, mode === 'write' ? fs.constants.O_RDWR : fs.constants.O_RDONLY, 0);
    } catch (err) {
      switch (errnoCode(err)) {
        case 'ENOENT':
          throw new MediaError('ENOENT', `no such device ${device}`, { cause: err });
        case 'ENOMEDIUM':
          throw new MediaError('ENOMEDIUM', `no tape in ${device}`, { cause: err });
        case 'EROFS':
          throw new MediaError('EROFS', `the tape in ${device} is write-protected`, { cause: err });
        case 'EBUSY':
          throw new MediaError('EBUSY', `${device} is in use by another program`, { cause: err });
        default:
          throw systemError(`cannot open ${device}`, err);
      }
    }
    try {
      let status;
      try {
        status = await native.tapeStatus(fd);
      } catch (err) {
        if (errnoCode(err) === 'ENOTTY') {
          throw new MediaError('ENOTTAPE', `${device} is not a tape device (MTIOCGET: ${errnoText(err)})`, { cause: err });
        }
        throw systemError(`cannot read the status of ${device}`, err);
      }
      if (status.doorOpen) throw new MediaError('ENOMEDIUM', `no tape in ${device}`);
      if (mode === 'write' && status.writeProtected) throw new MediaError('EROFS', `the tape in ${device} is write-protected`);
      try {
        await native.tapeOp(fd, tapeOp('MTSETBLK'), 0);
      } catch (err) {
        throw systemError(`cannot put ${device} in variable block mode (MTSETBLK 0)`, err);
      }
      return new TapeDrive(device, fd, mode, recordSize, status.fileNumber);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  get fileNumber(): number {
    return this.currentFile;
  }

  get earlyWarning(): boolean {
    return this.pastEarlyWarning;
  }

  async readRecord(buf: Buffer): Promise<number | 'filemark' | 'end'> {
    let n: number;
    try {
      n = await native.read(this.fd, buf);
    } catch (err) {
      // st answers a read past the end of data with EIO once it has reported the end.
      if (errnoCode(err) === 'EIO' && (await this.atEndOfData())) return 'end';
      if (errnoCode(err) === 'ENOMEM') {
        throw new MediaError('EMSGSIZE', `${this.description}: record larger than ${buf.length} bytes`, { cause: err });
      }
      throw systemError(`cannot read ${this.description}`, err);
    }
    if (n > 0) {
      this.lastReadWasFilemark = false;
      this.fileBytes = 0;
      return n;
    }
    if (this.lastReadWasFilemark || (await this.atEndOfData())) return 'end';
    this.lastReadWasFilemark = true;
    this.currentFile++;
    return 'filemark';
  }

  async writeRecord(data: Buffer): Promise<void> {
    this.requireWritable();
    if (data.length < 1 || data.length > MAX_RECORD_SIZE) {
      throw new MediaError('EINVAL', `a tape record here holds 1 to ${MAX_RECORD_SIZE} bytes, not ${data.length}`);
    }
    this.lastReadWasFilemark = false;
    let n: number;
    try {
      n = await native.write(this.fd, data);
    } catch (err) {
      // st: the write after the one that crossed the early-warning point fails with ENOSPC and writes nothing;
      // the next write (our filemark) is let through.
      if (errnoCode(err) === 'ENOSPC') {
        this.pastEarlyWarning = true;
        throw new MediumFullError(this.description, this.fileBytes, null, { cause: err });
      }
      throw systemError(`cannot write ${this.description}`, err);
    }
    this.fileBytes += n;
    if (n < data.length) {
      // Not expected in variable block mode, but if the drive took part of the record at the physical end of the
      // tape, those bytes are on tape and count; the record is the last one of the file.
      this.pastEarlyWarning = true;
      throw new MediumFullError(this.description, this.fileBytes, null);
    }
  }

  /** MTWEOF (not MTWEOFI): the drive flushes its buffer to tape before the filemark completes. */
  async writeFilemark(): Promise<void> {
    this.requireWritable();
    await this.op('MTWEOF', 1, 'write a filemark on');
    this.currentFile++;
    this.fileBytes = 0;
  }

  async rewind(): Promise<void> {
    await this.op('MTREW', 1, 'rewind');
    this.currentFile = 0;
    this.fileBytes = 0;
    this.lastReadWasFilemark = false;
  }

  async skipFiles(count: number): Promise<void> {
    if (count === 0) return;
    const start = this.currentFile;
    try {
      await native.tapeOp(this.fd, tapeOp('MTFSF'), count);
    } catch (err) {
      if (errnoCode(err) === 'EIO' && (await this.atEndOfData())) {
        const status = await native.tapeStatus(this.fd).catch(() => null);
        if (status !== null && status.fileNumber >= 0) this.currentFile = status.fileNumber;
        throw new MediaError('ENOENT', `${this.description}: the recorded data ends before ${count} filemarks were passed`, { cause: err });
      }
      throw systemError(`cannot space forward over ${count} filemarks on ${this.description}`, err);
    }
    this.currentFile = start + count;
    this.fileBytes = 0;
    this.lastReadWasFilemark = true;
  }

  async seekEndOfData(): Promise<void> {
    await this.op('MTEOM', 1, 'space to the end of data on');
    let status;
    try {
      status = await native.tapeStatus(this.fd);
    } catch (err) {
      throw systemError(`cannot read the status of ${this.device}`, err);
    }
    if (status.fileNumber < 0) {
      // st keeps the file number unless its fast-mteom option makes MTEOM space to end of data directly.
      throw new MediaError(
        'EIO',
        `${this.description} does not know which file it is at after MTEOM; clear the st option fast-mteom (mt -f ${this.device} stclearoptions fast-mteom)`,
      );
    }
    this.currentFile = status.fileNumber;
    this.fileBytes = 0;
    this.lastReadWasFilemark = false;
  }

  /** A filemark write with a count of 0 writes nothing and returns once the drive's buffer is on tape (SCSI SSC). */
  async sync(): Promise<void> {
    if (this.mode !== 'write') return;
    await this.op('MTWEOF', 0, 'flush');
  }

  async close(): Promise<void> {
    await close(this.fd);
  }

  /**
   * Every file from the beginning of the tape: its head is read record by record, the rest is spaced over with
   * MTFSF, so lengths are unknown (null).
   */
  async listFiles(headerBytes: number): Promise<ListedFile[]> {
    await this.rewind();
    const files: ListedFile[] = [];
    const record = Buffer.allocUnsafe(MAX_RECORD_SIZE);
    for (;;) {
      const head: Buffer[] = [];
      let headLength = 0;
      let bytes = 0;
      let ending: 'filemark' | 'end' | null = null;
      // At least one read per file, even for an empty head: it tells a file from the end of the data.
      do {
        const n = await this.readRecord(record);
        if (typeof n !== 'number') {
          ending = n;
          break;
        }
        const part = Buffer.from(record.subarray(0, Math.min(n, headerBytes - headLength)));
        head.push(part);
        headLength += part.length;
        bytes += n;
      } while (headLength < headerBytes);
      if (ending === 'end' && bytes === 0) return files;
      const entry: ListedFile = {
        fileNumber: files.length,
        head: Buffer.concat(head),
        bytes: ending === null ? null : bytes,
        complete: ending === 'filemark',
        problem: ending === 'end' ? 'no filemark after the last record (its writer was interrupted)' : null,
      };
      if (ending === null) {
        try {
          await this.skipFiles(1);
          entry.complete = true;
        } catch (err) {
          if (!(err instanceof MediaError && err.code === 'ENOENT')) throw err;
          entry.problem = 'no filemark after the last record (its writer was interrupted)';
        }
      }
      files.push(entry);
      if (!entry.complete) return files;
    }
  }

  private requireWritable(): void {
    if (this.mode !== 'write') throw new MediaError('EINVAL', `${this.description} was opened for reading`);
  }

  private async op(name: 'MTWEOF' | 'MTREW' | 'MTEOM', count: number, what: string): Promise<void> {
    try {
      await native.tapeOp(this.fd, tapeOp(name), count);
    } catch (err) {
      if (name === 'MTWEOF' && errnoCode(err) === 'ENOSPC') {
        this.pastEarlyWarning = true;
        throw new MediumFullError(this.description, this.fileBytes, null, { cause: err });
      }
      throw systemError(`cannot ${what} ${this.description} (${name})`, err);
    }
  }

  private async atEndOfData(): Promise<boolean> {
    const status = await native.tapeStatus(this.fd).catch(() => null);
    return status !== null && status.eod;
  }
}
