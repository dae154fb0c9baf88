// thinvault native addon: module registration and the (synchronous) CRC32C bindings.

#include "common.h"
#include "crc32c.h"

#include <initializer_list>
#include <string>

namespace thinvault {

namespace {

uint32_t ArgCrc(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || info[i].IsUndefined()) return 0;
  // Accept the unsigned value we return and its signed 32-bit form (`crc | 0`).
  return static_cast<uint32_t>(ArgInteger(info, i, "crc", -2147483648.0, 4294967295.0));
}

Napi::Value Crc32cJs(const Napi::CallbackInfo& info) {
  Bytes b = ArgBytes(info, 0, "data");
  uint32_t crc = ArgCrc(info, 1);
  return Napi::Number::New(info.Env(), crc32c::Crc32c(crc, b.data, b.length));
}

Napi::Value Crc32cPortableJs(const Napi::CallbackInfo& info) {
  Bytes b = ArgBytes(info, 0, "data");
  uint32_t crc = ArgCrc(info, 1);
  return Napi::Number::New(info.Env(), crc32c::Portable(crc, b.data, b.length));
}

// crc32cWith(implementation, data, crc?): a named implementation (tests, benchmarks).
Napi::Value Crc32cWithJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) ThrowTypeError(env, "The \"implementation\" argument must be a string");
  char buf[32];
  size_t len = 0;
  if (napi_get_value_string_utf8(env, info[0], buf, sizeof buf, &len) != napi_ok) {
    throw Napi::Error::New(env);
  }
  std::string name(buf, len);  // short: no allocation (small-string optimisation)
  crc32c::Impl impl;
  if (len >= sizeof buf - 1 || !crc32c::FromName(buf, &impl)) {
    Napi::Error e = Napi::TypeError::New(env, "unknown CRC32C implementation '" + name +
                                                  "' (expected 'sse42-pclmul', 'sse42' or 'portable')");
    e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_VALUE"));
    throw e;
  }
  if (!crc32c::Supported(impl)) {
    Napi::Error e = Napi::Error::New(env, "CRC32C implementation '" + name + "' is not supported by this CPU");
    e.Set("code", Napi::String::New(env, "ENOTSUP"));
    throw e;
  }
  Bytes b = ArgBytes(info, 1, "data");
  uint32_t crc = ArgCrc(info, 2);
  return Napi::Number::New(env, crc32c::Compute(impl, crc, b.data, b.length));
}

Napi::Value Crc32cImplementationJs(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), crc32c::Name(crc32c::Best()));
}

// The implementations this CPU can run, fastest first.
Napi::Value Crc32cImplementationsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  for (crc32c::Impl i : {crc32c::Impl::kSse42Pclmul, crc32c::Impl::kSse42, crc32c::Impl::kPortable}) {
    if (crc32c::Supported(i)) out.Set(n++, Napi::String::New(env, crc32c::Name(i)));
  }
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  (void)crc32c::Best();  // detect the CPU (and self-test) once, at load
  exports.Set("crc32c", Napi::Function::New(env, Crc32cJs, "crc32c"));
  exports.Set("crc32cPortable", Napi::Function::New(env, Crc32cPortableJs, "crc32cPortable"));
  exports.Set("crc32cWith", Napi::Function::New(env, Crc32cWithJs, "crc32cWith"));
  exports.Set("crc32cImplementation", Napi::Function::New(env, Crc32cImplementationJs, "crc32cImplementation"));
  exports.Set("crc32cImplementations", Napi::Function::New(env, Crc32cImplementationsJs, "crc32cImplementations"));
  InitIo(env, exports);
  InitTape(env, exports);
  return exports;
}

}  // namespace

}  // namespace thinvault

static Napi::Object InitThinvault(Napi::Env env, Napi::Object exports) { return thinvault::Init(env, exports); }

NODE_API_MODULE(thinvault_native, InitThinvault)
