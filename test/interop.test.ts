/**
 * Pool volumes through real NBD clients: nbdinfo (incl. --map), qemu-io, qemu-img convert/compare, nbdcopy.
 * The daemon is the real `thinvault serve` process.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { startDaemon, tool, tempDir, type Daemon } from './helpers/daemon.js';

const MiB = 1024 * 1024;

describe('interop with libnbd and qemu clients on a pool volume', () => {
  let d: Daemon;
  let work: string;
  beforeAll(async () => {
    d = await startDaemon();
    work = tempDir('tv-interop-');
    for (const [name, size] of [['vol0', '64MiB'], ['copy', '64MiB'], ['conv', '64MiB'], ['odd', '1000448']] as const) {
      const r = await d.cli(['volume', 'create', name, '--size', size]);
      expect(r.code, r.stderr).toBe(0);
    }
  });
  afterAll(async () => {
    expect(await d.stop()).toBe(0);
    fs.rmSync(work, { recursive: true, force: true });
  });

  it('nbdinfo lists the exports and shows size, flags and block sizes', async () => {
    const list = await tool('nbdinfo', ['--list', '--json', `nbd+unix://?socket=${d.nbdSocket}`]);
    const names = JSON.parse(list).exports.map((e: { 'export-name': string }) => e['export-name']);
    expect(names).toEqual(expect.arrayContaining(['vol0', 'copy', 'conv', 'odd']));
    const info = JSON.parse(await tool('nbdinfo', ['--json', d.uri('vol0')]));
    const exp = info.exports[0];
    expect(exp['export-size']).toBe(64 * MiB);
    expect(exp['is_read_only']).toBe(false);
    expect(exp['can_flush']).toBe(true);
    expect(exp['can_fua']).toBe(true);
    expect(exp['can_trim']).toBe(true);
    expect(exp['can_zero']).toBe(true);
    expect(exp['can_multi_conn']).toBe(true);
    expect(exp['block_size_maximum']).toBe(32 * MiB);
    expect(info.protocol).toBe('newstyle-fixed');
  });

  it('qemu-io writes patterns that read back, discards and zeroes, and nbdinfo --map shows the holes', async () => {
    const u = d.uri('vol0');
    await tool('qemu-io', ['-f', 'raw', u,
      '-c', 'write -P 0xa1 0 1M',
      '-c', 'write -P 0xb2 3M 100k',         // partial chunks at both ends
      '-c', 'write -P 0xc3 10M 4k',
      '-c', 'aio_write -P 0xd4 20M 64k', '-c', 'aio_write -P 0xd5 21M 64k', '-c', 'aio_flush',
      '-c', 'write -P 0xe6 -f 30M 1M',       // FUA
      '-c', 'flush']);
    await tool('qemu-io', ['-f', 'raw', u,
      '-c', 'read -P 0xa1 0 1M', '-c', 'read -P 0 1M 2M', '-c', 'read -P 0xb2 3M 100k', '-c', 'read -P 0 3172k 28k',
      '-c', 'read -P 0xc3 10M 4k', '-c', 'read -P 0 10244k 60k', '-c', 'read -P 0xd4 20M 64k', '-c', 'read -P 0xd5 21M 64k',
      '-c', 'read -P 0xe6 30M 1M']);
    const map = JSON.parse(await tool('nbdinfo', ['--map', '--json', u]));
    const dataRanges = map.filter((e: { type: number }) => (e.type & 1) === 0).map((e: { offset: number; length: number }) => [e.offset, e.length]);
    expect(dataRanges).toEqual([[0, 1 * MiB], [3 * MiB, 128 * 1024], [10 * MiB, 64 * 1024], [20 * MiB, 64 * 1024], [21 * MiB, 64 * 1024], [30 * MiB, 1 * MiB]]);

    // discard a whole chunk and part of one; write -z with and without unmap
    await tool('qemu-io', ['-f', 'raw', u, '-c', 'discard 0 64k', '-c', 'discard 100k 10k', '-c', 'write -z 30M 64k', '-c', 'write -z -u 20M 64k', '-c', 'flush']);
    await tool('qemu-io', ['-f', 'raw', u, '-c', 'read -P 0 0 64k', '-c', 'read -P 0xa1 64k 36k', '-c', 'read -P 0 100k 10k',
      '-c', 'read -P 0xa1 110k 914k', '-c', 'read -P 0 30M 64k', '-c', 'read -P 0xe6 30784k 960k', '-c', 'read -P 0 20M 64k']);
    const map2 = JSON.parse(await tool('nbdinfo', ['--map', '--json', u]));
    const holeAt = (off: number) => map2.some((e: { offset: number; length: number; type: number }) => e.offset <= off && off < e.offset + e.length && (e.type & 3) === 3);
    expect(holeAt(0)).toBe(true); // the discarded chunk is unallocated again
    expect(holeAt(20 * MiB)).toBe(true); // write -z -u unmaps
  });

  it('serves a size that is not a multiple of the chunk size, and rejects I/O past the end', async () => {
    const u = d.uri('odd');
    await tool('qemu-io', ['-f', 'raw', u, '-c', 'write -P 0x77 999424 1024', '-c', 'read -P 0x77 999424 1024']);
    await expect(tool('qemu-io', ['-f', 'raw', u, '-c', 'read 999424 2048'])).rejects.toThrow(/Input\/output error|Invalid argument|out of range|beyond/i);
  });

  it('qemu-img convert into and out of a volume, then qemu-img compare', async () => {
    const src = path.join(work, 'src.raw');
    const fd = fs.openSync(src, 'w');
    fs.ftruncateSync(fd, 64 * MiB);
    for (let i = 0; i < 40; i++) {
      const off = crypto.randomInt(0, 64 * MiB - 200_000);
      fs.writeSync(fd, crypto.randomBytes(crypto.randomInt(1, 200_000)), 0, undefined, off);
    }
    fs.closeSync(fd);
    await tool('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, d.uri('conv')]);
    await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, d.uri('conv')]);
    const back = path.join(work, 'back.qcow2');
    await tool('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', d.uri('conv'), back]);
    await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', src, back]);
  });

  it('nbdcopy both ways with multi-conn and flush', async () => {
    const src = path.join(work, 'nbdcopy-src.raw');
    fs.writeFileSync(src, crypto.randomBytes(48 * MiB));
    await tool('nbdcopy', ['--flush', '--connections=4', src, d.uri('copy')]);
    const out = path.join(work, 'nbdcopy-out.raw');
    await tool('nbdcopy', ['--connections=4', d.uri('copy'), out]);
    const a = fs.readFileSync(src);
    const b = fs.readFileSync(out);
    expect(b.length).toBe(64 * MiB);
    expect(b.subarray(0, 48 * MiB).equals(a)).toBe(true);
    expect(b.subarray(48 * MiB).every((x) => x === 0)).toBe(true);
    // nbd -> nbd
    await tool('nbdcopy', ['--flush', d.uri('copy'), d.uri('conv')]);
    await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', d.uri('copy'), d.uri('conv')]);
  });
});
