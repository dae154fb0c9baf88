/**
 * The backup jobs the control socket runs: full backup (seed 003 "safe backup" in one command: hidden snapshot,
 * compacted full stream, snapshot withdrawn, generation map restarted at the snapshot point), restore (verified
 * before anything becomes visible), and the listing of what a medium holds.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { PoolError, VolumeFlag, type BackupChain, type Pool, type Volume } from '../pool/index.js';
import { listFiles, openWriteStream, parseMediaTarget } from '../media/index.js';
import { readStreamHeader, streamLayout, HEADER_SIZE, type StreamHeader, type StreamIdentity } from './stream-format.js';
import { writeStream, type StreamFieldsInput } from './stream-writer.js';
import { VolumeChunkSource } from './volume-io.js';
import { GzipSink, gzipBound, isGzip } from './compression.js';
import zlib from 'node:zlib';

export type Progress = (done: number, total: number) => void;

export interface FullBackupResult {
  volume: string;
  target: string;
  /** 1-based position of the stream on a tap/tape medium (as `media list` numbers them) */
  file: number;
  streamUuid: string;
  records: number;
  /** the stream's size */
  bytes: number;
  /** what the medium holds: the stream, or less when compressed */
  bytesOnMedium: number;
  compressed: boolean;
  dataBytes: number;
  digest: string;
  seconds: number;
  /** the generation the view closed; writes after the view are now in generation 1, 2, ... */
  closedGeneration: number;
  currentGeneration: number;
}

/**
 * Volumes with a backup running in this daemon: a second backup of the same volume would close and renumber
 * generations under the first one's feet, so it is refused.
 */
const backupsRunning = new Set<string>();

/** a backup of the volume with this UUID is running (a restore into it is refused meanwhile) */
export function backupRunning(uuid: string): boolean {
  return backupsRunning.has(uuid);
}

/** the zero-filled management info slot (seed 001 fills it in a later capability) */
const EMPTY_MANAGEMENT_INFO = Buffer.alloc(512);

function identityOf(pool: Pool, name: string): { lineage: StreamIdentity; self: StreamIdentity } {
  const volume = pool.volume(name)!;
  return { lineage: pool.volumeLineage(name).lineage, self: { uuid: volume.uuid, name: volume.name } };
}

/**
 * `backup full VOL --to TARGET`. The stream carries the volume's lineage identity (its origin's when VOL is itself a
 * copy) and the management info slot. Only a stream whose trailer is written and synced counts: then, in one step,
 * the volume's backup chain starts at this stream and the generation map restarts at the view (chunks written since
 * are generation 1, ...). On any failure, including a full medium, the map is left alone (the next backup
 * over-reports rather than misses) and the error says how far it got.
 */
export async function backupFull(
  pool: Pool,
  volumeName: string,
  targetSpec: string,
  opts: DumpOptions,
): Promise<FullBackupResult> {
  return dumpFromView(pool, volumeName, targetSpec, opts, {
    what: 'full backup',
    plan: (view) => ({
      source: VolumeChunkSource.allMapped(view, pool.chunkSize, () => 0),
      fields: { kind: 'full', generationFrom: 0, generationTo: 0, nextGeneration: 1 },
    }),
    finish: (viewName, header) =>
      pool.finishBackupView(volumeName, viewName, { baseStreamUuid: header.streamUuid, throughGeneration: 0 }).then((r) => r.current),
  });
}

export interface DiffBackupResult extends FullBackupResult {
  generationFrom: number;
  generationTo: number;
  baseStreamUuid: string;
}

/**
 * The scope of a difference backup of `volume` now: generations from..to with to the current generation, from the
 * one after the last dumped generation of its chain unless `scope` says otherwise (seed 002: a smaller scope merges
 * several generations into one stream). Refuses a scope that would leave generations out of the chain.
 */
export function diffScope(volume: Volume, scope: number | undefined): { from: number; to: number; chain: BackupChain } {
  const info = volume.info();
  const chain = info.backupChain;
  if (!chain) {
    throw new PoolError(
      'EINVAL',
      `volume '${volume.name}' has no full backup to extend: take one first with 'thinvault backup full ${volume.name} --to TARGET'` +
        (info.kind === 'volume' ? '' : ' (a snapshot or copy starts without a backup chain)'),
    );
  }
  const to = info.generation;
  const from = scope ?? chain.throughGeneration + 1;
  if (!Number.isInteger(from) || from < 1) throw new PoolError('EINVAL', `scope ${from}: generations start at 1`);
  if (from > to) throw new PoolError('EINVAL', `scope ${from} is past the current generation ${to} of '${volume.name}'`);
  if (from > chain.throughGeneration + 1) {
    throw new PoolError(
      'EINVAL',
      `scope ${from} would leave generation(s) ${chain.throughGeneration + 1}..${from - 1} of '${volume.name}' out of every backup ` +
        `(the last diff holds up to ${chain.throughGeneration}); use --scope ${chain.throughGeneration + 1} or lower`,
    );
  }
  return { from, to, chain };
}

/**
 * `backup diff VOL --to TARGET [--scope K]` (seed 002): from a point-in-time view taken together with the move to
 * generation G + 1, every chunk whose generation is in K..G with its position, generation, CRC and data. When the
 * stream is complete and synced, the volume's chain records G as dumped and the view goes, in one record; on a
 * failure the generation is folded back, so the next diff still holds everything this one should have.
 */
export async function backupDiff(
  pool: Pool,
  volumeName: string,
  targetSpec: string,
  opts: DumpOptions & { scope?: number },
): Promise<DiffBackupResult> {
  const volume = requireBackupSource(pool, volumeName);
  let scope = diffScope(volume, opts.scope);
  const result = await dumpFromView(pool, volumeName, targetSpec, opts, {
    what: 'difference backup',
    plan: (view, closedGeneration) => {
      // the generation may have moved since the check above; the view is what counts
      scope = diffScope(volume, opts.scope === undefined ? scope.from : opts.scope);
      scope.to = closedGeneration;
      if (scope.from > scope.to) throw new PoolError('EINVAL', `scope ${scope.from} is past generation ${scope.to} the backup closed`);
      const cs = pool.chunkSize;
      const entries = view.chunksInGenerations(scope.from, scope.to).map((m) => ({ offset: m.chunk * cs, length: cs, generation: m.generation }));
      return {
        source: new VolumeChunkSource(view, entries, cs),
        fields: {
          kind: 'diff',
          generationFrom: scope.from,
          generationTo: scope.to,
          nextGeneration: scope.to + 1,
          baseStreamUuid: scope.chain.baseStreamUuid,
        },
      };
    },
    finish: async (viewName) => {
      await pool.finishDiffView(volumeName, viewName, { baseStreamUuid: scope.chain.baseStreamUuid, throughGeneration: scope.to });
      return volume.info().generation;
    },
  });
  return { ...result, generationFrom: scope.from, generationTo: scope.to, baseStreamUuid: scope.chain.baseStreamUuid };
}

export interface BackupEstimate {
  volume: string;
  kind: 'full' | 'diff';
  generationFrom: number;
  generationTo: number;
  records: number;
  dataBytes: number;
  /** the stream's exact size in bytes, from the count table (docs/stream-format.md); compressed: an upper bound */
  bytes: number;
  /** the uncompressed stream's exact size */
  streamBytes: number;
  chunkSize: number;
  compressed: boolean;
  /** false for a compressed stream: `bytes` is then an upper bound */
  exact: boolean;
}

/**
 * `backup estimate VOL [--scope K | --full]` (seed 002, claim 10): the stream a backup would write now, from the
 * count table (diff) or the allocation count (full) alone; nothing is read. Exact while the volume does not change.
 */
export function estimateBackup(pool: Pool, volumeName: string, opts: { scope?: number; full?: boolean; compress?: boolean }): BackupEstimate {
  const volume = requireBackupSource(pool, volumeName);
  const cs = pool.chunkSize;
  let kind: BackupEstimate['kind'];
  let records: number;
  let from = 0;
  let to = 0;
  if (opts.full) {
    if (opts.scope !== undefined) throw new PoolError('EINVAL', 'a full backup has no scope: give --full or --scope, not both');
    kind = 'full';
    records = volume.info().allocatedChunks;
  } else {
    kind = 'diff';
    ({ from, to } = diffScope(volume, opts.scope));
    records = volume.countInGenerations(from, to);
  }
  const layout = streamLayout(records, cs);
  const compressed = opts.compress === true;
  return {
    volume: volumeName,
    kind,
    generationFrom: from,
    generationTo: to,
    records,
    dataBytes: layout.dataBytes,
    bytes: compressed ? gzipBound(layout.totalBytes) : layout.totalBytes,
    streamBytes: layout.totalBytes,
    chunkSize: cs,
    compressed,
    exact: !compressed,
  };
}

function requireBackupSource(pool: Pool, volumeName: string): Volume {
  const volume = pool.volume(volumeName);
  const kind = volume?.info().kind;
  if (!volume || kind === 'internal' || kind === 'diff-export') throw new PoolError('ENOENT', `no volume named '${volumeName}'`);
  return volume;
}

export interface DumpOptions {
  overwrite?: boolean;
  /** write the stream as one gzip member (src/backup/compression.ts) */
  compress?: boolean;
  log: Logger;
  progress?: Progress;
}

/** what differs between the kinds of dump made from a point-in-time view */
interface DumpPlan {
  what: string;
  /** the records and the kind-specific header fields, given the view and the generation it closed */
  plan: (
    view: Volume,
    closedGeneration: number,
  ) => { source: VolumeChunkSource; fields: Pick<StreamFieldsInput, 'kind' | 'generationFrom' | 'generationTo' | 'nextGeneration' | 'baseStreamUuid'> };
  /** the stream is complete and synced: make that durable and remove the view; resolves the current generation */
  finish: (viewName: string, header: StreamHeader) => Promise<number>;
}

/**
 * The common path of full and difference backups: medium first (a wrong target fails before anything changes),
 * then the view and the new generation in one step, the stream, and `finish`; on failure the generation is folded
 * back and the view removed in one record.
 */
async function dumpFromView(
  pool: Pool,
  volumeName: string,
  targetSpec: string,
  opts: DumpOptions,
  kind: DumpPlan,
): Promise<FullBackupResult> {
  const target = parseMediaTarget(targetSpec);
  const volume = requireBackupSource(pool, volumeName);
  const { lineage, self } = identityOf(pool, volumeName);
  if (backupsRunning.has(volume.uuid)) throw new PoolError('EBUSY', `a backup of '${volumeName}' is already running`);
  backupsRunning.add(volume.uuid);
  let viewMade = false;
  const viewName = `.backup-${randomUUID().slice(0, 8)}`;
  try {
    const writer = await openWriteStream(target, { overwrite: opts.overwrite });
    const started = Date.now();
    try {
      const view = await pool.cloneVolume(volumeName, viewName, {
        flags: VolumeFlag.HIDDEN | VolumeFlag.READ_ONLY | VolumeFlag.BACKUP_VIEW,
        advanceSourceGeneration: true,
      });
      viewMade = true;
      const { source, fields } = kind.plan(pool.volume(viewName)!, view.closedGeneration);
      opts.log.info(
        { volume: volumeName, target: target.spec, records: source.entries.length, closedGeneration: view.closedGeneration, generations: `${fields.generationFrom}..${fields.generationTo}` },
        `${kind.what} started`,
      );
      const gzip = opts.compress ? new GzipSink(writer) : null;
      const written = await writeStream({
        fields: { ...fields, origin: lineage, source: self, volumeSize: view.size, chunkSize: pool.chunkSize, managementInfo: EMPTY_MANAGEMENT_INFO },
        source,
        sink: gzip ?? writer,
        onProgress: opts.progress,
      });
      await gzip?.end();
      const { fileNumber, bytes: bytesOnMedium } = await writer.finish();
      const current = await kind.finish(viewName, written.header);
      viewMade = false;
      const result: FullBackupResult = {
        volume: volumeName,
        target: target.spec,
        file: fileNumber + 1,
        streamUuid: written.header.streamUuid,
        records: written.records,
        bytes: written.bytes,
        bytesOnMedium,
        compressed: gzip !== null,
        dataBytes: written.header.dataBytes,
        digest: written.digest,
        seconds: (Date.now() - started) / 1000,
        closedGeneration: view.closedGeneration,
        currentGeneration: current,
      };
      opts.log.info(result, `${kind.what} written`);
      return result;
    } catch (err) {
      await writer.abort().catch(() => {});
      throw err;
    }
  } catch (err) {
    if (viewMade) {
      await pool.abandonBackupView(volumeName, viewName).catch(() => {});
      viewMade = false;
    }
    opts.log.error({ volume: volumeName, target: target.spec, err: (err as Error).message }, `${kind.what} failed; the generation map is unchanged`);
    throw err;
  } finally {
    if (viewMade) await pool.deleteVolume(viewName, { force: true }).catch(() => {});
    backupsRunning.delete(volume.uuid);
  }
}

export interface MediaListEntry {
  file: number;
  kind: StreamHeader['kind'] | 'unknown';
  volume: string | null;
  volumeUuid: string | null;
  source: string | null;
  createdAt: string | null;
  volumeSize: number | null;
  records: number | null;
  /** stream size from its header */
  streamBytes: number | null;
  /** bytes found on the medium, when cheap to know */
  bytesOnMedium: number | null;
  generations: string | null;
  /** written with --compress (gzip) */
  compressed: boolean | null;
  /** the file holds the whole stream (as far as the medium tells without reading it) */
  complete: boolean | null;
  problem?: string;
}

/** `media list TARGET`: what each file on the medium holds, from its header only. */
export async function listMedia(targetSpec: string): Promise<{ target: string; files: MediaListEntry[] }> {
  const target = parseMediaTarget(targetSpec);
  const files = await listFiles(target, HEADER_SIZE);
  const out: MediaListEntry[] = files.map((f) => {
    const base = { file: f.fileNumber + 1, bytesOnMedium: f.bytes };
    try {
      const compressed = isGzip(f.head);
      const h = readStreamHeader(compressed ? zlib.gunzipSync(f.head, { finishFlush: zlib.constants.Z_SYNC_FLUSH }).subarray(0, HEADER_SIZE) : f.head);
      return {
        ...base,
        kind: h.kind,
        volume: h.origin.name,
        volumeUuid: h.origin.uuid,
        source: h.source.name,
        createdAt: new Date(h.createdAt).toISOString(),
        volumeSize: h.volumeSize,
        records: h.recordCount,
        streamBytes: h.totalBytes,
        generations: h.kind === 'diff' ? `${h.generationFrom}..${h.generationTo}` : `base (next ${h.nextGeneration})`,
        compressed,
        // a compressed file's length says nothing about the stream's: only the medium's own end marks count
        complete: f.bytes === null || compressed ? (f.complete ? null : false) : f.complete && f.bytes >= h.totalBytes,
      };
    } catch (err) {
      return {
        ...base,
        kind: 'unknown' as const,
        volume: null,
        volumeUuid: null,
        source: null,
        createdAt: null,
        volumeSize: null,
        records: null,
        streamBytes: null,
        generations: null,
        compressed: null,
        complete: false,
        problem: (err as Error).message,
      };
    }
  });
  return { target: target.spec, files: out };
}
