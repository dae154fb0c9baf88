/**
 * Transmission phase over raw sockets: error replies, structured replies, pipelining, disconnects,
 * concurrency and flow control. After every test the server must still serve a fresh client.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
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
  NBD_EIO,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from '../src/nbd/constants.js';
import { MemoryExport } from './helpers/memory-export.js';
import { MiB, RawClient, pattern, startServer, type Chunk, type TestServer } from './helpers/nbd-harness.js';

// real clients and child processes: generous limits for a loaded machine
vi.setConfig({ testTimeout: 60_000, hookTimeout: 180_000 });

/** An export whose read leaves garbage where it reports holes, in an unsorted, overlapping hole list. */
class CarelessExport extends MemoryExport {
  override async read(_offset: number, buf: Buffer): Promise<number[]> {
    buf.fill(0xaa);
    return [8192, 8192, 0, 4096, 100, 50, 12000, 100];
  }
}

/** An export whose methods throw synchronously instead of returning a rejected promise. */
class ThrowingExport extends MemoryExport {
  override read(): Promise<number[]> {
    throw new Error('sync read failure');
  }
  override write(): Promise<void> {
    throw Object.assign(new Error('sync write failure'), { code: 'ENOSPC' });
  }
  override flush(): Promise<void> {
    throw new Error('sync flush failure');
  }
  override blockStatus(): Promise<never> {
    throw new Error('sync block status failure');
  }
}

let t: TestServer;
const SIZE = 16 * MiB;

beforeAll(async () => {
  t = await startServer(
    [
      { name: 'disk', size: SIZE },
      { name: 'ro', size: MiB, readOnly: true },
      { name: 'plain', size: MiB, canTrim: false, canZero: false, canFastZero: false, canCache: false },
      { name: 'nofast', size: MiB, canFastZero: false },
      { name: 'aligned', size: MiB, blockSize: { minimum: 512, preferred: 4096, maximum: MiB } },
      { name: 'faulty', size: 4 * MiB },
      { name: 'slow', size: 64 * MiB, delayMs: 20 },
      { name: 'multi', size: 4 * MiB, metaContexts: ['base:allocation', 'x-test:even-chunks'] },
      { name: 'crowd', size: 100 * 65536 },
    ],
    { maxInFlightBytes: 4 * MiB },
  );
  t.provider.add(new CarelessExport({ name: 'careless', size: MiB }));
  t.provider.add(new ThrowingExport({ name: 'throwing', size: MiB }));
});
afterAll(async () => {
  await t?.close();
});

afterEach(async () => {
  await expectHealthy();
});

function exp(name: string): MemoryExport {
  return t.provider.exports.get(name) as MemoryExport;
}

/** A fresh client can negotiate, write and read back. */
async function expectHealthy(): Promise<void> {
  const c = await RawClient.connect({ host: '127.0.0.1', port: t.port });
  await c.negotiate('disk', { structured: true });
  const data = pattern(4096, 1234);
  c.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: SIZE - 4096, data });
  c.sendRequest({ type: NBD_CMD_READ, cookie: 2n, offset: SIZE - 4096, length: 4096 });
  const w = await c.readAnyReply();
  expect(w).toMatchObject({ cookie: 1n, error: 0 });
  const r = await c.readAnyReply();
  expect(r.error).toBe(0);
  expect(r.chunks[0]?.payload.subarray(8).equals(data)).toBe(true);
  c.destroy();
}

async function client(name: string, structured = false, metaContexts?: string[]): Promise<RawClient> {
  const c = await RawClient.connect(t.socketPath);
  await c.negotiate(name, { structured, metaContexts });
  return c;
}

/** Reassembles a structured read; checks chunks cover the request exactly once and DONE comes last. */
function assemble(chunks: Chunk[], offset: number, length: number): Buffer {
  const out = Buffer.alloc(length, 0xee);
  const ranges: Array<[number, number]> = [];
  chunks.forEach((c, i) => {
    expect((c.flags & NBD_REPLY_FLAG_DONE) !== 0).toBe(i === chunks.length - 1);
    const at = Number(c.payload.readBigUInt64BE(0)) - offset;
    let n: number;
    if (c.type === NBD_REPLY_TYPE_OFFSET_DATA) {
      n = c.payload.length - 8;
      c.payload.copy(out, at, 8);
    } else {
      expect(c.type).toBe(NBD_REPLY_TYPE_OFFSET_HOLE);
      n = c.payload.readUInt32BE(8);
      out.fill(0, at, at + n);
    }
    expect(n).toBeGreaterThan(0);
    ranges.push([at, n]);
  });
  ranges.sort((a, b) => a[0] - b[0]);
  let next = 0;
  for (const [at, n] of ranges) {
    expect(at).toBe(next); // no gap, no overlap
    next = at + n;
  }
  expect(next).toBe(length);
  return out;
}

describe('errors keep the connection usable', () => {
  it('unknown command -> EINVAL', async () => {
    const c = await client('disk');
    c.sendRequest({ type: 42, cookie: 7n, offset: 0, length: 4096 });
    expect(await c.readSimpleReply()).toMatchObject({ error: NBD_EINVAL, cookie: 7n });
    c.sendRequest({ type: NBD_CMD_READ, cookie: 8n, offset: 0, length: 4096 });
    expect((await c.readSimpleReply(4096)).error).toBe(0);
    c.destroy();
  });

  it('out of range: read/trim/block status EINVAL, write/write zeroes ENOSPC (payload consumed)', async () => {
    const c = await client('disk', true, ['base:allocation']);
    c.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offset: SIZE - 512, length: 1024 });
    expect(await c.readAnyReply()).toMatchObject({ cookie: 1n, error: NBD_EINVAL });
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 2n, offset: SIZE, data: pattern(8192, 2) });
    expect(await c.readAnyReply()).toMatchObject({ cookie: 2n, error: NBD_ENOSPC });
    c.sendRequest({ type: NBD_CMD_WRITE_ZEROES, cookie: 3n, offset: SIZE - 4096, length: 8192 });
    expect(await c.readAnyReply()).toMatchObject({ cookie: 3n, error: NBD_ENOSPC });
    c.sendRequest({ type: NBD_CMD_TRIM, cookie: 4n, offset: SIZE, length: 1 });
    expect(await c.readAnyReply()).toMatchObject({ cookie: 4n, error: NBD_EINVAL });
    c.sendRequest({ type: NBD_CMD_BLOCK_STATUS, cookie: 5n, offset: SIZE - 1, length: 2 });
    expect(await c.readAnyReply()).toMatchObject({ cookie: 5n, error: NBD_EINVAL });
    c.sendRequest({ type: NBD_CMD_READ, cookie: 6n, offset: 2n ** 63n, length: 1 });
    expect(await c.readAnyReply()).toMatchObject({ cookie: 6n, error: NBD_EINVAL });
    c.sendRequest({ type: NBD_CMD_READ, cookie: 7n, offset: 0, length: 512 });
    expect((await c.readAnyReply()).error).toBe(0);
    c.destroy();
  });

  it('zero length -> EINVAL; flush with offset -> EINVAL; errors arrive as structured error chunks', async () => {
    const c = await client('disk', true);
    c.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offset: 0, length: 0 });
    const r = await c.readAnyReply();
    expect(r.error).toBe(NBD_EINVAL);
    expect(r.chunks[0]?.type).toBe(NBD_REPLY_TYPE_ERROR);
    const msgLen = r.chunks[0]?.payload.readUInt16BE(4) as number;
    expect(r.chunks[0]?.payload.toString('utf8', 6, 6 + msgLen)).toMatch(/zero length/);
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 2n, offset: 0, length: 0 });
    expect((await c.readAnyReply()).error).toBe(NBD_EINVAL);
    c.sendRequest({ type: NBD_CMD_FLUSH, cookie: 3n, offset: 4096, length: 0 });
    expect((await c.readAnyReply()).error).toBe(NBD_EINVAL);
    c.sendRequest({ type: NBD_CMD_FLUSH, cookie: 4n });
    expect((await c.readAnyReply()).error).toBe(0);
    c.destroy();
  });

  it('oversize write (33 MiB) is skipped unread and refused with EINVAL; the next request works', async () => {
    const c = await client('disk');
    const before = exp('disk').calls.write;
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, data: Buffer.alloc(33 * MiB, 0x5a) });
    expect(await c.readSimpleReply()).toMatchObject({ cookie: 1n, error: NBD_EINVAL });
    expect(exp('disk').calls.write).toBe(before);
    c.sendRequest({ type: NBD_CMD_READ, cookie: 2n, offset: 0, length: 33 * MiB });
    expect((await c.readSimpleReply()).error).toBe(NBD_EINVAL);
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 3n, offset: 0, data: pattern(4096, 3) });
    expect((await c.readSimpleReply()).error).toBe(0);
    // TRIM and WRITE_ZEROES carry no payload: large lengths are fine
    c.sendRequest({ type: NBD_CMD_WRITE_ZEROES, cookie: 4n, offset: 0, length: SIZE });
    expect((await c.readSimpleReply()).error).toBe(0);
    c.destroy();
  });

  it('flags that were not advertised or do not belong to the command -> EINVAL', async () => {
    const c = await client('plain');
    c.sendRequest({ type: NBD_CMD_WRITE_ZEROES, cookie: 1n, offset: 0, length: 4096 });
    expect((await c.readSimpleReply()).error).toBe(NBD_EINVAL); // WRITE_ZEROES itself not advertised
    c.sendRequest({ type: NBD_CMD_TRIM, cookie: 2n, offset: 0, length: 4096 });
    expect((await c.readSimpleReply()).error).toBe(NBD_EINVAL);
    c.sendRequest({ type: NBD_CMD_CACHE, cookie: 3n, offset: 0, length: 4096 });
    expect((await c.readSimpleReply()).error).toBe(NBD_EINVAL);
    c.sendRequest({ type: NBD_CMD_READ, flags: NBD_CMD_FLAG_DF, cookie: 4n, offset: 0, length: 4096 });
    expect((await c.readSimpleReply()).error).toBe(NBD_EINVAL); // DF needs structured replies
    c.sendRequest({ type: NBD_CMD_READ, flags: 1 << 9, cookie: 5n, offset: 0, length: 4096 });
    expect((await c.readSimpleReply()).error).toBe(NBD_EINVAL);
    c.sendRequest({ type: NBD_CMD_WRITE, flags: NBD_CMD_FLAG_NO_HOLE, cookie: 6n, offset: 0, data: pattern(512, 6) });
    expect((await c.readSimpleReply()).error).toBe(NBD_EINVAL);
    c.sendRequest({ type: NBD_CMD_WRITE, flags: NBD_CMD_FLAG_FUA, cookie: 7n, offset: 0, data: pattern(512, 7) });
    expect((await c.readSimpleReply()).error).toBe(0);
    c.destroy();

    const n = await client('nofast');
    n.sendRequest({ type: NBD_CMD_WRITE_ZEROES, flags: NBD_CMD_FLAG_FAST_ZERO, cookie: 8n, offset: 0, length: 4096 });
    expect((await n.readSimpleReply()).error).toBe(NBD_EINVAL); // FAST_ZERO not advertised here
    n.sendRequest({ type: NBD_CMD_WRITE_ZEROES, cookie: 9n, offset: 0, length: 4096 });
    expect((await n.readSimpleReply()).error).toBe(0);
    n.destroy();
  });

  it('block status without a negotiated context -> EINVAL', async () => {
    const simple = await client('disk');
    simple.sendRequest({ type: NBD_CMD_BLOCK_STATUS, cookie: 1n, offset: 0, length: 4096 });
    expect((await simple.readSimpleReply()).error).toBe(NBD_EINVAL);
    simple.destroy();
    const structured = await client('disk', true);
    structured.sendRequest({ type: NBD_CMD_BLOCK_STATUS, cookie: 2n, offset: 0, length: 4096 });
    expect((await structured.readAnyReply()).error).toBe(NBD_EINVAL);
    structured.destroy();
  });

  it('write, trim and write zeroes on a read-only export -> EPERM', async () => {
    const c = await client('ro');
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, data: pattern(4096, 1) });
    expect((await c.readSimpleReply()).error).toBe(NBD_EPERM);
    c.sendRequest({ type: NBD_CMD_TRIM, cookie: 2n, offset: 0, length: 4096 });
    expect((await c.readSimpleReply()).error).toBe(NBD_EPERM);
    c.sendRequest({ type: NBD_CMD_WRITE_ZEROES, cookie: 3n, offset: 0, length: 4096 });
    expect((await c.readSimpleReply()).error).toBe(NBD_EPERM);
    c.sendRequest({ type: NBD_CMD_FLUSH, cookie: 4n });
    expect((await c.readSimpleReply()).error).toBe(0);
    expect(exp('ro').calls.write).toBe(0);
    c.destroy();
  });

  it('requests not aligned to an advertised minimum block size -> EINVAL', async () => {
    const c = await client('aligned');
    c.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offset: 100, length: 512 });
    expect((await c.readSimpleReply()).error).toBe(NBD_EINVAL);
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 2n, offset: 512, data: pattern(100, 1) });
    expect((await c.readSimpleReply()).error).toBe(NBD_EINVAL);
    c.sendRequest({ type: NBD_CMD_READ, cookie: 3n, offset: 512, length: 2 * MiB });
    expect((await c.readSimpleReply()).error).toBe(NBD_EINVAL); // over this export's 1 MiB maximum
    c.sendRequest({ type: NBD_CMD_READ, cookie: 4n, offset: 1024, length: 1024 });
    expect((await c.readSimpleReply(1024)).error).toBe(0);
    c.destroy();
  });

  it('errors thrown by the export are mapped: ENOSPC, ENOTSUP, EIO for anything else', async () => {
    const f = exp('faulty');
    const c = await client('faulty', true);
    f.failNext('write', 'ENOSPC');
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, data: pattern(4096, 1) });
    const w = await c.readAnyReply();
    expect(w.error).toBe(NBD_ENOSPC);
    f.failNext('read', 'PLAIN');
    c.sendRequest({ type: NBD_CMD_READ, cookie: 2n, offset: 0, length: 4096 });
    const r = await c.readAnyReply();
    expect(r.error).toBe(NBD_EIO);
    expect(r.chunks).toHaveLength(1);
    f.failNext('flush', 'EIO');
    c.sendRequest({ type: NBD_CMD_FLUSH, cookie: 3n });
    expect((await c.readAnyReply()).error).toBe(NBD_EIO);
    f.failNext('zero', 'ENOTSUP');
    c.sendRequest({ type: NBD_CMD_WRITE_ZEROES, flags: NBD_CMD_FLAG_FAST_ZERO, cookie: 4n, offset: 0, length: 65536 });
    expect((await c.readAnyReply()).error).toBe(NBD_ENOTSUP);
    f.failNext('trim', 'EPERM');
    c.sendRequest({ type: NBD_CMD_TRIM, cookie: 5n, offset: 0, length: 65536 });
    expect((await c.readAnyReply()).error).toBe(NBD_EPERM);
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 6n, offset: 0, data: pattern(4096, 1) });
    expect((await c.readAnyReply()).error).toBe(0);
    c.destroy();

    const s = await client('faulty');
    f.failNext('read', 'EIO');
    s.sendRequest({ type: NBD_CMD_READ, cookie: 7n, offset: 0, length: 4096 });
    expect(await s.readSimpleReply()).toMatchObject({ cookie: 7n, error: NBD_EIO }); // and no payload follows
    s.sendRequest({ type: NBD_CMD_READ, cookie: 8n, offset: 0, length: 4096 });
    const ok = await s.readSimpleReply(4096);
    expect(ok.data.equals(pattern(4096, 1))).toBe(true);
    s.destroy();
  });

  it('an export method that throws synchronously is answered like a rejection', async () => {
    const c = await client('throwing', true, ['base:allocation']);
    c.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offset: 0, length: 4096 });
    expect((await c.readAnyReply()).error).toBe(NBD_EIO);
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 2n, offset: 0, data: pattern(4096, 1) });
    expect((await c.readAnyReply()).error).toBe(NBD_ENOSPC);
    c.sendRequest({ type: NBD_CMD_FLUSH, cookie: 3n });
    expect((await c.readAnyReply()).error).toBe(NBD_EIO);
    c.sendRequest({ type: NBD_CMD_BLOCK_STATUS, cookie: 4n, offset: 0, length: 4096 });
    expect((await c.readAnyReply()).error).toBe(NBD_EIO);
    c.destroy();
  });
});

describe('reads and block status', () => {
  it('simple replies zero-fill holes, even in reused pool buffers', async () => {
    const c = await client('disk');
    const data = pattern(256 * 1024, 42);
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: 4 * MiB, data });
    expect((await c.readSimpleReply()).error).toBe(0);
    for (let i = 0; i < 4; i++) {
      // read data (fills a pooled buffer), then a hole of the same size (reuses it)
      c.sendRequest({ type: NBD_CMD_READ, cookie: 2n, offset: 4 * MiB, length: 256 * 1024 });
      expect((await c.readSimpleReply(256 * 1024)).data.equals(data)).toBe(true);
      c.sendRequest({ type: NBD_CMD_READ, cookie: 3n, offset: 8 * MiB, length: 256 * 1024 });
      expect((await c.readSimpleReply(256 * 1024)).data.every((b) => b === 0)).toBe(true);
    }
    // a read straddling data and hole
    c.sendRequest({ type: NBD_CMD_READ, cookie: 4n, offset: 4 * MiB + 200 * 1024, length: 200 * 1024 });
    const mixed = (await c.readSimpleReply(200 * 1024)).data;
    expect(mixed.subarray(0, 56 * 1024).equals(data.subarray(200 * 1024))).toBe(true);
    expect(mixed.subarray(56 * 1024).every((b) => b === 0)).toBe(true);
    c.destroy();
  });

  it('structured reads: OFFSET_DATA and OFFSET_HOLE chunks covering the request exactly; DF gives one chunk', async () => {
    const c = await client('disk', true);
    const base = 6 * MiB;
    const a = pattern(65536, 5);
    const b = pattern(1000, 6);
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: base + 65536, data: a });
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 2n, offset: base + 4 * 65536 + 10, data: b });
    await c.readAnyReply();
    await c.readAnyReply();
    const expected = Buffer.alloc(6 * 65536);
    a.copy(expected, 65536);
    b.copy(expected, 4 * 65536 + 10);

    c.sendRequest({ type: NBD_CMD_READ, cookie: 3n, offset: base + 100, length: 6 * 65536 - 200 });
    const r = await c.readAnyReply();
    expect(r.error).toBe(0);
    expect(r.chunks.some((ch) => ch.type === NBD_REPLY_TYPE_OFFSET_HOLE)).toBe(true);
    expect(assemble(r.chunks, base + 100, 6 * 65536 - 200).equals(expected.subarray(100, 6 * 65536 - 100))).toBe(true);

    c.sendRequest({ type: NBD_CMD_READ, flags: NBD_CMD_FLAG_DF, cookie: 4n, offset: base, length: 6 * 65536 });
    const df = await c.readAnyReply();
    expect(df.chunks).toHaveLength(1);
    expect(assemble(df.chunks, base, 6 * 65536).equals(expected)).toBe(true);

    c.sendRequest({ type: NBD_CMD_READ, flags: NBD_CMD_FLAG_DF, cookie: 5n, offset: 12 * MiB, length: 65536 });
    const hole = await c.readAnyReply();
    expect(hole.chunks).toHaveLength(1);
    expect(hole.chunks[0]?.type).toBe(NBD_REPLY_TYPE_OFFSET_HOLE);
    c.destroy();
  });

  it('holes are never sent as stale bytes, even from an unsorted, overlapping hole list', async () => {
    const expected = Buffer.alloc(32768, 0xaa);
    expected.fill(0, 0, 4096);
    expected.fill(0, 8192, 16384);
    const simple = await client('careless');
    simple.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offset: 0, length: 32768 });
    expect((await simple.readSimpleReply(32768)).data.equals(expected)).toBe(true);
    simple.destroy();
    const structured = await client('careless', true);
    for (const flags of [0, NBD_CMD_FLAG_DF]) {
      structured.sendRequest({ type: NBD_CMD_READ, flags, cookie: 2n, offset: 0, length: 32768 });
      expect(assemble((await structured.readAnyReply()).chunks, 0, 32768).equals(expected)).toBe(true);
    }
    structured.destroy();
  });

  it('block status: one chunk per context, extents cut to the request, REQ_ONE gives one extent', async () => {
    const c = await client('multi', true, ['base:allocation', 'x-test:even-chunks']);
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: 65536, data: pattern(65536, 1) });
    await c.readAnyReply();
    c.sendRequest({ type: NBD_CMD_BLOCK_STATUS, cookie: 2n, offset: 1000, length: 200000 });
    const r = await c.readAnyReply();
    expect(r.error).toBe(0);
    expect(r.chunks).toHaveLength(2);
    for (const ch of r.chunks) {
      expect(ch.type).toBe(NBD_REPLY_TYPE_BLOCK_STATUS);
      const extents: Array<[number, number]> = [];
      for (let p = 4; p < ch.payload.length; p += 8) extents.push([ch.payload.readUInt32BE(p), ch.payload.readUInt32BE(p + 4)]);
      expect(extents.reduce((s, e) => s + e[0], 0)).toBe(200000);
      if (extents[0]?.[1] === (NBD_STATE_HOLE | NBD_STATE_ZERO)) {
        expect(extents).toEqual([
          [64536, 3],
          [65536, 0],
          [200000 - 64536 - 65536, 3],
        ]);
      }
    }
    c.sendRequest({ type: NBD_CMD_BLOCK_STATUS, flags: NBD_CMD_FLAG_REQ_ONE, cookie: 3n, offset: 70000, length: 500 });
    const one = await c.readAnyReply();
    for (const ch of one.chunks) {
      expect(ch.payload.length).toBe(12);
      expect(ch.payload.readUInt32BE(4)).toBe(500);
    }
    c.destroy();
  });

  it('write zeroes with NO_HOLE allocates, without it punches; trim frees', async () => {
    const e = exp('disk');
    const c = await client('disk');
    const at = 10 * MiB;
    c.sendRequest({ type: NBD_CMD_WRITE_ZEROES, flags: NBD_CMD_FLAG_NO_HOLE, cookie: 1n, offset: at, length: 65536 });
    expect((await c.readSimpleReply()).error).toBe(0);
    expect(e.chunks.has(at / 65536)).toBe(true);
    c.sendRequest({ type: NBD_CMD_WRITE_ZEROES, cookie: 2n, offset: at, length: 65536 });
    expect((await c.readSimpleReply()).error).toBe(0);
    expect(e.chunks.has(at / 65536)).toBe(false);
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 3n, offset: at, data: pattern(65536, 3) });
    await c.readSimpleReply();
    c.sendRequest({ type: NBD_CMD_TRIM, flags: NBD_CMD_FLAG_FUA, cookie: 4n, offset: at, length: 65536 });
    expect((await c.readSimpleReply()).error).toBe(0);
    expect(e.chunks.has(at / 65536)).toBe(false);
    c.sendRequest({ type: NBD_CMD_CACHE, cookie: 5n, offset: 0, length: MiB });
    expect((await c.readSimpleReply()).error).toBe(0);
    c.destroy();
  });
});

describe('pipelining, disconnects and concurrency', () => {
  it('echoes 64-bit cookies and answers a burst of pipelined requests', async () => {
    const c = await client('disk', true);
    const n = 200;
    const parts: Buffer[] = [];
    const raw = c.write.bind(c);
    // batch everything into one socket write
    c.write = (b: Buffer) => void parts.push(b);
    for (let i = 0; i < n; i++) {
      const cookie = 0xdeadbeef00000000n + BigInt(i);
      if (i % 2 === 0) c.sendRequest({ type: NBD_CMD_WRITE, cookie, offset: 2 * MiB + i * 4096, data: pattern(4096, i) });
      else c.sendRequest({ type: NBD_CMD_READ, cookie, offset: 2 * MiB + (i - 1) * 4096, length: 4096 });
    }
    c.write = raw;
    c.write(Buffer.concat(parts));
    const seen = new Set<bigint>();
    for (let i = 0; i < n; i++) {
      const r = await c.readAnyReply();
      expect(r.error).toBe(0);
      seen.add(r.cookie);
    }
    expect(seen.size).toBe(n);
    expect([...seen].every((k) => k >= 0xdeadbeef00000000n && k < 0xdeadbeef00000000n + BigInt(n))).toBe(true);
    const snap = exp('disk').snapshot();
    for (let i = 0; i < n; i += 2) expect(snap.subarray(2 * MiB + i * 4096, 2 * MiB + (i + 1) * 4096).equals(pattern(4096, i))).toBe(true);
    c.destroy();
  });

  it('a client vanishing mid-payload ends only its own connection; the partial write is not applied', async () => {
    const other = await client('disk');
    const region = 12 * MiB;
    const before = exp('disk').snapshot().subarray(region, region + MiB);
    const c = await client('disk');
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: region, length: MiB });
    c.write(pattern(300 * 1024, 9));
    await new Promise((r) => setTimeout(r, 50));
    c.destroy();
    const data = pattern(65536, 77);
    other.sendRequest({ type: NBD_CMD_WRITE, cookie: 2n, offset: region + 2 * MiB, data });
    expect((await other.readSimpleReply()).error).toBe(0);
    other.sendRequest({ type: NBD_CMD_READ, cookie: 3n, offset: region + 2 * MiB, length: 65536 });
    expect((await other.readSimpleReply(65536)).data.equals(data)).toBe(true);
    expect(exp('disk').snapshot().subarray(region, region + MiB).equals(before)).toBe(true);
    other.destroy();
  });

  it('a client vanishing while large replies are written ends only its own connection', async () => {
    const other = await client('disk', true);
    for (let round = 0; round < 3; round++) {
      const c = await client('disk', true);
      for (let i = 0; i < 16; i++) c.sendRequest({ type: NBD_CMD_READ, cookie: BigInt(i), offset: 0, length: 8 * MiB });
      await c.read(100_000);
      c.destroy();
    }
    other.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offset: 0, length: MiB });
    expect((await other.readAnyReply()).error).toBe(0);
    other.destroy();
  });

  it('bad request magic closes only that connection', async () => {
    const other = await client('disk');
    const c = await client('disk');
    c.write(Buffer.alloc(28, 0x41));
    expect(await c.closedWithin()).toBe(true);
    other.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offset: 0, length: 512 });
    expect((await other.readSimpleReply(512)).error).toBe(0);
    other.destroy();
  });

  it('NBD_CMD_DISC: pipelined writes still in flight are all applied and answered before close', async () => {
    const slow = exp('slow');
    const c = await client('slow');
    const parts: Buffer[] = [];
    const raw = c.write.bind(c);
    c.write = (b: Buffer) => void parts.push(b);
    for (let i = 0; i < 20; i++) c.sendRequest({ type: NBD_CMD_WRITE, cookie: BigInt(i), offset: i * 65536, data: pattern(65536, 100 + i) });
    c.sendRequest({ type: NBD_CMD_DISC });
    c.write = raw;
    c.write(Buffer.concat(parts));
    const cookies = new Set<bigint>();
    for (let i = 0; i < 20; i++) {
      const r = await c.readSimpleReply();
      expect(r.error).toBe(0);
      cookies.add(r.cookie);
    }
    expect(cookies.size).toBe(20);
    expect(await c.closedWithin()).toBe(true);
    const snap = slow.snapshot();
    for (let i = 0; i < 20; i++) expect(snap.subarray(i * 65536, (i + 1) * 65536).equals(pattern(65536, 100 + i))).toBe(true);
  });

  it('bounds bytes in flight: reading pauses while writes are queued, everything still completes', async () => {
    const slow = exp('slow');
    slow.maxInFlight = 0;
    const c = await client('slow');
    const n = 48;
    for (let i = 0; i < n; i++) c.sendRequest({ type: NBD_CMD_WRITE, cookie: BigInt(i), offset: i * MiB, data: pattern(MiB, i) });
    for (let i = 0; i < n; i++) expect((await c.readSimpleReply()).error).toBe(0);
    // the server holds at most ~4 MiB of payloads (its maxInFlightBytes) plus what one socket chunk brings
    expect(slow.maxInFlight).toBeLessThanOrEqual(6);
    expect(slow.maxInFlight).toBeGreaterThanOrEqual(2);
    const snap = slow.snapshot();
    for (let i = 0; i < n; i += 7) expect(snap.subarray(i * MiB, (i + 1) * MiB).equals(pattern(MiB, i))).toBe(true);
    c.destroy();
  });

  it('a socket chunk full of large READ headers starts no more reads than the in-flight budget allows', async () => {
    // 64 READs of 1 MiB in one 1792-byte write: before the fix every header in the chunk was dispatched (and its
    // buffer allocated) at once; a flood of 32 MiB READs this way could exhaust the daemon's memory
    const slow = exp('slow');
    slow.maxInFlight = 0;
    const c = await client('slow');
    const n = 64;
    const headers: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      const h = Buffer.alloc(28);
      h.writeUInt32BE(0x25609513, 0); // NBD_REQUEST_MAGIC
      h.writeUInt16BE(0, 4);
      h.writeUInt16BE(0, 6); // NBD_CMD_READ
      h.writeBigUInt64BE(BigInt(i), 8);
      h.writeBigUInt64BE(BigInt(i) * BigInt(MiB), 16);
      h.writeUInt32BE(MiB, 24);
      headers.push(h);
    }
    c.write(Buffer.concat(headers));
    for (let i = 0; i < n; i++) expect((await c.readSimpleReply(MiB)).error).toBe(0);
    // budget 4 MiB of read buffers: at most 4 or 5 reads inside the export at once, not 64
    expect(slow.maxInFlight).toBeLessThanOrEqual(5);
    c.destroy();
  });

  it('100 concurrent connections each write and verify their own region', async () => {
    const clients = await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        (async () => {
          const c = i % 2 === 0 ? await RawClient.connect(t.socketPath) : await RawClient.connect({ host: '127.0.0.1', port: t.port });
          await c.negotiate('crowd', { structured: i % 3 === 0 });
          return c;
        })(),
      ),
    );
    expect(t.server.connections().filter((x) => x.export === 'crowd').length).toBe(100);
    await Promise.all(
      clients.map(async (c, i) => {
        const data = pattern(65536, 1000 + i);
        c.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: i * 65536, data });
        expect((await c.readAnyReply()).error).toBe(0);
        c.sendRequest({ type: NBD_CMD_READ, cookie: 2n, offset: i * 65536, length: 65536 });
        if (i % 3 === 0) {
          const r = await c.readAnyReply();
          expect(assemble(r.chunks, i * 65536, 65536).equals(data)).toBe(true);
        } else {
          expect((await c.readSimpleReply(65536)).data.equals(data)).toBe(true);
        }
        c.sendRequest({ type: NBD_CMD_DISC });
        expect(await c.closedWithin()).toBe(true);
      }),
    );
    const snap = exp('crowd').snapshot();
    for (let i = 0; i < 100; i++) expect(snap.subarray(i * 65536, (i + 1) * 65536).equals(pattern(65536, 1000 + i))).toBe(true);
    const info = t.server.connections().filter((x) => x.export === 'crowd');
    expect(info.length).toBe(0);
  });

  it('connections() reports each client with its counters', async () => {
    const c = await client('disk');
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, data: pattern(8192, 1) });
    await c.readSimpleReply();
    c.sendRequest({ type: NBD_CMD_READ, cookie: 2n, offset: 0, length: 4096 });
    await c.readSimpleReply(4096);
    const mine = t.server.connections().find((x) => x.export === 'disk' && x.requests === 2);
    expect(mine).toMatchObject({ remote: 'unix', tls: false, bytesRead: 4096, bytesWritten: 8192 });
    expect(Number.isNaN(Date.parse(mine?.since ?? ''))).toBe(false);
    c.destroy();
  });
});
