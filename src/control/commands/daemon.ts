import { defineCommand, noArgs } from '../command.js';
import { CONTROL_API_VERSION } from '../protocol.js';
import { VERSION } from '../../version.js';

export const daemonCommands = [
  defineCommand({
    name: 'ping',
    summary: 'check that the daemon answers',
    args: noArgs,
    run: () => ({ version: VERSION, apiVersion: CONTROL_API_VERSION, pid: process.pid }),
  }),
  defineCommand({
    name: 'status',
    summary: 'pool usage, volumes, listeners and NBD connections',
    args: noArgs,
    run: (_args, ctx) => ({
      pool: ctx.pool.stats(),
      volumes: ctx.pool.listVolumes(),
      connections: ctx.connections(),
      listeners: ctx.listeners,
    }),
  }),
  defineCommand({
    name: 'pool.check',
    summary: 'read-only consistency check of the pool metadata',
    args: noArgs,
    run: (_args, ctx) => ctx.pool.check(),
  }),
  defineCommand({
    name: 'daemon.stop',
    summary: 'drain connections, checkpoint the pool and exit',
    args: noArgs,
    run: (_args, ctx) => {
      ctx.requestStop();
      return { stopping: true };
    },
  }),
];
