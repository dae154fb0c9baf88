/**
 * Human sizes for the CLI and control API: `512`, `64KiB`, `1G`, `10GiB`, `1.5GiB`, `4k`.
 * Single-letter and IEC suffixes are binary (K = KiB = 1024), as in qemu-img and dd; `KB`/`MB`/... are decimal.
 * Parsing of the unit forms is left to bytes-iec; this wrapper only normalises the single-letter forms and
 * insists on a whole, non-negative, safe integer.
 */
import bytes from 'bytes-iec';

const SINGLE_LETTER = /^\s*(\d+(?:\.\d+)?)\s*([kmgtpe])\s*$/i;
const PLAIN = /^\s*\d+\s*$/;

export function parseSize(input: string | number): number {
  if (typeof input === 'number') {
    if (!Number.isSafeInteger(input) || input < 0) throw new RangeError(`invalid size ${input}: not a whole number of bytes`);
    return input;
  }
  let value: number | null;
  if (PLAIN.test(input)) value = Number(input);
  else {
    const single = SINGLE_LETTER.exec(input);
    const normalised = single ? `${single[1]}${single[2]!.toUpperCase()}iB` : input.trim();
    value = /^[\d.]+\s*[a-z]+$/i.test(normalised) ? bytes.parse(normalised) : null;
  }
  if (value === null || !Number.isFinite(value)) {
    throw new RangeError(`invalid size '${input}': use bytes or a unit such as 512, 64KiB, 1G, 10GiB`);
  }
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`invalid size '${input}': not a whole number of bytes`);
  }
  return value;
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 1536 -> "1.5 KiB"; exact values print without decimals ("64 KiB"). */
export function formatSize(n: number): string {
  let unit = 0;
  let v = n;
  while (v >= 1024 && unit < UNITS.length - 1) {
    v /= 1024;
    unit++;
  }
  const text = Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 2 : 1);
  return `${text} ${UNITS[unit]}`;
}
