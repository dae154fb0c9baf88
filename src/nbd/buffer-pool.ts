/**
 * A small pool of reusable buffers in power-of-two size classes, for read replies and for write payloads that
 * straddle socket chunks. Large fresh allocations cost page faults on every request; reusing a few warm
 * buffers keeps the hot path free of them. The pool keeps at most `maxRetainedBytes` of idle buffers.
 *
 * Buffers handed out are NOT zeroed: callers fill (or zero) every byte they send.
 */
export class BufferPool {
  private static readonly MIN_CLASS_SHIFT = 12; // 4 KiB
  private readonly free: Buffer[][] = [];
  private retained = 0;

  constructor(
    private readonly maxBufferSize: number,
    private readonly maxRetainedBytes: number,
  ) {}

  /** A buffer of at least `length` bytes; pass the same object to `release` when done. */
  acquire(length: number): Buffer {
    const shift = BufferPool.classShift(length);
    const list = this.free[shift];
    const reused = list?.pop();
    if (reused !== undefined) {
      this.retained -= reused.length;
      return reused;
    }
    // allocUnsafeSlow: a buffer of its own (not a slice of the shared slab), so pooling it is safe
    return Buffer.allocUnsafeSlow(2 ** shift);
  }

  /** Give back a buffer obtained from `acquire`. */
  release(buf: Buffer): void {
    const size = buf.length;
    if ((size & (size - 1)) !== 0 || size > this.maxBufferSize) return; // not one of ours: let GC take it
    if (this.retained + size > this.maxRetainedBytes) return;
    const shift = BufferPool.classShift(size);
    let list = this.free[shift];
    if (list === undefined) {
      list = [];
      this.free[shift] = list;
    }
    list.push(buf);
    this.retained += size;
  }

  /** Bytes currently idle in the pool. */
  get retainedBytes(): number {
    return this.retained;
  }

  private static classShift(length: number): number {
    if (length <= 2 ** BufferPool.MIN_CLASS_SHIFT) return BufferPool.MIN_CLASS_SHIFT;
    return 32 - Math.clz32(length - 1);
  }
}
