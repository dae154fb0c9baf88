/**
 * Media target syntax (docs/media.md, "Targets"): the text a user gives `--to`/`--from`, parsed into a plain data
 * object. Nothing is opened here; stream.ts opens targets.
 *
 *   -                                  standard input / standard output
 *   PATH  or  file:PATH                a plain file holding one stream
 *   tap:PATH[?capacity=SIZE[&early-warning=SIZE][&record-size=SIZE]][#N]   a SIMH tape image
 *   tape:DEVICE[?record-size=SIZE][#N]                                      a tape drive, e.g. /dev/nst0
 *
 * `#N` (1-based, as `media list` prints) selects the file to read.
 */
import { formatSize, parseSize } from '../util/size.js';
import { MediaError } from './errors.js';

/** 256 KiB: large enough for full streaming speed on tape drives, small enough for any st driver buffer. */
export const DEFAULT_RECORD_SIZE = 256 * 1024;
/**
 * a plain file has no records of its own: larger writes cost fewer system calls (and direct I/O, file.ts, wants
 * them large)
 */
export const FILE_WRITE_SIZE = 4 * 1024 * 1024;
/**
 * SIMH stores a record's length in 24 bits. Tape records are held to the same limit so that a tape and an image
 * can be copied into each other record for record.
 */
export const MAX_RECORD_SIZE = 0xffffff;
/** The early-warning zone of a tap image with a capacity: min(1 MiB, capacity / 16) unless given. */
const DEFAULT_EARLY_WARNING_LIMIT = 1024 * 1024;

export interface PipeTarget {
  readonly kind: 'pipe';
  readonly spec: string;
  readonly recordSize: number;
}

export interface FileTarget {
  readonly kind: 'file';
  readonly spec: string;
  readonly path: string;
  readonly recordSize: number;
}

export interface TapTarget {
  readonly kind: 'tap';
  readonly spec: string;
  readonly path: string;
  readonly recordSize: number;
  /** maximum size of the image in bytes, length words included; null = until the filesystem is full */
  readonly capacity: number | null;
  /** size of the early-warning zone at the end of the capacity (0 without a capacity) */
  readonly earlyWarning: number;
  /** 0-based file selected by `#N`, null when none was given */
  readonly fileNumber: number | null;
}

export interface TapeTarget {
  readonly kind: 'tape';
  readonly spec: string;
  readonly device: string;
  readonly recordSize: number;
  /** 0-based file selected by `#N`, null when none was given */
  readonly fileNumber: number | null;
}

export type MediaTarget = PipeTarget | FileTarget | TapTarget | TapeTarget;

/** True for media that hold several files separated by filemarks. */
export function holdsSeveralFiles(target: { kind: MediaTarget['kind'] }): boolean {
  return target.kind === 'tap' || target.kind === 'tape';
}

export function parseMediaTarget(spec: string): MediaTarget {
  if (spec === '-') return { kind: 'pipe', spec, recordSize: DEFAULT_RECORD_SIZE };
  if (spec.startsWith('tap:')) return parseTap(spec);
  if (spec.startsWith('tape:')) return parseTape(spec);
  // A plain file is taken literally: it holds one stream, so there is no '#N' or option to split off.
  const path = spec.startsWith('file:') ? spec.slice('file:'.length) : spec;
  if (path === '') throw invalid(spec, 'no file name');
  return { kind: 'file', spec, path, recordSize: FILE_WRITE_SIZE };
}

/** Checks a record size given by a caller (e.g. `openWriteStream`'s option) against the same limits as the syntax. */
export function checkRecordSize(size: number, where: string): number {
  if (!Number.isSafeInteger(size) || size < 1 || size > MAX_RECORD_SIZE) {
    throw new MediaError(
      'EINVAL',
      `record size ${size} for ${where} is out of range: 1 to ${MAX_RECORD_SIZE} bytes (16 MiB - 1; SIMH keeps a record's length in 24 bits)`,
    );
  }
  return size;
}

function parseTap(spec: string): TapTarget {
  const { location, options, fileNumber } = splitSpec(spec, 'tap:', ['capacity', 'early-warning', 'record-size']);
  const recordSize = options.has('record-size') ? checkRecordSize(options.get('record-size')!, spec) : DEFAULT_RECORD_SIZE;
  const capacity = options.get('capacity') ?? null;
  if (capacity === 0) throw invalid(spec, 'capacity must be more than 0 bytes');
  let earlyWarning = 0;
  if (options.has('early-warning')) {
    if (capacity === null) throw invalid(spec, 'early-warning needs a capacity');
    earlyWarning = options.get('early-warning')!;
    if (earlyWarning >= capacity) {
      throw invalid(spec, `early-warning (${formatSize(earlyWarning)}) must be smaller than the capacity (${formatSize(capacity)})`);
    }
  } else if (capacity !== null) {
    earlyWarning = Math.min(DEFAULT_EARLY_WARNING_LIMIT, Math.floor(capacity / 16));
  }
  return { kind: 'tap', spec, path: location, recordSize, capacity, earlyWarning, fileNumber };
}

function parseTape(spec: string): TapeTarget {
  const { location, options, fileNumber } = splitSpec(spec, 'tape:', ['record-size']);
  const recordSize = options.has('record-size') ? checkRecordSize(options.get('record-size')!, spec) : DEFAULT_RECORD_SIZE;
  return { kind: 'tape', spec, device: location, recordSize, fileNumber };
}

/**
 * `PREFIX LOCATION [?key=SIZE&...] [#N]` → its parts. The location ends at the first '?', so an image path cannot
 * contain one; a '#' in the last path component must be the file number.
 */
function splitSpec(
  spec: string,
  prefix: string,
  known: readonly string[],
): { location: string; options: Map<string, number>; fileNumber: number | null } {
  const kindName = prefix.slice(0, -1);
  let rest = spec.slice(prefix.length);

  let fileNumber: number | null = null;
  const hash = rest.lastIndexOf('#');
  if (hash >= 0 && !rest.slice(hash).includes('/')) {
    const text = rest.slice(hash + 1);
    if (!/^\d+$/.test(text)) throw invalid(spec, `'#${text}' is not a file number: use #N with N from 1, as 'media list' prints`);
    const n = Number(text);
    if (n < 1 || !Number.isSafeInteger(n)) throw invalid(spec, `file numbers start at 1 ('#${text}')`);
    fileNumber = n - 1;
    rest = rest.slice(0, hash);
  }

  const options = new Map<string, number>();
  const question = rest.indexOf('?');
  const location = question >= 0 ? rest.slice(0, question) : rest;
  if (location === '') throw invalid(spec, `no ${kindName === 'tap' ? 'image path' : 'device'} after '${prefix}'`);
  if (question >= 0) {
    for (const option of rest.slice(question + 1).split('&')) {
      const eq = option.indexOf('=');
      const key = eq >= 0 ? option.slice(0, eq) : option;
      if (!known.includes(key)) {
        throw invalid(spec, `unknown option '${key}' in ${kindName} target; known: ${known.join(', ')}`);
      }
      if (eq < 0 || eq === option.length - 1) throw invalid(spec, `option '${key}' needs a size, e.g. ${key}=1GiB`);
      if (options.has(key)) throw invalid(spec, `option '${key}' is given twice`);
      try {
        options.set(key, parseSize(option.slice(eq + 1)));
      } catch (err) {
        throw invalid(spec, `${key}: ${(err as Error).message}`);
      }
    }
  }
  return { location, options, fileNumber };
}

function invalid(spec: string, problem: string): MediaError {
  return new MediaError('EINVAL', `bad media target '${spec}': ${problem}`);
}
