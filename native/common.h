// Shared helpers of the thinvault native addon: argument validation, errno errors, the Promise worker.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace thinvault {

// ---- errors ---------------------------------------------------------------------------------------------

// "ENOSPC" for 28 etc.; "E<number>" when unknown.
const char* ErrnoName(int err);

// Error with message "<syscall>: <strerror>", code = errno name, errno = err (positive), syscall = name.
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const char* path = nullptr);

[[noreturn]] void ThrowTypeError(Napi::Env env, const std::string& msg);
[[noreturn]] void ThrowRangeError(Napi::Env env, const std::string& msg);

// ---- argument validation (throws TypeError / RangeError) -------------------------------------------------

constexpr double kMaxSafeInteger = 9007199254740991.0;  // Number.MAX_SAFE_INTEGER

// An integer-valued number in [min, max].
int64_t ArgInteger(const Napi::CallbackInfo& info, size_t i, const char* name, double min, double max);
int ArgFd(const Napi::CallbackInfo& info, size_t i);
// A byte position / length: integer in [0, 2^53-1].
int64_t ArgOffset(const Napi::CallbackInfo& info, size_t i, const char* name);
bool ArgBool(const Napi::CallbackInfo& info, size_t i, const char* name);
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name);

struct Bytes {
  uint8_t* data = nullptr;
  size_t length = 0;
};

// Any ArrayBufferView (Buffer, Uint8Array, other typed arrays, DataView): its bytes.
bool GetBytes(Napi::Value v, Bytes* out);
Bytes ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* name);

// ---- Promise-returning worker ----------------------------------------------------------------------------

// Runs Execute() on libuv's thread pool, then resolves/rejects a Promise on the JS thread. Subclasses set
// err_/syscall_ on failure instead of calling SetError, so the rejection is a proper errno Error.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, const char* resource)
      : Napi::AsyncWorker(env, resource), deferred_(Napi::Promise::Deferred::New(env)) {}

  // Keeps a JS object (a Buffer, an array of Buffers) alive until the worker is done.
  void Keep(Napi::Value v) {
    if (v.IsObject()) refs_.emplace_back(Napi::Persistent(v.As<Napi::Object>()));
  }

  // Queues the worker; returns its promise. The worker deletes itself after settling.
  Napi::Promise Start() {
    Napi::Promise p = deferred_.Promise();
    Queue();
    return p;
  }

 protected:
  void Fail(int err, const char* syscall) {
    err_ = err;
    syscall_ = syscall;
  }
  // Called on the JS thread when Execute succeeded.
  virtual Napi::Value Result(Napi::Env env) { return env.Undefined(); }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      deferred_.Reject(ErrnoError(env, err_, syscall_, path_.empty() ? nullptr : path_.c_str()).Value());
    } else {
      deferred_.Resolve(Result(env));
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

  int err_ = 0;
  const char* syscall_ = "";
  std::string path_;  // set to add `path` to the rejection

 private:
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::ObjectReference> refs_;
};

// Registration functions of each source file.
void InitCrc32c(Napi::Env env, Napi::Object exports);
void InitIo(Napi::Env env, Napi::Object exports);
void InitTape(Napi::Env env, Napi::Object exports);

}  // namespace thinvault
