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
      // if the daemon fails before it opens the pipe, open the other end ourselves so that our copy is not left
      // waiting for a peer that never comes
      const unblock = () => {
        try {
          const fd = fs.openSync(fifo, (direction === 'out' ? fs.constants.O_WRONLY : fs.constants.O_RDONLY) | fs.constants.O_NONBLOCK);
          fs.closeSync(fd);
        } catch {
          // no one waiting on the other end
        }
      };
      try {
        const result = await call.catch((err) => {
          unblock();
          throw err;
        });
        await copy;
        return result;
      } finally {
        await copy.catch(() => {});
        cleanup();
      }
    },
  };
  return { spec: `file:${fifo}`, relay };
}
