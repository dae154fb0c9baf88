/**
 * Journal record payloads (docs/pool-format.md, "Record types"): encoders used while serving and the decoder
 * that replays a record onto the metadata.
 */
import { PoolError } from './errors.js';
import { RecordType, bytesToUuid, readU64, uuidToBytes, writeU64, MAX_CHUNKS } from './format.js';
import type { JournalWriter, ScannedRecord } from './journal.js';
import type { PoolMetadata } from './metadata.js';
import type { BackupChain, VolumeIdentity, VolumeState } from './volume-state.js';

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

function identityLength(id: VolumeIdentity | null): number {
  return 1 + (id ? Buffer.byteLength(id.name, 'utf8') : 0);
}

/** writes uuid (16 bytes, zeros for null) at o and the name (u8 length + UTF-8) at nameAt; returns the end */
function writeIdentity(b: Buffer, o: number, nameAt: number, id: VolumeIdentity | null): number {
  if (id) uuidToBytes(id.uuid).copy(b, o);
  else b.fill(0, o, o + 16);
  const name = Buffer.from(id?.name ?? '', 'utf8');
  b[nameAt] = name.length;
  name.copy(b, nameAt + 1);
  return nameAt + 1 + name.length;
}

/**
 * VOLUME_CLONE: volume `v` (new) is a point-in-time copy of volume `src`: same size and current generation,
 * sharing its mapping and generation pages. `v.source`/`v.origin` are the hidden source identities (seed 003).
 */
export function appendVolumeClone(j: JournalWriter, v: VolumeState, src: number): number {
  const name = Buffer.from(v.name, 'utf8');
  const len = 4 + 4 + 8 + 16 + 4 + 16 + 16 + 1 + name.length + identityLength(v.source) + identityLength(v.origin);
  const o = j.begin(RecordType.VOLUME_CLONE, len);
  const b = j.staging;
  b.writeUInt32LE(v.id, o);
  b.writeUInt32LE(src, o + 4);
  b.writeDoubleLE(v.createdAt, o + 8);
  uuidToBytes(v.uuid).copy(b, o + 16);
  b.writeUInt32LE(v.flags, o + 32);
  b[o + 68] = name.length;
  name.copy(b, o + 69);
  let at = o + 69 + name.length;
  at = writeIdentity(b, o + 36, at, v.source);
  writeIdentity(b, o + 52, at, v.origin);
  return j.end();
}

export function appendVolumeFlags(j: JournalWriter, vol: number, flags: number): number {
  const o = j.begin(RecordType.VOLUME_FLAGS, 8);
  j.staging.writeUInt32LE(vol, o);
  j.staging.writeUInt32LE(flags, o + 4);
  return j.end();
}

/**
 * GEN_REBASE: applies only while the volume's current generation is `expectCurrent` (idempotent replay); then
 * removes volume `view` (the backup's point-in-time view, 0 = none) in the same record, so that "backup done" and
 * "view gone" are durable together.
 */
export function appendGenRebase(j: JournalWriter, vol: number, base: number, expectCurrent: number, view = 0): number {
  const o = j.begin(RecordType.GEN_REBASE, 16);
  j.staging.writeUInt32LE(vol, o);
  j.staging.writeUInt32LE(base, o + 4);
  j.staging.writeUInt32LE(expectCurrent, o + 8);
  j.staging.writeUInt32LE(view, o + 12);
  return j.end();
}

/**
 * GEN_FOLD: applies only while the current generation is `into` + 1 (idempotent replay); removes volume `view`
 * (0 = none) in the same record: a failed backup's view goes together with the generation it started.
 */
export function appendGenFold(j: JournalWriter, vol: number, into: number, view = 0): number {
  const o = j.begin(RecordType.GEN_FOLD, 12);
  j.staging.writeUInt32LE(vol, o);
  j.staging.writeUInt32LE(into, o + 4);
  j.staging.writeUInt32LE(view, o + 8);
  return j.end();
}

export function appendVolumeRename(j: JournalWriter, vol: number, name: string): number {
  const bytes = Buffer.from(name, 'utf8');
  const o = j.begin(RecordType.VOLUME_RENAME, 5 + bytes.length);
  j.staging.writeUInt32LE(vol, o);
  j.staging[o + 4] = bytes.length;
  bytes.copy(j.staging, o + 5);
  return j.end();
}

/** VOLUME_REPLACE flag: the target also takes the staging volume's generation map and backup chain */
export const REPLACE_WITH_GENERATIONS = 1;

/**
 * VOLUME_REPLACE: `target` takes over the content of `staging`, which is removed (restore commit). Without flags
 * the replaced chunks count as changed in the target's current generation; with REPLACE_WITH_GENERATIONS the
 * target takes the staging volume's generation map and chain too (a restored backup chain).
 */
export function appendVolumeReplace(j: JournalWriter, target: number, staging: number, flags = 0): number {
  const o = j.begin(RecordType.VOLUME_REPLACE, flags === 0 ? 8 : 12);
  j.staging.writeUInt32LE(target, o);
  j.staging.writeUInt32LE(staging, o + 4);
  if (flags !== 0) j.staging.writeUInt32LE(flags, o + 8);
  return j.end();
}

/**
 * BACKUP_CHAIN: the volume's backup chain (null: none), and volume `view` (0 = none) removed in the same record: a
 * difference backup's point-in-time view goes together with the chain step its stream made.
 */
export function appendBackupChain(j: JournalWriter, vol: number, chain: BackupChain | null, view = 0): number {
  const o = j.begin(RecordType.BACKUP_CHAIN, 28);
  const b = j.staging;
  b.writeUInt32LE(vol, o);
  if (chain) uuidToBytes(chain.baseStreamUuid).copy(b, o + 4);
  else b.fill(0, o + 4, o + 20);
  b.writeUInt32LE(chain ? chain.throughGeneration : 0, o + 20);
  b.writeUInt32LE(view, o + 24);
  return j.end();
}

/** a chain read from a record or checkpoint: 16 bytes of base stream UUID (zeros = no chain), u32 generation */
export function readBackupChain(buf: Buffer, o: number): BackupChain | null {
  let zero = true;
  for (let i = 0; i < 16; i++) if (buf[o + i] !== 0) zero = false;
  return zero ? null : { baseStreamUuid: bytesToUuid(buf, o), throughGeneration: buf.readUInt32LE(o + 16) };
}

/** VOLUME_ORIGIN: the volume's origin identity (a restored volume continues the lineage of its backups) */
export function appendVolumeOrigin(j: JournalWriter, vol: number, origin: VolumeIdentity): number {
  const o = j.begin(RecordType.VOLUME_ORIGIN, 4 + 16 + identityLength(origin));
  j.staging.writeUInt32LE(vol, o);
  writeIdentity(j.staging, o + 4, o + 20, origin);
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
      const v = meta.newVolumeState(id, name, bytesToUuid(buf, o + 20), readU64(buf, o + 4), buf.readDoubleLE(o + 12));
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
    case RecordType.VOLUME_CLONE: {
      need(69);
      const id = buf.readUInt32LE(o);
      if (meta.volumes.has(id)) bad(`volume id ${id} exists`);
      const src = volume(buf.readUInt32LE(o + 4));
      const readName = (at: number): [string, number] => {
        if (at + 1 > o + length || at + 1 + buf[at] > o + length) bad('truncated name');
        return [buf.toString('utf8', at + 1, at + 1 + buf[at]), at + 1 + buf[at]];
      };
      const [name, a1] = readName(o + 68);
      const [sourceName, a2] = readName(a1);
      const [originName] = readName(a2);
      if (meta.byName.has(name)) bad(`volume name ${name} exists`);
      const v = meta.newVolumeState(id, name, bytesToUuid(buf, o + 16), src.size, buf.readDoubleLE(o + 8));
      src.shareInto(v);
      v.flags = buf.readUInt32LE(o + 32);
      v.source = { uuid: bytesToUuid(buf, o + 36), name: sourceName };
      v.origin = { uuid: bytesToUuid(buf, o + 52), name: originName };
      meta.addVolume(v);
      break;
    }
    case RecordType.VOLUME_FLAGS:
      need(8);
      volume(buf.readUInt32LE(o)).flags = buf.readUInt32LE(o + 4);
      break;
    case RecordType.GEN_REBASE: {
      need(16);
      const v = volume(buf.readUInt32LE(o));
      if (v.gens.current === buf.readUInt32LE(o + 8)) v.gens.rebase(buf.readUInt32LE(o + 4));
      const view = buf.readUInt32LE(o + 12);
      if (view !== 0 && meta.volumes.has(view)) meta.removeVolume(meta.volumes.get(view)!);
      break;
    }
    case RecordType.GEN_FOLD: {
      need(12);
      volume(buf.readUInt32LE(o)).gens.fold(buf.readUInt32LE(o + 4));
      const view = buf.readUInt32LE(o + 8);
      if (view !== 0 && meta.volumes.has(view)) meta.removeVolume(meta.volumes.get(view)!);
      break;
    }
    case RecordType.VOLUME_RENAME: {
      need(5);
      const v = volume(buf.readUInt32LE(o));
      need(5 + buf[o + 4]);
      const name = buf.toString('utf8', o + 5, o + 5 + buf[o + 4]);
      const other = meta.byName.get(name);
      if (other && other !== v) bad(`volume name ${name} exists`);
      meta.renameVolume(v, name);
      break;
    }
    case RecordType.VOLUME_REPLACE: {
      need(8);
      const target = volume(buf.readUInt32LE(o));
      const staging = volume(buf.readUInt32LE(o + 4));
      const flags = length >= 12 ? buf.readUInt32LE(o + 8) : 0;
      if (target.chunks !== staging.chunks && (flags & REPLACE_WITH_GENERATIONS) === 0) bad(`volume ${target.name} and ${staging.name} differ in size`);
      if ((flags & REPLACE_WITH_GENERATIONS) !== 0) target.takeAllFrom(staging);
      else target.takeContentFrom(staging);
      meta.removeVolume(staging);
      break;
    }
    case RecordType.VOLUME_ORIGIN: {
      need(21);
      const v = volume(buf.readUInt32LE(o));
      need(21 + buf[o + 20]);
      v.origin = { uuid: bytesToUuid(buf, o + 4), name: buf.toString('utf8', o + 21, o + 21 + buf[o + 20]) };
      break;
    }
    case RecordType.BACKUP_CHAIN: {
      need(28);
      volume(buf.readUInt32LE(o)).chain = readBackupChain(buf, o + 4);
      const view = buf.readUInt32LE(o + 24);
      if (view !== 0 && meta.volumes.has(view)) meta.removeVolume(meta.volumes.get(view)!);
      break;
    }
    default:
      bad('unknown record type');
  }
}
