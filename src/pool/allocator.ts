/**
 * Physical chunk management: reference counts, the set of clean free chunks, reservations for writers, growth
 * of the data file ahead of need, and the free path (commit-rules.ts, FREE) that turns freed chunks back into
 * clean ones.
 */
import fs from 'node:fs';
import type { Logger } from 'pino';
import { ChunkBitmap } from './chunk-bitmap.js';
import { freeMayZero } from './commit-rules.js';
import type { DataFile } from './data-file.js';
import { PoolError, ioError } from './errors.js';
import { MAX_CHUNKS } from './format.js';
import type { IoTracker } from './io-tracker.js';
import type { JournalWriter } from './journal.js';

const GROW_MIN_BYTES = 256 * 1024 * 1024;
const LOW_WATER_BYTES = 64 * 1024 * 1024;
/** after a failed grow, background growth pauses this long (writers that find no space retry sooner) */
const GROW_RETRY_MS = 1000;

interface FreeRun {
  start: number;
  count: number;
  /** seq of the record that freed the chunks */
  seq: number;
  /** IoTracker id at free time */
  tag: number;
}

export interface AllocatorOptions {
  chunkSize: number;
  /** maximum data file size in bytes, 0 = until the filesystem is full */
  capacity: number;
  /** directory whose filesystem holds the data file (free space checks when capacity is 0) */
  dir: string;
  /** bytes to leave free on the filesystem for metadata when capacity is 0 */
  reserveBytes: () => number;
  logger: Logger;
}

export class ChunkAllocator {
  private refcounts = new Uint16Array(0);
  private readonly clean = new ChunkBitmap();
  private used = 0;
  /** chunks with a reference count above 1 (held by several mapping pages: snapshots); 0 = no sharing at all */
  private shared = 0;
  private reserved = 0;
  private pending: FreeRun[] = [];
  private pendingChunks = 0;
  private quarantined = 0;
  private waiters: Array<{ n: number; resolve: () => void; reject: (e: unknown) => void }> = [];
  private drainWaiters: Array<() => void> = [];
  private growing: Promise<void> | null = null;
  private growFailedAt = 0;
  private freeRunning = false;
  /** the free path stopped on an error (journal failure): nothing more will become clean in this run */
  private freeFailed = false;
  private cursor = 0;
  private journal: JournalWriter | null = null;
  private stopped = false;
  private readonly capacityChunks: number;
  private readonly lowWater: number;
  private readonly cs: number;

  constructor(
    private readonly data: DataFile,
    private readonly tracker: IoTracker,
    private readonly opts: AllocatorOptions,
  ) {
    this.cs = opts.chunkSize;
    this.capacityChunks = opts.capacity > 0 ? Math.min(Math.floor(opts.capacity / this.cs), MAX_CHUNKS) : MAX_CHUNKS;
    this.lowWater = Math.max(16, Math.ceil(LOW_WATER_BYTES / this.cs));
  }

  attachJournal(journal: JournalWriter): void {
    this.journal = journal;
  }

  /** chunks of the data file that the allocator manages (a grow in progress is not counted yet) */
  get total(): number {
    return this.clean.size;
  }
  get usedChunks(): number {
    return this.used;
  }
  get freeChunks(): number {
    return this.clean.count;
  }
  get pendingFreeChunks(): number {
    return this.pendingChunks;
  }
  get memoryBytes(): number {
    return this.refcounts.byteLength + this.clean.memoryBytes + this.pending.length * 64;
  }

  refcount(p: number): number {
    return p < this.refcounts.length ? this.refcounts[p] : 0;
  }

  /**
   * Loads the reference counts at open (`forEachMapped` calls back with every mapped physical chunk) and makes
   * the free chunks clean: trusted when `clean` (clean shutdown), else zero-ranged and synced.
   */
  async load(forEachMapped: (fn: (p: number) => void) => void, clean: boolean): Promise<{ zeroedChunks: number; ranges: number; extended: number }> {
    let maxP = -1;
    forEachMapped((p) => {
      if (p > maxP) maxP = p;
    });
    let extended = 0;
    if (maxP >= this.data.chunks) {
      // a mapping beyond the end of the data file (its growth was not durable): extend, the chunks read as zeros
      extended = maxP + 1 - this.data.chunks;
      await this.data.extend(extended);
    }
    this.ensureCapacity(this.data.chunks);
    this.clean.grow(this.data.chunks);
    let overflow = -1;
    forEachMapped((p) => {
      const r = this.refcounts[p];
      if (r === 0xffff) overflow = p;
      else {
        this.refcounts[p] = r + 1;
        if (r === 0) this.used++;
        else if (r === 1) this.shared++;
      }
    });
    if (overflow >= 0) throw new PoolError('ECORRUPT', `physical chunk ${overflow} is held by more than 65535 mapping pages`);
    let zeroedChunks = 0;
    let ranges = 0;
    const total = this.data.chunks;
    for (let p = 0; p < total; ) {
      if (this.refcounts[p] !== 0) {
        p++;
        continue;
      }
      let q = p;
      while (q < total && this.refcounts[q] === 0) q++;
      if (!clean) {
        await this.data.zeroChunks(p, q - p);
        zeroedChunks += q - p;
        ranges++;
      }
      this.clean.setRange(p, q - p);
      p = q;
    }
    if (!clean && zeroedChunks > 0) await this.data.sync();
    return { zeroedChunks, ranges, extended };
  }

  /** Reserves n clean chunks for take() if they are available now. */
  tryReserve(n: number): boolean {
    if (this.waiters.length === 0 && this.clean.count - this.reserved >= n) {
      this.reserved += n;
      this.maybeGrow();
      return true;
    }
    return false;
  }

  /** Reserves n clean chunks, waiting for growth or frees; rejects with ENOSPC when the pool is full. */
  reserve(n: number): Promise<void> {
    if (this.tryReserve(n)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.waiters.push({ n, resolve, reject });
      this.serveWaiters();
    });
  }

  unreserve(n: number): void {
    if (n <= 0) return;
    this.reserved -= n;
    if (this.waiters.length > 0) this.serveWaiters();
  }

  /** Takes one reserved clean chunk, preferably at or after `preferred` (keeps runs physically contiguous). */
  take(preferred: number): number {
    let p = preferred >= 0 ? this.clean.findNext(preferred) : -1;
    if (p < 0) p = this.clean.findNext(this.cursor);
    if (p < 0) p = this.clean.findNext(0);
    if (p < 0) throw new PoolError('EIO', 'allocator: no clean chunk despite a reservation');
    this.clean.clear(p);
    this.reserved--;
    this.refcounts[p] = 1;
    this.used++;
    this.cursor = p + 1;
    this.maybeGrow();
    return p;
  }

  /** One more mapping page holds p (a page shared by a snapshot was copied). */
  addRef(p: number): void {
    const r = this.refcounts[p];
    if (r === 0) throw new PoolError('EIO', `allocator: reference to free chunk ${p}`);
    if (r === 0xffff) throw new PoolError('EOVERFLOW', `chunk ${p} is held by 65535 mapping pages (too many snapshots)`);
    this.refcounts[p] = r + 1;
    if (r === 1) this.shared++;
  }

  /** number of chunks held by more than one mapping page */
  get sharedChunks(): number {
    return this.shared;
  }

  /** Drops one reference to p; at zero the chunk enters the free path, freed by journal record `seq`. */
  release(p: number, seq: number): void {
    const r = this.refcounts[p];
    if (r === 0) throw new PoolError('EIO', `allocator: release of free chunk ${p}`);
    this.refcounts[p] = r - 1;
    if (r === 2) this.shared--;
    if (r > 1) return;
    this.used--;
    this.pendingChunks++;
    const tag = this.tracker.nextId;
    const last = this.pending[this.pending.length - 1];
    if (last !== undefined && last.seq === seq && last.tag === tag && last.start + last.count === p) last.count++;
    else this.pending.push({ start: p, count: 1, seq, tag });
    if (!this.freeRunning && !this.freeFailed) void this.runFrees();
  }

  /**
   * Consistency audit (pool check): compares the reference counts with `expected` (recomputed from the
   * mappings) and checks that no referenced chunk is also on a free list. Returns the problems found.
   */
  audit(expected: Uint16Array): string[] {
    const problems: string[] = [];
    const total = this.total;
    let used = 0;
    for (let p = 0; p < Math.max(total, expected.length); p++) {
      const want = p < expected.length ? expected[p]! : 0;
      const have = this.refcount(p);
      if (have !== want) problems.push(`chunk ${p}: refcount ${have}, but ${want} mapping(s) point at it`);
      if (want > 0 && p >= total) problems.push(`chunk ${p} is mapped but lies beyond the data file (${total} chunks)`);
      if (want > 0 && this.clean.get(p)) problems.push(`chunk ${p} is mapped and also on the clean free list`);
      if (have > 0) used++;
    }
    for (const run of this.pending) {
      for (let p = run.start; p < run.start + run.count; p++) {
        if (p < expected.length && expected[p]! > 0) problems.push(`chunk ${p} is mapped and also waiting to be freed`);
      }
    }
    if (used !== this.used) problems.push(`allocator counts ${this.used} used chunks, refcounts say ${used}`);
    return problems;
  }

  /** every free chunk reads as zeros durably (a checkpoint written now may say CLEAN) */
  get allFreeClean(): boolean {
    return this.pendingChunks === 0 && this.quarantined === 0 && !this.freeFailed && this.reserved === 0;
  }

  /** resolves when every chunk freed so far is clean again */
  drainFrees(): Promise<void> {
    if (this.freeFailed || (this.pendingChunks - this.quarantined <= 0 && !this.freeRunning)) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Stops background growth and waits for the free path and a running grow. */
  async stop(): Promise<void> {
    await this.drainFrees();
    this.stopped = true;
    await this.growing;
  }

  /** Starts a background grow when clean chunks run low. */
  maybeGrow(): void {
    if (this.growing !== null || this.stopped) return;
    if (this.clean.count - this.reserved >= this.lowWater) return;
    if (Date.now() - this.growFailedAt < GROW_RETRY_MS) return;
    if (this.growChunks() <= 0) return;
    this.startGrow();
  }

  private startGrow(): void {
    this.growing = this.grow().finally(() => {
      this.growing = null;
      this.serveWaiters();
      this.maybeGrow();
    });
  }

  /** how many chunks the next grow step adds (0 = cannot grow) */
  private growChunks(): number {
    const total = this.data.chunks;
    let step = Math.floor(Math.max(GROW_MIN_BYTES, (total * this.cs) / 8) / this.cs);
    step = Math.min(step, this.capacityChunks - total);
    if (this.opts.capacity === 0) {
      try {
        const st = fs.statfsSync(this.opts.dir);
        const room = Math.floor((st.bavail * st.bsize - this.opts.reserveBytes()) / this.cs);
        step = Math.min(step, room);
      } catch {
        // no statfs: let fallocate decide
      }
    }
    return Math.max(0, step);
  }

  private async grow(): Promise<void> {
    let step = this.growChunks();
    while (step > 0) {
      try {
        await this.data.extend(step);
        await this.data.sync();
        break;
      } catch (err) {
        if ((err as { code?: string }).code !== 'ENOSPC' || step === 1) {
          this.growFailedAt = Date.now();
          this.opts.logger.error({ err: (err as Error).message }, 'growing the data file failed');
          return;
        }
        step = Math.floor(step / 2);
      }
    }
    if (step <= 0) {
      this.growFailedAt = Date.now();
      return;
    }
    const old = this.clean.size;
    const total = this.data.chunks;
    this.ensureCapacity(total);
    this.clean.grow(total);
    this.clean.setRange(old, total - old);
    this.opts.logger.debug({ chunks: total - old, dataFileBytes: this.data.size }, 'data file grown');
  }

  private ensureCapacity(chunks: number): void {
    if (chunks <= this.refcounts.length) return;
    const r = new Uint16Array(Math.max(chunks, Math.ceil(this.refcounts.length * 1.25)));
    r.set(this.refcounts);
    this.refcounts = r;
  }

  private serveWaiters(): void {
    while (this.waiters.length > 0) {
      const w = this.waiters[0];
      if (this.clean.count - this.reserved >= w.n) {
        this.reserved += w.n;
        this.waiters.shift();
        w.resolve();
        continue;
      }
      // frees will do, unless the free path has stopped for good (journal failure)
      if (!this.freeFailed && this.clean.count - this.reserved + this.pendingChunks - this.quarantined >= w.n) return;
      if (this.growing !== null) return;
      if (!this.stopped && Date.now() - this.growFailedAt >= GROW_RETRY_MS && this.growChunks() > 0) {
        this.startGrow();
        return;
      }
      this.waiters.shift();
      w.reject(
        new PoolError(
          'ENOSPC',
          `pool is full: ${this.used} of ${this.clean.size} chunks in use` +
            (this.opts.capacity > 0 ? ` (capacity ${this.opts.capacity} bytes)` : ' (filesystem full)'),
        ),
      );
    }
    this.maybeGrow();
  }

  /** The free path (commit-rules.ts, FREE), one batch at a time in free order. */
  private async runFrees(): Promise<void> {
    const journal = this.journal!;
    this.freeRunning = true;
    try {
      while (this.pending.length > 0) {
        const head = this.pending[0];
        if (head.seq > journal.durableSeq) {
          await journal.waitDurable(head.seq);
          continue;
        }
        if (head.tag > this.tracker.completedBelow) {
          await this.tracker.whenCompleted(head.tag);
          continue;
        }
        let k = 0;
        while (
          k < this.pending.length &&
          freeMayZero(this.pending[k].seq, this.pending[k].tag, journal.durableSeq, this.tracker.completedBelow)
        ) k++;
        const batch = this.pending.splice(0, k).sort((a, b) => a.start - b.start);
        const ranges: Array<[number, number]> = [];
        for (const r of batch) {
          const last = ranges[ranges.length - 1];
          if (last && last[0] + last[1] === r.start) last[1] += r.count;
          else ranges.push([r.start, r.count]);
        }
        const zeroed: Array<[number, number]> = [];
        for (const [start, count] of ranges) {
          try {
            await this.data.zeroChunks(start, count);
            zeroed.push([start, count]);
          } catch (err) {
            // not reusable until the next open re-zeroes every free chunk
            this.quarantined += count;
            this.opts.logger.error({ err: (err as Error).message, start, count }, 'zeroing freed chunks failed; they stay unused until the pool is reopened');
          }
        }
        await this.data.sync();
        for (const [start, count] of zeroed) {
          this.clean.setRange(start, count);
          this.pendingChunks -= count;
        }
        this.serveWaiters();
      }
    } catch (err) {
      this.freeFailed = true;
      this.opts.logger.error({ err: ioError('free path', err).message }, 'free path stopped; freed chunks stay unused until the pool is reopened');
      // writers waiting for those frees get their answer now (space from growth, or ENOSPC) instead of never
      this.serveWaiters();
    } finally {
      this.freeRunning = false;
      const d = this.drainWaiters;
      this.drainWaiters = [];
      for (const f of d) f();
    }
  }
}
