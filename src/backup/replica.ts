/**
 * Compacted replicas (seed 000): a point-in-time view of a volume presented as a packed image, the stream format of
 * docs/stream-format.md with kind "replica": header, chunk table (replica record i -> original chunk offset),
 * the allocated chunks one after another, CRC table, trailer. The data is not copied: the replica is a read-only
 * copy-on-write view in the pool; what is stored beside it is the image's metadata (header block and CRC table,
 * computed once at creation by reading the allocated data), in `POOL/replicas/<uuid>.meta`.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { native } from '../native/index.js';
import { PoolError, VolumeFlag, type Pool, type Volume } from '../pool/index.js';
import type { ByteSink, ByteSource, StreamEntry } from './io.js';
import {
  HEADER_SIZE,
  encodeStreamMetadata,
  readStreamHeader,
  type StreamHeader,
  type StreamLayout,
} from './stream-format.js';
import { writeStream, type StreamFieldsInput } from './stream-writer.js';
import { writeFileAtomic } from '../util/durable-file.js';
import { VolumeChunkSource } from './volume-io.js';
import type { Progress } from './jobs.js';

export const REPLICA_DIR = 'replicas';
const META_MAGIC = Buffer.from('TVREPLMT', 'latin1');

/** The replica metadata file: magic, header block, u32 record count, CRC table (u32 each), CRC32C of all before. */
function encodeMeta(header: Buffer, crcs: Uint32Array): Buffer {
  const body = Buffer.alloc(8 + HEADER_SIZE + 4 + crcs.length * 4 + 4);
  META_MAGIC.copy(body, 0);
  header.copy(body, 8);
  body.writeUInt32LE(crcs.length, 8 + HEADER_SIZE);
  for (let i = 0; i < crcs.length; i++) body.writeUInt32LE(crcs[i], 12 + HEADER_SIZE + i * 4);
  body.writeUInt32LE(native.crc32c(body.subarray(0, body.length - 4)) >>> 0, body.length - 4);
  return body;
}

function decodeMeta(buf: Buffer, file: string): { header: StreamHeader; crcs: Uint32Array } {
  const bad = (why: string): never => {
    throw new PoolError('ECORRUPT', `replica metadata ${file}: ${why}`);
  };
  if (buf.length < 8 + HEADER_SIZE + 8 || !buf.subarray(0, 8).equals(META_MAGIC)) bad('not a replica metadata file');
  if ((native.crc32c(buf.subarray(0, buf.length - 4)) >>> 0) !== buf.readUInt32LE(buf.length - 4)) bad('CRC mismatch');
  const header = readStreamHeader(buf.subarray(8, 8 + HEADER_SIZE));
  const n = buf.readUInt32LE(8 + HEADER_SIZE);
  if (buf.length !== 8 + HEADER_SIZE + 4 + n * 4 + 4 || n !== header.recordCount) bad('record count mismatch');
  const crcs = new Uint32Array(n);
  for (let i = 0; i < n; i++) crcs[i] = buf.readUInt32LE(12 + HEADER_SIZE + i * 4);
  return { header, crcs };
}

export function metaPath(pool: Pool, uuid: string): string {
  return path.join(pool.dir, REPLICA_DIR, `${uuid}.meta`);
}

/**
 * Computes the image metadata of the view `volume` (one pass over `source`'s chunks for their CRCs) and stores it
 * durably beside the view: the step that turns a replica or diff export from INCOMPLETE into usable.
 */
export async function buildImageMeta(
  pool: Pool,
  volume: Volume,
  fields: StreamFieldsInput,
  source: VolumeChunkSource,
  progress?: Progress,
): Promise<{ digest: string }> {
  const written = await writeStream({ fields, source, sink: new CountingSink(), onProgress: progress });
  const header = encodeStreamMetadata(written.header, source.entries, written.crcs).header;
  const file = metaPath(pool, volume.uuid);
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  writeFileAtomic(file, encodeMeta(header, written.crcs), 0o600);
  return { digest: written.digest };
}

/** counts bytes, keeps nothing: the creation pass only needs the CRCs */
class CountingSink implements ByteSink {
  bytes = 0;
  async write(data: Buffer): Promise<void> {
    this.bytes += data.length;
  }
}

export interface ReplicaInfo {
  name: string;
  uuid: string;
  origin: { uuid: string; name: string };
  source: { uuid: string; name: string } | null;
  createdAt: string;
  /** the original volume's size and chunk size */
  volumeSize: number;
  chunkSize: number;
  records: number;
  dataBytes: number;
  /** size of the packed image (the NBD export's size) */
  imageBytes: number;
  digest?: string;
  /** replica create: seconds the daemon spent on it */
  seconds?: number;
}

/**
 * `replica create SOURCE NAME`: the view, then one pass over its allocated data for the CRC table, then the
 * metadata file, then the replica is complete (a crash before that leaves an INCOMPLETE volume that the next open
 * deletes). Time is proportional to the allocated data, not the volume size.
 */
export async function createReplica(pool: Pool, sourceName: string, name: string, opts: { log: Logger; progress?: Progress }): Promise<ReplicaInfo> {
  const src = pool.volume(sourceName);
  if (!src || src.info().kind === 'internal') throw new PoolError('ENOENT', `no volume named '${sourceName}'`);
  const sourceGeneration = src.generations().current;
  const started = Date.now();
  await pool.cloneVolume(sourceName, name, { flags: VolumeFlag.REPLICA | VolumeFlag.READ_ONLY | VolumeFlag.INCOMPLETE });
  try {
    const replica = pool.volume(name)!;
    const source = VolumeChunkSource.allMapped(replica, pool.chunkSize, () => 0);
    const { lineage } = pool.volumeLineage(name);
    const written = await buildImageMeta(
      pool,
      replica,
      {
        kind: 'replica',
        origin: lineage,
        source: { uuid: replica.uuid, name },
        volumeSize: replica.size,
        chunkSize: pool.chunkSize,
        generationFrom: 0,
        generationTo: 0,
        nextGeneration: Math.max(1, sourceGeneration),
      },
      source,
      opts.progress,
    );
    await pool.setVolumeFlags(name, VolumeFlag.REPLICA | VolumeFlag.READ_ONLY);
    const info = replicaInfo(pool, name);
    opts.log.info({ ...info, source: sourceName }, 'replica created');
    return { ...info, digest: written.digest, seconds: (Date.now() - started) / 1000 };
  } catch (err) {
    await pool.deleteVolume(name, { force: true }).catch(() => {});
    throw err;
  }
}

/** The packed image of a replica, for the NBD export and for restores. */
export class ReplicaImage {
  readonly size: number;
  readonly layout: StreamLayout;
  private readonly parts: Array<{ offset: number; bytes: Buffer }>;

  private constructor(
    readonly volume: Volume,
    readonly header: StreamHeader,
    readonly entries: readonly StreamEntry[],
    meta: ReturnType<typeof encodeStreamMetadata>,
  ) {
    this.layout = meta.layout;
    this.size = meta.layout.totalBytes;
    this.parts = [
      { offset: 0, bytes: meta.header },
      { offset: meta.layout.tableOffset, bytes: meta.table },
      { offset: meta.layout.crcTableOffset, bytes: meta.crcTable },
      { offset: meta.layout.trailerOffset, bytes: meta.trailer },
    ];
  }

  /**
   * Loads the metadata and checks it against the (read-only) view: a replica's mapped chunks, or a diff export's
   * chunks in the generations its stream holds.
   */
  static open(pool: Pool, name: string, want: 'replica' | 'diff-export' | 'any' = 'replica'): ReplicaImage {
    const volume = pool.volume(name);
    const kind = volume?.info().kind;
    if (!volume || (kind !== 'replica' && kind !== 'diff-export') || (want !== 'any' && kind !== want)) {
      throw new PoolError('ENOENT', `no ${want === 'diff-export' ? 'diff export' : 'replica'} named '${name}'`);
    }
    const file = metaPath(pool, volume.uuid);
    let buf: Buffer;
    try {
      buf = fs.readFileSync(file);
    } catch (err) {
      throw new PoolError('ECORRUPT', `${kind} '${name}': its metadata ${file} cannot be read: ${(err as Error).message}`);
    }
    const { header, crcs } = decodeMeta(buf, file);
    const cs = header.chunkSize;
    const entries =
      kind === 'diff-export'
        ? volume.chunksInGenerations(header.generationFrom, header.generationTo).map((m) => ({ offset: m.chunk * cs, length: cs, generation: m.generation }))
        : volume.mappedChunks().map((m) => ({ offset: m.chunk * cs, length: cs, generation: 0 }));
    const meta = encodeStreamMetadata(header, entries, crcs);
    if (!meta.header.equals(buf.subarray(8, 8 + HEADER_SIZE))) {
      throw new PoolError('ECORRUPT', `${kind} '${name}': its metadata does not match its chunks (${entries.length} found, ${header.recordCount} recorded)`);
    }
    return new ReplicaImage(volume, header, entries, meta);
  }

  /** Fills `buf` with the image bytes at `offset` (the data region is read from the replica in place). */
  async read(offset: number, buf: Buffer): Promise<void> {
    const end = offset + buf.length;
    if (offset < 0 || end > this.size) throw new PoolError('EINVAL', `read ${offset}+${buf.length} beyond the replica image (${this.size} bytes)`);
    const reads: Array<Promise<unknown>> = [];
    for (const part of this.parts) {
      const s = Math.max(offset, part.offset);
      const e = Math.min(end, part.offset + part.bytes.length);
      if (s < e) part.bytes.copy(buf, s - offset, s - part.offset, e - part.offset);
    }
    // the gaps between the parts are padding (zeros) ... except the data region
    const { dataOffset, dataBytes } = this.layout;
    const ds = Math.max(offset, dataOffset);
    const de = Math.min(end, dataOffset + dataBytes);
    if (ds < de) {
      const cs = this.header.chunkSize;
      for (let pos = ds; pos < de; ) {
        const i = Math.floor((pos - dataOffset) / cs);
        const within = pos - dataOffset - i * cs;
        const n = Math.min(cs - within, de - pos);
        const volOffset = this.entries[i].offset + within;
        const view = buf.subarray(pos - offset, pos - offset + n);
        const readable = Math.max(0, Math.min(n, this.volume.size - volOffset));
        if (readable < n) view.fill(0, readable);
        if (readable > 0) {
          reads.push(
            this.volume.read(volOffset, view.subarray(0, readable)).then((holes) => {
              for (let k = 0; k < holes.length; k += 2) view.fill(0, holes[k], holes[k] + holes[k + 1]);
            }),
          );
        }
        pos += n;
      }
    }
    await Promise.all(reads);
  }

  /** the image as a sequential ByteSource (restores) */
  reader(): ByteSource {
    let pos = 0;
    return {
      readExact: async (length: number) => {
        if (pos + length > this.size) throw Object.assign(new Error(`replica image ends at ${this.size}`), { bytesRead: this.size - pos });
        const buf = Buffer.alloc(length);
        await this.read(pos, buf);
        pos += length;
        return buf;
      },
    };
  }
}

export function replicaInfo(pool: Pool, name: string): ReplicaInfo {
  const image = ReplicaImage.open(pool, name);
  const v = image.volume.info();
  const lineage = pool.volumeLineage(name);
  return {
    name,
    uuid: v.uuid,
    origin: image.header.origin,
    source: lineage.source,
    createdAt: v.createdAt,
    volumeSize: image.header.volumeSize,
    chunkSize: image.header.chunkSize,
    records: image.header.recordCount,
    dataBytes: image.header.dataBytes,
    imageBytes: image.size,
  };
}

/** Deletes a replica and its metadata file. */
export async function deleteReplica(pool: Pool, name: string): Promise<void> {
  const volume = pool.volume(name);
  if (!volume || volume.info().kind !== 'replica') throw new PoolError('ENOENT', `no replica named '${name}'`);
  await pool.deleteVolume(name, { force: true });
  fs.rmSync(metaPath(pool, volume.uuid), { force: true });
}

/** Metadata files whose replica no longer exists (a crash between the steps of create or delete). */
export function removeOrphanReplicaMetadata(pool: Pool, log: Logger): void {
  const dir = path.join(pool.dir, REPLICA_DIR);
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  const live = new Set(pool.listVolumes().filter((v) => v.kind === 'replica' || v.kind === 'diff-export').map((v) => v.uuid));
  for (const n of names) {
    const uuid = n.replace(/\.meta(\.tmp)?$/, '');
    if (n.endsWith('.tmp') || !live.has(uuid)) {
      fs.rmSync(path.join(dir, n), { force: true });
      log.info({ file: n }, 'removed replica metadata left by an interrupted operation');
    }
  }
}
