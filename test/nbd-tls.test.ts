/**
 * TLS (NBD_OPT_STARTTLS) with a self-signed certificate made by openssl: optional TLS, required TLS,
 * libnbd clients (nbdinfo, nbdcopy) and raw sockets for the option rules.
 */
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_SERVER,
} from '../src/nbd/constants.js';
import { MiB, RawClient, infoPayload, pattern, run, runOk, startServer, type OptionReply, type TestServer } from './helpers/nbd-harness.js';

// real clients and child processes: generous limits for a loaded machine
vi.setConfig({ testTimeout: 60_000, hookTimeout: 180_000 });

let pki: string;
let cert: Buffer;
let key: Buffer;
let optional: TestServer;
let required: TestServer;

beforeAll(async () => {
  pki = fs.mkdtempSync(path.join(os.tmpdir(), 'thinvault-nbd-pki-'));
  await runOk('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', path.join(pki, 'server-key.pem'), '-out', path.join(pki, 'server-cert.pem'),
    '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ]);
  cert = fs.readFileSync(path.join(pki, 'server-cert.pem'));
  key = fs.readFileSync(path.join(pki, 'server-key.pem'));
  // libnbd's tls-certificates directory: the CA that signed the server (self-signed: the cert itself)
  fs.mkdirSync(path.join(pki, 'client'));
  fs.writeFileSync(path.join(pki, 'client', 'ca-cert.pem'), cert);
  // and a directory trusting some other CA
  fs.mkdirSync(path.join(pki, 'wrong'));
  await runOk('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', path.join(pki, 'wrong', 'key.pem'), '-out', path.join(pki, 'wrong', 'ca-cert.pem'), '-days', '2', '-subj', '/CN=other',
  ]);
  optional = await startServer([{ name: 'disk', size: 16 * MiB }], { tls: { cert, key, required: false } });
  required = await startServer([{ name: 'disk', size: 16 * MiB }], { tls: { cert, key: key.toString('utf8'), required: true } });
}, 60_000);

afterAll(async () => {
  await optional?.close();
  await required?.close();
  if (pki) fs.rmSync(pki, { recursive: true, force: true });
});

const tlsUnix = (t: TestServer, name: string, query = `tls-certificates=${path.join(pki, 'client')}`): string =>
  `nbds+unix:///${name}?socket=${t.socketPath}&${query}`;

function types(replies: OptionReply[]): number[] {
  return replies.map((r) => r.type);
}

/** Raw client that has done STARTTLS and now talks over TLS. */
async function rawTls(t: TestServer): Promise<RawClient> {
  const c = await RawClient.connect(t.socketPath);
  await c.greeting();
  c.sendClientFlags();
  expect(types(await c.option(NBD_OPT_STARTTLS))).toEqual([NBD_REP_ACK]);
  c.socket.removeAllListeners('data');
  const secure = tls.connect({ socket: c.socket, rejectUnauthorized: false });
  await once(secure, 'secureConnect');
  return new RawClient(secure);
}

describe('optional TLS', () => {
  it('plain clients are served without TLS', async () => {
    const info = JSON.parse(await runOk('nbdinfo', ['--json', optional.unixUri('disk')]));
    expect(info.TLS).toBe(false);
  });

  it('libnbd upgrades with the CA in tls-certificates, over Unix and TCP (hostname checked)', async () => {
    const unix = JSON.parse(await runOk('nbdinfo', ['--json', tlsUnix(optional, 'disk')]));
    expect(unix.TLS).toBe(true);
    expect(unix.exports[0]['export-size']).toBe(16 * MiB);
    const tcp = JSON.parse(await runOk('nbdinfo', ['--json', `nbds://localhost:${optional.port}/disk?tls-certificates=${path.join(pki, 'client')}`]));
    expect(tcp.TLS).toBe(true);
  });

  it('a client that does not trust the certificate fails; the server carries on', async () => {
    // (libnbd checks the certificate only when it knows a hostname, i.e. over TCP)
    const bad = await run('nbdinfo', ['--json', `nbds://localhost:${optional.port}/disk?tls-certificates=${path.join(pki, 'wrong')}`]);
    expect(bad.code).not.toBe(0);
    const ok = JSON.parse(await runOk('nbdinfo', ['--json', tlsUnix(optional, 'disk', 'tls-verify-peer=false')]));
    expect(ok.TLS).toBe(true);
  });

  it('STARTTLS twice is ERR_INVALID; the TLS session then negotiates and transmits normally', async () => {
    const s = await rawTls(optional);
    expect(types(await s.option(NBD_OPT_STARTTLS))).toEqual([NBD_REP_ERR_INVALID]);
    const { size } = await (async () => {
      // negotiate() would re-read the greeting: do the options by hand
      expect(types(await s.option(NBD_OPT_STRUCTURED_REPLY))).toEqual([NBD_REP_ACK]);
      const go = await s.option(NBD_OPT_GO, infoPayload('disk', []));
      expect(go[go.length - 1]?.type).toBe(NBD_REP_ACK);
      return { size: go[0]?.data.readBigUInt64BE(2) };
    })();
    expect(size).toBe(BigInt(16 * MiB));
    const data = pattern(128 * 1024, 5);
    s.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: MiB, data });
    expect((await s.readAnyReply()).error).toBe(0);
    s.sendRequest({ type: NBD_CMD_READ, cookie: 2n, offset: MiB, length: data.length });
    const r = await s.readAnyReply();
    expect(r.chunks[0]?.payload.subarray(8).equals(data)).toBe(true);
    expect(optional.server.connections().some((x) => x.tls && x.export === 'disk')).toBe(true);
    s.destroy();
  });

  it('structured replies negotiated before STARTTLS do not survive it', async () => {
    const c = await RawClient.connect(optional.socketPath);
    await c.greeting();
    c.sendClientFlags();
    expect(types(await c.option(NBD_OPT_STRUCTURED_REPLY))).toEqual([NBD_REP_ACK]);
    expect(types(await c.option(NBD_OPT_STARTTLS))).toEqual([NBD_REP_ACK]);
    c.socket.removeAllListeners('data');
    const secure = tls.connect({ socket: c.socket, rejectUnauthorized: false });
    await once(secure, 'secureConnect');
    const s = new RawClient(secure);
    const go = await s.option(NBD_OPT_GO, infoPayload('disk', []));
    expect(go[go.length - 1]?.type).toBe(NBD_REP_ACK);
    s.sendRequest({ type: NBD_CMD_READ, cookie: 3n, offset: 0, length: 512 });
    expect((await s.readSimpleReply(512)).error).toBe(0); // simple reply: structured was reset
    s.destroy();
  });
});

describe('required TLS', () => {
  it('refuses a plain libnbd client and serves a TLS one', async () => {
    const plain = await run('nbdinfo', ['--json', required.unixUri('disk')]);
    expect(plain.code).not.toBe(0);
    const secure = JSON.parse(await runOk('nbdinfo', ['--json', tlsUnix(required, 'disk')]));
    expect(secure.TLS).toBe(true);
    const list = JSON.parse(await runOk('nbdinfo', ['--list', '--json', tlsUnix(required, '')]));
    expect(list.exports.map((e: { 'export-name': string }) => e['export-name'])).toEqual(['disk']);
  });

  it('before TLS: every option but STARTTLS/ABORT gets ERR_TLS_REQD, EXPORT_NAME closes', async () => {
    const c = await RawClient.connect(required.socketPath);
    await c.greeting();
    c.sendClientFlags();
    expect(types(await c.option(NBD_OPT_LIST))).toEqual([NBD_REP_ERR_TLS_REQD]);
    expect(types(await c.option(NBD_OPT_INFO, infoPayload('disk', [])))).toEqual([NBD_REP_ERR_TLS_REQD]);
    expect(types(await c.option(NBD_OPT_GO, infoPayload('disk', [])))).toEqual([NBD_REP_ERR_TLS_REQD]);
    expect(types(await c.option(NBD_OPT_STRUCTURED_REPLY))).toEqual([NBD_REP_ERR_TLS_REQD]);
    expect(types(await c.option(4242))).toEqual([NBD_REP_ERR_TLS_REQD]);
    expect(types(await c.option(NBD_OPT_STARTTLS, Buffer.alloc(2)))).toEqual([NBD_REP_ERR_INVALID]);
    c.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
    expect(await c.closedWithin()).toBe(true);

    const a = await RawClient.connect(required.socketPath);
    await a.greeting();
    a.sendClientFlags();
    expect(types(await a.option(NBD_OPT_ABORT))).toEqual([NBD_REP_ACK]);
    expect(await a.closedWithin()).toBe(true);
  });

  it('after TLS the same options work', async () => {
    const s = await rawTls(required);
    const list = await s.option(NBD_OPT_LIST);
    expect(types(list)).toEqual([NBD_REP_SERVER, NBD_REP_ACK]);
    s.destroy();
  });

  it('nbdcopy both ways through TLS, verified', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinvault-nbd-tlscopy-'));
    try {
      const src = path.join(dir, 'src.raw');
      const img = Buffer.alloc(16 * MiB);
      pattern(6 * MiB, 21).copy(img, 3 * MiB);
      fs.writeFileSync(src, img);
      await runOk('nbdcopy', ['--flush', src, tlsUnix(required, 'disk')], 60_000);
      const dst = path.join(dir, 'dst.raw');
      await runOk('nbdcopy', [tlsUnix(required, 'disk'), dst], 60_000);
      expect(fs.readFileSync(dst).equals(img)).toBe(true);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
