/**
 * Optional compression of a stream on its medium (seed 002 【0044】: compress on the way to the backup medium,
 * expand before restoring): `--compress` writes the whole stream (docs/stream-format.md) as one gzip member
 * (RFC 1952, node:zlib), so `zcat` gives back the plain stream. Readers recognise the gzip magic at the start of a
 * medium file and expand it transparently; every check of the stream itself (CRCs, digest, lineage) is unchanged.
 *
 * The compressed size depends on the data, so it is not known in advance: `backup estimate --compress` gives zlib's
 * deflate bound (the stream size plus the worst-case expansion of incompressible data), an upper bound.
 */
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import type { ByteSink, ByteSource } from './io.js';
import { StreamError } from './errors.js';
import { PrefixedSource } from './prefixed-source.js';

/** gzip level: 1 keeps up with a disk on this machine kind while still removing zeros and repetition */
export const GZIP_LEVEL = 1;
const GZIP_MAGIC0 = 0x1f;
const GZIP_MAGIC1 = 0x8b;
/** compressed bytes asked for per read */
const COMPRESSED_READ_BYTES = 1024 * 1024;

export function isGzip(head: Buffer): boolean {
  return head.length >= 2 && head[0] === GZIP_MAGIC0 && head[1] === GZIP_MAGIC1;
}

/** the most a gzip member of `n` bytes of input can take: zlib's deflateBound plus the 18-byte gzip wrapper */
export function gzipBound(n: number): number {
  return n + Math.floor(n / 4096) + Math.floor(n / 16384) + Math.floor(n / 33554432) + 13 + 18;
}

/** Compresses what is written to it into `inner`; `end()` writes the rest and the gzip trailer. */
export class GzipSink implements ByteSink {
  private readonly gzip = zlib.createGzip({ level: GZIP_LEVEL });
  private readonly pump: Promise<void>;
  private pumpError: unknown = null;
  /** compressed bytes handed to the inner sink */
  compressedBytes = 0;

  constructor(inner: ByteSink) {
    this.pump = (async () => {
      for await (const chunk of this.gzip as AsyncIterable<Buffer>) {
        await inner.write(chunk);
        this.compressedBytes += chunk.length;
      }
    })().catch((err) => {
      this.pumpError = err;
      this.gzip.destroy();
    });
  }

  write(data: Buffer): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      // the callback comes once zlib has taken the input: the caller may then reuse `data`
      this.gzip.write(data, (err) => (err ? reject(this.pumpError ?? err) : resolve()));
    }).then(() => {
      if (this.pumpError) throw this.pumpError;
    });
  }

  async end(): Promise<void> {
    this.gzip.end();
    await this.pump;
    if (this.pumpError) throw this.pumpError;
  }
}

/** A ByteSource whose bytes arrive in pieces of any size (a medium reader, a restore device). */
export interface ChunkedSource extends ByteSource {
  /** up to `max` bytes, at least one; null at the end */
  readAvailable(max: number): Promise<Buffer | null>;
}

/**
 * Looks at the first bytes of `source`: a gzip member is expanded on the fly, anything else is passed through
 * unchanged. `compressed` says which.
 */
export async function openMaybeCompressed(source: ChunkedSource): Promise<{ source: ByteSource; compressed: boolean }> {
  const first = await source.readAvailable(4096);
  if (first === null) return { source: new PrefixedSource(Buffer.alloc(0), source), compressed: false };
  const head = Buffer.from(first);
  if (!isGzip(head)) return { source: new PrefixedSource(head, source), compressed: false };
  return { source: new GunzipSource(head, source), compressed: true };
}

/** Expands a gzip member read from `source` (its first bytes already read: `head`). */
class GunzipSource implements ByteSource {
  private readonly output: AsyncIterator<Buffer>;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private ended = false;
  private compressedIn = 0;

  constructor(head: Buffer, source: ChunkedSource) {
    const self = this;
    const compressed = Readable.from(
      (async function* () {
        self.compressedIn += head.length;
        yield head;
        for (;;) {
          const b = await source.readAvailable(COMPRESSED_READ_BYTES);
          if (b === null) return;
          self.compressedIn += b.length;
          yield Buffer.from(b);
        }
      })(),
    );
    const gunzip = zlib.createGunzip();
    compressed.on('error', (err) => gunzip.destroy(err));
    compressed.pipe(gunzip);
    this.output = (gunzip as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  }

  async readExact(length: number): Promise<Buffer> {
    while (this.pendingBytes < length && !this.ended) {
      let next: IteratorResult<Buffer>;
      try {
        next = await this.output.next();
      } catch (err) {
        const e = err as Error & { code?: string; syscall?: string };
        if (e.syscall) throw err;
        throw new StreamError('ECORRUPT', `the compressed stream is damaged (gzip, after ${this.compressedIn} compressed bytes): ${e.message}`);
      }
      if (next.done) this.ended = true;
      else {
        this.pending.push(next.value);
        this.pendingBytes += next.value.length;
      }
    }
    if (this.pendingBytes < length) {
      throw Object.assign(new Error(`the compressed stream ends after ${this.pendingBytes} more bytes`), { bytesRead: this.pendingBytes });
    }
    const all = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending);
    const out = all.subarray(0, length);
    const rest = all.subarray(length);
    this.pending = rest.length > 0 ? [rest] : [];
    this.pendingBytes = rest.length;
    return out;
  }
}
