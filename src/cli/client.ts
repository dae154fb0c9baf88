/** Shared plumbing of the client subcommands: where the control socket is, calling it, printing results. */
import path from 'node:path';
import { Command, Option } from 'commander';
import { ControlClient, ControlClientError } from '../control/client.js';
import { progressReporter, type ProgressReporter } from './progress.js';

/** Work the CLI does while the daemon runs the command (relaying `-` through a pipe). */
export interface JobRelay {
  /** resolves with the command's result once both the command and the relay are done */
  during<T>(call: Promise<T>): Promise<T>;
}

export interface ClientOptions {
  pool?: string;
  control?: string;
  json?: boolean;
}

export function addClientOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--pool <POOL>', 'pool directory (control socket POOL/control.sock)').env('THINVAULT_POOL'))
    .addOption(new Option('--control <PATH>', 'control socket path').env('THINVAULT_CONTROL'))
    .option('--json', 'print the raw JSON result');
}

export function controlPath(opts: ClientOptions): string {
  if (opts.control) return opts.control;
  if (opts.pool) return path.join(opts.pool, 'control.sock');
  throw new ControlClientError('EUSAGE', 'say which daemon to talk to: --pool POOL or --control PATH (or set THINVAULT_POOL)');
}

/** Calls one control command and prints its result (JSON or `render`); failures set a non-zero exit code. */
export async function runClientCommand<T>(
  opts: ClientOptions,
  cmd: string,
  args: Record<string, unknown>,
  render: (result: T) => string,
  job?: { label: string; quiet?: boolean; resultToStderr?: boolean; around?: JobRelay },
): Promise<void> {
  let client: ControlClient | undefined;
  let progress: ProgressReporter | undefined;
  try {
    client = await ControlClient.connect(controlPath(opts));
    if (job && !job.quiet) progress = progressReporter(job.label);
    const call = client.call<T>(cmd, args, progress ? { onProgress: (done, total) => progress!.update(done, total) } : {});
    const result = job?.around ? await job.around.during(call) : await call;
    progress?.stop();
    progress = undefined;
    const out = job?.resultToStderr ? process.stderr : process.stdout;
    out.write((opts.json ? JSON.stringify(result, null, 2) : render(result)) + '\n');
  } catch (err) {
    const e = err as ControlClientError;
    if (opts.json) process.stdout.write(JSON.stringify({ error: { code: e.code ?? 'ERROR', message: e.message } }) + '\n');
    process.stderr.write(`thinvault: ${e.message}${e.code ? ` [${e.code}]` : ''}\n`);
    process.exitCode = 1;
  } finally {
    progress?.stop();
    client?.close();
  }
}
