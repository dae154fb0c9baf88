/**
 * NBD protocol constants, named exactly as in the NBD protocol specification (`doc/proto.md` of
 * NetworkBlockDevice/nbd) and libnbd's `lib/nbd-protocol.h`. Every wire number used by src/nbd lives here.
 */

/* ---- magic numbers ---- */

/** ASCII "NBDMAGIC", first 8 bytes the server sends (INIT_PASSWD). */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** ASCII "IHAVEOPT": newstyle handshake magic, also the magic of every option the client sends. */
export const NBD_NEW_VERSION = 0x49484156454f5054n;
/** Magic of every fixed-newstyle option reply. */
export const NBD_REP_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
/** Reserved by the experimental EXTENDED_HEADERS extension (not spoken by thinvault). */
export const NBD_EXTENDED_REQUEST_MAGIC = 0x21e41c71;

/* ---- handshake flags (server, 16 bits) ---- */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;

/* ---- client flags (32 bits) ---- */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

/* ---- transmission flags (16 bits) ---- */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;
export const NBD_FLAG_BLOCK_STATUS_PAYLOAD = 1 << 12;

/* ---- options ---- */
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_PEEK_EXPORT = 4;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_OPT_EXTENDED_HEADERS = 11;

/* ---- option reply types ---- */
const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_ERR_UNSUP = (NBD_REP_FLAG_ERROR | 1) >>> 0;
export const NBD_REP_ERR_POLICY = (NBD_REP_FLAG_ERROR | 2) >>> 0;
export const NBD_REP_ERR_INVALID = (NBD_REP_FLAG_ERROR | 3) >>> 0;
export const NBD_REP_ERR_PLATFORM = (NBD_REP_FLAG_ERROR | 4) >>> 0;
export const NBD_REP_ERR_TLS_REQD = (NBD_REP_FLAG_ERROR | 5) >>> 0;
export const NBD_REP_ERR_UNKNOWN = (NBD_REP_FLAG_ERROR | 6) >>> 0;
export const NBD_REP_ERR_SHUTDOWN = (NBD_REP_FLAG_ERROR | 7) >>> 0;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = (NBD_REP_FLAG_ERROR | 8) >>> 0;
export const NBD_REP_ERR_TOO_BIG = (NBD_REP_FLAG_ERROR | 9) >>> 0;
export const NBD_REP_ERR_EXT_HEADER_REQD = (NBD_REP_FLAG_ERROR | 10) >>> 0;

/** True for an option reply type with bit 31 (error) set. */
export function isOptionReplyError(reply: number): boolean {
  return (reply & NBD_REP_FLAG_ERROR) !== 0;
}

/* ---- NBD_REP_INFO information types ---- */
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

/* ---- commands ---- */
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

/* ---- command flags ---- */
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;
export const NBD_CMD_FLAG_PAYLOAD_LEN = 1 << 5;

/* ---- structured reply flags and types ---- */
export const NBD_REPLY_FLAG_DONE = 1 << 0;
const NBD_REPLY_TYPE_FLAG_ERROR = 1 << 15;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = NBD_REPLY_TYPE_FLAG_ERROR | 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = NBD_REPLY_TYPE_FLAG_ERROR | 2;

/* ---- base:allocation ---- */
export const NBD_META_CONTEXT_BASE_ALLOCATION = 'base:allocation';
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

/* ---- error values ---- */
export const NBD_SUCCESS = 0;
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/* ---- wire sizes (bytes) ---- */
/** NBDMAGIC + IHAVEOPT + 16-bit handshake flags */
export const NBD_HANDSHAKE_GREETING_SIZE = 8 + 8 + 2;
export const NBD_CLIENT_FLAGS_SIZE = 4;
/** IHAVEOPT + option + length */
export const NBD_OPTION_HEADER_SIZE = 8 + 4 + 4;
/** magic + option + reply type + length */
export const NBD_OPTION_REPLY_HEADER_SIZE = 8 + 4 + 4 + 4;
/** reply to NBD_OPT_EXPORT_NAME: size + flags (+ 124 zero bytes unless NO_ZEROES) */
export const NBD_EXPORT_NAME_REPLY_SIZE = 8 + 2;
export const NBD_EXPORT_NAME_REPLY_ZEROES = 124;
/** magic + flags + type + cookie + offset + length */
export const NBD_REQUEST_SIZE = 4 + 2 + 2 + 8 + 8 + 4;
/** magic + error + cookie */
export const NBD_SIMPLE_REPLY_SIZE = 4 + 4 + 8;
/** magic + flags + type + cookie + length */
export const NBD_STRUCTURED_REPLY_SIZE = 4 + 2 + 2 + 8 + 4;
/** payload of NBD_REPLY_TYPE_OFFSET_DATA before the data: offset */
export const NBD_OFFSET_DATA_PREFIX_SIZE = 8;
/** payload of NBD_REPLY_TYPE_OFFSET_HOLE: offset + hole size */
export const NBD_OFFSET_HOLE_SIZE = 8 + 4;
/** payload of NBD_REPLY_TYPE_ERROR before the message: error + message length */
export const NBD_ERROR_PREFIX_SIZE = 4 + 2;
/** payload of NBD_REPLY_TYPE_BLOCK_STATUS before the descriptors: context id */
export const NBD_BLOCK_STATUS_PREFIX_SIZE = 4;
/** one block descriptor: length + status flags */
export const NBD_BLOCK_DESCRIPTOR_SIZE = 4 + 4;

/* ---- limits ---- */
/** Maximum length of any string on the wire (export names, queries, messages). */
export const NBD_MAX_STRING = 4096;
/** Maximum payload a client may always send: 2^25 bytes (32 MiB). */
export const NBD_MAX_PAYLOAD_DEFAULT = 2 ** 25;
/** A server SHOULD NOT send more than 2^20 extents in one block status chunk. */
export const NBD_MAX_BLOCK_STATUS_EXTENTS = 2 ** 20;
/** DF reads of up to this length MUST be supported unfragmented. */
export const NBD_DF_MINIMUM_SUPPORTED = 65536;
