/**
 * Streams on SIMH tape images: appending and reading back by file number, the on-disk bytes decoded by hand,
 * a full medium, and damaged images (torn tail, mismatched length word, SIMH's bad-record flag).
 */
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  CorruptMediumError,
  MediaError,
  MediumFullError,
  TapImage,
  TruncatedMediumError,
  listFiles,
  openReadStream,
  openWriteStream,
  parseMediaTarget,
  type MediaTarget,
  type TapTarget,
} from '../src/media/index.js';

const RS = 4096;
let dir: string;
let image: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinvault-media-tap-'));
  image = path.join(dir, 'backups.tap');
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

function tap(options = `record-size=${RS}`, suffix = ''): MediaTarget {
  return parseMediaTarget(`tap:${image}${options ? `?${options}` : ''}${suffix}`);
}

/** Writes `data` as one stream in pieces of `piece` bytes (default: one write). */
async function writeStream(target: MediaTarget, data: Buffer, piece = data.length, overwrite = false) {
  const writer = await openWriteStream(target, { overwrite });
  for (let at = 0; at < data.length; at += piece) await writer.write(data.subarray(at, at + piece));
  return writer.finish();
}

/** Reads file `fileNumber` to its end with readAvailable. */
async function readAll(target: MediaTarget, fileNumber?: number): Promise<Buffer> {
  const reader = await openReadStream(target, fileNumber);
  const parts: Buffer[] = [];
  try {
    for (let part = await reader.readAvailable(10_000); part !== null; part = await reader.readAvailable(10_000)) parts.push(part);
  } finally {
    await reader.close();
  }
  return Buffer.concat(parts);
}

async function failure(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => expect.fail('expected a rejection'),
    (err: unknown) => err,
  );
}

/** The image decoded independently of src/media: per file, the data lengths of its records. */
function decodeImage(bytes: Buffer): { files: number[][]; unterminated: number[] } {
  const files: number[][] = [];
  let records: number[] = [];
  let at = 0;
  while (at < bytes.length) {
    const length = bytes.readUInt32LE(at);
    if (length === 0) {
      files.push(records);
      records = [];
      at += 4;
      continue;
    }
    const padded = length + (length % 2);
    expect(bytes.readUInt32LE(at + 4 + padded), `trailing length word of the record at ${at}`).toBe(length);
    if (length % 2) expect(bytes[at + 4 + length], 'pad byte').toBe(0);
    records.push(length);
    at += 8 + padded;
  }
  return { files, unterminated: records };
}

describe('streams on a SIMH tape image', () => {
  it('appends three streams and reads each back by file number', async () => {
    const streams = [
      randomBytes(3 * RS + 1001), // last record odd-sized: padded
      randomBytes(2 * RS), // exactly two records
      randomBytes(17), // a single short odd record
    ];
    expect(await writeStream(tap(), streams[0]!, 1000)).toEqual({ bytes: streams[0]!.length, fileNumber: 0 });
    expect(await writeStream(tap(), streams[1]!)).toEqual({ bytes: streams[1]!.length, fileNumber: 1 });
    expect(await writeStream(tap(), streams[2]!, 5)).toEqual({ bytes: 17, fileNumber: 2 });

    // Records are the record size except the last of each stream; every file ends with a tape mark.
    expect(decodeImage(fs.readFileSync(image))).toEqual({
      files: [[RS, RS, RS, 1001], [RS, RS], [17]],
      unterminated: [],
    });

    for (let n = 0; n < 3; n++) {
      expect((await readAll(tap(), n)).equals(streams[n]!)).toBe(true);
      // the same through the target's 1-based #N
      expect((await readAll(tap(`record-size=${RS}`, `#${n + 1}`))).equals(streams[n]!)).toBe(true);
    }

    const listing = await listFiles(tap(), 64);
    expect(listing.map((f) => [f.fileNumber, f.bytes, f.complete, f.problem])).toEqual([
      [0, streams[0]!.length, true, null],
      [1, streams[1]!.length, true, null],
      [2, 17, true, null],
    ]);
    expect(listing[0]!.head.equals(streams[0]!.subarray(0, 64))).toBe(true);
    expect(listing[2]!.head.equals(streams[2]!)).toBe(true);
  });

  it('reads across record boundaries in any piece size and stops at the filemark', async () => {
    const data = randomBytes(5 * RS + 333);
    await writeStream(tap(), data);
    await writeStream(tap(), randomBytes(100));
    const reader = await openReadStream(tap(), 0);
    const pieces = [1, RS - 1, RS + 2, 7, 2 * RS];
    pieces.push(data.length - pieces.reduce((a, b) => a + b));
    const got = [];
    for (const size of pieces) got.push(await reader.readExact(size));
    expect(Buffer.concat(got).equals(data)).toBe(true);
    expect(reader.bytesRead).toBe(data.length);
    const err = await failure(reader.readExact(1));
    expect(err).toBeInstanceOf(TruncatedMediumError);
    expect(err).toMatchObject({ endedBy: 'filemark', bytesRead: data.length, fileNumber: 0, offset: null });
    expect((err as Error).message).toBe(`file #1 on SIMH tape image ${image} ends at a filemark after ${data.length} bytes; 1 more byte was expected`);
    // the filemark is not read past: the next file stays out of reach
    expect(await reader.readAvailable(10)).toBeNull();
    await reader.close();
  });

  it('writes exactly the SIMH bytes (decoded by hand)', async () => {
    await writeStream(tap('record-size=4'), Buffer.from('hello'));
    await writeStream(tap('record-size=4'), Buffer.from('ab'));
    const word = (n: number) => Buffer.from([n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24]);
    const expected = Buffer.concat([
      word(4), Buffer.from('hell'), word(4), // a full 4-byte record
      word(1), Buffer.from('o'), Buffer.from([0]), word(1), // odd length: one pad byte, the length words say 1
      word(0), // tape mark
      word(2), Buffer.from('ab'), word(2),
      word(0),
    ]);
    expect(fs.readFileSync(image).equals(expected)).toBe(true);
  });

  it('reads images with erase gaps and an end-of-medium marker, and appends over the marker', async () => {
    const word = (n: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(n >>> 0);
      return b;
    };
    fs.writeFileSync(
      image,
      Buffer.concat([word(0xfffffffe), word(3), Buffer.from('xyz\0'), word(3), word(0), word(0xffffffff), Buffer.from('junk')]),
    );
    expect((await readAll(tap(), 0)).toString()).toBe('xyz');
    expect((await listFiles(tap(), 8)).map((f) => [f.bytes, f.head.toString(), f.complete])).toEqual([[3, 'xyz', true]]);
    await writeStream(tap(), Buffer.from('next'));
    expect((await readAll(tap(), 1)).toString()).toBe('next');
    expect(fs.statSync(image).size).toBe(4 + 4 + 4 + 4 + 4 + (4 + 4 + 4) + 4);
  });

  it('refuses an empty stream and leaves the image as it was', async () => {
    await writeStream(tap(), randomBytes(10));
    const before = fs.readFileSync(image);
    const writer = await openWriteStream(tap());
    const err = await failure(writer.finish());
    expect(err).toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/empty stream/) });
    await writer.abort();
    expect(fs.readFileSync(image).equals(before)).toBe(true);
  });

  it('overwrite starts the image over at file 0', async () => {
    await writeStream(tap(), randomBytes(3 * RS));
    await writeStream(tap(), randomBytes(RS));
    const fresh = randomBytes(100);
    expect(await writeStream(tap(), fresh, fresh.length, true)).toEqual({ bytes: 100, fileNumber: 0 });
    expect(fs.statSync(image).size).toBe(4 + 100 + 4 + 4);
    expect((await listFiles(tap(), 0)).map((f) => f.bytes)).toEqual([100]);
  });

  it('an abort ends the partial file with a filemark so later streams still append', async () => {
    const writer = await openWriteStream(tap());
    await writer.write(randomBytes(2 * RS + 10));
    await writer.abort();
    await writer.abort(); // idempotent
    await expect(writer.write(Buffer.alloc(1))).rejects.toMatchObject({ code: 'EINVAL' });
    const next = randomBytes(50);
    expect(await writeStream(tap(), next)).toEqual({ bytes: 50, fileNumber: 1 });
    // the 10 bytes still buffered were dropped; the two whole records stay
    expect((await listFiles(tap(), 0)).map((f) => [f.bytes, f.complete])).toEqual([[2 * RS, true], [50, true]]);
    expect((await readAll(tap(), 1)).equals(next)).toBe(true);
  });

  it('lets one writer at a time at an image', async () => {
    const first = await openWriteStream(tap());
    await expect(openWriteStream(tap())).rejects.toMatchObject({ code: 'EBUSY' });
    await first.write(randomBytes(10));
    await first.finish();
    await writeStream(tap(), randomBytes(10));
  });

  it('reports a missing image, an unknown file number and a write target with #N', async () => {
    await expect(openReadStream(tap())).rejects.toMatchObject({ code: 'ENOENT', message: `SIMH tape image ${image} does not exist` });
    await writeStream(tap(), randomBytes(10));
    await writeStream(tap(), randomBytes(10));
    await expect(openReadStream(tap(), 2)).rejects.toMatchObject({
      code: 'ENOENT',
      message: `there is no file #3 on SIMH tape image ${image}: it holds 2 files`,
    });
    await expect(openWriteStream(tap(`record-size=${RS}`, '#1'))).rejects.toMatchObject({ code: 'EINVAL' });
  });

  it('refuses to read a record larger than the buffer', async () => {
    await writeStream(tap(), randomBytes(RS));
    const medium = await TapImage.open(tap() as TapTarget, 'read');
    await expect(medium.readRecord(Buffer.alloc(100))).rejects.toMatchObject({
      code: 'EMSGSIZE',
      message: `record of ${RS} bytes at byte 0 of SIMH tape image ${image} is larger than the read buffer (100 bytes)`,
    });
    await medium.close();
  });
});

describe('a full SIMH tape image', () => {
  // capacity 64 KiB, early-warning zone min(1 MiB, 64 KiB / 16) = 4 KiB: a record (4104 bytes in the image) is
  // written only while the image is at most 65536 - 4096 = 61440 bytes long.
  const capacity = 'capacity=64KiB&record-size=4KiB';

  it('stops at the early-warning zone with a readable, terminated file', async () => {
    await writeStream(tap(capacity), randomBytes(10));
    const sizeAfterFirst = fs.statSync(image).size; // 4 + 10 + 4 + 4 = 22
    expect(sizeAfterFirst).toBe(22);
    // Now a record fits while the image is at most 61440 bytes: 22 + k × 4104 <= 61440 for k = 0..14.
    const data = randomBytes(100 * 1024);
    const writer = await openWriteStream(tap(capacity));
    expect(writer.fileNumber).toBe(1);
    const err = await failure((async () => {
      await writer.write(data);
      await writer.finish();
    })());
    expect(err).toBeInstanceOf(MediumFullError);
    const full = err as MediumFullError;
    expect(full.bytesWritten).toBe(15 * 4096);
    expect(full.capacity).toBe(64 * 1024);
    expect(full.message).toBe(`medium full: SIMH tape image ${image} holds 60 KiB of this stream (capacity 64 KiB)`);
    await writer.abort(); // nothing left to do
    await expect(writer.finish()).rejects.toBe(err);

    const imageSize = fs.statSync(image).size;
    expect(imageSize).toBe(22 + 15 * 4104 + 4);
    expect(imageSize).toBeLessThanOrEqual(64 * 1024);
    const back = await readAll(tap(capacity), 1);
    expect(back.length).toBe(full.bytesWritten);
    expect(back.equals(data.subarray(0, back.length))).toBe(true);
    expect((await listFiles(tap(capacity), 0)).map((f) => [f.bytes, f.complete])).toEqual([
      [10, true],
      [15 * 4096, true],
    ]);

    // Appending to the full image fails cleanly and changes nothing.
    const before = fs.readFileSync(image);
    const again = await openWriteStream(tap(capacity));
    const err2 = await failure(again.write(randomBytes(2 * 4096)));
    expect(err2).toMatchObject({ code: 'ENOSPC', bytesWritten: 0 });
    expect(fs.readFileSync(image).equals(before)).toBe(true);
  });

  it('without an early-warning zone, stops at the first record that does not fit', async () => {
    // capacity 50000, no zone: a record at offset p fits when p + 4104 + 4 (a tape mark kept free) <= 50000,
    // i.e. p <= 45892: offsets 0 .. 11 × 4104 = 45144, 12 records.
    const target = tap('capacity=50000&early-warning=0&record-size=4096');
    const data = randomBytes(20 * 4096);
    const writer = await openWriteStream(target);
    const err = await failure(writer.write(data));
    expect(err).toMatchObject({ code: 'ENOSPC', bytesWritten: 12 * 4096 });
    expect(fs.statSync(image).size).toBe(12 * 4104 + 4);
    expect((await readAll(target, 0)).equals(data.subarray(0, 12 * 4096))).toBe(true);
  });
});

describe('damaged SIMH tape images', () => {
  it('a torn last record: reading names its offset, listing shows the torn tail, appending drops it', async () => {
    await writeStream(tap(), randomBytes(100));
    const start = fs.statSync(image).size; // 112: the second file starts here
    const writer = await openWriteStream(tap());
    const data = randomBytes(3 * RS);
    await writer.write(data);
    await writer.finish();
    fs.truncateSync(image, start + 4104 + 100); // cut 100 bytes into the second record

    const reader = await openReadStream(tap(), 1);
    const err = await failure(reader.readExact(3 * RS));
    expect(err).toBeInstanceOf(TruncatedMediumError);
    expect(err).toMatchObject({ endedBy: 'corrupt-record', offset: start + 4104, bytesRead: RS });
    expect((err as Error).message).toBe(
      `file #2 on SIMH tape image ${image} is unreadable after ${RS} bytes: torn record at byte ${start + 4104} of SIMH tape image ${image}: the image ends inside this ${RS}-byte record`,
    );
    expect((err as Error).cause).toBeInstanceOf(CorruptMediumError);
    await reader.close();

    const listing = await listFiles(tap(), 16);
    expect(listing.map((f) => [f.bytes, f.complete])).toEqual([[100, true], [RS, false]]);
    expect(listing[1]!.problem).toMatch(new RegExp(`torn record at byte ${start + 4104}`));
    expect(listing[1]!.head.equals(data.subarray(0, 16))).toBe(true);

    expect(await writeStream(tap(), Buffer.from('after'))).toEqual({ bytes: 5, fileNumber: 1 });
    expect((await listFiles(tap(), 0)).map((f) => [f.bytes, f.complete])).toEqual([[100, true], [5, true]]);
  });

  it('a torn length word at the end', async () => {
    await writeStream(tap(), randomBytes(10));
    fs.appendFileSync(image, Buffer.from([1, 2]));
    const listing = await listFiles(tap(), 0);
    expect(listing.map((f) => [f.bytes, f.complete, f.problem])).toEqual([
      [10, true, null],
      [0, false, `torn length word at byte 22 of SIMH tape image ${image}: the image ends 2 bytes into it`],
    ]);
    await writeStream(tap(), randomBytes(10));
    expect(fs.statSync(image).size).toBe(44);
  });

  it('a mismatched trailing length word inside the image: read and list name it, appending is refused', async () => {
    await writeStream(tap(), randomBytes(2 * RS));
    await writeStream(tap(), randomBytes(10));
    const bytes = fs.readFileSync(image);
    bytes.writeUInt32LE(RS + 2, 4 + RS); // trailing word of the first record
    fs.writeFileSync(image, bytes);

    const reader = await openReadStream(tap(), 0);
    const err = await failure(reader.readExact(2 * RS));
    expect(err).toMatchObject({ endedBy: 'corrupt-record', offset: 0, bytesRead: 0 });
    expect((err as Error).message).toMatch(
      new RegExp(`corrupt record at byte 0 of .*: its trailing length word 0x00001002 \\(at byte ${4 + RS}\\) does not match the leading one 0x00001000`),
    );
    await reader.close();

    const listing = await listFiles(tap(), 0);
    expect(listing).toHaveLength(1);
    expect(listing[0]).toMatchObject({ bytes: 0, complete: false });

    const appendErr = await failure(openWriteStream(tap()));
    expect(appendErr).toBeInstanceOf(MediaError);
    expect(appendErr).toMatchObject({ code: 'ECORRUPT', message: expect.stringMatching(/data follows it; appending would cut it off/) });
    expect(fs.readFileSync(image).equals(bytes)).toBe(true);
  });

  it("a record with SIMH's error flag: reading reports a bad record, listing goes on", async () => {
    await writeStream(tap(), randomBytes(RS + 5));
    const second = randomBytes(30);
    await writeStream(tap(), second);
    const bytes = fs.readFileSync(image);
    const flagged = (0x80000000 | RS) >>> 0;
    bytes.writeUInt32LE(flagged, 0);
    bytes.writeUInt32LE(flagged, 4 + RS);
    fs.writeFileSync(image, bytes);

    const reader = await openReadStream(tap(), 0);
    const err = await failure(reader.readAvailable(100));
    expect(err).toMatchObject({ endedBy: 'corrupt-record', offset: 0 });
    expect((err as Error).message).toMatch(/bad record at byte 0 of .*: SIMH marked this 4096-byte record as read with an error/);
    await reader.close();

    const listing = await listFiles(tap(), 0);
    expect(listing.map((f) => [f.bytes, f.complete])).toEqual([[RS + 5, false], [30, true]]);
    expect(listing[0]!.problem).toMatch(/bad record at byte 0/);
    expect((await readAll(tap(), 1)).equals(second)).toBe(true);
  });

  it('an invalid length word', async () => {
    fs.writeFileSync(image, Buffer.from([0x00, 0x00, 0x00, 0x01, 1, 2, 3, 4]));
    const err = await failure(readAll(tap(), 0));
    expect(err).toMatchObject({ endedBy: 'corrupt-record', offset: 0 });
    expect((err as Error).message).toMatch(/corrupt object at byte 0 of .*: invalid length word 0x01000000/);
  });
});
