/**
 * Test harness for src/nbd: an in-process NbdServer over memory exports on a Unix socket in a temp dir
 * and on 127.0.0.1 (port 0), a way to run the real client tools with timeouts, and a raw protocol client
 * for malformed-input tests.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/server.js';
import {
  NBD_CLIENT_FLAGS_SIZE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_MAGIC,
  NBD_NEW_VERSION,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REP_META_CONTEXT,
  NBD_REPLY_FLAG_DONE,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  isOptionReplyError,
} from '../../src/nbd/constants.js';
import { MemoryExport, MemoryProvider, type MemoryExportOptions } from './memory-export.js';

export const MiB = 1024 * 1024;

/** A logger for tests: silent unless NBD_TEST_LOG names a level (then to stderr). */
export function testLogger(): pino.Logger {
  const level = process.env.NBD_TEST_LOG;
  return level ? pino({ level }, pino.destination(2)) : pino({ level: 'silent' });
}

export interface TestServer {
  server: NbdServer;
  provider: MemoryProvider;
  dir: string;
  socketPath: string;
  port: number;
  /** nbd+unix URI of an export */
  unixUri(name: string): string;
  /** nbd:// URI of an export over TCP */
  tcpUri(name: string): string;
  close(): Promise<void>;
}

export async function startServer(
  exports: MemoryExportOptions[],
  options: Partial<Omit<NbdServerOptions, 'provider' | 'logger'>> = {},
): Promise<TestServer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinvault-nbd-'));
  const provider = new MemoryProvider(exports.map((e) => new MemoryExport(e)));
  const server = new NbdServer({ provider, logger: testLogger(), ...options });
  const socketPath = path.join(dir, 'nbd.sock');
  await server.listenUnix(socketPath);
  const { port } = await server.listenTcp('127.0.0.1', 0);
  return {
    server,
    provider,
    dir,
    socketPath,
    port,
    unixUri: (name) => `nbd+unix:///${name}?socket=${socketPath}`,
    tcpUri: (name) => `nbd://127.0.0.1:${port}/${name}`,
    close: async () => {
      await server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program with a timeout; never rejects for a non-zero exit (see `code`). */
export function run(file: string, args: string[], timeoutMs = 30_000, env?: NodeJS.ProcessEnv): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 64 * MiB, env: env ?? process.env }, (err, stdout, stderr) => {
      if (err !== null && typeof err.code !== 'number') {
        reject(Object.assign(err, { stdout, stderr }));
        return;
      }
      resolve({ code: err === null ? 0 : (err.code as number), stdout, stderr });
    });
  });
}

/** Like run() but throws with stderr when the exit code is not 0. */
export async function runOk(file: string, args: string[], timeoutMs = 30_000): Promise<string> {
  const result = await run(file, args, timeoutMs);
  if (result.code !== 0) throw new Error(`${file} ${args.join(' ')} exited ${result.code}: ${result.stderr}${result.stdout}`);
  return result.stdout;
}

/** Deterministic pseudo-random bytes. */
export function pattern(length: number, seed: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf[i] = x & 0xff;
  }
  return buf;
}

/* ---------------------------------------------------------------------------------------------------- */

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface SimpleReply {
  kind: 'simple';
  error: number;
  cookie: bigint;
  data: Buffer;
}

export interface Chunk {
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

export interface RequestSpec {
  type: number;
  flags?: number;
  cookie?: bigint;
  offset?: number | bigint;
  length?: number;
  data?: Buffer;
}

/** A hand-driven NBD client over a raw socket, for feeding the server exactly the bytes a test wants. */
export class RawClient {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: (() => void) | null = null;
  closed = false;
  readonly closedPromise: Promise<void>;

  constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      this.wake();
    });
    socket.on('error', () => undefined);
    this.closedPromise = new Promise((resolve) => {
      const done = (): void => {
        this.closed = true;
        this.wake();
        resolve();
      };
      socket.on('end', done);
      socket.on('close', done);
    });
  }

  static connect(target: string | { host: string; port: number }): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = typeof target === 'string' ? net.connect({ path: target }) : net.connect(target);
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.removeListener('error', reject);
        resolve(new RawClient(socket));
      });
    });
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** Exactly n bytes; rejects on close or after timeoutMs. */
  async read(n: number, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered < n) {
      if (this.closed) throw new Error(`connection closed (wanted ${n} bytes, have ${this.buffered})`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout waiting for ${n} bytes (have ${this.buffered})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    const all = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    const out = Buffer.from(all.subarray(0, n));
    this.chunks.length = 0;
    if (all.length > n) this.chunks.push(all.subarray(n));
    this.buffered -= n;
    return out;
  }

  /** Resolves true if the server closes the connection within timeoutMs. */
  async closedWithin(timeoutMs = 5000): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    const result = await Promise.race([this.closedPromise.then(() => true), timeout]);
    clearTimeout(timer);
    return result;
  }

  write(buf: Buffer): void {
    this.socket.write(buf);
  }

  destroy(): void {
    this.socket.destroy();
  }

  /* ---- handshake ---- */

  async greeting(): Promise<number> {
    const g = await this.read(18);
    if (g.readBigUInt64BE(0) !== NBD_MAGIC || g.readBigUInt64BE(8) !== NBD_NEW_VERSION) throw new Error('bad greeting');
    return g.readUInt16BE(16);
  }

  sendClientFlags(flags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES): void {
    const b = Buffer.alloc(NBD_CLIENT_FLAGS_SIZE);
    b.writeUInt32BE(flags >>> 0);
    this.write(b);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), lengthOverride?: number): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(NBD_NEW_VERSION, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(lengthOverride ?? data.length, 12);
    this.write(Buffer.concat([h, data]));
  }

  async readOptionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== NBD_REP_MAGIC) throw new Error('bad option reply magic');
    const length = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(length) };
  }

  /** Sends an option and collects replies up to the final ACK or error. */
  async option(option: number, data?: Buffer): Promise<OptionReply[]> {
    this.sendOption(option, data);
    const replies: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      replies.push(r);
      if (r.type === NBD_REP_ACK || isOptionReplyError(r.type)) return replies;
    }
  }

  /** Greeting, flags, optional structured replies and meta contexts, then GO. */
  async negotiate(
    exportName: string,
    opts: { structured?: boolean; metaContexts?: string[] } = {},
  ): Promise<{ size: bigint; flags: number; contexts: Map<number, string>; blockSize?: [number, number, number] }> {
    await this.greeting();
    this.sendClientFlags();
    const contexts = new Map<number, string>();
    if (opts.structured) {
      const [r] = await this.option(NBD_OPT_STRUCTURED_REPLY);
      if (r?.type !== NBD_REP_ACK) throw new Error('structured replies refused');
      if (opts.metaContexts) {
        const replies = await this.option(NBD_OPT_SET_META_CONTEXT, metaContextPayload(exportName, opts.metaContexts));
        for (const m of replies) {
          if (m.type === NBD_REP_META_CONTEXT) contexts.set(m.data.readUInt32BE(0), m.data.toString('utf8', 4));
        }
      }
    }
    const replies = await this.option(NBD_OPT_GO, infoPayload(exportName, [NBD_INFO_BLOCK_SIZE]));
    const last = replies[replies.length - 1] as OptionReply;
    if (last.type !== NBD_REP_ACK) throw Object.assign(new Error(`GO failed: 0x${last.type.toString(16)}`), { reply: last.type });
    let size = 0n;
    let flags = 0;
    let blockSize: [number, number, number] | undefined;
    for (const r of replies) {
      if (r.type !== NBD_REP_INFO) continue;
      const info = r.data.readUInt16BE(0);
      if (info === NBD_INFO_EXPORT) {
        size = r.data.readBigUInt64BE(2);
        flags = r.data.readUInt16BE(10);
      } else if (info === NBD_INFO_BLOCK_SIZE) {
        blockSize = [r.data.readUInt32BE(2), r.data.readUInt32BE(6), r.data.readUInt32BE(10)];
      }
    }
    return { size, flags, contexts, blockSize };
  }

  /* ---- transmission ---- */

  sendRequest(spec: RequestSpec): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(spec.flags ?? 0, 4);
    h.writeUInt16BE(spec.type, 6);
    h.writeBigUInt64BE(spec.cookie ?? 1n, 8);
    h.writeBigUInt64BE(BigInt(spec.offset ?? 0), 16);
    h.writeUInt32BE(spec.length ?? spec.data?.length ?? 0, 24);
    this.write(spec.data ? Buffer.concat([h, spec.data]) : h);
  }

  /** A simple reply; `dataLength` bytes follow when it is a successful read. */
  async readSimpleReply(dataLength = 0): Promise<SimpleReply> {
    const h = await this.read(16);
    if (h.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC) throw new Error(`not a simple reply: 0x${h.readUInt32BE(0).toString(16)}`);
    const error = h.readUInt32BE(4);
    const data = error === 0 && dataLength > 0 ? await this.read(dataLength) : Buffer.alloc(0);
    return { kind: 'simple', error, cookie: h.readBigUInt64BE(8), data };
  }

  async readChunk(): Promise<Chunk> {
    const h = await this.read(20);
    if (h.readUInt32BE(0) !== NBD_STRUCTURED_REPLY_MAGIC) throw new Error(`not a structured chunk: 0x${h.readUInt32BE(0).toString(16)}`);
    const length = h.readUInt32BE(16);
    return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), payload: await this.read(length) };
  }

  /** Reads one reply of either kind (structured: all chunks up to DONE, for one cookie). */
  async readAnyReply(): Promise<{ cookie: bigint; error: number; chunks: Chunk[] }> {
    const magic = (await this.peek(4)).readUInt32BE(0);
    if (magic === NBD_SIMPLE_REPLY_MAGIC) {
      const r = await this.readSimpleReply();
      return { cookie: r.cookie, error: r.error, chunks: [] };
    }
    const chunks: Chunk[] = [];
    for (;;) {
      const c = await this.readChunk();
      chunks.push(c);
      if (c.flags & NBD_REPLY_FLAG_DONE) break;
    }
    const err = chunks.find((c) => c.type & 0x8000);
    return { cookie: (chunks[0] as Chunk).cookie, error: err ? err.payload.readUInt32BE(0) : 0, chunks };
  }

  private async peek(n: number): Promise<Buffer> {
    const b = await this.read(n);
    this.chunks.unshift(b);
    this.buffered += n;
    return b;
  }
}

export function infoPayload(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((info, i) => b.writeUInt16BE(info, 4 + n.length + 2 + 2 * i));
  return b;
}

export function metaContextPayload(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.from(name, 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(n.length);
  parts.push(head, n);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length);
  parts.push(count);
  for (const q of queries) {
    const qb = Buffer.from(q, 'utf8');
    const ql = Buffer.alloc(4);
    ql.writeUInt32BE(qb.length);
    parts.push(ql, qb);
  }
  return Buffer.concat(parts);
}
