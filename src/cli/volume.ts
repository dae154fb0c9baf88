import { Command } from 'commander';
import { addClientOptions, runClientCommand, type ClientOptions } from './client.js';
import { table, keyValues } from './output.js';
import { formatSize } from '../util/size.js';
import type { VolumeInfo } from '../pool/index.js';

function volumeBlock(v: VolumeInfo & { openConnections?: number }): string {
  const pairs: Array<[string, string | number]> = [
    ['name', v.name],
    ['uuid', v.uuid],
    ['size', `${formatSize(v.size)} (${v.size} bytes)`],
    ['kind', v.kind + (v.readOnly ? ', read-only' : '') + (v.copying ? ', background copy running' : '')],
    ['allocated', `${formatSize(v.allocatedBytes)} (${v.allocatedChunks} chunks)`],
    ['generation', v.generation],
    ['created', v.createdAt],
  ];
  if (v.openConnections !== undefined) pairs.push(['connections', v.openConnections]);
  return keyValues(pairs);
}

interface GenerationsResult {
  current: number;
  chunkSize: number;
  counts: Array<{ generation: number; chunks: number; bytes: number }>;
  map?: Array<{ offset: number; length: number; generation: number }>;
}

export function volumeCommand(): Command {
  const volume = new Command('volume').description('create, list, inspect, resize and delete volumes');

  addClientOptions(volume.command('create <NAME>').description('create a thin volume'))
    .requiredOption('--size <SIZE>', 'size, e.g. 10GiB')
    .action((name: string, opts: ClientOptions & { size: string }) =>
      runClientCommand(opts, 'volume.create', { name, size: opts.size }, volumeBlock),
    );

  addClientOptions(volume.command('list').description('list volumes')).action((opts: ClientOptions) =>
    runClientCommand<{ volumes: VolumeInfo[] }>(opts, 'volume.list', {}, ({ volumes }) =>
      volumes.length === 0
        ? 'no volumes'
        : table(
            ['NAME', 'KIND', 'SIZE', 'ALLOCATED', 'GEN', 'UUID'],
            volumes.map((v) => [
              v.name,
              v.kind + (v.readOnly ? ' (ro)' : '') + (v.copying ? ' (copying)' : ''),
              formatSize(v.size),
              formatSize(v.allocatedBytes),
              v.generation,
              v.uuid,
            ]),
          ),
    ),
  );

  addClientOptions(volume.command('info <NAME>').description('show one volume')).action((name: string, opts: ClientOptions) =>
    runClientCommand(opts, 'volume.info', { name }, volumeBlock),
  );

  addClientOptions(volume.command('resize <NAME>').description('grow or shrink a volume'))
    .requiredOption('--size <SIZE>', 'new size, e.g. 20GiB')
    .action((name: string, opts: ClientOptions & { size: string }) =>
      runClientCommand(opts, 'volume.resize', { name, size: opts.size }, volumeBlock),
    );

  addClientOptions(volume.command('delete <NAME>').description('delete a volume and free its space'))
    .option('--force', 'disconnect NBD clients of the volume first')
    .action((name: string, opts: ClientOptions & { force?: boolean }) =>
      runClientCommand(opts, 'volume.delete', { name, force: opts.force ?? false }, () => `deleted ${name}`),
    );

  addClientOptions(volume.command('generations <NAME>').description('current generation and the per-generation chunk counts'))
    .option('--map', 'also list the changed byte ranges and their generations')
    .action((name: string, opts: ClientOptions & { map?: boolean }) =>
      runClientCommand<GenerationsResult>(opts, 'volume.generations', { name, map: opts.map ?? false }, (r) =>
        [
          `current generation: ${r.current} (chunk size ${formatSize(r.chunkSize)})`,
          table(['GENERATION', 'CHUNKS', 'BYTES'], r.counts.map((c) => [c.generation, c.chunks, formatSize(c.bytes)])),
          ...(r.map
            ? ['', r.map.length ? table(['OFFSET', 'LENGTH', 'GENERATION'], r.map.map((m) => [m.offset, m.length, m.generation])) : 'no changed ranges']
            : []),
        ].join('\n'),
      ),
    );

  addClientOptions(volume.command('advance-generation <NAME>').description('start the next generation (backups do this themselves)'))
    .action((name: string, opts: ClientOptions) =>
      runClientCommand<{ previous: number; current: number }>(opts, 'volume.advance-generation', { name }, (r) =>
        `generation ${r.previous} closed; writes now go to generation ${r.current}`,
      ),
    );

  return volume;
}
