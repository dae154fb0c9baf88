import { z } from 'zod';
import { ControlError } from '../protocol.js';
import { removeDiffExport } from '../../backup/diff-export.js';
import { deleteReplica } from '../../backup/replica.js';
import type { Volume } from '../../pool/index.js';
import { defineCommand, sizeArg, noArgs, volumeNameArg, type DaemonContext } from '../command.js';

function requireVolume(ctx: DaemonContext, name: string) {
  const volume = ctx.pool.volume(name);
  if (!volume || volume.info().kind === 'internal') throw new ControlError('ENOENT', `no volume named '${name}'`);
  return volume;
}

export const volumeCommands = [
  defineCommand({
    name: 'volume.create',
    summary: 'create a thin volume (served as the NBD export of the same name)',
    args: z.strictObject({ name: volumeNameArg, size: sizeArg }),
    run: async ({ name, size }, ctx) => {
      const info = await ctx.pool.createVolume(name, size);
      ctx.log.info({ volume: name, size }, 'volume created');
      return info;
    },
  }),
  defineCommand({
    name: 'volume.list',
    summary: 'list volumes',
    args: noArgs,
    run: (_args, ctx) => ({ volumes: ctx.pool.listVolumes() }),
  }),
  defineCommand({
    name: 'volume.info',
    summary: 'show one volume',
    args: z.strictObject({ name: volumeNameArg }),
    run: ({ name }, ctx) => {
      const volume = requireVolume(ctx, name);
      const openConnections = ctx.connections().filter((c) => c.export === name).length;
      return { ...volume.info(), openConnections };
    },
  }),
  defineCommand({
    name: 'volume.resize',
    summary: 'grow or shrink a volume',
    args: z.strictObject({ name: volumeNameArg, size: sizeArg }),
    run: async ({ name, size }, ctx) => {
      requireVolume(ctx, name);
      const info = await ctx.pool.resizeVolume(name, size);
      ctx.log.info({ volume: name, size }, 'volume resized');
      return info;
    },
  }),
  defineCommand({
    name: 'volume.delete',
    summary: 'delete a volume and free its space',
    args: z.strictObject({ name: volumeNameArg, force: z.boolean().optional() }),
    run: async ({ name, force }, ctx) => {
      requireVolume(ctx, name);
      const open = ctx.connections().filter((c) => c.export === name).length;
      if (open > 0) {
        if (!force) {
          throw new ControlError('EBUSY', `volume '${name}' has ${open} open NBD connection(s); disconnect them or use force`);
        }
        await ctx.disconnectExport(name);
      }
      // a replica's image metadata goes with it
      const kind = ctx.pool.volume(name)!.info().kind;
      if (kind === 'replica') await deleteReplica(ctx.pool, name);
      // deleting a diff export is abandoning it: its generations go into the next diff again
      else if (kind === 'diff-export') await removeDiffExport(ctx.pool, name, { abandon: true, log: ctx.log });
      else await ctx.pool.deleteVolume(name);
      ctx.log.info({ volume: name }, 'volume deleted');
      return { deleted: name };
    },
  }),
  defineCommand({
    name: 'volume.generations',
    summary: 'current generation and the per-generation chunk counts (and with map, the changed ranges)',
    args: z.strictObject({ name: volumeNameArg, map: z.boolean().optional() }),
    run: ({ name, map }, ctx) => {
      const volume = requireVolume(ctx, name);
      const { current, counts } = volume.generations();
      const chunkSize = ctx.pool.chunkSize;
      return {
        name,
        current,
        chunkSize,
        counts: counts.map((c) => ({ generation: c.generation, chunks: c.chunks, bytes: c.chunks * chunkSize })),
        ...(map ? { map: changedRanges(volume, chunkSize) } : {}),
      };
    },
  }),
  defineCommand({
    name: 'volume.advance-generation',
    summary: 'close the current generation and start the next one (backups do this at their snapshot point)',
    args: z.strictObject({ name: volumeNameArg }),
    run: async ({ name }, ctx) => {
      const volume = requireVolume(ctx, name);
      const previous = volume.generations().current;
      const current = await volume.advanceGeneration();
      ctx.log.info({ volume: name, previous, current }, 'generation advanced');
      return { name, previous, current };
    },
  }),
];

/** Byte ranges of chunks changed since the base (generation >= 1), runs of equal generation merged. */
function changedRanges(volume: Volume, chunkSize: number): Array<{ offset: number; length: number; generation: number }> {
  const ranges: Array<{ offset: number; length: number; generation: number }> = [];
  for (const chunk of volume.changedChunks(1)) {
    const generation = volume.chunkGeneration(chunk);
    const offset = chunk * chunkSize;
    const length = Math.min(chunkSize, volume.size - offset);
    const last = ranges[ranges.length - 1];
    if (last && last.generation === generation && last.offset + last.length === offset) last.length += length;
    else ranges.push({ offset, length, generation });
  }
  return ranges;
}
