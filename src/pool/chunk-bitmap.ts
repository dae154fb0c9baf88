/**
 * A growable bitmap over physical chunks with a summary level (one bit per non-zero word), so that "next set bit
 * at or after i" stays fast when the map is mostly empty. Used for the set of clean free chunks.
 */
function ctz(x: number): number {
  return 31 - Math.clz32(x & -x);
}

export class ChunkBitmap {
  private words = new Uint32Array(0);
  private summary = new Uint32Array(0);
  private bits = 0;
  private ones = 0;

  get size(): number {
    return this.bits;
  }
  get count(): number {
    return this.ones;
  }
  get memoryBytes(): number {
    return this.words.byteLength + this.summary.byteLength;
  }

  grow(bits: number): void {
    if (bits <= this.bits) return;
    const nWords = Math.ceil(bits / 32);
    if (nWords > this.words.length) {
      const cap = Math.max(nWords, Math.ceil(this.words.length * 1.5));
      const w = new Uint32Array(cap);
      w.set(this.words);
      this.words = w;
      const s = new Uint32Array(Math.ceil(cap / 32));
      s.set(this.summary);
      this.summary = s;
    }
    this.bits = bits;
  }

  get(i: number): boolean {
    return (this.words[Math.floor(i / 32)] & (1 << (i & 31))) !== 0;
  }

  set(i: number): void {
    const w = Math.floor(i / 32);
    const bit = 1 << (i & 31);
    const old = this.words[w];
    if (old & bit) return;
    this.words[w] = old | bit;
    this.ones++;
    if (old === 0) this.summary[w >>> 5] |= 1 << (w & 31);
  }

  clear(i: number): void {
    const w = Math.floor(i / 32);
    const bit = 1 << (i & 31);
    const old = this.words[w];
    if (!(old & bit)) return;
    const now = old & ~bit;
    this.words[w] = now;
    this.ones--;
    if (now === 0) this.summary[w >>> 5] &= ~(1 << (w & 31));
  }

  setRange(start: number, count: number): void {
    for (let i = start; i < start + count; i++) this.set(i);
  }

  /** the first set bit >= from, or -1 */
  findNext(from: number): number {
    if (from >= this.bits || this.ones === 0) return -1;
    let w = Math.floor(from / 32);
    const masked = this.words[w] & ((0xffff_ffff << (from & 31)) >>> 0);
    if (masked !== 0) return this.check(w * 32 + ctz(masked));
    w++;
    let sw = w >>> 5;
    const nSummary = Math.ceil(Math.ceil(this.bits / 32) / 32);
    if (sw >= nSummary) return -1;
    let sbits = (w & 31) === 0 ? this.summary[sw] : this.summary[sw] & ((0xffff_ffff << (w & 31)) >>> 0);
    for (;;) {
      if (sbits !== 0) {
        const word = sw * 32 + ctz(sbits);
        return this.check(word * 32 + ctz(this.words[word]));
      }
      if (++sw >= nSummary) return -1;
      sbits = this.summary[sw];
    }
  }

  private check(i: number): number {
    return i < this.bits ? i : -1;
  }
}
