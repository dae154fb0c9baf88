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
import { writeFileAtomic } from './fs-util.js';
import { IoTracker } from './io-tracker.js';
import { JournalWriter, createJournalFile } from './journal.js';
import { PoolLock } from './lock.js';
import { PoolMetadata } from './metadata.js';
import { appendVolumeCreate, appendVolumeDelete, appendVolumeResize } from './records.js';
import { type RecoveryReport, recoverMetadata, removeOlderEpochs } from './recovery.js';
import { Volume, type VolumeInfo } from './volume.js';
import { VolumeState } from './volume-state.js';

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
    };
    journal.onDurable = () => this.afterCommit();
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

  listVolumes(): VolumeInfo[] {
    return [...this.meta.byName.keys()].sort().map((name) => this.volume(name)!.info());
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

  createVolume(name: string, size: number): Promise<VolumeInfo> {
    return this.serialized(async () => {
      this.validateName(name);
      this.validateSize(size);
      if (this.meta.byName.has(name)) throw new PoolError('EEXIST', `a volume named '${name}' exists`);
      const st = new VolumeState(this.meta.nextVolumeId, name, randomUUID(), size, Date.now(), this.chunkSize);
      this.meta.addVolume(st);
      await this.journal.waitDurable(appendVolumeCreate(this.journal, st));
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
      const st = volume.state;
      const seq = appendVolumeDelete(this.journal, st.id);
      this.meta.removeVolume(st);
      this.volumes.delete(st.id);
      st.map.forEachNonZero(0, st.chunks, (_c, e) => this.alloc.release(e - 1, seq));
      await this.journal.waitDurable(seq);
    });
  }

  /** Grows or shrinks a volume; shrinking frees the chunks past the end. */
  resizeVolume(name: string, size: number): Promise<VolumeInfo> {
    return this.serialized(async () => {
      this.validateSize(size);
      const volume = this.requireVolume(name);
      const st = volume.state;
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
        st.resize(size, (p) => this.alloc.release(p, seq));
        // not needed for correctness (a later grow zeroes it), but old data past the end should not linger
        if (size % cs !== 0) await volume.zeroTail(size, Math.min(old, chunkEnd(size)));
        await durabilityBarrier(this.journal, this.data);
      }
      return volume.info();
    });
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
    const expected = new Uint16Array(Math.max(this.alloc.total, 1));
    let mapped = 0;
    let grown = expected;
    this.meta.forEachMapped((p, v) => {
      mapped++;
      if (p >= grown.length) {
        const bigger = new Uint16Array(p + 1);
        bigger.set(grown);
        grown = bigger;
      }
      grown[p]!++;
      if (grown[p]! > 1) problems.push(`chunk ${p} is mapped more than once (volume ${v.name})`);
    });
    problems.push(...this.alloc.audit(grown));
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
    return { ok: problems.length === 0, problems: problems.slice(0, 100), checked: { volumes: this.meta.volumes.size, mappedChunks: mapped, chunksTotal: this.alloc.total } };
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

  private validateName(name: string): void {
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
