/**
 * A compacted replica served read-only as its packed image (docs/stream-format.md, kind "replica"): header, chunk
 * table, the allocated chunks one after another, CRC table, trailer. `dd if=/dev/nbd1 of=/dev/st0 bs=256k` through
 * the kernel client is then a full backup that `thinvault restore` reads back.
 */
import type { Export, Extent, HoleList } from '../nbd/export.js';
import type { ReplicaImage } from '../backup/replica.js';

const BASE_ALLOCATION = 'base:allocation';
const MAX_PAYLOAD = 32 * 1024 * 1024;

function readOnlyError(): Error {
  return Object.assign(new Error('a replica image is read-only'), { code: 'EPERM' });
}

export class ReplicaExport implements Export {
  readonly readOnly = true;
  readonly canTrim = false;
  readonly canZero = false;
  readonly canFastZero = false;
  readonly canCache = false;
  /** the image is immutable: any connection sees the same bytes */
  readonly canMultiConn = true;
  readonly metaContexts = [BASE_ALLOCATION] as const;
  readonly blockSize = { minimum: 1, preferred: 256 * 1024, maximum: MAX_PAYLOAD };

  constructor(
    private readonly image: ReplicaImage,
    readonly name: string,
  ) {}

  get description(): string {
    const h = this.image.header;
    return h.kind === 'diff'
      ? `thinvault diff export ${this.name}: difference backup of ${h.origin.name}, generations ${h.generationFrom}..${h.generationTo} (${h.recordCount} chunks)`
      : `thinvault replica ${this.name}: packed image of ${h.origin.name} (${h.recordCount} chunks)`;
  }
  get size(): number {
    return this.image.size;
  }

  async read(offset: number, buf: Buffer): Promise<HoleList> {
    await this.image.read(offset, buf);
    return [];
  }
  async write(): Promise<void> {
    throw readOnlyError();
  }
  async flush(): Promise<void> {}
  async trim(): Promise<void> {
    throw readOnlyError();
  }
  async zero(): Promise<void> {
    throw readOnlyError();
  }
  async cache(): Promise<void> {}
  async blockStatus(context: string, offset: number, length: number): Promise<Extent[]> {
    if (context !== BASE_ALLOCATION) throw Object.assign(new Error(`unknown meta context ${context}`), { code: 'EINVAL' });
    // the image is dense: every byte is data
    return [{ length: Math.min(length, this.image.size - offset), flags: 0 }];
  }
}
