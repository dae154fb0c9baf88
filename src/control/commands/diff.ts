/** Difference backups as pseudo-devices for dd (seed 002): `diff export|list|remove` and `restore export|status|remove`. */
import { z } from 'zod';
import { createDiffExport, diffExportInfo, listDiffExports, removeDiffExport } from '../../backup/diff-export.js';
import { defineCommand, sizeArg, volumeNameArg } from '../command.js';
import { ControlError } from '../protocol.js';
import { ensureNoClients } from './snapshot.js';

export const diffCommands = [
  defineCommand({
    name: 'diff.export',
    summary: 'present the diff stream of generations K..G as a read-only NBD export NAME (size = stream size); VOL moves to G+1',
    args: z.strictObject({ volume: volumeNameArg, name: volumeNameArg, scope: z.number().int().min(1).max(0xffff_fffe).optional() }),
    run: (a, ctx, progress) => {
      if (ctx.restoreSessions.get(a.name)) throw new ControlError('EEXIST', `'${a.name}' is a restore export`);
      return createDiffExport(ctx.pool, a.volume, a.name, { scope: a.scope, log: ctx.log, progress });
    },
  }),
  defineCommand({
    name: 'diff.list',
    summary: 'the diff exports and what they hold',
    args: z.strictObject({}),
    run: (_a, ctx) => ({ diffs: listDiffExports(ctx.pool) }),
  }),
  defineCommand({
    name: 'diff.info',
    summary: 'one diff export',
    args: z.strictObject({ name: volumeNameArg }),
    run: (a, ctx) => diffExportInfo(ctx.pool, a.name),
  }),
  defineCommand({
    name: 'diff.remove',
    summary: 'remove a diff export: its generations count as dumped (abandon: they go into the next diff again)',
    args: z.strictObject({ name: volumeNameArg, abandon: z.boolean().optional(), force: z.boolean().optional() }),
    run: async (a, ctx) => {
      diffExportInfo(ctx.pool, a.name);
      await ensureNoClients(ctx, a.name, a.force, 'remove it');
      return removeDiffExport(ctx.pool, a.name, { abandon: a.abandon, log: ctx.log });
    },
  }),
  defineCommand({
    name: 'restore.export',
    summary: 'a write-only NBD export NAME taking a stream written in order (dd); staged, verified, then applied (into VOL or as NEWVOL)',
    args: z.strictObject({ name: volumeNameArg, into: volumeNameArg.optional(), as: volumeNameArg.optional(), size: sizeArg.optional() }),
    run: async (a, ctx) => {
      if (ctx.pool.volume(a.name)) throw new ControlError('EEXIST', `'${a.name}' is a volume name; a restore export needs a name of its own`);
      if (a.into) await ensureNoClients(ctx, a.into, false, 'restore into it');
      return ctx.restoreSessions.create(a.name, { into: a.into, as: a.as }, a.size).info();
    },
  }),
  defineCommand({
    name: 'restore.status',
    summary: 'restore exports: state (waiting, receiving, done, failed), bytes, the result or the reason it failed',
    args: z.strictObject({ name: volumeNameArg.optional() }),
    run: (a, ctx) => {
      if (a.name === undefined) return { sessions: ctx.restoreSessions.list().map((s) => s.info()) };
      const s = ctx.restoreSessions.get(a.name);
      if (!s) throw new ControlError('ENOENT', `no restore export named '${a.name}'`);
      return s.info();
    },
  }),
  defineCommand({
    name: 'restore.remove',
    summary: 'remove a restore export; one still receiving is cancelled and changes nothing',
    args: z.strictObject({ name: volumeNameArg, force: z.boolean().optional() }),
    run: async (a, ctx) => {
      if (!ctx.restoreSessions.get(a.name)) throw new ControlError('ENOENT', `no restore export named '${a.name}'`);
      await ensureNoClients(ctx, a.name, a.force, 'remove it');
      return ctx.restoreSessions.remove(a.name);
    },
  }),
];
