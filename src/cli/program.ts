/**
 * The thinvault commander (loaded by main.ts once the thread pool size is set). `init`, `serve` and `demo` touch a pool directly; every other subcommand is a thin
 * call to the control socket of a running daemon.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Command, Option, InvalidArgumentError } from 'commander';
import { Pool } from '../pool/index.js';
import { startDaemon, parseListenAddress, DEFAULT_PORT, type TcpAddress } from '../daemon.js';
import { createLogger } from '../util/log.js';
import { parseSize, formatSize } from '../util/size.js';
import { VERSION } from '../version.js';
import { addClientOptions, runClientCommand, type ClientOptions } from './client.js';
import { volumeCommand } from './volume.js';
import { addVolumeCopyCommands, snapshotCommand } from './snapshot.js';
import { backupCommands } from './backup.js';
import { diffCommands } from './diff.js';
import { table, keyValues } from './output.js';

function sizeOption(value: string): number {
  try {
    return parseSize(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

function collect<T>(parse: (v: string) => T) {
  return (value: string, previous: T[] = []): T[] => {
    try {
      return [...previous, parse(value)];
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  };
}

/** Runs the daemon in the foreground until a signal or `daemon.stop`. */
async function runDaemon(opts: Parameters<typeof startDaemon>[0], banner?: (listeners: string[]) => string): Promise<void> {
  const daemon = await startDaemon(opts);
  if (banner) process.stderr.write(banner(daemon.listeners) + '\n');
  const onSignal = (signal: string) => {
    opts.log.info({ signal }, 'signal received');
    void daemon.stop();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  await daemon.stopped;
  opts.log.flush();
}

const program = new Command('thinvault')
  .version(VERSION)
  .description('thin volumes over NBD with generation-tracked difference backups')
  .showHelpAfterError()
  // `restore` has options and subcommands of its own (restore export NAME --pool ...): options after a subcommand
  // belong to it, which needs positional options at every level above
  .enablePositionalOptions();

program
  .command('init <POOL>')
  .description('create a pool directory')
  .option('--chunk-size <SIZE>', 'allocation/tracking unit, a power of two from 4KiB to 1MiB', sizeOption, 65536)
  .option('--capacity <SIZE>', 'maximum data size (default: until the filesystem is full)', sizeOption)
  .action(async (poolDir: string, opts: { chunkSize: number; capacity?: number }) => {
    await Pool.init(poolDir, { chunkSize: opts.chunkSize, capacity: opts.capacity });
    process.stdout.write(
      `initialised pool ${path.resolve(poolDir)} (chunk size ${formatSize(opts.chunkSize)}` +
        `${opts.capacity ? `, capacity ${formatSize(opts.capacity)}` : ''})\n`,
    );
  });

program
  .command('serve <POOL>')
  .description('serve the pool\'s volumes over NBD (default 127.0.0.1:10809) and answer the control socket')
  .option('--listen <[HOST:]PORT>', 'TCP listener, repeatable', collect(parseListenAddress), [] as TcpAddress[])
  .option('--socket <PATH>', 'Unix socket listener, repeatable', collect(String), [] as string[])
  .option('--control <PATH>', 'control socket (default POOL/control.sock)')
  .option('--stdio <EXPORT>', 'serve one client on stdin/stdout; EXPORT is served for an empty export name')
  .option('--tls-cert <FILE>', 'TLS certificate (PEM) for STARTTLS')
  .option('--tls-key <FILE>', 'TLS private key (PEM)')
  .option('--tls-required', 'refuse clients that do not start TLS')
  .addOption(new Option('--log-level <LEVEL>', 'log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']))
  .action(async (poolDir: string, opts: {
    listen: TcpAddress[]; socket: string[]; control?: string; stdio?: string;
    tlsCert?: string; tlsKey?: string; tlsRequired?: boolean; logLevel?: string;
  }) => {
    if (Boolean(opts.tlsCert) !== Boolean(opts.tlsKey)) throw new InvalidArgumentError('--tls-cert and --tls-key go together');
    if (opts.tlsRequired && !opts.tlsCert) throw new InvalidArgumentError('--tls-required needs --tls-cert and --tls-key');
    await runDaemon({
      poolDir,
      tcp: opts.listen,
      unixSockets: opts.socket,
      controlPath: opts.control,
      stdioExport: opts.stdio,
      tls: opts.tlsCert && opts.tlsKey ? { certFile: opts.tlsCert, keyFile: opts.tlsKey, required: Boolean(opts.tlsRequired) } : undefined,
      log: createLogger(opts.logLevel),
    });
  });

program
  .command('demo')
  .description('the embedded default: create (once) a pool with a 1 GiB volume vol0 and serve it on localhost')
  .option('--pool <DIR>', 'pool directory', 'demo-pool')
  .option('--port <PORT>', 'TCP port on 127.0.0.1', (v) => parseListenAddress(v).port, DEFAULT_PORT)
  .option('--size <SIZE>', 'size of vol0 when it is created', sizeOption, 1024 ** 3)
  .action(async (opts: { pool: string; port: number; size: number }) => {
    const log = createLogger();
    if (!fs.existsSync(path.join(opts.pool, 'pool.json'))) await Pool.init(opts.pool);
    const pool = await Pool.open(opts.pool, { logger: log.child({ component: 'pool' }) });
    try {
      if (!pool.volume('vol0')) await pool.createVolume('vol0', opts.size);
    } finally {
      await pool.close();
    }
    const socketPath = path.join(opts.pool, 'nbd.sock');
    await runDaemon(
      { poolDir: opts.pool, tcp: [{ host: '127.0.0.1', port: opts.port }], unixSockets: [socketPath], log },
      () =>
        [
          '',
          `thinvault ${VERSION}: serving volume vol0 from pool ${path.resolve(opts.pool)}`,
          `  attach with the kernel client:  nbd-client 127.0.0.1 ${opts.port} -N vol0 /dev/nbd0`,
          `  or inspect it:                  nbdinfo nbd://127.0.0.1:${opts.port}/vol0`,
          `  or over the Unix socket:        nbdinfo 'nbd+unix:///vol0?socket=${path.resolve(socketPath)}'`,
          `  manage it:                      npx thinvault status --pool ${opts.pool}`,
          '  stop with Ctrl-C',
          '',
        ].join('\n'),
    );
  });

addClientOptions(program.command('status').description('pool usage, volumes and NBD connections')).action((opts: ClientOptions) =>
  runClientCommand<{
    pool: { chunkSize: number; capacity: number; dataFileBytes: number; chunksUsed: number; chunksFree: number; provisionedBytes: number; journalBytes: number };
    volumes: Array<{ name: string; size: number; allocatedBytes: number; generation: number }>;
    connections: Array<{ id: number; remote: string; export: string | null; since: string; requests: number }>;
    listeners: string[];
  }>(opts, 'status', {}, (s) =>
    [
      keyValues([
        ['chunk size', formatSize(s.pool.chunkSize)],
        ['capacity', s.pool.capacity ? formatSize(s.pool.capacity) : 'filesystem'],
        ['data file', formatSize(s.pool.dataFileBytes)],
        ['used', `${formatSize(s.pool.chunksUsed * s.pool.chunkSize)} (${s.pool.chunksUsed} chunks)`],
        ['provisioned', formatSize(s.pool.provisionedBytes)],
        ['listeners', s.listeners.join(', ')],
      ]),
      '',
      s.volumes.length
        ? table(['VOLUME', 'SIZE', 'ALLOCATED', 'GEN'], s.volumes.map((v) => [v.name, formatSize(v.size), formatSize(v.allocatedBytes), v.generation]))
        : 'no volumes',
      '',
      s.connections.length
        ? table(['CONN', 'REMOTE', 'EXPORT', 'SINCE', 'REQUESTS'], s.connections.map((c) => [c.id, c.remote, c.export ?? '-', c.since, c.requests]))
        : 'no connections',
    ].join('\n'),
  ),
);

addClientOptions(program.command('stop').description('drain NBD connections, checkpoint the pool and stop the daemon')).action(
  (opts: ClientOptions) => runClientCommand(opts, 'daemon.stop', {}, () => 'daemon stopping'),
);

const poolGroup = program.command('pool').description('pool-wide maintenance');
addClientOptions(poolGroup.command('check').description('read-only consistency check of the pool metadata')).action((opts: ClientOptions) =>
  runClientCommand<{ ok: boolean; problems: string[]; checked: { volumes: number; mappedChunks: number; chunksTotal: number } }>(
    opts,
    'pool.check',
    {},
    (r) => {
      if (!r.ok) process.exitCode = 3;
      return r.ok
        ? `pool consistent: ${r.checked.volumes} volume(s), ${r.checked.mappedChunks} mapped of ${r.checked.chunksTotal} chunks`
        : `POOL INCONSISTENT (${r.problems.length} problem(s)):\n${r.problems.map((p) => `  - ${p}`).join('\n')}`;
    },
  ),
);

const volumeGroup = volumeCommand();
addVolumeCopyCommands(volumeGroup);
program.addCommand(volumeGroup);
program.addCommand(snapshotCommand());
diffCommands(program, backupCommands(program).restore);

program.parseAsync(process.argv).catch((err: Error & { code?: string }) => {
  process.stderr.write(`thinvault: ${err.message}${err.code && !err.code.startsWith('commander') ? ` [${err.code}]` : ''}\n`);
  process.exitCode = 1;
});
