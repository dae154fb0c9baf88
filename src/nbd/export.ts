/**
 * The storage-facing side of the NBD server. `src/nbd` serves anything that implements `Export`;
 * it never knows what stores the bytes (pool volumes, snapshots, pseudo-devices, a test memory disk).
 *
 * Errors: an operation rejects with an Error whose `code` is one of the errno names in `ExportErrno`
 * (e.g. `Object.assign(new Error('pool full'), { code: 'ENOSPC' })`). Any other error is sent as EIO.
 * Offsets and lengths are plain numbers (byte units; exports are < 2^53 bytes).
 */

export type ExportErrno = 'EPERM' | 'EIO' | 'ENOMEM' | 'EINVAL' | 'ENOSPC' | 'EOVERFLOW' | 'ENOTSUP' | 'ESHUTDOWN';

/** Creates an Error carrying an errno name the NBD layer maps onto the wire. */
export function exportError(code: ExportErrno, message: string): Error & { code: ExportErrno } {
  return Object.assign(new Error(message), { code });
}

export interface BlockSizeConstraints {
  /** minimum block size (1 or 512 are typical); the kernel client sends 512-aligned requests anyway */
  minimum: number;
  /** preferred block size, e.g. the chunk size */
  preferred: number;
  /** maximum payload of one request */
  maximum: number;
}

/**
 * Sorted, non-overlapping ranges inside a read buffer that read as zeros and were NOT filled in by
 * `read`: a flat array [offset0, length0, offset1, length1, ...] relative to the start of the request.
 */
export type HoleList = number[];

/** One extent for block status: `length` bytes carrying `flags` (meaning depends on the context). */
export interface Extent {
  length: number;
  flags: number;
}

export interface ZeroOptions {
  /** NBD_CMD_FLAG_NO_HOLE: the range must stay allocated */
  noHole: boolean;
  /** NBD_CMD_FLAG_FAST_ZERO: fail with ENOTSUP instead of doing slow work */
  fastZero: boolean;
  fua: boolean;
}

export interface Export {
  readonly name: string;
  readonly description: string;
  /** current size in bytes (may change after a resize; read per request) */
  readonly size: number;
  readonly readOnly: boolean;
  readonly canTrim: boolean;
  readonly canZero: boolean;
  readonly canFastZero: boolean;
  readonly canCache: boolean;
  /** true when a FLUSH on any connection covers writes completed on every connection */
  readonly canMultiConn: boolean;
  readonly blockSize: BlockSizeConstraints;
  /** meta contexts this export can answer BLOCK_STATUS for, e.g. ['base:allocation'] */
  readonly metaContexts: readonly string[];
  /**
   * Optional, for a family of contexts too large to list in `metaContexts` (e.g. one per generation): true when
   * `name` (an exact name a client asked for; never a bare namespace) is one this export answers BLOCK_STATUS
   * for although `metaContexts` does not hold it. Asked on SET_META_CONTEXT and for exact LIST_META_CONTEXT
   * queries, with the export open; it must be cheap and must not throw.
   */
  acceptsMetaContext?(name: string): boolean;
  /**
   * Optional: a short selection of such names (each one `acceptsMetaContext` accepts) to show in
   * LIST_META_CONTEXT answers without a query or with a namespace query; computed per call, so it may change
   * over the export's life. Keep it bounded (tens of names).
   */
  listMetaContexts?(): readonly string[];

  /**
   * Fill `buf` with `buf.length` bytes from `offset`. Ranges listed in the returned HoleList read as zero and
   * were left untouched in `buf` (the caller zero-fills them or sends them as holes). Return [] when all of
   * `buf` was filled.
   */
  read(offset: number, buf: Buffer): Promise<HoleList>;
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  zero(offset: number, length: number, opts: ZeroOptions): Promise<void>;
  /** prefetch hint; may do nothing */
  cache(offset: number, length: number): Promise<void>;
  /**
   * Extents for `context` (one of `metaContexts`, or a name `acceptsMetaContext` accepted) starting exactly at
   * `offset`, covering at least 1 byte and at most `length` bytes (more than one extent is fine; the caller
   * truncates when REQ_ONE is set).
   */
  blockStatus(context: string, offset: number, length: number): Promise<Extent[]>;
}

/** What an NBD server asks its host for: the export list and export lookup. */
export interface ExportProvider {
  /** names and descriptions for NBD_OPT_LIST */
  list(): Array<{ name: string; description: string }>;
  /**
   * Open the export called `name` for one connection, or return undefined if there is none.
   * `release` is called once when that connection ends.
   */
  open(name: string): ExportHandle | undefined;
}

export interface ExportHandle {
  export: Export;
  release(): void;
}
