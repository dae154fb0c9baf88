// CRC32C (Castagnoli, reflected polynomial 0x82F63B78) as used by iSCSI, ext4, btrfs:
// Crc32c(0, "123456789") == 0xE3069283. `crc` is the value returned by a previous call (0 to start), so
// Crc32c(Crc32c(0, a), b) == Crc32c(0, a + b). Pure C++, no Node-API; safe to call from any thread.
#pragma once

#include <cstddef>
#include <cstdint>

namespace thinvault {
namespace crc32c {

enum class Impl { kPortable, kSse42, kSse42Pclmul };

// Slicing-by-8 tables; always available.
uint32_t Portable(uint32_t crc, const void* data, size_t n);
// The SSE4.2 crc32 instruction, one stream. Only call when Supported(kSse42).
uint32_t Sse42(uint32_t crc, const void* data, size_t n);
// Three interleaved crc32 streams combined with PCLMUL. Only call when Supported(kSse42Pclmul).
uint32_t Sse42Pclmul(uint32_t crc, const void* data, size_t n);

bool Supported(Impl impl);
// The fastest supported implementation, chosen once (runtime CPU detection, a self-test, and the
// THINVAULT_CRC32C environment variable: "portable" | "sse42" | "sse42-pclmul" to force a slower one).
Impl Best();
const char* Name(Impl impl);
bool FromName(const char* name, Impl* out);

uint32_t Compute(Impl impl, uint32_t crc, const void* data, size_t n);
// Compute(Best(), ...).
uint32_t Crc32c(uint32_t crc, const void* data, size_t n);

}  // namespace crc32c
}  // namespace thinvault
