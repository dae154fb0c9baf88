/**
 * The composition root of `thinvault serve`: opens the pool (taking its lock), serves its volumes over NBD on
 * every requested listener, and answers the control socket, until SIGINT/SIGTERM or `daemon.stop`.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { Pool } from './pool/index.js';
import { NbdServer, systemdListenFds } from './nbd/server.js';
import { PoolExportProvider } from './exports/volume-export.js';
import { RestoreSessions } from './backup/restore-session.js';
import { removeOrphanReplicaMetadata } from './backup/replica.js';
import { ControlServer } from './control/server.js';
import type { DaemonContext } from './control/command.js';

export interface TcpAddress {
  host: string;
  port: number;
}

export interface ServeOptions {
  poolDir: string;
  /** TCP listeners; when no listener of any kind is given, 127.0.0.1:10809 */
  tcp: TcpAddress[];
  unixSockets: string[];
  /** control socket path (default POOL/control.sock) */
  controlPath?: string;
  /** serve one NBD client on stdin/stdout; the name is the export an empty export name maps to */
  stdioExport?: string;
  tls?: { certFile: string; keyFile: string; required: boolean };
  log: Logger;
}

export const DEFAULT_PORT = 10809;

/** "10809", "127.0.0.1:10809", "[::1]:10809", "localhost:10809" -> address; throws on nonsense. */
export function parseListenAddress(spec: string): TcpAddress {
  const match = /^(?:(\[[0-9a-fA-F:.]+\]|[^:[\]]+):)?(\d{1,5})$/.exec(spec.trim());
  const port = match ? Number(match[2]) : NaN;
  if (!match || port > 65535) throw new RangeError(`invalid listen address '${spec}': use [HOST:]PORT, e.g. 127.0.0.1:10809 or [::1]:10809`);
  const host = (match[1] ?? '127.0.0.1').replace(/^\[|\]$/g, '');
  return { host, port };
}

export interface RunningDaemon {
  readonly pool: Pool;
  readonly nbd: NbdServer;
  readonly listeners: string[];
  /** resolves once the daemon has shut down completely */
  readonly stopped: Promise<void>;
  stop(): Promise<void>;
}

export async function startDaemon(opts: ServeOptions): Promise<RunningDaemon> {
  const { log } = opts;
  const pool = await Pool.open(opts.poolDir, { logger: log.child({ component: 'pool' }) });
  removeOrphanReplicaMetadata(pool, log.child({ component: 'backup' }));
  const tls = opts.tls
    ? { cert: fs.readFileSync(opts.tls.certFile), key: fs.readFileSync(opts.tls.keyFile), required: opts.tls.required }
    : undefined;
  const restoreSessions = new RestoreSessions(pool, log.child({ component: 'restore-export' }));
  const nbd = new NbdServer({
    provider: new PoolExportProvider(pool, log.child({ component: 'exports' }), restoreSessions),
    logger: log.child({ component: 'nbd' }),
    tls,
    defaultExport: opts.stdioExport,
  });
  const listeners: string[] = [];
  let control: ControlServer | undefined;
  let stopping: Promise<void> | undefined;
  let resolveStopped!: () => void;
  const stopped = new Promise<void>((resolve) => (resolveStopped = resolve));

  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      log.info('shutting down: draining NBD connections');
      // restore sessions first: a client's FLUSH waiting on one then fails instead of holding the drain up
      await restoreSessions.close();
      await nbd.close();
      await control?.close();
      await pool.close();
      log.info('pool closed cleanly');
      resolveStopped();
    })();
    return stopping;
  };

  try {
    const activated = systemdListenFds();
    for (const fd of activated) {
      await nbd.listenFd(fd);
      listeners.push(`fd:${fd}`);
    }
    const tcp = opts.tcp.length === 0 && opts.unixSockets.length === 0 && activated.length === 0 && !opts.stdioExport
      ? [{ host: '127.0.0.1', port: DEFAULT_PORT }]
      : opts.tcp;
    for (const address of tcp) {
      const bound = await nbd.listenTcp(address.host, address.port);
      listeners.push(bound.family === 'IPv6' ? `[${bound.address}]:${bound.port}` : `${bound.address}:${bound.port}`);
    }
    for (const socketPath of opts.unixSockets) {
      await nbd.listenUnix(socketPath);
      listeners.push(`unix:${path.resolve(socketPath)}`);
    }

    const context: DaemonContext = {
      pool,
      restoreSessions,
      log: log.child({ component: 'control' }),
      listeners,
      connections: () => nbd.connections(),
      disconnectExport: (name) => nbd.disconnectExport(name),
      requestStop: () => setImmediate(() => void stop()),
    };
    control = new ControlServer(context, context.log);
    const controlPath = opts.controlPath ?? path.join(opts.poolDir, 'control.sock');
    await control.listen(controlPath);
    listeners.push(`control:${path.resolve(controlPath)}`);

    if (opts.stdioExport !== undefined) {
      // One client on stdin/stdout; the daemon ends with it.
      nbd.serveStream({ readable: process.stdin, writable: process.stdout }).then(() => void stop());
    }
  } catch (err) {
    await nbd.close().catch(() => {});
    await control?.close().catch(() => {});
    await pool.close().catch(() => {});
    throw err;
  }

  log.info({ listeners, pool: path.resolve(opts.poolDir) }, 'thinvault serving');
  return { pool, nbd, listeners, stopped, stop };
}
