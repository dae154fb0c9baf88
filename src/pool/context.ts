/** What a Volume needs from its pool (kept narrow so that volume.ts does not depend on the facade). */
import type { ChunkAllocator } from './allocator.js';
import type { DataFile } from './data-file.js';
import type { IoTracker } from './io-tracker.js';
import type { JournalWriter } from './journal.js';

export interface PoolContext {
  readonly chunkSize: number;
  readonly data: DataFile;
  readonly journal: JournalWriter;
  readonly alloc: ChunkAllocator;
  readonly tracker: IoTracker;
  /** a read-only buffer of zeros, at least one chunk and at least 1 MiB */
  readonly zeros: Buffer;
  /** counts an operation in (close waits for it); throws when the pool is closed or failed */
  enter(): void;
  leave(): void;
  flush(): Promise<void>;
  /** whether any chunk or mapping page is shared between volumes (snapshots); false = no copy-on-write checks */
  sharingActive(): boolean;
}
