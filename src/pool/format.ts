/**
 * On-disk constants of the pool, format version 1. docs/pool-format.md is the specification; change both together.
 */

export const POOL_FORMAT_NAME = 'thinvault-pool';
export const POOL_FORMAT_VERSION = 1;

export const POOL_JSON = 'pool.json';
export const DATA_FILE = 'data';
export const LOCK_FILE = 'lock';
export const JOURNAL_PREFIX = 'journal.';
export const CHECKPOINT_PREFIX = 'checkpoint.';
export const TMP_SUFFIX = '.tmp';

export const MIN_CHUNK_SIZE = 4096;
export const MAX_CHUNK_SIZE = 1024 * 1024;
export const DEFAULT_CHUNK_SIZE = 64 * 1024;

/** chunk numbers are u32 on disk; 0xffffffff is kept free so that "physical + 1" fits a u32 */
export const MAX_CHUNKS = 0xffff_ffff - 1;
export const MAX_GENERATION = 0xffff_ffff;

// ---- journal ----
export const JOURNAL_MAGIC = 0x4c4a5654; // "TVJL"
export const JOURNAL_VERSION = 1;
export const JOURNAL_HEADER_SIZE = 64;
export const RECORD_MAGIC = 0x524a5654; // "TVJR"
/** magic u32, length u32, crc u32 */
export const RECORD_FRAME_SIZE = 12;
/** seq u64, type u8 */
export const RECORD_BODY_HEADER = 9;
export const RECORD_MAX_LENGTH = 4096;

export const RecordType = {
  VOLUME_CREATE: 1,
  VOLUME_DELETE: 2,
  VOLUME_RESIZE: 3,
  MAP: 4,
  UNMAP: 5,
  MARK: 6,
  GEN_SET: 7,
  GEN_RESET: 8,
  VOLUME_CLONE: 9,
  VOLUME_FLAGS: 10,
  GEN_REBASE: 11,
  VOLUME_RENAME: 12,
  VOLUME_REPLACE: 13,
  VOLUME_ORIGIN: 14,
  GEN_FOLD: 15,
  BACKUP_CHAIN: 16,
} as const;
export type RecordTypeCode = (typeof RecordType)[keyof typeof RecordType];

// ---- checkpoint ----
export const CHECKPOINT_MAGIC = 0x4b435654; // "TVCK"
export const CHECKPOINT_VERSION = 3;
/** checkpoints before backup chains (no chain field per volume) are still read */
export const CHECKPOINT_VERSION_V2 = 2;
/** checkpoints of this version (before snapshots: no flags, identities or shared pages) are still read */
export const CHECKPOINT_VERSION_V1 = 1;
export const CHECKPOINT_HEADER_SIZE = 64;
export const CHECKPOINT_FLAG_CLEAN = 1;

// ---- paged tables (in memory and in checkpoints) ----
export const PAGE_SHIFT = 10;
export const PAGE_ENTRIES = 1 << PAGE_SHIFT;
export const PAGE_MASK = PAGE_ENTRIES - 1;

export function journalName(epoch: number): string {
  return `${JOURNAL_PREFIX}${epoch}`;
}
export function checkpointName(epoch: number): string {
  return `${CHECKPOINT_PREFIX}${epoch}`;
}

/** u64 little-endian helpers for values below 2^53 (no BigInt on the hot path) */
export function writeU64(buf: Buffer, value: number, offset: number): void {
  buf.writeUInt32LE(value % 0x1_0000_0000, offset);
  buf.writeUInt32LE(Math.floor(value / 0x1_0000_0000), offset + 4);
}
export function readU64(buf: Buffer, offset: number): number {
  const hi = buf.readUInt32LE(offset + 4);
  if (hi >= 0x20_0000) return Number.NaN; // beyond 2^53: never written by us
  return hi * 0x1_0000_0000 + buf.readUInt32LE(offset);
}

/** 16-byte binary form of an RFC 4122 UUID string and back */
export function uuidToBytes(uuid: string): Buffer {
  const hex = uuid.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`invalid uuid ${uuid}`);
  return Buffer.from(hex, 'hex');
}
export function bytesToUuid(buf: Buffer, offset = 0): string {
  const h = buf.toString('hex', offset, offset + 16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
