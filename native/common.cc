// Argument validation and errno errors for the thinvault native addon.
#include "common.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

namespace thinvault {

namespace {

// Used when the C library has no strerrorname_np (glibc < 2.32, musl, ...).
const char* ErrnoNameFromTable(int err) {
  switch (err) {
#define TV_ERRNO(name) \
  case name:           \
    return #name;
    TV_ERRNO(EPERM) TV_ERRNO(ENOENT) TV_ERRNO(ESRCH) TV_ERRNO(EINTR) TV_ERRNO(EIO) TV_ERRNO(ENXIO)
    TV_ERRNO(E2BIG) TV_ERRNO(ENOEXEC) TV_ERRNO(EBADF) TV_ERRNO(ECHILD) TV_ERRNO(EAGAIN) TV_ERRNO(ENOMEM)
    TV_ERRNO(EACCES) TV_ERRNO(EFAULT) TV_ERRNO(EBUSY) TV_ERRNO(EEXIST) TV_ERRNO(EXDEV) TV_ERRNO(ENODEV)
    TV_ERRNO(ENOTDIR) TV_ERRNO(EISDIR) TV_ERRNO(EINVAL) TV_ERRNO(ENFILE) TV_ERRNO(EMFILE) TV_ERRNO(ENOTTY)
    TV_ERRNO(ETXTBSY) TV_ERRNO(EFBIG) TV_ERRNO(ENOSPC) TV_ERRNO(ESPIPE) TV_ERRNO(EROFS) TV_ERRNO(EMLINK)
    TV_ERRNO(EPIPE) TV_ERRNO(ERANGE) TV_ERRNO(EDEADLK) TV_ERRNO(ENAMETOOLONG) TV_ERRNO(ENOLCK)
    TV_ERRNO(ENOSYS) TV_ERRNO(ENOTEMPTY) TV_ERRNO(ELOOP) TV_ERRNO(ENOMSG) TV_ERRNO(ENODATA)
    TV_ERRNO(EOVERFLOW) TV_ERRNO(EOPNOTSUPP) TV_ERRNO(ETIMEDOUT) TV_ERRNO(ECANCELED) TV_ERRNO(EDQUOT)
    TV_ERRNO(ENOMEDIUM) TV_ERRNO(EMEDIUMTYPE) TV_ERRNO(ENOTBLK) TV_ERRNO(EDOM) TV_ERRNO(ENOTSOCK)
    TV_ERRNO(ECONNRESET) TV_ERRNO(ECONNREFUSED) TV_ERRNO(EADDRINUSE) TV_ERRNO(ENOTCONN)
#if defined(ENOTSUP) && ENOTSUP != EOPNOTSUPP
    TV_ERRNO(ENOTSUP)
#endif
#if defined(EWOULDBLOCK) && EWOULDBLOCK != EAGAIN
    TV_ERRNO(EWOULDBLOCK)
#endif
#undef TV_ERRNO
    default:
      return nullptr;
  }
}

void SetCode(Napi::Error& e, const char* code) { e.Set("code", Napi::String::New(e.Env(), code)); }

std::string Describe(Napi::Value v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsNumber()) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "number %.17g", v.As<Napi::Number>().DoubleValue());
    return buf;
  }
  if (v.IsString()) return "string";
  if (v.IsBoolean()) return "boolean";
  if (v.IsArray()) return "array";
  if (v.IsFunction()) return "function";
  if (v.IsTypedArray()) return "typed array";
  if (v.IsBigInt()) return "bigint";
  if (v.IsObject()) return "object";
  return "symbol";
}

}  // namespace

const char* ErrnoName(int err) {
  static thread_local char unknown[24];
  const char* name = nullptr;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  name = strerrorname_np(err);
#endif
  if (name == nullptr) name = ErrnoNameFromTable(err);
  if (name == nullptr) {
    std::snprintf(unknown, sizeof unknown, "E%d", err);
    name = unknown;
  }
  return name;
}

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const char* path) {
  char buf[256];
  const char* text;
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
  text = strerror_r(err, buf, sizeof buf);  // GNU variant returns the string
#else
  text = strerror_r(err, buf, sizeof buf) == 0 ? buf : "Unknown error";
#endif
  std::string msg = std::string(syscall) + ": " + text;
  if (path != nullptr) msg += std::string(", '") + path + "'";
  Napi::Error e = Napi::Error::New(env, msg);
  SetCode(e, ErrnoName(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  if (path != nullptr) e.Set("path", Napi::String::New(env, path));
  return e;
}

void ThrowTypeError(Napi::Env env, const std::string& msg) {
  Napi::Error e = Napi::TypeError::New(env, msg);
  SetCode(e, "ERR_INVALID_ARG_TYPE");
  throw e;
}

void ThrowRangeError(Napi::Env env, const std::string& msg) {
  Napi::Error e = Napi::RangeError::New(env, msg);
  SetCode(e, "ERR_OUT_OF_RANGE");
  throw e;
}

int64_t ArgInteger(const Napi::CallbackInfo& info, size_t i, const char* name, double min, double max) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) {
    ThrowTypeError(info.Env(), std::string("The \"") + name + "\" argument must be a number, received " + Describe(v));
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::trunc(d) || d < min || d > max) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "The \"%s\" argument must be an integer in [%.17g, %.17g], received %.17g", name,
                  min, max, d);
    ThrowRangeError(info.Env(), buf);
  }
  return static_cast<int64_t>(d);
}

int ArgFd(const Napi::CallbackInfo& info, size_t i) {
  return static_cast<int>(ArgInteger(info, i, "fd", 0, 2147483647.0));
}

int64_t ArgOffset(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return ArgInteger(info, i, name, 0, kMaxSafeInteger);
}

bool ArgBool(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsBoolean()) {
    ThrowTypeError(info.Env(), std::string("The \"") + name + "\" argument must be a boolean, received " + Describe(v));
  }
  return v.As<Napi::Boolean>().Value();
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsString()) {
    ThrowTypeError(info.Env(), std::string("The \"") + name + "\" argument must be a string, received " + Describe(v));
  }
  return v.As<Napi::String>().Utf8Value();
}

bool GetBytes(Napi::Value v, Bytes* out) {
  napi_env env = v.Env();
  napi_value value = v;
  bool is = false;
  if (napi_is_typedarray(env, value, &is) == napi_ok && is) {
    napi_typedarray_type type;
    size_t length = 0;
    void* data = nullptr;
    if (napi_get_typedarray_info(env, value, &type, &length, &data, nullptr, nullptr) != napi_ok) return false;
    size_t elem = 1;
    switch (type) {
      case napi_int8_array:
      case napi_uint8_array:
      case napi_uint8_clamped_array:
        elem = 1;
        break;
      case napi_int16_array:
      case napi_uint16_array:
        elem = 2;
        break;
      case napi_int32_array:
      case napi_uint32_array:
      case napi_float32_array:
        elem = 4;
        break;
      case napi_float64_array:
      case napi_bigint64_array:
      case napi_biguint64_array:
        elem = 8;
        break;
      default: {  // a kind newer than this code: ask JS for its byteLength
        Napi::Value bl = v.As<Napi::Object>().Get("byteLength");
        if (!bl.IsNumber()) return false;
        out->data = static_cast<uint8_t*>(data);
        out->length = static_cast<size_t>(bl.As<Napi::Number>().Int64Value());
        return true;
      }
    }
    out->data = static_cast<uint8_t*>(data);
    out->length = length * elem;
    return true;
  }
  if (napi_is_dataview(env, value, &is) == napi_ok && is) {
    size_t length = 0;
    void* data = nullptr;
    if (napi_get_dataview_info(env, value, &length, &data, nullptr, nullptr) != napi_ok) return false;
    out->data = static_cast<uint8_t*>(data);
    out->length = length;
    return true;
  }
  return false;
}

Bytes ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Bytes b;
  if (!GetBytes(info[i], &b)) {
    ThrowTypeError(info.Env(), std::string("The \"") + name +
                                   "\" argument must be a Buffer, Uint8Array or other ArrayBufferView, received " +
                                   Describe(info[i]));
  }
  if (b.data == nullptr && b.length != 0) ThrowTypeError(info.Env(), std::string("\"") + name + "\" is detached");
  return b;
}

}  // namespace thinvault
