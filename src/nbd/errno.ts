import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
} from './constants.js';

/**
 * errno names (as carried in `err.code` by an Export, see export.ts, or by Node's own system errors) mapped
 * onto the wire error values. The spec also asks to map EDQUOT and EFBIG to ENOSPC.
 */
const ERRNO_BY_CODE: Readonly<Record<string, number>> = {
  EPERM: NBD_EPERM,
  EACCES: NBD_EPERM,
  EROFS: NBD_EPERM,
  EIO: NBD_EIO,
  ENOMEM: NBD_ENOMEM,
  EINVAL: NBD_EINVAL,
  ENOSPC: NBD_ENOSPC,
  EDQUOT: NBD_ENOSPC,
  EFBIG: NBD_ENOSPC,
  EOVERFLOW: NBD_EOVERFLOW,
  ENOTSUP: NBD_ENOTSUP,
  EOPNOTSUPP: NBD_ENOTSUP,
  ESHUTDOWN: NBD_ESHUTDOWN,
};

/** The wire errno for an error thrown by an Export; `known` is false when it fell back to EIO. */
export function nbdErrnoOf(err: unknown): { errno: number; known: boolean } {
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  if (typeof code === 'string') {
    const errno = ERRNO_BY_CODE[code];
    if (errno !== undefined) return { errno, known: true };
  }
  return { errno: NBD_EIO, known: false };
}
