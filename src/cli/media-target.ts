/**
 * Media targets as the daemon must see them: relative paths made absolute (the daemon has its own working
 * directory), and `-` (stdin/stdout of this CLI process, which the daemon cannot reach) relayed through a named pipe
 * in a private temporary directory: the daemon writes or reads the pipe, this process copies it to stdout or from
 * stdin.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { JobRelay } from './client.js';

/** `tap:PATH?opts#N`, `tape:DEV`, `file:PATH` or a path: the same target with an absolute path */
export function absoluteTarget(spec: string): string {
  if (spec === '-') return spec;
  for (const prefix of ['tap:', 'tape:', 'file:']) {
    if (spec.startsWith(prefix)) {
      const rest = spec.slice(prefix.length);
      const cut = prefix === 'file:' ? rest.length : Math.min(...['?', '#'].map((c) => (rest.includes(c) ? rest.indexOf(c) : rest.length)));
      return prefix + path.resolve(rest.slice(0, cut)) + rest.slice(cut);
    }
  }
  return path.resolve(spec);
}

export interface PreparedTarget {
  /** what to send to the daemon */
  spec: string;
  /** set for `-`: copies between the pipe and stdin/stdout while the command runs */
  relay?: JobRelay;
}

/** how long a failed command keeps releasing our end of the pipe before it stops waiting for the copy */
const UNBLOCK_GIVE_UP_MS = 5000;

/** `direction`: 'out' = the daemon writes (backup to stdout), 'in' = the daemon reads (restore from stdin) */
export function prepareTarget(spec: string, direction: 'out' | 'in'): PreparedTarget {
  if (spec !== '-') return { spec: absoluteTarget(spec) };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinvault-pipe-'));
  const fifo = path.join(dir, direction === 'out' ? 'stdout' : 'stdin');
  execFileSync('mkfifo', ['-m', '600', fifo]);
  const cleanup = () => fs.rmSync(dir, { recursive: true, force: true });
  const relay: JobRelay = {
    async during<T>(call: Promise<T>): Promise<T> {
      const copy =
        direction === 'out'
          ? pipeline(fs.createReadStream(fifo), process.stdout, { end: false })
          : pipeline(process.stdin, fs.createWriteStream(fifo));
      // awaited below; until then a failed copy (EPIPE: the daemon refused the stream after its header and closed
      // the pipe) must not count as an unhandled rejection, which would kill this process before it prints why
      copy.catch(() => {});
      // If the daemon fails before it opens the pipe, our side may be blocked opening it (or about to be): open the
      // other end ourselves, again and again until our copy has given up, since an open made before ours started
      // would not release it (that raced, and hung the CLI now and then).
      let settled = false;
      void copy.then(
        () => (settled = true),
        () => (settled = true),
      );
      const unblockUntilSettled = async () => {
        const flags = (direction === 'out' ? fs.constants.O_WRONLY : fs.constants.O_RDONLY) | fs.constants.O_NONBLOCK;
        const deadline = Date.now() + UNBLOCK_GIVE_UP_MS;
        while (!settled && Date.now() < deadline) {
          try {
            fs.closeSync(fs.openSync(fifo, flags));
          } catch {
            // no reader yet (ENXIO for a writer): our side has not opened the pipe so far
          }
          await new Promise((r) => setTimeout(r, 20));
        }
      };
      try {
        const result = await call.catch(async (err) => {
          await unblockUntilSettled();
          throw err;
        });
        await copy;
        return result;
      } finally {
        if (settled) await copy.catch(() => {});
        cleanup();
      }
    },
  };
  return { spec: `file:${fifo}`, relay };
}
