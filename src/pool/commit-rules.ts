/**
 * The ordering rules between data I/O, journal records and chunk reuse. Every data path asks these functions
 * before it issues I/O; this file is the one place that says why the order is crash-safe.
 *
 * The two promises the pool keeps after any crash (DESIGN.md, "Storage invariants"):
 *  - tracking never under-reports: if chunk c's content differs from the last backup, gen[c] says so;
 *  - no volume ever reads data another volume (or an earlier life of the chunk) wrote.
 *
 * CLEAN-CHUNK RULE. A chunk is handed out only when it reads as zeros durably (fresh preallocation, or
 * zero-ranged + fdatasync after its free became durable, see FREE below). Hence:
 *
 * W1 — first write into an unmapped chunk c: map c to a clean chunk p, queue MAP(c, p, G) and issue the data
 *      write at once. If the crash loses the MAP, c is unmapped again and reads zeros, which is what it held
 *      before (an unmapped chunk reads zeros; its last change, if any, was an UNMAP already journaled). If the MAP
 *      survives and the data does not, c reads zeros or part of the new data and is marked G: over-reporting,
 *      allowed. So neither this write nor later writes into c need to wait for the MAP (the brief asked later
 *      writes to wait; they need not, by the same argument).
 * W2 — overwrite of a mapped chunk whose gen is the current G and whose MARK is durable: plain pwrite. The hot
 *      path: no metadata, no allocation.
 * W3 — overwrite of a mapped chunk whose gen < G: set gen = G, queue MARK(c, G) and issue the pwrite only after the
 *      MARK is durable (dm-era's rule: the "changed in G" fact reaches disk before the change can). Later writes
 *      into c in G also wait until that MARK is durable (`pendingMarks`).
 * TRIM — UNMAP(c, G) carries the mark and the content change in one record; no data is written to the old chunk
 *      (partial edges are zero-writes under W2/W3).
 * FREE — a chunk whose reference count drops to 0 is reused only after (1) the record that freed it is durable
 *      (otherwise a crash could resurrect the old mapping onto another volume's data), (2) every data I/O issued
 *      before the free has completed (a late write would dirty it, a late read could see the next owner's data),
 *      then (3) it is zero-ranged and (4) an fdatasync of the data file started after the zeroing completes.
 *      I/O is tracked with increasing op ids (IoTracker); a freed chunk is tagged with the next op id. An
 *      operation takes its op id in the same synchronous step in which it reads the mapping, and never waits for
 *      free space while holding one (allocation is reserved before), so FREE cannot deadlock with a writer.
 * DURABILITY — FUA and FLUSH: an fdatasync of the data file started after the write(s) completed, together with
 *      the commit of every journal record queued so far (covers MAPs of W1 writes).
 * SHARE — a chunk held by more than one mapping page (snapshots, copies; docs/pool-format.md "Shared pages") is
 *      never written in place. A partial write first copies the chunk (COPY). A data write covering the whole chunk
 *      is COPY with the write's bytes instead of the old ones: they go to a clean chunk p first, then MAP(c, p, G) is
 *      queued with `afterDataSync`. W1's argument does not carry over: a durable MAP to a clean chunk whose data did
 *      not land would read zeros where the chunk held the shared data (neither old nor new; found by
 *      test/crash-diff.test.ts). A zero-write covering the whole chunk is redirected to a clean chunk like W1: there
 *      zeros are the new content. Either way the MAP carries G and the shared chunk loses one reference.
 * COPY — copying a shared chunk c: read it, write the copy to a clean chunk p, then queue MAP(c, p, gen[c]) with
 *      `afterDataSync`: the commit that makes it durable first runs an fdatasync of the data file, which started
 *      after the copy was written. So a durable MAP never points at a half-copied chunk; before it is durable, a
 *      crash leaves c on the shared chunk, same content. A copy made for a write carries the current generation G
 *      in its MAP (instead of gen[c]): c's durable content changes only together with that MAP, so tracking holds,
 *      and the write then proceeds as W2 without a MARK whose wait would include the data sync. Copies for reads
 *      and the background copy keep gen[c]. Writes to c wait for a copy of c in progress.
 * RESIZE — growing makes the bytes past the old end of a partial last chunk read as zeros (zero-write, data
 *      fdatasync) before the new size is journaled; shrinking journals the new size first.
 */
import type { DataFile } from './data-file.js';
import type { JournalWriter } from './journal.js';
import type { VolumeState } from './volume-state.js';

/** W2: the pwrite may be issued now */
export const READY = 0;
/** W3: the chunk needs a MARK (the caller sets gen and queues it, then waits for it) */
export const NEEDS_MARK = -1;

/**
 * What must happen before a data write into the mapped chunk c may be issued: READY, NEEDS_MARK, or the seq of a
 * MARK already queued that must be durable first.
 */
export function overwriteRule(vol: VolumeState, c: number, durableSeq: number): number {
  if (vol.gens.get(c) !== vol.gens.current) return NEEDS_MARK;
  if (vol.pendingMarks.size === 0) return READY;
  const seq = vol.pendingMarks.get(c);
  return seq === undefined || seq <= durableSeq ? READY : seq;
}

/** FREE (1) and (2): may a chunk freed by record `seq` with I/O tag `tag` be zeroed now? */
export function freeMayZero(seq: number, tag: number, durableSeq: number, ioCompletedBelow: number): boolean {
  return seq <= durableSeq && tag <= ioCompletedBelow;
}

/** DURABILITY: every write completed before the call, and every metadata change queued before it, is durable. */
export async function durabilityBarrier(journal: JournalWriter, data: DataFile): Promise<void> {
  await Promise.all([data.sync(), journal.commit()]);
}

/** Drops pendingMarks entries that have become durable (called after each journal commit). */
export function prunePendingMarks(vol: VolumeState, durableSeq: number): void {
  // entries are inserted in non-decreasing seq order (delete + set), so the durable ones come first
  for (const [c, seq] of vol.pendingMarks) {
    if (seq > durableSeq) break;
    vol.pendingMarks.delete(c);
  }
}
