/**
 * The backup jobs the control socket runs: full backup (seed 003 "safe backup" in one command: hidden snapshot,
 * compacted full stream, snapshot withdrawn, generation map restarted at the snapshot point), restore (verified
 * before anything becomes visible), and the listing of what a medium holds.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { PoolError, VolumeFlag, type Pool, type Volume } from '../pool/index.js';
import { listFiles, openReadStream, openWriteStream, parseMediaTarget } from '../media/index.js';
import type { ByteSource } from './io.js';
import { readStreamHeader, HEADER_SIZE, type StreamHeader, type StreamIdentity } from './stream-format.js';
import { readStream } from './stream-reader.js';
import { writeStream } from './stream-writer.js';
import { VolumeChunkSink, VolumeChunkSource } from './volume-io.js';

export type Progress = (done: number, total: number) => void;

export interface FullBackupResult {
  volume: string;
  target: string;
  /** 1-based position of the stream on a tap/tape medium (as `media list` numbers them) */
  file: number;
  streamUuid: string;
  records: number;
  bytes: number;
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

/** the zero-filled management info slot (seed 001 fills it in a later capability) */
const EMPTY_MANAGEMENT_INFO = Buffer.alloc(512);

function identityOf(pool: Pool, name: string): { lineage: StreamIdentity; self: StreamIdentity } {
  const volume = pool.volume(name)!;
  return { lineage: pool.volumeLineage(name).lineage, self: { uuid: volume.uuid, name: volume.name } };
}

/**
 * `backup full VOL --to TARGET`. The stream carries the volume's lineage identity (its origin's when VOL is itself a
 * copy) and the management info slot. Only a stream whose trailer is written and synced counts: then the generation
 * map restarts at the view (chunks written since are generation 1, ...). On any failure, including a full medium,
 * the map is left alone (the next backup over-reports rather than misses) and the error says how far it got.
 */
export async function backupFull(
  pool: Pool,
  volumeName: string,
  targetSpec: string,
  opts: { overwrite?: boolean; log: Logger; progress?: Progress },
): Promise<FullBackupResult> {
  const target = parseMediaTarget(targetSpec);
  const volume = pool.volume(volumeName);
  if (!volume || volume.info().kind === 'internal') throw new PoolError('ENOENT', `no volume named '${volumeName}'`);
  const { lineage, self } = identityOf(pool, volumeName);
  if (backupsRunning.has(volume.uuid)) throw new PoolError('EBUSY', `a backup of '${volumeName}' is already running`);
  backupsRunning.add(volume.uuid);
  try {
    return await backupFullOnce(pool, volumeName, target, lineage, self, opts);
  } finally {
    backupsRunning.delete(volume.uuid);
  }
}

async function backupFullOnce(
  pool: Pool,
  volumeName: string,
  target: ReturnType<typeof parseMediaTarget>,
  lineage: StreamIdentity,
  self: StreamIdentity,
  opts: { overwrite?: boolean; log: Logger; progress?: Progress },
): Promise<FullBackupResult> {
  // open the medium first: a wrong target fails before the volume's generation changes
  const writer = await openWriteStream(target, { overwrite: opts.overwrite });
  const viewName = `.backup-${randomUUID().slice(0, 8)}`;
  const started = Date.now();
  let viewMade = false;
  try {
    const view = await pool.cloneVolume(volumeName, viewName, {
      flags: VolumeFlag.HIDDEN | VolumeFlag.READ_ONLY | VolumeFlag.BACKUP_VIEW,
      advanceSourceGeneration: true,
    });
    viewMade = true;
    const source = VolumeChunkSource.allMapped(pool.volume(viewName)!, pool.chunkSize, () => 0);
    opts.log.info({ volume: volumeName, target: target.spec, records: source.entries.length, closedGeneration: view.closedGeneration }, 'full backup started');
    const written = await writeStream({
      fields: {
        kind: 'full',
        origin: lineage,
        source: self,
        volumeSize: view.size,
        chunkSize: pool.chunkSize,
        generationFrom: 0,
        generationTo: 0,
        nextGeneration: 1,
        managementInfo: EMPTY_MANAGEMENT_INFO,
      },
      source,
      sink: writer,
      onProgress: opts.progress,
    });
    const { fileNumber } = await writer.finish();
    // the stream is complete and synced: the map restarts at the view, and the view goes, in one record
    const { current } = await pool.finishBackupView(volumeName, viewName);
    viewMade = false;
    const result: FullBackupResult = {
      volume: volumeName,
      target: target.spec,
      file: fileNumber + 1,
      streamUuid: written.header.streamUuid,
      records: written.records,
      bytes: written.bytes,
      dataBytes: written.header.dataBytes,
      digest: written.digest,
      seconds: (Date.now() - started) / 1000,
      closedGeneration: view.closedGeneration,
      currentGeneration: current,
    };
    opts.log.info(result, 'full backup written');
    return result;
  } catch (err) {
    await writer.abort().catch(() => {});
    if (viewMade) {
      await pool.abandonBackupView(volumeName, viewName).catch(() => {});
      viewMade = false;
    }
    opts.log.error({ volume: volumeName, target: target.spec, err: (err as Error).message }, 'full backup failed; the generation map is unchanged');
    throw err;
  } finally {
    if (viewMade) await pool.deleteVolume(viewName, { force: true }).catch(() => {});
  }
}

/** A ByteSource that first hands out bytes already read (the header a caller looked at), then the rest. */
class PrefixedSource implements ByteSource {
  private prefix: Buffer | null;
  constructor(
    prefix: Buffer,
    private readonly rest: ByteSource,
  ) {
    this.prefix = prefix;
  }
  async readExact(length: number): Promise<Buffer> {
    const p = this.prefix;
    if (p === null) return this.rest.readExact(length);
    if (length <= p.length) {
      this.prefix = length === p.length ? null : p.subarray(length);
      return p.subarray(0, length);
    }
    this.prefix = null;
    const more = await this.rest.readExact(length - p.length);
    return Buffer.concat([p, more]);
  }
}

export interface RestoreOptions {
  /** a new volume with this name */
  as?: string;
  /** an existing volume of the stream's size, replaced as a whole */
  into?: string;
  verifyOnly?: boolean;
  log: Logger;
  progress?: Progress;
  /** for messages: where the stream comes from */
  from: string;
  /** called with the header before anything changes (extra checks of the caller) */
  check?: (header: StreamHeader) => void;
}

export interface RestoreResult {
  from: string;
  kind: StreamHeader['kind'];
  volume: string | null;
  origin: StreamIdentity;
  source: StreamIdentity;
  streamUuid: string;
  createdAt: string;
  volumeSize: number;
  records: number;
  bytes: number;
  chunksWritten: number;
  chunksSkippedAsZero: number;
  verifyOnly: boolean;
  seconds: number;
}

/**
 * Restores one stream from `source`. The data goes into a hidden staging volume while the stream is read, and only
 * when every CRC, the chunk table, the trailer and its digest check out does it become visible: renamed to the new
 * volume (`as`), or swapped into the target (`into`) in one journal record. A bad stream changes nothing.
 */
export async function restoreStream(pool: Pool, source: ByteSource, opts: RestoreOptions): Promise<RestoreResult> {
  const started = Date.now();
  if (!opts.verifyOnly && (opts.as === undefined) === (opts.into === undefined)) {
    throw new PoolError('EINVAL', 'say where to restore: exactly one of as (a new volume) or into (an existing one)');
  }
  if (opts.as !== undefined && pool.volume(opts.as)) throw new PoolError('EEXIST', `a volume named '${opts.as}' exists`);
  let target: Volume | undefined;
  if (opts.into !== undefined) {
    target = pool.volume(opts.into);
    if (!target || target.info().kind === 'internal') throw new PoolError('ENOENT', `no volume named '${opts.into}'`);
    if (target.readOnly) throw new PoolError('EPERM', `volume '${opts.into}' is read-only`);
    if (target.openCount > 0) throw new PoolError('EBUSY', `volume '${opts.into}' is open by ${target.openCount} NBD client(s); disconnect them first`);
    if (target.heldBy !== null) throw new PoolError('EBUSY', `volume '${opts.into}' is busy: ${target.heldBy}`);
  }
  const headBytes = Buffer.from(await source.readExact(HEADER_SIZE));
  const header = readStreamHeader(headBytes);
  opts.check?.(header);
  if (target && target.size !== header.volumeSize) {
    throw new PoolError('EINVAL', `volume '${opts.into}' is ${target.size} bytes, the stream holds a ${header.volumeSize}-byte volume; restore --as a new volume instead`);
  }
  const full = new PrefixedSource(headBytes, source);
  const summary = (records: number, bytes: number, written: number, skipped: number, volume: string | null): RestoreResult => ({
    from: opts.from,
    kind: header.kind,
    volume,
    origin: header.origin,
    source: header.source,
    streamUuid: header.streamUuid,
    createdAt: new Date(header.createdAt).toISOString(),
    volumeSize: header.volumeSize,
    records,
    bytes,
    chunksWritten: written,
    chunksSkippedAsZero: skipped,
    verifyOnly: !!opts.verifyOnly,
    seconds: (Date.now() - started) / 1000,
  });
  if (opts.verifyOnly) {
    const r = await readStream(full, null, { verifyOnly: true, onProgress: opts.progress });
    opts.log.info({ from: opts.from, records: r.records, bytes: r.bytes }, 'stream verified');
    return summary(r.records, r.bytes, 0, 0, null);
  }

  const stagingName = `.restore-${randomUUID().slice(0, 8)}`;
  if (target) target.heldBy = 'a restore is writing into it';
  try {
    await pool.createVolume(stagingName, header.volumeSize, { internal: true });
    const sink = new VolumeChunkSink(pool.volume(stagingName)!, Buffer.alloc(header.chunkSize));
    let r;
    try {
      r = await readStream(full, sink, { onProgress: opts.progress });
      await sink.drain();
    } catch (err) {
      await sink.drain().catch(() => {});
      await pool.deleteVolume(stagingName, { force: true }).catch(() => {});
      throw err;
    }
    let name: string;
    try {
      if (target) {
        await pool.replaceVolumeContent(target.name, stagingName);
        name = target.name;
      } else {
        await pool.renameVolume(stagingName, opts.as!, 0, header.origin);
        name = opts.as!;
      }
    } catch (err) {
      // e.g. the name was taken meanwhile: the verified data is not kept under a hidden name
      await pool.deleteVolume(stagingName, { force: true }).catch(() => {});
      throw err;
    }
    const result = summary(r.records, r.bytes, sink.chunksWritten, sink.chunksSkipped, name);
    opts.log.info(result, 'stream restored');
    return result;
  } finally {
    if (target) target.heldBy = null;
  }
}

/** `restore --from TARGET`: one stream from a medium (tap/tape: file `#N`, or the only one). */
export async function restoreFromMedia(pool: Pool, targetSpec: string, opts: Omit<RestoreOptions, 'from'>): Promise<RestoreResult> {
  const target = parseMediaTarget(targetSpec);
  let fileNumber: number | undefined;
  if ((target.kind === 'tap' || target.kind === 'tape') && target.fileNumber === null) {
    const files = await listFiles(target, 0);
    if (files.length === 0) throw new PoolError('ENOENT', `${target.spec} holds no backups`);
    if (files.length > 1) {
      throw new PoolError('EINVAL', `${target.spec} holds ${files.length} files; pick one with ${target.spec}#N (see 'thinvault media list ${target.spec}')`);
    }
    fileNumber = 0;
  }
  const reader = await openReadStream(target, fileNumber);
  try {
    return await restoreStream(pool, reader, { ...opts, from: target.spec });
  } finally {
    await reader.close().catch(() => {});
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
      const h = readStreamHeader(f.head);
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
        complete: f.bytes === null ? (f.complete ? null : false) : f.complete && f.bytes >= h.totalBytes,
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
        complete: false,
        problem: (err as Error).message,
      };
    }
  });
  return { target: target.spec, files: out };
}
