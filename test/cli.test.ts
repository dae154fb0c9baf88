/**
 * The CLI and the control socket against a real daemon: volume lifecycle, errors with clear messages and
 * non-zero exits, the pool lock, and a full pool answering ENOSPC and recovering after a delete.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon, cli, tempDir, tool, ensureBuilt, CLI, PYTHON, type Daemon } from './helpers/daemon.js';

function rawControl(socketPath: string, lines: string[]): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(socketPath);
    let data = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      data += d;
      const replies = data.split('\n').filter(Boolean);
      if (replies.length >= lines.length) {
        s.destroy();
        resolve(replies.map(String));
      }
    });
    s.on('error', reject);
    s.on('connect', () => s.write(lines.join('\n') + '\n'));
    setTimeout(() => reject(new Error(`no reply; got ${data}`)), 10_000).unref();
  });
}

describe('CLI and control socket', () => {
  let d: Daemon;
  beforeAll(async () => {
    d = await startDaemon();
  });
  afterAll(async () => {
    // `thinvault stop` drains, checkpoints and exits 0 by itself
    const stop = await d.cli(['stop']);
    expect(stop.code, stop.stderr).toBe(0);
    expect(await d.waitExit()).toBe(0);
  });

  it('creates, lists, inspects, resizes and deletes volumes', async () => {
    const created = await d.cli(['volume', 'create', 'alpha', '--size', '64MiB', '--json']);
    expect(created.code, created.stderr).toBe(0);
    const info = JSON.parse(created.stdout);
    expect(info).toMatchObject({ name: 'alpha', size: 64 * 1024 * 1024, generation: 1, allocatedChunks: 0 });
    expect(info.uuid).toMatch(/^[0-9a-f-]{36}$/);

    const list = await d.cli(['volume', 'list']);
    expect(list.stdout).toMatch(/alpha\s+volume\s+64 MiB/);

    const resized = await d.cli(['volume', 'resize', 'alpha', '--size', '1G', '--json']);
    expect(JSON.parse(resized.stdout).size).toBe(1024 ** 3);
    const nbdSize = await tool('nbdinfo', ['--size', d.uri('alpha')]);
    expect(nbdSize.trim()).toBe(String(1024 ** 3));

    const shown = await d.cli(['volume', 'info', 'alpha']);
    expect(shown.stdout).toMatch(/size:\s+1 GiB/);

    const deleted = await d.cli(['volume', 'delete', 'alpha']);
    expect(deleted.code).toBe(0);
    const gone = await d.cli(['volume', 'info', 'alpha']);
    expect(gone.code).not.toBe(0);
    expect(gone.stderr).toMatch(/no volume named 'alpha'.*ENOENT/);
  });

  it('shows generations after writes', async () => {
    expect((await d.cli(['volume', 'create', 'gens', '--size', '16MiB'])).code).toBe(0);
    await tool('qemu-io', ['-f', 'raw', d.uri('gens'), '-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 4M 64k']);
    const g = JSON.parse((await d.cli(['volume', 'generations', 'gens', '--json'])).stdout);
    expect(g.current).toBe(1);
    // 1 MiB + 64 KiB = 17 chunks of 64 KiB changed in generation 1, the other 239 chunks are generation 0
    expect(g.counts).toEqual([
      { generation: 0, chunks: 256 - 17, bytes: (256 - 17) * 65536 },
      { generation: 1, chunks: 17, bytes: 17 * 65536 },
    ]);
    const text = await d.cli(['volume', 'generations', 'gens']);
    expect(text.stdout).toMatch(/current generation: 1/);

    const mapped = JSON.parse((await d.cli(['volume', 'generations', 'gens', '--map', '--json'])).stdout);
    expect(mapped.map).toEqual([
      { offset: 0, length: 1024 * 1024, generation: 1 },
      { offset: 4 * 1024 * 1024, length: 65536, generation: 1 },
    ]);
    const advanced = JSON.parse((await d.cli(['volume', 'advance-generation', 'gens', '--json'])).stdout);
    expect(advanced).toMatchObject({ previous: 1, current: 2 });
    await tool('qemu-io', ['-f', 'raw', d.uri('gens'), '-c', 'write -P 0x33 64k 4k']);
    const after = JSON.parse((await d.cli(['volume', 'generations', 'gens', '--map', '--json'])).stdout);
    expect(after.map).toEqual([
      { offset: 0, length: 65536, generation: 1 },
      { offset: 65536, length: 65536, generation: 2 },
      { offset: 131072, length: 1024 * 1024 - 131072, generation: 1 },
      { offset: 4 * 1024 * 1024, length: 65536, generation: 1 },
    ]);
    const check = await d.cli(['pool', 'check']);
    expect(check.code, check.stdout + check.stderr).toBe(0);
    expect(check.stdout).toMatch(/pool consistent/);
  });

  it('reports status with pool usage and connections', async () => {
    const s = JSON.parse((await d.cli(['status', '--json'])).stdout);
    expect(s.pool.chunkSize).toBe(65536);
    expect(s.listeners.some((l: string) => l.startsWith('unix:'))).toBe(true);
    expect(Array.isArray(s.connections)).toBe(true);
  });

  it('refuses bad arguments with a clear message and a non-zero exit', async () => {
    const badSize = await d.cli(['volume', 'create', 'x', '--size', 'lots']);
    expect(badSize.code).not.toBe(0);
    expect(badSize.stderr).toMatch(/invalid size 'lots'/);
    const badName = await d.cli(['volume', 'create', '../evil', '--size', '1M']);
    expect(badName.code).not.toBe(0);
    expect(badName.stderr).toMatch(/EBADARGS/);
    const odd = await d.cli(['volume', 'create', 'odd', '--size', '1000']);
    expect(odd.code).not.toBe(0);
    expect(odd.stderr).toMatch(/512/);
    const dup1 = await d.cli(['volume', 'create', 'dup', '--size', '1M']);
    expect(dup1.code).toBe(0);
    const dup2 = await d.cli(['volume', 'create', 'dup', '--size', '1M']);
    expect(dup2.stderr).toMatch(/EEXIST/);
    const unknown = await cli(['volume', 'frobnicate']);
    expect(unknown.code).not.toBe(0);
    const noDaemon = await cli(['status', '--control', path.join(tempDir(), 'nothing.sock')]);
    expect(noDaemon.code).not.toBe(0);
    expect(noDaemon.stderr).toMatch(/no thinvault daemon answers/);
  });

  it('answers malformed and unknown control requests without dying', async () => {
    const replies = await rawControl(d.control, [
      'this is not json',
      '{"id": 1, "cmd": "no.such.command"}',
      '{"id": 2, "cmd": "volume.create", "args": {"name": "z", "size": -5}}',
      '{"id": 3, "cmd": "volume.create", "args": {"name": "z", "size": "1M", "extra": true}}',
      '[1,2,3]',
      '{"id": 4, "cmd": "ping"}',
    ]);
    // replies to valid requests may overtake each other: match them by id
    const parsed = replies.map((r) => JSON.parse(r));
    const byId = (id: number | null) => parsed.filter((r) => r.id === id);
    expect(byId(null)).toEqual([
      expect.objectContaining({ ok: false, error: expect.objectContaining({ code: 'EBADREQ' }) }),
      expect.objectContaining({ ok: false, error: expect.objectContaining({ code: 'EBADREQ' }) }),
    ]);
    expect(byId(1)[0]).toMatchObject({ ok: false, error: { code: 'EUNKNOWNCMD' } });
    expect(byId(2)[0]).toMatchObject({ ok: false, error: { code: 'EBADARGS' } });
    expect(byId(3)[0]).toMatchObject({ ok: false, error: { code: 'EBADARGS' } });
    expect(byId(4)[0]).toMatchObject({ ok: true });
    expect(byId(4)[0].result.pid).toBe(d.child.pid);
  });

  it('refuses to delete a volume with open connections unless forced', async () => {
    expect((await d.cli(['volume', 'create', 'busy', '--size', '8MiB'])).code).toBe(0);
    // hold an NBD connection open through the handshake with nbdsh
    const { spawn } = await import('node:child_process');
    // nbdsh is `python3 -m nbd`; use Debian's python3, which has the libnbd module
    const sh = spawn('/usr/bin/python3', ['-m', 'nbd', '-u', d.uri('busy'), '-c', 'import time; time.sleep(30)'], { stdio: 'ignore' });
    try {
      let status: { connections: Array<{ export: string }> } = { connections: [] };
      for (let i = 0; i < 100 && !status.connections.some((c) => c.export === 'busy'); i++) {
        await new Promise((r) => setTimeout(r, 100));
        status = JSON.parse((await d.cli(['status', '--json'])).stdout);
      }
      const refused = await d.cli(['volume', 'delete', 'busy']);
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toMatch(/EBUSY/);
      const forced = await d.cli(['volume', 'delete', 'busy', '--force']);
      expect(forced.code, forced.stderr).toBe(0);
    } finally {
      sh.kill('SIGKILL');
    }
  });
});

describe('pool lock, init and full pool', () => {
  beforeAll(ensureBuilt);

  it('a second serve on the same pool fails clearly and the first keeps serving', async () => {
    const d = await startDaemon();
    try {
      const second = await cli(['serve', d.pool, '--socket', path.join(path.dirname(d.pool), 'second.sock')], { timeoutMs: 15_000 });
      expect(second.code).not.toBe(0);
      expect(second.stderr).toMatch(/locked|in use|another/i);
      expect(second.stderr).toContain(String(d.child.pid));
      expect((await d.cli(['status'])).code).toBe(0);
    } finally {
      await d.stop();
    }
  });

  it('restarts after kill -9 without manual clean-up (stale lock and socket files)', async () => {
    const d = await startDaemon();
    expect((await d.cli(['volume', 'create', 'v', '--size', '4MiB'])).code).toBe(0);
    await tool('qemu-io', ['-f', 'raw', d.uri('v'), '-c', 'write -P 0x5a 0 1M', '-c', 'flush']);
    await d.kill();
    expect(fs.existsSync(d.control)).toBe(true);
    const again = await startDaemon({ pool: d.pool });
    try {
      await tool('qemu-io', ['-f', 'raw', again.uri('v'), '-c', 'read -P 0x5a 0 1M']);
    } finally {
      expect(await again.stop()).toBe(0);
    }
  });

  it('init refuses bad chunk sizes and an existing pool', async () => {
    const dir = tempDir();
    const bad = await cli(['init', path.join(dir, 'p'), '--chunk-size', '3000']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/power of two/);
    expect((await cli(['init', path.join(dir, 'q'), '--chunk-size', '4KiB'])).code).toBe(0);
    const again = await cli(['init', path.join(dir, 'q')]);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/already/);
  });

  it('a full pool answers ENOSPC, keeps its data, and recovers after a delete', async () => {
    const d = await startDaemon({ initArgs: ['--capacity', '8MiB'] });
    try {
      expect((await d.cli(['volume', 'create', 'keep', '--size', '64MiB'])).code).toBe(0);
      expect((await d.cli(['volume', 'create', 'filler', '--size', '64MiB'])).code).toBe(0);
      await tool('qemu-io', ['-f', 'raw', d.uri('keep'), '-c', 'write -P 0x4b 0 2M', '-c', 'flush']);
      let failure = '';
      try {
        await tool('qemu-io', ['-f', 'raw', d.uri('filler'), '-c', 'write -P 0x46 0 16M']);
      } catch (err) {
        failure = (err as Error).message;
      }
      expect(failure).toMatch(/No space left on device/);
      await tool('qemu-io', ['-f', 'raw', d.uri('keep'), '-c', 'read -P 0x4b 0 2M']);
      const status = JSON.parse((await d.cli(['status', '--json'])).stdout);
      expect(status.pool.chunksUsed * status.pool.chunkSize).toBeLessThanOrEqual(8 * 1024 * 1024);
      expect((await d.cli(['volume', 'delete', 'filler'])).code).toBe(0);
      // freed space becomes reusable once the free is durable (a flush makes it so)
      await tool('qemu-io', ['-f', 'raw', d.uri('keep'), '-c', 'flush']);
      await tool('qemu-io', ['-f', 'raw', d.uri('keep'), '-c', 'write -P 0x4c 2M 4M', '-c', 'flush', '-c', 'read -P 0x4b 0 2M', '-c', 'read -P 0x4c 2M 4M']);
    } finally {
      expect(await d.stop()).toBe(0);
    }
  });
});

describe('stdio and socket activation through the real CLI', () => {
  beforeAll(ensureBuilt);

  it('serve --stdio serves one client on stdin/stdout, maps the empty export name, and leaves the pool consistent', async () => {
    const d = await startDaemon();
    expect((await d.cli(['volume', 'create', 'vol0', '--size', '16MiB'])).code).toBe(0);
    expect((await d.cli(['stop'])).code).toBe(0);
    expect(await d.waitExit()).toBe(0);
    // libnbd's connect_command runs the server with the NBD stream on its stdin/stdout
    const script = [
      'import nbd, sys',
      'h = nbd.NBD()',
      "h.set_export_name('')",
      `h.connect_command([${JSON.stringify(process.execPath)}, ${JSON.stringify(CLI)}, 'serve', ${JSON.stringify(d.pool)}, '--stdio', 'vol0'])`,
      'print(h.get_size())',
      "h.pwrite(b'\\x5a' * 65536, 1048576)",
      'h.flush()',
      'h.shutdown()',
    ].join('\n');
    const out = await tool(PYTHON, ['-c', script]);
    expect(out.trim()).toBe(String(16 * 1024 * 1024));
    const again = await startDaemon({ pool: d.pool });
    try {
      await tool('qemu-io', ['-f', 'raw', again.uri('vol0'), '-c', 'read -P 0x5a 1M 64k', '-c', 'read -P 0 0 1M']);
      const check = await again.cli(['pool', 'check']);
      expect(check.code, check.stdout).toBe(0);
    } finally {
      expect(await again.stop()).toBe(0);
    }
  });

  it('serve under socket activation (LISTEN_FDS) serves the pool on the inherited socket only', async () => {
    const d = await startDaemon();
    expect((await d.cli(['volume', 'create', 'activated', '--size', '8MiB'])).code).toBe(0);
    expect((await d.cli(['stop'])).code).toBe(0);
    expect(await d.waitExit()).toBe(0);
    // nbdinfo's [ CMD ] form passes a listening socket with LISTEN_PID/LISTEN_FDS, like systemd
    const list = JSON.parse(await tool('nbdinfo', ['--list', '--json', '--', '[', process.execPath, CLI, 'serve', d.pool, ']']));
    expect(list.exports.map((e: { 'export-name': string }) => e['export-name'])).toEqual(['activated']);
  });
});
