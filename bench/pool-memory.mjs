#!/usr/bin/env node
/**
 * Resident metadata of the pool for a 1 TiB volume with 10 GiB written in 1 MiB extents at random chunk-aligned
 * positions (DESIGN requirement: <= 128 MiB per TiB provisioned). Uses the compiled pool (npx tsc first).
 *
 *   node --expose-gc bench/pool-memory.mjs [--extents 10240] [--chunk-size 65536] [--sparse-data] [--dir DIR]
 *
 * --sparse-data writes 512 bytes into each chunk of every extent instead of the full 1 MiB: the same chunks get
 * mapped and marked (identical metadata) with 1/128 of the I/O.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Pool } from '../dist/pool/index.js';

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};
const extents = Number(opt('--extents', 10240));
const chunkSize = Number(opt('--chunk-size', 65536));
const sparse = args.includes('--sparse-data');
const TiB = 2 ** 40;
const MiB = 2 ** 20;
const base = opt('--dir', fs.mkdtempSync(path.join(os.tmpdir(), 'thinvault-mem-')));
const dir = path.join(base, 'pool');

const gc = globalThis.gc ?? (() => {});
const mem = () => {
  gc();
  gc();
  const m = process.memoryUsage();
  return { heapUsed: m.heapUsed, arrayBuffers: m.arrayBuffers, external: m.external, rss: m.rss };
};
const fmt = (n) => `${(n / MiB).toFixed(1)} MiB`;

await Pool.init(dir, { chunkSize });
const pool = await Pool.open(dir);
try {
  await pool.createVolume('big', TiB);
  const vol = pool.volume('big');
  const before = mem();
  const statsBefore = pool.stats();
  let x = 12345;
  const rand = () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return x;
  };
  const data = Buffer.alloc(MiB, 0x5a);
  const small = Buffer.alloc(512, 0xa5);
  const chunksPerExtent = MiB / chunkSize;
  const slots = TiB / chunkSize - chunksPerExtent;
  const t0 = Date.now();
  const inflight = [];
  for (let i = 0; i < extents; i++) {
    const off = ((rand() * 4096 + (rand() & 4095)) % slots) * chunkSize;
    if (sparse) {
      for (let k = 0; k < chunksPerExtent; k++) inflight.push(vol.write(off + k * chunkSize, small, false));
    } else {
      inflight.push(vol.write(off, data, false));
    }
    if (inflight.length >= 32) await Promise.all(inflight.splice(0));
  }
  await Promise.all(inflight);
  await pool.flush();
  const secs = (Date.now() - t0) / 1000;
  const after = mem();
  const s = pool.stats();
  const info = vol.info();
  const accounted = s.metadataMemoryBytes - statsBefore.metadataMemoryBytes;
  const process_ = after.heapUsed + after.arrayBuffers - before.heapUsed - before.arrayBuffers;
  const result = {
    chunkSize,
    extents,
    writtenBytes: extents * MiB,
    sparseData: sparse,
    seconds: secs,
    allocatedChunks: info.allocatedChunks,
    dataFileBytes: s.dataFileBytes,
    metadataMemoryBytes: s.metadataMemoryBytes,
    metadataMemoryPerTiB: s.metadataMemoryBytes / (s.provisionedBytes / TiB),
    processDelta: { heapUsed: after.heapUsed - before.heapUsed, arrayBuffers: after.arrayBuffers - before.arrayBuffers, total: process_ },
    rssAfter: after.rss,
  };
  console.log(JSON.stringify(result, null, 2));
  console.log(
    `1 TiB volume, ${fmt(extents * MiB)} written in 1 MiB extents (${info.allocatedChunks} chunks mapped) in ${secs.toFixed(1)} s: ` +
      `metadata accounting ${fmt(s.metadataMemoryBytes)} (limit 128 MiB/TiB); heap+arrayBuffers growth ${fmt(process_)}; rss ${fmt(after.rss)}`,
  );
  const t1 = Date.now();
  await pool.close();
  console.log(`close (drain + clean checkpoint): ${((Date.now() - t1) / 1000).toFixed(1)} s`);
  const t2 = Date.now();
  const again = await Pool.open(dir);
  console.log(`reopen: ${((Date.now() - t2) / 1000).toFixed(1)} s, metadata ${fmt(again.stats().metadataMemoryBytes)}`);
  await again.close();
} finally {
  if (!args.includes('--dir')) fs.rmSync(base, { recursive: true, force: true });
}
