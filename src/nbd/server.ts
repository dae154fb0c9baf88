/**
 * NBD listeners: TCP, Unix socket, inherited fds (systemd socket activation) and stdio. Each accepted
 * client becomes an NbdConnection; the server tracks them for `connections()` and an orderly `close()`.
 */
import fs from 'node:fs/promises';
import net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { BufferPool } from './buffer-pool.js';
import type { Channel } from './channel.js';
import { NbdConnection } from './connection.js';
import { NBD_MAX_PAYLOAD_DEFAULT } from './constants.js';
import type { ExportProvider } from './export.js';

export interface NbdServerOptions {
  provider: ExportProvider;
  logger: Logger;
  /** STARTTLS support; with `required`, nothing but STARTTLS and ABORT is answered before TLS */
  tls?: { cert: Buffer | string; key: Buffer | string; required: boolean };
  /** export served when the client asks for the empty name "" */
  defaultExport?: string;
  /** per connection: write payloads held + read replies not yet written, above which reading pauses (64 MiB) */
  maxInFlightBytes?: number;
  /** a client that has not finished the handshake after this long is dropped (60 s) */
  handshakeTimeoutMs?: number;
}

export interface ConnectionInfo {
  id: number;
  remote: string;
  export: string | null;
  since: string;
  tls: boolean;
  requests: number;
  bytesRead: number;
  bytesWritten: number;
}

/** A pair of one-way streams, e.g. `{ readable: process.stdin, writable: process.stdout }`. */
export interface StreamPair {
  readable: Readable;
  writable: Writable;
}

const DEFAULT_MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024;
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 60_000;
/** idle read buffers the server keeps for reuse, across all its connections */
const POOL_RETAINED_BYTES = 64 * 1024 * 1024;
/** how long a stale-socket probe waits for an answer before assuming a live (busy) server */
const PROBE_TIMEOUT_MS = 1000;
/** first fd passed by systemd socket activation (SD_LISTEN_FDS_START) */
const SD_LISTEN_FDS_START = 3;

/**
 * The fds passed by systemd socket activation (sd_listen_fds semantics): none unless LISTEN_PID names this
 * process and LISTEN_FDS is a positive count; then LISTEN_FDS fds starting at 3.
 */
export function systemdListenFds(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): number[] {
  const listenPid = env.LISTEN_PID;
  const listenFds = env.LISTEN_FDS;
  if (listenPid === undefined || listenFds === undefined) return [];
  if (!/^[0-9]+$/.test(listenPid) || Number(listenPid) !== pid) return [];
  if (!/^[0-9]+$/.test(listenFds)) return [];
  const count = Number(listenFds);
  if (!Number.isSafeInteger(count) || count <= 0) return [];
  return Array.from({ length: count }, (_, i) => SD_LISTEN_FDS_START + i);
}

function isStreamPair(stream: (Readable & Writable) | StreamPair): stream is StreamPair {
  const candidate = stream as Partial<StreamPair>;
  return typeof candidate.readable === 'object' && candidate.readable !== null;
}

function remoteOf(socket: net.Socket): string {
  const address = socket.remoteAddress;
  if (address === undefined) return 'unix';
  return socket.remoteFamily === 'IPv6' ? `[${address}]:${socket.remotePort}` : `${address}:${socket.remotePort}`;
}

/** Resolves true when something accepts a connection on the Unix socket at `path`. */
function unixSocketAnswers(path: string): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const probe = net.connect({ path });
    const done = (alive: boolean): void => {
      clearTimeout(timer);
      probe.destroy();
      resolve(alive);
    };
    const timer = setTimeout(() => done(true), PROBE_TIMEOUT_MS);
    probe.once('connect', () => done(true));
    probe.once('error', () => done(false));
  });
}

export class NbdServer {
  private readonly provider: ExportProvider;
  private readonly log: Logger;
  private readonly tls: { context: tls.SecureContext; required: boolean } | undefined;
  private readonly defaultExport: string | undefined;
  private readonly maxInFlightBytes: number;
  private readonly handshakeTimeoutMs: number;
  private readonly pool = new BufferPool(NBD_MAX_PAYLOAD_DEFAULT, POOL_RETAINED_BYTES);
  private readonly listeners = new Set<net.Server>();
  private readonly unixPaths = new Set<string>();
  private readonly live = new Map<number, { conn: NbdConnection; done: Promise<void> }>();
  private nextId = 1;
  private closing = false;

  constructor(options: NbdServerOptions) {
    this.provider = options.provider;
    this.log = options.logger;
    this.defaultExport = options.defaultExport;
    this.maxInFlightBytes = options.maxInFlightBytes ?? DEFAULT_MAX_IN_FLIGHT_BYTES;
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    if (!(this.maxInFlightBytes > 0)) throw new RangeError('maxInFlightBytes must be positive');
    if (options.tls !== undefined) {
      this.tls = {
        context: tls.createSecureContext({ cert: options.tls.cert, key: options.tls.key, minVersion: 'TLSv1.2' }),
        required: options.tls.required,
      };
    }
  }

  /** Listens on TCP; port 0 picks a free port (see the returned address). */
  async listenTcp(host: string, port: number): Promise<net.AddressInfo> {
    const server = this.createListener();
    await this.listen(server, { host, port });
    const address = server.address() as net.AddressInfo;
    this.log.info({ address: address.address, port: address.port }, 'listening on TCP');
    return address;
  }

  /**
   * Listens on a Unix socket. A socket file left by a dead server is replaced; a live one is an error
   * ("address in use"); the file is removed again on close().
   */
  async listenUnix(path: string): Promise<void> {
    let server = this.createListener();
    try {
      await this.listen(server, { path });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
      const stat = await fs.lstat(path);
      if (!stat.isSocket()) throw Object.assign(new Error(`${path} exists and is not a socket`), { code: 'EEXIST' });
      if (await unixSocketAnswers(path)) {
        throw Object.assign(new Error(`address in use: a server is already listening on ${path}`), { code: 'EADDRINUSE' });
      }
      this.log.info({ path }, 'replacing a stale socket file');
      await fs.unlink(path);
      server = this.createListener();
      await this.listen(server, { path });
    }
    this.unixPaths.add(path);
    this.log.info({ path }, 'listening on Unix socket');
  }

  /** Listens on an already-listening socket fd (systemd socket activation; see systemdListenFds). */
  async listenFd(fd: number): Promise<void> {
    const server = this.createListener();
    await this.listen(server, { fd });
    this.log.info({ fd }, 'listening on inherited fd');
  }

  /**
   * Serves one client over an existing stream (a connected socket) or a pair of streams (stdin/stdout,
   * like `nbdkit -s`). Resolves when that client is gone.
   */
  serveStream(stream: (Readable & Writable) | StreamPair): Promise<void> {
    const channel: Channel = isStreamPair(stream)
      ? { input: stream.readable, output: stream.writable, socket: null, tls: false }
      : { input: stream, output: stream, socket: stream instanceof net.Socket ? stream : null, tls: false };
    return this.accept(channel, 'stdio');
  }

  connections(): ConnectionInfo[] {
    return [...this.live.values()].map(({ conn }) => ({
      id: conn.id,
      remote: conn.remote,
      export: conn.exportName,
      since: conn.since,
      tls: conn.tls,
      requests: conn.stats.requests,
      bytesRead: conn.stats.bytesRead,
      bytesWritten: conn.stats.bytesWritten,
    }));
  }

  /**
   * Closes every connection serving `exportName` (in-flight requests finish and are answered first);
   * resolves when they are gone. Used before an export is deleted or resized.
   */
  async disconnectExport(exportName: string): Promise<void> {
    const matching = [...this.live.values()].filter(({ conn }) => conn.exportName === exportName);
    for (const { conn } of matching) conn.shutdown();
    await Promise.all(matching.map(({ done }) => done));
  }

  /** Stops listening, lets in-flight requests finish and answers them, then closes every connection. */
  async close(): Promise<void> {
    this.closing = true;
    const listenersClosed = [...this.listeners].map(
      (server) => new Promise<void>((resolve) => server.close(() => resolve())),
    );
    this.listeners.clear();
    const conns = [...this.live.values()];
    for (const { conn } of conns) conn.shutdown();
    await Promise.all(conns.map(({ done }) => done));
    await Promise.all(listenersClosed);
    for (const path of this.unixPaths) {
      try {
        const stat = await fs.lstat(path);
        if (stat.isSocket()) await fs.unlink(path);
      } catch {
        // already gone
      }
    }
    this.unixPaths.clear();
    this.log.info('NBD server closed');
  }

  private createListener(): net.Server {
    return net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
      const channel: Channel = { input: socket, output: socket, socket, tls: false };
      void this.accept(channel, remoteOf(socket));
    });
  }

  private listen(server: net.Server, address: net.ListenOptions | { fd: number }): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      server.once('error', onError);
      server.listen(address, () => {
        server.removeListener('error', onError);
        server.on('error', (err) => this.log.error({ err }, 'listener error'));
        if (this.closing) {
          server.close();
          reject(new Error('server is closing'));
          return;
        }
        this.listeners.add(server);
        resolve();
      });
    });
  }

  private accept(channel: Channel, remote: string): Promise<void> {
    if (this.closing) {
      channel.input.on('error', () => undefined);
      channel.output.on('error', () => undefined);
      channel.input.destroy();
      channel.output.destroy();
      return Promise.resolve();
    }
    const id = this.nextId++;
    const conn = new NbdConnection(
      id,
      remote,
      channel,
      {
        provider: this.provider,
        defaultExport: this.defaultExport,
        tls: this.tls,
        maxPayload: NBD_MAX_PAYLOAD_DEFAULT,
        maxInFlightBytes: this.maxInFlightBytes,
        handshakeTimeoutMs: this.handshakeTimeoutMs,
        pool: this.pool,
        isShuttingDown: () => this.closing,
      },
      this.log,
    );
    const done = conn
      .run()
      .catch((err: unknown) => this.log.error({ err, conn: id }, 'connection failed'))
      .finally(() => this.live.delete(id));
    this.live.set(id, { conn, done });
    return done;
  }
}
