/** The pool's metadata as a whole: the volumes by id and by name, and the next volume id. */
import { VolumeState } from './volume-state.js';

export class PoolMetadata {
  readonly volumes = new Map<number, VolumeState>();
  readonly byName = new Map<string, VolumeState>();
  nextVolumeId = 1;

  constructor(readonly chunkSize: number) {}

  addVolume(v: VolumeState): void {
    this.volumes.set(v.id, v);
    this.byName.set(v.name, v);
    if (v.id >= this.nextVolumeId) this.nextVolumeId = v.id + 1;
  }

  removeVolume(v: VolumeState): void {
    this.volumes.delete(v.id);
    if (this.byName.get(v.name) === v) this.byName.delete(v.name);
    v.deleted = true;
  }

  /** Calls fn(physicalChunk) for every mapped chunk of every volume (reference counting). */
  forEachMapped(fn: (p: number, v: VolumeState) => void): void {
    for (const v of this.volumes.values()) v.map.forEachNonZero(0, v.chunks, (_c, e) => fn(e - 1, v));
  }

  get memoryBytes(): number {
    let n = 0;
    for (const v of this.volumes.values()) n += v.memoryBytes;
    return n;
  }
}
