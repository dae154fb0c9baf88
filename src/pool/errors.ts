/** Errors of the storage engine. `code` is an errno-like name the layers above map onto their wire. */
export type PoolErrorCode =
  | 'ENOSPC'
  | 'EINVAL'
  | 'ENOENT'
  | 'EEXIST'
  | 'EBUSY'
  | 'ELOCKED'
  | 'EIO'
  | 'ECORRUPT'
  | 'ENOTPOOL'
  | 'EPERM'
  | 'EOVERFLOW';

export class PoolError extends Error {
  readonly code: PoolErrorCode;

  constructor(code: PoolErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PoolError';
    this.code = code;
  }
}

/** Wraps a failed system call (an Error with an errno `code`) as EIO/ENOSPC, keeping it as the cause. */
export function ioError(what: string, cause: unknown): PoolError {
  if (cause instanceof PoolError) return cause;
  const code = (cause as { code?: string } | null)?.code;
  const msg = cause instanceof Error ? cause.message : String(cause);
  return new PoolError(code === 'ENOSPC' ? 'ENOSPC' : 'EIO', `${what}: ${msg}`, { cause });
}
