/**
 * Errors of the media layer. `code` is an errno-like name the layers above map onto their replies; the message is
 * written for the person running the backup and names the medium (and, in an image, the byte offset).
 */
import { formatSize } from '../util/size.js';

export type MediaErrorCode =
  /** bad target syntax or option, or an operation this medium cannot be asked for in this state */
  | 'EINVAL'
  /** no such image, file or device, or no such file number on the medium */
  | 'ENOENT'
  /** a plain file that already holds data, written without overwrite */
  | 'EEXIST'
  /** another writer has the image or file open, or the drive is in use */
  | 'EBUSY'
  | 'EACCES'
  /** a `tape:` target that does not answer the tape status ioctl */
  | 'ENOTTAPE'
  /** no tape in the drive */
  | 'ENOMEDIUM'
  /** write-protected tape */
  | 'EROFS'
  /** rewinding a pipe, a filemark in a plain file, ... */
  | 'ENOTSUP'
  /** a record longer than the read buffer */
  | 'EMSGSIZE'
  /** MediumFullError */
  | 'ENOSPC'
  /** TruncatedMediumError */
  | 'ETRUNC'
  /** CorruptMediumError: a torn or malformed record */
  | 'ECORRUPT'
  | 'EIO';

export class MediaError extends Error {
  readonly code: MediaErrorCode;

  constructor(code: MediaErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MediaError';
    this.code = code;
  }
}

/**
 * The medium has no room for the next record. Thrown by `writeRecord`, and by the stream writer after it has ended
 * the file cleanly (filemark, sync): `bytesWritten` bytes of the stream are on the medium and read back as written.
 */
export class MediumFullError extends MediaError {
  constructor(
    /** the medium's description, e.g. "SIMH tape image /b/x.tap" */
    readonly medium: string,
    /**
     * bytes of the current file that are on the medium: for the stream writer, the bytes of this stream a reader
     * gets back; from `writeRecord`, what was written since the last filemark or positioning
     */
    readonly bytesWritten: number,
    /** the medium's capacity when it has a configured one (tap images) */
    readonly capacity: number | null,
    options?: { cause?: unknown },
  ) {
    const limit = capacity === null ? '' : ` (capacity ${formatSize(capacity)})`;
    super('ENOSPC', `medium full: ${medium} holds ${formatSize(bytesWritten)} of this stream${limit}`, options);
    this.name = 'MediumFullError';
  }
}

/** A record that cannot be trusted: torn by a crash or a cut copy, a mismatched length word, a flagged bad record. */
export class CorruptMediumError extends MediaError {
  constructor(
    readonly medium: string,
    /** byte offset in the image of the object that is damaged */
    readonly offset: number,
    /** what is wrong, e.g. "torn record" */
    problem: string,
    /** details after the position, e.g. "the image ends inside this 262144-byte record" */
    detail?: string,
  ) {
    super('ECORRUPT', `${problem} at byte ${offset} of ${medium}${detail ? `: ${detail}` : ''}`);
    this.name = 'CorruptMediumError';
  }
}

/** What ended a file before the reader had all the bytes it asked for. */
export type FileEnding = 'filemark' | 'end-of-medium' | 'end-of-file' | 'corrupt-record';

const ENDING_TEXT: Record<Exclude<FileEnding, 'corrupt-record'>, string> = {
  filemark: 'at a filemark',
  'end-of-medium': 'at the end of the recorded data',
  'end-of-file': 'at the end of the file',
};

/** A stream read past the end of its file: the stream on the medium is shorter than its reader needs. */
export class TruncatedMediumError extends MediaError {
  readonly medium: string;
  /** 0-based position of the file on the medium (messages print it 1-based, as `media list` does) */
  readonly fileNumber: number;
  /** bytes of the file read before its end, including those of the failed request */
  readonly bytesRead: number;
  readonly endedBy: FileEnding;
  /** for a corrupt record in an image: its byte offset in the image */
  readonly offset: number | null;

  constructor(
    details: {
      medium: string;
      fileNumber: number;
      bytesRead: number;
      /** bytes the reader still needed, when it asked for an exact amount */
      missing: number | null;
      endedBy: FileEnding;
      /** the CorruptMediumError when endedBy is 'corrupt-record' */
      corruption?: CorruptMediumError;
    },
  ) {
    const { medium, fileNumber, bytesRead, missing, endedBy, corruption } = details;
    const file = `file #${fileNumber + 1} on ${medium}`;
    const wanted = missing === null ? '' : `; ${missing} more byte${missing === 1 ? ' was' : 's were'} expected`;
    const message =
      endedBy === 'corrupt-record'
        ? `${file} is unreadable after ${bytesRead} bytes: ${corruption?.message ?? 'corrupt record'}`
        : `${file} ends ${ENDING_TEXT[endedBy]} after ${bytesRead} bytes${wanted}`;
    super('ETRUNC', message, corruption ? { cause: corruption } : undefined);
    this.name = 'TruncatedMediumError';
    this.medium = medium;
    this.fileNumber = fileNumber;
    this.bytesRead = bytesRead;
    this.endedBy = endedBy;
    this.offset = corruption?.offset ?? null;
  }
}

/** The errno name of a failed system call (native addon and node:fs errors both carry it as `code`). */
export function errnoCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** The OS's text for a failed call without the call's name: "No such file or directory". */
export function errnoText(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const syscall = (err as { syscall?: unknown }).syscall;
  if (typeof syscall === 'string' && err.message.startsWith(`${syscall}: `)) return err.message.slice(syscall.length + 2);
  return err.message;
}

const PASSED_THROUGH: ReadonlySet<string> = new Set(['ENOENT', 'EBUSY', 'EACCES', 'ENOMEDIUM', 'EROFS']);

/** Wraps a failed system call as a MediaError "<what>: <OS text>", keeping errno names the callers can act on. */
export function systemError(what: string, err: unknown): MediaError {
  if (err instanceof MediaError) return err;
  const code = errnoCode(err);
  const mediaCode = code !== undefined && PASSED_THROUGH.has(code) ? (code as MediaErrorCode) : 'EIO';
  return new MediaError(mediaCode, `${what}: ${errnoText(err)}`, { cause: err });
}

/** Errors of a write that mean "no room": the filesystem is full, over quota, or the file hit its size limit. */
export function isNoSpace(err: unknown): boolean {
  const code = errnoCode(err);
  return code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG';
}
