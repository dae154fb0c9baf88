/**
 * One client connection: handshake, then transmission, then teardown and release of the export.
 * Owns the per-connection logger, statistics and the error handlers of its streams.
 */
import type tls from 'node:tls';
import type { Logger } from 'pino';
import type { BufferPool } from './buffer-pool.js';
import { ChannelClosedError, type Channel } from './channel.js';
import type { ExportProvider } from './export.js';
import { negotiate, type NegotiatedExport } from './handshake.js';
import { Transmission, type TransmissionStats } from './transmission.js';

export interface ConnectionConfig {
  provider: ExportProvider;
  defaultExport: string | undefined;
  tls: { context: tls.SecureContext; required: boolean } | undefined;
  maxPayload: number;
  maxInFlightBytes: number;
  handshakeTimeoutMs: number;
  pool: BufferPool;
  isShuttingDown(): boolean;
}

/** How long a closing connection may take to flush its last bytes before it is destroyed. */
const END_GRACE_MS = 5000;

/** Socket errors that only mean "the client went away". */
const DISCONNECT_CODES = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'ERR_STREAM_DESTROYED', 'ERR_STREAM_PREMATURE_CLOSE']);

export class NbdConnection {
  readonly since = new Date().toISOString();
  readonly stats: TransmissionStats = { requests: 0, bytesRead: 0, bytesWritten: 0 };
  exportName: string | null = null;
  private readonly log: Logger;
  private transmission: Transmission | null = null;
  private shuttingDown = false;

  constructor(
    readonly id: number,
    readonly remote: string,
    private readonly channel: Channel,
    private readonly config: ConnectionConfig,
    logger: Logger,
  ) {
    this.log = logger.child({ conn: id, remote });
    channel.input.on('error', this.onStreamError);
    if ((channel.output as unknown) !== channel.input) channel.output.on('error', this.onStreamError);
  }

  get tls(): boolean {
    return this.channel.tls;
  }

  /** Serves the client until the connection is closed; never rejects. */
  async run(): Promise<void> {
    this.log.info('client connected');
    let session: NegotiatedExport | null = null;
    const timer = setTimeout(this.onHandshakeTimeout, this.config.handshakeTimeoutMs);
    try {
      session = await negotiate(this.channel, {
        provider: this.config.provider,
        defaultExport: this.config.defaultExport,
        tls: this.config.tls,
        maxPayload: this.config.maxPayload,
        logger: this.log,
        isShuttingDown: () => this.shuttingDown || this.config.isShuttingDown(),
        onTlsUpgrade: (socket) => socket.on('error', this.onStreamError),
      });
    } catch (err) {
      if (err instanceof ChannelClosedError) this.log.info({ why: err.message }, 'client left during the handshake');
      else this.log.warn({ err }, 'handshake failed');
    } finally {
      clearTimeout(timer);
    }

    if (session === null) {
      await this.endChannel();
      this.log.info('client disconnected');
      return;
    }
    if (this.shuttingDown) {
      this.release(session);
      await this.endChannel();
      return;
    }

    this.exportName = session.name;
    this.log.info(
      {
        export: session.name,
        structuredReplies: session.structuredReplies,
        metaContexts: session.metaContexts.map((c) => c.name),
        tls: this.channel.tls,
      },
      'export selected',
    );
    const transmission = new Transmission({
      channel: this.channel,
      session,
      pool: this.config.pool,
      logger: this.log,
      stats: this.stats,
      maxInFlightBytes: this.config.maxInFlightBytes,
    });
    this.transmission = transmission;
    transmission.start();
    await transmission.done;
    this.release(session);
    this.log.info({ ...this.stats }, 'client disconnected');
  }

  /** Server shutdown: finish what is in flight, then close. A connection still haggling is dropped. */
  shutdown(): void {
    this.shuttingDown = true;
    if (this.transmission !== null) this.transmission.shutdown();
    else this.destroyChannel();
  }

  private release(session: NegotiatedExport): void {
    try {
      session.handle.release();
    } catch (err) {
      this.log.error({ err }, 'export release failed');
    }
  }

  /** Ends the output gracefully (so a last option reply still arrives), then closes both directions. */
  private endChannel(): Promise<void> {
    const { input, output } = this.channel;
    return new Promise<void>((resolve) => {
      const finish = (): void => {
        clearTimeout(timer);
        this.destroyChannel();
        resolve();
      };
      const timer = setTimeout(finish, END_GRACE_MS);
      if (output.destroyed || output.writableFinished) {
        finish();
        return;
      }
      output.once('finish', finish);
      output.once('close', finish);
      input.pause();
      try {
        output.end();
      } catch {
        finish();
      }
    });
  }

  private destroyChannel(): void {
    this.channel.input.destroy();
    this.channel.output.destroy();
  }

  private readonly onHandshakeTimeout = (): void => {
    this.log.warn({ timeoutMs: this.config.handshakeTimeoutMs }, 'handshake timed out; closing');
    this.destroyChannel();
  };

  private readonly onStreamError = (err: Error & { code?: string }): void => {
    if (err.code !== undefined && DISCONNECT_CODES.has(err.code)) this.log.debug({ code: err.code }, 'connection error');
    else this.log.warn({ err }, 'connection error');
  };
}
