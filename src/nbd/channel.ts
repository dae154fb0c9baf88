import type net from 'node:net';
import type { Readable, Writable } from 'node:stream';

/**
 * The byte pipe one client is served over: a socket (TCP, Unix, inherited fd), a TLS socket after
 * NBD_OPT_STARTTLS, or a pair of streams (stdin/stdout). `socket` is set when input and output are one
 * net.Socket, which is what TLS needs to take over.
 */
export interface Channel {
  input: Readable;
  output: Writable;
  socket: net.Socket | null;
  tls: boolean;
}

/** Raised when the peer closes or the stream fails while the handshake waits for bytes. */
export class ChannelClosedError extends Error {
  constructor(message = 'connection closed by peer') {
    super(message);
    this.name = 'ChannelClosedError';
  }
}

/**
 * Reads exact byte counts from a stream during the handshake. It uses the stream's paused mode
 * (`read(n)`), so the kernel applies backpressure to a client that floods us, and bytes the client sent
 * ahead stay in the stream's buffer for the next phase (transmission or TLS) after `detach()`.
 */
export class HandshakeReader {
  private waiter: (() => void) | null = null;
  private ended = false;

  constructor(private readonly input: Readable) {
    input.on('readable', this.wake);
    input.on('end', this.onEnd);
    input.on('close', this.onEnd);
    input.on('error', this.onEnd);
    if (input.readableEnded || input.destroyed) this.ended = true;
  }

  /** Exactly `length` bytes, or ChannelClosedError. */
  async read(length: number): Promise<Buffer> {
    if (length === 0) return Buffer.alloc(0);
    for (;;) {
      const buf = this.input.read(length) as Buffer | null;
      if (buf !== null) {
        if (buf.length < length) throw new ChannelClosedError(); // stream ended in the middle
        return buf;
      }
      if (this.ended) throw new ChannelClosedError();
      await this.waitForData();
    }
  }

  /** Consume and drop `length` bytes without holding more than one stream chunk. */
  async skip(length: number): Promise<void> {
    let left = length;
    while (left > 0) {
      const buf = this.input.read() as Buffer | null;
      if (buf === null) {
        if (this.ended) throw new ChannelClosedError();
        await this.waitForData();
        continue;
      }
      if (buf.length > left) {
        this.input.unshift(buf.subarray(left));
        return;
      }
      left -= buf.length;
    }
  }

  /** Stop listening; unread bytes stay buffered in the stream. */
  detach(): void {
    this.input.removeListener('readable', this.wake);
    this.input.removeListener('end', this.onEnd);
    this.input.removeListener('close', this.onEnd);
    this.input.removeListener('error', this.onEnd);
    this.wake();
  }

  private waitForData(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.waiter = resolve;
    });
  }

  private readonly wake = (): void => {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.();
  };

  private readonly onEnd = (): void => {
    this.ended = true;
    this.wake();
  };
}
