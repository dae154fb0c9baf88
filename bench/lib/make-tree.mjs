#!/usr/bin/env node
// Make a directory tree of many small and a few large files with incompressible content, for bench/fig6.sh.
//
//   node bench/lib/make-tree.mjs --dir DIR --bytes N [--small-share 0.5] [--seed 1]
//
// About small-share × N bytes go into small files (1–64 KiB, uniform; 250 per directory), the rest into large
// files (4–64 MiB, uniform) under DIR/big/. Content: slices at random offsets of a 64 MiB buffer of random bytes
// (so no two 4 KiB blocks are likely to be equal and nothing compresses). Sizes and offsets come from a seeded PRNG,
// so the same arguments give the same tree shape. Prints one JSON line: {"files", "smallFiles", "largeFiles",
// "bytes", "dirs"}.
import { mkdirSync, openSync, writeSync, closeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';

const args = process.argv.slice(2);
const opt = (n, d) => {
  const i = args.indexOf(n);
  return i >= 0 ? args[i + 1] : d;
};
const dir = opt('--dir');
const total = Number(opt('--bytes'));
const smallShare = Number(opt('--small-share', '0.5'));
let seed = Number(opt('--seed', '1')) >>> 0 || 1;
if (!dir || !(total > 0) || !(smallShare >= 0 && smallShare <= 1)) {
  console.error('usage: make-tree.mjs --dir DIR --bytes N [--small-share 0.5] [--seed 1]');
  process.exit(2);
}
const rand = () => {
  // xorshift32
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed / 2 ** 32;
};
const POOL = randomBytes(64 << 20);
const writeFile = (path, size) => {
  const fd = openSync(path, 'w');
  let left = size;
  while (left > 0) {
    const n = Math.min(left, 1 << 20);
    const off = Math.floor(rand() * (POOL.length - n));
    writeSync(fd, POOL, off, n);
    left -= n;
  }
  closeSync(fd);
};

mkdirSync(dir, { recursive: true });
let bytes = 0;
let smallFiles = 0;
let largeFiles = 0;
let dirs = 0;
const smallTarget = Math.floor(total * smallShare);
let cur = '';
while (bytes < smallTarget) {
  if (smallFiles % 250 === 0) {
    cur = join(dir, `d${String(dirs++).padStart(4, '0')}`);
    mkdirSync(cur);
  }
  const size = Math.min(smallTarget - bytes, 1024 + Math.floor(rand() * 63 * 1024));
  writeFile(join(cur, `f${smallFiles}.dat`), size);
  bytes += size;
  smallFiles++;
}
mkdirSync(join(dir, 'big'));
dirs++;
while (bytes < total) {
  const size = Math.min(total - bytes, (4 << 20) + Math.floor(rand() * (60 << 20)));
  writeFile(join(dir, 'big', `large${largeFiles}.bin`), size);
  bytes += size;
  largeFiles++;
}
console.log(JSON.stringify({ files: smallFiles + largeFiles, smallFiles, largeFiles, bytes, dirs }));
