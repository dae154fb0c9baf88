/** What a control command is: a name, an argument schema, and a handler. One module per command group. */
import { z } from 'zod';
import type { Logger } from 'pino';
import type { Pool } from '../pool/index.js';
import type { RestoreSessions } from '../backup/restore-session.js';
import { parseSize } from '../util/size.js';

/** Facts about the running daemon that commands report or act on. */
export interface DaemonContext {
  readonly pool: Pool;
  readonly log: Logger;
  /** restore sessions served as write-only NBD exports (`restore export`) */
  readonly restoreSessions: RestoreSessions;
  /** human-readable listener addresses ("127.0.0.1:10809", "unix:/run/tv.sock", ...) */
  readonly listeners: readonly string[];
  connections(): Array<{ id: number; remote: string; export: string | null; since: string; tls: boolean; requests: number; bytesRead: number; bytesWritten: number }>;
  /** closes every NBD connection to `exportName`; resolves when they are gone */
  disconnectExport(exportName: string): Promise<void>;
  /** begins an orderly shutdown (after the current reply has been sent) */
  requestStop(): void;
}

export type ProgressFn = (done: number, total: number) => void;

export interface CommandDef<S extends z.ZodType = z.ZodType> {
  name: string;
  summary: string;
  args: S;
  run(args: z.output<S>, ctx: DaemonContext, progress: ProgressFn): Promise<unknown> | unknown;
}

export function defineCommand<S extends z.ZodType>(def: CommandDef<S>): CommandDef<S> {
  return def;
}

/** No arguments at all (an absent `args` counts as `{}`). */
export const noArgs = z.strictObject({});

/** A size given as bytes or as a string such as "10GiB" (docs/control-api.md "Sizes"). */
export const sizeArg = z.union([z.number(), z.string()]).transform((value, ctx) => {
  try {
    return parseSize(value);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
});

export const volumeNameArg = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9_-][A-Za-z0-9._-]*$/, 'volume names use A-Z a-z 0-9 . _ - and do not start with "."');
