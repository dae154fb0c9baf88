/**
 * The metadata journal: record framing, the group-commit writer, and the scanner used by replay.
 *
 * Writer: records are encoded straight into a staging buffer (`begin` .. `end`), each getting the next sequence
 * number. One committer loop writes everything staged while the previous commit ran with one pwrite and makes it
 * durable with one fdatasync, then advances `durableSeq` and wakes the waiters. `rotate` switches to the next
 * journal file at an exact sequence boundary (checkpoints).
 */
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../native/index.js';
import { PoolError, ioError } from './errors.js';
import {
  JOURNAL_HEADER_SIZE,
  JOURNAL_MAGIC,
  JOURNAL_VERSION,
  RECORD_BODY_HEADER,
  RECORD_FRAME_SIZE,
  RECORD_MAGIC,
  RECORD_MAX_LENGTH,
  journalName,
  readU64,
  uuidToBytes,
  writeU64,
} from './format.js';
import { fsyncDir } from '../util/durable-file.js';

interface JournalFile {
  fd: number;
  epoch: number;
  /** where the next batch goes */
  offset: number;
}

interface Batch {
  file: JournalFile;
  buf: Buffer;
  len: number;
  lastSeq: number;
}

const STAGING_SIZE = 256 * 1024;
const RESOLVED = Promise.resolve();

export class JournalWriter {
  /** seq of the last record queued */
  lastSeq: number;
  /** every record with seq <= durableSeq is on stable storage */
  durableSeq: number;
  failure: PoolError | null = null;
  /** called after each commit made more records durable */
  onDurable: (() => void) | null = null;
  /** called once when a commit fails (the pool stops accepting metadata changes) */
  onFailure: ((err: PoolError) => void) | null = null;
  /**
   * makes every data write completed before the call durable; run before a commit that carries a record queued
   * with `afterDataSync` (COPY rule in commit-rules.ts)
   */
  dataSync: (() => Promise<void>) | null = null;
  /** the highest seq of a record that may only become durable after the data it points at */
  private dataBarrierSeq = 0;

  private file: JournalFile;
  private buf: Buffer = Buffer.allocUnsafe(STAGING_SIZE);
  private len = 0;
  private spare: Buffer | null = Buffer.allocUnsafe(STAGING_SIZE) as Buffer;
  private sealed: Batch[] = [];
  private recordStart = -1;
  private running = false;
  private scheduled = false;
  private waiters: Array<{ seq: number; resolve: () => void; reject: (e: unknown) => void }> = [];
  private idle: Array<() => void> = [];

  constructor(fd: number, epoch: number, offset: number, lastSeq: number) {
    this.file = { fd, epoch, offset };
    this.lastSeq = lastSeq;
    this.durableSeq = lastSeq;
  }

  /** bytes in the current journal file, including what is staged */
  get bytes(): number {
    return this.file.offset + this.len;
  }
  get epoch(): number {
    return this.file.epoch;
  }
  /** records queued and not yet durable */
  get pending(): number {
    return this.lastSeq - this.durableSeq;
  }

  /**
   * Starts a record of `type` with `payloadLength` bytes of payload; returns the offset in `this.staging` where the
   * caller writes the payload, then calls `end()`.
   */
  begin(type: number, payloadLength: number): number {
    if (this.failure) throw this.failure;
    const length = RECORD_BODY_HEADER + payloadLength;
    const total = RECORD_FRAME_SIZE + length;
    if (this.len + total > this.buf.length) {
      const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + total));
      this.buf.copy(bigger, 0, 0, this.len);
      this.buf = bigger;
    }
    const o = this.len;
    const b = this.buf;
    b.writeUInt32LE(RECORD_MAGIC, o);
    b.writeUInt32LE(length, o + 4);
    writeU64(b, ++this.lastSeq, o + 12);
    b[o + 20] = type;
    this.recordStart = o;
    return o + RECORD_FRAME_SIZE + RECORD_BODY_HEADER;
  }

  /** the staging buffer; valid between begin() and end() */
  get staging(): Buffer {
    return this.buf;
  }

  end(): number {
    const o = this.recordStart;
    const b = this.buf;
    const length = b.readUInt32LE(o + 4);
    b.writeUInt32LE(recordCrc(b, o, length), o + 8);
    this.len = o + RECORD_FRAME_SIZE + length;
    this.recordStart = -1;
    this.schedule();
    return this.lastSeq;
  }

  /**
   * Record `seq` (just queued) points at data written before it was queued: the commit that makes it durable first
   * syncs the data file (an fdatasync that starts after the record was queued, hence after that data was written).
   */
  afterDataSync(seq: number): void {
    if (seq > this.dataBarrierSeq) this.dataBarrierSeq = seq;
  }

  /** resolves when every record with seq <= `seq` is durable */
  waitDurable(seq: number): Promise<void> {
    if (seq <= this.durableSeq) return RESOLVED;
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => this.waiters.push({ seq, resolve, reject }));
  }

  /** everything queued so far is durable */
  commit(): Promise<void> {
    return this.waitDurable(this.lastSeq);
  }

  /**
   * Switches to a new, already created and durable journal file. Records queued so far (seq <= the returned
   * boundary) still go to the old file; later ones go to the new one, and only after the old ones are durable.
   */
  rotate(fd: number, epoch: number): number {
    if (this.len > 0) {
      this.sealed.push({ file: this.file, buf: this.buf, len: this.len, lastSeq: this.lastSeq });
      this.buf = Buffer.allocUnsafe(STAGING_SIZE);
      this.len = 0;
    }
    this.file = { fd, epoch, offset: JOURNAL_HEADER_SIZE };
    return this.lastSeq;
  }

  /** resolves when nothing is queued or being written, or at once after a failure (nothing more will be written) */
  whenIdle(): Promise<void> {
    if (this.failure && !this.running) return RESOLVED;
    if (!this.running && !this.scheduled && this.len === 0 && this.sealed.length === 0) return RESOLVED;
    return new Promise((resolve) => this.idle.push(resolve));
  }

  get fd(): number {
    return this.file.fd;
  }

  private schedule(): void {
    if (this.running || this.scheduled) return;
    this.scheduled = true;
    // setImmediate rather than a microtask: records queued by other requests handled in the same event-loop turn
    // (one socket read often carries many NBD requests) join this commit.
    setImmediate(() => {
      this.scheduled = false;
      void this.run();
    });
  }

  private async run(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (;;) {
        let batch: Batch;
        if (this.sealed.length > 0) {
          batch = this.sealed.shift()!;
        } else if (this.len > 0) {
          batch = { file: this.file, buf: this.buf, len: this.len, lastSeq: this.lastSeq };
          this.buf = this.spare ?? Buffer.allocUnsafe(STAGING_SIZE);
          this.spare = null;
          this.len = 0;
        } else {
          break;
        }
        if (this.dataBarrierSeq > this.durableSeq && this.dataSync !== null) await this.dataSync();
        await native.pwrite(batch.file.fd, batch.buf.subarray(0, batch.len), batch.file.offset);
        batch.file.offset += batch.len;
        await native.fdatasync(batch.file.fd);
        if (this.spare === null && batch.buf.length === STAGING_SIZE) this.spare = batch.buf;
        this.durableSeq = batch.lastSeq;
        this.wake();
        this.onDurable?.();
      }
    } catch (err) {
      this.fail(err);
    } finally {
      this.running = false;
      // after a failure the staged records will never be written: whoever waits for idleness must not hang
      if (this.failure || (this.len === 0 && this.sealed.length === 0)) {
        const idle = this.idle;
        this.idle = [];
        for (const f of idle) f();
      } else if (!this.failure) {
        this.schedule();
      }
    }
  }

  private wake(): void {
    if (this.waiters.length === 0) return;
    const keep: typeof this.waiters = [];
    for (const w of this.waiters) {
      if (w.seq <= this.durableSeq) w.resolve();
      else keep.push(w);
    }
    this.waiters = keep;
  }

  private fail(err: unknown): void {
    if (this.failure) return;
    this.failure = ioError('journal write failed; the pool must be reopened', err);
    if (this.failure.code !== 'EIO') this.failure = new PoolError('EIO', this.failure.message, { cause: err });
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(this.failure);
    const idle = this.idle;
    this.idle = [];
    for (const f of idle) f();
    this.onFailure?.(this.failure);
  }
}

function recordCrc(b: Buffer, o: number, length: number): number {
  const crc = native.crc32c(b.subarray(o + 4, o + 8));
  return native.crc32c(b.subarray(o + RECORD_FRAME_SIZE, o + RECORD_FRAME_SIZE + length), crc) >>> 0;
}

/** Creates journal.<epoch> with its header, durable (file and directory entry) before it returns. */
export async function createJournalFile(dir: string, epoch: number, poolUuid: string): Promise<number> {
  const file = path.join(dir, journalName(epoch));
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
  try {
    const h = Buffer.alloc(JOURNAL_HEADER_SIZE);
    h.writeUInt32LE(JOURNAL_MAGIC, 0);
    h.writeUInt16LE(JOURNAL_VERSION, 4);
    writeU64(h, epoch, 8);
    uuidToBytes(poolUuid).copy(h, 16);
    h.writeUInt32LE(native.crc32c(h.subarray(0, 60)) >>> 0, 60);
    await native.pwrite(fd, h, 0);
    await native.fdatasync(fd);
    fsyncDir(dir);
    return fd;
  } catch (err) {
    fs.closeSync(fd);
    throw ioError(`cannot create ${file}`, err);
  }
}

export interface ScannedRecord {
  seq: number;
  type: number;
  buf: Buffer;
  /** payload offset and length in buf */
  offset: number;
  length: number;
}

export interface JournalScan {
  /** file offset after the last valid record (JOURNAL_HEADER_SIZE for an empty journal, 0 for a bad header) */
  validEnd: number;
  fileSize: number;
  records: number;
  lastSeq: number;
  /** why scanning stopped before the end of the file, if it did */
  stopReason?: string;
}

/**
 * Reads journal.<epoch> and calls onRecord for each valid record in order, expecting seq = lastSeq + 1, ...;
 * stops at the first torn, corrupt or out-of-sequence record (reported in stopReason).
 */
export function scanJournal(
  file: string,
  epoch: number,
  poolUuid: string,
  lastSeq: number,
  onRecord: (rec: ScannedRecord) => void,
): JournalScan {
  const buf = fs.readFileSync(file);
  const scan: JournalScan = { validEnd: 0, fileSize: buf.length, records: 0, lastSeq };
  if (buf.length < JOURNAL_HEADER_SIZE) {
    scan.stopReason = `header is short (${buf.length} bytes)`;
    return scan;
  }
  if (
    buf.readUInt32LE(0) !== JOURNAL_MAGIC ||
    (native.crc32c(buf.subarray(0, 60)) >>> 0) !== buf.readUInt32LE(60) ||
    buf.readUInt16LE(4) !== JOURNAL_VERSION ||
    readU64(buf, 8) !== epoch ||
    !buf.subarray(16, 32).equals(uuidToBytes(poolUuid))
  ) {
    scan.stopReason = 'bad header (magic, CRC, version, epoch or pool UUID)';
    return scan;
  }
  let o = JOURNAL_HEADER_SIZE;
  scan.validEnd = o;
  while (o < buf.length) {
    if (buf.length - o < RECORD_FRAME_SIZE + RECORD_BODY_HEADER) {
      scan.stopReason = `torn record header at offset ${o}`;
      break;
    }
    if (buf.readUInt32LE(o) !== RECORD_MAGIC) {
      scan.stopReason = `bad record magic at offset ${o}`;
      break;
    }
    const length = buf.readUInt32LE(o + 4);
    if (length < RECORD_BODY_HEADER || length > RECORD_MAX_LENGTH) {
      scan.stopReason = `bad record length ${length} at offset ${o}`;
      break;
    }
    if (o + RECORD_FRAME_SIZE + length > buf.length) {
      scan.stopReason = `torn record at offset ${o} (needs ${RECORD_FRAME_SIZE + length} bytes, ${buf.length - o} left)`;
      break;
    }
    if (recordCrc(buf, o, length) !== buf.readUInt32LE(o + 8)) {
      scan.stopReason = `bad record CRC at offset ${o}`;
      break;
    }
    const seq = readU64(buf, o + 12);
    if (seq !== scan.lastSeq + 1) {
      scan.stopReason = `record at offset ${o} has seq ${seq}, expected ${scan.lastSeq + 1}`;
      break;
    }
    onRecord({
      seq,
      type: buf[o + 20],
      buf,
      offset: o + RECORD_FRAME_SIZE + RECORD_BODY_HEADER,
      length: length - RECORD_BODY_HEADER,
    });
    scan.lastSeq = seq;
    scan.records++;
    o += RECORD_FRAME_SIZE + length;
    scan.validEnd = o;
  }
  return scan;
}
