import { createHash, randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import { describe, expect, test } from 'vitest';
import { StreamError } from '../src/backup/errors.js';
import type { ByteSink, ByteSource, ChunkSink, ChunkSource, StreamEntry } from '../src/backup/io.js';
import {
  HeaderField,
  TrailerField,
  encodeStreamMetadata,
  readStreamHeader,
  streamLayout,
  type StreamFields,
  type StreamKind,
} from '../src/backup/stream-format.js';
import { readStream, type ReadStreamOptions } from '../src/backup/stream-reader.js';
import { writeStream, type StreamFieldsInput } from '../src/backup/stream-writer.js';
import { native } from '../src/native/index.js';

const KiB = 1024;

// ---------------------------------------------------------------------------------------------------------------
// in-memory ends

class MemoryChunkSource implements ChunkSource {
  inFlight = 0;
  maxInFlight = 0;
  constructor(
    readonly entries: StreamEntry[],
    readonly data: Buffer,
    readonly chunkSize: number,
  ) {}
  async readChunks(firstIndex: number, count: number, into: Buffer): Promise<void> {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    await new Promise((r) => setImmediate(r));
    this.data.copy(into, 0, firstIndex * this.chunkSize, (firstIndex + count) * this.chunkSize);
    this.inFlight--;
  }
}

class MemoryByteSink implements ByteSink {
  parts: Buffer[] = [];
  async write(data: Buffer): Promise<void> {
    await new Promise((r) => setImmediate(r));
    this.parts.push(Buffer.from(data)); // the writer may reuse `data` afterwards
  }
  bytes(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** hands out one reused scratch buffer, as a real source may; throws like a short medium at the end */
class MemoryByteSource implements ByteSource {
  private pos = 0;
  private scratch = Buffer.alloc(0);
  constructor(
    private readonly stream: Buffer,
    private readonly failure: 'bytesRead' | 'plain' | 'syscall' = 'bytesRead',
  ) {}
  async readExact(length: number): Promise<Buffer> {
    const available = this.stream.length - this.pos;
    if (available < length) {
      this.pos = this.stream.length;
      if (this.failure === 'syscall') throw Object.assign(new Error('read: Input/output error'), { syscall: 'read', code: 'EIO' });
      const err = new Error(`end of stream after ${available} of ${length} bytes`);
      if (this.failure === 'bytesRead') Object.assign(err, { bytesRead: available });
      throw err;
    }
    if (this.scratch.length < length) this.scratch = Buffer.alloc(length);
    this.stream.copy(this.scratch, 0, this.pos, this.pos + length);
    this.pos += length;
    this.scratch.fill(0xee, length); // anything past `length` must not be looked at
    return this.scratch.subarray(0, length);
  }
}

class MemoryChunkSink implements ChunkSink {
  received: { entry: StreamEntry; data: Buffer }[] = [];
  async writeChunk(entry: StreamEntry, data: Buffer): Promise<void> {
    this.received.push({ entry: { ...entry }, data: Buffer.from(data) });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// fixtures

interface Built {
  fields: StreamFieldsInput;
  entries: StreamEntry[];
  data: Buffer;
  stream: Buffer;
  result: Awaited<ReturnType<typeof writeStream>>;
}

function makeFields(kind: StreamKind, chunkSize: number, volumeChunks: number): StreamFieldsInput {
  const diff = kind === 'diff';
  return {
    kind,
    origin: { uuid: randomUUID(), name: 'vol0' },
    source: { uuid: randomUUID(), name: 'vol0@backup-1' },
    volumeSize: volumeChunks * chunkSize - 1000, // last chunk partial: it still travels as a whole chunk
    chunkSize,
    generationFrom: diff ? 3 : 0,
    generationTo: diff ? 5 : 0,
    nextGeneration: diff ? 6 : kind === 'full' ? 1 : 4,
    baseStreamUuid: diff ? randomUUID() : null,
  };
}

/** n entries spread over a volume of 2n+1 chunks, always including its last (partial) chunk when n > 0 */
function makeEntries(kind: StreamKind, n: number, chunkSize: number): { entries: StreamEntry[]; volumeChunks: number } {
  const volumeChunks = 2 * n + 1;
  const entries: StreamEntry[] = [];
  for (let i = 0; i < n; i++) {
    const chunk = i === n - 1 ? volumeChunks - 1 : 2 * i + (i % 2);
    entries.push({ offset: chunk * chunkSize, length: chunkSize, generation: kind === 'diff' ? 3 + (i % 3) : 0 });
  }
  return { entries, volumeChunks };
}

async function build(
  kind: StreamKind,
  n: number,
  chunkSize: number,
  extra: Partial<StreamFieldsInput> = {},
  writerOpts: { readBatchChunks?: number; readAhead?: number } = {},
): Promise<Built> {
  const { entries, volumeChunks } = makeEntries(kind, n, chunkSize);
  const fields = { ...makeFields(kind, chunkSize, volumeChunks), ...extra };
  const data = randomBytes(n * chunkSize);
  const sink = new MemoryByteSink();
  const result = await writeStream({ fields, source: new MemoryChunkSource(entries, data, chunkSize), sink, ...writerOpts });
  return { fields, entries, data, stream: sink.bytes(), result };
}

async function read(stream: Buffer, opts: ReadStreamOptions = {}, failure?: 'bytesRead' | 'plain' | 'syscall') {
  const sink = new MemoryChunkSink();
  const result = await readStream(new MemoryByteSource(stream, failure), sink, opts);
  return { sink, result };
}

async function refused(stream: Buffer, failure?: 'bytesRead' | 'plain' | 'syscall'): Promise<StreamError> {
  try {
    await read(stream, {}, failure);
  } catch (err) {
    expect(err).toBeInstanceOf(StreamError);
    return err as StreamError;
  }
  throw new Error('the stream was accepted');
}

function flip(buf: Buffer, offset: number, mask = 0x01): Buffer {
  const copy = Buffer.from(buf);
  copy[offset] ^= mask;
  return copy;
}

function resealHeader(stream: Buffer): void {
  stream.writeUInt32LE(native.crc32c(stream.subarray(0, HeaderField.HEADER_CRC)), HeaderField.HEADER_CRC);
}

function resealTrailer(stream: Buffer, trailerOffset: number): void {
  const t = stream.subarray(trailerOffset, trailerOffset + 4096);
  t.writeUInt32LE(native.crc32c(t.subarray(0, TrailerField.TRAILER_CRC)), TrailerField.TRAILER_CRC);
}

function u64(buf: Buffer, offset: number): number {
  return Number(buf.readBigUInt64LE(offset));
}

// ---------------------------------------------------------------------------------------------------------------

describe('layout', () => {
  test('sizes follow 4096 + pad4k(16n) + n × chunkSize + pad4k(4n) + 4096', () => {
    expect(streamLayout(0, 4096).totalBytes).toBe(8192);
    const one = streamLayout(1, 64 * KiB);
    expect(one).toMatchObject({ tableOffset: 4096, tableBytes: 4096, dataOffset: 8192, dataBytes: 64 * KiB });
    expect(one.crcTableOffset).toBe(8192 + 64 * KiB);
    expect(one.totalBytes).toBe(4096 + 4096 + 64 * KiB + 4096 + 4096);
    const many = streamLayout(300, 4096);
    expect(many.tableBytes).toBe(8192); // 4800 bytes of entries
    expect(many.crcTableBytes).toBe(4096); // 1200 bytes of CRCs
    expect(many.totalBytes).toBe(4096 + 8192 + 300 * 4096 + 4096 + 4096);
    const exact = streamLayout(256, 4096); // 16 × 256 = 4096 exactly: no padding block
    expect(exact.tableBytes).toBe(4096);
    for (const l of [one, many, exact]) {
      for (const o of [l.tableOffset, l.dataOffset, l.crcTableOffset, l.trailerOffset, l.totalBytes]) expect(o % 4096).toBe(0);
    }
    expect(() => streamLayout(1, 3000)).toThrow(/chunk size 3000/);
    expect(() => streamLayout(-1, 4096)).toThrow(/record count -1/);
  });
});

describe('round trip', () => {
  const kinds: StreamKind[] = ['full', 'diff', 'replica'];
  const cases: [number, number][] = [
    [0, 4 * KiB],
    [1, 4 * KiB],
    [300, 4 * KiB],
    [0, 64 * KiB],
    [1, 64 * KiB],
    [37, 64 * KiB],
  ];
  for (const kind of kinds) {
    test.each(cases)(`${kind}: %i records of %i bytes`, async (n, chunkSize) => {
      // a batch size that leaves a partial last batch, and the default
      const b = await build(kind, n, chunkSize, {}, n > 1 ? { readBatchChunks: 7, readAhead: 2 } : {});
      const layout = streamLayout(n, chunkSize);
      expect(b.stream.length).toBe(layout.totalBytes);
      expect(b.result.bytes).toBe(layout.totalBytes);
      expect(b.result.records).toBe(n);
      const { sink, result } = await read(b.stream);
      expect(result.bytes).toBe(layout.totalBytes);
      expect(result.records).toBe(n);
      expect(result.digest).toBe(b.result.digest);
      expect(result.digest).toMatch(/^[0-9a-f]{64}$/);
      expect(result.header).toEqual(b.result.header);
      expect(result.header.kind).toBe(kind);
      expect(sink.received.map((r) => r.entry)).toEqual(b.entries);
      for (let i = 0; i < n; i++) {
        expect(sink.received[i].data.equals(b.data.subarray(i * chunkSize, (i + 1) * chunkSize))).toBe(true);
        expect(b.result.crcs[i]).toBe(native.crc32c(b.data.subarray(i * chunkSize, (i + 1) * chunkSize)));
      }
    });
  }

  test('header fields round trip: unicode names, 255-byte names, 512 bytes of management info', async () => {
    const info = randomBytes(512);
    const longName = 'é'.repeat(127) + 'x'; // 255 bytes of UTF-8
    const extra = {
      streamUuid: randomUUID(),
      createdAt: 1767225600123.5,
      origin: { uuid: randomUUID(), name: 'ボリューム 🚀 données' },
      source: { uuid: randomUUID(), name: longName },
      managementInfo: info,
    };
    const b = await build('diff', 5, 4 * KiB, extra);
    const h = readStreamHeader(b.stream);
    expect(h).toMatchObject({
      version: 1,
      flags: 0,
      kind: 'diff',
      headerSize: 4096,
      streamUuid: extra.streamUuid,
      createdAt: extra.createdAt,
      origin: extra.origin,
      source: extra.source,
      volumeSize: b.fields.volumeSize,
      chunkSize: 4096,
      generationFrom: 3,
      generationTo: 5,
      nextGeneration: 6,
      baseStreamUuid: b.fields.baseStreamUuid,
      recordCount: 5,
      dataBytes: 5 * 4096,
      totalBytes: b.stream.length,
    });
    expect(h.managementInfo.equals(info)).toBe(true);
    // a short management info is zero padded to its slot
    const short = await build('full', 1, 4 * KiB, { managementInfo: Buffer.from('catalog:42') });
    const hs = readStreamHeader(short.stream);
    expect(hs.managementInfo.length).toBe(512);
    expect(hs.managementInfo.subarray(0, 10).toString()).toBe('catalog:42');
    expect(hs.managementInfo.subarray(10).every((x) => x === 0)).toBe(true);
    expect(hs.baseStreamUuid).toBeNull();
  });

  test('encodeStreamMetadata + hand-assembled data equals the writer output byte for byte', async () => {
    for (const n of [0, 1, 300]) {
      const b = await build('diff', n, 4 * KiB, { streamUuid: randomUUID(), createdAt: 1.7e12 });
      const fields = { ...b.fields, baseStreamUuid: b.fields.baseStreamUuid ?? null, managementInfo: Buffer.alloc(0) } as StreamFields;
      const crcs = b.entries.map((_, i) => native.crc32c(b.data.subarray(i * 4096, (i + 1) * 4096)));
      const m = encodeStreamMetadata(fields, b.entries, crcs);
      const assembled = Buffer.concat([m.header, m.table, b.data, m.crcTable, m.trailer]);
      expect(assembled.length).toBe(m.layout.totalBytes);
      expect(assembled.equals(b.stream)).toBe(true);
      expect(m.digest).toBe(b.result.digest);
    }
  });

  test('the writer overlaps reads with sink writes and reports progress up to the total', async () => {
    const { entries, volumeChunks } = makeEntries('full', 64, 4 * KiB);
    const data = randomBytes(64 * 4 * KiB);
    const source = new MemoryChunkSource(entries, data, 4 * KiB);
    const sink = new MemoryByteSink();
    const calls: [number, number][] = [];
    const r = await writeStream({
      fields: makeFields('full', 4 * KiB, volumeChunks),
      source,
      sink,
      readBatchChunks: 4,
      readAhead: 3,
      onProgress: (d, t) => calls.push([d, t]),
    });
    expect(source.maxInFlight).toBeGreaterThan(1);
    expect(source.maxInFlight).toBeLessThanOrEqual(3);
    expect(calls.at(-1)).toEqual([r.bytes, r.bytes]);
    const back = await read(sink.bytes());
    expect(Buffer.concat(back.sink.received.map((x) => x.data)).equals(data)).toBe(true);
  });

  test('verifyOnly needs no sink; onHeader sees the header first and can refuse', async () => {
    const b = await build('full', 3, 4 * KiB);
    const r = await readStream(new MemoryByteSource(b.stream), undefined, { verifyOnly: true });
    expect(r.records).toBe(3);
    const sink = new MemoryChunkSink();
    const refuse = new Error('wrong lineage');
    await expect(
      readStream(new MemoryByteSource(b.stream), sink, {
        onHeader: (h) => {
          if (h.origin.uuid !== randomUUID()) throw refuse;
        },
      }),
    ).rejects.toBe(refuse);
    expect(sink.received).toHaveLength(0);
    await expect(readStream(new MemoryByteSource(b.stream), undefined)).rejects.toThrow(/needs a sink/);
  });
});

describe('the writer refuses what the format cannot represent', () => {
  const writeWith = (kind: StreamKind, fields: Partial<StreamFieldsInput>, entries: StreamEntry[]) =>
    writeStream({
      fields: { ...makeFields(kind, 4096, 8), ...fields },
      source: new MemoryChunkSource(entries, Buffer.alloc(entries.length * 4096), 4096),
      sink: new MemoryByteSink(),
    });
  const e = (offset: number, generation = 0, length = 4096): StreamEntry => ({ offset, length, generation });

  test.each([
    ['diff', {}, [e(0, 2)], /stream entry 0 of 1: generation 2 outside 3..5 of this diff/],
    ['full', {}, [e(0, 1)], /generation 1 in a full stream \(must be 0\)/],
    ['full', {}, [e(4096), e(4096)], /stream entry 1 of 2: .*strictly ascending/],
    ['full', {}, [e(100)], /not a multiple of the chunk size/],
    ['full', {}, [e(0, 0, 512)], /length 512 is not the chunk size/],
    ['full', {}, [e(8 * 4096)], /past the end of the volume/],
    ['full', { nextGeneration: 2 }, [], /next generation: 2 in a full stream \(must be 1\)/],
    ['diff', { baseStreamUuid: null }, [], /base stream UUID: a diff names the full backup/],
    ['diff', { nextGeneration: 9 }, [], /next generation: 9 .*must be 6/],
    ['full', { origin: { uuid: randomUUID(), name: 'x'.repeat(256) } }, [], /origin name: 256 bytes/],
    ['full', { managementInfo: Buffer.alloc(513) }, [], /management info/],
    ['full', { chunkSize: 2 * 1024 * 1024 }, [], /chunk size/],
  ] as const)('%s %o %o', async (kind, fields, entries, message) => {
    const err = await writeWith(kind, fields, [...entries]).catch((x: unknown) => x);
    expect(err).toBeInstanceOf(StreamError);
    expect((err as StreamError).code).toBe('EINVAL');
    expect((err as StreamError).message).toMatch(message);
  });

  test('a failing chunk source fails the write with its own error, without stray rejections', async () => {
    const { entries, volumeChunks } = makeEntries('full', 20, 4096);
    const boom = new Error('pread: Input/output error');
    const source: ChunkSource = {
      entries,
      readChunks: async (first) => {
        await new Promise((r) => setImmediate(r));
        if (first >= 8) throw boom;
      },
    };
    await expect(
      writeStream({ fields: makeFields('full', 4096, volumeChunks), source, sink: new MemoryByteSink(), readBatchChunks: 2 }),
    ).rejects.toBe(boom);
  });
});

describe('damage is refused with its position', () => {
  // 40 records of 4 KiB in a diff: record i at volume chunk 2i + (i % 2), generation 3 + (i % 3)
  let built: Built;
  const stream = async () => (built ??= await build('diff', 40, 4 * KiB)).stream;
  const layout = streamLayout(40, 4 * KiB);

  test('a flipped data byte names the record, its volume offset, generation and stream bytes', async () => {
    const s = await stream();
    const at = layout.dataOffset + 17 * 4096 + 123;
    const err = await refused(flip(s, at));
    const volumeOffset = built.entries[17].offset;
    const start = layout.dataOffset + 17 * 4096;
    expect(err.code).toBe('ECORRUPT');
    expect(err.message).toMatch(
      new RegExp(
        `^record 17 of 40 \\(volume offset ${volumeOffset}, generation 5, stream bytes ${start}\\.\\.${start + 4095}\\): ` +
          'CRC32C mismatch \\(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\\)$',
      ),
    );
    expect(err.position).toMatchObject({ part: 'data', record: 17, recordCount: 40, volumeOffset, generation: 5, streamOffset: start });
    expect(err.mismatchCount).toBe(1);
    expect(err.mismatches?.[0]).toMatchObject({ record: 17, volumeOffset, generation: 5, computed: native.crc32c(flip(s, at).subarray(start, start + 4096)) });
  });

  test('every damaged record is collected, the first 20 in detail', async () => {
    const s = Buffer.from(await stream());
    for (let i = 3; i < 40; i++) s[layout.dataOffset + i * 4096] ^= 0xff;
    const err = await refused(s);
    expect(err.message).toMatch(/^37 of 40 records fail their CRC32C check: record 3 of 40 \(/);
    expect(err.message).toMatch(/; and 17 more$/);
    expect(err.mismatchCount).toBe(37);
    expect(err.mismatches).toHaveLength(20);
    expect(err.mismatches?.map((m) => m.record)).toEqual([...Array(20).keys()].map((i) => i + 3));
  });

  test('a flipped chunk table byte is caught before any data is delivered', async () => {
    const s = await stream();
    const sink = new MemoryChunkSink();
    const err = (await readStream(new MemoryByteSource(flip(s, layout.tableOffset + 16 * 5 + 12)), sink).catch((x: unknown) => x)) as StreamError;
    expect(err).toBeInstanceOf(StreamError);
    expect(err.message).toMatch(/^chunk table CRC mismatch \(stored 0x[0-9a-f]{8} in the header, computed 0x[0-9a-f]{8}; stream bytes 4096\.\.8191\)$/);
    expect(err.position.part).toBe('chunk table');
    expect(sink.received).toHaveLength(0);
  });

  test('a table that breaks a rule (resealed, as a buggy writer would make it) names the entry', async () => {
    const s = Buffer.from(await stream());
    const t = layout.tableOffset;
    s.copy(s, t + 16 * 8, t + 16 * 7, t + 16 * 8); // entry 8 repeats entry 7
    s.writeUInt32LE(native.crc32c(s.subarray(t, t + layout.tableBytes)), HeaderField.TABLE_CRC);
    resealHeader(s);
    const err = await refused(s);
    expect(err.code).toBe('ECORRUPT');
    expect(err.message).toMatch(/^chunk table entry 8 of 40 \(stream bytes 4224\.\.4239\): volume offset \d+ does not follow/);
    expect(err.position).toMatchObject({ part: 'chunk table', record: 8, streamOffset: 4224 });
  });

  test('a flipped CRC table byte is blamed on the CRC table, not on a record', async () => {
    const err = await refused(flip(await stream(), layout.crcTableOffset + 4 * 9 + 2));
    expect(err.message).toMatch(/^CRC table CRC mismatch \(stored 0x[0-9a-f]{8} in the trailer, computed 0x[0-9a-f]{8}; stream bytes \d+\.\.\d+\)$/);
    expect(err.position.part).toBe('CRC table');
  });

  test.each([
    ['volume size', HeaderField.VOLUME_SIZE],
    ['management info', HeaderField.MANAGEMENT_INFO + 300],
    ['reserved', 2000],
    ['header CRC itself', HeaderField.HEADER_CRC],
  ])('a flipped header byte (%s)', async (_name, offset) => {
    const err = await refused(flip(await stream(), offset));
    expect(err.code).toBe('ECORRUPT');
    expect(err.message).toMatch(/^header CRC mismatch \(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\)$/);
    expect(err.position.part).toBe('header');
  });

  test('a flipped trailer byte, and a digest that does not match', async () => {
    const s = await stream();
    const tr = layout.trailerOffset;
    expect((await refused(flip(s, tr + TrailerField.DIGEST + 5))).message).toMatch(/^trailer CRC mismatch/);
    expect((await refused(flip(s, tr + TrailerField.RECORD_COUNT))).message).toMatch(/^trailer CRC mismatch/);
    const badDigest = flip(s, tr + TrailerField.DIGEST + 5);
    resealTrailer(badDigest, tr);
    const err = await refused(badDigest);
    expect(err.message).toMatch(/^stream digest mismatch \(stored [0-9a-f]{64}, computed [0-9a-f]{64}\)$/);
    expect(err.position).toMatchObject({ part: 'trailer', field: 'digest' });
    const badCount = Buffer.from(s);
    badCount.writeUInt32LE(39, tr + TrailerField.RECORD_COUNT);
    resealTrailer(badCount, tr);
    expect((await refused(badCount)).message).toBe('trailer field record count (offset 24): 39 differs from the header\'s 40');
    const badMagic = flip(s, tr + 3, 0x20);
    resealTrailer(badMagic, tr);
    expect((await refused(badMagic)).message).toMatch(/^trailer magic 0x5456547[0-9a-f]+ "TVTrAILR" at stream byte \d+, expected "TVTRAILR"$/);
  });

  test.each([
    ['header', 100],
    ['chunk table', 5000],
    ['data', layout.dataOffset + 3 * 4096 + 10],
    ['CRC table', layout.crcTableOffset + 1],
    ['trailer', layout.trailerOffset + 4095],
  ])('truncation in the %s', async (part, at) => {
    const s = (await stream()).subarray(0, at);
    const err = await refused(s);
    expect(err.code).toBe('ETRUNCATED');
    expect(err.position).toMatchObject({ part, streamOffset: at });
    const total = part === 'header' ? '' : ` of ${layout.totalBytes}`;
    const where = part === 'data' ? 'in the data, record 3 of 40' : `in the ${part}`;
    expect(err.message).toBe(`stream truncated at byte ${at}${total} (${where})`);
  });

  test('truncation reported by a source that cannot say where; a system error is EIO', async () => {
    const s = (await stream()).subarray(0, 5000);
    const plain = await refused(s, 'plain');
    expect(plain.code).toBe('ETRUNCATED');
    expect(plain.message).toBe(`stream truncated within bytes 4096..8191 of ${layout.totalBytes} (in the chunk table)`);
    const io = await refused(s, 'syscall');
    expect(io.code).toBe('EIO');
    expect(io.message).toMatch(/^read error at stream bytes 4096\.\.8191 of \d+ \(in the chunk table\): read: Input\/output error$/);
    expect(io.cause).toBeInstanceOf(Error);
  });

  test('not a stream, unknown version, flags and kind, inconsistent fields', async () => {
    const s = await stream();
    const notStream = Buffer.from(s);
    notStream.write('GARBAGE!', 0, 'latin1');
    const e1 = await refused(notStream);
    expect(e1.code).toBe('ENOTSTREAM');
    expect(e1.message).toBe('not a thinvault stream (magic 0x4741524241474521 "GARBAGE!")');

    const mutate = (f: (b: Buffer) => void) => {
      const b = Buffer.from(s);
      f(b);
      resealHeader(b);
      return b;
    };
    const e2 = await refused(mutate((b) => b.writeUInt16LE(2, HeaderField.VERSION)));
    expect(e2.code).toBe('EUNSUPPORTED');
    expect(e2.message).toBe('unsupported stream format version 2 (this reader knows version 1)');
    const e3 = await refused(mutate((b) => (b[HeaderField.FLAGS] = 0x01)));
    expect(e3.code).toBe('EUNSUPPORTED');
    expect(e3.message).toBe('unsupported stream flags 0x01 (compressed data)');
    const e4 = await refused(mutate((b) => (b[HeaderField.FLAGS] = 0x80)));
    expect(e4.message).toBe('unsupported stream flags 0x80');
    const e5 = await refused(mutate((b) => (b[HeaderField.KIND] = 7)));
    expect(e5.message).toBe('unsupported stream kind 7');
    const e6 = await refused(mutate((b) => b.writeUInt32LE(b.readUInt32LE(HeaderField.TOTAL_BYTES) + 4096, HeaderField.TOTAL_BYTES)));
    expect(e6.code).toBe('ECORRUPT');
    expect(e6.message).toBe(`header field total stream bytes (offset 96): ${layout.totalBytes + 4096}, but 40 records of 4096 bytes make it ${layout.totalBytes}`);
    expect(e6.position).toMatchObject({ part: 'header', field: 'total stream bytes', streamOffset: 96 });
    const e7 = await refused(mutate((b) => b.writeUInt32LE(6, HeaderField.GENERATION_FROM)));
    expect(e7.message).toBe('header field generation-to (offset 56): 5 below generation-from 6');
    const e8 = await refused(mutate((b) => b.writeUInt32LE(1000, HeaderField.RECORD_COUNT)));
    expect(e8.message).toMatch(/^header field record count \(offset 80\): 1000 records do not fit a volume of/);
    const e9 = await refused(mutate((b) => b.writeUInt16LE(256, HeaderField.ORIGIN_NAME_LENGTH)));
    expect(e9.message).toBe('header field origin name (offset 272): length 256, at most 255');

    expect(() => readStreamHeader(s.subarray(0, 4095))).toThrow(/stream truncated at byte 4095 of at least 4096 \(in the header\)/);
  });
});

describe('the spec and the code agree', () => {
  const doc = fs.readFileSync(new URL('../docs/stream-format.md', import.meta.url), 'utf8');

  /** the rows (offset, size in bytes, field text) of the table under a "## <title>" heading */
  function docTable(title: string): { offset: number; size: number; field: string }[] {
    const section = doc.split(/^## /m).find((s) => s.startsWith(title))!;
    const sizes: Record<string, number> = { u8: 1, u16: 2, u32: 4, u64: 8, f64: 8 };
    return [...section.matchAll(/^\| (\d+) \| (\w+) \| (.*) \|$/gm)].map((m) => ({
      offset: Number(m[1]),
      size: sizes[m[2]] ?? Number(m[2]),
      field: m[3],
    }));
  }

  test.each([
    ['Header block', HeaderField, 4096],
    ['Trailer block', TrailerField, 4096],
  ] as const)('%s: the documented rows tile the block and match the constants', (title, constants, blockSize) => {
    const rows = docTable(title);
    let next = 0;
    for (const r of rows) {
      expect(r.offset, r.field).toBe(next);
      next = r.offset + r.size;
    }
    expect(next).toBe(blockSize);
    const documented = new Set(rows.filter((r) => !/^reserved/.test(r.field)).map((r) => r.offset));
    const named = new Set<number>(Object.values(constants));
    // every named offset is a documented field (a name field's length row and text row are both named)
    for (const o of named) expect(documented.has(o), `offset ${o}`).toBe(true);
    for (const o of documented) expect(named.has(o), `documented offset ${o}`).toBe(true);
  });

  test('fields decoded by hand at the documented offsets', async () => {
    const b = await build('diff', 3, 4 * KiB, {
      origin: { uuid: '0123abcd-0000-4000-8000-00000000beef', name: 'vol-α' },
      managementInfo: Buffer.from('seed 001'),
    });
    const s = b.stream;
    const layout = streamLayout(3, 4096);
    expect(s.toString('latin1', 0, 8)).toBe('TVSTREAM');
    expect(s.readUInt16LE(8)).toBe(1);
    expect(s[10]).toBe(2); // diff
    expect(s.readUInt32LE(12)).toBe(4096);
    expect(u64(s, 40)).toBe(b.fields.volumeSize);
    expect(s.readUInt32LE(48)).toBe(4096);
    expect([s.readUInt32LE(52), s.readUInt32LE(56), s.readUInt32LE(60)]).toEqual([3, 5, 6]);
    expect(s.toString('hex', 64, 80)).toBe(b.fields.baseStreamUuid!.replace(/-/g, ''));
    expect([80, 88, 96, 104, 112, 120, 128].map((o) => u64(s, o))).toEqual([
      3,
      3 * 4096,
      layout.totalBytes,
      4096,
      layout.dataOffset,
      layout.crcTableOffset,
      layout.trailerOffset,
    ]);
    expect(s.readUInt32LE(136)).toBe(native.crc32c(s.subarray(4096, layout.dataOffset)));
    expect(s.toString('hex', 256, 272)).toBe('0123abcd00004000800000000000beef');
    expect(s.readUInt16LE(272)).toBe(6);
    expect(s.toString('utf8', 280, 286)).toBe('vol-α');
    expect(s.subarray(286, 536).every((x) => x === 0)).toBe(true);
    expect(s.toString('latin1', 1024, 1032)).toBe('seed 001');
    expect(s.readUInt32LE(4092)).toBe(native.crc32c(s.subarray(0, 4092)));
    // table entry 1 and CRC entry 1
    expect(u64(s, 4096 + 16)).toBe(b.entries[1].offset);
    expect(s.readUInt32LE(4096 + 16 + 8)).toBe(4096);
    expect(s.readUInt32LE(4096 + 16 + 12)).toBe(b.entries[1].generation);
    expect(s.readUInt32LE(layout.crcTableOffset + 4)).toBe(native.crc32c(s.subarray(layout.dataOffset + 4096, layout.dataOffset + 8192)));
    // trailer and the digest recomputed from its definition
    const t = s.subarray(layout.trailerOffset);
    expect(t.toString('latin1', 0, 8)).toBe('TVTRAILR');
    expect(t.subarray(8, 24).equals(s.subarray(16, 32))).toBe(true);
    expect([24, 32, 40].map((o) => u64(t, o))).toEqual([3, 3 * 4096, layout.totalBytes]);
    expect(t.readUInt32LE(48)).toBe(native.crc32c(s.subarray(layout.crcTableOffset, layout.trailerOffset)));
    const digest = createHash('sha256')
      .update(s.subarray(0, layout.dataOffset))
      .update(s.subarray(layout.crcTableOffset, layout.trailerOffset))
      .update(t.subarray(0, 56))
      .digest('hex');
    expect(t.toString('hex', 56, 88)).toBe(digest);
    expect(digest).toBe(b.result.digest);
    expect(t.readUInt32LE(4092)).toBe(native.crc32c(t.subarray(0, 4092)));
  });
});
