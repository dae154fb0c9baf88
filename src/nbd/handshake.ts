/**
 * Fixed newstyle handshake (option haggling) for one connection, up to the point where transmission starts.
 * Knows nothing of transmission; hands back the chosen export and what was negotiated.
 */
import tls from 'node:tls';
import type { Logger } from 'pino';
import { ChannelClosedError, HandshakeReader, type Channel } from './channel.js';
import {
  NBD_CLIENT_FLAGS_SIZE,
  NBD_EXPORT_NAME_REPLY_SIZE,
  NBD_EXPORT_NAME_REPLY_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_HANDSHAKE_GREETING_SIZE,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_MAGIC,
  NBD_MAX_STRING,
  NBD_META_CONTEXT_BASE_ALLOCATION,
  NBD_NEW_VERSION,
  NBD_OPTION_HEADER_SIZE,
  NBD_OPTION_REPLY_HEADER_SIZE,
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
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
} from './constants.js';
import type { BlockSizeConstraints, Export, ExportHandle, ExportProvider } from './export.js';

/** Options longer than this are discarded unread and answered with NBD_REP_ERR_TOO_BIG. */
export const MAX_OPTION_LENGTH = 64 * 1024;

export interface MetaContext {
  id: number;
  name: string;
}

/** What the handshake agreed on; transmission starts from this. */
export interface NegotiatedExport {
  /** canonical export name (the default export's real name when the client asked for "") */
  name: string;
  handle: ExportHandle;
  structuredReplies: boolean;
  /** contexts selected with NBD_OPT_SET_META_CONTEXT for this export (empty: no block status) */
  metaContexts: MetaContext[];
  transmissionFlags: number;
  /** what was advertised in NBD_INFO_BLOCK_SIZE (and is enforced) */
  blockSize: BlockSizeConstraints;
}

export interface HandshakeOptions {
  provider: ExportProvider;
  /** served when the client asks for the empty name */
  defaultExport: string | undefined;
  tls: { context: tls.SecureContext; required: boolean } | undefined;
  /** largest request payload the server accepts (2^25 unless lowered) */
  maxPayload: number;
  logger: Logger;
  /** true once the server is closing: options get NBD_REP_ERR_SHUTDOWN */
  isShuttingDown(): boolean;
  /** called after STARTTLS with the TLS socket that now carries the connection */
  onTlsUpgrade(socket: tls.TLSSocket): void;
}

/** Transmission flags for an export, as derived from its capabilities. */
export function transmissionFlagsFor(exp: Export, structuredReplies: boolean): number {
  let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA;
  if (exp.readOnly) flags |= NBD_FLAG_READ_ONLY;
  else {
    if (exp.canTrim) flags |= NBD_FLAG_SEND_TRIM;
    if (exp.canZero) {
      flags |= NBD_FLAG_SEND_WRITE_ZEROES;
      if (exp.canFastZero) flags |= NBD_FLAG_SEND_FAST_ZERO;
    }
  }
  if (exp.canCache) flags |= NBD_FLAG_SEND_CACHE;
  if (exp.canMultiConn) flags |= NBD_FLAG_CAN_MULTI_CONN;
  // DF only means something with structured replies, and the spec forbids it without them
  if (structuredReplies) flags |= NBD_FLAG_SEND_DF;
  return flags;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/**
 * The size constraints advertised in NBD_INFO_BLOCK_SIZE, made valid whatever the export says: minimum a
 * power of two <= 64 KiB, preferred a power of two >= max(minimum, 512), maximum in [preferred, maxPayload].
 */
export function advertisedBlockSize(exp: Export, maxPayload: number): BlockSizeConstraints {
  const wanted = exp.blockSize;
  const minimum = isPowerOfTwo(wanted.minimum) && wanted.minimum <= 65536 ? wanted.minimum : 1;
  let preferred = isPowerOfTwo(wanted.preferred) ? wanted.preferred : 4096;
  preferred = Math.max(preferred, minimum, 512);
  const maximum = Math.max(preferred, Math.min(Number.isInteger(wanted.maximum) ? wanted.maximum : maxPayload, maxPayload));
  return { minimum, preferred, maximum };
}

/** Result of parsing an option payload. */
type Parsed<T> = { ok: true; value: T } | { ok: false; why: string };

interface InfoRequest {
  name: string;
  infos: number[];
}

interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

/** Reads a length-prefixed string field inside an option payload, checked against the payload's own end. */
function readString(payload: Buffer, pos: number, length: number, end: number): string | null {
  if (length > NBD_MAX_STRING || length > end - pos) return null;
  return payload.toString('utf8', pos, pos + length);
}

function parseInfoRequest(payload: Buffer): Parsed<InfoRequest> {
  const len = payload.length;
  if (len < 6) return { ok: false, why: 'option too short' };
  const nameLen = payload.readUInt32BE(0);
  if (nameLen > len - 6) return { ok: false, why: 'name length past the end of the option' };
  const name = readString(payload, 4, nameLen, len - 2);
  if (name === null) return { ok: false, why: 'export name too long' };
  const count = payload.readUInt16BE(4 + nameLen);
  if (4 + nameLen + 2 + 2 * count !== len) return { ok: false, why: 'information request count does not match the option length' };
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(payload.readUInt16BE(4 + nameLen + 2 + 2 * i));
  return { ok: true, value: { name, infos } };
}

function parseMetaContextRequest(payload: Buffer): Parsed<MetaContextRequest> {
  const len = payload.length;
  if (len < 8) return { ok: false, why: 'option too short' };
  const nameLen = payload.readUInt32BE(0);
  if (nameLen > len - 8) return { ok: false, why: 'name length past the end of the option' };
  const exportName = readString(payload, 4, nameLen, len - 4);
  if (exportName === null) return { ok: false, why: 'export name too long' };
  let pos = 4 + nameLen;
  const count = payload.readUInt32BE(pos);
  pos += 4;
  // every query takes at least its 4-byte length field: reject impossible counts before looping
  if (count > (len - pos) / 4) return { ok: false, why: 'query count past the end of the option' };
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (pos + 4 > len) return { ok: false, why: 'query length past the end of the option' };
    const qlen = payload.readUInt32BE(pos);
    pos += 4;
    const query = readString(payload, pos, qlen, len);
    if (query === null) return { ok: false, why: 'query past the end of the option' };
    if (!query.includes(':')) return { ok: false, why: 'query without a namespace' };
    queries.push(query);
    pos += qlen;
  }
  if (pos !== len) return { ok: false, why: 'trailing bytes after the queries' };
  return { ok: true, value: { exportName, queries } };
}

/** The contexts an export lists and answers block status for: base:allocation always, plus its own. */
function availableContexts(exp: Export): string[] {
  const names = [NBD_META_CONTEXT_BASE_ALLOCATION];
  for (const name of exp.metaContexts) if (!names.includes(name)) names.push(name);
  return names;
}

/** What LIST shows for a bare or namespace query: the available contexts, then the export's listed selection. */
function listedContexts(exp: Export, available: readonly string[]): string[] {
  const names = [...available];
  for (const name of exp.listMetaContexts?.() ?? []) if (!names.includes(name)) names.push(name);
  return names;
}

/** An exact name the export answers for although it is not in its static list (Export.acceptsMetaContext). */
function acceptsExtra(exp: Export, name: string): boolean {
  return !name.endsWith(':') && exp.acceptsMetaContext?.(name) === true;
}

/**
 * Most contexts one SET_META_CONTEXT may select: every block status request computes one extent list per
 * selected context, so a client asking for thousands of names (an export may accept a whole family) must not
 * multiply that work. More are refused with NBD_REP_ERR_TOO_BIG.
 */
export const MAX_SELECTED_META_CONTEXTS = 64;

/** LIST semantics: "ns:" (or any query ending in a colon) is a wildcard for everything under it. */
function matchesListQuery(context: string, query: string): boolean {
  return query.endsWith(':') ? context.startsWith(query) : context === query;
}

/**
 * Runs the fixed newstyle handshake on `channel`. Resolves with the negotiated export when transmission
 * may start, or null when the connection must be closed (client abort, protocol violation, unknown export
 * on NBD_OPT_EXPORT_NAME); the caller closes it. Rejects with ChannelClosedError if the peer went away.
 */
export async function negotiate(channel: Channel, options: HandshakeOptions): Promise<NegotiatedExport | null> {
  return new Handshake(channel, options).run();
}

class Handshake {
  private reader: HandshakeReader;
  private noZeroes = false;
  private structuredReplies = false;
  /** resolved export name the last SET_META_CONTEXT referred to, with its selection */
  private metaContextExport: string | null = null;
  private metaContexts: MetaContext[] = [];
  private readonly log: Logger;

  constructor(
    private readonly channel: Channel,
    private readonly options: HandshakeOptions,
  ) {
    this.reader = new HandshakeReader(channel.input);
    this.log = options.logger;
  }

  async run(): Promise<NegotiatedExport | null> {
    try {
      return await this.haggle();
    } finally {
      this.reader.detach();
    }
  }

  private async haggle(): Promise<NegotiatedExport | null> {
    const greeting = Buffer.alloc(NBD_HANDSHAKE_GREETING_SIZE);
    greeting.writeBigUInt64BE(NBD_MAGIC, 0);
    greeting.writeBigUInt64BE(NBD_NEW_VERSION, 8);
    greeting.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
    this.channel.output.write(greeting);

    const clientFlags = (await this.reader.read(NBD_CLIENT_FLAGS_SIZE)).readUInt32BE(0);
    const known = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;
    if ((clientFlags & ~known) !== 0) {
      this.log.warn({ clientFlags }, 'unknown client flags; closing');
      return null;
    }
    if ((clientFlags & NBD_FLAG_C_FIXED_NEWSTYLE) === 0) {
      this.log.warn({ clientFlags }, 'client does not speak fixed newstyle negotiation; closing');
      return null;
    }
    this.noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0;

    for (;;) {
      const header = await this.reader.read(NBD_OPTION_HEADER_SIZE);
      if (header.readBigUInt64BE(0) !== NBD_NEW_VERSION) {
        this.log.warn('bad option magic; closing');
        return null;
      }
      const option = header.readUInt32BE(8);
      const length = header.readUInt32BE(12);

      if (length > MAX_OPTION_LENGTH) {
        if (option === NBD_OPT_EXPORT_NAME) {
          this.log.warn({ length }, 'NBD_OPT_EXPORT_NAME too long; closing');
          return null;
        }
        await this.reader.skip(length);
        this.log.warn({ option, length }, 'option too long');
        await this.reply(option, NBD_REP_ERR_TOO_BIG, 'option too long');
        continue;
      }
      const payload = await this.reader.read(length);

      if (this.options.isShuttingDown() && option !== NBD_OPT_ABORT) {
        if (option === NBD_OPT_EXPORT_NAME) return null;
        await this.reply(option, NBD_REP_ERR_SHUTDOWN, 'server is shutting down');
        continue;
      }
      if (this.options.tls?.required && !this.channel.tls && option !== NBD_OPT_STARTTLS && option !== NBD_OPT_ABORT) {
        if (option === NBD_OPT_EXPORT_NAME) {
          this.log.warn('NBD_OPT_EXPORT_NAME before TLS on a TLS-only server; closing');
          return null;
        }
        await this.reply(option, NBD_REP_ERR_TLS_REQD, 'TLS is required');
        continue;
      }

      switch (option) {
        case NBD_OPT_EXPORT_NAME:
          return this.exportName(payload);
        case NBD_OPT_ABORT:
          await this.reply(option, NBD_REP_ACK);
          this.log.debug('client aborted the handshake');
          return null;
        case NBD_OPT_LIST:
          await this.list(payload);
          break;
        case NBD_OPT_STARTTLS:
          await this.startTls(payload);
          break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO: {
          const session = await this.infoOrGo(option, payload);
          if (session !== null) return session;
          break;
        }
        case NBD_OPT_STRUCTURED_REPLY:
          if (length !== 0) await this.invalid(option, 'NBD_OPT_STRUCTURED_REPLY carries no data');
          else {
            this.structuredReplies = true;
            await this.reply(option, NBD_REP_ACK);
          }
          break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
          await this.metaContext(option, payload);
          break;
        case NBD_OPT_EXTENDED_HEADERS:
          await this.reply(option, NBD_REP_ERR_UNSUP, 'extended headers are not supported');
          break;
        default:
          this.log.debug({ option }, 'unsupported option');
          await this.reply(option, NBD_REP_ERR_UNSUP, 'unsupported option');
      }
    }
  }

  /* ---- options ---- */

  private exportName(payload: Buffer): NegotiatedExport | null {
    const requested = readString(payload, 0, payload.length, payload.length);
    const opened = requested === null ? undefined : this.open(requested);
    if (opened === undefined) {
      this.log.warn({ export: requested }, 'NBD_OPT_EXPORT_NAME for an unknown export; closing');
      return null;
    }
    try {
      const session = this.session(opened.name, opened.handle);
      const reply = Buffer.alloc(NBD_EXPORT_NAME_REPLY_SIZE + (this.noZeroes ? 0 : NBD_EXPORT_NAME_REPLY_ZEROES));
      reply.writeBigUInt64BE(BigInt(opened.handle.export.size), 0);
      reply.writeUInt16BE(session.transmissionFlags, 8);
      this.channel.output.write(reply);
      return session;
    } catch (err) {
      opened.handle.release();
      throw err;
    }
  }

  private async list(payload: Buffer): Promise<void> {
    if (payload.length !== 0) return this.invalid(NBD_OPT_LIST, 'NBD_OPT_LIST carries no data');
    for (const { name, description } of this.options.provider.list()) {
      const nameBytes = Buffer.from(name, 'utf8');
      const data = Buffer.alloc(4 + nameBytes.length + Buffer.byteLength(description, 'utf8'));
      data.writeUInt32BE(nameBytes.length, 0);
      nameBytes.copy(data, 4);
      data.write(description, 4 + nameBytes.length, 'utf8');
      await this.reply(NBD_OPT_LIST, NBD_REP_SERVER, data);
    }
    await this.reply(NBD_OPT_LIST, NBD_REP_ACK);
  }

  private async startTls(payload: Buffer): Promise<void> {
    const config = this.options.tls;
    const socket = this.channel.socket;
    if (config === undefined || socket === null) {
      return this.reply(NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY, 'TLS is not configured');
    }
    if (this.channel.tls) return this.invalid(NBD_OPT_STARTTLS, 'TLS is already active');
    if (payload.length !== 0) return this.invalid(NBD_OPT_STARTTLS, 'NBD_OPT_STARTTLS carries no data');

    // Write the ACK and wrap the socket in the same tick: the client starts TLS only once it reads the
    // ACK, so its first TLS bytes can only be read by the TLS layer. Node feeds anything already buffered
    // in the plain socket to TLS as well.
    this.reader.detach();
    this.writeReply(NBD_OPT_STARTTLS, NBD_REP_ACK, null);
    const tlsSocket = new tls.TLSSocket(socket, { isServer: true, secureContext: config.context });
    this.channel.input = tlsSocket;
    this.channel.output = tlsSocket;
    this.channel.socket = tlsSocket;
    this.options.onTlsUpgrade(tlsSocket);
    await new Promise<void>((resolve, reject) => {
      const onSecure = (): void => {
        tlsSocket.removeListener('error', onError);
        tlsSocket.removeListener('close', onClose);
        resolve();
      };
      const onError = (err: Error): void => {
        tlsSocket.removeListener('secure', onSecure);
        tlsSocket.removeListener('close', onClose);
        this.log.warn({ why: err.message }, 'TLS handshake failed');
        reject(new ChannelClosedError(`TLS handshake failed: ${err.message}`));
      };
      const onClose = (): void => onError(new Error('connection closed'));
      tlsSocket.once('secure', onSecure);
      tlsSocket.once('error', onError);
      tlsSocket.once('close', onClose);
    });
    this.channel.tls = true;
    this.reader = new HandshakeReader(tlsSocket);
    // the spec: no negotiation state survives STARTTLS
    this.structuredReplies = false;
    this.metaContextExport = null;
    this.metaContexts = [];
    this.log.debug('TLS established');
  }

  private async infoOrGo(option: number, payload: Buffer): Promise<NegotiatedExport | null> {
    const parsed = parseInfoRequest(payload);
    if (!parsed.ok) {
      await this.invalid(option, parsed.why);
      return null;
    }
    const opened = this.open(parsed.value.name);
    if (opened === undefined) {
      await this.reply(option, NBD_REP_ERR_UNKNOWN, 'no such export');
      return null;
    }
    const exp = opened.handle.export;
    let session: NegotiatedExport;
    try {
      session = this.session(opened.name, opened.handle);

      const exportInfo = Buffer.alloc(2 + 8 + 2);
      exportInfo.writeUInt16BE(NBD_INFO_EXPORT, 0);
      exportInfo.writeBigUInt64BE(BigInt(exp.size), 2);
      exportInfo.writeUInt16BE(session.transmissionFlags, 10);
      await this.reply(option, NBD_REP_INFO, exportInfo);

      const requested = new Set(parsed.value.infos);
      if (requested.has(NBD_INFO_NAME)) await this.reply(option, NBD_REP_INFO, infoString(NBD_INFO_NAME, opened.name));
      if (requested.has(NBD_INFO_DESCRIPTION) && exp.description !== '') {
        await this.reply(option, NBD_REP_INFO, infoString(NBD_INFO_DESCRIPTION, exp.description));
      }
      // sent whether asked or not: our maximum (and maybe minimum) differ from the defaults
      const blockSize = Buffer.alloc(2 + 4 + 4 + 4);
      blockSize.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
      blockSize.writeUInt32BE(session.blockSize.minimum, 2);
      blockSize.writeUInt32BE(session.blockSize.preferred, 6);
      blockSize.writeUInt32BE(session.blockSize.maximum, 10);
      await this.reply(option, NBD_REP_INFO, blockSize);
      await this.reply(option, NBD_REP_ACK);
    } catch (err) {
      opened.handle.release();
      throw err;
    }
    if (option === NBD_OPT_INFO) {
      opened.handle.release();
      return null;
    }
    return session;
  }

  private async metaContext(option: number, payload: Buffer): Promise<void> {
    const isSet = option === NBD_OPT_SET_META_CONTEXT;
    if (isSet) {
      // the spec: SET replaces the previous selection even when it fails
      this.metaContextExport = null;
      this.metaContexts = [];
      if (!this.structuredReplies) return this.invalid(option, 'structured replies must be negotiated first');
    }
    const parsed = parseMetaContextRequest(payload);
    if (!parsed.ok) return this.invalid(option, parsed.why);
    const opened = this.open(parsed.value.exportName);
    if (opened === undefined) return this.reply(option, NBD_REP_ERR_UNKNOWN, 'no such export');
    const { queries } = parsed.value;
    // every name is worked out while the export is open; the replies go out after it is released
    const names = new Set<string>();
    try {
      const exp = opened.handle.export;
      const available = availableContexts(exp);
      if (!isSet) {
        const listed = listedContexts(exp, available);
        for (const ctx of listed) if (queries.length === 0 || queries.some((q) => matchesListQuery(ctx, q))) names.add(ctx);
      } else {
        // SET: only exact names select; wildcards ("base:") select nothing, as the spec asks
        for (const ctx of available) if (queries.includes(ctx)) names.add(ctx);
      }
      // exact names the export answers for but does not list in full
      for (const q of queries) if (!names.has(q) && acceptsExtra(exp, q)) names.add(q);
    } finally {
      opened.handle.release();
    }

    if (!isSet) {
      for (const name of names) await this.reply(option, NBD_REP_META_CONTEXT, metaContextReply(0, name));
      return this.reply(option, NBD_REP_ACK);
    }

    if (names.size > MAX_SELECTED_META_CONTEXTS) {
      this.log.warn({ asked: names.size, max: MAX_SELECTED_META_CONTEXTS }, 'too many meta contexts asked for');
      return this.reply(option, NBD_REP_ERR_TOO_BIG, `at most ${MAX_SELECTED_META_CONTEXTS} meta contexts can be selected`);
    }
    const selected: MetaContext[] = [...names].map((name, i) => ({ id: i + 1, name }));
    for (const ctx of selected) await this.reply(option, NBD_REP_META_CONTEXT, metaContextReply(ctx.id, ctx.name));
    await this.reply(option, NBD_REP_ACK);
    this.metaContextExport = opened.name;
    this.metaContexts = selected;
  }

  /* ---- helpers ---- */

  /** Resolves a client-given name (the empty name means the default export) and opens it. */
  private open(requested: string): { name: string; handle: ExportHandle } | undefined {
    const name = requested === '' ? this.options.defaultExport : requested;
    if (name === undefined) return undefined;
    try {
      const handle = this.options.provider.open(name);
      return handle === undefined ? undefined : { name, handle };
    } catch (err) {
      this.log.warn({ err, export: name }, 'export provider failed to open an export');
      return undefined;
    }
  }

  private session(name: string, handle: ExportHandle): NegotiatedExport {
    const exp = handle.export;
    return {
      name,
      handle,
      structuredReplies: this.structuredReplies,
      metaContexts: this.structuredReplies && this.metaContextExport === name ? this.metaContexts : [],
      transmissionFlags: transmissionFlagsFor(exp, this.structuredReplies),
      blockSize: advertisedBlockSize(exp, this.options.maxPayload),
    };
  }

  private invalid(option: number, why: string): Promise<void> {
    this.log.warn({ option, why }, 'invalid option');
    return this.reply(option, NBD_REP_ERR_INVALID, why);
  }

  /** Sends one option reply; an error reply carries `data` as a message string. */
  private async reply(option: number, type: number, data?: Buffer | string): Promise<void> {
    const body = typeof data === 'string' ? Buffer.from(data, 'utf8') : (data ?? null);
    if (!this.writeReply(option, type, body)) await this.drain();
  }

  private writeReply(option: number, type: number, body: Buffer | null): boolean {
    const header = Buffer.alloc(NBD_OPTION_REPLY_HEADER_SIZE);
    header.writeBigUInt64BE(NBD_REP_MAGIC, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(type, 12);
    header.writeUInt32BE(body === null ? 0 : body.length, 16);
    const output = this.channel.output;
    if (body === null || body.length === 0) return output.write(header);
    output.cork();
    output.write(header);
    const ok = output.write(body);
    output.uncork();
    return ok;
  }

  /** Waits until the client has read our replies (a client that never reads must not grow our buffers). */
  private drain(): Promise<void> {
    const output = this.channel.output;
    return new Promise<void>((resolve, reject) => {
      if (output.destroyed) {
        reject(new ChannelClosedError());
        return;
      }
      const done = (): void => {
        output.removeListener('drain', done);
        output.removeListener('close', closed);
        resolve();
      };
      const closed = (): void => {
        output.removeListener('drain', done);
        reject(new ChannelClosedError());
      };
      output.once('drain', done);
      output.once('close', closed);
    });
  }
}

function infoString(info: number, text: string): Buffer {
  const data = Buffer.alloc(2 + Buffer.byteLength(text, 'utf8'));
  data.writeUInt16BE(info, 0);
  data.write(text, 2, 'utf8');
  return data;
}

function metaContextReply(id: number, name: string): Buffer {
  const data = Buffer.alloc(4 + Buffer.byteLength(name, 'utf8'));
  data.writeUInt32BE(id, 0);
  data.write(name, 4, 'utf8');
  return data;
}
