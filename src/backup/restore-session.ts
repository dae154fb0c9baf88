/**
 * Restores through a writable pseudo-device (seed 002 【0028】【0042】: the stream `dd` reads from tape is written,
 * in order, to the pseudo-device, which restores it): `restore export NAME (--into VOL | --as NEWVOL)` opens a
 * session whose NBD export NAME accepts the stream's bytes at their stream offsets. The bytes feed the ordinary
 * restore (src/backup/restore.ts) through a ByteSource, so the stream is staged, verified (lineage, every CRC, the
 * digest) and only then committed; a bad stream changes nothing, and the reason is kept in the session for
 * `restore status NAME` and logged.
 *
 * The kernel's block layer writes a sequentially written device mostly in order, but writeback may deliver some
 * pieces out of order: they wait in memory (bounded) until the bytes before them arrived. In-order bytes are
 * handed to the restore as they come; a writer that runs ahead of it is held back (its acknowledgement waits)
 * once a bounded amount is buffered.
 */
import type { Logger } from 'pino';
import { PoolError, type Pool } from '../pool/index.js';
import type { ByteSource } from './io.js';
import { restoreStream, type RestoreResult } from './restore.js';
import { streamLayout } from './stream-format.js';

/** bytes buffered ahead of the restore before writers are held back */
const BUFFER_SOFT_LIMIT = 64 * 1024 * 1024;
/** bytes waiting behind a gap (out of order) before the session fails instead of waiting */
const OUT_OF_ORDER_LIMIT = 512 * 1024 * 1024;
/** device size of an `--as` session when none is given: room for any stream a pool volume here can give */
export const DEFAULT_AS_DEVICE_BYTES = 2 ** 44;

/**
 * Turns writes at stream offsets into a sequential ByteSource. Writes before the read position (rewrites of bytes
 * already consumed) and past `end` are ignored and counted.
 */
export class StreamAssembler implements ByteSource {
  /** the next stream byte the reader consumes */
  private pos = 0;
  /** pieces not consumed yet, by start offset */
  private readonly pieces: Array<{ offset: number; data: Buffer }> = [];
  private buffered = 0;
  private failure: Error | null = null;
  private waiters: Array<() => void> = [];
  /** bytes the reader waits for (0 when it is not waiting) */
  private wanted = 0;
  /** the stream's end once known (the header says); writes past it are ignored */
  end = Infinity;
  ignoredBytes = 0;
  receivedBytes = 0;
  /** highest stream byte written + 1 */
  highWater = 0;

  get position(): number {
    return this.pos;
  }

  /** Accepts `data` at stream offset `offset` (copied). Resolves when the caller may acknowledge the write. */
  async write(offset: number, data: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    let start = offset;
    let end = Math.min(offset + data.length, this.end);
    if (end < offset + data.length) this.ignoredBytes += offset + data.length - Math.max(end, offset);
    if (start < this.pos) {
      this.ignoredBytes += Math.min(this.pos, end) - start;
      start = this.pos;
    }
    if (start >= end) return;
    this.receivedBytes += end - start;
    this.highWater = Math.max(this.highWater, end);
    this.pieces.push({ offset: start, data: Buffer.from(data.subarray(start - offset, end - offset)) });
    this.pieces.sort((a, b) => a.offset - b.offset);
    this.buffered += end - start;
    this.wake();
    // hold the writer back while the restore is behind, but only while plenty of in-order bytes wait for it (it
    // asks for at most a few MiB at a time, so it surely moves on and wakes us): holding writes while the restore
    // waits for a missing piece could hold every request the client may have in flight, the missing one never sent
    while (!this.failure && this.buffered > BUFFER_SOFT_LIMIT && this.contiguousFrom(this.pos) >= BUFFER_SOFT_LIMIT / 2) await this.changed();
    if (this.failure) throw this.failure;
    if (this.buffered - this.contiguousFrom(this.pos) > OUT_OF_ORDER_LIMIT) {
      this.fail(new PoolError('EIO', `more than ${OUT_OF_ORDER_LIMIT} bytes arrived ahead of stream byte ${this.pos}: write the stream in order (dd bs=256k)`));
      throw this.failure!;
    }
  }

  /** bytes available in order from `at` */
  private contiguousFrom(at: number): number {
    let reach = at;
    for (const p of this.pieces) {
      if (p.offset > reach) break;
      reach = Math.max(reach, p.offset + p.data.length);
    }
    return reach - at;
  }

  async readExact(length: number): Promise<Buffer> {
    this.wanted = length;
    try {
      while (!this.failure && this.contiguousFrom(this.pos) < length) {
        this.wake(); // drained() waiters: the reader now waits for more than there is
        await this.changed();
      }
    } finally {
      this.wanted = 0;
    }
    if (this.failure) throw Object.assign(this.failure, { bytesRead: this.contiguousFrom(this.pos) });
    const out = Buffer.allocUnsafe(length);
    let filled = 0;
    while (filled < length) {
      const at = this.pos + filled;
      const p = this.pieces.find((q) => q.offset <= at && q.offset + q.data.length > at)!;
      const n = Math.min(length - filled, p.offset + p.data.length - at);
      p.data.copy(out, filled, at - p.offset, at - p.offset + n);
      filled += n;
    }
    this.pos += length;
    // drop what was consumed
    for (let i = 0; i < this.pieces.length; ) {
      const p = this.pieces[i];
      if (p.offset + p.data.length <= this.pos) {
        this.buffered -= p.data.length;
        this.pieces.splice(i, 1);
      } else if (p.offset < this.pos) {
        const cut = this.pos - p.offset;
        this.buffered -= cut;
        this.pieces[i] = { offset: this.pos, data: p.data.subarray(cut) };
        i++;
      } else i++;
    }
    this.wake();
    return out;
  }

  /** Fails the reader and every writer (a cancelled session, a failed restore). */
  fail(err: Error): void {
    this.failure ??= err;
    this.pieces.length = 0;
    this.buffered = 0;
    this.wake();
  }

  /**
   * resolves when the restore has taken every byte received so far that it can take: all of them, or it waits for
   * more than the bytes in order (a stream cut short); or the session failed
   */
  async drained(): Promise<void> {
    for (;;) {
      const available = this.contiguousFrom(this.pos);
      if (this.failure || available === 0 || (this.wanted > 0 && available < this.wanted)) return;
      await this.changed();
    }
  }

  private changed(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

export type RestoreSessionState = 'waiting' | 'receiving' | 'done' | 'failed' | 'cancelled';

export interface RestoreSessionInfo {
  name: string;
  into: string | null;
  as: string | null;
  /** the NBD export's size (an upper bound for the stream) */
  deviceBytes: number;
  state: RestoreSessionState;
  /** stream bytes consumed by the restore / the stream's size once its header arrived */
  bytesDone: number;
  streamBytes: number | null;
  bytesIgnored: number;
  startedAt: string;
  error?: { code: string; message: string };
  result?: RestoreResult;
}

export class RestoreSession {
  readonly assembler = new StreamAssembler();
  state: RestoreSessionState = 'waiting';
  result: RestoreResult | null = null;
  error: { code: string; message: string } | null = null;
  readonly startedAt = new Date();
  /** settles when the restore has committed or failed */
  readonly finished: Promise<void>;
  private streamBytes: number | null = null;

  constructor(
    pool: Pool,
    readonly name: string,
    readonly target: { into?: string; as?: string },
    readonly deviceBytes: number,
    log: Logger,
  ) {
    const source: ByteSource = {
      readExact: async (length) => {
        const buf = await this.assembler.readExact(length);
        if (this.state === 'waiting') this.state = 'receiving';
        return buf;
      },
    };
    this.finished = restoreStream(pool, source, {
      ...target,
      from: `restore export ${name}`,
      log,
      onHeader: (h) => {
        this.streamBytes = h.totalBytes;
        this.assembler.end = h.totalBytes;
        if (h.totalBytes > deviceBytes) throw new PoolError('EINVAL', `the stream is ${h.totalBytes} bytes, more than the ${deviceBytes}-byte device`);
      },
    }).then(
      (result) => {
        this.result = result;
        this.state = 'done';
        log.info({ session: name, volume: result.volume, records: result.records }, 'restore export: stream restored');
      },
      (err: Error & { code?: string }) => {
        if (this.state !== 'cancelled') this.state = 'failed';
        this.error = { code: err.code ?? 'EIO', message: err.message };
        this.assembler.fail(Object.assign(new Error(`restore export ${name} failed: ${err.message}`), { code: 'EIO' }));
        log.error({ session: name, err: err.message }, 'restore export: stream refused; nothing was changed');
      },
    );
  }

  cancel(): void {
    if (this.state === 'done' || this.state === 'failed') return;
    this.state = 'cancelled';
    this.assembler.fail(new PoolError('EIO', `restore export ${this.name} was cancelled`));
  }

  info(): RestoreSessionInfo {
    const out: RestoreSessionInfo = {
      name: this.name,
      into: this.target.into ?? null,
      as: this.target.as ?? null,
      deviceBytes: this.deviceBytes,
      state: this.state,
      bytesDone: this.assembler.position,
      streamBytes: this.streamBytes,
      bytesIgnored: this.assembler.ignoredBytes,
      startedAt: this.startedAt.toISOString(),
    };
    if (this.error) out.error = this.error;
    if (this.result) out.result = this.result;
    return out;
  }
}

/** The daemon's restore sessions by export name. */
export class RestoreSessions {
  private readonly sessions = new Map<string, RestoreSession>();

  constructor(
    private readonly pool: Pool,
    private readonly log: Logger,
  ) {}

  create(name: string, target: { into?: string; as?: string }, deviceBytes?: number): RestoreSession {
    if (this.sessions.has(name)) throw new PoolError('EEXIST', `a restore export named '${name}' exists`);
    if (this.pool.volume(name)) throw new PoolError('EEXIST', `'${name}' is a volume name; a restore export needs a name of its own`);
    if ((target.into === undefined) === (target.as === undefined)) throw new PoolError('EINVAL', 'say where to restore: exactly one of into or as');
    let size = deviceBytes;
    if (target.into !== undefined) {
      const v = this.pool.volume(target.into);
      const kind = v?.info().kind;
      if (!v || kind === 'internal' || kind === 'diff-export') throw new PoolError('ENOENT', `no volume named '${target.into}'`);
      // room for a full stream of the volume (a diff is never larger)
      size ??= streamLayout(Math.ceil(v.size / this.pool.chunkSize), this.pool.chunkSize).totalBytes;
    } else if (this.pool.volume(target.as!)) {
      throw new PoolError('EEXIST', `a volume named '${target.as}' exists`);
    }
    size ??= DEFAULT_AS_DEVICE_BYTES;
    if (!Number.isSafeInteger(size) || size < 8192 || size % 4096 !== 0) throw new PoolError('EINVAL', `device size ${size}: a multiple of 4096, at least 8192`);
    const session = new RestoreSession(this.pool, name, target, size, this.log);
    this.sessions.set(name, session);
    this.log.info({ session: name, ...target, deviceBytes: size }, 'restore export created');
    return session;
  }

  get(name: string): RestoreSession | undefined {
    return this.sessions.get(name);
  }

  list(): RestoreSession[] {
    return [...this.sessions.values()];
  }

  /** forgets a session; one still receiving is cancelled (nothing changes) */
  async remove(name: string): Promise<RestoreSessionInfo> {
    const s = this.sessions.get(name);
    if (!s) throw new PoolError('ENOENT', `no restore export named '${name}'`);
    s.cancel();
    await s.finished;
    this.sessions.delete(name);
    return s.info();
  }

  /** at shutdown */
  async close(): Promise<void> {
    for (const s of this.sessions.values()) s.cancel();
    await Promise.all([...this.sessions.values()].map((s) => s.finished));
  }
}
