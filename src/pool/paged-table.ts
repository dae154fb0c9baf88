/**
 * A sparse u32 array split into pages of 1024 entries. A page exists only while it holds a non-zero entry, and it
 * is stored as narrow as its largest value allows (u8, u16, u32), so that sparse volumes and small generation
 * numbers cost little memory. Used for the mapping table (physical chunk + 1) and the generation map.
 *
 * Pages can be shared between tables (snapshots, seed 003): `shareInto` makes another table point at the same page
 * objects, which costs one step per existing page and none per chunk. A shared page is copied the first time
 * either table changes it (copy-on-write of the table itself); `PageShares` counts the holders of each shared
 * page so that the last holder neither copies nor, when it drops the page, leaves the entries' references behind.
 */
import { PAGE_ENTRIES, PAGE_MASK, PAGE_SHIFT } from './format.js';

export type Page = Uint8Array | Uint16Array | Uint32Array;

/**
 * Holder counts of the pages that are (or were) shared between tables of one pool. A page absent from the map
 * has exactly one holder.
 */
export class PageShares {
  private readonly holders = new Map<Page, number>();
  /** set when page ownership matters (mapping tables, outside of journal replay) */
  hooks: PageOwnershipHooks | null = null;

  holdersOf(page: Page): number {
    return this.holders.get(page) ?? 1;
  }

  /** pages handed to another table so far: the work of taking snapshots (tests check it does not grow with size) */
  shareSteps = 0;

  /** one more table holds `page` */
  add(page: Page): void {
    this.holders.set(page, this.holdersOf(page) + 1);
    this.shareSteps++;
  }

  /** one table let go of `page`; returns the holders left */
  drop(page: Page): number {
    const left = this.holdersOf(page) - 1;
    if (left <= 1) this.holders.delete(page);
    else this.holders.set(page, left);
    return left;
  }

  /** number of page objects with more than one holder */
  get sharedPages(): number {
    return this.holders.size;
  }
}

/**
 * What a table owns through its pages, reported when page ownership changes: `copied` when a shared page was
 * copied (every non-zero entry now appears in one more page object), `dropped` for each non-zero entry of a page
 * object that no table holds any more. The mapping table uses them for physical reference counts.
 */
export interface PageOwnershipHooks {
  copied(page: Page): void;
  dropped(value: number): void;
}

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
  /** pages that may be shared with another table (then `shares` knows their holders) */
  private mayShare: boolean[] = [];
  private nonZero = 0;
  private pageBytes = 0;
  constructor(private readonly shares: PageShares = new PageShares()) {}

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
      this.growDirectory(pi);
      this.pages[pi] = page;
      this.live[pi] = 0;
      this.mayShare[pi] = false;
      this.pageBytes += page.byteLength;
    } else if (this.mayShare[pi]) {
      if (page[i & PAGE_MASK] === value) return value;
      page = this.ownPage(pi, page);
    }
    if (value > pageMax(page)) {
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

  /**
   * Zeroes every entry >= from. Entries of page objects that no table holds afterwards go to `shares.hooks.dropped`
   * (pages still held by another table keep their entries' references).
   */
  truncate(from: number): void {
    const firstPage = Math.ceil(from / PAGE_ENTRIES);
    const partial = Math.floor(from / PAGE_ENTRIES);
    if (partial < firstPage) {
      const end = Math.min(firstPage * PAGE_ENTRIES, this.pages.length * PAGE_ENTRIES);
      for (let i = from; i < end; i++) {
        const old = this.get(i);
        if (old !== 0) {
          this.set(i, 0);
          this.shares.hooks?.dropped(old);
        }
      }
    }
    for (let pi = firstPage; pi < this.pages.length; pi++) this.letGo(pi);
    if (this.pages.length > firstPage) {
      this.pages.length = firstPage;
      this.live.length = firstPage;
      this.mayShare.length = firstPage;
    }
  }

  /** Drops every page (volume deleted), with the same ownership rule as truncate. */
  releaseAll(): void {
    for (let pi = 0; pi < this.pages.length; pi++) this.letGo(pi);
    this.clear();
  }

  /**
   * Makes `target` (an empty table) hold the same pages as this one: one step per existing page, none per entry.
   * Both tables copy a page before they change it.
   */
  shareInto(target: PagedTable): void {
    if (target.pages.length !== 0 || target.nonZero !== 0) throw new Error('shareInto: target table is not empty');
    if (target.shares !== this.shares) throw new Error('shareInto: tables of different pools');
    for (let pi = 0; pi < this.pages.length; pi++) {
      const page = this.pages[pi];
      target.pages.push(page);
      target.live.push(this.live[pi]);
      target.mayShare.push(page !== undefined);
      if (page === undefined) continue;
      this.shares.add(page);
      this.mayShare[pi] = true;
      target.pageBytes += page.byteLength;
    }
    target.nonZero = this.nonZero;
  }

  /**
   * Makes page `pageIndex` of `from` (a table of the same pool loaded earlier) a page of this table too
   * (checkpoint load): both hold the same page object and both copy it before changing it.
   */
  adoptPageFrom(from: PagedTable, pageIndex: number): void {
    const page = from.pages[pageIndex];
    if (page === undefined) throw new Error(`adoptPageFrom: page ${pageIndex} does not exist`);
    if (from.shares !== this.shares) throw new Error('adoptPageFrom: tables of different pools');
    if (this.pages[pageIndex] !== undefined) throw new Error(`page ${pageIndex} loaded twice`);
    this.growDirectory(pageIndex);
    this.shares.add(page);
    this.pages[pageIndex] = page;
    this.live[pageIndex] = from.live[pageIndex];
    this.mayShare[pageIndex] = true;
    from.mayShare[pageIndex] = true;
    this.nonZero += from.live[pageIndex];
    this.pageBytes += page.byteLength;
  }

  /** the page object at pageIndex (checkpoint writing detects shared pages by identity) */
  pageAt(pageIndex: number): Page | undefined {
    return this.pages[pageIndex];
  }

  /** Makes the page holding entry i this table's own (copied first if another table holds it). */
  own(i: number): void {
    const pi = i >>> PAGE_SHIFT;
    const page = this.pages[pi];
    if (page !== undefined && this.mayShare[pi]) this.ownPage(pi, page);
  }

  /** whether the page at pageIndex is held by another table too */
  isPageShared(pageIndex: number): boolean {
    const page = this.pages[pageIndex];
    return page !== undefined && this.mayShare[pageIndex] && this.shares.holdersOf(page) > 1;
  }


  clear(): void {
    this.pages = [];
    this.live = [];
    this.mayShare = [];
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
    this.growDirectory(pageIndex);
    this.pages[pageIndex] = page;
    this.live[pageIndex] = live;
    this.mayShare[pageIndex] = false;
    this.nonZero += live;
    this.pageBytes += page.byteLength;
  }

  /** Makes the page at pi this table's own before a change: copied if another table still holds it. */
  private ownPage(pi: number, page: Page): Page {
    this.mayShare[pi] = false;
    if (this.shares.holdersOf(page) <= 1) return page;
    this.shares.drop(page);
    const copy = page.slice();
    this.pages[pi] = copy;
    this.shares.hooks?.copied(copy);
    return copy;
  }

  /** This table stops holding page pi; if no table holds it any more, its entries are dropped. */
  private letGo(pi: number): void {
    const page = this.pages[pi];
    if (page === undefined) return;
    const stillHeld = this.mayShare[pi] && this.shares.holdersOf(page) > 1;
    if (stillHeld) this.shares.drop(page);
    else {
      const hooks = this.shares.hooks;
      if (hooks) for (let s = 0; s < PAGE_ENTRIES; s++) if (page[s] !== 0) hooks.dropped(page[s]);
    }
    this.nonZero -= this.live[pi];
    this.dropPage(pi);
  }

  private growDirectory(pi: number): void {
    while (this.pages.length <= pi) {
      this.pages.push(undefined);
      this.live.push(0);
      this.mayShare.push(false);
    }
  }

  private dropPage(pi: number): void {
    const page = this.pages[pi];
    if (page === undefined) return;
    this.pageBytes -= page.byteLength;
    this.pages[pi] = undefined;
    this.live[pi] = 0;
    this.mayShare[pi] = false;
  }
}
