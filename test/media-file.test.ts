/**
 * Media target syntax, streams in plain files (one stream per file, overwrite rules, a full device), and pipes
 * through the record interface.
 */
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import {
  DEFAULT_RECORD_SIZE,
  MediaError,
  MediumFullError,
  PipeMedium,
  TruncatedMediumError,
  listFiles,
  openReadStream,
  openWriteStream,
  parseMediaTarget,
} from '../src/media/index.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('parseMediaTarget', () => {
  it('parses every form', () => {
    expect(parseMediaTarget('-')).toEqual({ kind: 'pipe', spec: '-', recordSize: DEFAULT_RECORD_SIZE });
    expect(parseMediaTarget('/b/full.tvb')).toEqual({ kind: 'file', spec: '/b/full.tvb', path: '/b/full.tvb', recordSize: 4 * 1024 * 1024 });
    expect(parseMediaTarget('file:/b/x#1')).toMatchObject({ kind: 'file', path: '/b/x#1' });
    expect(parseMediaTarget('relative/name:with-colon')).toMatchObject({ kind: 'file', path: 'relative/name:with-colon' });
    expect(parseMediaTarget('tap:/b/x.tap')).toEqual({
      kind: 'tap',
      spec: 'tap:/b/x.tap',
      path: '/b/x.tap',
      recordSize: 262144,
      capacity: null,
      earlyWarning: 0,
      fileNumber: null,
    });
    expect(parseMediaTarget('tap:/b/x.tap?capacity=16MiB')).toMatchObject({ capacity: 16 * MiB, earlyWarning: MiB });
    expect(parseMediaTarget('tap:/b/x.tap?capacity=1M')).toMatchObject({ capacity: MiB, earlyWarning: 64 * KiB });
    expect(parseMediaTarget('tap:x.tap?capacity=1G&early-warning=4MiB&record-size=64KiB#2')).toMatchObject({
      path: 'x.tap',
      capacity: 1024 * MiB,
      earlyWarning: 4 * MiB,
      recordSize: 64 * KiB,
      fileNumber: 1,
    });
    expect(parseMediaTarget('tap:/b/x.tap#3')).toMatchObject({ path: '/b/x.tap', fileNumber: 2 });
    expect(parseMediaTarget('tap:/b#dir/x.tap')).toMatchObject({ path: '/b#dir/x.tap', fileNumber: null });
    expect(parseMediaTarget('tape:/dev/nst0')).toEqual({
      kind: 'tape',
      spec: 'tape:/dev/nst0',
      device: '/dev/nst0',
      recordSize: 262144,
      fileNumber: null,
    });
    expect(parseMediaTarget('tape:/dev/nst0?record-size=1MiB#1')).toMatchObject({ device: '/dev/nst0', recordSize: MiB, fileNumber: 0 });
  });

  it('names the problem in bad targets', () => {
    const bad: Array<[string, string]> = [
      ['', 'no file name'],
      ['file:', 'no file name'],
      ['tap:', "no image path after 'tap:'"],
      ['tape:?record-size=1M', "no device after 'tape:'"],
      ['tap:/x.tap?capcity=1G', "unknown option 'capcity' in tap target; known: capacity, early-warning, record-size"],
      ['tape:/dev/nst0?capacity=1G', "unknown option 'capacity' in tape target; known: record-size"],
      ['tap:/x.tap?capacity', "option 'capacity' needs a size, e.g. capacity=1GiB"],
      ['tap:/x.tap?capacity=', "option 'capacity' needs a size"],
      ['tap:/x.tap?capacity=1G&capacity=2G', "option 'capacity' is given twice"],
      ['tap:/x.tap?capacity=lots', "capacity: invalid size 'lots'"],
      ['tap:/x.tap?capacity=0', 'capacity must be more than 0 bytes'],
      ['tap:/x.tap?early-warning=1M', 'early-warning needs a capacity'],
      ['tap:/x.tap?capacity=1M&early-warning=1M', 'early-warning (1 MiB) must be smaller than the capacity (1 MiB)'],
      ['tap:/x.tap?record-size=0', 'record size 0 for tap:/x.tap?record-size=0 is out of range'],
      ['tap:/x.tap?record-size=16MiB', 'is out of range: 1 to 16777215 bytes'],
      ['tap:/x.tap#0', "file numbers start at 1 ('#0')"],
      ['tap:/x.tap#two', "'#two' is not a file number"],
      ['tape:/dev/nst0#', "'#' is not a file number"],
    ];
    for (const [spec, problem] of bad) {
      let err: unknown;
      try {
        parseMediaTarget(spec);
      } catch (e) {
        err = e;
      }
      expect(err, spec).toBeInstanceOf(MediaError);
      expect((err as MediaError).code, spec).toBe('EINVAL');
      expect((err as MediaError).message, spec).toContain(problem);
    }
  });
});

describe('streams in plain files', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinvault-media-file-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  async function writeStream(spec: string, data: Buffer, overwrite = false) {
    const writer = await openWriteStream(parseMediaTarget(spec), { overwrite, recordSize: 1000 });
    for (let at = 0; at < data.length; at += 777) await writer.write(data.subarray(at, at + 777));
    return writer.finish();
  }

  it('round trip: the file holds exactly the stream', async () => {
    const file = path.join(dir, 'full.tvb');
    const data = randomBytes(10_000 + 3);
    expect(await writeStream(file, data)).toEqual({ bytes: data.length, fileNumber: 0 });
    expect(fs.readFileSync(file).equals(data)).toBe(true);

    const reader = await openReadStream(parseMediaTarget(`file:${file}`));
    expect((await reader.readExact(5000)).equals(data.subarray(0, 5000))).toBe(true);
    expect((await reader.readExact(data.length - 5000)).equals(data.subarray(5000))).toBe(true);
    expect(await reader.readAvailable(10)).toBeNull();
    const err = await reader.readExact(2).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TruncatedMediumError);
    expect(err).toMatchObject({ endedBy: 'end-of-file', bytesRead: data.length });
    expect((err as Error).message).toBe(`file #1 on file ${file} ends at the end of the file after ${data.length} bytes; 2 more bytes were expected`);
    await reader.close();

    expect(await listFiles(parseMediaTarget(file), 4)).toEqual([
      { fileNumber: 0, head: data.subarray(0, 4), bytes: data.length, complete: true, problem: null },
    ]);
  });

  it('refuses to replace a file that holds data unless asked to', async () => {
    const file = path.join(dir, 'old.tvb');
    fs.writeFileSync(file, 'previous backup');
    const err = await openWriteStream(parseMediaTarget(file)).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'EEXIST', message: `file ${file} already holds data; pass --overwrite to replace it` });
    expect(fs.readFileSync(file, 'utf8')).toBe('previous backup');

    const data = randomBytes(3000);
    await writeStream(file, data, true);
    expect(fs.readFileSync(file).equals(data)).toBe(true);

    // an empty file is fair game
    const empty = path.join(dir, 'empty.tvb');
    fs.writeFileSync(empty, '');
    await writeStream(empty, data);
    expect(fs.readFileSync(empty).equals(data)).toBe(true);
  });

  it('abort removes a file it created and empties one it was replacing', async () => {
    const created = path.join(dir, 'new.tvb');
    const writer = await openWriteStream(parseMediaTarget(created));
    await writer.write(randomBytes(5000));
    await writer.abort();
    expect(fs.existsSync(created)).toBe(false);

    const replaced = path.join(dir, 'replaced.tvb');
    fs.writeFileSync(replaced, 'old');
    const writer2 = await openWriteStream(parseMediaTarget(replaced), { overwrite: true });
    await writer2.write(randomBytes(5000));
    await writer2.abort();
    expect(fs.statSync(replaced).size).toBe(0);
  });

  it('one stream per file: no append, no second file, no number on a path', async () => {
    const file = path.join(dir, 'one.tvb');
    await expect(openWriteStream(parseMediaTarget(file), { append: true })).rejects.toMatchObject({ code: 'EINVAL' });
    await writeStream(file, randomBytes(10));
    await expect(openReadStream(parseMediaTarget(file), 1)).rejects.toMatchObject({
      code: 'ENOENT',
      message: `'${file}' holds one stream; there is no file #2`,
    });
    await expect(openReadStream(parseMediaTarget(`${file}#1`))).rejects.toMatchObject({
      code: 'ENOENT',
      message: `file ${file}#1 does not exist`,
    });
  });

  it('a full device ends the stream with MediumFullError', async () => {
    const writer = await openWriteStream(parseMediaTarget('/dev/full'), { recordSize: 4096 });
    const err = await writer.write(randomBytes(10_000)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MediumFullError);
    expect(err).toMatchObject({ bytesWritten: 0, capacity: null, message: 'medium full: file /dev/full holds 0 B of this stream' });
  });

  it('reports a missing directory when creating', async () => {
    const file = path.join(dir, 'no', 'such', 'x.tvb');
    await expect(openWriteStream(parseMediaTarget(file))).rejects.toMatchObject({
      code: 'ENOENT',
      message: `cannot create file ${file}: ${path.dirname(file)} does not exist`,
    });
  });
});

describe('pipes', () => {
  it('move records in order and refuse what a pipe cannot do', async () => {
    const wire = new PassThrough();
    const out = PipeMedium.forWriting(wire, 4);
    const received: Buffer[] = [];
    wire.on('data', (chunk: Buffer) => received.push(chunk));
    await out.writeRecord(Buffer.from('abcd'));
    await out.writeRecord(Buffer.from('ef'));
    await expect(out.rewind()).rejects.toMatchObject({ code: 'ENOTSUP', message: 'standard output cannot be rewound' });
    await expect(out.writeFilemark()).rejects.toMatchObject({ code: 'ENOTSUP' });
    await out.close();
    wire.end();

    const input = new PassThrough();
    input.end(Buffer.concat(received));
    const medium = PipeMedium.forReading(input, 4);
    const buf = Buffer.alloc(4);
    const records: string[] = [];
    for (let n = await medium.readRecord(buf); n !== 'end'; n = await medium.readRecord(buf)) records.push(buf.toString('utf8', 0, n));
    expect(records.join('')).toBe('abcdef');
    await expect(medium.rewind()).rejects.toMatchObject({ code: 'ENOTSUP', message: 'standard input cannot be rewound' });
    await expect(medium.seekEndOfData()).rejects.toMatchObject({ code: 'ENOTSUP' });
    await medium.close();
  });

  it('report a reader that went away', async () => {
    const wire = new PassThrough();
    wire.destroy();
    const out = PipeMedium.forWriting(wire, 4);
    await expect(out.writeRecord(Buffer.from('abcd'))).rejects.toBeInstanceOf(MediaError);
    await out.close();
  });
});

describe('plain file direct writes', () => {
  it('a stream of 4 KiB multiples goes through O_DIRECT and reads back exactly, an odd tail through the page cache', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tv-media-direct-'));
    try {
      const target = parseMediaTarget(path.join(dir, 'direct.tvs'));
      const data = randomBytes(9 * 1024 * 1024 + 4096 + 123); // 4 MiB records, then a 1 MiB + 4219-byte tail
      const w = await openWriteStream(target);
      for (let o = 0; o < data.length; o += 700_000) await w.write(data.subarray(o, Math.min(data.length, o + 700_000)));
      expect(await w.finish()).toMatchObject({ bytes: data.length });
      expect(fs.readFileSync(path.join(dir, 'direct.tvs')).equals(data)).toBe(true);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
