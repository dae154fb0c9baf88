/**
 * Listeners and lifecycle: Unix sockets (stale and live socket files), systemd socket activation
 * (LISTEN_FDS) in a child process, stdio mode in a child process, close() and disconnectExport().
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { NBD_CMD_READ, NBD_CMD_WRITE } from '../src/nbd/constants.js';
import { NbdServer, systemdListenFds } from '../src/nbd/server.js';
import { buildNbdForChildren, REPO_ROOT } from './helpers/build-nbd.js';
import { MemoryExport, MemoryProvider } from './helpers/memory-export.js';
import { MiB, RawClient, pattern, run, runOk, testLogger } from './helpers/nbd-harness.js';

// real clients and child processes: generous limits for a loaded machine
vi.setConfig({ testTimeout: 60_000, hookTimeout: 180_000 });

const CHILD = path.join(REPO_ROOT, 'test', 'helpers', 'nbd-child.mjs');
let buildDir: string;
let dir: string;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinvault-nbd-listen-'));
  buildDir = await buildNbdForChildren();
}, 180_000);

afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function memServer(exports: MemoryExport[] = [new MemoryExport({ name: 'vol', size: 4 * MiB })]): { server: NbdServer; provider: MemoryProvider } {
  const provider = new MemoryProvider(exports);
  return { server: new NbdServer({ provider, logger: testLogger() }), provider };
}

describe('systemdListenFds', () => {
  it('follows sd_listen_fds: only for our pid, fds from 3', () => {
    expect(systemdListenFds({}, 100)).toEqual([]);
    expect(systemdListenFds({ LISTEN_FDS: '2' }, 100)).toEqual([]);
    expect(systemdListenFds({ LISTEN_PID: '100', LISTEN_FDS: '1' }, 100)).toEqual([3]);
    expect(systemdListenFds({ LISTEN_PID: '100', LISTEN_FDS: '3' }, 100)).toEqual([3, 4, 5]);
    expect(systemdListenFds({ LISTEN_PID: '101', LISTEN_FDS: '1' }, 100)).toEqual([]);
    expect(systemdListenFds({ LISTEN_PID: '100', LISTEN_FDS: '0' }, 100)).toEqual([]);
    expect(systemdListenFds({ LISTEN_PID: '100', LISTEN_FDS: '-1' }, 100)).toEqual([]);
    expect(systemdListenFds({ LISTEN_PID: '100', LISTEN_FDS: 'x' }, 100)).toEqual([]);
    expect(systemdListenFds({ LISTEN_PID: '100abc', LISTEN_FDS: '1' }, 100)).toEqual([]);
    expect(systemdListenFds({ LISTEN_PID: String(process.pid), LISTEN_FDS: '1' })).toEqual([3]);
  });
});

describe('socket activation (child process)', () => {
  it('libnbd socket activation: nbdinfo [ CMD ] starts the server with LISTEN_FDS', async () => {
    const out = await runOk('nbdinfo', ['--json', '--', '[', process.execPath, CHILD, buildDir, 'systemd', ']'], 60_000);
    const info = JSON.parse(out) as { exports: Array<{ 'export-size': number; 'export-name': string }> };
    expect(info.exports[0]?.['export-size']).toBe(16 * MiB);
  });

  it('an inherited Unix and a TCP listening fd (exec with LISTEN_PID/LISTEN_FDS), served and verified', async () => {
    const sock = path.join(dir, 'activated.sock');
    // Like systemd: bind the sockets, put them at fds 3 and 4, set the variables, exec the server in place.
    const launcher = `
import os, socket, sys
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); u.bind(sys.argv[1]); u.listen(64)
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM); t.bind(('127.0.0.1', 0)); t.listen(64)
print(t.getsockname()[1], flush=True)
os.dup2(u.fileno(), 3); os.dup2(t.fileno(), 4)
os.set_inheritable(3, True); os.set_inheritable(4, True)
os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '2'
os.execv(sys.argv[2], sys.argv[2:])
`;
    const child = spawn('/usr/bin/python3', ['-c', launcher, sock, process.execPath, CHILD, buildDir, 'systemd'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const port = await new Promise<number>((resolve, reject) => {
        let stdout = '';
        child.stdout.on('data', (d: Buffer) => {
          stdout += d.toString();
          if (stdout.includes('\n')) resolve(Number(stdout.trim()));
        });
        child.once('exit', (code) => reject(new Error(`launcher exited ${code}: ${stderr}`)));
      });
      await runOk('qemu-io', ['-f', 'raw', `nbd+unix:///mem?socket=${sock}`, '-c', 'write -P 0x42 1M 256k'], 60_000);
      await runOk('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${port}/mem`, '-c', 'read -P 0x42 1M 256k', '-c', 'read -P 0 0 1M'], 60_000);
      const map = JSON.parse(await runOk('nbdinfo', ['--map', '--json', `nbd://127.0.0.1:${port}/`])) as Array<{ offset: number; type: number }>;
      expect(map.filter((e) => e.type === 0).map((e) => e.offset)).toEqual([MiB]);
      expect(stderr).toMatch(/READY 3,4/);
    } finally {
      child.kill('SIGTERM');
    }
  });

  it('systemd-socket-activate (when installed) hands the server fd 3', async () => {
    if (!fs.existsSync('/usr/bin/systemd-socket-activate')) {
      // scripts/test-all.sh installs systemd; in CI a missing tool is a failure, not a skip
      if (/^(1|true)$/i.test(process.env.CI ?? '')) throw new Error('systemd-socket-activate is missing (package systemd)');
      return;
    }
    const sock = path.join(dir, 'sd.sock');
    const child = spawn('/usr/bin/systemd-socket-activate', ['-l', sock, process.execPath, CHILD, buildDir, 'systemd'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    try {
      await new Promise<void>((resolve, reject) => {
        let stderr = '';
        child.stderr.on('data', (d: Buffer) => {
          stderr += d.toString();
          if (stderr.includes('Listening on')) resolve();
        });
        child.once('exit', (code) => reject(new Error(`systemd-socket-activate exited ${code}: ${stderr}`)));
      });
      const size = await runOk('nbdinfo', ['--size', `nbd+unix:///mem?socket=${sock}`], 60_000);
      expect(Number(size.trim())).toBe(16 * MiB);
    } finally {
      child.kill('SIGTERM');
    }
  });
});

describe('stdio mode (child process)', () => {
  it('serves one client over stdin/stdout (libnbd connect_command, like nbdkit -s)', async () => {
    const script = `
import nbd, json, sys
h = nbd.NBD()
h.add_meta_context('base:allocation')
h.set_full_info(True)
h.connect_command(sys.argv[1:])
out = {'size': h.get_size(), 'name': h.get_canonical_export_name(), 'structured': h.get_structured_replies_negotiated()}
data = bytes(range(256)) * 4096
h.pwrite(data, 3 * 1048576)
h.flush()
out['roundtrip'] = h.pread(len(data), 3 * 1048576) == data
out['zeros'] = h.pread(65536, 0) == bytes(65536)
ext = []
h.block_status(4 * 1048576, 0, lambda ctx, off, entries, err: ext.extend(entries))
out['extents'] = ext
h.shutdown()
print(json.dumps(out))
`;
    const out = JSON.parse(await runOk('/usr/bin/python3', ['-c', script, process.execPath, CHILD, buildDir, 'stdio'], 60_000));
    expect(out).toMatchObject({ size: 16 * MiB, name: 'mem', structured: true, roundtrip: true, zeros: true });
    expect(out.extents).toEqual([3 * MiB, 3, MiB, 0]);
  });

  it('serveStream in process over a connected socket resolves when the client leaves', async () => {
    const { server } = memServer();
    const sockPath = path.join(dir, 'pair.sock');
    const served: Promise<void>[] = [];
    const listener = net.createServer({ allowHalfOpen: true }, (socket) => served.push(server.serveStream(socket)));
    await new Promise<void>((resolve) => listener.listen(sockPath, resolve));
    const c = await RawClient.connect(sockPath);
    await c.negotiate('vol');
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, data: pattern(4096, 1) });
    expect((await c.readSimpleReply()).error).toBe(0);
    expect(server.connections()).toMatchObject([{ remote: 'stdio', export: 'vol', requests: 1, bytesWritten: 4096 }]);
    c.destroy();
    await served[0];
    expect(server.connections()).toEqual([]);
    await new Promise<void>((resolve) => listener.close(() => resolve()));
    await server.close();
  });
});

describe('Unix socket files', () => {
  it('replaces a stale socket file left by a dead server', async () => {
    const sock = path.join(dir, 'stale.sock');
    // bind and exit without unlinking: a stale socket file nobody listens on
    await runOk('/usr/bin/python3', ['-c', 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])', sock]);
    expect(fs.lstatSync(sock).isSocket()).toBe(true);
    const { server } = memServer();
    await server.listenUnix(sock);
    const size = await runOk('nbdinfo', ['--size', `nbd+unix:///vol?socket=${sock}`]);
    expect(Number(size.trim())).toBe(4 * MiB);
    await server.close();
    expect(fs.existsSync(sock)).toBe(false); // removed on close
  });

  it('refuses a socket a live server answers on, and leaves that server alone', async () => {
    const sock = path.join(dir, 'live.sock');
    const first = memServer();
    await first.server.listenUnix(sock);
    const second = memServer();
    await expect(second.server.listenUnix(sock)).rejects.toThrow(/address in use/);
    const size = await runOk('nbdinfo', ['--size', `nbd+unix:///vol?socket=${sock}`]);
    expect(Number(size.trim())).toBe(4 * MiB);
    await second.server.close();
    await first.server.close();
  });

  it('refuses to replace a path that is not a socket', async () => {
    const file = path.join(dir, 'regular-file');
    fs.writeFileSync(file, 'keep me');
    const { server } = memServer();
    await expect(server.listenUnix(file)).rejects.toThrow(/not a socket/);
    expect(fs.readFileSync(file, 'utf8')).toBe('keep me');
    await server.close();
  });
});

describe('close() and disconnectExport()', () => {
  it('close() answers requests in flight, closes connections, stops listening', async () => {
    const slow = new MemoryExport({ name: 'slow', size: 8 * MiB, delayMs: 150 });
    const { server, provider } = memServer([slow]);
    const sock = path.join(dir, 'closing.sock');
    await server.listenUnix(sock);
    const c = await RawClient.connect(sock);
    await c.negotiate('slow');
    for (let i = 0; i < 8; i++) c.sendRequest({ type: NBD_CMD_WRITE, cookie: BigInt(i), offset: i * 65536, data: pattern(65536, i) });
    await new Promise((r) => setTimeout(r, 50)); // let them reach the export
    const closed = server.close();
    for (let i = 0; i < 8; i++) expect((await c.readSimpleReply()).error).toBe(0);
    expect(await c.closedWithin()).toBe(true);
    await closed;
    expect(fs.existsSync(sock)).toBe(false);
    expect(provider.opened).toBe(provider.released);
    for (let i = 0; i < 8; i++) expect(slow.snapshot().subarray(i * 65536, (i + 1) * 65536).equals(pattern(65536, i))).toBe(true);
    await expect(RawClient.connect(sock)).rejects.toThrow();
  });

  it('disconnectExport() closes only the connections of that export', async () => {
    const { server } = memServer([new MemoryExport({ name: 'a', size: MiB }), new MemoryExport({ name: 'b', size: MiB })]);
    const { port } = await server.listenTcp('127.0.0.1', 0);
    const a = await RawClient.connect({ host: '127.0.0.1', port });
    await a.negotiate('a');
    const b = await RawClient.connect({ host: '127.0.0.1', port });
    await b.negotiate('b');
    expect(server.connections().map((x) => x.export).sort()).toEqual(['a', 'b']);
    expect(server.connections()[0]?.remote).toMatch(/^127\.0\.0\.1:\d+$/);
    await server.disconnectExport('a');
    expect(await a.closedWithin()).toBe(true);
    b.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offset: 0, length: 512 });
    expect((await b.readSimpleReply(512)).error).toBe(0);
    expect(server.connections().map((x) => x.export)).toEqual(['b']);
    b.destroy();
    await server.close();
  });

  it('a listener on ::1 works when IPv6 loopback is available', async () => {
    const { server } = memServer();
    let address: net.AddressInfo;
    try {
      address = await server.listenTcp('::1', 0);
    } catch {
      await server.close();
      return; // no IPv6 here
    }
    const r = await run('nbdinfo', ['--size', `nbd://[::1]:${address.port}/vol`]);
    expect(r.code).toBe(0);
    expect(Number(r.stdout.trim())).toBe(4 * MiB);
    await server.close();
  });
});
