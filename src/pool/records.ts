/**
 * Journal record payloads (docs/pool-format.md, "Record types"): encoders used while serving and the decoder
 * that replays a record onto the metadata.
 */
import { PoolError } from './errors.js';
import { RecordType, bytesToUuid, readU64, uuidToBytes, writeU64, MAX_CHUNKS } from './format.js';
import type { JournalWriter, ScannedRecord } from './journal.js';
import type { PoolMetadata } from './metadata.js';
import { VolumeState } from './volume-state.js';

export function appendVolumeCreate(j: JournalWriter, v: VolumeState): number {
  const name = Buffer.from(v.name, 'utf8');
  const o = j.begin(RecordType.VOLUME_CREATE, 4 + 8 + 8 + 16 + 4 + 1 + name.length);
  const b = j.staging;
  b.writeUInt32LE(v.id, o);
  writeU64(b, v.size, o + 4);
  b.writeDoubleLE(v.createdAt, o + 12);
  uuidToBytes(v.uuid).copy(b, o + 20);
  b.writeUInt32LE(v.gens.current, o + 36);
  b[o + 40] = name.length;
  name.copy(b, o + 41);
  return j.end();
}

export function appendVolumeDelete(j: JournalWriter, vol: number): number {
  const o = j.begin(RecordType.VOLUME_DELETE, 4);
  j.staging.writeUInt32LE(vol, o);
  return j.end();
}

export function appendVolumeResize(j: JournalWriter, vol: number, size: number): number {
  const o = j.begin(RecordType.VOLUME_RESIZE, 12);
  j.staging.writeUInt32LE(vol, o);
  writeU64(j.staging, size, o + 4);
  return j.end();
}

export function appendMap(j: JournalWriter, vol: number, vchunk: number, pchunk: number, count: number, gen: number): number {
  const o = j.begin(RecordType.MAP, 20);
  const b = j.staging;
  b.writeUInt32LE(vol, o);
  b.writeUInt32LE(vchunk, o + 4);
  b.writeUInt32LE(pchunk, o + 8);
  b.writeUInt32LE(count, o + 12);
  b.writeUInt32LE(gen, o + 16);
  return j.end();
}

function appendRange(j: JournalWriter, type: number, vol: number, vchunk: number, count: number, gen: number): number {
  const o = j.begin(type, 16);
  const b = j.staging;
  b.writeUInt32LE(vol, o);
  b.writeUInt32LE(vchunk, o + 4);
  b.writeUInt32LE(count, o + 8);
  b.writeUInt32LE(gen, o + 12);
  return j.end();
}

export function appendUnmap(j: JournalWriter, vol: number, vchunk: number, count: number, gen: number): number {
  return appendRange(j, RecordType.UNMAP, vol, vchunk, count, gen);
}

export function appendMark(j: JournalWriter, vol: number, vchunk: number, count: number, gen: number): number {
  return appendRange(j, RecordType.MARK, vol, vchunk, count, gen);
}

export function appendGenSet(j: JournalWriter, vol: number, current: number): number {
  const o = j.begin(RecordType.GEN_SET, 8);
  j.staging.writeUInt32LE(vol, o);
  j.staging.writeUInt32LE(current, o + 4);
  return j.end();
}

export function appendGenReset(j: JournalWriter, vol: number): number {
  const o = j.begin(RecordType.GEN_RESET, 4);
  j.staging.writeUInt32LE(vol, o);
  return j.end();
}

/** Applies one scanned record to the metadata (replay). Throws ECORRUPT on a record that cannot apply. */
export function replayRecord(meta: PoolMetadata, rec: ScannedRecord): void {
  const { buf, offset: o, length } = rec;
  const bad = (why: string): never => {
    throw new PoolError('ECORRUPT', `journal record seq ${rec.seq} (type ${rec.type}): ${why}`);
  };
  const need = (n: number) => {
    if (length < n) bad(`payload of ${length} bytes, expected ${n}`);
  };
  const volume = (id: number): VolumeState => meta.volumes.get(id) ?? bad(`no volume with id ${id}`);
  const range = (v: VolumeState, c: number, n: number) => {
    if (n < 1 || c + n > v.chunks) bad(`chunks ${c}+${n} outside volume ${v.name} (${v.chunks} chunks)`);
  };
  switch (rec.type) {
    case RecordType.VOLUME_CREATE: {
      need(41);
      const nameLen = buf[o + 40];
      need(41 + nameLen);
      const id = buf.readUInt32LE(o);
      if (meta.volumes.has(id)) bad(`volume id ${id} exists`);
      const name = buf.toString('utf8', o + 41, o + 41 + nameLen);
      if (meta.byName.has(name)) bad(`volume name ${name} exists`);
      const v = new VolumeState(
        id,
        name,
        bytesToUuid(buf, o + 20),
        readU64(buf, o + 4),
        buf.readDoubleLE(o + 12),
        meta.chunkSize,
      );
      v.gens.current = buf.readUInt32LE(o + 36);
      meta.addVolume(v);
      break;
    }
    case RecordType.VOLUME_DELETE:
      need(4);
      meta.removeVolume(volume(buf.readUInt32LE(o)));
      break;
    case RecordType.VOLUME_RESIZE: {
      need(12);
      const size = readU64(buf, o + 4);
      if (!(size > 0) || Math.ceil(size / meta.chunkSize) > MAX_CHUNKS) bad(`bad size ${size}`);
      volume(buf.readUInt32LE(o)).resize(size);
      break;
    }
    case RecordType.MAP: {
      need(20);
      const v = volume(buf.readUInt32LE(o));
      const c = buf.readUInt32LE(o + 4);
      const p = buf.readUInt32LE(o + 8);
      const n = buf.readUInt32LE(o + 12);
      const g = buf.readUInt32LE(o + 16);
      range(v, c, n);
      if (p + n > MAX_CHUNKS) bad(`physical chunks ${p}+${n} out of range`);
      for (let i = 0; i < n; i++) v.mapChunk(c + i, p + i, g);
      break;
    }
    case RecordType.UNMAP:
    case RecordType.MARK: {
      need(16);
      const v = volume(buf.readUInt32LE(o));
      const c = buf.readUInt32LE(o + 4);
      const n = buf.readUInt32LE(o + 8);
      const g = buf.readUInt32LE(o + 12);
      range(v, c, n);
      if (rec.type === RecordType.UNMAP) for (let i = 0; i < n; i++) v.unmapChunk(c + i, g);
      else for (let i = 0; i < n; i++) v.markChunk(c + i, g);
      break;
    }
    case RecordType.GEN_SET:
      need(8);
      volume(buf.readUInt32LE(o)).gens.current = buf.readUInt32LE(o + 4);
      break;
    case RecordType.GEN_RESET:
      need(4);
      volume(buf.readUInt32LE(o)).gens.reset();
      break;
    default:
      bad('unknown record type');
  }
}
