#!/usr/bin/env node
// Put a markdown section (read from stdin) into a document between <!-- NAME:begin --> and <!-- NAME:end -->.
//
//   node bench/lib/splice-section.mjs --name NAME --out docs/benchmarks.md < section.md
//
// The markers are added here; the rest of the document is left as it is. When the markers are missing, the
// section is appended at the end. The section is also printed on stdout.
import { readFileSync, writeFileSync, existsSync } from 'node:fs';

const args = process.argv.slice(2);
const opt = (n) => {
  const i = args.indexOf(n);
  return i >= 0 ? args[i + 1] : undefined;
};
const name = opt('--name');
const out = opt('--out');
if (!name || !/^[a-z0-9-]+$/.test(name)) {
  console.error('usage: splice-section.mjs --name NAME [--out FILE] < section.md');
  process.exit(2);
}
const BEGIN = `<!-- ${name}:begin -->`;
const END = `<!-- ${name}:end -->`;
const body = readFileSync(0, 'utf8').replace(/\s*$/, '');
const section = `${BEGIN}\n${body}\n\n${END}`;
console.log(section);
if (out && out !== 'none') {
  let doc = existsSync(out) ? readFileSync(out, 'utf8') : '# thinvault benchmarks\n';
  const b = doc.indexOf(BEGIN);
  const e = doc.indexOf(END);
  if (b >= 0 && e > b) doc = doc.slice(0, b) + section + doc.slice(e + END.length);
  else doc = `${doc.replace(/\s*$/, '')}\n\n${section}\n`;
  writeFileSync(out, doc);
  console.error(`${name}: wrote ${out}`);
}
