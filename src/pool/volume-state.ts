/**
 * The metadata of one volume: its identity, the mapping table (virtual chunk -> physical chunk + 1) and the
 * generation map with its count table. These methods are the only way the tables change, both while serving
 * (after the journal record has been queued) and while replaying the journal, so the two can not drift apart.
 */
import { GenerationMap } from './generation-map.js';
import { PagedTable, type PageShares } from './paged-table.js';

/** Volume flags (journal records VOLUME_CLONE / VOLUME_FLAGS, checkpoint). */
export const VolumeFlag = {
  /** writes are refused with EPERM (read-only snapshot, replica) */
  READ_ONLY: 1,
  /** not listed and not exported: internal point-in-time views of backups, restore staging */
  HIDDEN: 2,
  /** created by `snapshot create` */
  SNAPSHOT: 4,
  /** a full copy (`volume copy`) whose background copying has not finished: shared chunks are copied on access */
  COPYING: 8,
  /** a compacted replica (`replica create`) */
  REPLICA: 16,
  /** being built; a volume still carrying this flag at open was interrupted by a crash and is deleted */
  INCOMPLETE: 32,
  /**
   * a backup's point-in-time view (HIDDEN too); its current generation is the one the view closed on its source.
   * It disappears in the same record that finishes the backup (GEN_REBASE) or undoes its generation (GEN_FOLD).
   */
  BACKUP_VIEW: 64,
  /**
   * a difference backup presented as a read-only device for `dd` (`diff export`): a point-in-time view of its
   * source (`source`) kept until `diff remove`; its current generation is the last one its stream holds
   */
  DIFF_EXPORT: 128,
} as const;

/**
 * Where a volume stands in a backup chain (seed 002): the full backup stream its generation map counts from, and
 * the last generation a diff of that chain holds. Set by a full backup (through 0), a diff (through g) and a
 * restore (the chain of the restored streams); a new diff extends it. Copies do not inherit it.
 */
export interface BackupChain {
  baseStreamUuid: string;
  throughGeneration: number;
}

/** the volume a snapshot/copy was made from (seed 003: kept hidden, carried by every backup made of the copy) */
export interface VolumeIdentity {
  uuid: string;
  name: string;
}

export class VolumeState {
  readonly map: PagedTable;
  readonly gens: GenerationMap;
  flags = 0;
  /** the volume this one was copied from (direct parent), or null for an original volume */
  source: VolumeIdentity | null = null;
  /** the original volume at the root of the copy chain; the lineage identity of backups */
  origin: VolumeIdentity | null = null;
  /** the backup chain this volume's generation map belongs to, or null (no full backup yet, or a copy) */
  chain: BackupChain | null = null;
  /**
   * chunk -> seq of the MARK record that set its current generation, while that record may not be durable yet
   * (see commit-rules.ts); pruned after each commit.
   */
  readonly pendingMarks = new Map<number, number>();
  /** where the next allocation for this volume starts looking (keeps a volume's chunks physically together) */
  cursor = -1;
  deleted = false;
  /** callers holding the volume open (NBD connections) */
  openCount = 0;

  constructor(
    readonly id: number,
    public name: string,
    readonly uuid: string,
    public size: number,
    readonly createdAt: number,
    readonly chunkSize: number,
    shares?: { map: PageShares; gens: PageShares },
  ) {
    this.map = new PagedTable(shares?.map);
    this.gens = new GenerationMap(Math.ceil(size / chunkSize), shares?.gens);
  }

  /** the identity backups of this volume carry: its origin's, or its own for an original volume */
  get lineage(): VolumeIdentity {
    return this.origin ?? { uuid: this.uuid, name: this.name };
  }

  has(flag: number): boolean {
    return (this.flags & flag) !== 0;
  }

  /**
   * Makes `target` (a new, empty volume state) a point-in-time copy of this volume: same size, current
   * generation, mapping and generation pages shared (copy-on-write). One step per existing page, none per chunk.
   */
  shareInto(target: VolumeState): void {
    target.size = this.size;
    this.map.shareInto(target.map);
    this.gens.shareInto(target.gens);
    target.source = { uuid: this.uuid, name: this.name };
    target.origin = this.lineage;
  }

  /**
   * Restore commit: this volume's content becomes `staging`'s (its pages are taken over, staging is left empty);
   * this volume keeps its identity. Chunks mapped before or after are marked changed in the current generation.
   */
  takeContentFrom(staging: VolumeState): void {
    const touched: number[] = [];
    const collect = (c: number) => touched.push(c);
    this.map.forEachNonZero(0, this.chunks, collect);
    staging.map.forEachNonZero(0, staging.chunks, collect);
    this.map.releaseAll();
    staging.map.shareInto(this.map);
    staging.map.releaseAll();
    const g = this.gens.current;
    for (const c of touched) if (c < this.chunks) this.gens.set(c, g);
    this.pendingMarks.clear();
  }

  /**
   * Restore commit of a backup chain: this volume takes `staging`'s content, size, generation map, current
   * generation and backup chain (a restored volume stands where its streams left the original, which may have been
   * resized in between); it keeps its identity.
   */
  takeAllFrom(staging: VolumeState): void {
    this.size = staging.size;
    this.map.releaseAll();
    staging.map.shareInto(this.map);
    staging.map.releaseAll();
    this.gens.release();
    staging.gens.shareInto(this.gens);
    staging.gens.release();
    this.chain = staging.chain;
    this.pendingMarks.clear();
  }

  get chunks(): number {
    return this.gens.chunkCount;
  }

  /** physical chunk of virtual chunk c, or -1 */
  physical(c: number): number {
    return this.map.get(c) - 1;
  }

  mapChunk(c: number, p: number, generation: number): void {
    this.map.set(c, p + 1);
    this.gens.set(c, generation);
  }

  /** returns the physical chunk that was mapped, or -1 */
  unmapChunk(c: number, generation: number): number {
    const old = this.map.set(c, 0);
    this.gens.set(c, generation);
    return old - 1;
  }

  markChunk(c: number, generation: number): void {
    this.gens.set(c, generation);
  }

  /** sets the size; chunks past the new end are dropped */
  resize(size: number): void {
    const chunks = Math.ceil(size / this.chunkSize);
    const old = this.chunks;
    if (chunks < old) {
      // entries of pages no other volume holds are dropped (the map's ownership hooks release them)
      this.map.truncate(chunks);
      for (const c of [...this.pendingMarks.keys()]) if (c >= chunks) this.pendingMarks.delete(c);
    }
    this.gens.resize(chunks);
    this.size = size;
  }

  get allocatedChunks(): number {
    return this.map.count;
  }

  get memoryBytes(): number {
    return this.map.memoryBytes + this.gens.memoryBytes + this.pendingMarks.size * 40 + 256;
  }
}
