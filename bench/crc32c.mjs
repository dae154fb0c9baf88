#!/usr/bin/env node
// CRC32C throughput of the native addon on one core, per implementation and buffer size.
// Usage: node bench/crc32c.mjs [--seconds 1]
// Prints a markdown table (GB/s = 10^9 bytes per second). Build the addon first (npm install / npx node-gyp rebuild).
import { createRequire } from 'node:module';
import { randomFillSync } from 'node:crypto';
import { cpus } from 'node:os';

const require = createRequire(import.meta.url);
const native = require('../build/Release/thinvault_native.node');

const secondsArg = process.argv.indexOf('--seconds');
const minSeconds = secondsArg > 0 ? Number(process.argv[secondsArg + 1]) : 1;
const minNs = BigInt(Math.round(minSeconds * 1e9));

const sizes = [
  ['4 KiB', 4096],
  ['64 KiB', 64 * 1024],
  ['16 MiB', 16 * 1024 * 1024],
];

/** bytes per second of fn over buf, repeated until at least minSeconds have passed */
function measure(fn, buf) {
  // warm up and pick a batch so that one timing check covers >= ~1 ms
  let crc = fn(buf, 0);
  let batch = 1;
  for (;;) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < batch; i++) crc = fn(buf, crc);
    if (process.hrtime.bigint() - t0 >= 1_000_000n || batch >= 1 << 20) break;
    batch *= 2;
  }
  let calls = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0n;
  do {
    for (let i = 0; i < batch; i++) crc = fn(buf, crc);
    calls += batch;
    elapsed = process.hrtime.bigint() - start;
  } while (elapsed < minNs);
  if (crc === -1) console.log('unreachable'); // keep crc alive
  return (calls * buf.length) / (Number(elapsed) / 1e9);
}

const impls = native.crc32cImplementations();
const rows = [];
for (const impl of impls) {
  const label = impl === native.crc32cImplementation() ? `${impl} (crc32c default)` : impl;
  const fn = impl === 'portable' ? native.crc32cPortable : (b, c) => native.crc32cWith(impl, b, c);
  const cells = [];
  for (const [, size] of sizes) {
    const buf = Buffer.allocUnsafe(size);
    randomFillSync(buf);
    cells.push((measure(fn, buf) / 1e9).toFixed(2));
  }
  rows.push([label, ...cells]);
}
// the default entry point as callers use it (includes the dispatch through crc32c())
{
  const cells = [];
  for (const [, size] of sizes) {
    const buf = Buffer.allocUnsafe(size);
    randomFillSync(buf);
    cells.push((measure(native.crc32c, buf) / 1e9).toFixed(2));
  }
  rows.push(['crc32c()', ...cells]);
}

console.log(`CRC32C throughput, GB/s on one core (${cpus()[0]?.model ?? 'unknown CPU'}, node ${process.version})\n`);
console.log(`| implementation | ${sizes.map(([name]) => name).join(' | ')} |`);
console.log(`|---|${sizes.map(() => '---:').join('|')}|`);
for (const r of rows) console.log(`| ${r.join(' | ')} |`);
