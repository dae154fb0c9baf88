/**
 * Difference backups as read-only devices (seed 002, 【0028】: the pseudo-device whose reads return the diff): `diff
 * export VOL --name NAME` makes a point-in-time view of VOL, moves VOL to the next generation in the same step, and
 * serves the diff stream of the view as the NBD export NAME, whose size is exactly the stream's. `dd` of the device
 * is the stream, byte for byte, as `backup diff` would have written it; it can be read again until `diff remove`.
 *
 * The view is a read-only copy-on-write volume flagged DIFF_EXPORT; beside it, like a replica's, the stream's header
 * block and CRC table are kept in `POOL/replicas/<uuid>.meta` (computed once at creation by reading the changed
 * chunks). It survives restarts. `diff remove NAME` records the generations as dumped in VOL's chain and removes
 * the view in one journal record; `--abandon` removes it without, so the next diff still holds those generations.
 */
import fs from 'node:fs';
import type { Logger } from 'pino';
import { PoolError, VolumeFlag, type Pool } from '../pool/index.js';
import { diffScope, type Progress } from './jobs.js';
import { ReplicaImage, buildImageMeta, metaPath } from './replica.js';
import { VolumeChunkSource } from './volume-io.js';

export interface DiffExportInfo {
  name: string;
  /** the volume the diff was taken of (null if it was deleted since) */
  volume: string | null;
  origin: { uuid: string; name: string };
  generationFrom: number;
  generationTo: number;
  baseStreamUuid: string;
  streamUuid: string;
  createdAt: string;
  records: number;
  dataBytes: number;
  /** the stream's size = the NBD export's size */
  bytes: number;
  /** NBD clients attached now */
  clients: number;
  seconds?: number;
}

/** `diff export VOL [--scope K] --name NAME` */
export async function createDiffExport(
  pool: Pool,
  volumeName: string,
  name: string,
  opts: { scope?: number; log: Logger; progress?: Progress },
): Promise<DiffExportInfo> {
  const volume = pool.volume(volumeName);
  const kind = volume?.info().kind;
  if (!volume || kind === 'internal' || kind === 'diff-export') throw new PoolError('ENOENT', `no volume named '${volumeName}'`);
  const scope = diffScope(volume, opts.scope);
  const started = Date.now();
  const view = await pool.cloneVolume(volumeName, name, {
    flags: VolumeFlag.DIFF_EXPORT | VolumeFlag.READ_ONLY | VolumeFlag.INCOMPLETE,
    advanceSourceGeneration: true,
  });
  try {
    const to = view.closedGeneration;
    if (scope.from > to) throw new PoolError('EINVAL', `scope ${scope.from} is past generation ${to}`);
    const exportVolume = pool.volume(name)!;
    const cs = pool.chunkSize;
    const entries = exportVolume.chunksInGenerations(scope.from, to).map((m) => ({ offset: m.chunk * cs, length: cs, generation: m.generation }));
    const source = new VolumeChunkSource(exportVolume, entries, cs);
    await buildImageMeta(
      pool,
      exportVolume,
      {
        kind: 'diff',
        origin: pool.volumeLineage(volumeName).lineage,
        source: { uuid: volume.uuid, name: volumeName },
        volumeSize: view.size,
        chunkSize: cs,
        generationFrom: scope.from,
        generationTo: to,
        nextGeneration: to + 1,
        baseStreamUuid: scope.chain.baseStreamUuid,
        managementInfo: Buffer.alloc(512),
      },
      source,
      opts.progress,
    );
    await pool.setVolumeFlags(name, VolumeFlag.DIFF_EXPORT | VolumeFlag.READ_ONLY);
    const info = diffExportInfo(pool, name);
    opts.log.info({ ...info, source: volumeName }, 'diff export created');
    return { ...info, seconds: (Date.now() - started) / 1000 };
  } catch (err) {
    // the generation stays advanced: the volume's chain still ends where it did, so the next diff includes it
    await pool.deleteVolume(name, { force: true }).catch(() => {});
    throw err;
  }
}

export function diffExportInfo(pool: Pool, name: string): DiffExportInfo {
  const image = ReplicaImage.open(pool, name, 'diff-export');
  const h = image.header;
  if (h.kind !== 'diff') throw new PoolError('ENOENT', `no diff export named '${name}'`);
  const sourceUuid = pool.volumeLineage(name).source?.uuid;
  const source = pool.listVolumes().find((v) => v.uuid === sourceUuid);
  return {
    name,
    volume: source?.name ?? null,
    origin: h.origin,
    generationFrom: h.generationFrom,
    generationTo: h.generationTo,
    baseStreamUuid: h.baseStreamUuid!,
    streamUuid: h.streamUuid,
    createdAt: new Date(h.createdAt).toISOString(),
    records: h.recordCount,
    dataBytes: h.dataBytes,
    bytes: image.size,
    clients: image.volume.openCount,
  };
}

export function listDiffExports(pool: Pool): DiffExportInfo[] {
  return pool
    .listVolumes()
    .filter((v) => v.kind === 'diff-export')
    .map((v) => diffExportInfo(pool, v.name));
}

/**
 * `diff remove NAME [--abandon]`: the stream was dumped (default): the source's chain records its generations, so
 * the next diff starts after them; `abandon`: it was not, the next diff includes them again.
 */
export async function removeDiffExport(pool: Pool, name: string, opts: { abandon?: boolean; log: Logger }): Promise<DiffExportInfo & { abandoned: boolean }> {
  const info = diffExportInfo(pool, name);
  const uuid = pool.volume(name)!.uuid;
  const chain = opts.abandon ? null : { baseStreamUuid: info.baseStreamUuid, throughGeneration: info.generationTo };
  await pool.finishDiffView(info.volume, name, chain);
  fs.rmSync(metaPath(pool, uuid), { force: true });
  opts.log.info({ name, volume: info.volume, generations: `${info.generationFrom}..${info.generationTo}`, abandoned: !!opts.abandon }, 'diff export removed');
  return { ...info, abandoned: !!opts.abandon };
}
