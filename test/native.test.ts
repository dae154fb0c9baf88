import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../src/native/index.js';

const addonPath = fileURLToPath(new URL('../build/Release/thinvault_native.node', import.meta.url));
const { O_RDWR, O_RDONLY, O_CREAT, O_TRUNC } = fs.constants;

// ---- a tiny bitwise CRC32C reference ---------------------------------------------------------------------

function refUpdate(state: number, data: Uint8Array): number {
  let c = state >>> 0;
  for (let i = 0; i < data.length; i++) {
    c ^= data[i]!;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return c >>> 0;
}

function refCrc32c(data: Uint8Array, crc = 0): number {
  return ~refUpdate(~crc >>> 0, data) >>> 0;
}

const implementations = native.crc32cImplementations();

function allCrcs(data: Uint8Array, crc?: number): number[] {
  return [
    native.crc32c(data, crc),
    native.crc32cPortable(data, crc),
    ...implementations.map((impl) => native.crc32cWith(impl, data, crc)),
  ];
}

describe('crc32c', () => {
  it('reports an implementation that matches the CPU', () => {
    const impl = native.crc32cImplementation();
    expect(['sse42-pclmul', 'sse42', 'portable']).toContain(impl);
    expect(implementations[0]).toBe(impl);
    expect(implementations).toContain('portable');
    const cpuinfo = fs.existsSync('/proc/cpuinfo') ? fs.readFileSync('/proc/cpuinfo', 'utf8') : '';
    const flags = new Set((/^flags\s*:(.*)$/m.exec(cpuinfo)?.[1] ?? '').trim().split(/\s+/));
    if (process.arch === 'x64' && flags.has('sse4_2') && flags.has('pclmulqdq')) expect(impl).toBe('sse42-pclmul');
    if (process.arch !== 'x64') expect(impl).toBe('portable');
  });

  it('matches the check value and the RFC 3720 B.4 vectors', () => {
    const vectors: Array<[Uint8Array, number]> = [
      [Buffer.from('123456789'), 0xe3069283],
      [new Uint8Array(32), 0x8a9136aa],
      [new Uint8Array(32).fill(0xff), 0x62a8ab43],
      [Uint8Array.from({ length: 32 }, (_, i) => i), 0x46dd794e],
      [Uint8Array.from({ length: 32 }, (_, i) => 31 - i), 0x113fdb5c],
      // iSCSI SCSI Read (10) command PDU
      [
        Uint8Array.from([
          0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00,
          0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
          0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ]),
        0xd9963a56,
      ],
      [new Uint8Array(0), 0],
    ];
    for (const [data, want] of vectors) {
      expect(refCrc32c(data)).toBe(want);
      for (const got of allCrcs(data)) expect(got).toBe(want);
    }
  });

  it('agrees with the bitwise reference for every length 0..5000 at random offsets', () => {
    const maxLen = 5000;
    const buf = randomBytes(maxLen + 64);
    // prefix states per start offset: state[o][L] = register after buf[o .. o+L)
    const offsets = 16;
    const prefix: Uint32Array[] = [];
    for (let o = 0; o < offsets; o++) {
      const s = new Uint32Array(maxLen + 1);
      let c = 0xffffffff;
      s[0] = c;
      for (let i = 0; i < maxLen; i++) {
        c ^= buf[o + i]!;
        for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
        s[i + 1] = c >>> 0;
      }
      prefix.push(s);
    }
    for (let len = 0; len <= maxLen; len++) {
      const o = Math.floor(Math.random() * offsets);
      const view = buf.subarray(o, o + len);
      const want = ~prefix[o]![len]! >>> 0;
      const got = allCrcs(view);
      if (got.some((g) => g !== want)) {
        throw new Error(`length ${len} offset ${o}: want ${want.toString(16)}, got ${got.map((g) => g.toString(16))}`);
      }
    }
  });

  it('agrees across implementations on multi-MB buffers and unaligned views', () => {
    const big = randomBytes(9 * 1024 * 1024 + 13);
    const want = refCrc32c(big.subarray(5, 2 * 1024 * 1024 + 5));
    for (const got of allCrcs(big.subarray(5, 2 * 1024 * 1024 + 5))) expect(got).toBe(want);
    for (const [start, end] of [
      [0, big.length],
      [1, big.length - 1],
      [7, 8 * 1024 * 1024 + 3],
      [4096, 4096 + 3 * 4096 * 5 + 17],
    ] as const) {
      const v = big.subarray(start, end);
      const all = allCrcs(v);
      expect(new Set(all).size).toBe(1);
    }
  });

  it('chains: crc32c(b, crc32c(a)) === crc32c(a + b)', () => {
    const data = randomBytes(200_000);
    for (let trial = 0; trial < 200; trial++) {
      const len = trial < 100 ? Math.floor(Math.random() * 300) : Math.floor(Math.random() * data.length);
      const cut = Math.floor(Math.random() * (len + 1));
      const whole = data.subarray(0, len);
      const a = whole.subarray(0, cut);
      const b = whole.subarray(cut);
      const want = native.crc32cPortable(whole);
      expect(native.crc32c(b, native.crc32c(a))).toBe(want);
      expect(native.crc32cPortable(b, native.crc32cPortable(a))).toBe(want);
      for (const impl of implementations) expect(native.crc32cWith(impl, b, native.crc32cWith(impl, a))).toBe(want);
    }
    // three-way chain, and the signed form of a crc is accepted
    const x = Buffer.from('1234'), y = Buffer.from('56'), z = Buffer.from('789');
    expect(native.crc32c(z, native.crc32c(y, native.crc32c(x)))).toBe(0xe3069283);
    const c = native.crc32c(x);
    expect(native.crc32c(y, c | 0)).toBe(native.crc32c(y, c));
  });

  it('returns an unsigned 32-bit number and accepts any ArrayBufferView', () => {
    for (let i = 0; i < 50; i++) {
      const v = native.crc32c(randomBytes(64));
      expect(Number.isInteger(v) && v >= 0 && v <= 0xffffffff).toBe(true);
    }
    const bytes = randomBytes(64);
    const want = native.crc32c(bytes);
    const ab = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + 64);
    // declared as Uint8Array; other views are accepted too
    const asBytes = (v: ArrayBufferView): Uint8Array => v as unknown as Uint8Array;
    expect(native.crc32c(asBytes(new Float64Array(ab)))).toBe(want);
    expect(native.crc32c(asBytes(new Uint16Array(ab, 2, 31)))).toBe(native.crc32c(bytes.subarray(2, 64)));
    expect(native.crc32c(asBytes(new DataView(ab, 8, 8)))).toBe(native.crc32c(bytes.subarray(8, 16)));
  });

  it('validates its arguments', () => {
    const buf = Buffer.alloc(8);
    expect(() => native.crc32c(null as never)).toThrow(TypeError);
    expect(() => native.crc32c('abc' as never)).toThrow(TypeError);
    expect(() => native.crc32c([1, 2, 3] as never)).toThrow(TypeError);
    expect(() => native.crc32c(buf, 'x' as never)).toThrow(TypeError);
    expect(() => native.crc32c(buf, 2 ** 32)).toThrow(RangeError);
    expect(() => native.crc32c(buf, 1.5)).toThrow(RangeError);
    expect(() => native.crc32c(buf, NaN)).toThrow(RangeError);
    expect(() => native.crc32cPortable({} as never)).toThrow(TypeError);
    expect(() => native.crc32cWith('nope', buf)).toThrow(TypeError);
    expect(native.crc32c(buf, undefined)).toBe(native.crc32c(buf));
  });

  it('can be forced to the portable implementation with THINVAULT_CRC32C', () => {
    const script = `const n = require(${JSON.stringify(addonPath)});
      console.log(n.crc32cImplementation(), n.crc32c(Buffer.from('123456789')))`;
    const r = spawnSync(process.execPath, ['-e', script], {
      env: { ...process.env, THINVAULT_CRC32C: 'portable' },
      encoding: 'utf8',
    });
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe(`portable ${0xe3069283}`);
  });
});

// ---- file I/O ------------------------------------------------------------------------------------------

let dir = '';
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinvault-native-'));
});
afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

async function openTemp(name: string, extra = 0): Promise<{ fd: number; file: string }> {
  const file = path.join(dir, name);
  const fd = await native.open(file, O_RDWR | O_CREAT | O_TRUNC | extra, 0o644);
  return { fd, file };
}

describe('allocAligned', () => {
  it('returns zero-filled buffers at the requested alignment', () => {
    for (const [size, alignment] of [
      [0, undefined],
      [1, undefined],
      [4096, undefined],
      [100_000, 512],
      [1 << 20, 65536],
      [3, 2],
      [10, 1],
    ] as const) {
      const b = native.allocAligned(size, alignment);
      expect(Buffer.isBuffer(b)).toBe(true);
      expect(b.length).toBe(size);
      expect(b.every((x) => x === 0)).toBe(true);
      if (size > 0) expect(native.bufferAlignment(b)).toBeGreaterThanOrEqual(alignment ?? 4096);
    }
    const b = native.allocAligned(8192);
    expect(native.bufferAlignment(b.subarray(1))).toBe(1);
    expect(native.bufferAlignment(b.subarray(512))).toBe(512);
    b.fill(7);
    expect(b[8191]).toBe(7);
  });

  it('validates its arguments', () => {
    expect(() => native.allocAligned(-1)).toThrow(RangeError);
    expect(() => native.allocAligned(1.5)).toThrow(RangeError);
    expect(() => native.allocAligned('4096' as never)).toThrow(TypeError);
    expect(() => native.allocAligned(4096, 3000)).toThrow(RangeError);
    expect(() => native.allocAligned(4096, 0)).toThrow(RangeError);
    expect(() => native.allocAligned(4096, 2 ** 31)).toThrow(RangeError);
    expect(() => native.allocAligned(2 ** 32 + 1)).toThrow(RangeError);
  });
});

describe('pread / pwrite / preadv / pwritev', () => {
  it('round-trips data and stops at EOF', async () => {
    const { fd, file } = await openTemp('rw');
    try {
      const data = randomBytes(300_001);
      expect(await native.pwrite(fd, data, 12345)).toBe(data.length);
      expect(fs.statSync(file).size).toBe(12345 + data.length);
      const back = Buffer.alloc(data.length);
      expect(await native.pread(fd, back, 12345)).toBe(data.length);
      expect(back.equals(data)).toBe(true);
      // the gap before reads as zeros; a read across EOF is short; past EOF reads 0
      const head = Buffer.alloc(12345, 1);
      expect(await native.pread(fd, head, 0)).toBe(12345);
      expect(head.every((x) => x === 0)).toBe(true);
      const tail = Buffer.alloc(1000);
      expect(await native.pread(fd, tail, 12345 + data.length - 10)).toBe(10);
      expect(tail.subarray(0, 10).equals(data.subarray(data.length - 10))).toBe(true);
      expect(await native.pread(fd, tail, 10_000_000)).toBe(0);
      expect(await native.pread(fd, Buffer.alloc(0), 0)).toBe(0);
      expect(await native.pwrite(fd, Buffer.alloc(0), 0)).toBe(0);
      // subarray views write/read the right bytes
      const view = data.subarray(100, 200);
      await native.pwrite(fd, view, 0);
      const got = Buffer.alloc(100);
      await native.pread(fd, got.subarray(0, 100), 0);
      expect(got.equals(view)).toBe(true);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('preadv/pwritev handle more buffers than IOV_MAX, empty buffers and odd sizes', async () => {
    const { fd, file } = await openTemp('vec');
    try {
      const count = native.constants.IOV_MAX * 2 + 37;
      const bufs: Buffer[] = [];
      for (let i = 0; i < count; i++) bufs.push(randomBytes(i % 7 === 0 ? 0 : 1 + ((i * 37) % 700)));
      const total = bufs.reduce((s, b) => s + b.length, 0);
      expect(await native.pwritev(fd, bufs, 4096)).toBe(total);
      const onDisk = fs.readFileSync(file);
      expect(onDisk.length).toBe(4096 + total);
      expect(onDisk.subarray(4096).equals(Buffer.concat(bufs))).toBe(true);

      const outs = bufs.map((b) => Buffer.alloc(b.length));
      expect(await native.preadv(fd, outs, 4096)).toBe(total);
      expect(Buffer.concat(outs).equals(Buffer.concat(bufs))).toBe(true);

      // across EOF: the byte count tells how much was read
      const a = Buffer.alloc(100), b = Buffer.alloc(100);
      expect(await native.preadv(fd, [a, b], 4096 + total - 150)).toBe(150);
      expect(Buffer.concat([a, b.subarray(0, 50)]).equals(onDisk.subarray(onDisk.length - 150))).toBe(true);
      expect(await native.preadv(fd, [], 0)).toBe(0);
      expect(await native.pwritev(fd, [], 0)).toBe(0);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('runs many operations concurrently on temporary buffers', async () => {
    const { fd } = await openTemp('many');
    try {
      const block = 4096;
      const n = 256;
      await Promise.all(
        Array.from({ length: n }, (_, i) => native.pwrite(fd, Buffer.alloc(block, i & 0xff), i * block)),
      );
      const results = await Promise.all(
        Array.from({ length: n }, async (_, i) => {
          const b = Buffer.alloc(block);
          await native.pread(fd, b, i * block);
          return b.every((x) => x === (i & 0xff));
        }),
      );
      expect(results.every(Boolean)).toBe(true);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('read/write do one call at the current position', async () => {
    const file = path.join(dir, 'seq');
    const fd = fs.openSync(file, 'w+');
    try {
      expect(await native.write(fd, Buffer.from('hello '))).toBe(6);
      expect(await native.write(fd, Buffer.from('world'))).toBe(5);
      expect(fs.readFileSync(file, 'utf8')).toBe('hello world');
      const fd2 = fs.openSync(file, 'r');
      try {
        const b = Buffer.alloc(5);
        expect(await native.read(fd2, b)).toBe(5);
        expect(b.toString()).toBe('hello');
        const rest = Buffer.alloc(100);
        expect(await native.read(fd2, rest)).toBe(6);
        expect(await native.read(fd2, rest)).toBe(0);
      } finally {
        fs.closeSync(fd2);
      }
    } finally {
      fs.closeSync(fd);
    }
  });

  it('O_DIRECT works with aligned buffers', async () => {
    let opened: { fd: number; file: string };
    try {
      opened = await openTemp('direct', native.constants.O_DIRECT);
    } catch (e) {
      // a filesystem without O_DIRECT (tmpfs) rejects the open with EINVAL: nothing to test there
      expect((e as NodeJS.ErrnoException).code).toBe('EINVAL');
      return;
    }
    const { fd, file } = opened;
    try {
      const buf = native.allocAligned(1 << 20);
      randomBytes(buf.length).copy(buf);
      expect(await native.pwrite(fd, buf, 0)).toBe(buf.length);
      expect(await native.pwrite(fd, buf.subarray(0, 8192), 3 * 4096 + (1 << 20))).toBe(8192);
      await native.fdatasync(fd);
      const back = native.allocAligned(1 << 20);
      expect(await native.pread(fd, back, 0)).toBe(buf.length);
      expect(back.equals(buf)).toBe(true);
      const v1 = native.allocAligned(4096), v2 = native.allocAligned(8192);
      expect(await native.preadv(fd, [v1, v2], 4096)).toBe(12288);
      expect(Buffer.concat([v1, v2]).equals(buf.subarray(4096, 4096 + 12288))).toBe(true);
      // an unaligned buffer is refused by the kernel
      const unaligned = native.allocAligned(8192).subarray(1, 4097);
      await expect(native.pread(fd, unaligned, 0)).rejects.toMatchObject({ code: 'EINVAL', syscall: 'pread' });
      // a file whose size is not a multiple of the block: the read ends at EOF
      fs.truncateSync(file, 5000);
      const whole = native.allocAligned(8192);
      expect(await native.pread(fd, whole, 0)).toBe(5000);
      expect(whole.subarray(0, 5000).equals(buf.subarray(0, 5000))).toBe(true);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('fdatasync and fsync resolve to undefined', async () => {
    const { fd } = await openTemp('sync');
    try {
      await native.pwrite(fd, Buffer.from('x'), 0);
      expect(await native.fdatasync(fd)).toBeUndefined();
      expect(await native.fsync(fd)).toBeUndefined();
    } finally {
      fs.closeSync(fd);
    }
  });
});

describe('fallocate / punchHole / zeroRange', () => {
  const MiB = 1 << 20;

  async function exercise(where: string, name: string): Promise<void> {
    const file = path.join(where, name);
    const fd = await native.open(file, O_RDWR | O_CREAT | O_TRUNC, 0o644);
    try {
      await native.fallocate(fd, 0, 2 * MiB);
      let st = fs.fstatSync(fd);
      expect(st.size).toBe(2 * MiB);
      expect(st.blocks * 512).toBeGreaterThanOrEqual(2 * MiB);
      const zero = Buffer.alloc(2 * MiB, 1);
      expect(await native.pread(fd, zero, 0)).toBe(2 * MiB);
      expect(zero.every((x) => x === 0)).toBe(true);

      const data = randomBytes(2 * MiB);
      await native.pwrite(fd, data, 0);
      await native.fsync(fd);
      const before = fs.fstatSync(fd).blocks;

      await native.punchHole(fd, 0, MiB);
      st = fs.fstatSync(fd);
      expect(st.size).toBe(2 * MiB);
      expect(st.blocks).toBeLessThan(before);
      expect(st.blocks * 512).toBeLessThanOrEqual(before * 512 - MiB + 65536);
      const back = Buffer.alloc(2 * MiB);
      await native.pread(fd, back, 0);
      expect(back.subarray(0, MiB).every((x) => x === 0)).toBe(true);
      expect(back.subarray(MiB).equals(data.subarray(MiB))).toBe(true);

      // zeroRange: unaligned edges, the rest intact, size kept, also past EOF
      await native.zeroRange(fd, MiB + 1000, 70_000);
      await native.pread(fd, back, 0);
      expect(back.subarray(MiB, MiB + 1000).equals(data.subarray(MiB, MiB + 1000))).toBe(true);
      expect(back.subarray(MiB + 1000, MiB + 71_000).every((x) => x === 0)).toBe(true);
      expect(back.subarray(MiB + 71_000).equals(data.subarray(MiB + 71_000))).toBe(true);
      await native.zeroRange(fd, 2 * MiB - 10, MiB);
      expect(fs.fstatSync(fd).size).toBe(2 * MiB);
      await native.pread(fd, back, 0);
      expect(back.subarray(2 * MiB - 10).every((x) => x === 0)).toBe(true);
      expect(back[2 * MiB - 11]).toBe(data[2 * MiB - 11]);

      // length 0 is a no-op; fallocate past the end extends the file
      await native.fallocate(fd, 0, 0);
      await native.punchHole(fd, 0, 0);
      await native.zeroRange(fd, 0, 0);
      await native.fallocate(fd, 3 * MiB, 4096);
      expect(fs.fstatSync(fd).size).toBe(3 * MiB + 4096);
    } finally {
      fs.closeSync(fd);
    }
  }

  it('allocates, punches and zeroes on the temp filesystem', async () => {
    await exercise(dir, 'falloc');
  });

  it('zeroRange falls back on tmpfs (no FALLOC_FL_ZERO_RANGE there)', async (ctx) => {
    if (!fs.existsSync('/dev/shm')) ctx.skip();
    const shm = fs.mkdtempSync('/dev/shm/thinvault-native-');
    try {
      await exercise(shm, 'falloc');
    } finally {
      fs.rmSync(shm, { recursive: true, force: true });
    }
  });

  it('reports errors and validates ranges', async () => {
    const { fd } = await openTemp('falloc-err');
    try {
      expect(() => native.fallocate(fd, 0, -5)).toThrow(RangeError);
      expect(() => native.punchHole(fd, -1, 5)).toThrow(RangeError);
      expect(() => native.zeroRange(fd, 2 ** 53, 5)).toThrow(RangeError);
      expect(() => native.zeroRange(fd, 2 ** 52, 2 ** 52)).toThrow(RangeError);
    } finally {
      fs.closeSync(fd);
    }
    const ro = fs.openSync(path.join(dir, 'falloc-err'), 'r');
    try {
      await expect(native.fallocate(ro, 0, 4096)).rejects.toMatchObject({ code: 'EBADF', syscall: 'fallocate' });
    } finally {
      fs.closeSync(ro);
    }
  });
});

describe('preadNoWait', () => {
  it('returns cached data synchronously, -1 when it would block', async () => {
    const { fd } = await openTemp('nowait');
    try {
      const data = randomBytes(64 * 1024);
      await native.pwrite(fd, data, 0);
      const b = Buffer.alloc(data.length);
      const n = native.preadNoWait(fd, b, 0);
      expect(n === data.length || n === -1).toBe(true); // just written: normally cached
      if (n === data.length) expect(b.equals(data)).toBe(true);
      expect(native.preadNoWait(fd, Buffer.alloc(0), 0)).toBe(0);
      // short (EOF) -> -1, the caller falls back to pread
      expect(native.preadNoWait(fd, Buffer.alloc(100), data.length - 50)).toBe(-1);
      const r = native.preadNoWait(fd, Buffer.alloc(4096), 8192);
      expect(r === 4096 || r === -1).toBe(true);
    } finally {
      fs.closeSync(fd);
    }
    expect(() => native.preadNoWait(-1, Buffer.alloc(1), 0)).toThrow(RangeError);
    expect(() => native.preadNoWait(2 ** 30, Buffer.alloc(1), 0)).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });
});

describe('flock', () => {
  it('excludes other open file descriptions and other processes', async () => {
    const file = path.join(dir, 'lock');
    const fd1 = await native.open(file, O_RDWR | O_CREAT, 0o644);
    const fd2 = await native.open(file, O_RDWR, 0);
    const childTry = (): string => {
      const script = `const n = require(${JSON.stringify(addonPath)});
        const fd = require('fs').openSync(${JSON.stringify(file)}, 'r');
        process.stdout.write(String(n.flock(fd, 'exclusive', true)));`;
      const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
      expect(r.status).toBe(0);
      return r.stdout;
    };
    try {
      expect(native.flock(fd1, 'exclusive', true)).toBe(true);
      expect(native.flock(fd2, 'exclusive', true)).toBe(false);
      expect(native.flock(fd2, 'shared', true)).toBe(false);
      expect(childTry()).toBe('false');
      expect(native.flock(fd1, 'unlock', false)).toBe(true);
      expect(native.flock(fd2, 'shared', true)).toBe(true);
      expect(native.flock(fd1, 'shared', true)).toBe(true);
      expect(childTry()).toBe('false');
      expect(native.flock(fd1, 'unlock', false)).toBe(true);
      expect(native.flock(fd2, 'unlock', false)).toBe(true);
      expect(childTry()).toBe('true');
    } finally {
      fs.closeSync(fd1);
      fs.closeSync(fd2);
    }
    expect(() => native.flock(fd1, 'bogus' as never, true)).toThrow(TypeError);
    expect(() => native.flock(fd1, 'exclusive', 'yes' as never)).toThrow(TypeError);
    expect(() => native.flock(2 ** 30, 'exclusive', true)).toThrow(
      expect.objectContaining({ code: 'EBADF', syscall: 'flock' }),
    );
  });
});

describe('errors', () => {
  it('rejects with errno details on a closed fd', async () => {
    const fd = fs.openSync(path.join(dir, 'closed'), 'w');
    fs.closeSync(fd);
    const err = await native.pread(fd, Buffer.alloc(10), 0).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err).toMatchObject({ code: 'EBADF', errno: 9, syscall: 'pread', message: 'pread: Bad file descriptor' });
    await expect(native.pwrite(2 ** 30, Buffer.alloc(1), 0)).rejects.toMatchObject({ code: 'EBADF', syscall: 'pwrite' });
    await expect(native.pwritev(2 ** 30, [Buffer.alloc(1)], 0)).rejects.toMatchObject({ code: 'EBADF', syscall: 'pwritev' });
    await expect(native.fdatasync(2 ** 30)).rejects.toMatchObject({ code: 'EBADF', syscall: 'fdatasync' });
    await expect(native.fsync(2 ** 30)).rejects.toMatchObject({ code: 'EBADF', syscall: 'fsync' });
  });

  it('open reports ENOENT with the path', async () => {
    const missing = path.join(dir, 'no', 'such', 'file');
    await expect(native.open(missing, O_RDONLY, 0)).rejects.toMatchObject({
      code: 'ENOENT',
      syscall: 'open',
      path: missing,
    });
  });

  it('writing to a read-only fd is EBADF', async () => {
    const file = path.join(dir, 'ro');
    fs.writeFileSync(file, 'abc');
    const fd = await native.open(file, O_RDONLY, 0);
    try {
      await expect(native.pwrite(fd, Buffer.from('x'), 0)).rejects.toMatchObject({ code: 'EBADF' });
    } finally {
      fs.closeSync(fd);
    }
  });

  it('tape ioctls on things that are not tapes give ENOTTY', async () => {
    const { fd } = await openTemp('not-a-tape');
    try {
      await expect(native.tapeOp(fd, native.tapeOps.MTREW!, 1)).rejects.toMatchObject({
        code: 'ENOTTY',
        syscall: 'ioctl',
      });
      await expect(native.tapeStatus(fd)).rejects.toMatchObject({ code: 'ENOTTY' });
    } finally {
      fs.closeSync(fd);
    }
    const nul = fs.openSync('/dev/null', 'r');
    try {
      await expect(native.tapeStatus(nul)).rejects.toMatchObject({ code: 'ENOTTY', errno: 25 });
    } finally {
      fs.closeSync(nul);
    }
  });

  it('exposes the tape operation numbers and flags', () => {
    expect(native.tapeOps).toMatchObject({ MTFSF: 1, MTBSF: 2, MTFSR: 3, MTBSR: 4, MTWEOF: 5, MTREW: 6, MTOFFL: 7 });
    expect(native.tapeOps).toMatchObject({ MTNOP: 8, MTEOM: 12, MTSETBLK: 20, MTWEOFI: 35 });
    if (process.platform === 'linux' && process.arch === 'x64') {
      expect(native.constants.O_DIRECT).toBe(0o40000);
      expect(native.constants.O_NOATIME).toBe(0o1000000);
    }
    expect(Object.isFrozen(native.tapeOps)).toBe(true);
  });

  it('throws TypeError/RangeError on bad arguments instead of crashing', async () => {
    const { fd } = await openTemp('args');
    const buf = Buffer.alloc(16);
    try {
      const bad: Array<[() => unknown, ErrorConstructor]> = [
        [() => native.pread('3' as never, buf, 0), TypeError],
        [() => native.pread(fd, 'abc' as never, 0), TypeError],
        [() => native.pread(fd, buf, -1), RangeError],
        [() => native.pread(fd, buf, 1.5), RangeError],
        [() => native.pread(fd, buf, 2 ** 53), RangeError],
        [() => native.pread(fd, buf, undefined as never), TypeError],
        [() => native.pread(-1, buf, 0), RangeError],
        [() => native.pread(2 ** 31, buf, 0), RangeError],
        [() => (native.pread as (...a: unknown[]) => unknown)(), TypeError],
        [() => native.pwrite(fd, {} as never, 0), TypeError],
        [() => native.pwrite(fd, null as never, 0), TypeError],
        [() => native.preadv(fd, buf as never, 0), TypeError],
        [() => native.preadv(fd, [buf, 'x' as never], 0), TypeError],
        [() => native.pwritev(fd, [buf, 7 as never], 0), TypeError],
        [() => native.open(123 as never, O_RDONLY, 0), TypeError],
        [() => native.open('a\0b', O_RDONLY, 0), TypeError],
        [() => native.open('x', 'r' as never, 0), TypeError],
        [() => native.open('x', O_RDONLY, 0o100000), RangeError],
        [() => native.fdatasync(null as never), TypeError],
        [() => native.fallocate(fd, '0' as never, 1), TypeError],
        [() => native.tapeOp(fd, 'rewind' as never, 1), TypeError],
        [() => native.tapeOp(fd, 6, 2 ** 40), RangeError],
        [() => native.tapeStatus(undefined as never), TypeError],
        [() => native.preadNoWait(fd, 5 as never, 0), TypeError],
        [() => native.read(fd, 'x' as never), TypeError],
        [() => native.write(fd, undefined as never), TypeError],
        [() => native.bufferAlignment(3 as never), TypeError],
      ];
      for (const [fn, type] of bad) {
        expect(fn).toThrow(type);
      }
      // the codes mirror Node's
      expect(() => native.pread(fd, buf, -1)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
      expect(() => native.pread(fd, 'x' as never, 0)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    } finally {
      fs.closeSync(fd);
    }
  });
});
