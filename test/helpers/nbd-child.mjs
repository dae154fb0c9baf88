// A small NBD server process for tests: serves one in-memory export named "mem" (also the default export)
// using the compiled src/nbd (see build-nbd.ts).
//
//   node nbd-child.mjs BUILD_DIR stdio     serve one client over stdin/stdout, exit when it leaves
//   node nbd-child.mjs BUILD_DIR systemd   serve on the fds passed by socket activation (LISTEN_FDS)
//
// Logs go to stderr only (stdout may be the NBD channel). Size: NBD_CHILD_SIZE bytes (default 16 MiB).
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import pino from 'pino';

const [buildDir, mode] = process.argv.slice(2);
const { NbdServer, systemdListenFds } = await import(pathToFileURL(path.join(buildDir, 'server.js')).href);

const CHUNK = 65536;

/** Minimal sparse memory export (the TypeScript test helper cannot be loaded here). */
class MemExport {
  name = 'mem';
  description = 'child memory export';
  readOnly = false;
  canTrim = true;
  canZero = true;
  canFastZero = true;
  canCache = false;
  canMultiConn = true;
  blockSize = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
  metaContexts = ['base:allocation'];
  chunks = new Map();

  constructor(size) {
    this.size = size;
  }

  *pieces(offset, length) {
    let pos = 0;
    while (pos < length) {
      const index = Math.floor((offset + pos) / CHUNK);
      const inChunk = offset + pos - index * CHUNK;
      const n = Math.min(CHUNK - inChunk, length - pos);
      yield { index, inChunk, n, pos };
      pos += n;
    }
  }

  async read(offset, buf) {
    const holes = [];
    for (const { index, inChunk, n, pos } of this.pieces(offset, buf.length)) {
      const chunk = this.chunks.get(index);
      if (chunk) chunk.copy(buf, pos, inChunk, inChunk + n);
      else holes.push(pos, n);
    }
    return holes;
  }

  async write(offset, data) {
    for (const { index, inChunk, n, pos } of this.pieces(offset, data.length)) {
      let chunk = this.chunks.get(index);
      if (!chunk) this.chunks.set(index, (chunk = Buffer.alloc(CHUNK)));
      data.copy(chunk, inChunk, pos, pos + n);
    }
  }

  async flush() {}

  async trim(offset, length) {
    for (const { index, inChunk, n } of this.pieces(offset, length)) {
      const chunk = this.chunks.get(index);
      if (!chunk) continue;
      if (n === CHUNK) this.chunks.delete(index);
      else chunk.fill(0, inChunk, inChunk + n);
    }
  }

  async zero(offset, length) {
    await this.trim(offset, length);
  }

  async cache() {}

  async blockStatus(_context, offset, length) {
    const extents = [];
    for (const { index, n } of this.pieces(offset, Math.min(length, this.size - offset))) {
      const flags = this.chunks.has(index) ? 0 : 3;
      const last = extents[extents.length - 1];
      if (last && last.flags === flags) last.length += n;
      else extents.push({ length: n, flags });
    }
    return extents;
  }
}

const mem = new MemExport(Number(process.env.NBD_CHILD_SIZE ?? 16 * 1024 * 1024));
const provider = {
  list: () => [{ name: mem.name, description: mem.description }],
  open: (name) => (name === mem.name ? { export: mem, release: () => {} } : undefined),
};
const logger = pino({ level: process.env.NBD_CHILD_LOG ?? 'warn' }, pino.destination(2));
const server = new NbdServer({ provider, logger, defaultExport: 'mem' });

if (mode === 'stdio') {
  await server.serveStream({ readable: process.stdin, writable: process.stdout });
  process.exit(0);
} else if (mode === 'systemd') {
  const fds = systemdListenFds();
  if (fds.length === 0) {
    process.stderr.write('no LISTEN_FDS\n');
    process.exit(3);
  }
  for (const fd of fds) await server.listenFd(fd);
  process.stderr.write(`READY ${fds.join(',')}\n`);
  process.on('SIGTERM', () => {
    server.close().then(() => process.exit(0));
  });
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
