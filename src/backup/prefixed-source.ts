import type { ByteSource } from './io.js';

/**
 * A ByteSource that first hands out bytes already read (a header a caller looked at, the first bytes a reader
 * peeked at), then the rest of `rest`. A truncation error of `rest` counts the prefix in its `bytesRead`.
 */
export class PrefixedSource implements ByteSource {
  constructor(
    private prefix: Buffer,
    private readonly rest: ByteSource,
  ) {}

  async readExact(length: number): Promise<Buffer> {
    const p = this.prefix;
    if (p.length === 0) return this.rest.readExact(length);
    if (length <= p.length) {
      this.prefix = p.subarray(length);
      return p.subarray(0, length);
    }
    this.prefix = Buffer.alloc(0);
    try {
      return Buffer.concat([p, await this.rest.readExact(length - p.length)]);
    } catch (err) {
      const e = err as { bytesRead?: unknown };
      if (typeof e.bytesRead === 'number') e.bytesRead += p.length;
      throw err;
    }
  }
}
