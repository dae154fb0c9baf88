/**
 * The NBD server against real clients: nbdinfo, qemu-io, qemu-img, nbdcopy, nbdsh (libnbd python).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { MiB, pattern, run, runOk, startServer, type TestServer } from './helpers/nbd-harness.js';

// real clients and child processes: generous limits for a loaded machine
vi.setConfig({ testTimeout: 60_000, hookTimeout: 180_000 });

let t: TestServer;

beforeAll(async () => {
  t = await startServer(
    [
      { name: 'disk', size: 64 * MiB, description: 'scratch disk' },
      { name: 'ro', size: 4 * MiB, readOnly: true, description: 'read only' },
      { name: 'plain', size: 8 * MiB, canTrim: false, canZero: false, canFastZero: false, canCache: false, canMultiConn: false },
      { name: 'copy', size: 48 * MiB },
      { name: 'multi', size: 32 * MiB, metaContexts: ['base:allocation', 'x-test:even-chunks'] },
      { name: 'aligned', size: 8 * MiB, blockSize: { minimum: 512, preferred: 65536, maximum: 4 * MiB } },
    ],
    { defaultExport: 'disk' },
  );
});

afterAll(async () => {
  await t?.close();
});

describe('nbdinfo', () => {
  it('lists every export with its description', async () => {
    const out = await runOk('nbdinfo', ['--list', '--json', t.unixUri('')]);
    const info = JSON.parse(out) as { exports: Array<{ 'export-name': string; description?: string }> };
    const names = info.exports.map((e) => e['export-name']).sort();
    expect(names).toEqual(['aligned', 'copy', 'disk', 'multi', 'plain', 'ro']);
    expect(info.exports.find((e) => e['export-name'] === 'disk')?.description).toBe('scratch disk');
  });

  it('reports size, flags and block sizes in --json', async () => {
    const disk = JSON.parse(await runOk('nbdinfo', ['--json', t.tcpUri('disk')])).exports[0];
    expect(disk['export-size']).toBe(64 * MiB);
    expect(disk.is_read_only).toBe(false);
    expect(disk.can_flush).toBe(true);
    expect(disk.can_fua).toBe(true);
    expect(disk.can_trim).toBe(true);
    expect(disk.can_zero).toBe(true);
    expect(disk.can_fast_zero).toBe(true);
    expect(disk.can_multi_conn).toBe(true);
    expect(disk.can_cache).toBe(true);
    expect(disk.can_df).toBe(true);
    expect(disk.block_size_maximum).toBe(32 * MiB);
    expect(disk.contexts).toContain('base:allocation');

    const ro = JSON.parse(await runOk('nbdinfo', ['--json', t.unixUri('ro')])).exports[0];
    expect(ro.is_read_only).toBe(true);
    expect(ro.can_trim).toBe(false);
    expect(ro.can_zero).toBe(false);

    const aligned = JSON.parse(await runOk('nbdinfo', ['--json', t.unixUri('aligned')])).exports[0];
    expect([aligned.block_size_minimum, aligned.block_size_preferred, aligned.block_size_maximum]).toEqual([512, 65536, 4 * MiB]);

    const multi = JSON.parse(await runOk('nbdinfo', ['--json', t.unixUri('multi')])).exports[0];
    expect(multi.contexts).toEqual(expect.arrayContaining(['base:allocation', 'x-test:even-chunks']));
  });

  it('serves the default export for the empty name and refuses unknown names', async () => {
    const def = JSON.parse(await runOk('nbdinfo', ['--json', t.unixUri('')])).exports[0];
    expect(def['export-size']).toBe(64 * MiB);
    const unknown = await run('nbdinfo', [t.unixUri('nosuch')]);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/nosuch/);
  });

  it('answers --can for each capability', async () => {
    const can = async (what: string, name: string): Promise<boolean> => {
      const r = await run('nbdinfo', ['--can', what, t.unixUri(name)]);
      if (r.code !== 0 && r.code !== 2) throw new Error(r.stderr);
      return r.code === 0;
    };
    for (const what of ['flush', 'fua', 'trim', 'zero', 'multi-conn', 'cache', 'fast-zero']) {
      expect(await can(what, 'disk'), what).toBe(true);
    }
    expect(await can('trim', 'plain')).toBe(false);
    expect(await can('zero', 'plain')).toBe(false);
    expect(await can('multi-conn', 'plain')).toBe(false);
    expect(await can('cache', 'plain')).toBe(false);
    expect(await can('flush', 'plain')).toBe(true);
    expect(await can('trim', 'ro')).toBe(false);
  });

  it('--map shows data where it was written and holes elsewhere', async () => {
    const uri = t.unixUri('disk');
    await runOk('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0x11 1M 128k', '-c', 'write -P 0x22 8M 64k']);
    const map = JSON.parse(await runOk('nbdinfo', ['--map', '--json', uri])) as Array<{ offset: number; length: number; type: number }>;
    const dataRanges = map.filter((e) => (e.type & 1) === 0).map((e) => [e.offset, e.length]);
    expect(dataRanges).toEqual([
      [1 * MiB, 128 * 1024],
      [8 * MiB, 64 * 1024],
    ]);
    const total = map.reduce((s, e) => s + e.length, 0);
    expect(total).toBe(64 * MiB);
    expect(map.filter((e) => e.type === 3).length).toBe(3);
  });

  it('--map of a second meta context', async () => {
    const out = JSON.parse(await runOk('nbdinfo', ['--map=x-test:even-chunks', '--json', t.unixUri('multi')])) as Array<{
      offset: number;
      length: number;
      type: number;
    }>;
    expect(out[0]).toMatchObject({ offset: 0, length: 65536, type: 1 });
    expect(out[1]).toMatchObject({ offset: 65536, length: 65536, type: 0 });
    expect(out.reduce((s, e) => s + e.length, 0)).toBe(32 * MiB);
  });
});

describe('qemu-io', () => {
  const io = (uri: string, ...cmds: string[]): Promise<string> =>
    runOk('qemu-io', ['-f', 'raw', uri, ...cmds.flatMap((c) => ['-c', c])]);

  it('writes and verifies patterns, discards and zeroes', async () => {
    const uri = t.unixUri('disk');
    await io(uri, 'write -P 0xab 0 1M', 'write -P 0xcd 1M 4k', 'write -P 0xef 12345 1000');
    await io(uri, 'read -P 0xab 0 12345', 'read -P 0xef 12345 1000', 'read -P 0xab 13345 1035231', 'read -P 0xcd 1M 4k');
    await io(uri, 'discard 0 64k', 'read -P 0 0 64k');
    await io(uri, 'write -z 128k 128k', 'read -P 0 128k 128k', 'read -P 0xab 256k 64k');
    await io(uri, 'write -z -u 512k 128k', 'read -P 0 512k 128k');
    // the verification itself works: the discarded start no longer matches
    const mismatch = await run('qemu-io', ['-f', 'raw', uri, '-c', 'read -P 0xab 0 1M']);
    expect(mismatch.stdout + mismatch.stderr).toMatch(/Pattern verification failed/);
  });

  it('pipelines aio writes and reads them back', async () => {
    const uri = t.tcpUri('disk');
    const writes = Array.from({ length: 32 }, (_, i) => `aio_write -P ${(i % 250) + 1} ${16 * MiB + i * 65536} 64k`);
    await io(uri, ...writes, 'aio_flush');
    const reads = Array.from({ length: 32 }, (_, i) => `read -P ${(i % 250) + 1} ${16 * MiB + i * 65536} 64k`);
    const out = await io(uri, ...reads);
    expect(out).not.toMatch(/failed/i);
  });

  it('gets EPERM writing a read-only export', async () => {
    const r = await run('qemu-io', ['-f', 'raw', '-r', t.unixUri('ro'), '-c', 'read -P 0 0 64k']);
    expect(r.code).toBe(0);
    const w = await run('qemu-io', ['-f', 'raw', t.unixUri('ro'), '-c', 'write -P 1 0 4k']);
    expect(`${w.stdout}${w.stderr}`).toMatch(/read-only|Operation not permitted|Permission denied/i);
  });
});

describe('qemu-img and nbdcopy', () => {
  it('qemu-img convert to and from the export, compare identical', async () => {
    const src = path.join(t.dir, 'src.raw');
    const img = Buffer.alloc(48 * MiB);
    pattern(3 * MiB, 7).copy(img, 1 * MiB);
    pattern(5 * MiB, 9).copy(img, 20 * MiB);
    fs.writeFileSync(src, img);
    const uri = t.unixUri('copy');
    await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, uri], 60_000);
    await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri], 60_000);
    const back = path.join(t.dir, 'back.raw');
    await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, back], 60_000);
    expect(fs.readFileSync(back).equals(img)).toBe(true);
    const exp = t.provider.exports.get('copy');
    expect(exp?.snapshot().equals(img)).toBe(true);
    // the all-zero parts were not allocated by a sparse-aware copy
    expect(exp?.chunks.size).toBeLessThan((48 * MiB) / 65536);
  });

  it('nbdcopy both ways with --flush, verified byte for byte', async () => {
    const src = path.join(t.dir, 'nbdcopy-src.raw');
    const img = Buffer.alloc(48 * MiB);
    pattern(10 * MiB, 3).copy(img, 0);
    pattern(2 * MiB, 4).copy(img, 40 * MiB);
    fs.writeFileSync(src, img);
    const uri = t.tcpUri('copy');
    await runOk('nbdcopy', ['--flush', src, uri], 60_000);
    const dst = path.join(t.dir, 'nbdcopy-dst.raw');
    await runOk('nbdcopy', ['--flush', uri, dst], 60_000);
    expect(fs.readFileSync(dst).equals(img)).toBe(true);
  });

  it('nbdcopy over several connections (multi-conn) and many requests in flight', async () => {
    const src = path.join(t.dir, 'mc-src.raw');
    const img = pattern(48 * MiB, 11);
    fs.writeFileSync(src, img);
    const uri = t.unixUri('copy');
    await runOk('nbdcopy', ['--connections=4', '--requests=32', '--request-size=262144', '--flush', src, uri], 60_000);
    expect(t.provider.exports.get('copy')?.snapshot().equals(img)).toBe(true);
    const dst = path.join(t.dir, 'mc-dst.raw');
    await runOk('nbdcopy', ['--connections=4', '--requests=32', uri, dst], 60_000);
    expect(fs.readFileSync(dst).equals(img)).toBe(true);
  });

  it('nbdcopy between two exports of the same server (nbd to nbd)', async () => {
    const srcUri = t.unixUri('copy');
    const dstUri = t.tcpUri('disk');
    await runOk('nbdcopy', ['--flush', srcUri, dstUri], 60_000);
    const copy = t.provider.exports.get('copy')?.snapshot() as Buffer;
    const disk = t.provider.exports.get('disk')?.snapshot() as Buffer;
    expect(disk.subarray(0, copy.length).equals(copy)).toBe(true);
  });
});

describe('libnbd python bindings (nbdsh)', () => {
  it('lists and selects meta contexts, reads with structured replies and DF', async () => {
    const script = `
import nbd, json
out = {}
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(${JSON.stringify(t.unixUri('multi'))})
ctxs = []
h.opt_list_meta_context(lambda name: ctxs.append(name))
out['all'] = sorted(ctxs)
ctxs = []
h.add_meta_context('base:')
h.opt_list_meta_context(lambda name: ctxs.append(name))
out['base'] = sorted(ctxs)
h.clear_meta_contexts()
h.add_meta_context('base:allocation')
h.add_meta_context('x-test:even-chunks')
h.opt_go()
out['can_meta'] = [h.can_meta_context('base:allocation'), h.can_meta_context('x-test:even-chunks')]
seen = {}
def cb(metacontext, offset, entries, err):
    seen[metacontext] = list(entries)
h.block_status(200000, 0, cb)
out['bs'] = seen
seen = {}
h.block_status(200000, 0, cb, nbd.CMD_FLAG_REQ_ONE)
out['bs_one'] = seen
h.pwrite(b'\\x07' * 4096, 70000)
chunks = []
def chunk(subbuf, offset, status, err):
    chunks.append([offset, len(subbuf), status, bytes(subbuf).count(b'\\x07')])
h.pread_structured(8192, 68000, chunk, nbd.CMD_FLAG_DF)
out['df'] = chunks
chunks = []
h.pread_structured(4 * 65536, 0, chunk)
out['holes'] = chunks
h.shutdown()
print(json.dumps(out))
`;
    // the Debian module lives in the system python (nbdsh would pick up whatever python3 is first in PATH)
    const out = JSON.parse(await runOk('/usr/bin/python3', ['-c', script])) as {
      all: string[];
      base: string[];
      can_meta: boolean[];
      bs: Record<string, number[]>;
      bs_one: Record<string, number[]>;
      df: number[][];
      holes: number[][];
    };
    expect(out.all).toEqual(['base:allocation', 'x-test:even-chunks']);
    expect(out.base).toEqual(['base:allocation']);
    expect(out.can_meta).toEqual([true, true]);
    expect(out.bs['x-test:even-chunks']).toEqual([65536, 1, 65536, 0, 65536, 1, 200000 - 3 * 65536, 0]);
    const alloc = out.bs['base:allocation'] as number[];
    expect(alloc.filter((_, i) => i % 2 === 0).reduce((a, b) => a + b, 0)).toBe(200000);
    expect(out.bs_one['x-test:even-chunks']).toEqual([65536, 1]);
    expect(out.bs_one['base:allocation']?.length).toBe(2);
    // DF: one data chunk, the 4 KiB written inside it and zeros around
    expect(out.df).toEqual([[68000, 8192, 1, 4096]]);
    // without DF: data only where written, OFFSET_HOLE chunks elsewhere (status 2 = hole)
    expect(out.holes.filter((c) => c[2] === 1).map((c) => [c[0], c[1]])).toEqual([[65536, 65536]]);
    expect(out.holes.filter((c) => c[2] === 2).reduce((sum, c) => sum + (c[1] as number), 0)).toBe(3 * 65536);
  });
});
