/**
 * The chunk store: one preallocated file, accessed through the native addon (positional I/O off the event loop,
 * page-cache reads without a thread-pool hop). Knows bytes and chunks, nothing about volumes.
 */
import fs from 'node:fs';
import { native } from '../native/index.js';
import { PoolError, ioError } from './errors.js';
import { SyncCoalescer } from './sync-coalescer.js';

export class DataFile {
  private readonly syncer: SyncCoalescer;
  private closed = false;
  /** bumped as each modification of the file completes (lets a flush join an fdatasync already running) */
  private modifications = 0;

  private constructor(
    readonly fd: number,
    readonly chunkSize: number,
    /** bytes, a multiple of chunkSize */
    public size: number,
  ) {
    this.syncer = new SyncCoalescer(
      () => native.fdatasync(this.fd),
      () => this.modifications,
    );
  }

  /** pass-through for a completed data write's promise: `native.pwrite(...).then(data.written)` */
  readonly written = (bytes: number): number => {
    this.modifications++;
    return bytes;
  };

  static async open(file: string, chunkSize: number): Promise<DataFile> {
    let fd: number;
    try {
      fd = fs.openSync(file, fs.constants.O_RDWR);
    } catch (err) {
      throw new PoolError((err as { code?: string }).code === 'ENOENT' ? 'ECORRUPT' : 'EIO', `cannot open the data file ${file}: ${(err as Error).message}`, { cause: err });
    }
    const st = fs.fstatSync(fd);
    const size = Math.floor(st.size / chunkSize) * chunkSize;
    return new DataFile(fd, chunkSize, size);
  }

  get chunks(): number {
    return this.size / this.chunkSize;
  }

  /**
   * Resolves once every write completed before this call is durable. A failed fdatasync is final: the kernel
   * may already have dropped the dirty pages it could not write, so a later fdatasync could succeed without them
   * and a FLUSH would be acknowledged for lost data. Every later sync fails too, until the pool is reopened.
   */
  sync(): Promise<void> {
    if (this.syncFailure !== null) return Promise.reject(this.syncFailure);
    return this.syncer.sync().catch((err) => {
      this.syncFailure ??= ioError('fdatasync of the data file failed; writes since the last good sync may be lost, reopen the pool', err);
      throw this.syncFailure;
    });
  }

  private syncFailure: Error | null = null;

  /** appends `chunks` preallocated chunks (reading as zeros); not yet durable until the next sync() */
  async extend(chunks: number): Promise<void> {
    const start = this.size;
    await native.fallocate(this.fd, start, chunks * this.chunkSize);
    this.modifications++;
    this.size = start + chunks * this.chunkSize;
  }

  /** makes whole chunks read as zeros (metadata-only on ext4/xfs) */
  async zeroChunks(first: number, count: number): Promise<void> {
    await native.zeroRange(this.fd, first * this.chunkSize, count * this.chunkSize);
    this.modifications++;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
  }
}
