#!/usr/bin/env node
// Extract throughput from one fio --output-format=json result file.
//
//   node bench/lib/fio-result.mjs RESULT.json read|write
//
// Prints one line: "<MiB/s> <IOPS> <runtime ms> <bytes moved> <flushes>"
// (tab separated). Exits non-zero when fio reported a job error or the file is
// not fio JSON. fio may print warnings before the JSON document, so parsing
// starts at the first "{".
import { readFileSync } from 'node:fs';

const [file, dir] = process.argv.slice(2);
if (!file || (dir !== 'read' && dir !== 'write')) {
  console.error('usage: fio-result.mjs RESULT.json read|write');
  process.exit(2);
}
const text = readFileSync(file, 'utf8');
const start = text.indexOf('{');
if (start < 0) {
  console.error(`${file}: no JSON document in fio output`);
  process.exit(1);
}
let doc;
try {
  doc = JSON.parse(text.slice(start));
} catch (err) {
  console.error(`${file}: cannot parse fio JSON: ${err.message}`);
  process.exit(1);
}
const job = doc.jobs?.[0];
if (!job) {
  console.error(`${file}: no jobs in fio output`);
  process.exit(1);
}
if (job.error) {
  console.error(`${file}: fio job ${job.jobname} failed with error ${job.error}`);
  process.exit(1);
}
const d = job[dir];
if (!d || !d.io_bytes) {
  console.error(`${file}: fio job ${job.jobname} moved no ${dir} data`);
  process.exit(1);
}
const mibs = d.bw_bytes / 1048576;
const flushes = job.sync?.total_ios ?? 0;
console.log([mibs.toFixed(1), d.iops.toFixed(0), d.runtime, d.io_bytes, flushes].join('\t'));
