/** Snapshots (seed 003 instant virtual copies) and full copies (seed 000 pseudo-copy). */
import { z } from 'zod';
import { VolumeFlag, type Pool, type VolumeInfo } from '../../pool/index.js';
import { ControlError } from '../protocol.js';
import { defineCommand, volumeNameArg, type DaemonContext } from '../command.js';

function requireKind(pool: Pool, name: string, kind: VolumeInfo['kind'], what: string) {
  const volume = pool.volume(name);
  if (!volume || volume.info().kind === 'internal') throw new ControlError('ENOENT', `no ${what} named '${name}'`);
  if (volume.info().kind !== kind) throw new ControlError('EINVAL', `'${name}' is a ${volume.info().kind}, not a ${what}`);
  return volume;
}

/** closes the NBD connections to `name` (with force) or refuses while there are any */
export async function ensureNoClients(ctx: DaemonContext, name: string, force: boolean | undefined, action: string): Promise<void> {
  const open = ctx.connections().filter((c) => c.export === name).length;
  if (open === 0) return;
  if (!force) throw new ControlError('EBUSY', `'${name}' has ${open} open NBD connection(s); disconnect them or use force to ${action}`);
  await ctx.disconnectExport(name);
}

export const snapshotCommands = [
  defineCommand({
    name: 'snapshot.create',
    summary: 'instant point-in-time copy of a volume (read-only unless writable)',
    args: z.strictObject({ source: volumeNameArg, name: volumeNameArg, writable: z.boolean().optional() }),
    run: async ({ source, name, writable }, ctx) => {
      const t0 = process.hrtime.bigint();
      const info = await ctx.pool.cloneVolume(source, name, {
        flags: VolumeFlag.SNAPSHOT | (writable ? 0 : VolumeFlag.READ_ONLY),
      });
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      ctx.log.info({ source, snapshot: name, writable: !!writable, ms }, 'snapshot created');
      const { closedGeneration: _closed, ...rest } = info;
      return { ...rest, source, createMs: ms };
    },
  }),
  defineCommand({
    name: 'snapshot.list',
    summary: 'list snapshots (of one source with source)',
    args: z.strictObject({ source: volumeNameArg.optional() }),
    run: ({ source }, ctx) => {
      let snaps = ctx.pool.listVolumes().filter((v) => v.kind === 'snapshot');
      if (source !== undefined) {
        const src = ctx.pool.volume(source);
        if (!src) throw new ControlError('ENOENT', `no volume named '${source}'`);
        snaps = snaps.filter((s) => ctx.pool.volumeLineage(s.name).source?.uuid === src.uuid);
      }
      return { snapshots: snaps };
    },
  }),
  defineCommand({
    name: 'snapshot.info',
    summary: 'show one snapshot; with showSource, the hidden identity of the volume it was taken from',
    args: z.strictObject({ name: volumeNameArg, showSource: z.boolean().optional() }),
    run: ({ name, showSource }, ctx) => {
      const info = requireKind(ctx.pool, name, 'snapshot', 'snapshot').info();
      const openConnections = ctx.connections().filter((c) => c.export === name).length;
      if (!showSource) return { ...info, openConnections };
      const { source, origin } = ctx.pool.volumeLineage(name);
      return { ...info, openConnections, source, origin };
    },
  }),
  defineCommand({
    name: 'snapshot.delete',
    summary: 'delete a snapshot; chunks no other volume shares are freed',
    args: z.strictObject({ name: volumeNameArg, force: z.boolean().optional() }),
    run: async ({ name, force }, ctx) => {
      requireKind(ctx.pool, name, 'snapshot', 'snapshot');
      await ensureNoClients(ctx, name, force, 'delete it');
      await ctx.pool.deleteVolume(name);
      ctx.log.info({ snapshot: name }, 'snapshot deleted');
      return { deleted: name };
    },
  }),
  defineCommand({
    name: 'volume.copy',
    summary: 'full copy, usable at once; a background job copies every chunk so it stops sharing with the source',
    args: z.strictObject({ source: volumeNameArg, name: volumeNameArg, wait: z.boolean().optional() }),
    run: async ({ source, name, wait }, ctx, progress) => {
      const info = await ctx.pool.cloneVolume(source, name, { flags: VolumeFlag.COPYING });
      ctx.log.info({ source, copy: name }, 'volume copy started');
      const { closedGeneration: _closed, ...rest } = info;
      if (!wait) return { ...rest, source };
      const timer = setInterval(() => {
        const p = ctx.pool.copyProgress(name)[0];
        if (p) progress(p.doneChunks * ctx.pool.chunkSize, p.totalChunks * ctx.pool.chunkSize);
      }, 200);
      try {
        const done = await ctx.pool.waitForCopy(name);
        if (done?.error) throw new ControlError('EIO', `background copy of '${name}' stopped: ${done.error}`);
        return { ...ctx.pool.volume(name)!.info(), source, copiedChunks: done?.copiedChunks ?? 0 };
      } finally {
        clearInterval(timer);
      }
    },
  }),
  defineCommand({
    name: 'volume.copy-status',
    summary: 'progress of background copies',
    args: z.strictObject({ name: volumeNameArg.optional() }),
    run: ({ name }, ctx) => ({ copies: ctx.pool.copyProgress(name) }),
  }),
];
