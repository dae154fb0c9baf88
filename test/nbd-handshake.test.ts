/**
 * Option haggling over raw sockets: well-formed and malformed options. After every test the server must
 * still serve a fresh client.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_EXTENDED_HEADERS,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_CMD_READ,
} from '../src/nbd/constants.js';
import { NbdServer } from '../src/nbd/server.js';
import { MemoryExport, MemoryProvider } from './helpers/memory-export.js';
import {
  MiB,
  RawClient,
  infoPayload,
  metaContextPayload,
  startServer,
  testLogger,
  type OptionReply,
  type TestServer,
} from './helpers/nbd-harness.js';

// real clients and child processes: generous limits for a loaded machine
vi.setConfig({ testTimeout: 60_000, hookTimeout: 180_000 });

let t: TestServer;

beforeAll(async () => {
  t = await startServer([
    { name: 'disk', size: 16 * MiB, description: 'the disk' },
    { name: 'ro', size: 1 * MiB, readOnly: true },
    { name: 'multi', size: 1 * MiB, metaContexts: ['base:allocation', 'x-test:even-chunks', 'x-test:other'] },
  ]);
});
afterAll(async () => {
  await t?.close();
});

/** Every test ends by proving a fresh client is still served (GO + a read). */
afterEach(async () => {
  const c = await RawClient.connect(t.socketPath);
  const { size } = await c.negotiate('disk');
  expect(size).toBe(BigInt(16 * MiB));
  c.sendRequest({ type: NBD_CMD_READ, cookie: 99n, offset: 0, length: 512 });
  const r = await c.readSimpleReply(512);
  expect(r.error).toBe(0);
  expect(r.cookie).toBe(99n);
  c.destroy();
});

async function fixed(): Promise<RawClient> {
  const c = await RawClient.connect(t.socketPath);
  await c.greeting();
  c.sendClientFlags();
  return c;
}

function types(replies: OptionReply[]): number[] {
  return replies.map((r) => r.type);
}

describe('greeting and client flags', () => {
  it('advertises fixed newstyle and no-zeroes', async () => {
    const c = await RawClient.connect(t.socketPath);
    expect(await c.greeting()).toBe(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    c.destroy();
  });

  it('closes on unknown client flags', async () => {
    const c = await RawClient.connect(t.socketPath);
    await c.greeting();
    c.sendClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | 0x80);
    expect(await c.closedWithin()).toBe(true);
  });

  it('closes on garbage instead of client flags (e.g. an HTTP request)', async () => {
    const c = await RawClient.connect({ host: '127.0.0.1', port: t.port });
    await c.greeting();
    c.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    expect(await c.closedWithin()).toBe(true);
  });

  it('closes on a client that does not speak fixed newstyle', async () => {
    const c = await RawClient.connect(t.socketPath);
    await c.greeting();
    c.sendClientFlags(0);
    expect(await c.closedWithin()).toBe(true);
  });

  it('closes on bad option magic', async () => {
    const c = await fixed();
    c.write(Buffer.from('0123456789abcdef'));
    expect(await c.closedWithin()).toBe(true);
  });

  it('survives a client that disconnects in the middle of an option', async () => {
    const c = await fixed();
    c.sendOption(NBD_OPT_GO, Buffer.alloc(3), 100);
    c.destroy();
  });
});

describe('options', () => {
  it('answers an unknown option with ERR_UNSUP and keeps haggling', async () => {
    const c = await fixed();
    expect(types(await c.option(4242, Buffer.from('some payload')))).toEqual([NBD_REP_ERR_UNSUP]);
    expect(types(await c.option(NBD_OPT_EXTENDED_HEADERS))).toEqual([NBD_REP_ERR_UNSUP]);
    const go = await c.option(NBD_OPT_GO, infoPayload('disk', []));
    expect(go[go.length - 1]?.type).toBe(NBD_REP_ACK);
    c.destroy();
  });

  it('discards an oversized option and answers ERR_TOO_BIG', async () => {
    const c = await fixed();
    c.sendOption(NBD_OPT_INFO, Buffer.alloc(200 * 1024));
    expect((await c.readOptionReply()).type).toBe(NBD_REP_ERR_TOO_BIG);
    const info = await c.option(NBD_OPT_INFO, infoPayload('disk', []));
    expect(info[info.length - 1]?.type).toBe(NBD_REP_ACK);
    c.destroy();
  });

  it('LIST names every export; LIST with data is invalid', async () => {
    const c = await fixed();
    expect(types(await c.option(NBD_OPT_LIST, Buffer.from([1, 2, 3])))).toEqual([NBD_REP_ERR_INVALID]);
    const replies = await c.option(NBD_OPT_LIST);
    expect(replies[replies.length - 1]?.type).toBe(NBD_REP_ACK);
    const servers = replies.filter((r) => r.type === NBD_REP_SERVER);
    const names = servers.map((r) => r.data.toString('utf8', 4, 4 + r.data.readUInt32BE(0)));
    expect(names.sort()).toEqual(['disk', 'multi', 'ro']);
    const disk = servers.find((r) => r.data.toString('utf8', 4, 8) === 'disk') as OptionReply;
    expect(disk.data.toString('utf8', 8)).toBe('the disk');
    c.destroy();
  });

  it('INFO returns export, name, description and block size', async () => {
    const c = await fixed();
    const replies = await c.option(NBD_OPT_INFO, infoPayload('disk', [NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE]));
    expect(replies[replies.length - 1]?.type).toBe(NBD_REP_ACK);
    const infos = new Map(replies.filter((r) => r.type === NBD_REP_INFO).map((r) => [r.data.readUInt16BE(0), r.data]));
    const exp = infos.get(NBD_INFO_EXPORT) as Buffer;
    expect(exp.length).toBe(12);
    expect(exp.readBigUInt64BE(2)).toBe(BigInt(16 * MiB));
    const flags = exp.readUInt16BE(10);
    for (const f of [NBD_FLAG_HAS_FLAGS, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES, NBD_FLAG_CAN_MULTI_CONN]) {
      expect(flags & f).toBe(f);
    }
    expect(flags & NBD_FLAG_READ_ONLY).toBe(0);
    expect(flags & NBD_FLAG_SEND_DF).toBe(0); // no structured replies negotiated
    expect(infos.get(NBD_INFO_NAME)?.toString('utf8', 2)).toBe('disk');
    expect(infos.get(NBD_INFO_DESCRIPTION)?.toString('utf8', 2)).toBe('the disk');
    const bs = infos.get(NBD_INFO_BLOCK_SIZE) as Buffer;
    expect([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)]).toEqual([1, 4096, 32 * MiB]);

    const ro = await c.option(NBD_OPT_INFO, infoPayload('ro', []));
    const roFlags = (ro.find((r) => r.type === NBD_REP_INFO && r.data.readUInt16BE(0) === NBD_INFO_EXPORT) as OptionReply).data.readUInt16BE(10);
    expect(roFlags & NBD_FLAG_READ_ONLY).toBe(NBD_FLAG_READ_ONLY);
    expect(roFlags & (NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES)).toBe(0);
    c.destroy();
  });

  it('INFO/GO on an unknown name (or the empty name without a default) is ERR_UNKNOWN, and haggling goes on', async () => {
    const c = await fixed();
    expect(types(await c.option(NBD_OPT_INFO, infoPayload('nosuch', [])))).toEqual([NBD_REP_ERR_UNKNOWN]);
    expect(types(await c.option(NBD_OPT_GO, infoPayload('nosuch', [])))).toEqual([NBD_REP_ERR_UNKNOWN]);
    expect(types(await c.option(NBD_OPT_GO, infoPayload('', [])))).toEqual([NBD_REP_ERR_UNKNOWN]);
    const go = await c.option(NBD_OPT_GO, infoPayload('ro', []));
    expect(go[go.length - 1]?.type).toBe(NBD_REP_ACK);
    c.destroy();
  });

  it('INFO with a name length past the end, or a lying request count, is ERR_INVALID', async () => {
    const c = await fixed();
    const lie = infoPayload('disk', []);
    lie.writeUInt32BE(1000, 0);
    expect(types(await c.option(NBD_OPT_INFO, lie))).toEqual([NBD_REP_ERR_INVALID]);
    const countLie = infoPayload('disk', [NBD_INFO_NAME]);
    countLie.writeUInt16BE(5, 8);
    expect(types(await c.option(NBD_OPT_GO, countLie))).toEqual([NBD_REP_ERR_INVALID]);
    expect(types(await c.option(NBD_OPT_GO, Buffer.alloc(3)))).toEqual([NBD_REP_ERR_INVALID]);
    const ok = await c.option(NBD_OPT_INFO, infoPayload('disk', []));
    expect(ok[ok.length - 1]?.type).toBe(NBD_REP_ACK);
    c.destroy();
  });

  it('STRUCTURED_REPLY with data is invalid; without, ACK', async () => {
    const c = await fixed();
    expect(types(await c.option(NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(1)))).toEqual([NBD_REP_ERR_INVALID]);
    expect(types(await c.option(NBD_OPT_STRUCTURED_REPLY))).toEqual([NBD_REP_ACK]);
    c.destroy();
  });

  it('STARTTLS without TLS configured is ERR_POLICY', async () => {
    const c = await fixed();
    expect(types(await c.option(NBD_OPT_STARTTLS))).toEqual([NBD_REP_ERR_POLICY]);
    c.destroy();
  });

  it('ABORT is acknowledged and the connection closed', async () => {
    const c = await fixed();
    expect(types(await c.option(NBD_OPT_ABORT))).toEqual([NBD_REP_ACK]);
    expect(await c.closedWithin()).toBe(true);
  });

  it('EXPORT_NAME on an unknown name closes the connection', async () => {
    const c = await fixed();
    c.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('nosuch'));
    expect(await c.closedWithin()).toBe(true);
  });

  it('EXPORT_NAME enters transmission (with the 124 zero bytes unless NO_ZEROES)', async () => {
    const c = await RawClient.connect(t.socketPath);
    await c.greeting();
    c.sendClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE);
    c.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
    const reply = await c.read(8 + 2 + 124);
    expect(reply.readBigUInt64BE(0)).toBe(BigInt(16 * MiB));
    expect(reply.readUInt16BE(8) & NBD_FLAG_HAS_FLAGS).toBe(NBD_FLAG_HAS_FLAGS);
    expect(reply.subarray(10).every((b) => b === 0)).toBe(true);
    c.sendRequest({ type: NBD_CMD_READ, cookie: 5n, offset: 4096, length: 4096 });
    const r = await c.readSimpleReply(4096);
    expect(r.error).toBe(0);
    c.destroy();

    const z = await fixed();
    z.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
    const short = await z.read(10);
    expect(short.readBigUInt64BE(0)).toBe(BigInt(16 * MiB));
    z.sendRequest({ type: NBD_CMD_READ, cookie: 6n, offset: 0, length: 16 });
    expect((await z.readSimpleReply(16)).cookie).toBe(6n);
    z.destroy();
  });
});

describe('meta contexts', () => {
  const names = (replies: OptionReply[]): string[] =>
    replies.filter((r) => r.type === NBD_REP_META_CONTEXT).map((r) => r.data.toString('utf8', 4)).sort();

  it('LIST_META_CONTEXT: all, by namespace, exact, unknown namespace', async () => {
    const c = await fixed();
    await c.option(NBD_OPT_STRUCTURED_REPLY);
    expect(names(await c.option(NBD_OPT_LIST_META_CONTEXT, metaContextPayload('multi', [])))).toEqual([
      'base:allocation',
      'x-test:even-chunks',
      'x-test:other',
    ]);
    expect(names(await c.option(NBD_OPT_LIST_META_CONTEXT, metaContextPayload('multi', ['base:'])))).toEqual(['base:allocation']);
    expect(names(await c.option(NBD_OPT_LIST_META_CONTEXT, metaContextPayload('multi', ['x-test:'])))).toEqual([
      'x-test:even-chunks',
      'x-test:other',
    ]);
    expect(names(await c.option(NBD_OPT_LIST_META_CONTEXT, metaContextPayload('multi', ['x-test:other'])))).toEqual(['x-test:other']);
    const unknown = await c.option(NBD_OPT_LIST_META_CONTEXT, metaContextPayload('multi', ['qemu:dirty-bitmap:x', 'base:nothing']));
    expect(types(unknown)).toEqual([NBD_REP_ACK]);
    // plain exports still offer base:allocation
    expect(names(await c.option(NBD_OPT_LIST_META_CONTEXT, metaContextPayload('disk', [])))).toEqual(['base:allocation']);
    expect(types(await c.option(NBD_OPT_LIST_META_CONTEXT, metaContextPayload('nosuch', [])))).toEqual([NBD_REP_ERR_UNKNOWN]);
    c.destroy();
  });

  it('SET_META_CONTEXT selects exact names with distinct ids, ignores wildcards', async () => {
    const c = await fixed();
    await c.option(NBD_OPT_STRUCTURED_REPLY);
    const set = await c.option(NBD_OPT_SET_META_CONTEXT, metaContextPayload('multi', ['base:', 'x-test:other', 'base:allocation', 'nope:x']));
    const selected = set.filter((r) => r.type === NBD_REP_META_CONTEXT);
    expect(selected.map((r) => r.data.toString('utf8', 4)).sort()).toEqual(['base:allocation', 'x-test:other']);
    const ids = selected.map((r) => r.data.readUInt32BE(0));
    expect(new Set(ids).size).toBe(2);
    expect(set[set.length - 1]?.type).toBe(NBD_REP_ACK);
    c.destroy();
  });

  it('SET_META_CONTEXT before structured replies, with a count lie, or a query without namespace is ERR_INVALID', async () => {
    const c = await fixed();
    expect(types(await c.option(NBD_OPT_SET_META_CONTEXT, metaContextPayload('disk', ['base:allocation'])))).toEqual([NBD_REP_ERR_INVALID]);
    await c.option(NBD_OPT_STRUCTURED_REPLY);
    const countLie = metaContextPayload('disk', ['base:allocation']);
    countLie.writeUInt32BE(3, 8);
    expect(types(await c.option(NBD_OPT_SET_META_CONTEXT, countLie))).toEqual([NBD_REP_ERR_INVALID]);
    const hugeCount = metaContextPayload('disk', []);
    hugeCount.writeUInt32BE(0xffffffff, 8);
    expect(types(await c.option(NBD_OPT_LIST_META_CONTEXT, hugeCount))).toEqual([NBD_REP_ERR_INVALID]);
    const queryLie = metaContextPayload('disk', ['base:allocation']);
    queryLie.writeUInt32BE(500, 12);
    expect(types(await c.option(NBD_OPT_LIST_META_CONTEXT, queryLie))).toEqual([NBD_REP_ERR_INVALID]);
    const nameLie = metaContextPayload('disk', []);
    nameLie.writeUInt32BE(100, 0);
    expect(types(await c.option(NBD_OPT_SET_META_CONTEXT, nameLie))).toEqual([NBD_REP_ERR_INVALID]);
    const trailing = Buffer.concat([metaContextPayload('disk', []), Buffer.alloc(3)]);
    expect(types(await c.option(NBD_OPT_SET_META_CONTEXT, trailing))).toEqual([NBD_REP_ERR_INVALID]);
    expect(types(await c.option(NBD_OPT_SET_META_CONTEXT, metaContextPayload('disk', ['allocation'])))).toEqual([NBD_REP_ERR_INVALID]);
    const ok = await c.option(NBD_OPT_SET_META_CONTEXT, metaContextPayload('disk', ['base:allocation']));
    expect(types(ok)).toEqual([NBD_REP_META_CONTEXT, NBD_REP_ACK]);
    c.destroy();
  });
});

describe('server-level handshake behaviour', () => {
  it('drops a client that never finishes the handshake', async () => {
    const provider = new MemoryProvider([new MemoryExport({ name: 'x', size: MiB })]);
    const server = new NbdServer({ provider, logger: testLogger(), handshakeTimeoutMs: 300 });
    const { port } = await server.listenTcp('127.0.0.1', 0);
    const c = await RawClient.connect({ host: '127.0.0.1', port });
    await c.greeting();
    expect(await c.closedWithin(3000)).toBe(true);
    await server.close();
  });

  it('serves the default export for the empty name when configured', async () => {
    const provider = new MemoryProvider([new MemoryExport({ name: 'vol0', size: 2 * MiB })]);
    const server = new NbdServer({ provider, logger: testLogger(), defaultExport: 'vol0' });
    const { port } = await server.listenTcp('127.0.0.1', 0);
    const c = await RawClient.connect({ host: '127.0.0.1', port });
    await c.greeting();
    c.sendClientFlags();
    const replies = await c.option(NBD_OPT_GO, infoPayload('', [NBD_INFO_NAME]));
    const name = replies.find((r) => r.type === NBD_REP_INFO && r.data.readUInt16BE(0) === NBD_INFO_NAME);
    expect(name?.data.toString('utf8', 2)).toBe('vol0');
    expect(replies[replies.length - 1]?.type).toBe(NBD_REP_ACK);
    expect(server.connections()).toMatchObject([{ export: 'vol0', tls: false }]);
    c.destroy();
    await server.close();
    expect(provider.opened).toBe(provider.released);
  });
});
