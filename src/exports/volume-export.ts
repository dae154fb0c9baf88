/** A pool volume served as a read-write NBD export. */
import type { Export, Extent, ExportProvider, ExportHandle, HoleList, ZeroOptions } from '../nbd/export.js';
import type { Logger } from 'pino';
import type { Pool, Volume } from '../pool/index.js';
import { ReplicaImage } from '../backup/replica.js';
import { ReplicaExport } from './replica-export.js';
import { RestoreExport } from './restore-export.js';
import type { RestoreSessions } from '../backup/restore-session.js';

/** NBD base:allocation flags (the values are fixed by the protocol; named here to keep pool types NBD-free) */
const STATE_HOLE = 1;
const STATE_ZERO = 2;
const BASE_ALLOCATION = 'base:allocation';
const MAX_PAYLOAD = 32 * 1024 * 1024;

/**
 * `qemu:dirty-bitmap:since-K` (K >= 1, decimal, no sign or leading zeros): flag 1 (qemu's NBD_STATE_DIRTY) on the
 * bytes of chunks whose generation is >= K, i.e. changed in generation K or later. Generations are u32.
 */
const DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:since-';
const DIRTY_BITMAP_NAME = /^qemu:dirty-bitmap:since-([1-9][0-9]{0,9})$/;
const STATE_DIRTY = 1;
const MAX_GENERATION = 0xffff_ffff;
/** LIST shows since-K for the most recent generations only (any K is accepted by name) */
const LISTED_DIRTY_BITMAPS = 64;

/** K of a `qemu:dirty-bitmap:since-K` name, or undefined when `name` is not one. */
export function dirtyBitmapGeneration(name: string): number | undefined {
  const m = DIRTY_BITMAP_NAME.exec(name);
  if (m === null) return undefined;
  const k = Number(m[1]);
  return k <= MAX_GENERATION ? k : undefined;
}

export class VolumeExport implements Export {
  /** read-only snapshots: advertised to the client, and the volume answers writes with EPERM regardless */
  readonly readOnly: boolean;
  readonly canTrim: boolean;
  readonly canZero: boolean;
  /** zeroing without NO_HOLE only unmaps chunks (plus small edge writes), so it is fast */
  readonly canFastZero = true;
  readonly canCache = true;
  /** one data file and one journal per pool: a flush on any connection covers every completed write */
  readonly canMultiConn = true;
  readonly metaContexts = [BASE_ALLOCATION] as const;
  readonly blockSize;

  constructor(private readonly volume: Volume, chunkSize: number) {
    this.readOnly = volume.readOnly;
    this.canTrim = !this.readOnly;
    this.canZero = !this.readOnly;
    this.blockSize = { minimum: 1, preferred: Math.min(chunkSize, MAX_PAYLOAD), maximum: MAX_PAYLOAD };
  }

  get name(): string {
    return this.volume.name;
  }
  get description(): string {
    return `thinvault volume ${this.volume.name} (${this.volume.uuid})`;
  }
  get size(): number {
    return this.volume.size;
  }

  read(offset: number, buf: Buffer): Promise<HoleList> {
    return this.volume.read(offset, buf);
  }
  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.volume.write(offset, data, fua);
  }
  flush(): Promise<void> {
    return this.volume.flush();
  }
  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.volume.trim(offset, length, fua);
  }
  zero(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    return this.volume.zero(offset, length, { noHole: opts.noHole, fua: opts.fua });
  }
  async cache(): Promise<void> {
    // The data file lives in the page cache already; prefetching would only compete with real reads.
  }
  acceptsMetaContext(name: string): boolean {
    return dirtyBitmapGeneration(name) !== undefined;
  }
  /** since-K for the current generation and up to 63 before it, ascending */
  listMetaContexts(): string[] {
    const current = this.volume.info().generation;
    const names: string[] = [];
    for (let k = Math.max(1, current - LISTED_DIRTY_BITMAPS + 1); k <= current; k++) names.push(DIRTY_BITMAP_PREFIX + k);
    return names;
  }
  async blockStatus(context: string, offset: number, length: number): Promise<Extent[]> {
    if (context === BASE_ALLOCATION) {
      return this.volume
        .allocation(offset, length)
        .map((e) => ({ length: e.length, flags: e.allocated ? 0 : STATE_HOLE | STATE_ZERO }));
    }
    const since = dirtyBitmapGeneration(context);
    if (since === undefined) throw Object.assign(new Error(`unknown meta context ${context}`), { code: 'EINVAL' });
    return this.volume
      .changedExtents(since, offset, length)
      .map((e) => ({ length: e.length, flags: e.changed ? STATE_DIRTY : 0 }));
  }
}

/**
 * Serves every volume of a pool under its own name (a replica or diff export as its stream image), and the
 * restore sessions (write-only pseudo-devices) under theirs.
 */
export class PoolExportProvider implements ExportProvider {
  constructor(
    private readonly pool: Pool,
    private readonly log?: Logger,
    private readonly restoreSessions?: RestoreSessions,
  ) {}

  list(): Array<{ name: string; description: string }> {
    const out = this.pool.listVolumes().map((v) => ({ name: v.name, description: `thinvault ${v.kind === 'volume' ? 'volume' : v.kind} ${v.name}` }));
    for (const s of this.restoreSessions?.list() ?? []) out.push({ name: s.name, description: `thinvault restore export ${s.name}` });
    return out;
  }

  open(name: string): ExportHandle | undefined {
    const session = this.restoreSessions?.get(name);
    if (session) return { export: new RestoreExport(session), release: () => {} };
    const volume = this.pool.volume(name);
    // internal volumes (backup views, restore staging) and volumes held by a restore are not served
    if (!volume || volume.info().kind === 'internal' || volume.heldBy !== null) return undefined;
    let exp: Export;
    if (volume.info().kind === 'replica' || volume.info().kind === 'diff-export') {
      try {
        exp = new ReplicaExport(ReplicaImage.open(this.pool, name, 'any'), name);
      } catch (err) {
        this.log?.error({ replica: name, err: (err as Error).message }, 'replica image unavailable');
        return undefined;
      }
    } else {
      exp = new VolumeExport(volume, this.pool.chunkSize);
    }
    volume.acquire();
    let released = false;
    return {
      export: exp,
      release: () => {
        if (released) return;
        released = true;
        volume.release();
      },
    };
  }
}
