/** `backup`, `restore`, `media` and `replica` subcommands. */
import { Command, InvalidArgumentError } from 'commander';
import { addClientOptions, runClientCommand, type ClientOptions } from './client.js';
import { keyValues, table } from './output.js';
import { prepareTarget } from './media-target.js';
import { formatSize } from '../util/size.js';
import type { BackupEstimate, DiffBackupResult, FullBackupResult, MediaListEntry } from '../backup/jobs.js';
import type { RestoreResult } from '../backup/restore.js';
import type { ReplicaInfo } from '../backup/replica.js';

const TARGET_HELP = 'a file, - (stdout/stdin), tap:PATH[?capacity=SIZE] (SIMH tape image) or tape:/dev/nst0';

function restoreBlock(r: RestoreResult): string {
  const rows: Array<[string, string]> = [
    [r.verifyOnly ? 'verified' : 'restored', r.verifyOnly ? `${r.from}: lineage, every CRC, the chunk tables and the trailer digests are good` : `${r.from} -> volume ${r.volume}`],
    ['kind', r.streams.length === 1 ? r.kind : `chain of ${r.streams.length} streams`],
    ['volume', `${r.origin.name} (${r.origin.uuid})`],
    ['taken', r.createdAt],
    ['size', `${formatSize(r.volumeSize)} (${r.volumeSize} bytes)`],
    ['records', `${r.records} (${r.chunksWritten} written, ${r.chunksSkippedAsZero} all-zero chunks left unallocated${r.chunksUnmapped > 0 ? `, ${r.chunksUnmapped} holes of diffs unmapped` : ''})`],
    ['stream', `${formatSize(r.bytes)} in ${r.seconds.toFixed(1)} s`],
  ];
  if (r.streams.length > 1) {
    for (const [i, s] of r.streams.entries()) rows.push([`stream ${i + 1}`, `${s.from}: ${s.kind}${s.kind === 'diff' ? ` ${s.generations}` : ''}, ${s.records} records`]);
  }
  if (r.generation !== null) rows.push(['generation', `${r.generation}${r.backupChain ? ` (chain of full backup ${r.backupChain.baseStreamUuid}, through generation ${r.backupChain.throughGeneration})` : ''}`]);
  for (const w of r.warnings) rows.push(['WARNING', w]);
  return keyValues(rows);
}

/** a generation number option (>= 1) */
function generation(value: string): number {
  const n = Number(value);
  if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(n) || n < 1 || n > 0xffff_fffe) throw new InvalidArgumentError(`'${value}' is not a generation number (1..4294967294)`);
  return n;
}

function collect<T>(parse: (v: string) => T): (value: string, previous: T[] | undefined) => T[] {
  return (value, previous) => [...(previous ?? []), parse(value)];
}

interface RestoreCliOptions extends ClientOptions {
  as?: string;
  into?: string;
  verifyOnly?: boolean;
  force?: boolean;
}

function restoreArgs(opts: RestoreCliOptions): Record<string, unknown> {
  const args: Record<string, unknown> = {};
  if (opts.as !== undefined) args.as = opts.as;
  if (opts.into !== undefined) args.into = opts.into;
  if (opts.verifyOnly) args.verifyOnly = true;
  if (opts.force) args.force = true;
  return args;
}

function addRestoreOptions(cmd: Command): Command {
  return cmd
    .option('--as <NEWVOL>', 'restore into a new thin volume with this name')
    .option('--into <VOL>', 'replace the content of an existing volume of the same size, or apply diffs to the volume restored from their chain (refused while attached)')
    .option('--verify-only', 'check every CRC and the trailer digest, change nothing')
    .option('--force', 'with --into: disconnect the NBD clients of VOL first');
}

export function backupCommands(program: Command): { restore: Command } {
  const backup = new Command('backup').description('full and difference backups (seed 002: generation map)');
  addClientOptions(backup.command('full <VOL>').description('snapshot VOL, write a compacted full stream of it, restart its generation map'))
    .requiredOption('--to <TARGET>', TARGET_HELP)
    .option('--overwrite', 'replace a file that holds data / start a tape image over (default for tapes: append)')
    .option('--compress', 'write the stream gzip-compressed (restore expands it; zcat gives the plain stream)')
    .action((volume: string, opts: ClientOptions & { to: string; overwrite?: boolean; compress?: boolean }) => {
      const target = prepareTarget(opts.to, 'out');
      const toStdout = opts.to === '-';
      return runClientCommand<FullBackupResult>(
        opts,
        'backup.full',
        { volume, to: target.spec, overwrite: toStdout || (opts.overwrite ?? false), ...(opts.compress ? { compress: true } : {}) },
        (r) =>
          `full backup of ${r.volume} written to ${toStdout ? 'standard output' : r.target}` +
          `${r.file > 1 || r.target.startsWith('tap:') || r.target.startsWith('tape:') ? ` (file #${r.file})` : ''}: ` +
          `${r.records} chunks, ${formatSize(r.bytes)}${r.compressed ? ` (${formatSize(r.bytesOnMedium)} compressed)` : ''} in ${r.seconds.toFixed(1)} s; generation map restarted (now generation ${r.currentGeneration})`,
        { label: `backup ${volume}`, quiet: opts.json && !toStdout, resultToStderr: toStdout, around: target.relay },
      );
    });
  addClientOptions(backup.command('diff <VOL>').description('write the chunks changed in generations K..G (G current) and move VOL to G+1'))
    .requiredOption('--to <TARGET>', TARGET_HELP)
    .option('--scope <K>', 'first generation to include (default: the one after the last diff, i.e. what changed since the last backup)', generation)
    .option('--overwrite', 'replace a file that holds data / start a tape image over (default for tapes: append)')
    .option('--compress', 'write the stream gzip-compressed (restore expands it; zcat gives the plain stream)')
    .action((volume: string, opts: ClientOptions & { to: string; scope?: number; overwrite?: boolean; compress?: boolean }) => {
      const target = prepareTarget(opts.to, 'out');
      const toStdout = opts.to === '-';
      const args: Record<string, unknown> = { volume, to: target.spec, overwrite: toStdout || (opts.overwrite ?? false) };
      if (opts.scope !== undefined) args.scope = opts.scope;
      if (opts.compress) args.compress = true;
      return runClientCommand<DiffBackupResult>(
        opts,
        'backup.diff',
        args,
        (r) =>
          `difference backup of ${r.volume}, generations ${r.generationFrom}..${r.generationTo}, written to ${toStdout ? 'standard output' : r.target}` +
          `${r.target.startsWith('tap:') || r.target.startsWith('tape:') ? ` (file #${r.file})` : ''}: ` +
          `${r.records} chunks, ${formatSize(r.bytes)}${r.compressed ? ` (${formatSize(r.bytesOnMedium)} compressed)` : ''} in ${r.seconds.toFixed(1)} s; now generation ${r.currentGeneration}`,
        { label: `diff ${volume}`, quiet: opts.json && !toStdout, resultToStderr: toStdout, around: target.relay },
      );
    });
  addClientOptions(backup.command('estimate <VOL>').description('exact size of the next diff (or --full) stream, from the count table, without reading data'))
    .option('--scope <K>', 'first generation to include (as backup diff)', generation)
    .option('--full', 'estimate a full backup instead')
    .option('--compress', 'for a compressed backup: the size is then an upper bound (incompressible data)')
    .action((volume: string, opts: ClientOptions & { scope?: number; full?: boolean; compress?: boolean }) => {
      const args: Record<string, unknown> = { volume };
      if (opts.scope !== undefined) args.scope = opts.scope;
      if (opts.full) args.full = true;
      if (opts.compress) args.compress = true;
      return runClientCommand<BackupEstimate>(opts, 'backup.estimate', args, (r) =>
        keyValues([
          ['volume', r.volume],
          ['kind', r.kind === 'diff' ? `diff of generations ${r.generationFrom}..${r.generationTo}` : 'full'],
          ['records', `${r.records} chunks of ${formatSize(r.chunkSize)} (${formatSize(r.dataBytes)} of data)`],
          r.compressed
            ? ['stream size', `at most ${r.bytes} bytes (${formatSize(r.bytes)}) compressed: an upper bound; ${r.streamBytes} bytes uncompressed (exact)`]
            : ['stream size', `${r.bytes} bytes (${formatSize(r.bytes)}), exact`],
        ]),
      );
    });
  program.addCommand(backup);

  const restore: Command = addRestoreOptions(
    addClientOptions(
      program
        .command('restore')
        .description('restore a stream, or a full backup and its diffs (oldest first); nothing changes unless the lineage and every CRC check out')
        .enablePositionalOptions(),
    ),
  )
    // not a commander "required" option: the subcommands (restore export|status|remove) do without it
    .option('--from <TARGET>', `${TARGET_HELP}; a tape with several backups needs #N (see media list); repeat for a chain: --from FULL --from DIFF1 ...`, collect(String))
    .option('--skip-gen <N>', 'do not restore generation N from a stream where it is damaged (repeatable); warns which ranges stay older', collect(generation))
    .action((opts: RestoreCliOptions & { from?: string[]; skipGen?: number[] }) => {
      if (!opts.from) throw new InvalidArgumentError("required option '--from <TARGET>' not specified");
      if (opts.from.filter((f) => f === '-').length > 1) throw new InvalidArgumentError('only one --from can be - (standard input)');
      const targets = opts.from.map((f) => prepareTarget(f, 'in'));
      const args: Record<string, unknown> = { from: targets.map((t) => t.spec), ...restoreArgs(opts) };
      if (opts.skipGen) args.skipGenerations = opts.skipGen;
      return runClientCommand<RestoreResult>(opts, 'restore', args, restoreBlock, {
        label: 'restore',
        quiet: opts.json,
        around: targets.find((t) => t.relay)?.relay,
      });
    });

  const media = new Command('media').description('backup media');
  addClientOptions(media.command('list <TARGET>').description('what a medium holds, from the stream headers only')).action(
    (spec: string, opts: ClientOptions) =>
      runClientCommand<{ target: string; files: MediaListEntry[] }>(opts, 'media.list', { target: prepareTarget(spec, 'in').spec }, ({ target, files }) =>
        files.length === 0
          ? `${target}: empty`
          : table(
              ['#', 'KIND', 'VOLUME', 'TAKEN', 'VOLUME SIZE', 'STREAM', 'GENERATIONS', 'STATE'],
              files.map((f) => [
                f.file,
                f.compressed ? `${f.kind}+gzip` : f.kind,
                f.volume ?? '-',
                f.createdAt ?? '-',
                f.volumeSize === null ? '-' : formatSize(f.volumeSize),
                f.streamBytes === null ? '-' : formatSize(f.streamBytes),
                f.generations ?? '-',
                f.problem ? `unreadable: ${f.problem}` : f.complete === false ? 'INCOMPLETE' : f.complete ? 'complete' : 'complete?',
              ]),
            ),
      ),
  );
  program.addCommand(media);

  const replica = new Command('replica').description('compacted replicas: allocated chunks packed behind a table, exported read-only');
  const replicaBlock = (r: ReplicaInfo) =>
    keyValues([
      ['name', r.name],
      ['of', `${r.origin.name} (${r.origin.uuid})`],
      ['created', r.createdAt],
      ['volume size', `${formatSize(r.volumeSize)} (${r.volumeSize} bytes), chunk ${formatSize(r.chunkSize)}`],
      ['chunks', `${r.records} (${formatSize(r.dataBytes)})`],
      ['image', `${formatSize(r.imageBytes)} (${r.imageBytes} bytes): the NBD export ${r.name}`],
    ]);
  addClientOptions(replica.command('create <SOURCE> <NAME>').description('make a compacted replica of SOURCE from a point-in-time view'))
    .action((source: string, name: string, opts: ClientOptions) =>
      runClientCommand<ReplicaInfo>(opts, 'replica.create', { source, name }, replicaBlock, { label: `replica ${name}`, quiet: opts.json }),
    );
  addClientOptions(replica.command('list').description('list replicas')).action((opts: ClientOptions) =>
    runClientCommand<{ replicas: ReplicaInfo[] }>(opts, 'replica.list', {}, ({ replicas }) =>
      replicas.length === 0
        ? 'no replicas'
        : table(
            ['NAME', 'OF', 'VOLUME SIZE', 'CHUNKS', 'IMAGE', 'CREATED'],
            replicas.map((r) => [r.name, r.origin.name, formatSize(r.volumeSize), r.records, formatSize(r.imageBytes), r.createdAt]),
          ),
    ),
  );
  addClientOptions(replica.command('info <NAME>').description('show one replica')).action((name: string, opts: ClientOptions) =>
    runClientCommand<ReplicaInfo>(opts, 'replica.info', { name }, replicaBlock),
  );
  addClientOptions(replica.command('delete <NAME>').description('delete a replica'))
    .option('--force', 'disconnect NBD clients of the replica first')
    .action((name: string, opts: ClientOptions & { force?: boolean }) =>
      runClientCommand(opts, 'replica.delete', { name, force: opts.force ?? false }, () => `deleted ${name}`),
    );
  addRestoreOptions(addClientOptions(replica.command('restore <NAME>').description('re-expand a replica into a thin volume'))).action(
    (name: string, opts: RestoreCliOptions) =>
      runClientCommand<RestoreResult>(opts, 'replica.restore', { name, ...restoreArgs(opts) }, restoreBlock, { label: `restore ${name}`, quiet: opts.json }),
  );
  program.addCommand(replica);
  return { restore };
}
