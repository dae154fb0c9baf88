/** The pool's metadata as a whole: the volumes by id and by name, and the next volume id. */
import { PageShares, type Page } from './paged-table.js';
import { VolumeState } from './volume-state.js';

export class PoolMetadata {
  readonly volumes = new Map<number, VolumeState>();
  readonly byName = new Map<string, VolumeState>();
  nextVolumeId = 1;
  /** holders of mapping / generation pages shared between volumes (snapshots) */
  readonly shares = { map: new PageShares(), gens: new PageShares() };

  constructor(readonly chunkSize: number) {}

  /** a new, empty volume state whose tables can share pages with the pool's other volumes */
  newVolumeState(id: number, name: string, uuid: string, size: number, createdAt: number): VolumeState {
    return new VolumeState(id, name, uuid, size, createdAt, this.chunkSize, this.shares);
  }

  addVolume(v: VolumeState): void {
    this.volumes.set(v.id, v);
    this.byName.set(v.name, v);
    if (v.id >= this.nextVolumeId) this.nextVolumeId = v.id + 1;
  }

  renameVolume(v: VolumeState, name: string): void {
    if (this.byName.get(v.name) === v) this.byName.delete(v.name);
    v.name = name;
    this.byName.set(name, v);
  }

  /**
   * Removes the volume and lets go of its pages; entries of mapping pages no other volume holds reach the
   * mapping ownership hook (`shares.map.hooks.dropped`), which frees them while serving.
   */
  removeVolume(v: VolumeState): void {
    this.volumes.delete(v.id);
    if (this.byName.get(v.name) === v) this.byName.delete(v.name);
    v.deleted = true;
    v.map.releaseAll();
    v.gens.release();
  }

  /**
   * Calls fn(physicalChunk) once per mapping entry of every distinct mapping page (a page shared by several
   * volumes counts once): the physical reference counts are the number of page objects that hold a chunk.
   */
  forEachMapped(fn: (p: number, v: VolumeState) => void): void {
    const seen = new Set<Page>();
    for (const v of this.volumes.values()) {
      v.map.forEachPage((_pi, page) => {
        if (seen.has(page)) return;
        seen.add(page);
        for (let s = 0; s < page.length; s++) if (page[s] !== 0) fn(page[s] - 1, v);
      });
    }
  }

  get memoryBytes(): number {
    let n = 0;
    for (const v of this.volumes.values()) n += v.memoryBytes;
    return n;
  }
}
