/**
 * The pool facade: init/open/close, volume management, statistics, flush, and the checkpoint schedule.
 * It wires the layers together: data file, allocator, journal, metadata, volumes.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { silentLogger } from '../util/log.js';
import { ChunkAllocator } from './allocator.js';
import { serializeCheckpoint, writeCheckpointFile } from './checkpoint.js';
import { durabilityBarrier, prunePendingMarks } from './commit-rules.js';
import type { PoolContext } from './context.js';
import { DataFile } from './data-file.js';
import { PoolError } from './errors.js';
import {
  CHECKPOINT_PREFIX,
  DATA_FILE,
  DEFAULT_CHUNK_SIZE,
  JOURNAL_HEADER_SIZE,
  JOURNAL_PREFIX,
  MAX_CHUNKS,
  MAX_CHUNK_SIZE,
  MIN_CHUNK_SIZE,
  POOL_FORMAT_NAME,
  POOL_FORMAT_VERSION,
  POOL_JSON,
} from './format.js';
import { writeFileAtomic } from '../util/durable-file.js';
import { IoTracker } from './io-tracker.js';
import { JournalWriter, createJournalFile } from './journal.js';
import { PoolLock } from './lock.js';
import { PoolMetadata } from './metadata.js';
import type { Page } from './paged-table.js';
import {
  REPLACE_WITH_GENERATIONS,
  appendBackupChain,
  appendGenFold,
  appendGenRebase,
  appendGenReset,
  appendGenSet,
  appendMark,
  appendVolumeClone,
  appendVolumeCreate,
  appendVolumeDelete,
  appendVolumeFlags,
  appendVolumeOrigin,
  appendVolumeRename,
  appendVolumeReplace,
  appendVolumeResize,
} from './records.js';
import { type RecoveryReport, recoverMetadata, removeOlderEpochs } from './recovery.js';
import { Volume, type VolumeInfo } from './volume.js';
import { VolumeFlag, type BackupChain, type VolumeIdentity, type VolumeState } from './volume-state.js';

export interface CloneOptions {
  /** VolumeFlag bits of the new volume */
  flags: number;
  /**
   * also start a new generation of the source in the same step (backups: every write after the point-in-time
   * view is in a later generation than everything in it). Resolves the generation the view closes.
   */
  advanceSourceGeneration?: boolean;
}

export interface CopyProgress {
  volume: string;
  /** chunks of the copy examined so far / in all */
  doneChunks: number;
  totalChunks: number;
  /** chunks copied by the background job (on-demand copies are not counted) */
  copiedChunks: number;
  finished: boolean;
  error?: string;
}

/** chunks the background copy handles per step */
const COPY_BATCH = 64;

export interface PoolInitOptions {
  /** power of two, 4096..1048576, default 65536 */
  chunkSize?: number;
  /** maximum data bytes, default 0 = until the filesystem is full */
  capacity?: number;
}

export interface PoolOpenOptions {
  logger?: Logger;
  /** journal size that triggers a checkpoint (default 64 MiB) */
  checkpointBytes?: number;
}

export interface PoolStats {
  chunkSize: number;
  capacity: number;
  dataFileBytes: number;
  /** chunks in the data file */
  chunksTotal: number;
  chunksUsed: number;
  /** clean free chunks, ready to be allocated */
  chunksFree: number;
  /** freed chunks on their way back to clean (waiting for their free to be durable, zeroing) */
  chunksPendingFree: number;
  volumes: number;
  provisionedBytes: number;
  journalBytes: number;
  /** resident metadata: mapping and generation pages, reference counts, bitmaps */
  metadataMemoryBytes: number;
}

interface PoolConfig {
  format: string;
  version: number;
  uuid: string;
  chunkSize: number;
  capacity: number;
  createdAt: string;
}

const DEFAULT_CHECKPOINT_BYTES = 64 * 1024 * 1024;
const VOLUME_NAME = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$/;

function readConfig(dir: string): PoolConfig {
  const file = path.join(dir, POOL_JSON);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new PoolError('ENOTPOOL', `${dir} is not a thinvault pool (no ${POOL_JSON}); create one with 'thinvault init'`);
  }
  let conf: PoolConfig;
  try {
    conf = JSON.parse(text) as PoolConfig;
  } catch (err) {
    throw new PoolError('ECORRUPT', `${file} is not valid JSON: ${(err as Error).message}`);
  }
  if (conf.format !== POOL_FORMAT_NAME) throw new PoolError('ENOTPOOL', `${file}: not a thinvault pool`);
  if (conf.version !== POOL_FORMAT_VERSION) {
    throw new PoolError('ENOTPOOL', `${file}: pool format version ${conf.version} is not supported (this build reads ${POOL_FORMAT_VERSION})`);
  }
  if (!validChunkSize(conf.chunkSize) || !(Number.isSafeInteger(conf.capacity) && conf.capacity >= 0) || typeof conf.uuid !== 'string') {
    throw new PoolError('ECORRUPT', `${file}: bad chunkSize, capacity or uuid`);
  }
  return conf;
}

function validChunkSize(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= MIN_CHUNK_SIZE && n <= MAX_CHUNK_SIZE && (n & (n - 1)) === 0;
}

export class Pool {
  readonly dir: string;
  readonly uuid: string;
  readonly chunkSize: number;
  readonly capacity: number;
  /** what the last open recovered (also logged) */
  readonly recovery: RecoveryReport & { freeChunksZeroed: number };

  private readonly ctx: PoolContext;
  private readonly volumes = new Map<number, Volume>();
  /** physical chunks let go of by the metadata change in progress (see releaseDropped) */
  private dropped: number[] = [];
  /** background copies of `volume copy`, by volume id */
  private readonly copyJobs = new Map<number, { progress: CopyProgress; stop: boolean; run: Promise<void> }>();
  private active = 0;
  private activeWaiters: Array<() => void> = [];
  private closing: Promise<void> | null = null;
  private failure: PoolError | null = null;
  private admin: Promise<unknown> = Promise.resolve();
  private checkpointing: Promise<void> | null = null;
  private nextEpoch: number;

  private constructor(
    dir: string,
    conf: PoolConfig,
    private readonly meta: PoolMetadata,
    private readonly data: DataFile,
    private readonly alloc: ChunkAllocator,
    private readonly tracker: IoTracker,
    private readonly journal: JournalWriter,
    private readonly lock: PoolLock,
    private readonly log: Logger,
    private readonly checkpointBytes: number,
    epoch: number,
    recovery: RecoveryReport & { freeChunksZeroed: number },
  ) {
    this.dir = dir;
    this.uuid = conf.uuid;
    this.chunkSize = conf.chunkSize;
    this.capacity = conf.capacity;
    this.nextEpoch = epoch + 1;
    this.recovery = recovery;
    this.ctx = {
      chunkSize: conf.chunkSize,
      data,
      journal,
      alloc,
      tracker,
      zeros: Buffer.alloc(Math.max(conf.chunkSize, 1024 * 1024)),
      enter: () => this.enter(),
      leave: () => this.leave(),
      flush: () => this.flush(),
      sharingActive: () => alloc.sharedChunks > 0 || meta.shares.map.sharedPages > 0,
    };
    // Page ownership while serving (journal replay derives reference counts afterwards instead): a copied shared
    // page holds every chunk once more; the chunks of a page no volume holds any more are freed by the caller
    // that let go of it (releaseDropped), tagged with its journal record.
    meta.shares.map.hooks = {
      copied: (page) => {
        for (let s = 0; s < page.length; s++) if (page[s] !== 0) alloc.addRef(page[s] - 1);
      },
      dropped: (value) => this.dropped.push(value - 1),
    };
    journal.onDurable = () => this.afterCommit();
    journal.dataSync = () => data.sync();
    journal.onFailure = (err) => {
      this.failure = err;
      this.log.error({ err: err.message }, 'journal failure: the pool refuses further requests until it is reopened');
    };
  }

  // ---------------------------------------------------------------- init / open / close

  static async init(dirArg: string, opts: PoolInitOptions = {}): Promise<void> {
    const dir = path.resolve(dirArg);
    const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
    const capacity = opts.capacity ?? 0;
    if (!validChunkSize(chunkSize)) {
      throw new PoolError('EINVAL', `chunk size ${chunkSize} must be a power of two between ${MIN_CHUNK_SIZE} and ${MAX_CHUNK_SIZE}`);
    }
    if (!Number.isSafeInteger(capacity) || capacity < 0 || (capacity > 0 && capacity < chunkSize)) {
      throw new PoolError('EINVAL', `capacity ${capacity} must be 0 (unlimited) or at least one chunk (${chunkSize} bytes)`);
    }
    fs.mkdirSync(dir, { recursive: true });
    const existing = fs
      .readdirSync(dir)
      .filter((n) => n === POOL_JSON || n === DATA_FILE || n.startsWith(JOURNAL_PREFIX) || n.startsWith(CHECKPOINT_PREFIX));
    if (existing.length > 0) {
      throw new PoolError(
        'EEXIST',
        existing.includes(POOL_JSON)
          ? `${dir} is already a thinvault pool; refusing to initialise it again`
          : `${dir} holds pool files (${existing.join(', ')}) but no ${POOL_JSON}; remove them first`,
      );
    }
    const uuid = randomUUID();
    fs.closeSync(fs.openSync(path.join(dir, DATA_FILE), fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_RDWR, 0o600));
    const meta = new PoolMetadata(chunkSize);
    await writeCheckpointFile(dir, 1, serializeCheckpoint(meta, uuid, { epoch: 1, lastSeq: 0, clean: true }));
    const conf: PoolConfig = {
      format: POOL_FORMAT_NAME,
      version: POOL_FORMAT_VERSION,
      uuid,
      chunkSize,
      capacity,
      createdAt: new Date().toISOString(),
    };
    // written last: its presence marks a complete pool
    writeFileAtomic(path.join(dir, POOL_JSON), JSON.stringify(conf, null, 2) + '\n');
  }

  static async open(dirArg: string, opts: PoolOpenOptions = {}): Promise<Pool> {
    const dir = path.resolve(dirArg);
    const log = opts.logger ?? silentLogger();
    const conf = readConfig(dir);
    const lock = PoolLock.acquire(dir);
    let data: DataFile | undefined;
    let journalFd = -1;
    try {
      const t0 = Date.now();
      const rec = recoverMetadata(dir, conf.uuid, conf.chunkSize, log);
      data = await DataFile.open(path.join(dir, DATA_FILE), conf.chunkSize);
      const tracker = new IoTracker();
      const meta = rec.meta;
      let checkpointBytes = opts.checkpointBytes ?? DEFAULT_CHECKPOINT_BYTES;
      const alloc = new ChunkAllocator(data, tracker, {
        chunkSize: conf.chunkSize,
        capacity: conf.capacity,
        dir,
        reserveBytes: () => 256 * 1024 * 1024 + 2 * meta.memoryBytes + checkpointBytes,
        logger: log,
      });
      const loaded = await alloc.load((fn) => meta.forEachMapped((p) => fn(p)), rec.clean);
      if (loaded.extended > 0) {
        log.warn({ chunks: loaded.extended }, 'data file was shorter than its mappings (growth lost in a crash); extended');
      }

      // A new epoch: a fresh checkpoint (never CLEAN: this run may crash) and an empty journal.
      const epoch = rec.maxEpoch + 1;
      journalFd = await createJournalFile(dir, epoch, conf.uuid);
      await writeCheckpointFile(dir, epoch, serializeCheckpoint(meta, conf.uuid, { epoch, lastSeq: rec.lastSeq, clean: false }));
      removeOlderEpochs(dir, epoch);
      const journal = new JournalWriter(journalFd, epoch, JOURNAL_HEADER_SIZE, rec.lastSeq);
      alloc.attachJournal(journal);
      checkpointBytes = Math.max(checkpointBytes, 4096);

      const recovery = { ...rec.report, freeChunksZeroed: loaded.zeroedChunks };
      const summary = {
        pool: dir,
        volumes: meta.volumes.size,
        checkpointEpoch: rec.report.checkpointEpoch,
        recordsReplayed: rec.report.recordsReplayed,
        cleanShutdown: rec.report.cleanShutdown,
        freeChunksZeroed: loaded.zeroedChunks,
        zeroedRanges: loaded.ranges,
        ms: Date.now() - t0,
      };
      if (rec.report.cleanShutdown) log.info(summary, 'pool opened after a clean shutdown');
      else log.warn({ ...summary, journals: rec.report.journals, badCheckpoints: rec.report.badCheckpoints, removedTmpFiles: rec.report.removedTmpFiles }, 'pool recovered after an unclean shutdown');

      const pool = new Pool(dir, conf, meta, data, alloc, tracker, journal, lock, log, checkpointBytes, epoch, recovery);
      alloc.maybeGrow();
      await pool.resumeAfterOpen();
      return pool;
    } catch (err) {
      if (journalFd >= 0) fs.closeSync(journalFd);
      data?.close();
      lock.release();
      throw err;
    }
  }

  /** Waits for in-flight I/O, settles frees, writes a clean checkpoint, releases the lock. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    for (const job of this.copyJobs.values()) job.stop = true;
    await Promise.all([...this.copyJobs.values()].map((j) => j.run));
    if (this.active > 0) await new Promise<void>((resolve) => this.activeWaiters.push(resolve));
    await this.admin.catch(() => {});
    await this.tracker.whenIdle();
    try {
      if (!this.failure) {
        await this.alloc.stop();
        await this.checkpointing;
        await this.checkpoint(this.alloc.allFreeClean);
      } else {
        this.log.warn('closing a failed pool without a checkpoint; the next open recovers from the journal');
      }
      await this.journal.whenIdle();
    } finally {
      fs.closeSync(this.journal.fd);
      this.data.close();
      this.lock.release();
    }
    this.log.info({ pool: this.dir }, 'pool closed');
  }

  // ---------------------------------------------------------------- volumes

  /** the volumes users see (internal views of backups and restore staging are hidden) */
  listVolumes(opts: { includeHidden?: boolean } = {}): VolumeInfo[] {
    return [...this.meta.byName.values()]
      .filter((st) => opts.includeHidden || !st.has(VolumeFlag.HIDDEN))
      .map((st) => st.name)
      .sort()
      .map((name) => this.volume(name)!.info());
  }

  /** hidden identity fields of a volume (seed 003): where it was copied from */
  volumeLineage(name: string): { source: VolumeIdentity | null; origin: VolumeIdentity | null; lineage: VolumeIdentity } {
    const st = this.requireVolume(name).state;
    return { source: st.source, origin: st.origin, lineage: st.lineage };
  }

  volume(name: string): Volume | undefined {
    const st = this.meta.byName.get(name);
    if (!st) return undefined;
    let v = this.volumes.get(st.id);
    if (!v) {
      v = new Volume(this.ctx, st);
      this.volumes.set(st.id, v);
    }
    return v;
  }

  /** `internal`: a hidden volume (name starting with '.'), e.g. a restore's staging volume */
  createVolume(name: string, size: number, opts: { internal?: boolean } = {}): Promise<VolumeInfo> {
    return this.serialized(async () => {
      this.validateName(name, opts.internal ?? false);
      this.validateSize(size);
      if (this.meta.byName.has(name)) throw new PoolError('EEXIST', `a volume named '${name}' exists`);
      const st = this.meta.newVolumeState(this.meta.nextVolumeId, name, randomUUID(), size, Date.now());
      this.meta.addVolume(st);
      let seq = appendVolumeCreate(this.journal, st);
      if (opts.internal) {
        st.flags = VolumeFlag.HIDDEN;
        seq = appendVolumeFlags(this.journal, st.id, st.flags);
      }
      await this.journal.waitDurable(seq);
      return this.volume(name)!.info();
    });
  }

  /** Frees the volume's chunks. Fails with EBUSY while it is open (acquire()d) unless `force`. */
  deleteVolume(name: string, opts: { force?: boolean } = {}): Promise<void> {
    return this.serialized(async () => {
      const volume = this.requireVolume(name);
      if (volume.openCount > 0 && !opts.force) {
        throw new PoolError('EBUSY', `volume '${name}' is open by ${volume.openCount} client(s)`);
      }
      await this.removeVolumeNow(volume);
    });
  }

  /** Grows or shrinks a volume; shrinking frees the chunks past the end. */
  resizeVolume(name: string, size: number): Promise<VolumeInfo> {
    return this.serialized(async () => {
      this.validateSize(size);
      const volume = this.requireVolume(name);
      const st = volume.state;
      if (st.has(VolumeFlag.READ_ONLY)) throw new PoolError('EPERM', `volume '${name}' is read-only (a snapshot or replica keeps its size)`);
      const cs = this.chunkSize;
      const old = st.size;
      const chunkEnd = (n: number) => Math.ceil(n / cs) * cs;
      if (size > old) {
        // RESIZE rule: the bytes past the old end of its partial last chunk read as zeros, durably, first
        if (old % cs !== 0) {
          await volume.zeroTail(old, Math.min(size, chunkEnd(old)));
          await this.data.sync();
        }
        const seq = appendVolumeResize(this.journal, st.id, size);
        st.resize(size);
        await this.journal.waitDurable(seq);
      } else if (size < old) {
        const seq = appendVolumeResize(this.journal, st.id, size);
        st.resize(size);
        this.releaseDropped(seq);
        // not needed for correctness (a later grow zeroes it), but old data past the end should not linger
        if (size % cs !== 0) await volume.zeroTail(size, Math.min(old, chunkEnd(size)));
        await durabilityBarrier(this.journal, this.data);
      }
      return volume.info();
    });
  }

  // ---------------------------------------------------------------- snapshots, copies, restore staging

  /**
   * A point-in-time copy of `sourceName` named `name` (seed 003 instant virtual copy): its own UUID, the source's
   * identity kept in hidden fields, mapping and generation pages shared copy-on-write. The source's writes are
   * paused only while in-flight ones drain; the work is one step per mapping page, none per chunk.
   */
  cloneVolume(sourceName: string, name: string, opts: CloneOptions): Promise<VolumeInfo & { closedGeneration: number }> {
    return this.serialized(async () => {
      this.validateName(name, (opts.flags & VolumeFlag.HIDDEN) !== 0);
      if (this.meta.byName.has(name)) throw new PoolError('EEXIST', `a volume named '${name}' exists`);
      const source = this.requireVolume(sourceName);
      const src = source.state;
      if (src.has(VolumeFlag.INCOMPLETE)) throw new PoolError('EBUSY', `volume '${sourceName}' is still being built`);
      if (opts.advanceSourceGeneration && src.gens.current >= 0xffff_ffff) {
        throw new PoolError('EINVAL', `volume ${sourceName}: generation limit reached`);
      }
      const { seq, closed } = await source.quiesce(() => {
        const st = this.meta.newVolumeState(this.meta.nextVolumeId, name, randomUUID(), src.size, Date.now());
        src.shareInto(st);
        st.flags = opts.flags;
        this.meta.addVolume(st);
        let last = appendVolumeClone(this.journal, st, src.id);
        const closedGeneration = src.gens.current;
        if (opts.advanceSourceGeneration) {
          src.gens.current++;
          last = appendGenSet(this.journal, src.id, src.gens.current);
        }
        return { seq: last, closed: closedGeneration };
      });
      await this.journal.waitDurable(seq);
      const info = this.volume(name)!.info();
      if ((opts.flags & VolumeFlag.COPYING) !== 0) this.startCopyJob(this.volume(name)!);
      return { ...info, closedGeneration: closed };
    });
  }

  /** Sets a volume's flags (durable). */
  setVolumeFlags(name: string, flags: number): Promise<void> {
    return this.serialized(async () => {
      const st = this.requireVolume(name).state;
      st.flags = flags;
      await this.journal.waitDurable(appendVolumeFlags(this.journal, st.id, flags));
    });
  }

  /**
   * Renames a volume (restore staging becomes the restored volume), optionally setting its flags and origin
   * identity, durably and together.
   */
  renameVolume(name: string, newName: string, flags?: number, origin?: VolumeIdentity): Promise<VolumeInfo> {
    return this.serialized(async () => {
      const st = this.requireVolume(name).state;
      this.validateName(newName, false);
      if (this.meta.byName.has(newName)) throw new PoolError('EEXIST', `a volume named '${newName}' exists`);
      this.meta.renameVolume(st, newName);
      let seq = appendVolumeRename(this.journal, st.id, newName);
      if (flags !== undefined) {
        st.flags = flags;
        seq = appendVolumeFlags(this.journal, st.id, flags);
      }
      if (origin !== undefined) {
        st.origin = origin;
        seq = appendVolumeOrigin(this.journal, st.id, origin);
      }
      await this.journal.waitDurable(seq);
      return this.volume(newName)!.info();
    });
  }

  /**
   * Restore commit: `targetName` takes over the content of `stagingName` (same size), which disappears, in one
   * journal record. The target keeps its identity; every chunk mapped before or after is marked changed in its
   * current generation, or, `withGenerations`, the target takes the staging volume's generation map, current
   * generation and backup chain (the restore of a backup chain). Refused while the target is open.
   */
  replaceVolumeContent(targetName: string, stagingName: string, opts: { withGenerations?: boolean } = {}): Promise<VolumeInfo> {
    return this.serialized(async () => {
      const target = this.requireVolume(targetName);
      const staging = this.requireVolume(stagingName);
      if (target.openCount > 0) throw new PoolError('EBUSY', `volume '${targetName}' is open by ${target.openCount} client(s)`);
      if (!opts.withGenerations && (target.state.chunks !== staging.state.chunks || target.state.size !== staging.state.size)) {
        throw new PoolError('EINVAL', `volume '${targetName}' (${target.size} bytes) and '${stagingName}' (${staging.size} bytes) differ in size`);
      }
      const seq = await target.quiesce(() => {
        const withGenerations = opts.withGenerations === true;
        const recordSeq = appendVolumeReplace(this.journal, target.state.id, staging.state.id, withGenerations ? REPLACE_WITH_GENERATIONS : 0);
        if (withGenerations) target.state.takeAllFrom(staging.state);
        else target.state.takeContentFrom(staging.state);
        this.meta.removeVolume(staging.state);
        this.volumes.delete(staging.state.id);
        this.releaseDropped(recordSeq);
        return recordSeq;
      });
      await this.journal.waitDurable(seq);
      return target.info();
    });
  }

  /**
   * A full backup of `viewName` (a BACKUP_VIEW of `name`, made with advanceSourceGeneration) is on its medium: in one
   * record, chunks unchanged since the view become generation 0, later changes are renumbered from 1 (seed 002),
   * and the view is removed.
   */
  finishBackupView(name: string, viewName: string, chain?: BackupChain): Promise<{ current: number }> {
    return this.endBackupView(name, viewName, true, chain);
  }

  /**
   * A backup from `viewName` failed: in one record, the generation started at the view is folded back into the one
   * it closed (nothing changed since the last good backup is forgotten) and the view is removed.
   */
  abandonBackupView(name: string, viewName: string): Promise<{ current: number }> {
    return this.endBackupView(name, viewName, false);
  }

  private endBackupView(name: string, viewName: string, done: boolean, chain?: BackupChain): Promise<{ current: number }> {
    return this.serialized(async () => {
      const volume = this.requireVolume(name);
      const view = this.requireVolume(viewName);
      if (!view.state.has(VolumeFlag.BACKUP_VIEW) || view.state.source?.uuid !== volume.uuid) {
        throw new PoolError('EINVAL', `'${viewName}' is not a backup view of '${name}'`);
      }
      const seq = await volume.quiesce(() => this.endBackupViewNow(volume.state, view.state, done, chain));
      await this.journal.waitDurable(seq);
      return { current: volume.state.gens.current };
    });
  }

  /** the synchronous step of endBackupView (also used at open for views a crash left behind) */
  private endBackupViewNow(st: VolumeState, view: VolumeState, done: boolean, chain?: BackupChain): number {
    const closed = view.gens.current;
    let seq: number;
    if (done && chain) {
      // the new chain first: should the rebase record be lost to a crash, the map still over-reports against the
      // new base (safe), while a rebased map under the old chain would under-report against the old one
      st.chain = chain;
      appendBackupChain(this.journal, st.id, chain);
    }
    if (done) {
      seq = appendGenRebase(this.journal, st.id, closed, st.gens.current, view.id);
      st.gens.rebase(closed);
    } else {
      seq = appendGenFold(this.journal, st.id, closed, view.id);
      st.gens.fold(closed);
    }
    this.markPendingUntil(st, seq);
    this.meta.removeVolume(view);
    this.volumes.delete(view.id);
    this.releaseDropped(seq);
    return seq;
  }

  /**
   * A renumbering record changed generation entries in memory: a chunk whose MARK may not be durable yet now also
   * depends on that record (a write into it must not reach the disk before its new entry is durable, W3).
   */
  private markPendingUntil(st: VolumeState, seq: number): void {
    for (const c of st.pendingMarks.keys()) st.pendingMarks.set(c, seq);
  }

  /**
   * A difference backup from `viewName` (a BACKUP_VIEW or DIFF_EXPORT view of `name`) is done: in one record the
   * volume's chain moves on to `throughGeneration` (when it is still the chain `baseStreamUuid`; a full backup
   * taken meanwhile started a new one) and the view is removed. No renumbering: the generations after the view
   * are already later ones.
   */
  finishDiffView(name: string | null, viewName: string, chain: BackupChain | null): Promise<void> {
    return this.serialized(async () => {
      const view = this.requireVolume(viewName);
      const volume = name === null ? undefined : this.requireVolume(name);
      if (volume && view.state.source?.uuid !== volume.uuid) throw new PoolError('EINVAL', `'${viewName}' is not a view of '${name}'`);
      const st = volume?.state;
      let next: BackupChain | null = st?.chain ?? null;
      if (st && chain && st.chain?.baseStreamUuid === chain.baseStreamUuid) {
        next = { baseStreamUuid: chain.baseStreamUuid, throughGeneration: Math.max(st.chain.throughGeneration, chain.throughGeneration) };
      }
      let seq: number;
      if (st) {
        st.chain = next;
        seq = appendBackupChain(this.journal, st.id, next, view.state.id);
      } else {
        seq = appendVolumeDelete(this.journal, view.state.id);
      }
      this.meta.removeVolume(view.state);
      this.volumes.delete(view.state.id);
      this.releaseDropped(seq);
      await this.journal.waitDurable(seq);
    });
  }

  /**
   * Restore staging: gives volume `name` the generation map a restored chain leaves (each chunk the generation of
   * the record that last wrote it, 0 for the rest), the current generation and the backup chain, durably. Meant for
   * a hidden staging volume nobody writes to; `marks` is [chunk, generation] pairs in ascending chunk order.
   */
  setRestoredGenerations(name: string, marks: ReadonlyArray<readonly [number, number]>, current: number, chain: BackupChain | null): Promise<void> {
    return this.serialized(async () => {
      const volume = this.requireVolume(name);
      const st = volume.state;
      if (!Number.isInteger(current) || current < 1 || current > 0xffff_ffff) throw new PoolError('EINVAL', `bad generation ${current}`);
      let last = -1;
      for (const [c, g] of marks) {
        if (!Number.isInteger(c) || c <= last || c >= st.chunks) throw new PoolError('EINVAL', `chunk ${c} out of order or outside volume ${name}`);
        if (!Number.isInteger(g) || g < 0 || g >= current) throw new PoolError('EINVAL', `chunk ${c}: generation ${g} is not below the current ${current}`);
        last = c;
      }
      const seq = await volume.quiesce(() => {
        appendGenReset(this.journal, st.id);
        st.gens.reset();
        for (let i = 0; i < marks.length; ) {
          const [first, g] = marks[i];
          let j = i + 1;
          while (j < marks.length && marks[j][1] === g && marks[j][0] === first + (j - i) && j - i < 65536) j++;
          if (g !== 0) {
            appendMark(this.journal, st.id, first, j - i, g);
            for (let c = first; c < first + (j - i); c++) st.gens.set(c, g);
          }
          i = j;
        }
        st.gens.current = current;
        appendGenSet(this.journal, st.id, current);
        st.chain = chain;
        return appendBackupChain(this.journal, st.id, chain);
      });
      await this.journal.waitDurable(seq);
    });
  }

  /** Progress of the background copies (`volume copy`), running or finished in this run. */
  copyProgress(name?: string): CopyProgress[] {
    const all = [...this.copyJobs.values()].map((j) => ({ ...j.progress }));
    return name === undefined ? all : all.filter((p) => p.volume === name);
  }

  /** Resolves when the background copy of `name` (if any) has finished. */
  async waitForCopy(name: string): Promise<CopyProgress | undefined> {
    const st = this.meta.byName.get(name);
    const job = st ? this.copyJobs.get(st.id) : undefined;
    if (!job) return undefined;
    await job.run;
    return { ...job.progress };
  }

  /**
   * The background copy (seed 000 pseudo-copy): walks the copy's chunks and copies every one still shared, in
   * batches, until nothing is shared; then clears the COPYING flag. Reads and writes meanwhile copy on demand.
   * Restarted from the beginning at open (the walk skips what is already copied).
   */
  private startCopyJob(volume: Volume): void {
    const st = volume.state;
    const progress: CopyProgress = { volume: st.name, doneChunks: 0, totalChunks: st.chunks, copiedChunks: 0, finished: false };
    const job = { progress, stop: false, run: Promise.resolve() };
    job.run = (async () => {
      try {
        for (let c = 0; c < st.chunks && !job.stop && !st.deleted; c += COPY_BATCH) {
          const end = Math.min(st.chunks, c + COPY_BATCH);
          const batch: number[] = [];
          // skip unmapped stretches without looking at every chunk
          const next = st.map.nextWhere(c, end, true);
          for (let k = next; k < end; k++) if (volume.chunkShared(k)) batch.push(k);
          if (batch.length > 0) {
            this.enter();
            try {
              progress.copiedChunks += await volume.unshareChunks(batch);
            } finally {
              this.leave();
            }
          }
          progress.doneChunks = end;
          progress.volume = st.name;
          if (batch.length === 0) await new Promise((r) => setImmediate(r));
        }
        if (!job.stop && !st.deleted) {
          await this.setVolumeFlags(st.name, st.flags & ~VolumeFlag.COPYING);
          progress.finished = true;
          this.log.info({ volume: st.name, copiedChunks: progress.copiedChunks }, 'volume copy finished');
        }
      } catch (err) {
        progress.error = (err as Error).message;
        if (!job.stop) this.log.error({ volume: st.name, err: progress.error }, 'background copy stopped; it resumes when the pool is opened again');
      }
    })();
    this.copyJobs.set(st.id, job);
  }

  /** Work left by an interrupted run: unfinished internal volumes are deleted, background copies resumed. */
  private async resumeAfterOpen(): Promise<void> {
    for (const view of [...this.meta.volumes.values()]) {
      const source = view.has(VolumeFlag.BACKUP_VIEW) ? [...this.meta.volumes.values()].find((v) => v.uuid === view.source?.uuid) : undefined;
      if (source) {
        // a backup interrupted before it finished: its source goes back to the generation the view closed
        this.log.warn({ volume: source.name, view: view.name }, 'a backup was interrupted; its generation is folded back, so the next diff holds its changes');
        await this.serialized(() => this.journal.waitDurable(this.endBackupViewNow(source, view, false)));
      }
    }
    for (const st of [...this.meta.volumes.values()]) {
      if (st.has(VolumeFlag.INCOMPLETE) || st.has(VolumeFlag.HIDDEN) || st.name.startsWith('.')) {
        this.log.warn({ volume: st.name, flags: st.flags }, 'removing an internal volume left by an interrupted operation');
        await this.serialized(() => this.removeVolumeNow(this.volume(st.name)!));
      }
    }
    for (const st of this.meta.volumes.values()) {
      if (st.has(VolumeFlag.COPYING)) {
        this.log.info({ volume: st.name }, 'resuming the background copy');
        this.startCopyJob(this.volume(st.name)!);
      }
    }
  }

  // ---------------------------------------------------------------- pool-wide

  stats(): PoolStats {
    let provisioned = 0;
    for (const v of this.meta.volumes.values()) provisioned += v.size;
    return {
      chunkSize: this.chunkSize,
      capacity: this.capacity,
      dataFileBytes: this.alloc.total * this.chunkSize,
      chunksTotal: this.alloc.total,
      chunksUsed: this.alloc.usedChunks,
      chunksFree: this.alloc.freeChunks,
      chunksPendingFree: this.alloc.pendingFreeChunks,
      volumes: this.meta.volumes.size,
      provisionedBytes: provisioned,
      journalBytes: this.journal.bytes,
      metadataMemoryBytes: this.meta.memoryBytes + this.alloc.memoryBytes,
    };
  }

  /**
   * Read-only consistency check of the in-memory metadata (control command pool.check): reference counts
   * against the mappings, free lists against the mappings, and every volume's count table against its map.
   */
  check(): { ok: boolean; problems: string[]; checked: { volumes: number; mappedChunks: number; chunksTotal: number } } {
    const problems: string[] = [];
    let expected = new Uint16Array(Math.max(this.alloc.total, 1));
    const count = (p: number) => {
      if (p >= expected.length) {
        const bigger = new Uint16Array(p + 1);
        bigger.set(expected);
        expected = bigger;
      }
      expected[p]!++;
    };
    let mapped = 0;
    this.meta.forEachMapped((p) => {
      mapped++;
      count(p);
    });
    // clean chunks taken by copies in progress (copy-on-write, background copy) are in use but not mapped yet
    for (const volume of this.volumes.values()) for (const p of volume.chunksBeingCopied) count(p);
    problems.push(...this.alloc.audit(expected));
    for (const v of this.meta.volumes.values()) {
      const recount = new Map<number, number>();
      v.gens.entries.forEachNonZero(0, v.chunks, (_c, g) => recount.set(g, (recount.get(g) ?? 0) + 1));
      let nonZero = 0;
      for (const [g, n] of recount) {
        nonZero += n;
        if (g > v.gens.current) problems.push(`volume ${v.name}: chunks marked with future generation ${g} (current ${v.gens.current})`);
        if (v.gens.count(g) !== n) problems.push(`volume ${v.name}: count table says ${v.gens.count(g)} chunks in generation ${g}, the map has ${n}`);
      }
      for (const { generation, chunks } of v.gens.countTable()) {
        if (generation !== 0 && !recount.has(generation)) problems.push(`volume ${v.name}: count table lists ${chunks} chunks in generation ${generation}, the map has none`);
      }
      if (v.gens.count(0) !== v.chunks - nonZero) problems.push(`volume ${v.name}: generation 0 count ${v.gens.count(0)}, expected ${v.chunks - nonZero}`);
      v.map.forEachPage((pi, page) => {
        for (let i = 0; i < page.length; i++) {
          if (page[i] !== 0 && pi * page.length + i >= v.chunks) {
            problems.push(`volume ${v.name}: chunk ${pi * page.length + i} is mapped past the end of the volume`);
            break;
          }
        }
      });
    }
    problems.push(...this.checkPageSharing());
    return { ok: problems.length === 0, problems: problems.slice(0, 100), checked: { volumes: this.meta.volumes.size, mappedChunks: mapped, chunksTotal: this.alloc.total } };
  }

  /**
   * Page sharing against the tables: every page object held by several tables has that many holders on record,
   * and each holder knows it must copy the page before changing it (else a write would reach a snapshot).
   */
  private checkPageSharing(): string[] {
    const problems: string[] = [];
    for (const kind of ['map', 'gens'] as const) {
      const holders = new Map<Page, Array<{ v: VolumeState; pi: number }>>();
      for (const v of this.meta.volumes.values()) {
        const table = kind === 'map' ? v.map : v.gens.entries;
        table.forEachPage((pi, page) => {
          const list = holders.get(page);
          if (list) list.push({ v, pi });
          else holders.set(page, [{ v, pi }]);
        });
      }
      for (const [page, list] of holders) {
        if (list.length < 2) continue;
        const recorded = this.meta.shares[kind].holdersOf(page);
        const names = list.map((h) => h.v.name).join(', ');
        if (recorded !== list.length) problems.push(`${kind} page ${list[0].pi} is held by ${list.length} volumes (${names}) but ${recorded} on record`);
        for (const { v, pi } of list) {
          const table = kind === 'map' ? v.map : v.gens.entries;
          if (!table.isPageShared(pi)) problems.push(`volume ${v.name}: ${kind} page ${pi} is shared with ${names} but would be changed in place`);
        }
      }
    }
    return problems;
  }

  /** Every write completed before the call, and every metadata change, is durable when this resolves. */
  async flush(): Promise<void> {
    this.enter();
    try {
      await durabilityBarrier(this.journal, this.data);
    } finally {
      this.leave();
    }
  }

  /** Resolves when every chunk freed so far is clean and allocatable again (tests, tools). */
  async settleFrees(): Promise<void> {
    await this.journal.commit();
    await this.alloc.drainFrees();
  }

  /** Writes a checkpoint now and starts a new journal (normally automatic). */
  async checkpointNow(): Promise<void> {
    this.enter();
    try {
      await this.checkpointing;
      await this.startCheckpoint();
    } finally {
      this.leave();
    }
  }

  // ---------------------------------------------------------------- internals

  /** frees the chunks collected by the ownership hook, tagged with the journal record that let go of them */
  private releaseDropped(seq: number): void {
    const dropped = this.dropped;
    this.dropped = [];
    for (const p of dropped) this.alloc.release(p, seq);
  }

  private async removeVolumeNow(volume: Volume): Promise<void> {
    const st = volume.state;
    const seq = appendVolumeDelete(this.journal, st.id);
    this.meta.removeVolume(st);
    this.volumes.delete(st.id);
    this.releaseDropped(seq);
    await this.journal.waitDurable(seq);
  }

  private enter(): void {
    if (this.closing) throw new PoolError('EIO', `pool ${this.dir} is closed`);
    if (this.failure) throw this.failure;
    this.active++;
  }

  private leave(): void {
    if (--this.active === 0 && this.activeWaiters.length > 0) {
      const w = this.activeWaiters;
      this.activeWaiters = [];
      for (const f of w) f();
    }
  }

  /** metadata operations run one at a time */
  private async serialized<T>(fn: () => Promise<T>): Promise<T> {
    this.enter();
    const run = this.admin.then(fn, fn);
    this.admin = run.catch(() => {});
    try {
      return await run;
    } finally {
      this.leave();
    }
  }

  private requireVolume(name: string): Volume {
    const v = this.volume(name);
    if (!v) throw new PoolError('ENOENT', `no volume named '${name}'`);
    return v;
  }

  /** `internal` names (hidden volumes) start with '.', which user names cannot */
  private validateName(name: string, internal = false): void {
    if (internal) {
      if (typeof name !== 'string' || !/^\.[A-Za-z0-9._-]{1,63}$/.test(name)) throw new PoolError('EINVAL', `invalid internal volume name '${name}'`);
      return;
    }
    if (typeof name !== 'string' || !VOLUME_NAME.test(name)) {
      throw new PoolError('EINVAL', `invalid volume name '${name}': 1 to 64 characters A-Z a-z 0-9 . _ -, not starting with '.'`);
    }
  }

  private validateSize(size: number): void {
    if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) {
      throw new PoolError('EINVAL', `invalid volume size ${size}: a positive multiple of 512 bytes`);
    }
    if (Math.ceil(size / this.chunkSize) > MAX_CHUNKS) {
      throw new PoolError('EINVAL', `volume size ${size} exceeds the format limit of ${MAX_CHUNKS} chunks`);
    }
  }

  private afterCommit(): void {
    const durable = this.journal.durableSeq;
    for (const v of this.meta.volumes.values()) if (v.pendingMarks.size > 0) prunePendingMarks(v, durable);
    if (this.journal.bytes > this.checkpointBytes && this.checkpointing === null && this.closing === null && !this.failure) {
      void this.startCheckpoint().catch((err) => this.log.error({ err: (err as Error).message }, 'checkpoint failed; will retry'));
    }
  }

  private startCheckpoint(): Promise<void> {
    this.checkpointing ??= this.checkpoint(false).finally(() => (this.checkpointing = null));
    return this.checkpointing;
  }

  /**
   * New journal, then (synchronously) rotation + serialization = the consistent point, then the old journal's
   * tail durable, the checkpoint durable, and the old epoch's files removed.
   */
  private async checkpoint(clean: boolean): Promise<void> {
    const epoch = this.nextEpoch++;
    const fd = await createJournalFile(this.dir, epoch, this.uuid);
    const oldFd = this.journal.fd;
    const lastSeq = this.journal.rotate(fd, epoch);
    const parts = serializeCheckpoint(this.meta, this.uuid, { epoch, lastSeq, clean });
    try {
      await this.journal.waitDurable(lastSeq);
    } finally {
      fs.closeSync(oldFd);
    }
    await writeCheckpointFile(this.dir, epoch, parts);
    removeOlderEpochs(this.dir, epoch);
    this.log.debug({ epoch, lastSeq, bytes: parts.reduce((n, p) => n + p.length, 0), clean }, 'checkpoint written');
  }
}
