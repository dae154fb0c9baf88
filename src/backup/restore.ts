/**
 * Restores (seed 002 差分リストア): one stream, or a chain of a full backup and its difference backups, into a new
 * volume or over an existing one.
 *
 * Nothing a user can see changes before everything checked out: the headers of every stream are read first and the
 * chain's lineage checked (same origin volume, diffs of this full backup, generation ranges that follow each other,
 * same chunk size); the data then goes into a hidden staging volume while every record CRC, chunk table and trailer
 * digest is verified; only then does the staging volume become the new volume (one rename) or the target's content
 * (one VOLUME_REPLACE record). A restored volume stands where its streams left the original: same generation map,
 * current generation and backup chain, so that a later diff of the original applies to it, and a diff of it
 * continues the chain.
 */
import fs from 'node:fs';
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { PoolError, VolumeFlag, type BackupChain, type Pool, type Volume } from '../pool/index.js';
import { openReadStream, parseMediaTarget, listFiles, type MediaTarget } from '../media/index.js';
import type { ByteSource, StreamEntry } from './io.js';
import { readStreamHeader, HEADER_SIZE, type StreamHeader, type StreamIdentity } from './stream-format.js';
import { readStream } from './stream-reader.js';
import { VolumeChunkSink } from './volume-io.js';
import { isGzip, openMaybeCompressed } from './compression.js';
import { PrefixedSource } from './prefixed-source.js';
import { backupRunning, type Progress } from './jobs.js';

/** One stream of a restore: where it comes from, and how to (re)open it. */
export interface StreamOrigin {
  /** for messages: the media target, `replica NAME`, `restore export NAME` */
  label: string;
  open(): Promise<{ source: ByteSource; close(): Promise<void> }>;
  /** false for pipes and pseudo-devices: the stream can be read once */
  rereadable: boolean;
}

export interface RestoreOptions {
  /** a new volume with this name */
  as?: string;
  /** an existing volume, replaced as a whole (a chain starting with a full) or extended (a chain of diffs) */
  into?: string;
  verifyOnly?: boolean;
  /** generations whose records are not restored from a stream where any of them is damaged (seed 002) */
  skipGenerations?: readonly number[];
  log: Logger;
  progress?: Progress;
  /** called with each stream's header as soon as it is read, before any check of the chain; throw to refuse */
  onHeader?: (header: StreamHeader) => void;
}

export interface RestoredStream {
  from: string;
  kind: StreamHeader['kind'];
  streamUuid: string;
  createdAt: string;
  generations: string;
  records: number;
  bytes: number;
  chunksWritten: number;
  chunksUnmapped: number;
  chunksSkippedAsZero: number;
  /** records not restored because of --skip-gen, per generation */
  skipped: Array<{ generation: number; records: number; damaged: number }>;
}

export interface RestoreResult {
  /** the streams in the order they were applied */
  streams: RestoredStream[];
  volume: string | null;
  origin: StreamIdentity;
  source: StreamIdentity;
  volumeSize: number;
  /** the restored volume's current generation and chain (null when it has none) */
  generation: number | null;
  backupChain: BackupChain | null;
  records: number;
  bytes: number;
  chunksWritten: number;
  chunksUnmapped: number;
  chunksSkippedAsZero: number;
  warnings: string[];
  verifyOnly: boolean;
  seconds: number;
  // single-stream fields kept for scripts written against one-stream restores
  from: string;
  kind: StreamHeader['kind'];
  streamUuid: string;
  createdAt: string;
}

/** A media target as a StreamOrigin; a tap/tape target without `#N` must hold exactly one file. */
export async function mediaStreamOrigin(spec: string): Promise<StreamOrigin> {
  const target: MediaTarget = parseMediaTarget(spec);
  let fileNumber: number | undefined;
  if ((target.kind === 'tap' || target.kind === 'tape') && target.fileNumber === null) {
    const files = await listFiles(target, 0);
    if (files.length === 0) throw new PoolError('ENOENT', `${target.spec} holds no backups`);
    if (files.length > 1) {
      throw new PoolError('EINVAL', `${target.spec} holds ${files.length} files; pick one with ${target.spec}#N (see 'thinvault media list ${target.spec}')`);
    }
    fileNumber = 0;
  }
  let rereadable = target.kind !== 'pipe';
  if (target.kind === 'file') {
    try {
      rereadable = !fs.statSync(target.path).isFIFO();
    } catch {
      // a missing file fails with a clear error when opened
    }
  }
  return {
    label: target.spec,
    rereadable,
    open: async () => {
      const reader = await openReadStream(target, fileNumber);
      try {
        // a stream written with --compress is expanded on the fly
        const { source } = await openMaybeCompressed(reader);
        return { source, close: () => reader.close() };
      } catch (err) {
        await reader.close().catch(() => {});
        throw err;
      }
    },
  };
}

/** a stream's header, and its opened source when it was kept open (read-once streams) */
interface Opened {
  origin: StreamOrigin;
  header: StreamHeader;
  kept: { source: ByteSource; close(): Promise<void> } | null;
}

function generationsOf(h: StreamHeader): string {
  return h.kind === 'diff' ? `${h.generationFrom}..${h.generationTo}` : 'base';
}

function describe(i: number, o: { label: string; header: StreamHeader }): string {
  const h = o.header;
  return `stream ${i + 1} (${o.label}: ${h.kind}${h.kind === 'diff' ? ` of generations ${generationsOf(h)}` : ''})`;
}

/** what a chain of diffs applied --into an existing volume starts from */
interface ExistingStart {
  name: string;
  lineage: StreamIdentity;
  chain: BackupChain | null;
  /** chunks changed after the chain's last generation (the volume moved on since it was restored or dumped) */
  changedSince: number;
}

/**
 * The lineage rules of docs/stream-format.md ("Chains"): throws a PoolError naming the stream and the generations
 * at fault. `start` is the target of a chain that begins with a diff.
 */
export function checkChain(
  streams: ReadonlyArray<{ label: string; header: StreamHeader }>,
  start: ExistingStart | null,
  poolChunkSize: number,
  verifyOnly = false,
): void {
  const first = streams[0].header;
  let base: { origin: StreamIdentity; streamUuid: string; through: number; what: string };
  if (first.kind === 'diff') {
    if (!start && verifyOnly) {
      // checking streams without restoring them: the first diff stands for the chain before it
      start = { name: '(none)', lineage: first.origin, chain: { baseStreamUuid: first.baseStreamUuid!, throughGeneration: first.generationFrom - 1 }, changedSince: 0 };
    }
    if (!start) {
      throw new PoolError(
        'EINVAL',
        `${describe(0, streams[0])} is a difference backup: a chain starts with its full backup (restore --from FULL --from DIFF ...), ` +
          `or a diff is applied --into the volume restored from the earlier streams`,
      );
    }
    if (!start.chain) throw new PoolError('EINVAL', `volume '${start.name}' has no backup chain to apply ${describe(0, streams[0])} to: restore its full backup first`);
    if (start.lineage.uuid !== first.origin.uuid) {
      throw new PoolError('EINVAL', `${describe(0, streams[0])} is a backup of volume '${first.origin.name}' (${first.origin.uuid}), not of '${start.lineage.name}' (${start.lineage.uuid}), the lineage of '${start.name}'`);
    }
    if (start.chain.baseStreamUuid !== first.baseStreamUuid) {
      throw new PoolError('EINVAL', `${describe(0, streams[0])} extends full backup ${first.baseStreamUuid}; volume '${start.name}' stands on full backup ${start.chain.baseStreamUuid}`);
    }
    if (start.changedSince > 0) {
      throw new PoolError(
        'EINVAL',
        `volume '${start.name}' changed after generation ${start.chain.throughGeneration} (${start.changedSince} chunk(s) written since): ` +
          `a diff applies only over the exact state it extends; restore the whole chain --as a new volume instead`,
      );
    }
    base = { origin: start.lineage, streamUuid: start.chain.baseStreamUuid, through: start.chain.throughGeneration, what: `volume '${start.name}'` };
  } else {
    base = { origin: first.origin, streamUuid: first.streamUuid, through: 0, what: describe(0, streams[0]) };
  }
  for (let i = first.kind === 'diff' ? 0 : 1; i < streams.length; i++) {
    const h = streams[i].header;
    const what = describe(i, streams[i]);
    if (h.kind !== 'diff') throw new PoolError('EINVAL', `${what} is a ${h.kind}: only the first stream of a chain may be a full backup or replica`);
    if (first.kind === 'replica') throw new PoolError('EINVAL', `${what} cannot follow a replica: difference backups extend full backups`);
    if (h.origin.uuid !== base.origin.uuid) {
      throw new PoolError('EINVAL', `${what} is a backup of volume '${h.origin.name}' (${h.origin.uuid}), not of '${base.origin.name}' (${base.origin.uuid})`);
    }
    if (h.baseStreamUuid !== base.streamUuid) {
      throw new PoolError('EINVAL', `${what} extends full backup ${h.baseStreamUuid}, not ${base.streamUuid} (${base.what}): it belongs to another chain`);
    }
    if (h.chunkSize !== poolChunkSize) {
      throw new PoolError('EINVAL', `${what} has ${h.chunkSize}-byte chunks; this pool uses ${poolChunkSize}-byte chunks, so its generations cannot be restored here`);
    }
    if (h.generationFrom > base.through + 1) {
      throw new PoolError(
        'EINVAL',
        `${what} does not follow on: generation(s) ${base.through + 1}..${h.generationFrom - 1} are missing ` +
          `(restored so far: up to generation ${base.through}); add the stream that holds them, in order`,
      );
    }
    if (h.generationTo <= base.through) {
      throw new PoolError(
        'EINVAL',
        `${what} is out of order: generations up to ${base.through} are already restored, and applying an older diff ` +
          `over newer content would roll chunks back; give the streams oldest first`,
      );
    }
    base.through = h.generationTo;
  }
}

/** Merges chunk indexes (ascending) into byte ranges "a..b" for a warning; at most `max` listed. */
function byteRanges(chunks: number[], chunkSize: number, max = 20): string {
  const out: string[] = [];
  let i = 0;
  while (i < chunks.length && out.length < max) {
    let j = i + 1;
    while (j < chunks.length && chunks[j] === chunks[j - 1] + 1) j++;
    out.push(`${chunks[i] * chunkSize}..${chunks[j - 1] * chunkSize + chunkSize - 1}`);
    i = j;
  }
  return out.join(', ') + (i < chunks.length ? ', ...' : '');
}

/**
 * Restores a stream or a chain (full first, then its diffs oldest first, or diffs alone `into` a volume standing on
 * their chain). See the module comment for what is checked when.
 */
export async function restoreChain(pool: Pool, origins: readonly StreamOrigin[], opts: RestoreOptions): Promise<RestoreResult> {
  const started = Date.now();
  if (origins.length === 0) throw new PoolError('EINVAL', 'nothing to restore: give at least one stream');
  if (!opts.verifyOnly && (opts.as === undefined) === (opts.into === undefined)) {
    throw new PoolError('EINVAL', 'say where to restore: exactly one of as (a new volume) or into (an existing one)');
  }
  const skip = new Set(opts.skipGenerations ?? []);
  for (const g of skip) if (!Number.isInteger(g) || g < 1 || g > 0xffff_fffe) throw new PoolError('EINVAL', `--skip-gen ${g}: generations of diffs start at 1`);
  if (opts.as !== undefined && pool.volume(opts.as)) throw new PoolError('EEXIST', `a volume named '${opts.as}' exists`);
  let target: Volume | undefined;
  if (opts.into !== undefined) {
    target = pool.volume(opts.into);
    const kind = target?.info().kind;
    if (!target || kind === 'internal' || kind === 'diff-export') throw new PoolError('ENOENT', `no volume named '${opts.into}'`);
    if (target.readOnly) throw new PoolError('EPERM', `volume '${opts.into}' is read-only`);
    if (target.openCount > 0) throw new PoolError('EBUSY', `volume '${opts.into}' is open by ${target.openCount} NBD client(s); disconnect them first`);
    if (target.heldBy !== null) throw new PoolError('EBUSY', `volume '${opts.into}' is busy: ${target.heldBy}`);
    if (backupRunning(target.uuid)) throw new PoolError('EBUSY', `a backup of '${opts.into}' is running; restore into it when it is done`);
  }
  const readOnce = origins.filter((o) => !o.rereadable);
  if (skip.size > 0 && readOnce.length > 0) {
    throw new PoolError('EINVAL', `--skip-gen reads every stream twice (once to find the damaged generations); ${readOnce[0].label} can be read only once: copy it to a file first`);
  }

  // 1. every header, before anything else (a read-once stream stays open for its turn)
  const opened: Opened[] = [];
  try {
    for (const [i, origin] of origins.entries()) {
      const handle = await origin.open();
      let keep = false;
      try {
        const head = Buffer.from(await handle.source.readExact(HEADER_SIZE));
        let header: StreamHeader;
        try {
          if (isGzip(head)) throw new PoolError('EINVAL', 'this is a compressed (gzip) stream: restore it from a file or tape with restore --from, which expands it');
          header = readStreamHeader(head);
          opts.onHeader?.(header);
        } catch (err) {
          throw prefixError(err, `stream ${i + 1} (${origin.label})`);
        }
        keep = !origin.rereadable || (origins.length === 1 && skip.size === 0);
        opened.push({ origin, header, kept: keep ? { source: new PrefixedSource(head, handle.source), close: handle.close } : null });
      } finally {
        if (!keep) await handle.close().catch(() => {});
      }
    }
    return await restoreOpened(pool, opened, target, skip, opts, started);
  } finally {
    for (const o of opened) await o.kept?.close().catch(() => {});
  }
}

function prefixError(err: unknown, where: string): Error {
  if (err instanceof Error) {
    err.message = `${where}: ${err.message}`;
    return err;
  }
  return new Error(`${where}: ${String(err)}`);
}

async function restoreOpened(pool: Pool, opened: Opened[], target: Volume | undefined, skip: Set<number>, opts: RestoreOptions, started: number): Promise<RestoreResult> {
  const cs = pool.chunkSize;
  const first = opened[0].header;
  const last = opened[opened.length - 1].header;
  let start: ExistingStart | null = null;
  if (target && first.kind === 'diff') {
    const info = target.info();
    const chain = info.backupChain;
    start = {
      name: target.name,
      lineage: pool.volumeLineage(target.name).lineage,
      chain,
      changedSince: chain ? target.countInGenerations(chain.throughGeneration + 1, 0xffff_ffff) : 0,
    };
  }
  checkChain(
    opened.map((o) => ({ label: o.origin.label, header: o.header })),
    start,
    cs,
    opts.verifyOnly && !target,
  );
  if (target && first.kind !== 'diff' && target.size !== first.volumeSize && opened.length === 1) {
    throw new PoolError('EINVAL', `volume '${opts.into}' is ${target.size} bytes, the stream holds a ${first.volumeSize}-byte volume; restore --as a new volume instead`);
  }
  // diffs applied to a volume standing on their chain follow the original's resizes; anything else needs the size
  if (target && first.kind !== 'diff' && target.size !== last.volumeSize) {
    throw new PoolError('EINVAL', `volume '${opts.into}' is ${target.size} bytes, the chain ends with a ${last.volumeSize}-byte volume; restore --as a new volume instead`);
  }

  const progress = opts.progress ? chainProgress(opened, opts.progress, skip.size > 0 && !opts.verifyOnly) : undefined;
  // a stream read again must be the one whose header was checked
  const sameStream = (o: Opened) => (h: StreamHeader) => {
    if (h.streamUuid !== o.header.streamUuid) throw new PoolError('EIO', `${o.origin.label} changed while being restored: it now holds stream ${h.streamUuid}, not ${o.header.streamUuid}`);
  };
  const readFrom = async <T>(o: Opened, fn: (source: ByteSource) => Promise<T>): Promise<T> => {
    if (o.kept) {
      const kept = o.kept;
      o.kept = null;
      try {
        return await fn(kept.source);
      } finally {
        await kept.close().catch(() => {});
      }
    }
    const handle = await o.origin.open();
    try {
      return await fn(handle.source);
    } finally {
      await handle.close().catch(() => {});
    }
  };

  // 2. with --skip-gen: a verification pass finds, per stream, which skipped generations are damaged
  const damagedIn: Array<Map<number, number>> = opened.map(() => new Map());
  if (skip.size > 0 || opts.verifyOnly) {
    for (const [i, o] of opened.entries()) {
      const r = await readFrom(o, (source) =>
        readStream(source, null, { verifyOnly: true, tolerateGenerations: skip, onHeader: sameStream(o), onProgress: progress?.(i, 0) }),
      ).catch((err) => {
        throw prefixError(err, describe(i, { label: o.origin.label, header: o.header }));
      });
      damagedIn[i] = r.damaged;
    }
  }
  const warnings: string[] = [];
  for (const [i, d] of damagedIn.entries()) {
    for (const [g, n] of d) warnings.push(`${describe(i, { label: opened[i].origin.label, header: opened[i].header })}: ${n} damaged record(s) of generation ${g} are not restored from it (--skip-gen ${g})`);
  }
  if (opts.verifyOnly) {
    opts.log.info({ streams: opened.length, warnings }, 'chain verified');
    return summary(opened, null, null, null, warnings, true, started);
  }

  // 3. stage
  const stagingName = `.restore-${randomUUID().slice(0, 8)}`;
  if (target) target.heldBy = 'a restore is writing into it';
  try {
    if (first.kind === 'diff') {
      await pool.cloneVolume(target!.name, stagingName, { flags: VolumeFlag.HIDDEN });
    } else {
      await pool.createVolume(stagingName, first.volumeSize, { internal: true });
    }
    const staging = pool.volume(stagingName)!;
    // the generation each chunk ends up with: the record that last wrote it (0 for the full's records)
    const finalGen = new Map<number, number>();
    if (first.kind === 'diff') for (const m of staging.chunksInGenerations(1, 0xffff_ffff)) finalGen.set(m.chunk, m.generation);
    const stale = new Set<number>();
    const applied: RestoredStream[] = [];
    try {
      for (const [i, o] of opened.entries()) {
        const h = o.header;
        if (staging.size !== h.volumeSize) {
          await pool.resizeVolume(stagingName, h.volumeSize);
          const chunks = Math.ceil(h.volumeSize / cs);
          for (const c of [...finalGen.keys()]) if (c >= chunks) finalGen.delete(c);
          for (const c of [...stale]) if (c >= chunks) stale.delete(c);
        }
        const damaged = damagedIn[i];
        const skippedHere = new Map<number, number>();
        const accept = (e: StreamEntry): boolean => {
          const c = e.offset / cs;
          if (damaged.has(e.generation)) {
            skippedHere.set(e.generation, (skippedHere.get(e.generation) ?? 0) + 1);
            // the chunk keeps what it holds: the same content when an earlier stream gave it this generation
            if (finalGen.get(c) !== e.generation) stale.add(c);
            return false;
          }
          finalGen.set(c, e.generation);
          stale.delete(c);
          return true;
        };
        const sink = new VolumeChunkSink(staging, Buffer.alloc(h.chunkSize), { zeroRecords: i === 0 && h.kind !== 'diff' ? 'skip' : 'unmap', accept });
        const r = await readFrom(o, (source) =>
          readStream(source, sink, { tolerateGenerations: skip, onHeader: sameStream(o), onProgress: progress?.(i, skip.size > 0 ? 1 : 0) }).finally(() => sink.drain().catch(() => {})),
        ).catch((err) => {
          throw prefixError(err, describe(i, { label: o.origin.label, header: o.header }));
        });
        await sink.drain();
        applied.push({
          from: o.origin.label,
          kind: h.kind,
          streamUuid: h.streamUuid,
          createdAt: new Date(h.createdAt).toISOString(),
          generations: generationsOf(h),
          records: r.records,
          bytes: r.bytes,
          chunksWritten: sink.chunksWritten,
          chunksUnmapped: sink.chunksUnmapped,
          chunksSkippedAsZero: sink.chunksSkipped,
          skipped: [...skippedHere].map(([generation, records]) => ({ generation, records, damaged: damaged.get(generation) ?? 0 })),
        });
      }
      if (stale.size > 0) {
        const chunks = [...stale].sort((a, b) => a - b);
        warnings.push(
          `${chunks.length} chunk(s) stay at older contents because their generation was skipped and no other stream held it: volume bytes ${byteRanges(chunks, cs)}`,
        );
      }
      for (const w of warnings) opts.log.warn({ restore: stagingName }, w);

      // 4. the generation map and chain the restored volume stands on (a replica, or streams of another chunk size, start none)
      const keepsGenerations = first.kind !== 'replica' && first.chunkSize === cs;
      let chain: BackupChain | null = null;
      if (keepsGenerations) {
        chain = { baseStreamUuid: first.kind === 'diff' ? first.baseStreamUuid! : first.streamUuid, throughGeneration: last.kind === 'diff' ? last.generationTo : 0 };
        const marks = [...finalGen].filter(([, g]) => g !== 0).sort((a, b) => a[0] - b[0]);
        await pool.setRestoredGenerations(stagingName, marks, last.nextGeneration, chain);
      }

      // 5. commit
      let name: string;
      if (target) {
        // the target takes the chain only when the streams are of its own lineage; otherwise the restore counts as a
        // change of every chunk it touched, in the target's own chain
        const sameLineage = keepsGenerations && pool.volumeLineage(target.name).lineage.uuid === first.origin.uuid;
        await pool.replaceVolumeContent(target.name, stagingName, { withGenerations: sameLineage });
        name = target.name;
      } else {
        await pool.renameVolume(stagingName, opts.as!, 0, first.origin);
        name = opts.as!;
      }
      const info = pool.volume(name)!.info();
      const result = summary(opened, applied, name, info, warnings, false, started);
      opts.log.info({ ...result, streams: applied.length }, 'restored');
      return result;
    } catch (err) {
      await pool.deleteVolume(stagingName, { force: true }).catch(() => {});
      throw err;
    }
  } finally {
    if (target) target.heldBy = null;
  }
}

/** progress over the whole chain: each stream is read once (or twice with --skip-gen) */
function chainProgress(opened: Opened[], report: Progress, twoPasses: boolean): (stream: number, pass: number) => (done: number, total: number) => void {
  const sizes = opened.map((o) => o.header.totalBytes);
  const total = sizes.reduce((a, b) => a + b, 0) * (twoPasses ? 2 : 1);
  return (stream, pass) => {
    const before = sizes.slice(0, stream).reduce((a, b) => a + b, 0) + pass * (total / (twoPasses ? 2 : 1));
    return (done) => report(before + done, total);
  };
}

function summary(
  opened: Opened[],
  applied: RestoredStream[] | null,
  volume: string | null,
  info: ReturnType<Volume['info']> | null,
  warnings: string[],
  verifyOnly: boolean,
  started: number,
): RestoreResult {
  const streams: RestoredStream[] =
    applied ??
    opened.map((o) => ({
      from: o.origin.label,
      kind: o.header.kind,
      streamUuid: o.header.streamUuid,
      createdAt: new Date(o.header.createdAt).toISOString(),
      generations: generationsOf(o.header),
      records: o.header.recordCount,
      bytes: o.header.totalBytes,
      chunksWritten: 0,
      chunksUnmapped: 0,
      chunksSkippedAsZero: 0,
      skipped: [],
    }));
  const first = opened[0].header;
  const last = opened[opened.length - 1].header;
  return {
    streams,
    volume,
    origin: first.origin,
    source: first.source,
    volumeSize: last.volumeSize,
    generation: info ? info.generation : null,
    backupChain: info ? info.backupChain : null,
    records: streams.reduce((a, s) => a + s.records, 0),
    bytes: streams.reduce((a, s) => a + s.bytes, 0),
    chunksWritten: streams.reduce((a, s) => a + s.chunksWritten, 0),
    chunksUnmapped: streams.reduce((a, s) => a + s.chunksUnmapped, 0),
    chunksSkippedAsZero: streams.reduce((a, s) => a + s.chunksSkippedAsZero, 0),
    warnings,
    verifyOnly,
    seconds: (Date.now() - started) / 1000,
    from: opened.map((o) => o.origin.label).join(' + '),
    kind: first.kind,
    streamUuid: first.streamUuid,
    createdAt: new Date(first.createdAt).toISOString(),
  };
}

/** `restore --from TARGET [--from TARGET ...]` */
export async function restoreFromMedia(pool: Pool, specs: readonly string[], opts: RestoreOptions): Promise<RestoreResult> {
  const origins: StreamOrigin[] = [];
  for (const spec of specs) origins.push(await mediaStreamOrigin(spec));
  return restoreChain(pool, origins, opts);
}

/** one stream from an already opened, read-once source (a replica image, a pseudo-device) */
export function restoreStream(pool: Pool, source: ByteSource, opts: RestoreOptions & { from: string }): Promise<RestoreResult> {
  return restoreChain(pool, [{ label: opts.from, rereadable: false, open: async () => ({ source, close: async () => {} }) }], opts);
}
