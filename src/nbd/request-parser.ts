/**
 * Incremental parser for transmission-phase requests. It is fed the chunks a socket delivers and never
 * concatenates them: a header split across chunks is copied into a 28-byte scratch buffer; a write payload
 * that lies wholly inside one chunk is passed on as a view of that chunk (no copy); one that straddles
 * chunks is assembled into a pooled buffer; the payload of a write that will be refused is skipped unread.
 */
import { NBD_CMD_DISC, NBD_CMD_WRITE, NBD_REQUEST_MAGIC, NBD_REQUEST_SIZE } from './constants.js';

/** One request as received. Fields are plain numbers; the 64-bit cookie is kept as two halves. */
export class NbdRequest {
  flags = 0;
  type = 0;
  cookieHi = 0;
  cookieLo = 0;
  /** byte offset; values >= 2^53 lose precision but are then far past any export's end anyway */
  offset = 0;
  length = 0;
  /** write payload (a view of a socket chunk or of `pooled`) */
  data: Buffer | null = null;
  /** pooled buffer backing `data`, to give back when the request is done */
  pooled: Buffer | null = null;
  /** NBD errno decided when the header was checked (0: go ahead), with a message for the client */
  errno = 0;
  message = '';
}

/** Where parsed requests go; implemented by the transmission phase. */
export interface RequestSink {
  /** Checks a request as soon as its header is known: sets `errno`/`message` when it must be refused. */
  check(req: NbdRequest): void;
  /** A complete request (payload included, or skipped if it was refused). */
  dispatch(req: NbdRequest): void;
  /** NBD_CMD_DISC: nothing more will be parsed. */
  disconnect(): void;
  /** Broken stream (bad magic): nothing more will be parsed. */
  protocolError(message: string): void;
  /** A buffer of at least `length` bytes for a payload that straddles chunks. */
  acquirePayload(length: number): Buffer;
  /**
   * Asked before each new request header: true stops parsing at that request boundary (the in-flight budget is
   * spent), so one socket chunk full of headers cannot start more work than the budget allows.
   */
  shouldPause(): boolean;
}

const enum ParserState {
  Header,
  Payload,
  Discard,
  Stopped,
}

export class RequestParser {
  private state = ParserState.Header;
  private readonly scratch = Buffer.allocUnsafe(NBD_REQUEST_SIZE);
  private scratchFill = 0;
  private current: NbdRequest | null = null;
  private payloadFill = 0;
  private discardLeft = 0;

  constructor(private readonly sink: RequestSink) {}

  get stopped(): boolean {
    return this.state === ParserState.Stopped;
  }

  /** True between the header of a write and the end of its payload. */
  get midRequest(): boolean {
    return this.scratchFill !== 0 || this.state === ParserState.Payload || this.state === ParserState.Discard;
  }

  stop(): void {
    this.state = ParserState.Stopped;
    this.current = null;
  }

  /**
   * Parses as much of `chunk` as it may and returns how many bytes it consumed: all of them, unless the sink
   * asked to pause at a request boundary (the caller keeps the rest and pushes it again later).
   */
  push(chunk: Buffer): number {
    const end = chunk.length;
    let pos = 0;
    while (pos < end) {
      switch (this.state) {
        case ParserState.Header:
          if (this.scratchFill === 0 && this.sink.shouldPause()) return pos;
          if (this.scratchFill === 0 && end - pos >= NBD_REQUEST_SIZE) {
            this.header(chunk, pos);
            pos += NBD_REQUEST_SIZE;
          } else {
            const n = Math.min(NBD_REQUEST_SIZE - this.scratchFill, end - pos);
            chunk.copy(this.scratch, this.scratchFill, pos, pos + n);
            this.scratchFill += n;
            pos += n;
            if (this.scratchFill === NBD_REQUEST_SIZE) {
              this.scratchFill = 0;
              this.header(this.scratch, 0);
            }
          }
          break;

        case ParserState.Payload: {
          const req = this.current as NbdRequest;
          const need = req.length - this.payloadFill;
          if (this.payloadFill === 0 && end - pos >= need) {
            req.data = chunk.subarray(pos, pos + need);
            pos += need;
            this.complete(req);
          } else {
            if (req.pooled === null) {
              req.pooled = this.sink.acquirePayload(req.length);
              req.data = req.pooled.subarray(0, req.length);
            }
            const n = Math.min(need, end - pos);
            chunk.copy(req.pooled, this.payloadFill, pos, pos + n);
            this.payloadFill += n;
            pos += n;
            if (this.payloadFill === req.length) this.complete(req);
          }
          break;
        }

        case ParserState.Discard: {
          const n = Math.min(this.discardLeft, end - pos);
          this.discardLeft -= n;
          pos += n;
          if (this.discardLeft === 0) this.complete(this.current as NbdRequest);
          break;
        }

        case ParserState.Stopped:
          return end;
      }
    }
    return end;
  }

  private header(buf: Buffer, at: number): void {
    if (buf.readUInt32BE(at) !== NBD_REQUEST_MAGIC) {
      this.stop();
      this.sink.protocolError(`bad request magic 0x${buf.readUInt32BE(at).toString(16)}`);
      return;
    }
    const req = new NbdRequest();
    req.flags = buf.readUInt16BE(at + 4);
    req.type = buf.readUInt16BE(at + 6);
    req.cookieHi = buf.readUInt32BE(at + 8);
    req.cookieLo = buf.readUInt32BE(at + 12);
    req.offset = buf.readUInt32BE(at + 16) * 2 ** 32 + buf.readUInt32BE(at + 20);
    req.length = buf.readUInt32BE(at + 24);

    if (req.type === NBD_CMD_DISC) {
      this.stop();
      this.sink.disconnect();
      return;
    }
    this.sink.check(req);
    // Only NBD_CMD_WRITE carries a payload: without extended headers an unknown command cannot announce
    // one, so it is taken to have none.
    if (req.type !== NBD_CMD_WRITE || req.length === 0) {
      this.sink.dispatch(req);
      return;
    }
    this.current = req;
    if (req.errno !== 0) {
      this.discardLeft = req.length;
      this.state = ParserState.Discard;
    } else {
      this.payloadFill = 0;
      this.state = ParserState.Payload;
    }
  }

  private complete(req: NbdRequest): void {
    this.current = null;
    this.state = ParserState.Header;
    this.sink.dispatch(req);
  }
}
