/**
 * The generation map and count table of one volume (seed 002: 差分マップ情報 600 and 更新ブロック数テーブル 500).
 *
 * gen[c] is the generation in which chunk c last changed (0 = unchanged since the base full backup); the count
 * table holds, per generation, how many chunks currently carry it. Every change of an entry moves one unit from
 * the old generation's count to the new one's, so the counts are exact at all times. The count of generation 0 is
 * derived (chunks minus the non-zero entries) so that growing a volume needs no work.
 */
import { PagedTable, type PageShares } from './paged-table.js';

export class GenerationMap {
  private readonly table: PagedTable;
  private counts = new Map<number, number>();
  /** the volume's current generation: a write now marks chunks with it */
  current = 1;
  /** number of chunks of the volume */
  private chunks: number;

  constructor(chunks: number, shares?: PageShares) {
    this.chunks = chunks;
    this.table = new PagedTable(shares);
  }

  /** Makes `target` (a fresh map of the same pool) an equal copy that shares this map's pages. */
  shareInto(target: GenerationMap): void {
    this.table.shareInto(target.table);
    target.counts = new Map(this.counts);
    target.chunks = this.chunks;
    target.current = this.current;
  }

  get(c: number): number {
    return this.table.get(c);
  }

  set(c: number, generation: number): void {
    const old = this.table.set(c, generation);
    if (old === generation) return;
    if (old !== 0) {
      const n = (this.counts.get(old) ?? 0) - 1;
      if (n === 0) this.counts.delete(old);
      else this.counts.set(old, n);
    }
    if (generation !== 0) this.counts.set(generation, (this.counts.get(generation) ?? 0) + 1);
  }

  get chunkCount(): number {
    return this.chunks;
  }

  /** Number of chunks carrying `generation`. */
  count(generation: number): number {
    return generation === 0 ? this.chunks - this.table.count : (this.counts.get(generation) ?? 0);
  }

  /** Every generation with at least one chunk, ascending, generation 0 included. */
  countTable(): Array<{ generation: number; chunks: number }> {
    const out: Array<{ generation: number; chunks: number }> = [];
    const zero = this.count(0);
    if (zero > 0) out.push({ generation: 0, chunks: zero });
    const gens = [...this.counts.keys()].sort((a, b) => a - b);
    for (const g of gens) out.push({ generation: g, chunks: this.counts.get(g)! });
    return out;
  }

  /**
   * Volume resized to `chunks` chunks: entries past the end leave the counts; chunks added by a grow are marked
   * with the current generation. They read as zeros now, but before an earlier shrink (since the last backup)
   * they may have held data, so "unchanged" (0) could under-report; marking them over-reports at worst.
   */
  resize(chunks: number): void {
    const old = this.chunks;
    if (chunks < old) {
      this.table.forEachNonZero(chunks, old, (_c, g) => {
        const n = this.counts.get(g)! - 1;
        if (n === 0) this.counts.delete(g);
        else this.counts.set(g, n);
      });
      this.table.truncate(chunks);
    }
    this.chunks = chunks;
    for (let c = old; c < chunks; c++) this.set(c, this.current);
  }

  /** Lets go of every page (the volume is deleted). */
  release(): void {
    this.table.releaseAll();
    this.counts.clear();
  }

  /** Full-backup semantics: every chunk unchanged, generation 1 starts. */
  reset(): void {
    this.table.releaseAll();
    this.counts.clear();
    this.current = 1;
  }

  /**
   * Full backup taken at the start of generation base + 1 (seed 002: the map restarts at the backup point):
   * chunks last changed in generations <= base become unchanged (0), later ones are renumbered so that base + 1
   * becomes generation 1. Per non-zero entry; the count table is rebuilt.
   */
  rebase(base: number): void {
    if (base <= 0) return;
    const changes: number[] = [];
    this.table.forEachNonZero(0, this.chunks, (c, g) => changes.push(c, g > base ? g - base : 0));
    for (let k = 0; k < changes.length; k += 2) this.table.set(changes[k], changes[k + 1]);
    this.current = Math.max(1, this.current - base);
    this.recount();
  }

  /** Chunk indexes whose generation is >= fromGeneration, ascending. */
  changedSince(fromGeneration: number): number[] {
    const out: number[] = [];
    if (fromGeneration <= 0) {
      for (let c = 0; c < this.chunks; c++) out.push(c);
      return out;
    }
    this.table.forEachNonZero(0, this.chunks, (c, g) => {
      if (g >= fromGeneration) out.push(c);
    });
    return out;
  }

  /**
   * Undoes an advance whose backup failed: chunks marked with the current generation go back to `into` (= current
   * − 1), which becomes current again, so the next backup still sees them as changed since the last good one.
   */
  fold(into: number): void {
    const from = this.current;
    if (from !== into + 1) return;
    const moved: number[] = [];
    this.table.forEachNonZero(0, this.chunks, (c, g) => {
      if (g === from) moved.push(c);
    });
    for (const c of moved) this.set(c, into);
    this.current = into;
  }

  get memoryBytes(): number {
    return this.table.memoryBytes + this.counts.size * 32;
  }

  /** the underlying table (checkpoint serialization) */
  get entries(): PagedTable {
    return this.table;
  }

  /** Rebuilds the count table from the entries (after loading pages). */
  recount(): void {
    this.counts.clear();
    this.table.forEachNonZero(0, this.chunks, (_c, g) => this.counts.set(g, (this.counts.get(g) ?? 0) + 1));
  }
}
