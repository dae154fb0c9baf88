import { Command } from 'commander';
import { addClientOptions, runClientCommand, type ClientOptions } from './client.js';
import { keyValues, table } from './output.js';
import { formatSize } from '../util/size.js';
import type { CopyProgress, VolumeIdentity, VolumeInfo } from '../pool/index.js';

type SnapshotInfo = VolumeInfo & { openConnections?: number; source?: VolumeIdentity | null; origin?: VolumeIdentity | null; createMs?: number };

function snapshotBlock(s: SnapshotInfo): string {
  const pairs: Array<[string, string | number]> = [
    ['name', s.name],
    ['uuid', s.uuid],
    ['mode', s.readOnly ? 'read-only' : 'writable'],
    ['size', `${formatSize(s.size)} (${s.size} bytes)`],
    ['allocated', `${formatSize(s.allocatedBytes)} (${s.allocatedChunks} chunks, shared with the source until changed)`],
    ['generation', s.generation],
    ['created', s.createdAt],
  ];
  if (s.openConnections !== undefined) pairs.push(['connections', s.openConnections]);
  if (s.source) pairs.push(['source', `${s.source.name} (${s.source.uuid})`]);
  if (s.origin && s.source && s.origin.uuid !== s.source.uuid) pairs.push(['origin', `${s.origin.name} (${s.origin.uuid})`]);
  return keyValues(pairs);
}

export function snapshotCommand(): Command {
  const snapshot = new Command('snapshot').description('instant point-in-time copies of volumes (copy-on-write)');

  addClientOptions(snapshot.command('create <SOURCE> <NAME>').description('take a snapshot of SOURCE named NAME (an NBD export too)'))
    .option('--writable', 'a writable snapshot: an independent volume sharing unchanged chunks')
    .action((source: string, name: string, opts: ClientOptions & { writable?: boolean }) =>
      runClientCommand<SnapshotInfo>(opts, 'snapshot.create', { source, name, writable: opts.writable ?? false }, (s) =>
        `snapshot ${s.name} of ${source} created (${s.readOnly ? 'read-only' : 'writable'}, ${s.createMs?.toFixed(1)} ms)`,
      ),
    );

  addClientOptions(snapshot.command('list').description('list snapshots'))
    .option('--source <VOLUME>', 'only the snapshots taken of VOLUME')
    .action((opts: ClientOptions & { source?: string }) =>
      runClientCommand<{ snapshots: VolumeInfo[] }>(opts, 'snapshot.list', opts.source ? { source: opts.source } : {}, ({ snapshots }) =>
        snapshots.length === 0
          ? 'no snapshots'
          : table(
              ['NAME', 'MODE', 'SIZE', 'ALLOCATED', 'CREATED'],
              snapshots.map((s) => [s.name, s.readOnly ? 'ro' : 'rw', formatSize(s.size), formatSize(s.allocatedBytes), s.createdAt]),
            ),
      ),
    );

  addClientOptions(snapshot.command('info <NAME>').description('show one snapshot'))
    .option('--show-source', 'also show the hidden identity of the volume it was taken from')
    .action((name: string, opts: ClientOptions & { showSource?: boolean }) =>
      runClientCommand<SnapshotInfo>(opts, 'snapshot.info', { name, showSource: opts.showSource ?? false }, snapshotBlock),
    );

  addClientOptions(snapshot.command('delete <NAME>').description('delete a snapshot and free the chunks only it held'))
    .option('--force', 'disconnect NBD clients of the snapshot first')
    .action((name: string, opts: ClientOptions & { force?: boolean }) =>
      runClientCommand(opts, 'snapshot.delete', { name, force: opts.force ?? false }, () => `deleted ${name}`),
    );

  return snapshot;
}

/** `volume copy` and `volume copy-status`, added to the volume group */
export function addVolumeCopyCommands(volume: Command): void {
  addClientOptions(volume.command('copy <SOURCE> <NAME>').description('full copy, usable at once, copied in the background'))
    .option('--wait', 'wait until the background copy has finished, with progress')
    .action((source: string, name: string, opts: ClientOptions & { wait?: boolean }) =>
      runClientCommand<VolumeInfo & { copiedChunks?: number }>(
        opts,
        'volume.copy',
        { source, name, wait: opts.wait ?? false },
        (v) =>
          opts.wait
            ? `${name} is a full copy of ${source} (${v.copiedChunks} chunks copied in the background)`
            : `${name} is usable now; its chunks are copied from ${source} in the background (see 'thinvault volume copy-status ${name}')`,
        opts.wait ? { label: `copy ${name}`, quiet: opts.json } : undefined,
      ),
    );

  addClientOptions(volume.command('copy-status [NAME]').description('progress of background copies')).action(
    (name: string | undefined, opts: ClientOptions) =>
      runClientCommand<{ copies: CopyProgress[] }>(opts, 'volume.copy-status', name ? { name } : {}, ({ copies }) =>
        copies.length === 0
          ? 'no background copies in this run'
          : table(
              ['VOLUME', 'STATE', 'PROGRESS', 'COPIED CHUNKS'],
              copies.map((c) => [
                c.volume,
                c.error ? `stopped: ${c.error}` : c.finished ? 'finished' : 'copying',
                `${Math.floor((100 * c.doneChunks) / Math.max(c.totalChunks, 1))}%`,
                c.copiedChunks,
              ]),
            ),
      ),
  );
}
