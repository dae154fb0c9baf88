/**
 * The metadata of one volume: its identity, the mapping table (virtual chunk -> physical chunk + 1) and the
 * generation map with its count table. These methods are the only way the tables change, both while serving
 * (after the journal record has been queued) and while replaying the journal, so the two can not drift apart.
 */
import { GenerationMap } from './generation-map.js';
import { PagedTable } from './paged-table.js';

export class VolumeState {
  readonly map = new PagedTable();
  readonly gens: GenerationMap;
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
  ) {
    this.gens = new GenerationMap(Math.ceil(size / chunkSize));
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

  /** sets the size; chunks past the new end are dropped, onFreed gets each physical chunk they mapped */
  resize(size: number, onFreed?: (p: number) => void): void {
    const chunks = Math.ceil(size / this.chunkSize);
    const old = this.chunks;
    if (chunks < old) {
      if (onFreed) this.map.forEachNonZero(chunks, old, (_c, e) => onFreed(e - 1));
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
