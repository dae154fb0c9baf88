/**
 * Tracks data-file I/O in flight with monotonically increasing operation ids. A freed chunk is tagged with
 * `nextId` at the moment it is freed; it may be zeroed and reused only once every operation with a smaller id has
 * completed (`completedBelow >= tag`), because such an operation may still be reading or writing the chunk.
 * Allocation-free on the hot path: a ring of completion flags.
 */
export class IoTracker {
  private ring = new Uint8Array(1024);
  private mask = 1023;
  private next = 1;
  /** every id < low has completed */
  private low = 1;
  private waiters: Array<{ tag: number; resolve: () => void }> = [];
  private idleWaiters: Array<() => void> = [];

  /** the id the next operation will get: the tag for a chunk freed now */
  get nextId(): number {
    return this.next;
  }
  get completedBelow(): number {
    return this.low;
  }
  get inFlight(): number {
    return this.next - this.low;
  }

  begin(): number {
    const id = this.next++;
    if (this.next - this.low > this.ring.length) this.growRing();
    return id;
  }

  end(id: number): void {
    this.ring[id & this.mask] = 1;
    if (id !== this.low) return;
    let low = this.low;
    while (low < this.next && this.ring[low & this.mask] === 1) {
      this.ring[low & this.mask] = 0;
      low++;
    }
    this.low = low;
    if (this.waiters.length > 0) this.wake();
    if (low === this.next && this.idleWaiters.length > 0) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  /** resolves once every operation with id < tag has completed */
  whenCompleted(tag: number): Promise<void> {
    if (this.low >= tag) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ tag, resolve }));
  }

  whenIdle(): Promise<void> {
    if (this.low === this.next) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private wake(): void {
    const keep: typeof this.waiters = [];
    for (const w of this.waiters) {
      if (this.low >= w.tag) w.resolve();
      else keep.push(w);
    }
    this.waiters = keep;
  }

  private growRing(): void {
    const ring = new Uint8Array(this.ring.length * 2);
    const mask = ring.length - 1;
    for (let id = this.low; id < this.next - 1; id++) ring[id & mask] = this.ring[id & this.mask];
    this.ring = ring;
    this.mask = mask;
  }
}
