/**
 * The control socket: newline-delimited JSON requests, one handler per command (docs/control-api.md).
 * Every request is validated against its command's schema; nothing a client sends can crash the daemon.
 */
import net from 'node:net';
import fs from 'node:fs';
import type { Logger } from 'pino';
import { z } from 'zod';
import { ControlError, LineSplitter, type ControlRequest, type ControlResponse, type RequestId } from './protocol.js';
import type { CommandDef, DaemonContext } from './command.js';
import { volumeCommands } from './commands/volume.js';
import { daemonCommands } from './commands/daemon.js';
import { snapshotCommands } from './commands/snapshot.js';
import { backupCommands } from './commands/backup.js';
import { diffCommands } from './commands/diff.js';

export const ALL_COMMANDS: readonly CommandDef[] = [...daemonCommands, ...volumeCommands, ...snapshotCommands, ...backupCommands, ...diffCommands] as CommandDef[];

/** Error codes of the layers below (pool, media, streams) that reach the client unchanged (docs/control-api.md). */
const PASSTHROUGH_CODES = new Set([
  'ENOENT', 'EEXIST', 'EBUSY', 'ENOSPC', 'EINVAL', 'EIO', 'ELOCKED', 'ECORRUPT', 'EPERM', 'EOVERFLOW',
  // media
  'EACCES', 'ENOTTAPE', 'ENOMEDIUM', 'EROFS', 'ENOTSUP', 'EMSGSIZE', 'ETRUNC',
  // streams
  'ENOTSTREAM', 'EUNSUPPORTED', 'ETRUNCATED',
]);

const requestShape = z.object({
  id: z.union([z.number(), z.string()]),
  cmd: z.string(),
  args: z.record(z.string(), z.unknown()).optional(),
});

export class ControlServer {
  private readonly server = net.createServer((socket) => this.serve(socket));
  private readonly commands = new Map<string, CommandDef>();
  private readonly sockets = new Set<net.Socket>();

  constructor(
    private readonly ctx: DaemonContext,
    private readonly log: Logger,
    commands: readonly CommandDef[] = ALL_COMMANDS,
  ) {
    for (const def of commands) this.commands.set(def.name, def);
  }

  /** Listen on `path` (mode 0600). The caller holds the pool lock, so a leftover socket file is stale. */
  async listen(path: string): Promise<void> {
    fs.rmSync(path, { force: true });
    const oldMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        this.server.once('error', reject);
        this.server.listen(path, () => {
          this.server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(oldMask);
    }
    fs.chmodSync(path, 0o600);
    this.path = path;
  }

  private path: string | undefined;

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.end();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    if (this.path) fs.rmSync(this.path, { force: true });
  }

  private serve(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.setEncoding('utf8');
    const send = (response: ControlResponse) => {
      if (!socket.destroyed) socket.write(JSON.stringify(response) + '\n');
    };
    const splitter = new LineSplitter(
      (line) => void this.handleLine(line, send),
      () => {
        send({ id: null, ok: false, error: { code: 'EBADREQ', message: 'request line longer than 1 MiB' } });
        socket.end();
      },
    );
    socket.on('data', (chunk: string) => splitter.push(chunk));
    socket.on('error', (err) => this.log.debug({ err }, 'control client error'));
    socket.on('close', () => this.sockets.delete(socket));
  }

  private async handleLine(line: string, send: (r: ControlResponse) => void): Promise<void> {
    let request: ControlRequest;
    try {
      const parsed = requestShape.safeParse(JSON.parse(line));
      if (!parsed.success) throw new Error('expected {"id": number|string, "cmd": string, "args"?: object}');
      request = parsed.data;
    } catch (err) {
      send({ id: null, ok: false, error: { code: 'EBADREQ', message: `bad request: ${(err as Error).message}` } });
      return;
    }
    send(await this.execute(request, (done, total) => send({ id: request.id, progress: { done, total } })));
  }

  /** Runs one request; always resolves to a reply, never throws. */
  async execute(request: ControlRequest, progress: (done: number, total: number) => void): Promise<ControlResponse> {
    const { id, cmd } = request;
    const def = this.commands.get(cmd);
    if (!def) {
      return fail(id, 'EUNKNOWNCMD', `unknown command '${cmd}' (known: ${[...this.commands.keys()].join(', ')})`);
    }
    const args = def.args.safeParse(request.args ?? {});
    if (!args.success) {
      const issues = args.error.issues.map((i) => `${i.path.join('.') || 'args'}: ${i.message}`).join('; ');
      return fail(id, 'EBADARGS', `${cmd}: ${issues}`);
    }
    try {
      const result = await def.run(args.data, this.ctx, progress);
      return { id, ok: true, result: result ?? null };
    } catch (err) {
      const e = err as Error & { code?: unknown };
      if (err instanceof ControlError) return fail(id, err.code, err.message);
      if (typeof e.code === 'string' && PASSTHROUGH_CODES.has(e.code)) return fail(id, e.code, e.message);
      this.log.error({ err, cmd }, 'control command failed');
      return fail(id, 'EINTERNAL', `${cmd} failed: ${e.message ?? String(err)}`);
    }
  }
}

function fail(id: RequestId | null, code: string, message: string): ControlResponse {
  return { id, ok: false, error: { code, message } };
}
