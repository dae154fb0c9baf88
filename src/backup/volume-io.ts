/**
 * The pool side of dumps and restores: a volume (normally a point-in-time view) as a ChunkSource, and a staging
 * volume as a ChunkSink that keeps restored volumes thin.
 */
import type { Volume } from '../pool/index.js';
import type { ChunkSink, ChunkSource, StreamEntry } from './io.js';

/** Reads the listed entries of a volume; physically consecutive entries are read with one call. */
export class VolumeChunkSource implements ChunkSource {
  constructor(
    private readonly volume: Volume,
    readonly entries: readonly StreamEntry[],
    private readonly chunkSize: number,
  ) {}

  /** every mapped chunk of the volume, with `generation` as the record generation (full and replica streams: 0) */
  static allMapped(volume: Volume, chunkSize: number, generation: (chunkGeneration: number) => number): VolumeChunkSource {
    const entries = volume.mappedChunks().map((m) => ({ offset: m.chunk * chunkSize, length: chunkSize, generation: generation(m.generation) }));
    return new VolumeChunkSource(volume, entries, chunkSize);
  }

  async readChunks(firstIndex: number, count: number, into: Buffer): Promise<void> {
    const cs = this.chunkSize;
    const size = this.volume.size;
    const reads: Array<Promise<unknown>> = [];
    let i = firstIndex;
    const end = firstIndex + count;
    while (i < end) {
      // a run of entries adjacent in the volume
      let j = i + 1;
      while (j < end && this.entries[j].offset === this.entries[j - 1].offset + cs) j++;
      const start = this.entries[i].offset;
      const bufStart = (i - firstIndex) * cs;
      const want = (j - i) * cs;
      // the last chunk of a volume whose size is not a multiple of the chunk size: zero padded
      const readable = Math.max(0, Math.min(want, size - start));
      const view = into.subarray(bufStart, bufStart + want);
      if (readable < want) view.fill(0, readable);
      if (readable > 0) {
        reads.push(
          this.volume.read(start, view.subarray(0, readable)).then((holes) => {
            for (let k = 0; k < holes.length; k += 2) view.fill(0, holes[k], holes[k] + holes[k + 1]);
          }),
        );
      }
      i = j;
    }
    await Promise.all(reads);
  }
}

/** writes in flight while restoring; each holds a copy of one chunk */
const STAGING_WRITES_IN_FLIGHT = 8;

export interface VolumeChunkSinkOptions {
  /**
   * all-zero records are applied as zeroing (the chunk is unmapped): a diff applied over earlier content, where a
   * zero record means "became a hole". Without it they are skipped (a full restore into an empty volume).
   */
  zeroRecords?: 'skip' | 'unmap';
  /** records for which this returns false are not applied (counted in chunksFiltered) */
  accept?: (entry: StreamEntry) => boolean;
}

/**
 * Writes restored chunks into a (staging) volume. All-zero chunks are not written, so restored volumes stay thin;
 * up to 8 writes run at once. Call `drain()` before committing.
 */
export class VolumeChunkSink implements ChunkSink {
  private readonly inFlight = new Set<Promise<void>>();
  private readonly spare: Buffer[] = [];
  private failure: unknown = null;
  chunksWritten = 0;
  /** all-zero records not written (zeroRecords 'skip') */
  chunksSkipped = 0;
  /** all-zero records applied by unmapping (zeroRecords 'unmap') */
  chunksUnmapped = 0;
  /** records refused by `accept` */
  chunksFiltered = 0;

  constructor(
    private readonly volume: Volume,
    private readonly zeros: Buffer,
    private readonly opts: VolumeChunkSinkOptions = {},
  ) {}

  async writeChunk(entry: StreamEntry, data: Buffer): Promise<void> {
    if (this.failure !== null) throw this.failure;
    if (this.opts.accept && !this.opts.accept(entry)) {
      this.chunksFiltered++;
      return;
    }
    const length = Math.min(entry.length, this.volume.size - entry.offset);
    const payload = data.subarray(0, length);
    const allZero = payload.equals(this.zeros.subarray(0, length));
    if (allZero && this.opts.zeroRecords !== 'unmap') {
      this.chunksSkipped++;
      return;
    }
    while (this.inFlight.size >= STAGING_WRITES_IN_FLIGHT) await Promise.race(this.inFlight);
    if (this.failure !== null) throw this.failure;
    if (allZero) {
      this.track(this.volume.zero(entry.offset, length, { noHole: false, fua: false }).then(() => {
        this.chunksUnmapped++;
      }));
      return;
    }
    const copy = this.spare.pop() ?? Buffer.allocUnsafe(data.length);
    payload.copy(copy);
    const p: Promise<void> = this.volume
      .write(entry.offset, copy.subarray(0, length), false)
      .then(
        () => {
          this.chunksWritten++;
        },
        (err) => {
          this.failure ??= err;
        },
      )
      .finally(() => {
        this.inFlight.delete(p);
        this.spare.push(copy);
      });
    this.inFlight.add(p);
  }

  private track(op: Promise<void>): void {
    const p: Promise<void> = op
      .catch((err) => {
        this.failure ??= err;
      })
      .finally(() => this.inFlight.delete(p));
    this.inFlight.add(p);
  }

  /** waits for the writes in flight; throws the first write error */
  async drain(): Promise<void> {
    await Promise.all(this.inFlight);
    if (this.failure !== null) throw this.failure;
  }
}
