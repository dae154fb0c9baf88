/**
 * The pool's exclusive lock: flock(LOCK_EX | LOCK_NB) on POOL/lock. The kernel drops it when the holder dies
 * (kill -9 included), so a stale lock file is simply reused. The PID written into it only serves the message.
 */
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../native/index.js';
import { PoolError } from './errors.js';
import { LOCK_FILE } from './format.js';

export class PoolLock {
  private constructor(private fd: number) {}

  static acquire(dir: string): PoolLock {
    const file = path.join(dir, LOCK_FILE);
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
    let taken: boolean;
    try {
      taken = native.flock(fd, 'exclusive', true);
    } catch (err) {
      fs.closeSync(fd);
      throw new PoolError('EIO', `cannot lock ${file}: ${(err as Error).message}`, { cause: err });
    }
    if (!taken) {
      let holder = '';
      try {
        holder = fs.readFileSync(file, 'utf8').trim();
      } catch {
        // unreadable: no PID in the message
      }
      fs.closeSync(fd);
      const pid = /^\d+$/.test(holder) ? ` (held by PID ${holder})` : '';
      throw new PoolError('ELOCKED', `pool ${dir} is in use by another process${pid}; only one daemon may open a pool`);
    }
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${process.pid}\n`, 0);
    return new PoolLock(fd);
  }

  release(): void {
    if (this.fd < 0) return;
    try {
      fs.ftruncateSync(this.fd, 0);
      native.flock(this.fd, 'unlock', false);
    } finally {
      fs.closeSync(this.fd);
      this.fd = -1;
    }
  }
}
