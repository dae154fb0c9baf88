/**
 * An in-memory sparse Export for tests: data lives in 64 KiB chunks in a Map; a chunk that was never
 * written (or was trimmed / zeroed without NO_HOLE) is a hole that reads as zeros and is reported as
 * HOLE|ZERO by base:allocation. `failNext` / `failAlways` make an operation reject with an errno name.
 */
import { exportError } from '../../src/nbd/export.js';
import type {
  BlockSizeConstraints,
  Export,
  ExportErrno,
  ExportHandle,
  ExportProvider,
  Extent,
  HoleList,
  ZeroOptions,
} from '../../src/nbd/export.js';

export const NBD_STATE_HOLE = 1;
export const NBD_STATE_ZERO = 2;

export type MemoryOp = 'read' | 'write' | 'flush' | 'trim' | 'zero' | 'cache' | 'blockStatus';

export interface MemoryExportOptions {
  name: string;
  size: number;
  description?: string;
  readOnly?: boolean;
  chunkSize?: number;
  canTrim?: boolean;
  canZero?: boolean;
  canFastZero?: boolean;
  canCache?: boolean;
  canMultiConn?: boolean;
  blockSize?: Partial<BlockSizeConstraints>;
  /** defaults to ['base:allocation']; may add e.g. 'x-test:even-chunks' (flag 1 on even-numbered chunks) */
  metaContexts?: string[];
  /** delay every operation by this many ms (to keep requests in flight) */
  delayMs?: number;
}

export class MemoryExport implements Export {
  readonly name: string;
  readonly description: string;
  readonly readOnly: boolean;
  readonly canTrim: boolean;
  readonly canZero: boolean;
  readonly canFastZero: boolean;
  readonly canCache: boolean;
  readonly canMultiConn: boolean;
  readonly blockSize: BlockSizeConstraints;
  readonly metaContexts: readonly string[];
  readonly chunkSize: number;
  size: number;
  delayMs: number;
  readonly chunks = new Map<number, Buffer>();
  /** counts of calls per operation */
  readonly calls: Record<MemoryOp, number> = { read: 0, write: 0, flush: 0, trim: 0, zero: 0, cache: 0, blockStatus: 0 };
  /** operations currently waiting in their delay, and the most ever seen at once */
  inFlight = 0;
  maxInFlight = 0;
  private readonly failures = new Map<MemoryOp, { code: ExportErrno | 'PLAIN'; remaining: number }>();

  constructor(options: MemoryExportOptions) {
    this.name = options.name;
    this.size = options.size;
    this.description = options.description ?? '';
    this.readOnly = options.readOnly ?? false;
    this.chunkSize = options.chunkSize ?? 65536;
    this.canTrim = options.canTrim ?? true;
    this.canZero = options.canZero ?? true;
    this.canFastZero = options.canFastZero ?? true;
    this.canCache = options.canCache ?? true;
    this.canMultiConn = options.canMultiConn ?? true;
    this.blockSize = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024, ...options.blockSize };
    this.metaContexts = options.metaContexts ?? ['base:allocation'];
    this.delayMs = options.delayMs ?? 0;
  }

  /** Make the next `count` calls of `op` reject with `code` ('PLAIN': an Error without a code). */
  failNext(op: MemoryOp, code: ExportErrno | 'PLAIN', count = 1): void {
    this.failures.set(op, { code, remaining: count });
  }

  failAlways(op: MemoryOp, code: ExportErrno | 'PLAIN'): void {
    this.failures.set(op, { code, remaining: Infinity });
  }

  clearFailures(): void {
    this.failures.clear();
  }

  /** Copy of the whole export content (holes as zeros). */
  snapshot(): Buffer {
    const out = Buffer.alloc(this.size);
    for (const [index, chunk] of this.chunks) {
      const start = index * this.chunkSize;
      chunk.copy(out, start, 0, Math.min(chunk.length, this.size - start));
    }
    return out;
  }

  async read(offset: number, buf: Buffer): Promise<HoleList> {
    await this.enter('read');
    const holes: HoleList = [];
    this.walk(offset, buf.length, (index, inChunk, n, pos) => {
      const chunk = this.chunks.get(index);
      if (chunk === undefined) {
        const last = holes.length - 2;
        if (last >= 0 && (holes[last] as number) + (holes[last + 1] as number) === pos) holes[last + 1] = (holes[last + 1] as number) + n;
        else holes.push(pos, n);
      } else chunk.copy(buf, pos, inChunk, inChunk + n);
    });
    return holes;
  }

  async write(offset: number, data: Buffer, _fua: boolean): Promise<void> {
    await this.enter('write');
    this.checkWritable(offset, data.length);
    this.walk(offset, data.length, (index, inChunk, n, pos) => {
      data.copy(this.allocate(index), inChunk, pos, pos + n);
    });
  }

  async flush(): Promise<void> {
    await this.enter('flush');
  }

  async trim(offset: number, length: number, _fua: boolean): Promise<void> {
    await this.enter('trim');
    this.checkWritable(offset, length);
    this.clear(offset, length);
  }

  async zero(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    await this.enter('zero');
    if (opts.fastZero && !this.canFastZero) throw exportError('ENOTSUP', 'fast zero not possible');
    this.checkWritable(offset, length);
    if (opts.noHole) {
      this.walk(offset, length, (index, inChunk, n) => {
        this.allocate(index).fill(0, inChunk, inChunk + n);
      });
    } else this.clear(offset, length);
  }

  async cache(_offset: number, _length: number): Promise<void> {
    await this.enter('cache');
  }

  async blockStatus(context: string, offset: number, length: number): Promise<Extent[]> {
    await this.enter('blockStatus');
    const extents: Extent[] = [];
    this.walk(offset, Math.min(length, this.size - offset), (index, _inChunk, n) => {
      let flags: number;
      if (context === 'base:allocation') flags = this.chunks.has(index) ? 0 : NBD_STATE_HOLE | NBD_STATE_ZERO;
      else if (context === 'x-test:even-chunks') flags = index % 2 === 0 ? 1 : 0;
      else throw exportError('EINVAL', `unknown context ${context}`);
      const last = extents[extents.length - 1];
      if (last !== undefined && last.flags === flags) last.length += n;
      else extents.push({ length: n, flags });
    });
    return extents;
  }

  private async enter(op: MemoryOp): Promise<void> {
    this.calls[op]++;
    if (this.delayMs > 0) {
      this.inFlight++;
      this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
      await new Promise((resolve) => setTimeout(resolve, this.delayMs));
      this.inFlight--;
    }
    const failure = this.failures.get(op);
    if (failure !== undefined && failure.remaining > 0) {
      failure.remaining--;
      if (failure.remaining <= 0) this.failures.delete(op);
      if (failure.code === 'PLAIN') throw new Error(`injected plain failure in ${op}`);
      throw exportError(failure.code, `injected ${failure.code} in ${op}`);
    }
  }

  private checkWritable(offset: number, length: number): void {
    if (this.readOnly) throw exportError('EPERM', 'read-only');
    if (offset + length > this.size) throw exportError('ENOSPC', 'past the end');
  }

  /** Calls fn(chunkIndex, offsetInChunk, bytes, positionInRequest) for each chunk piece of a range. */
  private walk(offset: number, length: number, fn: (index: number, inChunk: number, n: number, pos: number) => void): void {
    let pos = 0;
    while (pos < length) {
      const abs = offset + pos;
      const index = Math.floor(abs / this.chunkSize);
      const inChunk = abs - index * this.chunkSize;
      const n = Math.min(this.chunkSize - inChunk, length - pos);
      fn(index, inChunk, n, pos);
      pos += n;
    }
  }

  private allocate(index: number): Buffer {
    let chunk = this.chunks.get(index);
    if (chunk === undefined) {
      chunk = Buffer.alloc(this.chunkSize);
      this.chunks.set(index, chunk);
    }
    return chunk;
  }

  /** Frees whole chunks inside the range and zeroes the partial ends of allocated ones. */
  private clear(offset: number, length: number): void {
    this.walk(offset, length, (index, inChunk, n) => {
      const chunk = this.chunks.get(index);
      if (chunk === undefined) return;
      if (n === this.chunkSize) this.chunks.delete(index);
      else {
        chunk.fill(0, inChunk, inChunk + n);
        if (chunk.every((b) => b === 0)) this.chunks.delete(index);
      }
    });
  }
}

/** An ExportProvider over a set of MemoryExports; counts open and release calls. */
export class MemoryProvider implements ExportProvider {
  readonly exports = new Map<string, MemoryExport>();
  opened = 0;
  released = 0;

  constructor(exports: MemoryExport[] = []) {
    for (const exp of exports) this.add(exp);
  }

  add(exp: MemoryExport): MemoryExport {
    this.exports.set(exp.name, exp);
    return exp;
  }

  list(): Array<{ name: string; description: string }> {
    return [...this.exports.values()].map((e) => ({ name: e.name, description: e.description }));
  }

  open(name: string): ExportHandle | undefined {
    const exp = this.exports.get(name);
    if (exp === undefined) return undefined;
    this.opened++;
    let released = false;
    return {
      export: exp,
      release: () => {
        if (released) throw new Error('released twice');
        released = true;
        this.released++;
      },
    };
  }
}
