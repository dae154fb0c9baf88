/**
 * Typed front of the C++ addon (native/, built by node-gyp into build/Release/thinvault_native.node).
 * Every blocking call runs on libuv's thread pool (Napi::AsyncWorker) and returns a Promise, except the
 * CRC32C functions, flock, and the *NoWait fast paths, which are synchronous by design.
 *
 * Positions/lengths are numbers (< 2^53). Failed system calls reject/throw an Error with `code` set to the
 * errno name (e.g. 'ENOSPC', 'EIO', 'ENOTTY', 'EAGAIN') and `syscall` set to the call's name, like Node's fs errors
 * (`errno` is the positive OS errno, e.g. 28 for ENOSPC; `open` errors also carry `path`). Message: "pwrite: No
 * space left on device".
 *
 * Bad arguments (wrong type, non-integer or out-of-range number, bad enum string) throw synchronously, also from
 * the Promise-returning calls: a TypeError (code 'ERR_INVALID_ARG_TYPE' / 'ERR_INVALID_ARG_VALUE') or a RangeError
 * (code 'ERR_OUT_OF_RANGE'). Buffer arguments accept any ArrayBufferView (Buffer, Uint8Array, DataView, ...) and are
 * kept alive until the call settles; do not reuse a buffer before its Promise settles.
 */
import { createRequire } from 'node:module';

export interface TapeStatus {
  type: number;
  /** mt_resid */
  residual: number;
  /** mt_dsreg */
  dsreg: number;
  /** mt_gstat raw bits; GMT_* helpers below */
  gstat: number;
  erreg: number;
  fileNumber: number;
  blockNumber: number;
  bot: boolean;
  eot: boolean;
  eod: boolean;
  eof: boolean;
  writeProtected: boolean;
  online: boolean;
  doorOpen: boolean;
  /** SCSI tape block size from mt_dsreg (0 = variable block mode) */
  blockSize: number;
  /** SCSI density code from mt_dsreg */
  density: number;
}

export interface NativeAddon {
  /**
   * a Buffer whose memory is aligned to `alignment` (power of two up to 2^30, default 4096), zero-filled;
   * size up to 4 GiB
   */
  allocAligned(size: number, alignment?: number): Buffer;
  /**
   * open(2) with raw flags (fs.constants values, O_DIRECT allowed); returns the fd. O_CLOEXEC is always added.
   * `mode` defaults to 0o666 when undefined. Close the fd with fs.close/fs.closeSync.
   */
  open(path: string, flags: number, mode: number): Promise<number>;
  /**
   * reads until buf is full or EOF; resolves the byte count (less than buf.length only at EOF; with O_DIRECT an
   * EINVAL after a partial read, i.e. an unaligned end of file, also ends the read)
   */
  pread(fd: number, buf: Buffer, position: number): Promise<number>;
  /** writes all of buf (loops on short writes); resolves buf.length */
  pwrite(fd: number, buf: Buffer, position: number): Promise<number>;
  /** preadv(2) into the buffers in order, any number of them (split at IOV_MAX), until all are full or EOF */
  preadv(fd: number, bufs: Buffer[], position: number): Promise<number>;
  /** pwritev(2) of all the buffers (split at IOV_MAX, loops on short writes); resolves the total length */
  pwritev(fd: number, bufs: Buffer[], position: number): Promise<number>;
  /** one read(2) at the current file position, no looping (a tape read returns one record); resolves bytes read */
  read(fd: number, buf: Buffer): Promise<number>;
  /** one write(2) at the current file position, no looping (a tape write is one record); resolves bytes written */
  write(fd: number, buf: Buffer): Promise<number>;
  fdatasync(fd: number): Promise<void>;
  fsync(fd: number): Promise<void>;
  /** fallocate(2) mode 0 (allocate, keep reads as zero); extends the file. length 0 is a no-op (for all three). */
  fallocate(fd: number, offset: number, length: number): Promise<void>;
  /** FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE */
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  /**
   * FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE (falls back to punch hole + fallocate(KEEP_SIZE) when unsupported,
   * e.g. tmpfs, and to writing zeros up to the file/device size when punching is unsupported too)
   */
  zeroRange(fd: number, offset: number, length: number): Promise<void>;
  /**
   * preadv2(RWF_NOWAIT) on the calling thread: returns bytes read, or -1 when the data is not in the page
   * cache (EAGAIN) or RWF_NOWAIT is unsupported (then the caller uses pread). Never blocks on disk.
   */
  preadNoWait(fd: number, buf: Buffer, position: number): number;
  /**
   * flock(2): returns true when taken, false when LOCK_NB and another holder has it. Without nonBlocking it waits
   * on the JS thread.
   */
  flock(fd: number, op: 'exclusive' | 'shared' | 'unlock', nonBlocking: boolean): boolean;
  /** CRC32C (Castagnoli), hardware path when the CPU has SSE4.2 (+PCLMUL folding), `crc` chains calls */
  crc32c(data: Uint8Array, crc?: number): number;
  /** the portable table-driven implementation, always compiled in */
  crc32cPortable(data: Uint8Array, crc?: number): number;
  /**
   * 'sse42-pclmul' | 'sse42' | 'portable': the one crc32c uses (CPU detection at load; the environment variable
   * THINVAULT_CRC32C=portable|sse42 forces a slower one)
   */
  crc32cImplementation(): string;
  /** the implementations this CPU can run, fastest first */
  crc32cImplementations(): string[];
  /** CRC32C with a named implementation (tests, benchmarks); throws code 'ENOTSUP' if this CPU cannot run it */
  crc32cWith(implementation: string, data: Uint8Array, crc?: number): number;
  /** the largest power of two (up to 2^30) dividing the address of the view's first byte; 0 if it has no memory */
  bufferAlignment(buf: ArrayBufferView): number;
  /** MTIOCTOP: op is one of the MT_* numbers from <sys/mtio.h>, exposed in `tapeOps` */
  tapeOp(fd: number, op: number, count: number): Promise<void>;
  /** MTIOCGET */
  tapeStatus(fd: number): Promise<TapeStatus>;
  /** MTWEOF, MTWEOFI, MTREW, MTEOM, MTFSF, MTBSF, MTFSR, MTBSR, MTSETBLK, MTNOP, MTOFFL ... */
  tapeOps: Record<string, number>;
  /** O_DIRECT and other flags not exported by node:fs on every platform; IOV_MAX of this system */
  constants: { O_DIRECT: number; O_NOATIME: number; O_CLOEXEC: number; O_DSYNC: number; IOV_MAX: number };
}

const require = createRequire(import.meta.url);

function load(): NativeAddon {
  const path = '../../build/Release/thinvault_native.node';
  try {
    return require(path) as NativeAddon;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'MODULE_NOT_FOUND' && String(e.message).includes('thinvault_native.node')) {
      throw new Error('thinvault native addon not built: run npm install', { cause: err });
    }
    throw err;
  }
}

export const native: NativeAddon = load();
