/** Compacted replicas, full backups, restores and media listings (seed 000, 003; docs/stream-format.md). */
import { z } from 'zod';
import { backupDiff, backupFull, estimateBackup, listMedia } from '../../backup/jobs.js';
import { restoreFromMedia, restoreStream } from '../../backup/restore.js';
import { ReplicaImage, createReplica, deleteReplica, replicaInfo } from '../../backup/replica.js';
import { ControlError } from '../protocol.js';
import { defineCommand, volumeNameArg } from '../command.js';
import { ensureNoClients } from './snapshot.js';

/** a media target as the daemon sees it: `-` is not allowed here (the CLI turns it into a FIFO path) */
const targetArg = z
  .string()
  .min(1)
  .max(4096)
  .refine((t) => t !== '-', 'the daemon cannot reach your terminal: use the CLI, which relays - through a pipe');

const restoreTo = {
  as: volumeNameArg.optional(),
  into: volumeNameArg.optional(),
  verifyOnly: z.boolean().optional(),
  force: z.boolean().optional(),
};

const generationArg = z.number().int().min(1).max(0xffff_fffe);

function checkRestoreTo(a: { as?: string; into?: string; verifyOnly?: boolean }): void {
  if (a.as !== undefined && a.into !== undefined) throw new ControlError('EINVAL', 'give either as or into, not both');
  if (!a.verifyOnly && a.as === undefined && a.into === undefined) throw new ControlError('EINVAL', 'say where to restore: as NEWVOL or into VOL (or verifyOnly)');
}

export const backupCommands = [
  defineCommand({
    name: 'replica.create',
    summary: 'compacted replica of a volume: its allocated chunks packed behind a table, served read-only as an image',
    args: z.strictObject({ source: volumeNameArg, name: volumeNameArg }),
    run: (a, ctx, progress) => createReplica(ctx.pool, a.source, a.name, { log: ctx.log, progress }),
  }),
  defineCommand({
    name: 'replica.list',
    summary: 'list replicas',
    args: z.strictObject({}),
    run: (_a, ctx) => ({
      replicas: ctx.pool
        .listVolumes()
        .filter((v) => v.kind === 'replica')
        .map((v) => replicaInfo(ctx.pool, v.name)),
    }),
  }),
  defineCommand({
    name: 'replica.info',
    summary: 'show one replica',
    args: z.strictObject({ name: volumeNameArg }),
    run: (a, ctx) => replicaInfo(ctx.pool, a.name),
  }),
  defineCommand({
    name: 'replica.delete',
    summary: 'delete a replica',
    args: z.strictObject({ name: volumeNameArg, force: z.boolean().optional() }),
    run: async (a, ctx) => {
      replicaInfo(ctx.pool, a.name);
      await ensureNoClients(ctx, a.name, a.force, 'delete it');
      await deleteReplica(ctx.pool, a.name);
      ctx.log.info({ replica: a.name }, 'replica deleted');
      return { deleted: a.name };
    },
  }),
  defineCommand({
    name: 'replica.restore',
    summary: 're-expand a replica into a new thin volume (as) or back into a volume of the same size (into)',
    args: z.strictObject({ name: volumeNameArg, ...restoreTo }),
    run: async (a, ctx, progress) => {
      checkRestoreTo(a);
      if (a.into) await ensureNoClients(ctx, a.into, a.force, 'restore into it');
      const image = ReplicaImage.open(ctx.pool, a.name);
      return restoreStream(ctx.pool, image.reader(), { as: a.as, into: a.into, verifyOnly: a.verifyOnly, log: ctx.log, progress, from: `replica ${a.name}` });
    },
  }),
  defineCommand({
    name: 'backup.full',
    summary: 'full backup: hidden snapshot, compacted stream to the target, generation map restarted at the snapshot',
    args: z.strictObject({ volume: volumeNameArg, to: targetArg, overwrite: z.boolean().optional(), compress: z.boolean().optional() }),
    run: (a, ctx, progress) => backupFull(ctx.pool, a.volume, a.to, { overwrite: a.overwrite, compress: a.compress, log: ctx.log, progress }),
  }),
  defineCommand({
    name: 'backup.diff',
    summary: 'difference backup: the chunks changed in generations K..G from a point-in-time view; the volume moves to G+1',
    args: z.strictObject({ volume: volumeNameArg, to: targetArg, scope: generationArg.optional(), overwrite: z.boolean().optional(), compress: z.boolean().optional() }),
    run: (a, ctx, progress) => backupDiff(ctx.pool, a.volume, a.to, { scope: a.scope, overwrite: a.overwrite, compress: a.compress, log: ctx.log, progress }),
  }),
  defineCommand({
    name: 'backup.estimate',
    summary: 'exact size of the stream a diff (or --full) backup would write now, from the count table alone',
    args: z.strictObject({ volume: volumeNameArg, scope: generationArg.optional(), full: z.boolean().optional(), compress: z.boolean().optional() }),
    run: (a, ctx) => estimateBackup(ctx.pool, a.volume, { scope: a.scope, full: a.full, compress: a.compress }),
  }),
  defineCommand({
    name: 'restore',
    summary: 'restore a stream, or a full backup and its diffs in order: lineage and every CRC verified before anything changes',
    args: z.strictObject({
      from: z.union([targetArg, z.array(targetArg).min(1).max(1024)]),
      skipGenerations: z.array(generationArg).max(1024).optional(),
      ...restoreTo,
    }),
    run: async (a, ctx, progress) => {
      checkRestoreTo(a);
      if (a.into) await ensureNoClients(ctx, a.into, a.force, 'restore into it');
      const from = typeof a.from === 'string' ? [a.from] : a.from;
      return restoreFromMedia(ctx.pool, from, { as: a.as, into: a.into, verifyOnly: a.verifyOnly, skipGenerations: a.skipGenerations, log: ctx.log, progress });
    },
  }),
  defineCommand({
    name: 'media.list',
    summary: 'what a medium holds (kind, volume, time, size, generations), from the stream headers only',
    args: z.strictObject({ target: targetArg }),
    run: (a) => listMedia(a.target),
  }),
];
