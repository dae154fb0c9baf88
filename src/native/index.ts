/**
 * Typed front of the C++ addon (native/, built by node-gyp into build/Release/thinvault_native.node).
 * Every blocking call runs on libuv's thread pool (Napi::AsyncWorker) and returns a Promise, except the
 * CRC32C functions, flock, and the *NoWait fast paths, which are synchronous by design.
 *
 * Positions/lengths are numbers (< 2^53). Failed system calls reject/throw an Error with `code` set to the
 * errno name (e.g. 'ENOSPC', 'EIO', 'ENOTTY', 'EAGAIN') and `syscall` set to the call's name, like Node's fs errors.
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
}

export interface NativeAddon {
  /** a Buffer whose memory is aligned to `alignment` (power of two, default 4096), zero-filled */
  allocAligned(size: number, alignment?: number): Buffer;
  /** open(2) with raw flags (fs.constants values, O_DIRECT allowed); returns the fd */
  open(path: string, flags: number, mode: number): Promise<number>;
  /** reads until buf is full or EOF; resolves the byte count */
  pread(fd: number, buf: Buffer, position: number): Promise<number>;
  /** writes all of buf (loops on short writes) */
  pwrite(fd: number, buf: Buffer, position: number): Promise<number>;
  preadv(fd: number, bufs: Buffer[], position: number): Promise<number>;
  pwritev(fd: number, bufs: Buffer[], position: number): Promise<number>;
  fdatasync(fd: number): Promise<void>;
  fsync(fd: number): Promise<void>;
  /** fallocate(2) mode 0 (allocate, keep reads as zero); extends the file */
  fallocate(fd: number, offset: number, length: number): Promise<void>;
  /** FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE */
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  /** FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE (falls back to punch hole + fallocate when unsupported) */
  zeroRange(fd: number, offset: number, length: number): Promise<void>;
  /**
   * preadv2(RWF_NOWAIT) on the calling thread: returns bytes read, or -1 when the data is not in the page
   * cache (EAGAIN) or RWF_NOWAIT is unsupported (then the caller uses pread). Never blocks on disk.
   */
  preadNoWait(fd: number, buf: Buffer, position: number): number;
  /** flock(2): returns true when taken, false when LOCK_NB and another holder has it */
  flock(fd: number, op: 'exclusive' | 'shared' | 'unlock', nonBlocking: boolean): boolean;
  /** CRC32C (Castagnoli), hardware path when the CPU has SSE4.2 (+PCLMUL folding), `crc` chains calls */
  crc32c(data: Uint8Array, crc?: number): number;
  /** the portable table-driven implementation, always compiled in */
  crc32cPortable(data: Uint8Array, crc?: number): number;
  /** 'sse42-pclmul' | 'sse42' | 'portable' */
  crc32cImplementation(): string;
  /** MTIOCTOP: op is one of the MT_* numbers from <sys/mtio.h>, exposed in `tapeOps` */
  tapeOp(fd: number, op: number, count: number): Promise<void>;
  /** MTIOCGET */
  tapeStatus(fd: number): Promise<TapeStatus>;
  /** MTWEOF, MTWEOFI, MTREW, MTEOM, MTFSF, MTBSF, MTFSR, MTBSR, MTSETBLK, MTNOP, MTOFFL ... */
  tapeOps: Record<string, number>;
  /** O_DIRECT and other flags not exported by node:fs on every platform */
  constants: { O_DIRECT: number; O_NOATIME: number };
}

const require = createRequire(import.meta.url);
export const native: NativeAddon = require('../../build/Release/thinvault_native.node');
