/**
 * A sparse u32 array split into pages of 1024 entries. A page exists only while it holds a non-zero entry, and it
 * is stored as narrow as its largest value allows (u8, u16, u32), so that sparse volumes and small generation
 * numbers cost little memory. Used for the mapping table (physical chunk + 1) and the generation map.
 */
import { PAGE_ENTRIES, PAGE_MASK, PAGE_SHIFT } from './format.js';

export type Page = Uint8Array | Uint16Array | Uint32Array;

function pageFor(value: number): Page {
  if (value <= 0xff) return new Uint8Array(PAGE_ENTRIES);
  if (value <= 0xffff) return new Uint16Array(PAGE_ENTRIES);
  return new Uint32Array(PAGE_ENTRIES);
}

function pageMax(page: Page): number {
  return page.BYTES_PER_ELEMENT === 1 ? 0xff : page.BYTES_PER_ELEMENT === 2 ? 0xffff : 0xffff_ffff;
}

export class PagedTable {
  private pages: Array<Page | undefined> = [];
  /** non-zero entries per page */
  private live: number[] = [];
  private nonZero = 0;
  private pageBytes = 0;

  get(i: number): number {
    const page = this.pages[i >>> PAGE_SHIFT];
    return page === undefined ? 0 : page[i & PAGE_MASK];
  }

  /** Sets entry i and returns its previous value. */
  set(i: number, value: number): number {
    const pi = i >>> PAGE_SHIFT;
    let page = this.pages[pi];
    if (page === undefined) {
      if (value === 0) return 0;
      page = pageFor(value);
      while (this.pages.length < pi) {
        this.pages.push(undefined);
        this.live.push(0);
      }
      this.pages[pi] = page;
      this.live[pi] = 0;
      this.pageBytes += page.byteLength;
    } else if (value > pageMax(page)) {
      const wider = pageFor(value);
      wider.set(page);
      this.pageBytes += wider.byteLength - page.byteLength;
      this.pages[pi] = page = wider;
    }
    const slot = i & PAGE_MASK;
    const old = page[slot];
    if (old === value) return old;
    page[slot] = value;
    if (old === 0) {
      this.live[pi]++;
      this.nonZero++;
    } else if (value === 0) {
      this.nonZero--;
      if (--this.live[pi] === 0) this.dropPage(pi);
    }
    return old;
  }

  /** number of non-zero entries */
  get count(): number {
    return this.nonZero;
  }

  /** bytes of resident memory (pages plus the page directory) */
  get memoryBytes(): number {
    return this.pageBytes + this.pages.length * 16;
  }

  /** Calls fn(i, value) for every non-zero entry with from <= i < to, in ascending order. */
  forEachNonZero(from: number, to: number, fn: (i: number, value: number) => void): void {
    if (from >= to) return;
    const lastPage = Math.min(this.pages.length - 1, Math.floor((to - 1) / PAGE_ENTRIES));
    for (let pi = Math.floor(from / PAGE_ENTRIES); pi <= lastPage; pi++) {
      const page = this.pages[pi];
      if (page === undefined) continue;
      const base = pi * PAGE_ENTRIES;
      const lo = Math.max(from - base, 0);
      const hi = Math.min(to - base, PAGE_ENTRIES);
      for (let s = lo; s < hi; s++) {
        const v = page[s];
        if (v !== 0) fn(base + s, v);
      }
    }
  }

  /** The first index >= from (and < to) whose entry is zero / non-zero, or `to` if none. */
  nextWhere(from: number, to: number, nonZero: boolean): number {
    let i = from;
    while (i < to) {
      const pi = Math.floor(i / PAGE_ENTRIES);
      const page = this.pages[pi];
      const pageEnd = Math.min((pi + 1) * PAGE_ENTRIES, to);
      if (page === undefined) {
        if (!nonZero) return i;
        i = pageEnd;
        continue;
      }
      if (nonZero ? this.live[pi] === 0 : this.live[pi] === PAGE_ENTRIES) {
        i = pageEnd;
        continue;
      }
      const base = pi * PAGE_ENTRIES;
      for (; i < pageEnd; i++) if ((page[i - base] !== 0) === nonZero) return i;
    }
    return to;
  }

  /** Zeroes every entry >= from. */
  truncate(from: number): void {
    const firstPage = Math.ceil(from / PAGE_ENTRIES);
    const partial = Math.floor(from / PAGE_ENTRIES);
    if (partial < firstPage) {
      const end = Math.min(firstPage * PAGE_ENTRIES, this.pages.length * PAGE_ENTRIES);
      for (let i = from; i < end; i++) if (this.get(i) !== 0) this.set(i, 0);
    }
    for (let pi = firstPage; pi < this.pages.length; pi++) {
      if (this.pages[pi] !== undefined) {
        this.nonZero -= this.live[pi];
        this.dropPage(pi);
      }
    }
    if (this.pages.length > firstPage) {
      this.pages.length = firstPage;
      this.live.length = firstPage;
    }
  }

  clear(): void {
    this.pages = [];
    this.live = [];
    this.nonZero = 0;
    this.pageBytes = 0;
  }

  /** Calls fn for every existing page in ascending order (for checkpoints). */
  forEachPage(fn: (pageIndex: number, page: Page) => void): void {
    for (let pi = 0; pi < this.pages.length; pi++) {
      const page = this.pages[pi];
      if (page !== undefined) fn(pi, page);
    }
  }

  get pageCount(): number {
    let n = 0;
    for (const p of this.pages) if (p !== undefined) n++;
    return n;
  }

  /** Installs a whole page (checkpoint load); an all-zero page is ignored. */
  loadPage(pageIndex: number, page: Page): void {
    let live = 0;
    for (let s = 0; s < PAGE_ENTRIES; s++) if (page[s] !== 0) live++;
    if (this.pages[pageIndex] !== undefined) throw new Error(`page ${pageIndex} loaded twice`);
    if (live === 0) return;
    while (this.pages.length < pageIndex) {
      this.pages.push(undefined);
      this.live.push(0);
    }
    this.pages[pageIndex] = page;
    this.live[pageIndex] = live;
    this.nonZero += live;
    this.pageBytes += page.byteLength;
  }

  private dropPage(pi: number): void {
    const page = this.pages[pi];
    if (page === undefined) return;
    this.pageBytes -= page.byteLength;
    this.pages[pi] = undefined;
    this.live[pi] = 0;
  }
}
