import { z } from 'zod';
import { ControlError } from '../protocol.js';
import { defineCommand, sizeArg, noArgs, volumeNameArg, type DaemonContext } from '../command.js';

function requireVolume(ctx: DaemonContext, name: string) {
  const volume = ctx.pool.volume(name);
  if (!volume) throw new ControlError('ENOENT', `no volume named '${name}'`);
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
      await ctx.pool.deleteVolume(name);
      ctx.log.info({ volume: name }, 'volume deleted');
      return { deleted: name };
    },
  }),
  defineCommand({
    name: 'volume.generations',
    summary: 'current generation and the per-generation chunk counts',
    args: z.strictObject({ name: volumeNameArg }),
    run: ({ name }, ctx) => {
      const volume = requireVolume(ctx, name);
      const { current, counts } = volume.generations();
      const chunkSize = ctx.pool.chunkSize;
      return {
        name,
        current,
        chunkSize,
        counts: counts.map((c) => ({ generation: c.generation, chunks: c.chunks, bytes: c.chunks * chunkSize })),
      };
    },
  }),
];
