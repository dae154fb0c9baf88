/** Encoders for transmission-phase reply headers (simple replies and structured reply chunks). */
import {
  NBD_BLOCK_DESCRIPTOR_SIZE,
  NBD_BLOCK_STATUS_PREFIX_SIZE,
  NBD_ERROR_PREFIX_SIZE,
  NBD_MAX_STRING,
  NBD_OFFSET_DATA_PREFIX_SIZE,
  NBD_OFFSET_HOLE_SIZE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_SIMPLE_REPLY_SIZE,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_SIZE,
} from './constants.js';
import type { Extent } from './export.js';
import type { NbdRequest } from './request-parser.js';

/** Bytes of one OFFSET_DATA chunk before its data. */
export const OFFSET_DATA_HEADER_SIZE = NBD_STRUCTURED_REPLY_SIZE + NBD_OFFSET_DATA_PREFIX_SIZE;
/** Bytes of one whole OFFSET_HOLE chunk. */
export const OFFSET_HOLE_CHUNK_SIZE = NBD_STRUCTURED_REPLY_SIZE + NBD_OFFSET_HOLE_SIZE;

function writeUInt64BE(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / 2 ** 32), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

/** A 16-byte simple reply header. */
export function simpleReply(req: NbdRequest, errno: number): Buffer {
  const buf = Buffer.allocUnsafe(NBD_SIMPLE_REPLY_SIZE);
  buf.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  buf.writeUInt32BE(errno, 4);
  buf.writeUInt32BE(req.cookieHi, 8);
  buf.writeUInt32BE(req.cookieLo, 12);
  return buf;
}

/** Writes a 20-byte structured chunk header at `at`. */
export function writeChunkHeader(buf: Buffer, at: number, req: NbdRequest, flags: number, type: number, length: number): void {
  buf.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  buf.writeUInt32BE(req.cookieHi, at + 8);
  buf.writeUInt32BE(req.cookieLo, at + 12);
  buf.writeUInt32BE(length, at + 16);
}

/** Header of an OFFSET_DATA chunk carrying `dataLength` bytes from export offset `offset`. */
export function writeOffsetDataHeader(buf: Buffer, at: number, req: NbdRequest, flags: number, offset: number, dataLength: number): void {
  writeChunkHeader(buf, at, req, flags, NBD_REPLY_TYPE_OFFSET_DATA, NBD_OFFSET_DATA_PREFIX_SIZE + dataLength);
  writeUInt64BE(buf, offset, at + NBD_STRUCTURED_REPLY_SIZE);
}

/** A whole OFFSET_HOLE chunk. */
export function writeOffsetHole(buf: Buffer, at: number, req: NbdRequest, flags: number, offset: number, length: number): void {
  writeChunkHeader(buf, at, req, flags, NBD_REPLY_TYPE_OFFSET_HOLE, NBD_OFFSET_HOLE_SIZE);
  writeUInt64BE(buf, offset, at + NBD_STRUCTURED_REPLY_SIZE);
  buf.writeUInt32BE(length, at + NBD_STRUCTURED_REPLY_SIZE + 8);
}

/** A whole NBD_REPLY_TYPE_ERROR chunk with a human-readable message. */
export function errorChunk(req: NbdRequest, flags: number, errno: number, message: string): Buffer {
  let text = Buffer.from(message, 'utf8');
  if (text.length > NBD_MAX_STRING) text = text.subarray(0, NBD_MAX_STRING);
  const buf = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_SIZE + NBD_ERROR_PREFIX_SIZE + text.length);
  writeChunkHeader(buf, 0, req, flags, NBD_REPLY_TYPE_ERROR, NBD_ERROR_PREFIX_SIZE + text.length);
  buf.writeUInt32BE(errno, NBD_STRUCTURED_REPLY_SIZE);
  buf.writeUInt16BE(text.length, NBD_STRUCTURED_REPLY_SIZE + 4);
  text.copy(buf, NBD_STRUCTURED_REPLY_SIZE + NBD_ERROR_PREFIX_SIZE);
  return buf;
}

/** Size of a BLOCK_STATUS chunk with `extents` descriptors. */
export function blockStatusChunkSize(extents: number): number {
  return NBD_STRUCTURED_REPLY_SIZE + NBD_BLOCK_STATUS_PREFIX_SIZE + extents * NBD_BLOCK_DESCRIPTOR_SIZE;
}

/** Writes one BLOCK_STATUS chunk at `at`; returns the offset after it. */
export function writeBlockStatusChunk(buf: Buffer, at: number, req: NbdRequest, flags: number, contextId: number, extents: readonly Extent[]): number {
  writeChunkHeader(buf, at, req, flags, NBD_REPLY_TYPE_BLOCK_STATUS, NBD_BLOCK_STATUS_PREFIX_SIZE + extents.length * NBD_BLOCK_DESCRIPTOR_SIZE);
  let pos = at + NBD_STRUCTURED_REPLY_SIZE;
  buf.writeUInt32BE(contextId, pos);
  pos += NBD_BLOCK_STATUS_PREFIX_SIZE;
  for (const extent of extents) {
    buf.writeUInt32BE(extent.length, pos);
    buf.writeUInt32BE(extent.flags >>> 0, pos + 4);
    pos += NBD_BLOCK_DESCRIPTOR_SIZE;
  }
  return pos;
}
