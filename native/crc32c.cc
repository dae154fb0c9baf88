// CRC32C: a portable slicing-by-8 implementation and, on x86-64, hardware paths using the SSE4.2 crc32
// instruction. The fast path runs three independent crc32 streams over three adjacent blocks (the instruction
// has a latency of 3 cycles but a throughput of 1 per cycle) and merges the three partial CRCs with one
// carry-less multiplication (PCLMULQDQ) per block; see the derivation at CombineShift below.
//
// Notation: a 32-bit CRC value c stands for the polynomial sum(c_i * x^(31-i)) over GF(2) (bit-reflected),
// P is the Castagnoli polynomial (0x1EDC6F41, reflected 0x82F63B78). The CRC "register" here is the raw
// state without the initial/final inversion; the public functions add the inversions.

#include "crc32c.h"

#include <cstdlib>
#include <cstring>
#include <initializer_list>

#if defined(__x86_64__) && !defined(THINVAULT_NO_X86)
#define TV_X86 1
#include <immintrin.h>
#else
#define TV_X86 0
#endif

namespace thinvault {
namespace crc32c {

namespace {

constexpr uint32_t kPoly = 0x82F63B78u;

// ---- GF(2)[x] mod P arithmetic (bit-reflected), used to build the tables at compile time -----------------

// a * b mod P.
constexpr uint32_t MulModP(uint32_t a, uint32_t b) {
  uint32_t r = 0;
  for (int i = 0; i < 32; i++) {  // term x^i of a is bit (31 - i)
    if (a & (0x80000000u >> i)) r ^= b;
    b = (b & 1u) ? (b >> 1) ^ kPoly : (b >> 1);  // b *= x
  }
  return r;
}

// x^e mod P.
constexpr uint32_t XPowModP(uint64_t e) {
  uint32_t result = 0x80000000u;  // 1
  uint32_t square = 0x40000000u;  // x
  while (e != 0) {
    if (e & 1u) result = MulModP(result, square);
    square = MulModP(square, square);
    e >>= 1;
  }
  return result;
}

// ---- portable: slicing-by-8 ---------------------------------------------------------------------------------

struct SliceTables {
  uint32_t t[8][256];
};

constexpr SliceTables MakeSliceTables() {
  SliceTables s{};
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1u) ? (c >> 1) ^ kPoly : (c >> 1);
    s.t[0][i] = c;
  }
  // t[k][b]: byte b followed by k zero bytes.
  for (int k = 1; k < 8; k++) {
    for (uint32_t i = 0; i < 256; i++) s.t[k][i] = (s.t[k - 1][i] >> 8) ^ s.t[0][s.t[k - 1][i] & 0xFFu];
  }
  return s;
}

constexpr SliceTables kSlice = MakeSliceTables();

inline uint32_t LoadLe32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap32(v);
#endif
  return v;
}

uint32_t PortableRaw(uint32_t c, const uint8_t* p, size_t n) {
  const auto& t = kSlice.t;
  while (n != 0 && (reinterpret_cast<uintptr_t>(p) & 7u) != 0) {
    c = (c >> 8) ^ t[0][(c ^ *p++) & 0xFFu];
    n--;
  }
  while (n >= 8) {
    uint32_t lo = LoadLe32(p) ^ c;
    uint32_t hi = LoadLe32(p + 4);
    c = t[7][lo & 0xFFu] ^ t[6][(lo >> 8) & 0xFFu] ^ t[5][(lo >> 16) & 0xFFu] ^ t[4][lo >> 24] ^
        t[3][hi & 0xFFu] ^ t[2][(hi >> 8) & 0xFFu] ^ t[1][(hi >> 16) & 0xFFu] ^ t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n != 0) {
    c = (c >> 8) ^ t[0][(c ^ *p++) & 0xFFu];
    n--;
  }
  return c;
}

#if TV_X86

// ---- x86-64: SSE4.2 crc32 and PCLMULQDQ ----------------------------------------------------------------------
//
// Merging streams. Processing message M (m bytes) after message A from state 0 gives
//   crc(A || M) = crc(A) * x^(8m)  xor  crc(M)        (mod P)
// so three streams over blocks S0, S1, S2 of b bytes each, where stream 0 starts from the incoming state and
// streams 1 and 2 from 0, merge as  c0 * x^(16b)  xor  c1 * x^(8b)  xor  c2.
//
// The shift c * x^(8b) is done with one carry-less multiply and one crc32: for 32-bit reflected c and k, the
// 64-bit product q = clmul(c, k) has bit j standing for x^(62-j). Fed to the crc32 instruction as a 64-bit
// data word (bit j standing for x^(63-j), i.e. the polynomial x * c * k) from state 0, it yields
// (x * c * k) * x^32 mod P = c * k * x^33. With k = x^(8b - 33) mod P that is c * x^(8b). Both shifts are
// linear, so the two products are xored and reduced with a single crc32.

constexpr size_t kMaxBlock = 4096;  // bytes per stream per round (3 x 4 KiB = 12 KiB per round)
constexpr size_t kMinBlock = 16;    // below 3 x 16 bytes one stream is as fast as three plus the merge

struct ShiftConsts {
  uint32_t k1;  // x^(8b - 33):  shifts the middle stream over one block
  uint32_t k2;  // x^(16b - 33): shifts the first stream over two blocks
};

struct ShiftTable {
  ShiftConsts c[kMaxBlock / 8 + 1];  // index b / 8
};

constexpr ShiftTable MakeShiftTable() {
  ShiftTable t{};
  const uint32_t x64 = XPowModP(64);
  const uint32_t x128 = XPowModP(128);
  uint32_t k1 = XPowModP(64 - 33);   // b = 8
  uint32_t k2 = XPowModP(128 - 33);  // b = 8
  for (size_t i = 1; i <= kMaxBlock / 8; i++) {
    t.c[i].k1 = k1;
    t.c[i].k2 = k2;
    k1 = MulModP(k1, x64);
    k2 = MulModP(k2, x128);
  }
  return t;
}

constexpr ShiftTable kShift = MakeShiftTable();

inline uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

__attribute__((target("sse4.2"))) uint32_t Sse42Raw(uint32_t c, const uint8_t* p, size_t n) {
  while (n != 0 && (reinterpret_cast<uintptr_t>(p) & 7u) != 0) {
    c = _mm_crc32_u8(c, *p++);
    n--;
  }
  uint64_t c64 = c;
  while (n >= 32) {
    c64 = _mm_crc32_u64(c64, Load64(p));
    c64 = _mm_crc32_u64(c64, Load64(p + 8));
    c64 = _mm_crc32_u64(c64, Load64(p + 16));
    c64 = _mm_crc32_u64(c64, Load64(p + 24));
    p += 32;
    n -= 32;
  }
  while (n >= 8) {
    c64 = _mm_crc32_u64(c64, Load64(p));
    p += 8;
    n -= 8;
  }
  c = static_cast<uint32_t>(c64);
  while (n != 0) {
    c = _mm_crc32_u8(c, *p++);
    n--;
  }
  return c;
}

__attribute__((target("sse4.2,pclmul"))) uint32_t Sse42PclmulRaw(uint32_t c, const uint8_t* p, size_t n) {
  while (n != 0 && (reinterpret_cast<uintptr_t>(p) & 7u) != 0) {
    c = _mm_crc32_u8(c, *p++);
    n--;
  }
  while (n >= 3 * kMinBlock) {
    size_t b = (n / 24) * 8;  // a multiple of 8, 3 * b <= n
    if (b > kMaxBlock) b = kMaxBlock;
    uint64_t c0 = c, c1 = 0, c2 = 0;
    const uint8_t* p1 = p + b;
    const uint8_t* p2 = p1 + b;
    for (size_t i = 0; i < b; i += 8) {
      c0 = _mm_crc32_u64(c0, Load64(p + i));
      c1 = _mm_crc32_u64(c1, Load64(p1 + i));
      c2 = _mm_crc32_u64(c2, Load64(p2 + i));
    }
    const ShiftConsts& k = kShift.c[b / 8];
    __m128i s0 = _mm_clmulepi64_si128(_mm_cvtsi32_si128(static_cast<int>(static_cast<uint32_t>(c0))),
                                      _mm_cvtsi32_si128(static_cast<int>(k.k2)), 0x00);
    __m128i s1 = _mm_clmulepi64_si128(_mm_cvtsi32_si128(static_cast<int>(static_cast<uint32_t>(c1))),
                                      _mm_cvtsi32_si128(static_cast<int>(k.k1)), 0x00);
    uint64_t q = static_cast<uint64_t>(_mm_cvtsi128_si64(_mm_xor_si128(s0, s1)));
    c = static_cast<uint32_t>(_mm_crc32_u64(0, q)) ^ static_cast<uint32_t>(c2);
    p += 3 * b;
    n -= 3 * b;
  }
  uint64_t c64 = c;
  while (n >= 8) {
    c64 = _mm_crc32_u64(c64, Load64(p));
    p += 8;
    n -= 8;
  }
  c = static_cast<uint32_t>(c64);
  while (n != 0) {
    c = _mm_crc32_u8(c, *p++);
    n--;
  }
  return c;
}

bool CpuHasSse42() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}

bool CpuHasPclmul() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("pclmul");
}

#endif  // TV_X86

bool SelfTest(Impl impl) {
  // Check-value plus a buffer long enough for several three-stream rounds, odd length, odd offset.
  static const char kCheck[] = "123456789";
  if (Compute(impl, 0, kCheck, 9) != 0xE3069283u) return false;
  static uint8_t buf[3 * 4096 * 2 + 1000];
  uint32_t s = 0x12345678u;
  for (auto& byte : buf) {
    s = s * 1103515245u + 12345u;
    byte = static_cast<uint8_t>(s >> 24);
  }
  for (size_t off : {size_t{0}, size_t{3}}) {
    for (size_t len : {size_t{47}, size_t{48}, size_t{1000}, sizeof buf - 3}) {
      if (Compute(impl, 0x9A3B, buf + off, len) != Portable(0x9A3B, buf + off, len)) return false;
    }
  }
  return true;
}

Impl Detect() {
  Impl best = Impl::kPortable;
  if (Supported(Impl::kSse42Pclmul) && SelfTest(Impl::kSse42Pclmul)) {
    best = Impl::kSse42Pclmul;
  } else if (Supported(Impl::kSse42) && SelfTest(Impl::kSse42)) {
    best = Impl::kSse42;
  }
  const char* forced = std::getenv("THINVAULT_CRC32C");
  Impl want;
  if (forced != nullptr && FromName(forced, &want) && Supported(want) && static_cast<int>(want) < static_cast<int>(best)) {
    best = want;
  }
  return best;
}

}  // namespace

uint32_t Portable(uint32_t crc, const void* data, size_t n) {
  return ~PortableRaw(~crc, static_cast<const uint8_t*>(data), n);
}

uint32_t Sse42(uint32_t crc, const void* data, size_t n) {
#if TV_X86
  return ~Sse42Raw(~crc, static_cast<const uint8_t*>(data), n);
#else
  return Portable(crc, data, n);
#endif
}

uint32_t Sse42Pclmul(uint32_t crc, const void* data, size_t n) {
#if TV_X86
  return ~Sse42PclmulRaw(~crc, static_cast<const uint8_t*>(data), n);
#else
  return Portable(crc, data, n);
#endif
}

bool Supported(Impl impl) {
  switch (impl) {
    case Impl::kPortable:
      return true;
#if TV_X86
    case Impl::kSse42:
      return CpuHasSse42();
    case Impl::kSse42Pclmul:
      return CpuHasPclmul();
#endif
    default:
      return false;
  }
}

Impl Best() {
  static const Impl best = Detect();  // thread-safe one-time initialisation
  return best;
}

const char* Name(Impl impl) {
  switch (impl) {
    case Impl::kSse42Pclmul:
      return "sse42-pclmul";
    case Impl::kSse42:
      return "sse42";
    default:
      return "portable";
  }
}

bool FromName(const char* name, Impl* out) {
  for (Impl i : {Impl::kPortable, Impl::kSse42, Impl::kSse42Pclmul}) {
    if (std::strcmp(name, Name(i)) == 0) {
      *out = i;
      return true;
    }
  }
  return false;
}

uint32_t Compute(Impl impl, uint32_t crc, const void* data, size_t n) {
  switch (impl) {
    case Impl::kSse42Pclmul:
      return Sse42Pclmul(crc, data, n);
    case Impl::kSse42:
      return Sse42(crc, data, n);
    default:
      return Portable(crc, data, n);
  }
}

uint32_t Crc32c(uint32_t crc, const void* data, size_t n) { return Compute(Best(), crc, data, n); }

}  // namespace crc32c
}  // namespace thinvault
