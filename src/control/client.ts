/** Client side of the control socket, used by the CLI and by tests. */
import net from 'node:net';
import { LineSplitter, type ControlResponse } from './protocol.js';

export class ControlClientError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface CallOptions {
  onProgress?: (done: number, total: number) => void;
  timeoutMs?: number;
}

export class ControlClient {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void; opts: CallOptions }>();
  private closedError: Error | undefined;

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    const splitter = new LineSplitter(
      (line) => this.onLine(line),
      () => this.failAll(new ControlClientError('EBADREPLY', 'reply line too long')),
    );
    socket.on('data', (chunk: string) => splitter.push(chunk));
    socket.on('error', (err) => this.failAll(err));
    socket.on('close', () => this.failAll(new ControlClientError('ECLOSED', 'control connection closed')));
  }

  static connect(path: string): Promise<ControlClient> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(path);
      socket.once('connect', () => {
        socket.off('error', onError);
        resolve(new ControlClient(socket));
      });
      const onError = (err: NodeJS.ErrnoException) => {
        const hint =
          err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
            ? `no thinvault daemon answers on ${path} (is 'thinvault serve' running for this pool?)`
            : `cannot connect to ${path}: ${err.message}`;
        reject(new ControlClientError('ENOTRUNNING', hint));
      };
      socket.once('error', onError);
    });
  }

  call<T = unknown>(cmd: string, args?: Record<string, unknown>, opts: CallOptions = {}): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      if (opts.timeoutMs) {
        timer = setTimeout(() => {
          this.waiting.delete(id);
          reject(new ControlClientError('ETIMEDOUT', `${cmd}: no reply within ${opts.timeoutMs} ms`));
        }, opts.timeoutMs);
      }
      this.waiting.set(id, {
        resolve: (v) => {
          if (timer) clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          if (timer) clearTimeout(timer);
          reject(e);
        },
        opts,
      });
      this.socket.write(JSON.stringify({ id, cmd, args: args ?? {} }) + '\n');
    });
  }

  close(): void {
    this.socket.end();
  }

  private onLine(line: string): void {
    let msg: ControlResponse;
    try {
      msg = JSON.parse(line) as ControlResponse;
    } catch {
      return;
    }
    if (typeof msg.id !== 'number') return;
    const entry = this.waiting.get(msg.id);
    if (!entry) return;
    if ('progress' in msg) {
      entry.opts.onProgress?.(msg.progress.done, msg.progress.total);
      return;
    }
    this.waiting.delete(msg.id);
    if (msg.ok) entry.resolve(msg.result);
    else entry.reject(new ControlClientError(msg.error.code, msg.error.message));
  }

  private failAll(err: Error): void {
    this.closedError ??= err;
    for (const [id, entry] of this.waiting) {
      this.waiting.delete(id);
      entry.reject(err);
    }
  }
}
