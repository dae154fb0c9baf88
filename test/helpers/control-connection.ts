/**
 * A raw NDJSON connection to the daemon's control socket for the kill -9 suites: it sends commands (and follows the
 * progress events of long jobs) and answers `undefined` instead of throwing when the daemon dies under it.
 */
import net from 'node:net';

export interface Reply {
  ok: boolean;
  result?: Record<string, unknown>;
  error?: { code: string; message: string };
}

/** One NDJSON connection to the control socket (to send a long job and kill the daemon at a chosen point of it). */
export class ControlConnection {
  private buf = '';
  private nextId = 1;
  private waiting = new Map<number, { done: (r: Reply | undefined) => void; progress?: (p: { done: number; total: number }) => void }>();
  dead = false;

  private constructor(private s: net.Socket) {
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        let msg: { id: number; ok?: boolean; result?: Record<string, unknown>; error?: Reply['error']; progress?: { done: number; total: number } };
        try {
          msg = JSON.parse(line);
        } catch {
          continue;
        }
        const w = this.waiting.get(msg.id);
        if (!w) continue;
        if (msg.ok === undefined) {
          if (msg.progress) w.progress?.(msg.progress);
          continue;
        }
        this.waiting.delete(msg.id);
        w.done({ ok: msg.ok, result: msg.result, error: msg.error });
      }
    });
    const fail = () => {
      this.dead = true;
      for (const w of this.waiting.values()) w.done(undefined);
      this.waiting.clear();
    };
    s.on('error', fail);
    s.on('close', fail);
  }

  static open(socketPath: string): Promise<ControlConnection> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(socketPath);
      s.once('connect', () => resolve(new ControlConnection(s)));
      s.once('error', reject);
    });
  }

  /** undefined when the connection died first (the daemon was killed) or after `timeoutMs` */
  call(cmd: string, args: object, progress?: (p: { done: number; total: number }) => void, timeoutMs = 60_000): Promise<Reply | undefined> {
    if (this.dead) return Promise.resolve(undefined);
    const id = this.nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        resolve(undefined);
      }, timeoutMs);
      this.waiting.set(id, {
        done: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        progress,
      });
      this.s.write(JSON.stringify({ id, cmd, args }) + '\n');
    });
  }

  close(): void {
    this.s.destroy();
  }
}
