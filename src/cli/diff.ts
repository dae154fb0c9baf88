/** `diff export|list|info|remove` and `restore export|status|remove`: the pseudo-devices for dd (seed 002). */
import { Command } from 'commander';
import { addClientOptions, runClientCommand, type ClientOptions } from './client.js';
import { keyValues, table } from './output.js';
import { formatSize, parseSize } from '../util/size.js';
import type { DiffExportInfo } from '../backup/diff-export.js';
import type { RestoreSessionInfo } from '../backup/restore-session.js';

function diffBlock(d: DiffExportInfo): string {
  return keyValues([
    ['name', `${d.name} (NBD export, read-only)`],
    ['of', `${d.volume ?? '(deleted)'}, lineage ${d.origin.name} (${d.origin.uuid})`],
    ['generations', `${d.generationFrom}..${d.generationTo} (extends full backup ${d.baseStreamUuid})`],
    ['records', `${d.records} chunks (${formatSize(d.dataBytes)})`],
    ['size', `${d.bytes} bytes (${formatSize(d.bytes)}): dd if=/dev/nbdX of=TARGET bs=256k copies the whole stream`],
    ['created', d.createdAt],
    ['clients', String(d.clients)],
  ]);
}

function sessionBlock(s: RestoreSessionInfo): string {
  const rows: Array<[string, string]> = [
    ['name', `${s.name} (NBD export, write-only, ${s.deviceBytes} bytes)`],
    ['restores', s.into ? `into ${s.into}` : `as ${s.as}`],
    ['state', s.state],
    ['received', `${formatSize(s.bytesDone)}${s.streamBytes !== null ? ` of ${formatSize(s.streamBytes)}` : ''}${s.bytesIgnored > 0 ? ` (${s.bytesIgnored} bytes past the stream ignored)` : ''}`],
  ];
  if (s.error) rows.push(['error', `${s.error.message} [${s.error.code}]`]);
  if (s.result) rows.push(['result', `volume ${s.result.volume}: ${s.result.records} records, generation ${s.result.generation}`]);
  for (const w of s.result?.warnings ?? []) rows.push(['WARNING', w]);
  return keyValues(rows);
}

export function diffCommands(program: Command, restore: Command): void {
  const diff = new Command('diff').description('difference backups as read-only devices for dd');
  addClientOptions(diff.command('export <VOL>').description('serve the diff of generations K..G as a read-only NBD export of exactly the stream size; VOL moves to G+1'))
    .requiredOption('--name <NAME>', 'the NBD export name')
    .option('--scope <K>', 'first generation to include (default: the one after the last diff)', (v) => Number(v))
    .action((volume: string, opts: ClientOptions & { name: string; scope?: number }) => {
      const args: Record<string, unknown> = { volume, name: opts.name };
      if (opts.scope !== undefined) args.scope = opts.scope;
      return runClientCommand<DiffExportInfo>(opts, 'diff.export', args, diffBlock, { label: `diff ${volume}`, quiet: opts.json });
    });
  addClientOptions(diff.command('list').description('list diff exports')).action((opts: ClientOptions) =>
    runClientCommand<{ diffs: DiffExportInfo[] }>(opts, 'diff.list', {}, ({ diffs }) =>
      diffs.length === 0
        ? 'no diff exports'
        : table(
            ['NAME', 'VOLUME', 'GENERATIONS', 'RECORDS', 'SIZE', 'CLIENTS', 'CREATED'],
            diffs.map((d) => [d.name, d.volume ?? '-', `${d.generationFrom}..${d.generationTo}`, d.records, `${d.bytes}`, d.clients, d.createdAt]),
          ),
    ),
  );
  addClientOptions(diff.command('info <NAME>').description('show one diff export')).action((name: string, opts: ClientOptions) =>
    runClientCommand<DiffExportInfo>(opts, 'diff.info', { name }, diffBlock),
  );
  addClientOptions(diff.command('remove <NAME>').description('remove a diff export once it is dumped: its generations count as backed up'))
    .option('--abandon', 'it was not dumped: the next diff includes its generations again')
    .option('--force', 'disconnect its NBD clients first')
    .action((name: string, opts: ClientOptions & { abandon?: boolean; force?: boolean }) =>
      runClientCommand<DiffExportInfo & { abandoned: boolean }>(opts, 'diff.remove', { name, abandon: opts.abandon ?? false, force: opts.force ?? false }, (r) =>
        r.abandoned
          ? `removed ${name}; generations ${r.generationFrom}..${r.generationTo} of ${r.volume ?? '(deleted)'} go into the next diff again`
          : `removed ${name}; generations ${r.generationFrom}..${r.generationTo} of ${r.volume ?? '(deleted)'} count as backed up`,
      ),
    );
  program.addCommand(diff);

  addClientOptions(restore.command('export <NAME>').description('a write-only NBD export NAME: dd a stream into it; staged, verified, then applied'))
    .option('--into <VOL>', 'apply to this volume (a full replaces it, a diff extends its chain)')
    .option('--as <NEWVOL>', 'restore as a new volume')
    .option('--size <SIZE>', 'device size (default: room for a full stream of --into VOL, or 16 TiB for --as)', (v) => parseSize(v))
    .action((name: string, opts: ClientOptions & { into?: string; as?: string; size?: number }) => {
      const args: Record<string, unknown> = { name };
      if (opts.into !== undefined) args.into = opts.into;
      if (opts.as !== undefined) args.as = opts.as;
      if (opts.size !== undefined) args.size = opts.size;
      return runClientCommand<RestoreSessionInfo>(opts, 'restore.export', args, sessionBlock);
    });
  addClientOptions(restore.command('status [NAME]').description('state of the restore exports (or of one)')).action((name: string | undefined, opts: ClientOptions) =>
    runClientCommand<RestoreSessionInfo | { sessions: RestoreSessionInfo[] }>(opts, 'restore.status', name === undefined ? {} : { name }, (r) =>
      'sessions' in r ? (r.sessions.length === 0 ? 'no restore exports' : r.sessions.map(sessionBlock).join('\n\n')) : sessionBlock(r),
    ),
  );
  addClientOptions(restore.command('remove <NAME>').description('remove a restore export (cancels one still receiving; nothing changes)'))
    .option('--force', 'disconnect its NBD clients first')
    .action((name: string, opts: ClientOptions & { force?: boolean }) =>
      runClientCommand<RestoreSessionInfo>(opts, 'restore.remove', { name, force: opts.force ?? false }, (s) => `removed ${name} (${s.state})`),
    );
}
