/**
 * The example scripts in examples/ run as a user would run them, so they cannot rot: quickstart.sh and
 * generations.sh and backup-restore.sh always; nbdfuse-mount.sh where it can run (root, /dev/fuse, loop devices, nbdfuse).
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { ROOT, CLI, ensureBuilt, tempDir } from './helpers/daemon.js';

const execFileP = promisify(execFile);

async function runExample(script: string, args: string[], timeoutMs = 120_000): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileP('bash', [path.join(ROOT, 'examples', script), ...args], {
      timeout: timeoutMs,
      killSignal: 'SIGTERM',
      // the checkout's CLI, not some other `thinvault` on PATH
      env: { ...process.env, THINVAULT: `${process.execPath} ${CLI}` },
      maxBuffer: 16 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string; message: string };
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? e.message };
  }
}

function gone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

const canFuse = (() => {
  try {
    execFileSync('sh', ['-c', 'command -v nbdfuse && command -v mkfs.ext4 && test -c /dev/fuse && test -e /dev/loop-control && test "$(id -u)" = 0'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

describe('examples/', () => {
  beforeAll(async () => {
    await ensureBuilt();
  }, 120_000);

  it('quickstart.sh: init, serve, create, nbdinfo, qemu-io write/read, map, discard, generations, status, stop', async () => {
    const work = tempDir('tv-example-qs-');
    try {
      const r = await runExample('quickstart.sh', [work]);
      const all = `${r.stdout}\n${r.stderr}`;
      expect(r.code, all).toBe(0);
      const pid = Number(/daemon PID (\d+)/.exec(r.stdout)?.[1]);
      expect(pid, all).toBeGreaterThan(0);
      expect(gone(pid), `daemon ${pid} still running after the script`).toBe(true);
      expect(r.stdout).toMatch(/export-size: 1073741824/);
      expect(r.stdout).toMatch(/^\s+0\s+1048576\s+0\s+data$/m); // the 1 MiB written at 0 is allocated
      expect(r.stdout).toMatch(/131072\s+0\.0%\s+0 data/); // after the discard: 2 chunks left
      expect(r.stdout).toMatch(/current generation: 1/);
      expect(r.stdout).toMatch(/quickstart done/);
      // the clean shutdown left a pool that opens without recovery
      expect(fs.readFileSync(path.join(work, 'daemon.log'), 'utf8')).toMatch(/pool closed cleanly/);
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  }, 120_000);

  it('backup-restore.sh: snapshot, two backups on one tape image, media list, restores equal to their points', async () => {
    const work = tempDir('tv-example-backup-');
    try {
      const r = await runExample('backup-restore.sh', [work]);
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/1\s+full\s+db .* complete\n2\s+full\s+db .* complete/);
      expect(r.stdout.match(/Images are identical\./g)).toHaveLength(2);
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  });

  it('diff-backup.sh: full + diffs on one tape image, an overlapping scope, estimate, dirty bitmap, chain restore without the redundant diff, gap refused', async () => {
    const work = tempDir('tv-example-diff-');
    try {
      const r = await runExample('diff-backup.sh', [work]);
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
      // the estimate printed before Tuesday's diff is the size of the stream the diff wrote (tape file #2)
      const estimated = Number(/stream size:\s+(\d+) bytes/.exec(r.stdout)?.[1]);
      expect(estimated).toBe(606208);
      expect(r.stdout).toMatch(/1\s+full\s+db .* complete\n2\s+diff\s+db .*592 KiB\s+1\.\.1 .*complete\n3\s+diff\s+db .*1\.\.2 .*complete\n4\s+diff\s+db .*3\.\.3 .*complete/);
      expect(r.stdout).toMatch(/^\s+33554432\s+131072\s+1\s+dirty$/m);
      expect(r.stdout).toMatch(/Images are identical\./);
      expect(r.stderr).toMatch(/generation\(s\) 1\.\.2 are missing/);
      expect(r.stdout).toMatch(/diff-backup done/);
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  }, 120_000);

  it('generations.sh: changed ranges per generation after advance-generation', async () => {
    const work = tempDir('tv-example-gen-');
    try {
      const r = await runExample('generations.sh', [work]);
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
      // the last JSON document printed is the map after generation 2's writes
      const docs = r.stdout.split(/\n(?=\{)/).filter((s) => s.startsWith('{')).map((s) => JSON.parse(s.slice(0, s.lastIndexOf('}') + 1)));
      const last = docs[docs.length - 1] as { current: number; map: Array<{ offset: number; length: number; generation: number }> };
      expect(last.current).toBe(2);
      expect(last.map.filter((m) => m.generation === 2)).toEqual([
        { offset: 512 * 1024, length: 65536, generation: 2 },
        { offset: 200 * 1024 * 1024, length: 65536, generation: 2 },
      ]);
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  }, 120_000);

  (canFuse ? it : it.skip)('nbdfuse-mount.sh: ext4 on a volume through nbdfuse and a loop device', async () => {
    const work = tempDir('tv-example-fuse-');
    try {
      const r = await runExample('nbdfuse-mount.sh', [work]);
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/random\.bin/);
      expect(fs.readFileSync('/proc/mounts', 'utf8')).not.toContain(work); // nothing left mounted
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  }, 180_000);
});
