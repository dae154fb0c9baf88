/**
 * Transmission phase for one connection: requests are parsed from socket chunks, checked, run against the
 * Export concurrently, and answered out of order. Each reply is written whole in one synchronous burst
 * (header and data as separate buffers under cork, flushed as one writev), so replies never interleave.
 */
import type { Readable, Writable } from 'node:stream';
import type { Logger } from 'pino';
import { BufferPool } from './buffer-pool.js';
import type { Channel } from './channel.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_MAX_BLOCK_STATUS_EXTENTS,
  NBD_META_CONTEXT_BASE_ALLOCATION,
  NBD_REPLY_FLAG_DONE,
} from './constants.js';
import { nbdErrnoOf } from './errno.js';
import type { Export, Extent, HoleList } from './export.js';
import type { MetaContext, NegotiatedExport } from './handshake.js';
import {
  OFFSET_DATA_HEADER_SIZE,
  OFFSET_HOLE_CHUNK_SIZE,
  blockStatusChunkSize,
  errorChunk,
  simpleReply,
  writeBlockStatusChunk,
  writeOffsetDataHeader,
  writeOffsetHole,
} from './replies.js';
import { NbdRequest, RequestParser, type RequestSink } from './request-parser.js';

/** Holes shorter than this are sent as zero bytes inside the surrounding data chunk. */
const MIN_HOLE_CHUNK = 4096;
/** Requests in flight at once per connection before reading pauses (besides the byte bound). */
const MAX_INFLIGHT_REQUESTS = 4096;
/** Per-request protocol errors logged at warn before dropping to debug (a bad client must not flood logs). */
const WARN_LIMIT = 20;

export interface TransmissionStats {
  requests: number;
  /** bytes served by NBD_CMD_READ */
  bytesRead: number;
  /** bytes stored by NBD_CMD_WRITE */
  bytesWritten: number;
}

export interface TransmissionOptions {
  channel: Channel;
  session: NegotiatedExport;
  pool: BufferPool;
  logger: Logger;
  stats: TransmissionStats;
  /** payload bytes (write payloads held + read replies not yet written) above which reading pauses */
  maxInFlightBytes: number;
}

/** Command flags valid for each command, given what was advertised. */
function allowedFlagsByCommand(transmissionFlags: number): number[] {
  const allowed: number[] = [];
  // FUA is valid on every command once NBD_FLAG_SEND_FUA is advertised (which thinvault always does)
  allowed[NBD_CMD_READ] = NBD_CMD_FLAG_FUA | (transmissionFlags & NBD_FLAG_SEND_DF ? NBD_CMD_FLAG_DF : 0);
  allowed[NBD_CMD_WRITE] = NBD_CMD_FLAG_FUA;
  allowed[NBD_CMD_FLUSH] = NBD_CMD_FLAG_FUA;
  allowed[NBD_CMD_TRIM] = NBD_CMD_FLAG_FUA;
  allowed[NBD_CMD_CACHE] = NBD_CMD_FLAG_FUA;
  allowed[NBD_CMD_WRITE_ZEROES] =
    NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | (transmissionFlags & NBD_FLAG_SEND_FAST_ZERO ? NBD_CMD_FLAG_FAST_ZERO : 0);
  allowed[NBD_CMD_BLOCK_STATUS] = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE;
  return allowed;
}

/** Zero the ranges of `buf` listed in `holes` (clamped to the buffer: never trust an export blindly). */
function zeroHoles(buf: Buffer, holes: HoleList): void {
  for (let i = 0; i + 1 < holes.length; i += 2) {
    const start = Math.max(0, holes[i] as number);
    const end = Math.min(buf.length, start + (holes[i + 1] as number));
    if (end > start) buf.fill(0, start, end);
  }
}

function uncorkOutput(t: Transmission): void {
  t.uncork();
}

export class Transmission implements RequestSink {
  private readonly exp: Export;
  private readonly input: Readable;
  private readonly output: Writable;
  private readonly parser: RequestParser;
  private readonly pool: BufferPool;
  private readonly log: Logger;
  private readonly debug: boolean;
  private readonly stats: TransmissionStats;
  private readonly structured: boolean;
  private readonly flags: number;
  private readonly allowedFlags: number[];
  private readonly minBlock: number;
  private readonly maxPayload: number;
  private readonly maxInFlightBytes: number;
  private readonly contexts: MetaContext[];

  private inflightRequests = 0;
  private inflightBytes = 0;
  private paused = false;
  /** bytes of a socket chunk the parser left unparsed because the in-flight budget was spent */
  private held: Buffer | null = null;
  /** inside parser.push: a reply finishing synchronously must not re-enter the parser */
  private feeding = false;
  /** the client closed its side while requests were still held: drain once they have been parsed */
  private inputEnded = false;
  /** no more requests will be read (DISC, end of input, broken stream, server shutdown) */
  private draining = false;
  /** output.end() was called */
  private ending = false;
  /** the output can take no more replies */
  private dead = false;
  private corked = false;
  private warnings = 0;

  /** pooled buffers (and their in-flight byte charge) to release as reply writes complete, in order */
  private readonly releaseBuffers: Array<Buffer | null> = [];
  private readonly releaseBytes: number[] = [];
  private releaseHead = 0;

  private resolveDone!: () => void;
  /** Settles when the connection is closed and no request is still running. */
  readonly done: Promise<void>;

  constructor(options: TransmissionOptions) {
    const { channel, session } = options;
    this.exp = session.handle.export;
    this.input = channel.input;
    this.output = channel.output;
    this.pool = options.pool;
    this.log = options.logger;
    this.debug = options.logger.isLevelEnabled('debug');
    this.stats = options.stats;
    this.structured = session.structuredReplies;
    this.flags = session.transmissionFlags;
    this.allowedFlags = allowedFlagsByCommand(session.transmissionFlags);
    this.minBlock = session.blockSize.minimum;
    this.maxPayload = session.blockSize.maximum;
    this.maxInFlightBytes = options.maxInFlightBytes;
    this.contexts = session.metaContexts;
    this.parser = new RequestParser(this);
    this.done = new Promise<void>((resolve) => {
      this.resolveDone = resolve;
    });
  }

  /** Starts reading requests (including any bytes the handshake left buffered). */
  start(): void {
    this.input.on('data', this.onData);
    this.input.on('end', this.onInputEnd);
    this.input.on('close', this.onInputEnd);
    this.output.on('close', this.onOutputClosed);
    this.output.on('finish', this.onOutputClosed);
    if (this.output.destroyed) {
      this.onOutputClosed();
      return;
    }
    this.input.resume();
  }

  /** Server shutdown: read no more requests, finish those in flight, send their replies, close. */
  shutdown(): void {
    this.beginDrain();
  }

  /* ---- RequestSink ---- */

  check(req: NbdRequest): void {
    const { type, flags, offset, length } = req;
    const allowed = this.allowedFlags[type];
    if (allowed === undefined) return this.refuse(req, NBD_EINVAL, `unknown command ${type}`);
    if ((flags & ~allowed) !== 0) return this.refuse(req, NBD_EINVAL, `command flags 0x${flags.toString(16)} not valid here`);

    const isWriteLike = type === NBD_CMD_WRITE || type === NBD_CMD_TRIM || type === NBD_CMD_WRITE_ZEROES;
    if (isWriteLike && (this.flags & NBD_FLAG_READ_ONLY) !== 0) return this.refuse(req, NBD_EPERM, 'export is read-only');
    if (type === NBD_CMD_TRIM && (this.flags & NBD_FLAG_SEND_TRIM) === 0) return this.refuse(req, NBD_EINVAL, 'trim not supported');
    if (type === NBD_CMD_WRITE_ZEROES && (this.flags & NBD_FLAG_SEND_WRITE_ZEROES) === 0) {
      return this.refuse(req, NBD_EINVAL, 'write zeroes not supported');
    }
    if (type === NBD_CMD_CACHE && (this.flags & NBD_FLAG_SEND_CACHE) === 0) return this.refuse(req, NBD_EINVAL, 'cache not supported');
    if (type === NBD_CMD_BLOCK_STATUS && this.contexts.length === 0) {
      return this.refuse(req, NBD_EINVAL, 'no metadata context was negotiated');
    }
    if (type === NBD_CMD_FLUSH) {
      if (offset !== 0 || length !== 0) return this.refuse(req, NBD_EINVAL, 'flush offset and length must be zero');
      return;
    }

    if (length === 0) return this.refuse(req, NBD_EINVAL, 'zero length');
    if ((type === NBD_CMD_READ || type === NBD_CMD_WRITE) && length > this.maxPayload) {
      return this.refuse(req, NBD_EINVAL, `length ${length} exceeds the maximum payload ${this.maxPayload}`);
    }
    const size = this.exp.size;
    if (offset + length > size) {
      // the spec: ENOSPC for writes and write zeroes past the end, EINVAL for everything else
      const errno = type === NBD_CMD_WRITE || type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
      return this.refuse(req, errno, 'request past the end of the export');
    }
    const min = this.minBlock;
    if (min > 1 && (offset % min !== 0 || (length % min !== 0 && offset + length !== size))) {
      return this.refuse(req, NBD_EINVAL, `request not aligned to the minimum block size ${min}`);
    }
    if (type === NBD_CMD_WRITE) this.inflightBytes += length; // the payload is about to sit in memory
  }

  dispatch(req: NbdRequest): void {
    this.stats.requests++;
    if (this.debug) {
      this.log.debug({ type: req.type, flags: req.flags, offset: req.offset, length: req.length, errno: req.errno }, 'request');
    }
    if (req.errno !== 0) {
      this.replyError(req, req.errno, req.message);
      return;
    }
    this.inflightRequests++;
    switch (req.type) {
      case NBD_CMD_READ:
        void this.read(req);
        break;
      case NBD_CMD_WRITE:
        void this.write(req);
        break;
      case NBD_CMD_FLUSH:
      case NBD_CMD_TRIM:
      case NBD_CMD_CACHE:
      case NBD_CMD_WRITE_ZEROES:
        void this.command(req);
        break;
      case NBD_CMD_BLOCK_STATUS:
        void this.blockStatus(req);
        break;
    }
  }

  disconnect(): void {
    if (this.debug) this.log.debug('NBD_CMD_DISC');
    this.beginDrain();
  }

  protocolError(message: string): void {
    this.log.warn({ why: message }, 'protocol error; closing the connection');
    this.beginDrain();
  }

  acquirePayload(length: number): Buffer {
    return this.pool.acquire(length);
  }

  shouldPause(): boolean {
    return this.overBudget();
  }

  /* ---- commands ---- */

  private async read(req: NbdRequest): Promise<void> {
    const length = req.length;
    let pooled: Buffer;
    try {
      pooled = this.pool.acquire(length);
    } catch {
      this.replyError(req, NBD_ENOMEM, 'out of memory for the read buffer');
      this.finish(req);
      return;
    }
    const buf = pooled.subarray(0, length);
    this.inflightBytes += length;
    try {
      let holes: HoleList;
      try {
        holes = await this.exp.read(req.offset, buf);
      } catch (err) {
        this.pool.release(pooled);
        this.inflightBytes -= length;
        this.replyExportError(req, err, 'read');
        return;
      }
      this.stats.bytesRead += length;
      if (this.structured) this.sendStructuredRead(req, buf, pooled, holes);
      else {
        zeroHoles(buf, holes);
        this.send(simpleReply(req, 0), buf, pooled, length);
      }
    } finally {
      this.finish(req);
    }
  }

  private async write(req: NbdRequest): Promise<void> {
    try {
      await this.exp.write(req.offset, req.data as Buffer, (req.flags & NBD_CMD_FLAG_FUA) !== 0);
      this.stats.bytesWritten += req.length;
      this.replyOk(req);
    } catch (err) {
      this.replyExportError(req, err, 'write');
    } finally {
      this.inflightBytes -= req.length;
      if (req.pooled !== null) this.pool.release(req.pooled);
      req.pooled = null;
      req.data = null;
      this.finish(req);
    }
  }

  /** Commands whose reply carries no data: flush, trim, cache, write zeroes. */
  private async command(req: NbdRequest): Promise<void> {
    const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0;
    try {
      // inside the try: an export method that throws instead of rejecting is still answered
      switch (req.type) {
        case NBD_CMD_FLUSH:
          await this.exp.flush();
          break;
        case NBD_CMD_TRIM:
          await this.exp.trim(req.offset, req.length, fua);
          break;
        case NBD_CMD_CACHE:
          await this.exp.cache(req.offset, req.length);
          break;
        case NBD_CMD_WRITE_ZEROES:
          await this.exp.zero(req.offset, req.length, {
            noHole: (req.flags & NBD_CMD_FLAG_NO_HOLE) !== 0,
            fastZero: (req.flags & NBD_CMD_FLAG_FAST_ZERO) !== 0,
            fua,
          });
          break;
      }
      this.replyOk(req);
    } catch (err) {
      this.replyExportError(req, err, 'command');
    } finally {
      this.finish(req);
    }
  }

  private async blockStatus(req: NbdRequest): Promise<void> {
    try {
      let lists: Extent[][];
      try {
        lists = await Promise.all(this.contexts.map((ctx) => this.contextExtents(ctx.name, req)));
      } catch (err) {
        this.replyExportError(req, err, 'block status');
        return;
      }
      let size = 0;
      for (const list of lists) size += blockStatusChunkSize(list.length);
      const buf = Buffer.allocUnsafe(size);
      let pos = 0;
      for (let i = 0; i < lists.length; i++) {
        const flags = i === lists.length - 1 ? NBD_REPLY_FLAG_DONE : 0;
        pos = writeBlockStatusChunk(buf, pos, req, flags, (this.contexts[i] as MetaContext).id, lists[i] as Extent[]);
      }
      this.send(buf, null, null, 0);
    } finally {
      this.finish(req);
    }
  }

  /**
   * Extents for one context, cut to the request: consecutive extents with equal flags merged, the total never
   * past the requested length, exactly one extent with REQ_ONE, at most 2^20 extents.
   */
  private async contextExtents(context: string, req: NbdRequest): Promise<Extent[]> {
    const length = req.length;
    if (context === NBD_META_CONTEXT_BASE_ALLOCATION && !this.exp.metaContexts.includes(context)) {
      return [{ length, flags: 0 }]; // "allocated, contents unknown" is always a truthful answer
    }
    const extents = await this.exp.blockStatus(context, req.offset, length);
    const reqOne = (req.flags & NBD_CMD_FLAG_REQ_ONE) !== 0;
    const out: Extent[] = [];
    let covered = 0;
    for (const extent of extents) {
      if (!(extent.length > 0)) continue;
      const flags = extent.flags >>> 0;
      const take = Math.min(Math.floor(extent.length), length - covered);
      if (take <= 0) break;
      const last = out[out.length - 1];
      if (last !== undefined && last.flags === flags) last.length += take;
      else {
        if (reqOne && last !== undefined) break;
        if (out.length === NBD_MAX_BLOCK_STATUS_EXTENTS) break;
        out.push({ length: take, flags });
      }
      covered += take;
      if (covered >= length) break;
    }
    if (out.length === 0) {
      if (this.debug) this.log.debug({ context }, 'export returned no usable extent; reporting status 0');
      out.push({ length, flags: 0 });
    }
    return out;
  }

  /* ---- replies ---- */

  private sendStructuredRead(req: NbdRequest, buf: Buffer, pooled: Buffer, holes: HoleList): void {
    const length = buf.length;
    if (holes.length === 0) {
      const header = Buffer.allocUnsafe(OFFSET_DATA_HEADER_SIZE);
      writeOffsetDataHeader(header, 0, req, NBD_REPLY_FLAG_DONE, req.offset, length);
      this.send(header, buf, pooled, length);
      return;
    }

    // Segments as [start, length, isHole] triples; small holes become zero bytes inside data.
    const segments: number[] = [];
    const dontFragment = (req.flags & NBD_CMD_FLAG_DF) !== 0;
    let cursor = 0;
    const addData = (end: number): void => {
      if (end <= cursor) return;
      const n = segments.length;
      if (n > 0 && segments[n - 1] === 0) (segments as number[])[n - 2] = (segments[n - 2] as number) + (end - cursor);
      else segments.push(cursor, end - cursor, 0);
      cursor = end;
    };
    for (let i = 0; i + 1 < holes.length; i += 2) {
      const holeStart = Math.max(0, holes[i] as number);
      const end = Math.min(length, holeStart + (holes[i + 1] as number));
      // an unsorted or overlapping list (a broken export) must still never leak stale buffer bytes
      if (holeStart < cursor) buf.fill(0, holeStart, Math.min(cursor, end));
      const start = Math.max(cursor, holeStart);
      if (end <= start) continue;
      addData(start);
      if (end - start < MIN_HOLE_CHUNK || dontFragment) {
        buf.fill(0, start, end);
        addData(end);
      } else {
        segments.push(start, end - start, 1);
        cursor = end;
      }
    }
    addData(length);
    if (dontFragment && segments.length === 3 && segments[2] === 0) {
      // DF: one content chunk; if everything was a hole, one hole chunk says it more cheaply
      const allHole = holes.length === 2 && holes[0] === 0 && holes[1] === length;
      if (allHole) segments.splice(0, 3, 0, length, 1);
    }

    let headerBytes = 0;
    for (let i = 2; i < segments.length; i += 3) headerBytes += segments[i] === 1 ? OFFSET_HOLE_CHUNK_SIZE : OFFSET_DATA_HEADER_SIZE;
    const headers = Buffer.allocUnsafe(headerBytes);
    const parts: Buffer[] = [];
    let at = 0;
    for (let i = 0; i < segments.length; i += 3) {
      const start = segments[i] as number;
      const n = segments[i + 1] as number;
      const flags = i + 3 === segments.length ? NBD_REPLY_FLAG_DONE : 0;
      if (segments[i + 2] === 1) {
        writeOffsetHole(headers, at, req, flags, req.offset + start, n);
        parts.push(headers.subarray(at, at + OFFSET_HOLE_CHUNK_SIZE));
        at += OFFSET_HOLE_CHUNK_SIZE;
      } else {
        writeOffsetDataHeader(headers, at, req, flags, req.offset + start, n);
        parts.push(headers.subarray(at, at + OFFSET_DATA_HEADER_SIZE), buf.subarray(start, start + n));
        at += OFFSET_DATA_HEADER_SIZE;
      }
    }
    this.sendParts(parts, pooled, length);
  }

  private replyOk(req: NbdRequest): void {
    this.send(simpleReply(req, 0), null, null, 0);
  }

  private replyError(req: NbdRequest, errno: number, message: string): void {
    if (this.structured) this.send(errorChunk(req, NBD_REPLY_FLAG_DONE, errno, message), null, null, 0);
    else this.send(simpleReply(req, errno), null, null, 0);
  }

  private replyExportError(req: NbdRequest, err: unknown, operation: string): void {
    const { errno, known } = nbdErrnoOf(err);
    const message = err instanceof Error ? err.message : String(err);
    if (!known) {
      this.log.error({ err, operation, offset: req.offset, length: req.length }, 'export operation failed; replying EIO');
    } else if (this.debug) {
      this.log.debug({ errno, operation, offset: req.offset, length: req.length, why: message }, 'export refused a request');
    }
    this.replyError(req, errno, known ? message : 'input/output error');
  }

  /** Request refused at header time: answered (after any payload is skipped) with `errno`. */
  private refuse(req: NbdRequest, errno: number, message: string): void {
    req.errno = errno;
    req.message = message;
    if (this.warnings < WARN_LIMIT) {
      this.warnings++;
      this.log.warn({ type: req.type, flags: req.flags, offset: req.offset, length: req.length, errno, why: message }, 'request refused');
    } else if (this.debug) {
      this.log.debug({ type: req.type, errno, why: message }, 'request refused');
    }
  }

  /**
   * Writes one reply: `header`, then optionally `data` whose backing `pooled` buffer (charged `bytes` of the
   * in-flight budget) is released once the socket has taken it.
   */
  private send(header: Buffer, data: Buffer | null, pooled: Buffer | null, bytes: number): void {
    if (this.dead) {
      this.releaseNow(pooled, bytes);
      return;
    }
    this.cork();
    if (data === null) {
      this.output.write(header);
      return;
    }
    this.output.write(header);
    this.releaseBuffers.push(pooled);
    this.releaseBytes.push(bytes);
    this.output.write(data, this.onReplyWritten);
  }

  private sendParts(parts: Buffer[], pooled: Buffer, bytes: number): void {
    if (this.dead) {
      this.releaseNow(pooled, bytes);
      return;
    }
    this.cork();
    const last = parts.length - 1;
    for (let i = 0; i < last; i++) this.output.write(parts[i] as Buffer);
    this.releaseBuffers.push(pooled);
    this.releaseBytes.push(bytes);
    this.output.write(parts[last] as Buffer, this.onReplyWritten);
  }

  /** Batches the replies produced in one tick into one writev. */
  private cork(): void {
    if (this.corked) return;
    this.corked = true;
    this.output.cork();
    process.nextTick(uncorkOutput, this);
  }

  uncork(): void {
    if (!this.corked) return;
    this.corked = false;
    this.output.uncork();
  }

  private readonly onReplyWritten = (): void => {
    const i = this.releaseHead++;
    this.releaseNow(this.releaseBuffers[i] ?? null, this.releaseBytes[i] as number);
    this.releaseBuffers[i] = null;
    if (this.releaseHead === this.releaseBuffers.length) {
      this.releaseBuffers.length = 0;
      this.releaseBytes.length = 0;
      this.releaseHead = 0;
    }
  };

  private releaseNow(pooled: Buffer | null, bytes: number): void {
    if (pooled !== null) this.pool.release(pooled);
    this.inflightBytes -= bytes;
    this.maybeResume();
  }

  /* ---- flow control and teardown ---- */

  private readonly onData = (chunk: Buffer): void => {
    // 'data' can still arrive right after pause(); keep it behind what is already held back
    const input = this.held === null ? chunk : Buffer.concat([this.held, chunk]);
    this.held = null;
    this.feed(input);
    if (!this.paused && !this.draining && (this.held !== null || this.overBudget())) {
      this.paused = true;
      this.input.pause();
    }
  };

  /** Pushes bytes into the parser; what it leaves (budget spent) is held until maybeResume. */
  private feed(bytes: Buffer): void {
    this.feeding = true;
    try {
      const used = this.parser.push(bytes);
      if (used < bytes.length) this.held = bytes.subarray(used);
    } finally {
      this.feeding = false;
    }
  }

  private overBudget(): boolean {
    return this.inflightBytes > this.maxInFlightBytes || this.inflightRequests > MAX_INFLIGHT_REQUESTS;
  }

  private maybeResume(): void {
    if (!this.paused || this.draining || this.feeding || this.overBudget()) return;
    if (this.held !== null) {
      const held = this.held;
      this.held = null;
      this.feed(held);
      if (this.held !== null || this.overBudget()) return;
      if (this.inputEnded) {
        this.onInputEnd();
        return;
      }
    }
    this.paused = false;
    this.input.resume();
  }

  private finish(_req: NbdRequest): void {
    this.inflightRequests--;
    this.maybeResume();
    if (this.inflightRequests === 0) {
      if (this.dead) this.resolveDone();
      else if (this.draining) this.endOutput();
    }
  }

  private readonly onInputEnd = (): void => {
    if (this.held !== null) {
      this.inputEnded = true;
      return;
    }
    if (this.parser.midRequest && !this.parser.stopped) this.log.warn('client closed in the middle of a request');
    this.beginDrain();
  };

  private beginDrain(): void {
    if (this.draining) return;
    this.draining = true;
    this.parser.stop();
    this.input.removeListener('data', this.onData);
    this.input.pause();
    if (this.inflightRequests === 0) this.endOutput();
  }

  private endOutput(): void {
    if (this.ending || this.dead) return;
    this.ending = true;
    if (this.output.destroyed || this.output.writableFinished) {
      this.onOutputClosed();
      return;
    }
    this.uncork();
    try {
      this.output.end();
    } catch {
      this.onOutputClosed();
    }
  }

  private readonly onOutputClosed = (): void => {
    if (this.dead) return;
    this.dead = true;
    this.draining = true;
    this.parser.stop();
    this.input.removeListener('data', this.onData);
    if (this.ending) {
      // everything was written: close the input side too (a socket's other half)
      this.input.destroy();
      this.output.destroy();
    }
    if (this.inflightRequests === 0) this.resolveDone();
  };
}
