/**
 * A volume's data path: read, write, trim, zero, block status, and its generation operations. Requests are split
 * per chunk and physically contiguous runs go down as one system call. The ordering rules are in commit-rules.ts.
 */
import { native } from '../native/index.js';
import { NEEDS_MARK, durabilityBarrier, overwriteRule } from './commit-rules.js';
import type { PoolContext } from './context.js';
import { PoolError, ioError } from './errors.js';
import { MAX_GENERATION, PAGE_SHIFT } from './format.js';
import {
  appendGenRebase,
  appendGenReset,
  appendGenSet,
  appendMap,
  appendMark,
  appendUnmap,
} from './records.js';
import type { JournalWriter } from './journal.js';
import { VolumeFlag, type BackupChain, type VolumeState } from './volume-state.js';

export type VolumeKind = 'volume' | 'snapshot' | 'copy' | 'replica' | 'diff-export' | 'internal';

export interface VolumeInfo {
  name: string;
  uuid: string;
  size: number;
  createdAt: string;
  generation: number;
  allocatedChunks: number;
  allocatedBytes: number;
  kind: VolumeKind;
  readOnly: boolean;
  /** `volume copy` still copying in the background */
  copying: boolean;
  /** the backup chain the generation map counts from (full backup stream, last generation dumped), or null */
  backupChain: BackupChain | null;
}

export function volumeKind(st: VolumeState): VolumeKind {
  if (st.has(VolumeFlag.HIDDEN)) return 'internal';
  if (st.has(VolumeFlag.REPLICA)) return 'replica';
  if (st.has(VolumeFlag.DIFF_EXPORT)) return 'diff-export';
  if (st.has(VolumeFlag.SNAPSHOT)) return 'snapshot';
  if (st.source !== null) return 'copy';
  return 'volume';
}

/** how writeRange writes: the caller's data */
const WRITE = 0;
/** zeros; unmapped chunks are mapped to clean chunks without I/O (they read as zeros) */
const ZERO_ALLOCATE = 1;
/** zeros into mapped chunks only; unmapped chunks already read as zeros */
const ZERO_MAPPED = 2;
type WriteMode = typeof WRITE | typeof ZERO_ALLOCATE | typeof ZERO_MAPPED;

/** chunks per step for large trims (unmapping) and zero-writes, to bound memory and event-loop stalls */
const UNMAP_SLICE = 65536;
const ZERO_SLICE_BYTES = 16 * 1024 * 1024;
const MAX_RUN = 0xffff_ffff;

/** Coalesces the MAP / MARK / UNMAP records of one request into runs of consecutive chunks. */
class RecordBatch {
  private mapC = 0;
  private mapP = 0;
  private mapN = 0;
  private markC = 0;
  private markN = 0;
  private unmapC = 0;
  private unmapN = 0;
  /** chunks marked by this batch: [start, count, ...] */
  readonly marked: number[] = [];

  constructor(
    private readonly j: JournalWriter,
    private readonly vol: number,
    private readonly gen: number,
  ) {}

  map(c: number, p: number): void {
    if (this.mapN > 0 && c === this.mapC + this.mapN && p === this.mapP + this.mapN && this.mapN < MAX_RUN) {
      this.mapN++;
      return;
    }
    this.flushMap();
    this.mapC = c;
    this.mapP = p;
    this.mapN = 1;
  }

  mark(c: number): void {
    if (this.markN > 0 && c === this.markC + this.markN) {
      this.markN++;
      return;
    }
    this.flushMark();
    this.markC = c;
    this.markN = 1;
  }

  unmap(c: number): void {
    if (this.unmapN > 0 && c === this.unmapC + this.unmapN) {
      this.unmapN++;
      return;
    }
    this.flushUnmap();
    this.unmapC = c;
    this.unmapN = 1;
  }

  /** appends the records; returns the seq of the last one (0 if none) */
  finish(): number {
    this.flushMap();
    this.flushMark();
    this.flushUnmap();
    return this.j.lastSeq;
  }

  private flushMap(): void {
    if (this.mapN > 0) appendMap(this.j, this.vol, this.mapC, this.mapP, this.mapN, this.gen);
    this.mapN = 0;
  }
  private flushMark(): void {
    if (this.markN > 0) {
      appendMark(this.j, this.vol, this.markC, this.markN, this.gen);
      this.marked.push(this.markC, this.markN);
    }
    this.markN = 0;
  }
  private flushUnmap(): void {
    if (this.unmapN > 0) appendUnmap(this.j, this.vol, this.unmapC, this.unmapN, this.gen);
    this.unmapN = 0;
  }
}

/**
 * Like Promise.all, but settles only when every I/O has finished (the op id must outlive all of them: a chunk
 * freed meanwhile is not reused while one of our writes may still land in it), then throws the first error.
 */
async function settleAll(ps: Array<Promise<unknown>>): Promise<void> {
  const results = await Promise.allSettled(ps);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

async function readRest(fd: number, view: Buffer, pos: number, done: number): Promise<void> {
  const got = await native.pread(fd, done > 0 ? view.subarray(done) : view, pos + done);
  // past the end of the data file (only after a crash lost its growth): zeros
  if (done + got < view.length) view.fill(0, done + got);
}

/**
 * Reads up to this size are tried from the page cache on the event loop (no thread-pool hop, which dominates small
 * reads); larger ones go to the thread pool, so that copying them overlaps with the event loop's socket writes.
 */
const SYNC_READ_MAX = 256 * 1024;

export class Volume {
  /** callers holding the volume open (acquire/release) */
  openCount = 0;
  /** an operation that needs the volume to itself (a restore into it): no new NBD client may open it meanwhile */
  heldBy: string | null = null;

  constructor(
    private readonly ctx: PoolContext,
    /** @internal */ readonly state: VolumeState,
  ) {}

  get name(): string {
    return this.state.name;
  }
  get uuid(): string {
    return this.state.uuid;
  }
  get size(): number {
    return this.state.size;
  }

  info(): VolumeInfo {
    const s = this.state;
    return {
      name: s.name,
      uuid: s.uuid,
      size: s.size,
      createdAt: new Date(s.createdAt).toISOString(),
      generation: s.gens.current,
      allocatedChunks: s.allocatedChunks,
      allocatedBytes: s.allocatedChunks * this.ctx.chunkSize,
      kind: volumeKind(s),
      readOnly: s.has(VolumeFlag.READ_ONLY),
      copying: s.has(VolumeFlag.COPYING),
      backupChain: s.chain ? { ...s.chain } : null,
    };
  }

  get readOnly(): boolean {
    return this.state.has(VolumeFlag.READ_ONLY);
  }

  // ---------------------------------------------------------------- write gate

  /**
   * Mutations in flight (write, trim, zero) and the pause a point-in-time operation (snapshot) takes: it waits
   * until none is in flight, makes its change in one synchronous step, and lets the held-back mutations go. A
   * write is thereby entirely before or entirely after a snapshot: its data and its generation mark on one side.
   */
  private mutating = 0;
  private paused: Promise<void> | null = null;
  private drained: (() => void) | null = null;

  private async enterMutation(): Promise<void> {
    while (this.paused !== null) await this.paused;
    this.mutating++;
  }

  private leaveMutation(): void {
    if (--this.mutating === 0 && this.drained !== null) this.drained();
  }

  /** Runs fn with no write, trim or zero of this volume in flight; new ones wait until it returns. */
  async quiesce<T>(fn: () => T): Promise<T> {
    while (this.paused !== null) await this.paused;
    let resume!: () => void;
    this.paused = new Promise<void>((r) => (resume = r));
    try {
      if (this.mutating > 0) await new Promise<void>((r) => (this.drained = r));
      this.drained = null;
      return fn();
    } finally {
      this.paused = null;
      resume();
    }
  }

  acquire(): void {
    this.openCount++;
  }
  release(): void {
    if (this.openCount > 0) this.openCount--;
  }

  flush(): Promise<void> {
    return this.ctx.flush();
  }

  // ---------------------------------------------------------------- read

  async read(offset: number, buf: Buffer): Promise<number[]> {
    const ctx = this.ctx;
    ctx.enter();
    let opId = 0;
    try {
      const len = buf.length;
      this.checkRange(offset, len, this.state.size);
      if (len === 0) return [];
      // a full copy still copying in the background copies what is read first (seed 000: on-demand copy)
      if (this.state.flags & VolumeFlag.COPYING) await this.unshareRange(offset, len, false);
      const cs = ctx.chunkSize;
      const map = this.state.map;
      const fd = ctx.data.fd;
      const end = offset + len;
      const holes: number[] = [];
      let pending: Promise<void>[] | null = null;
      let runPos = -1;
      let runStart = 0;
      let runEnd = 0;
      // the op id is taken in the same synchronous step as the mapping lookups (commit-rules.ts, FREE)
      opId = ctx.tracker.begin();
      for (let pos = offset, c = Math.floor(offset / cs); pos < end; c++) {
        const cStart = c * cs;
        const segEnd = Math.min(end, cStart + cs);
        const s = pos - offset;
        const t = segEnd - offset;
        const e = map.get(c);
        if (e === 0) {
          if (runPos >= 0) {
            pending = this.issueRead(fd, buf, runPos, runStart, runEnd, pending);
            runPos = -1;
          }
          const n = holes.length;
          if (n > 0 && holes[n - 2] + holes[n - 1] === s) holes[n - 1] += t - s;
          else holes.push(s, t - s);
        } else {
          const phys = (e - 1) * cs + (pos - cStart);
          if (runPos >= 0 && phys === runPos + (runEnd - runStart)) {
            runEnd = t;
          } else {
            if (runPos >= 0) pending = this.issueRead(fd, buf, runPos, runStart, runEnd, pending);
            runPos = phys;
            runStart = s;
            runEnd = t;
          }
        }
        pos = segEnd;
      }
      if (runPos >= 0) pending = this.issueRead(fd, buf, runPos, runStart, runEnd, pending);
      if (pending !== null) {
        if (pending.length === 1) await pending[0];
        else await settleAll(pending);
      }
      return holes;
    } catch (err) {
      throw ioError(`read of volume ${this.state.name} at ${offset}+${buf.length} failed`, err);
    } finally {
      if (opId !== 0) ctx.tracker.end(opId);
      ctx.leave();
    }
  }

  /** page-cache hit: served synchronously; otherwise (or for the rest) a thread-pool pread */
  private issueRead(
    fd: number,
    buf: Buffer,
    pos: number,
    start: number,
    end: number,
    pending: Promise<void>[] | null,
  ): Promise<void>[] | null {
    const view = start === 0 && end === buf.length ? buf : buf.subarray(start, end);
    let n = -1;
    if (view.length <= SYNC_READ_MAX) {
      try {
        n = native.preadNoWait(fd, view, pos);
      } catch {
        n = -1; // let the thread-pool read report (or not) the error, after the reads already issued
      }
    }
    if (n === view.length) return pending;
    const p = readRest(fd, view, pos, n > 0 ? n : 0);
    if (pending === null) return [p];
    pending.push(p);
    return pending;
  }

  // ---------------------------------------------------------------- write

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const ctx = this.ctx;
    ctx.enter();
    try {
      this.checkWritable(offset, data.length);
      if (data.length === 0) return;
      if (this.paused !== null) await this.enterMutation();
      else this.mutating++;
      try {
        await this.writeRange(offset, data.length, data, WRITE, false);
      } finally {
        this.leaveMutation();
      }
      if (fua) await durabilityBarrier(ctx.journal, ctx.data);
    } finally {
      ctx.leave();
    }
  }

  /**
   * Writes `data` (or zeros, per mode) at [offset, offset + len) of the volume, one chunk run per system call.
   * `beyondEnd` lets resize write past the current size (inside the last chunk).
   */
  private async writeRange(offset: number, len: number, data: Buffer | null, mode: WriteMode, beyondEnd: boolean): Promise<void> {
    const ctx = this.ctx;
    const st = this.state;
    const cs = ctx.chunkSize;
    const map = st.map;
    const end = offset + len;
    const first = Math.floor(offset / cs);
    const last = Math.floor((end - 1) / cs);

    // Copy-on-write (SHARE rule): chunks shared with a snapshot that this request covers only in part are copied
    // first (whole-chunk copies, durable before their new mapping). Wholly covered ones get the request's data in a
    // chunk of their own, written before the new mapping is even queued (it carries G and becomes durable after a
    // data sync), so they are done here; zero-writes redirect them to a clean chunk in phase 2 (zeros are their new
    // content).
    const sharing = ctx.sharingActive();
    let written: ReadonlySet<number> | null = null;
    if (sharing) written = await this.unshareRange(offset, len, true, mode === WRITE ? data : null, true);

    // Phase 1: reserve clean chunks for the unmapped (and shared) chunks, waiting for growth or frees with no op
    // id held.
    let reserved = 0;
    if (mode !== ZERO_MAPPED || sharing) {
      for (;;) {
        let need = 0;
        for (let c = first; c <= last; c++) {
          const e = map.get(c);
          if (e === 0 ? mode !== ZERO_MAPPED : sharing && this.isShared(c, e)) need++;
        }
        if (need <= reserved) break;
        if (!ctx.alloc.tryReserve(need - reserved)) {
          try {
            await ctx.alloc.reserve(need - reserved);
          } catch (err) {
            ctx.alloc.unreserve(reserved);
            throw err;
          }
        }
        reserved = need;
        if (st.deleted || (!beyondEnd && end > st.size)) {
          ctx.alloc.unreserve(reserved);
          throw st.deleted
            ? new PoolError('ENOENT', `volume ${st.name} was deleted`)
            : new PoolError('EINVAL', `volume ${st.name} shrank below ${end}`);
        }
      }
    }

    // Phase 2 (synchronous): mappings, marks, records, op id.
    const journal = ctx.journal;
    const G = st.gens.current;
    const opId = ctx.tracker.begin();
    let batch: RecordBatch | null = null;
    let waitSeq = 0;
    /** chunks this request redirected away from (shared with a snapshot), released once the records exist */
    let redirected: number[] | null = null;
    /** [physicalPos, start, end, ...] relative to offset */
    const runs: number[] = [];
    let runPos = -1;
    let runStart = 0;
    let runEnd = 0;
    try {
      for (let pos = offset, c = first; c <= last; c++) {
        const cStart = c * cs;
        const segEnd = Math.min(end, cStart + cs);
        let e = map.get(c);
        let skip = false;
        if (written !== null && written.has(c) && e !== 0 && !this.isShared(c, e)) {
          // its data is in place already (copy-on-write with the request's data, above)
          skip = true;
        } else if (e === 0) {
          if (mode === ZERO_MAPPED) {
            skip = true;
          } else {
            // W1: a clean chunk, mapped now, written at once
            const prev = c > 0 ? map.get(c - 1) : 0;
            const p = ctx.alloc.take(prev !== 0 ? prev : st.cursor);
            reserved--;
            st.mapChunk(c, p, G);
            st.cursor = p + 1;
            if (st.pendingMarks.size > 0) st.pendingMarks.delete(c);
            (batch ??= new RecordBatch(journal, st.id, G)).map(c, p);
            if (mode === ZERO_ALLOCATE) skip = true;
            e = p + 1;
          }
        } else if (sharing && this.isShared(c, e)) {
          // redirect-on-write: the request covers the whole chunk (unshareRange copied partial ones). Zero-writes
          // go to a clean chunk like W1 (zeros are the new content, so a MAP durable before anything else is
          // right); a data write reaches here only when the chunk became shared again meanwhile, and takes the same
          // path (the W1 argument then over-states: a crash before its data lands shows zeros, as for W1)
          const p = ctx.alloc.take(st.cursor);
          reserved--;
          (redirected ??= []).push(e - 1);
          st.mapChunk(c, p, G);
          st.cursor = p + 1;
          if (st.pendingMarks.size > 0) st.pendingMarks.delete(c);
          (batch ??= new RecordBatch(journal, st.id, G)).map(c, p);
          if (mode !== WRITE) skip = true;
          e = p + 1;
        } else {
          const r = overwriteRule(st, c, journal.durableSeq);
          if (r === NEEDS_MARK) {
            // W3: mark first
            st.markChunk(c, G);
            (batch ??= new RecordBatch(journal, st.id, G)).mark(c);
          } else if (r > waitSeq) {
            waitSeq = r;
          }
        }
        if (skip) {
          if (runPos >= 0) runs.push(runPos, runStart, runEnd);
          runPos = -1;
        } else {
          const phys = (e - 1) * cs + (pos - cStart);
          const s = pos - offset;
          const t = segEnd - offset;
          if (runPos >= 0 && phys === runPos + (runEnd - runStart)) {
            runEnd = t;
          } else {
            if (runPos >= 0) runs.push(runPos, runStart, runEnd);
            runPos = phys;
            runStart = s;
            runEnd = t;
          }
        }
        pos = segEnd;
      }
      if (runPos >= 0) runs.push(runPos, runStart, runEnd);
      if (batch !== null) {
        const seq = batch.finish();
        if (redirected !== null) for (const p of redirected) ctx.alloc.release(p, seq);
        const m = batch.marked;
        if (m.length > 0) {
          for (let k = 0; k < m.length; k += 2) {
            for (let c = m[k]; c < m[k] + m[k + 1]; c++) {
              st.pendingMarks.delete(c);
              st.pendingMarks.set(c, seq);
            }
          }
          if (seq > waitSeq) waitSeq = seq;
        }
      }
      if (reserved > 0) ctx.alloc.unreserve(reserved);
      reserved = 0;

      // Phase 3: wait for the marks (W3), then the data.
      if (waitSeq > journal.durableSeq) await journal.waitDurable(waitSeq);
      const fd = ctx.data.fd;
      if (runs.length === 3) {
        await this.writeRun(fd, data, runs[0], runs[1], runs[2], len);
      } else if (runs.length > 0) {
        const ps: Promise<unknown>[] = [];
        for (let k = 0; k < runs.length; k += 3) ps.push(this.writeRun(fd, data, runs[k], runs[k + 1], runs[k + 2], len));
        await settleAll(ps);
      }
    } catch (err) {
      if (reserved > 0) ctx.alloc.unreserve(reserved);
      throw ioError(`write to volume ${st.name} at ${offset}+${len} failed`, err);
    } finally {
      ctx.tracker.end(opId);
    }
  }

  private writeRun(fd: number, data: Buffer | null, pos: number, start: number, end: number, len: number): Promise<number> {
    // every completed data write is counted (DataFile.written), so a flush can tell whether an fdatasync
    // already running covers it
    const written = this.ctx.data.written;
    if (data !== null) return native.pwrite(fd, start === 0 && end === len ? data : data.subarray(start, end), pos).then(written);
    const zeros = this.ctx.zeros;
    let n = end - start;
    if (n <= zeros.length) return native.pwrite(fd, zeros.subarray(0, n), pos).then(written);
    const iov: Buffer[] = [];
    for (; n > 0; n -= zeros.length) iov.push(n >= zeros.length ? zeros : zeros.subarray(0, n));
    return native.pwritev(fd, iov, pos).then(written);
  }

  // ---------------------------------------------------------------- copy-on-write

  /** chunks being copied away from their shared chunk, with the promise of that copy */
  private readonly unsharing = new Map<number, Promise<void>>();
  /** clean chunks taken for copies in progress, not mapped yet (pool check counts them as used) */
  private readonly copyTargets = new Set<number>();

  /** physical chunks held by copies in progress @internal */
  get chunksBeingCopied(): ReadonlySet<number> {
    return this.copyTargets;
  }

  /** whether chunk c (mapped to physical e - 1) is shared with another volume */
  private isShared(c: number, e: number): boolean {
    return this.state.map.isPageShared(c >>> PAGE_SHIFT) || this.ctx.alloc.refcount(e - 1) > 1;
  }

  /**
   * Copies the shared chunks of [offset, offset + len) to chunks of this volume's own; `partialOnly` limits
   * that to the (at most two) chunks the range covers in part. Waits for copies of these chunks in progress.
   */
  private async unshareRange(
    offset: number,
    len: number,
    partialOnly: boolean,
    data: Buffer | null = null,
    forWrite = false,
  ): Promise<ReadonlySet<number> | null> {
    const cs = this.ctx.chunkSize;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + len - 1) / cs);
    const end = offset + len;
    let list: number[] | null = null;
    let whole: Map<number, Buffer> | null = null;
    for (let c = first; c <= last; c++) {
      if (partialOnly && data === null && c > first && c < last) continue;
      const inProgress = this.unsharing.get(c);
      if (inProgress !== undefined) await inProgress;
      const covered = c * cs >= offset && Math.min((c + 1) * cs, this.state.size) <= end;
      if (partialOnly && covered && data === null) continue;
      const e = this.state.map.get(c);
      if (e === 0 || !this.isShared(c, e)) continue;
      (list ??= []).push(c);
      if (covered && data !== null) (whole ??= new Map()).set(c, data.subarray(c * cs - offset, Math.min((c + 1) * cs, end) - offset));
    }
    if (list === null) return null;
    const wrote = whole === null ? null : new Set<number>();
    await this.unshareChunks(list, whole, wrote ?? undefined, forWrite);
    return wrote;
  }

  /**
   * Copies each shared chunk in `chunks` (ascending) to a clean chunk: read, write, then the new mapping (a MAP
   * record with the chunk's unchanged generation, committed only after a data sync: COPY rule in commit-rules.ts)
   * and the release of the shared chunk. A crash never leaves a durable mapping to a half-copied chunk; before the
   * mapping is durable the volume still maps the shared chunk, whose content is the same.
   * Used before partial writes, by on-demand copying and by the background copy of `volume copy`.
   *
   * `newContent`: chunks a write covers whole, with the bytes it writes there. They are not read: the new chunk
   * gets these bytes, and its mapping carries the current generation (a content change). Until that mapping is
   * durable (after the data sync) a crash leaves the chunk on the shared one, with its old content and generation.
   * `forWrite`: every copy is for a write that follows into it, so its mapping carries the current generation too
   * (the chunk's content changes only with that durable mapping: tracking holds without a MARK of its own).
   * @internal
   */
  async unshareChunks(
    chunks: readonly number[],
    newContent: ReadonlyMap<number, Buffer> | null = null,
    wroteNew?: Set<number>,
    forWrite = false,
  ): Promise<number> {
    const ctx = this.ctx;
    const st = this.state;
    const cs = ctx.chunkSize;
    const mine: number[] = [];
    for (const c of chunks) {
      const e = st.map.get(c);
      if (e !== 0 && !this.unsharing.has(c) && this.isShared(c, e)) mine.push(c);
    }
    if (mine.length === 0) return 0;
    let finished!: () => void;
    const done = new Promise<void>((r) => (finished = r));
    for (const c of mine) this.unsharing.set(c, done);
    let reserved = 0;
    let opId = 0;
    /** copy targets taken and not yet mapped or released */
    const taken: number[] = [];
    try {
      await ctx.alloc.reserve(mine.length);
      reserved = mine.length;
      opId = ctx.tracker.begin();
      const olds: number[] = [];
      const news: number[] = [];
      // room only for the chunks that are read (the others get a write's new content)
      const slot = new Map<number, number>();
      for (const c of mine) if (!newContent?.has(c)) slot.set(c, slot.size);
      const buf = native.allocAligned(Math.max(1, slot.size) * cs);
      const copyOf = (c: number) => buf.subarray(slot.get(c)! * cs, (slot.get(c)! + 1) * cs);
      for (const c of mine) {
        // own the mapping page first: a page shared with a snapshot is copied, its chunks gain a reference
        st.map.own(c);
        const old = st.map.get(c) - 1;
        const p = old >= 0 && ctx.alloc.refcount(old) > 1 ? ctx.alloc.take(st.cursor) : -1;
        if (p >= 0) {
          reserved--;
          st.cursor = p + 1;
          taken.push(p);
          this.copyTargets.add(p);
        }
        olds.push(old);
        news.push(p);
      }
      const fd = ctx.data.fd;
      await settleAll(
        mine.map((c, i) => (news[i] < 0 || newContent?.has(c) ? Promise.resolve() : readRest(fd, copyOf(c), olds[i] * cs, 0))),
      );
      await settleAll(
        mine.map((c, i) =>
          news[i] < 0 ? Promise.resolve() : native.pwrite(fd, newContent?.get(c) ?? copyOf(c), news[i] * cs).then(ctx.data.written),
        ),
      );
      let copied = 0;
      for (let i = 0; i < mine.length; i++) {
        const c = mine[i];
        const p = news[i];
        if (p < 0) continue;
        this.copyTargets.delete(p);
        if (st.deleted || st.map.get(c) !== olds[i] + 1) {
          // trimmed, redirected or deleted meanwhile: the copy is not needed
          ctx.alloc.release(p, ctx.journal.lastSeq);
          continue;
        }
        const fresh = newContent?.has(c) === true;
        // a copy made for a write carries the current generation: the write follows into the copy, so marking it
        // now spares the write a MARK of its own, whose wait would include this MAP's data sync (COPY rule)
        const g = fresh || forWrite ? st.gens.current : st.gens.get(c);
        if (fresh || forWrite) {
          st.mapChunk(c, p, g);
          if (fresh) wroteNew?.add(c);
        } else st.map.set(c, p + 1);
        const seq = appendMap(ctx.journal, st.id, c, p, 1, g);
        // COPY rule: the new mapping becomes durable only after the copied data (the commit syncs the data first)
        ctx.journal.afterDataSync(seq);
        ctx.alloc.release(olds[i], seq);
        copied++;
      }
      taken.length = 0;
      return copied;
    } finally {
      // a failed copy gives its targets back (never mapped, so no record refers to them)
      for (const p of taken) {
        if (this.copyTargets.delete(p)) ctx.alloc.release(p, ctx.journal.lastSeq);
      }
      if (opId !== 0) ctx.tracker.end(opId);
      if (reserved > 0) ctx.alloc.unreserve(reserved);
      for (const c of mine) this.unsharing.delete(c);
      finished();
    }
  }

  /** whether chunk c is still shared with another volume (background copy) @internal */
  chunkShared(c: number): boolean {
    const e = this.state.map.get(c);
    return e !== 0 && this.isShared(c, e);
  }

  // ---------------------------------------------------------------- trim / zero

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    const ctx = this.ctx;
    ctx.enter();
    try {
      this.checkWritable(offset, length);
      if (length === 0) return;
      await this.enterMutation();
      try {
        await this.discard(offset, length);
      } finally {
        this.leaveMutation();
      }
      if (fua) await durabilityBarrier(ctx.journal, ctx.data);
    } finally {
      ctx.leave();
    }
  }

  async zero(offset: number, length: number, opts: { noHole: boolean; fua: boolean }): Promise<void> {
    const ctx = this.ctx;
    ctx.enter();
    try {
      this.checkWritable(offset, length);
      if (length === 0) return;
      await this.enterMutation();
      try {
        if (!opts.noHole) {
          await this.discard(offset, length);
        } else {
          const step = Math.max(ctx.chunkSize, ZERO_SLICE_BYTES);
          for (let pos = offset; pos < offset + length; ) {
            const next = Math.min(offset + length, (Math.floor(pos / step) + 1) * step);
            await this.writeRange(pos, next - pos, null, ZERO_ALLOCATE, false);
            pos = next;
          }
        }
      } finally {
        this.leaveMutation();
      }
      if (opts.fua) await durabilityBarrier(ctx.journal, ctx.data);
    } finally {
      ctx.leave();
    }
  }

  /** Unmaps the chunks fully inside the range and zero-writes the mapped partial edges. */
  private async discard(offset: number, length: number): Promise<void> {
    const cs = this.ctx.chunkSize;
    const st = this.state;
    const end = offset + length;
    const firstFull = Math.ceil(offset / cs);
    // a range reaching the end of the volume covers its partial last chunk entirely
    const endFull = end >= st.size ? st.chunks : Math.floor(end / cs);
    if (firstFull >= endFull) {
      await this.zeroEdges(offset, end);
      return;
    }
    for (let c = firstFull; c < endFull; c = Math.min(endFull, c + UNMAP_SLICE)) {
      this.unmapChunks(c, Math.min(endFull, c + UNMAP_SLICE));
      if (c + UNMAP_SLICE < endFull) await new Promise((r) => setImmediate(r));
    }
    const edges: Promise<void>[] = [];
    if (offset < firstFull * cs) edges.push(this.zeroEdges(offset, firstFull * cs));
    if (endFull * cs < end) edges.push(this.zeroEdges(endFull * cs, end));
    await Promise.all(edges);
  }

  private async zeroEdges(from: number, to: number): Promise<void> {
    if (from >= to) return;
    await this.writeRange(from, to - from, null, ZERO_MAPPED, false);
  }

  /** TRIM rule: UNMAP records, then the freed chunks enter the free path tagged with the record's seq. */
  private unmapChunks(from: number, to: number): void {
    const st = this.state;
    if (st.deleted) throw new PoolError('ENOENT', `volume ${st.name} was deleted`);
    const G = st.gens.current;
    const found: number[] = [];
    st.map.forEachNonZero(from, Math.min(to, st.chunks), (c, e) => found.push(c, e - 1));
    if (found.length === 0) return;
    const batch = new RecordBatch(this.ctx.journal, st.id, G);
    for (let k = 0; k < found.length; k += 2) {
      const c = found[k];
      st.unmapChunk(c, G);
      if (st.pendingMarks.size > 0) st.pendingMarks.delete(c);
      batch.unmap(c);
    }
    const seq = batch.finish();
    for (let k = 1; k < found.length; k += 2) this.ctx.alloc.release(found[k], seq);
  }

  /** Resize support: zero-writes [from, to) inside the last chunk even past the current end. @internal */
  async zeroTail(from: number, to: number): Promise<void> {
    if (from >= to) return;
    await this.writeRange(from, to - from, null, ZERO_MAPPED, true);
  }

  // ---------------------------------------------------------------- block status

  allocation(offset: number, length: number): Array<{ length: number; allocated: boolean }> {
    const st = this.state;
    const cs = this.ctx.chunkSize;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset > st.size) {
      throw new PoolError('EINVAL', `allocation query ${offset}+${length} outside volume ${st.name} (${st.size} bytes)`);
    }
    const end = offset + Math.min(length, st.size - offset);
    const out: Array<{ length: number; allocated: boolean }> = [];
    for (let pos = offset; pos < end; ) {
      const c = Math.floor(pos / cs);
      const allocated = st.map.get(c) !== 0;
      const next = st.map.nextWhere(c + 1, st.chunks, !allocated);
      const extentEnd = Math.min(end, next * cs);
      out.push({ length: extentEnd - pos, allocated });
      pos = extentEnd;
    }
    return out;
  }

  // ---------------------------------------------------------------- generations

  generations(): { current: number; counts: Array<{ generation: number; chunks: number }> } {
    return { current: this.state.gens.current, counts: this.state.gens.countTable() };
  }

  chunkGeneration(chunk: number): number {
    if (!Number.isInteger(chunk) || chunk < 0 || chunk >= this.state.chunks) {
      throw new PoolError('EINVAL', `chunk ${chunk} outside volume ${this.state.name} (${this.state.chunks} chunks)`);
    }
    return this.state.gens.get(chunk);
  }

  /**
   * Chunks whose generation is in from..to (from >= 1), ascending, mapped or not (a chunk unmapped in that range
   * became a hole: a difference backup carries it as zeros). The record list of a diff.
   */
  chunksInGenerations(from: number, to: number): Array<{ chunk: number; generation: number }> {
    const st = this.state;
    const out: Array<{ chunk: number; generation: number }> = [];
    st.gens.entries.forEachNonZero(0, st.chunks, (chunk, generation) => {
      if (generation >= from && generation <= to) out.push({ chunk, generation });
    });
    return out;
  }

  /** chunks the generation map counts in generations from..to (the record count of a diff, without a scan) */
  countInGenerations(from: number, to: number): number {
    let n = 0;
    for (const { generation, chunks } of this.state.gens.countTable()) if (generation >= from && generation <= to) n += chunks;
    return n;
  }

  /** the mapped chunks, ascending, with their generations (a dump's record list) */
  mappedChunks(): Array<{ chunk: number; generation: number }> {
    const st = this.state;
    const out: Array<{ chunk: number; generation: number }> = [];
    st.map.forEachNonZero(0, st.chunks, (chunk) => out.push({ chunk, generation: st.gens.get(chunk) }));
    return out;
  }

  changedChunks(fromGeneration: number): number[] {
    return this.state.gens.changedSince(fromGeneration);
  }

  /**
   * Block status of "changed in generation >= since" (since >= 1) over [offset, offset + length), cut at the end
   * of the volume: runs of alike chunks merged, the first run starting exactly at `offset` (which need not be
   * chunk-aligned), the last one ending at the end of the range. Stops after `maxRuns` runs (the caller asks again
   * from where it stopped); unchanged stretches skip empty pages of the generation map.
   */
  changedExtents(since: number, offset: number, length: number, maxRuns = 65536): Array<{ length: number; changed: boolean }> {
    const st = this.state;
    const cs = this.ctx.chunkSize;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset > st.size) {
      throw new PoolError('EINVAL', `generation query ${offset}+${length} outside volume ${st.name} (${st.size} bytes)`);
    }
    if (!Number.isInteger(since) || since < 1) throw new PoolError('EINVAL', `generation ${since} is not >= 1`);
    const gens = st.gens;
    const end = offset + Math.min(length, st.size - offset);
    const endChunk = Math.ceil(end / cs);
    const out: Array<{ length: number; changed: boolean }> = [];
    for (let pos = offset; pos < end && out.length < maxRuns; ) {
      const c = Math.floor(pos / cs);
      const changed = gens.get(c) >= since;
      let next = c + 1;
      if (changed) {
        while (next < endChunk && gens.get(next) >= since) next++;
      } else {
        // only non-zero entries can be >= since: jump from one to the next
        for (;;) {
          next = gens.entries.nextWhere(next, endChunk, true);
          if (next >= endChunk || gens.get(next) >= since) break;
          next++;
        }
      }
      const runEnd = Math.min(end, next * cs);
      out.push({ length: runEnd - pos, changed });
      pos = runEnd;
    }
    return out;
  }

  /** current -> current + 1, durable before it resolves */
  async advanceGeneration(): Promise<number> {
    const ctx = this.ctx;
    ctx.enter();
    try {
      const st = this.state;
      this.checkAlive();
      if (st.gens.current >= MAX_GENERATION) throw new PoolError('EINVAL', `volume ${st.name}: generation limit reached`);
      st.gens.current++;
      const seq = appendGenSet(ctx.journal, st.id, st.gens.current);
      const current = st.gens.current;
      await ctx.journal.waitDurable(seq);
      return current;
    } finally {
      ctx.leave();
    }
  }

  /** full-backup semantics: every chunk unchanged (generation 0), current generation 1, durable */
  async resetGenerations(): Promise<void> {
    const ctx = this.ctx;
    ctx.enter();
    try {
      const st = this.state;
      this.checkAlive();
      st.gens.reset();
      st.pendingMarks.clear();
      await ctx.journal.waitDurable(appendGenReset(ctx.journal, st.id));
    } finally {
      ctx.leave();
    }
  }

  // ---------------------------------------------------------------- helpers

  private checkAlive(): void {
    if (this.state.deleted) throw new PoolError('ENOENT', `volume ${this.state.name} was deleted`);
  }

  private checkWritable(offset: number, length: number): void {
    this.checkRange(offset, length, this.state.size);
    if (this.state.flags & VolumeFlag.READ_ONLY) throw new PoolError('EPERM', `volume ${this.state.name} is read-only`);
  }

  private checkRange(offset: number, length: number, size: number): void {
    this.checkAlive();
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
      throw new PoolError('EINVAL', `range ${offset}+${length} outside volume ${this.state.name} (${size} bytes)`);
    }
  }
}
