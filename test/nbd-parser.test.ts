/** Unit tests: the incremental request parser under every chunking, and the buffer pool. */
import { describe, expect, it } from 'vitest';
import { BufferPool } from '../src/nbd/buffer-pool.js';
import { NBD_CMD_DISC, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_WRITE, NBD_EINVAL, NBD_REQUEST_MAGIC } from '../src/nbd/constants.js';
import { NbdRequest, RequestParser, type RequestSink } from '../src/nbd/request-parser.js';
import { pattern } from './helpers/nbd-harness.js';

function header(type: number, cookie: bigint, offset: number, length: number, flags = 0): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return h;
}

interface Seen {
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
  errno: number;
  data: Buffer | null;
  pooled: boolean;
}

class RecordingSink implements RequestSink {
  seen: Seen[] = [];
  disconnected = false;
  error: string | null = null;
  acquired = 0;
  check(req: NbdRequest): void {
    if (req.type === NBD_CMD_WRITE && req.length > 1000) {
      req.errno = NBD_EINVAL;
      req.message = 'too big';
    }
  }
  dispatch(req: NbdRequest): void {
    this.seen.push({
      type: req.type,
      cookie: (BigInt(req.cookieHi) << 32n) | BigInt(req.cookieLo),
      offset: req.offset,
      length: req.length,
      errno: req.errno,
      data: req.data === null ? null : Buffer.from(req.data),
      pooled: req.pooled !== null,
    });
  }
  disconnect(): void {
    this.disconnected = true;
  }
  protocolError(message: string): void {
    this.error = message;
  }
  acquirePayload(length: number): Buffer {
    this.acquired++;
    return Buffer.alloc(length + 7); // bigger than asked, like the pool
  }
  /** pause after this many dispatched requests (Infinity: never) */
  pauseAfter = Infinity;
  shouldPause(): boolean {
    return this.seen.length >= this.pauseAfter;
  }
}

const payload = pattern(100, 1);
const stream = Buffer.concat([
  header(NBD_CMD_READ, 0x0102030405060708n, 4096, 512),
  header(NBD_CMD_WRITE, 2n, 2 ** 40 + 3, payload.length),
  payload,
  header(NBD_CMD_WRITE, 3n, 0, 5000), // refused at header time: payload skipped
  Buffer.alloc(5000, 0x77),
  header(NBD_CMD_FLUSH, 4n, 0, 0),
  header(99, 5n, 0, 0),
  header(NBD_CMD_DISC, 6n, 0, 0),
  header(NBD_CMD_READ, 7n, 0, 512), // after DISC: never parsed
]);

function expectParsed(sink: RecordingSink): void {
  expect(sink.seen.map((s) => [s.type, s.cookie, s.errno])).toEqual([
    [NBD_CMD_READ, 0x0102030405060708n, 0],
    [NBD_CMD_WRITE, 2n, 0],
    [NBD_CMD_WRITE, 3n, NBD_EINVAL],
    [NBD_CMD_FLUSH, 4n, 0],
    [99, 5n, 0],
  ]);
  expect(sink.seen[1]?.offset).toBe(2 ** 40 + 3);
  expect(sink.seen[1]?.data?.equals(payload)).toBe(true);
  expect(sink.seen[2]?.data).toBeNull();
  expect(sink.disconnected).toBe(true);
  expect(sink.error).toBeNull();
}

describe('RequestParser', () => {
  it('parses a stream delivered in one chunk, passing the payload as a view', () => {
    const sink = new RecordingSink();
    new RequestParser(sink).push(stream);
    expectParsed(sink);
    expect(sink.seen[1]?.pooled).toBe(false);
    expect(sink.acquired).toBe(0);
  });

  it('parses the same stream split at every possible point', () => {
    for (let cut = 1; cut < stream.length; cut += cut < 300 ? 1 : 97) {
      const sink = new RecordingSink();
      const parser = new RequestParser(sink);
      parser.push(stream.subarray(0, cut));
      parser.push(stream.subarray(cut));
      expectParsed(sink);
    }
  });

  it('parses the stream one byte at a time (payload assembled in a pooled buffer)', () => {
    const sink = new RecordingSink();
    const parser = new RequestParser(sink);
    for (let i = 0; i < stream.length; i++) parser.push(stream.subarray(i, i + 1));
    expectParsed(sink);
    expect(sink.seen[1]?.pooled).toBe(true);
    expect(sink.acquired).toBe(1);
  });

  it('stops at a bad magic', () => {
    const sink = new RecordingSink();
    const parser = new RequestParser(sink);
    const bad = header(NBD_CMD_READ, 1n, 0, 512);
    bad.writeUInt32BE(0x12345678, 0);
    parser.push(Buffer.concat([header(NBD_CMD_READ, 9n, 0, 512), bad, header(NBD_CMD_READ, 10n, 0, 512)]));
    expect(sink.seen.map((s) => s.cookie)).toEqual([9n]);
    expect(sink.error).toMatch(/magic/);
    expect(parser.stopped).toBe(true);
  });
});

describe('BufferPool', () => {
  it('hands out power-of-two buffers and reuses released ones within its budget', () => {
    const pool = new BufferPool(32 * 1024 * 1024, 1024 * 1024);
    const a = pool.acquire(5000);
    expect(a.length).toBe(8192);
    pool.release(a);
    expect(pool.retainedBytes).toBe(8192);
    expect(pool.acquire(8000)).toBe(a);
    expect(pool.acquire(1).length).toBe(4096);
    const big = pool.acquire(2 * 1024 * 1024);
    pool.release(big); // over the retention budget: dropped
    expect(pool.retainedBytes).toBe(0);
    pool.release(Buffer.alloc(3000)); // not one of ours
    expect(pool.retainedBytes).toBe(0);
  });
});

describe('RequestParser pausing at request boundaries', () => {
  it('stops before a header when the sink asks, reports the bytes used, and resumes from there', () => {
    const sink = new RecordingSink();
    sink.pauseAfter = 1;
    const parser = new RequestParser(sink);
    const used = parser.push(stream);
    expect(sink.seen.length).toBe(1);
    expect(used).toBe(28); // exactly the first request (a READ header)
    sink.pauseAfter = Infinity;
    expect(parser.push(stream.subarray(used))).toBe(stream.length - used);
    expect(sink.seen.map((r) => Number(r.cookie & 0xffn))).toEqual([0x08, 2, 3, 4, ...sink.seen.slice(4).map((r) => Number(r.cookie & 0xffn))]);
  });
});
