/**
 * SIMH magtape images (.tap), the format SIMH and its tape tools read (docs/media.md, "SIMH .tap images"):
 *
 *   record     u32 LE length n, n data bytes, one pad byte (0) when n is odd, u32 LE length n again
 *   tape mark  u32 0x00000000 (a filemark)
 *   end        0xFFFFFFFF end-of-medium marker, or simply the end of the image file
 *
 * In a length word the high bit flags a record read with an error, bits 30..24 are zero and bits 23..0 are the
 * length. This module writes records and tape marks only and leaves the image ending after the last tape mark.
 *
 * The image is read with positional I/O and a one-word look-ahead: reading a record also reads the leading word of
 * the next object, so a record costs one system call and walking an image costs one small read per record.
 */
import { native } from '../native/index.js';
import { CorruptMediumError, MediaError, MediumFullError, isNoSpace, systemError } from './errors.js';
import { LocalFile } from './file.js';
import { MAX_RECORD_SIZE, type TapTarget } from './target.js';
import type { ListedFile, OpenMode, RecordMedium } from './types.js';

/** SIMH metadata markers */
export const TAPE_MARK = 0x00000000;
export const END_OF_MEDIUM_MARKER = 0xffffffff;
export const ERASE_GAP = 0xfffffffe;
/** 0xFF000000..0xFFFFFFFD are reserved markers */
const FIRST_RESERVED_MARKER = 0xff000000;
/** set in both length words of a record SIMH read with an error */
export const BAD_RECORD_FLAG = 0x80000000;
/** must be zero in a record's length word */
const RESERVED_LENGTH_BITS = 0x7f000000;
const LENGTH_BITS = 0x00ffffff;

const WORD = 4;

/** Bytes a record of `length` data bytes takes in the image: two length words and the data padded to even. */
export function recordExtent(length: number): number {
  return WORD + length + (length & 1) + WORD;
}

interface RecordWord {
  kind: 'record';
  length: number;
  /** SIMH's error flag */
  bad: boolean;
}

/** What a leading word says is at its position. */
type LeadingWord =
  | { kind: 'tape-mark' }
  | { kind: 'end-of-medium' }
  | { kind: 'gap' }
  | RecordWord
  | { kind: 'invalid'; reason: string };

function classifyWord(word: number): LeadingWord {
  if (word === TAPE_MARK) return { kind: 'tape-mark' };
  if (word === END_OF_MEDIUM_MARKER) return { kind: 'end-of-medium' };
  if (word === ERASE_GAP) return { kind: 'gap' };
  if (word >= FIRST_RESERVED_MARKER) return { kind: 'invalid', reason: `reserved SIMH marker ${hex(word)}` };
  const length = word & LENGTH_BITS;
  if ((word & RESERVED_LENGTH_BITS) !== 0 || length === 0) return { kind: 'invalid', reason: `invalid length word ${hex(word)}` };
  return { kind: 'record', length, bad: (word & BAD_RECORD_FLAG) !== 0 };
}

interface RecordObject {
  kind: 'record';
  offset: number;
  length: number;
  bad: boolean;
  next: number;
}

interface DamagedObject {
  kind: 'corrupt';
  offset: number;
  error: CorruptMediumError;
  /** the damage runs to the end of the image, so nothing intact can follow it (a torn last write) */
  tail: boolean;
}

/** One object of the image as found from its length words, without reading record data. */
type TapObject =
  | RecordObject
  | { kind: 'tape-mark'; offset: number; next: number }
  | { kind: 'gap'; offset: number; next: number }
  /** the end of the image file or an end-of-medium marker */
  | { kind: 'end'; offset: number }
  | DamagedObject;

export class TapImage implements RecordMedium {
  readonly kind = 'tap';
  readonly description: string;
  readonly capacity: number | null;
  private readonly earlyWarningZone: number;
  /** byte offset of the next object */
  private position = 0;
  /** size of the image file, kept up to date by this handle's writes */
  private size: number;
  private currentFile = 0;
  /** bytes written since the last filemark or positioning (for MediumFullError) */
  private fileBytes = 0;
  /** the leading word at `offset`, read ahead together with the previous record ('end': the image ends there) */
  private lookahead: { offset: number; word: number | 'end' } | null = null;
  /** scratch for length words: the pad byte, a trailing word and the next leading word */
  private readonly words = Buffer.alloc(1 + 2 * WORD);
  private readonly leadingWord = Buffer.alloc(WORD);

  private constructor(
    private readonly file: LocalFile,
    private readonly mode: OpenMode,
    target: TapTarget,
    readonly recordSize: number,
    size: number,
  ) {
    this.description = file.description;
    this.capacity = target.capacity;
    this.earlyWarningZone = target.earlyWarning;
    this.size = size;
  }

  /** Opens the image at its beginning; writing creates a missing image. */
  static async open(target: TapTarget, mode: OpenMode, recordSize = target.recordSize): Promise<TapImage> {
    const file = await LocalFile.open(target.path, `SIMH tape image ${target.path}`, mode, true);
    try {
      if (!file.isRegular) {
        throw new MediaError('EINVAL', `${file.description} is not a regular file (a tape drive is a tape: target)`);
      }
      return new TapImage(file, mode, target, recordSize, await file.size());
    } catch (err) {
      await file.close();
      throw err;
    }
  }

  get fileNumber(): number {
    return this.currentFile;
  }

  get earlyWarning(): boolean {
    return this.capacity !== null && this.position > this.capacity - this.earlyWarningZone;
  }

  async readRecord(buf: Buffer): Promise<number | 'filemark' | 'end'> {
    for (;;) {
      const offset = this.position;
      const word = await this.leadingWordAt(offset);
      if (word === 'end') return 'end';
      const lead = classifyWord(word);
      switch (lead.kind) {
        case 'tape-mark':
          this.moveTo(offset + WORD);
          this.currentFile++;
          return 'filemark';
        case 'end-of-medium':
          return 'end';
        case 'gap':
          this.moveTo(offset + WORD);
          continue;
        case 'invalid':
          throw this.corrupt(offset, 'corrupt object', lead.reason);
        case 'record': {
          if (lead.bad) throw this.corrupt(offset, 'bad record', `SIMH marked this ${lead.length}-byte record as read with an error`);
          if (lead.length > buf.length) {
            throw new MediaError(
              'EMSGSIZE',
              `record of ${lead.length} bytes at byte ${offset} of ${this.description} is larger than the read buffer (${buf.length} bytes)`,
            );
          }
          // Data, pad byte, trailing word and the next object's leading word in one read.
          const pad = lead.length & 1;
          const got = await this.preadv([buf.subarray(0, lead.length), this.words.subarray(0, pad + 2 * WORD)], offset + WORD);
          const record = this.endOfRecord(offset, word, lead, this.words.subarray(pad), got - lead.length - pad);
          if (record.kind === 'corrupt') throw record.error;
          this.moveTo(record.next);
          return lead.length;
        }
      }
    }
  }

  async writeRecord(data: Buffer): Promise<void> {
    this.requireWritable();
    const length = data.length;
    if (length < 1 || length > MAX_RECORD_SIZE) {
      throw new MediaError('EINVAL', `a SIMH record holds 1 to ${MAX_RECORD_SIZE} bytes, not ${length}`);
    }
    const extent = recordExtent(length);
    // Room for a tape mark after the record is kept back, so the file being written can always be ended.
    if (this.capacity !== null && this.position + extent + WORD > this.capacity) {
      throw new MediumFullError(this.description, this.fileBytes, this.capacity);
    }
    await this.cutTail();
    const lengthWord = this.leadingWord;
    lengthWord.writeUInt32LE(length, 0);
    const pad = length & 1;
    const trailer = this.words.subarray(0, pad + WORD);
    trailer[0] = 0;
    trailer.writeUInt32LE(length, pad);
    try {
      await native.pwritev(this.file.fd, [lengthWord, data, trailer], this.position);
    } catch (err) {
      // A partly written record would be a torn record: cut it off again.
      await this.file.truncate(this.position).catch(() => {});
      if (isNoSpace(err)) throw new MediumFullError(this.description, this.fileBytes, this.capacity, { cause: err });
      throw systemError(`cannot write ${this.description}`, err);
    }
    this.position += extent;
    this.size = this.position;
    this.fileBytes += length;
  }

  async writeFilemark(): Promise<void> {
    this.requireWritable();
    if (this.capacity !== null && this.position + WORD > this.capacity) {
      throw new MediumFullError(this.description, this.fileBytes, this.capacity);
    }
    await this.cutTail();
    const mark = this.leadingWord;
    mark.writeUInt32LE(TAPE_MARK, 0);
    try {
      await native.pwrite(this.file.fd, mark, this.position);
    } catch (err) {
      await this.file.truncate(this.position).catch(() => {});
      if (isNoSpace(err)) throw new MediumFullError(this.description, this.fileBytes, this.capacity, { cause: err });
      throw systemError(`cannot write ${this.description}`, err);
    }
    this.position += WORD;
    this.size = this.position;
    this.currentFile++;
    this.fileBytes = 0;
  }

  async rewind(): Promise<void> {
    this.moveTo(0);
    this.currentFile = 0;
  }

  async skipFiles(count: number): Promise<void> {
    for (let passed = 0; passed < count; ) {
      const object = await this.objectAt(this.position);
      switch (object.kind) {
        case 'tape-mark':
          passed++;
          this.currentFile++;
          this.moveTo(object.next);
          break;
        case 'record':
        case 'gap':
          this.moveTo(object.next);
          break;
        case 'end':
          throw new MediaError('ENOENT', `${this.description}: the recorded data ends after ${passed} of ${count} filemarks`);
        case 'corrupt':
          throw object.error;
      }
    }
  }

  /**
   * Positions after the last tape mark. What follows it (records of a file whose writer died before its tape mark,
   * a torn record, an end-of-medium marker) is cut off by the next write. Damage with intact data after it is not
   * a tail but a hole: appending there would destroy the files behind it, so that is refused.
   */
  async seekEndOfData(): Promise<void> {
    let offset = 0;
    let endOfData = 0;
    let files = 0;
    for (;;) {
      const object = await this.objectAt(offset);
      if (object.kind === 'end') break;
      if (object.kind === 'corrupt') {
        if (object.tail) break;
        throw new MediaError(
          'ECORRUPT',
          `cannot append to ${this.description}: ${object.error.message}, and data follows it; appending would cut it off (overwrite starts the image over)`,
          { cause: object.error },
        );
      }
      if (object.kind === 'tape-mark') {
        files++;
        endOfData = object.next;
      }
      offset = object.next;
    }
    this.moveTo(endOfData);
    this.currentFile = files;
  }

  async sync(): Promise<void> {
    await this.file.sync();
  }

  async close(): Promise<void> {
    await this.file.close();
  }

  /**
   * Every file on the image with its first `headerBytes` bytes and its length, found by walking the length words
   * (only the head is read). A torn or damaged object ends the listing with an incomplete last entry.
   */
  async listFiles(headerBytes: number): Promise<ListedFile[]> {
    const files: ListedFile[] = [];
    let file: FileBeingListed | null = null;
    for (let offset = 0; ; ) {
      const object = await this.objectAt(offset);
      switch (object.kind) {
        case 'record': {
          file ??= { head: [], headLength: 0, bytes: 0, problem: null };
          const wanted = Math.min(object.length, headerBytes - file.headLength);
          if (wanted > 0) {
            const part = Buffer.alloc(wanted);
            await this.preadv([part], object.offset + WORD);
            file.head.push(part);
            file.headLength += wanted;
          }
          file.bytes += object.length;
          if (object.bad) file.problem ??= `bad record at byte ${object.offset} (SIMH marked it as read with an error)`;
          offset = object.next;
          break;
        }
        case 'tape-mark':
          files.push(listedFile(files.length, file, null));
          file = null;
          offset = object.next;
          break;
        case 'gap':
          offset = object.next;
          break;
        case 'end':
          if (file !== null) files.push(listedFile(files.length, file, 'no filemark after the last record (its writer was interrupted)'));
          return files;
        case 'corrupt':
          files.push(listedFile(files.length, file, object.error.message));
          return files;
      }
    }
  }

  private requireWritable(): void {
    if (this.mode !== 'write') throw new MediaError('EINVAL', `${this.description} was opened for reading`);
  }

  private moveTo(offset: number): void {
    this.position = offset;
    this.fileBytes = 0;
  }

  /** Writing anywhere but at the end drops everything after the position, as on a tape. */
  private async cutTail(): Promise<void> {
    this.lookahead = null;
    if (this.size > this.position) {
      await this.file.truncate(this.position);
      this.size = this.position;
    }
  }

  private async preadv(buffers: Buffer[], offset: number): Promise<number> {
    try {
      return await native.preadv(this.file.fd, buffers, offset);
    } catch (err) {
      throw systemError(`cannot read ${this.description}`, err);
    }
  }

  /** The leading word at `offset`, or 'end' where the image ends; a word cut short is a torn tail. */
  private async leadingWordAt(offset: number): Promise<number | 'end'> {
    if (this.lookahead?.offset === offset) return this.lookahead.word;
    const got = await this.preadv([this.leadingWord], offset);
    if (got === 0) return 'end';
    if (got < WORD) throw this.corrupt(offset, 'torn length word', `the image ends ${got} bytes into it`);
    return this.leadingWord.readUInt32LE(0);
  }

  /** Classifies the object at `offset` from its length words alone. */
  private async objectAt(offset: number): Promise<TapObject> {
    let word: number | 'end';
    try {
      word = await this.leadingWordAt(offset);
    } catch (err) {
      if (err instanceof CorruptMediumError) return { kind: 'corrupt', offset, error: err, tail: true };
      throw err;
    }
    if (word === 'end') return { kind: 'end', offset };
    const lead = classifyWord(word);
    switch (lead.kind) {
      case 'tape-mark':
        return { kind: 'tape-mark', offset, next: offset + WORD };
      case 'end-of-medium':
        return { kind: 'end', offset };
      case 'gap':
        return { kind: 'gap', offset, next: offset + WORD };
      case 'invalid':
        return { kind: 'corrupt', offset, error: this.corrupt(offset, 'corrupt object', lead.reason), tail: offset + WORD >= this.size };
      case 'record': {
        const trailerOffset = offset + WORD + lead.length + (lead.length & 1);
        const got = await this.preadv([this.words.subarray(0, 2 * WORD)], trailerOffset);
        return this.endOfRecord(offset, word, lead, this.words, got);
      }
    }
  }

  /**
   * Checks the trailing length word of the record at `offset` and keeps the leading word read after it.
   * `after` holds the `got` bytes read behind the padded data: the trailing word, then the next leading word.
   */
  private endOfRecord(offset: number, word: number, lead: RecordWord, after: Buffer, got: number): RecordObject | DamagedObject {
    const { length, bad } = lead;
    const next = offset + recordExtent(length);
    if (got < WORD) {
      const error = this.corrupt(offset, 'torn record', `the image ends inside this ${length}-byte record`);
      return { kind: 'corrupt', offset, error, tail: true };
    }
    const trailer = after.readUInt32LE(0);
    if (trailer !== word) {
      const error = this.corrupt(
        offset,
        'corrupt record',
        `its trailing length word ${hex(trailer)} (at byte ${next - WORD}) does not match the leading one ${hex(word)}`,
      );
      return { kind: 'corrupt', offset, error, tail: next >= this.size };
    }
    if (got >= 2 * WORD) this.lookahead = { offset: next, word: after.readUInt32LE(WORD) };
    else if (got === WORD) this.lookahead = { offset: next, word: 'end' };
    return { kind: 'record', offset, length, bad, next };
  }

  private corrupt(offset: number, problem: string, detail: string): CorruptMediumError {
    return new CorruptMediumError(this.description, offset, problem, detail);
  }
}

/** A file whose records `listFiles` is walking. */
interface FileBeingListed {
  head: Buffer[];
  headLength: number;
  bytes: number;
  /** a bad record seen in it */
  problem: string | null;
}

/** The listing entry for a file that ended at a tape mark (`endProblem` null) or otherwise. */
function listedFile(fileNumber: number, file: FileBeingListed | null, endProblem: string | null): ListedFile {
  const problem = file?.problem ?? endProblem;
  return {
    fileNumber,
    head: Buffer.concat(file?.head ?? []),
    bytes: file?.bytes ?? 0,
    complete: problem === null,
    problem,
  };
}

function hex(word: number): string {
  return `0x${(word >>> 0).toString(16).padStart(8, '0')}`;
}
