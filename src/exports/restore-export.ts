/**
 * A restore session (src/backup/restore-session.ts) served as a write-only NBD device: `dd if=STREAM
 * of=/dev/nbd1 bs=256k` through the kernel client writes the stream into it. Reads return zeros (the kernel reads
 * the first and last sectors when it attaches a device); a FLUSH (`dd conv=fsync`, or the close of the device)
 * resolves once every byte received has been consumed by the restore and, when that was the whole stream, the
 * restore has been committed, or fails with EIO when the stream was refused (the reason: `restore status NAME`).
 */
import type { Export, Extent, HoleList } from '../nbd/export.js';
import type { RestoreSession } from '../backup/restore-session.js';
import { isGzip } from '../backup/compression.js';

const BASE_ALLOCATION = 'base:allocation';
const MAX_PAYLOAD = 32 * 1024 * 1024;

function error(code: 'EPERM' | 'EIO', message: string): Error {
  return Object.assign(new Error(message), { code });
}

export class RestoreExport implements Export {
  readonly readOnly = false;
  readonly canTrim = false;
  readonly canZero = false;
  readonly canFastZero = false;
  readonly canCache = false;
  readonly canMultiConn = false;
  readonly metaContexts = [BASE_ALLOCATION] as const;
  readonly blockSize = { minimum: 1, preferred: 256 * 1024, maximum: MAX_PAYLOAD };

  constructor(private readonly session: RestoreSession) {}

  get name(): string {
    return this.session.name;
  }
  get description(): string {
    const t = this.session.target;
    return `thinvault restore export ${this.session.name}: write a backup stream here to restore it ${t.into ? `into ${t.into}` : `as ${t.as}`}`;
  }
  get size(): number {
    return this.session.deviceBytes;
  }

  async read(_offset: number, buf: Buffer): Promise<HoleList> {
    return [0, buf.length];
  }
  async write(offset: number, data: Buffer): Promise<void> {
    const s = this.session;
    if (s.state === 'failed' || s.state === 'cancelled') throw error('EIO', `restore export ${s.name} ${s.state}: ${s.error?.message ?? ''}`);
    if (offset === 0 && isGzip(data)) {
      // a compressed stream may be shorter than a header block: say so now rather than wait for bytes never sent
      s.assembler.fail(Object.assign(new Error('this is a compressed (gzip) stream: restore it from a file or tape with restore --from, which expands it'), { code: 'EINVAL' }));
    }
    await s.assembler.write(offset, data);
  }
  async flush(): Promise<void> {
    const s = this.session;
    await s.assembler.drained();
    if (s.assembler.position > 0 && s.assembler.position >= s.assembler.end) await s.finished;
    if (s.state === 'failed' || s.state === 'cancelled') throw error('EIO', `restore export ${s.name} ${s.state}: ${s.error?.message ?? ''}`);
  }
  async trim(): Promise<void> {
    throw error('EPERM', 'a restore export only takes writes');
  }
  async zero(): Promise<void> {
    throw error('EPERM', 'a restore export only takes writes');
  }
  async cache(): Promise<void> {}
  async blockStatus(context: string, offset: number, length: number): Promise<Extent[]> {
    if (context !== BASE_ALLOCATION) throw Object.assign(new Error(`unknown meta context ${context}`), { code: 'EINVAL' });
    return [{ length: Math.min(length, this.size - offset), flags: 0 }];
  }
}
