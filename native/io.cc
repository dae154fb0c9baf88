// File I/O of the thinvault native addon: open, positional reads/writes (plain and vectored), syncs,
// fallocate/punch/zero, the synchronous RWF_NOWAIT read, flock, aligned buffers.
// Every blocking call runs on libuv's thread pool (PromiseWorker) and returns a Promise.

#include <fcntl.h>
#include <linux/fs.h>  // BLKGETSIZE64
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "common.h"

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif
#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif
#ifndef FALLOC_FL_ZERO_RANGE
#define FALLOC_FL_ZERO_RANGE 0x10
#endif
#ifndef O_NOATIME
#define O_NOATIME 0
#endif
#ifndef O_DIRECT
#define O_DIRECT 0
#endif

namespace thinvault {

namespace {

// ---- the worker ---------------------------------------------------------------------------------------------

struct Outcome {
  int64_t value = 0;
  int err = 0;
  const char* syscall = "";
};

inline Outcome Ok(int64_t v = 0) { return Outcome{v, 0, ""}; }
inline Outcome Failed(int err, const char* syscall) { return Outcome{0, err, syscall}; }

enum class Returns { kUndefined, kNumber };

// Runs `fn` (returning an Outcome) on the thread pool; resolves a number or undefined.
template <typename Fn>
class FnWorker final : public PromiseWorker {
 public:
  FnWorker(Napi::Env env, const char* resource, Returns returns, Fn&& fn)
      : PromiseWorker(env, resource), fn_(std::move(fn)), returns_(returns) {}

  void SetPath(std::string path) { path_ = std::move(path); }

 protected:
  void Execute() override {
    Outcome o = fn_();
    if (o.err != 0) {
      Fail(o.err, o.syscall);
    } else {
      value_ = o.value;
    }
  }
  Napi::Value Result(Napi::Env env) override {
    if (returns_ == Returns::kNumber) return Napi::Number::New(env, static_cast<double>(value_));
    return env.Undefined();
  }

 private:
  Fn fn_;
  Returns returns_;
  int64_t value_ = 0;
};

template <typename Fn>
FnWorker<std::decay_t<Fn>>* MakeWorker(Napi::Env env, const char* resource, Returns returns, Fn&& fn) {
  return new FnWorker<std::decay_t<Fn>>(env, resource, returns, std::forward<Fn>(fn));
}

// ---- blocking helpers (run on the thread pool) -----------------------------------------------------------------

// Reads until `len` bytes or EOF. An EINVAL after partial progress ends the read too: with O_DIRECT a short
// read at end of file leaves an unaligned position that the next call rejects.
Outcome PreadAll(int fd, uint8_t* p, size_t len, int64_t pos) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd, p + done, len - done, static_cast<off_t>(pos + static_cast<int64_t>(done)));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL && done > 0) break;
      return Failed(errno, "pread");
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return Ok(static_cast<int64_t>(done));
}

Outcome PwriteAll(int fd, const uint8_t* p, size_t len, int64_t pos) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = ::pwrite(fd, p + done, len - done, static_cast<off_t>(pos + static_cast<int64_t>(done)));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Failed(errno, "pwrite");
    }
    if (n == 0) return Failed(EIO, "pwrite");  // no progress: never loop forever
    done += static_cast<size_t>(n);
  }
  return Ok(static_cast<int64_t>(done));
}

int IovMax() {
#ifdef IOV_MAX
  return IOV_MAX;
#else
  long v = sysconf(_SC_IOV_MAX);
  return v > 0 ? static_cast<int>(std::min<long>(v, 1024)) : 16;
#endif
}

// preadv/pwritev over any number of buffers: at most IOV_MAX per call, continuing after short transfers.
// `iov` is consumed (modified in place).
Outcome VectoredAll(int fd, std::vector<iovec>& iov, int64_t pos, bool write) {
  const char* name = write ? "pwritev" : "preadv";
  const size_t iovMax = static_cast<size_t>(IovMax());
  size_t idx = 0;
  size_t done = 0;
  auto skipEmpty = [&]() {
    while (idx < iov.size() && iov[idx].iov_len == 0) idx++;
  };
  skipEmpty();
  while (idx < iov.size()) {
    int cnt = static_cast<int>(std::min(iov.size() - idx, iovMax));
    off_t at = static_cast<off_t>(pos + static_cast<int64_t>(done));
    ssize_t n = write ? ::pwritev(fd, &iov[idx], cnt, at) : ::preadv(fd, &iov[idx], cnt, at);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (!write && errno == EINVAL && done > 0) break;  // O_DIRECT short read at EOF, see PreadAll
      return Failed(errno, name);
    }
    if (n == 0) {
      if (write) return Failed(EIO, name);
      break;  // EOF
    }
    done += static_cast<size_t>(n);
    size_t left = static_cast<size_t>(n);
    while (left > 0) {
      if (left >= iov[idx].iov_len) {
        left -= iov[idx].iov_len;
        idx++;
      } else {
        iov[idx].iov_base = static_cast<uint8_t*>(iov[idx].iov_base) + left;
        iov[idx].iov_len -= left;
        left = 0;
      }
    }
    skipEmpty();
  }
  return Ok(static_cast<int64_t>(done));
}

int Fallocate(int fd, int mode, int64_t off, int64_t len) {
  int r;
  do {
    r = ::fallocate(fd, mode, static_cast<off_t>(off), static_cast<off_t>(len));
  } while (r < 0 && errno == EINTR);
  return r < 0 ? errno : 0;
}

bool IsUnsupported(int err) { return err == EOPNOTSUPP || err == ENOSYS; }

// Last resort of zeroRange: write zeros over [off, off+len) clipped to the current size (KEEP_SIZE).
Outcome WriteZeros(int fd, int64_t off, int64_t len) {
  struct stat st;
  if (::fstat(fd, &st) < 0) return Failed(errno, "fstat");
  int64_t size = st.st_size;
  if (S_ISBLK(st.st_mode)) {
    uint64_t bytes = 0;
    if (::ioctl(fd, BLKGETSIZE64, &bytes) < 0) return Failed(errno, "ioctl");
    size = static_cast<int64_t>(bytes);
  } else if (!S_ISREG(st.st_mode)) {
    return Failed(EOPNOTSUPP, "fallocate");
  }
  int64_t end = std::min(off + len, size);
  if (end <= off) return Ok();
  constexpr size_t kChunk = 1 << 20;
  void* zeros = nullptr;
  if (::posix_memalign(&zeros, 4096, kChunk) != 0) return Failed(ENOMEM, "posix_memalign");
  std::memset(zeros, 0, kChunk);
  Outcome o = Ok();
  for (int64_t at = off; at < end;) {
    size_t n = static_cast<size_t>(std::min<int64_t>(end - at, static_cast<int64_t>(kChunk)));
    o = PwriteAll(fd, static_cast<const uint8_t*>(zeros), n, at);
    if (o.err != 0) break;
    at += static_cast<int64_t>(n);
  }
  std::free(zeros);
  return o.err != 0 ? o : Ok();
}

Outcome ZeroRange(int fd, int64_t off, int64_t len) {
  int err = Fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, off, len);
  if (err == 0) return Ok();
  if (!IsUnsupported(err)) return Failed(err, "fallocate");
  // e.g. tmpfs, NFS: punch a hole, then try to allocate it again (best effort: the range reads as zeros
  // either way, a failure here only means it stays unallocated).
  err = Fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
  if (err == 0) {
    (void)Fallocate(fd, FALLOC_FL_KEEP_SIZE, off, len);
    return Ok();
  }
  if (!IsUnsupported(err)) return Failed(err, "fallocate");
  return WriteZeros(fd, off, len);
}

// ---- argument helpers ----------------------------------------------------------------------------------------

// A buffer argument kept alive by the worker.
struct BufArg {
  Bytes bytes;
  Napi::Value value;
};

BufArg ArgBuffer(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return BufArg{ArgBytes(info, i, name), info[i]};
}

// An array of ArrayBufferViews -> iovecs.
std::vector<iovec> ArgIovecs(const Napi::CallbackInfo& info, size_t i) {
  Napi::Value v = info[i];
  if (!v.IsArray()) ThrowTypeError(info.Env(), "The \"buffers\" argument must be an array of Buffers");
  Napi::Array arr = v.As<Napi::Array>();
  uint32_t n = arr.Length();
  std::vector<iovec> iov;
  iov.reserve(n);
  size_t total = 0;
  for (uint32_t k = 0; k < n; k++) {
    Bytes b;
    if (!GetBytes(arr.Get(k), &b)) {
      ThrowTypeError(info.Env(), "The \"buffers\" argument must be an array of Buffers; element " + std::to_string(k) +
                                     " is not an ArrayBufferView");
    }
    if (b.data == nullptr && b.length != 0) ThrowTypeError(info.Env(), "buffers[" + std::to_string(k) + "] is detached");
    if (b.length > static_cast<size_t>(SSIZE_MAX) - total) ThrowRangeError(info.Env(), "total length of buffers is too large");
    total += b.length;
    iov.push_back(iovec{b.data, b.length});
  }
  return iov;
}

// ---- bindings ------------------------------------------------------------------------------------------------

Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  if (path.find('\0') != std::string::npos) ThrowTypeError(env, "The \"path\" argument must not contain null bytes");
  int flags = static_cast<int>(ArgInteger(info, 1, "flags", 0, 2147483647.0));
  int mode = 0666;
  if (info.Length() > 2 && !info[2].IsUndefined()) mode = static_cast<int>(ArgInteger(info, 2, "mode", 0, 07777));
  auto* w = MakeWorker(env, "thinvault:open", Returns::kNumber, [path, flags, mode]() {
    int fd;
    do {
      fd = ::open(path.c_str(), flags | O_CLOEXEC, static_cast<mode_t>(mode));
    } while (fd < 0 && errno == EINTR);
    return fd < 0 ? Failed(errno, "open") : Ok(fd);
  });
  w->SetPath(path);
  return w->Start();
}

Napi::Value Pread(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  BufArg buf = ArgBuffer(info, 1, "buffer");
  int64_t pos = ArgOffset(info, 2, "position");
  auto* w = MakeWorker(info.Env(), "thinvault:pread", Returns::kNumber,
                       [fd, b = buf.bytes, pos]() { return PreadAll(fd, b.data, b.length, pos); });
  w->Keep(buf.value);
  return w->Start();
}

Napi::Value Pwrite(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  BufArg buf = ArgBuffer(info, 1, "buffer");
  int64_t pos = ArgOffset(info, 2, "position");
  auto* w = MakeWorker(info.Env(), "thinvault:pwrite", Returns::kNumber,
                       [fd, b = buf.bytes, pos]() { return PwriteAll(fd, b.data, b.length, pos); });
  w->Keep(buf.value);
  return w->Start();
}

Napi::Value Vectored(const Napi::CallbackInfo& info, bool write) {
  int fd = ArgFd(info, 0);
  std::vector<iovec> iov = ArgIovecs(info, 1);
  int64_t pos = ArgOffset(info, 2, "position");
  auto* w = MakeWorker(info.Env(), write ? "thinvault:pwritev" : "thinvault:preadv", Returns::kNumber,
                       [fd, iov = std::move(iov), pos, write]() mutable { return VectoredAll(fd, iov, pos, write); });
  w->Keep(info[1]);  // the array; it holds the buffers
  // The caller might empty the array while we run: hold each buffer too.
  Napi::Array arr = info[1].As<Napi::Array>();
  for (uint32_t k = 0; k < arr.Length(); k++) w->Keep(arr.Get(k));
  return w->Start();
}

Napi::Value Preadv(const Napi::CallbackInfo& info) { return Vectored(info, false); }
Napi::Value Pwritev(const Napi::CallbackInfo& info) { return Vectored(info, true); }

// read(2)/write(2) at the current file position, one call, no looping: one tape record per call.
Napi::Value ReadOnce(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  BufArg buf = ArgBuffer(info, 1, "buffer");
  auto* w = MakeWorker(info.Env(), "thinvault:read", Returns::kNumber, [fd, b = buf.bytes]() {
    ssize_t n;
    do {
      n = ::read(fd, b.data, b.length);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? Failed(errno, "read") : Ok(n);
  });
  w->Keep(buf.value);
  return w->Start();
}

Napi::Value WriteOnce(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  BufArg buf = ArgBuffer(info, 1, "buffer");
  auto* w = MakeWorker(info.Env(), "thinvault:write", Returns::kNumber, [fd, b = buf.bytes]() {
    ssize_t n;
    do {
      n = ::write(fd, b.data, b.length);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? Failed(errno, "write") : Ok(n);
  });
  w->Keep(buf.value);
  return w->Start();
}

Napi::Value Fdatasync(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  return MakeWorker(info.Env(), "thinvault:fdatasync", Returns::kUndefined, [fd]() {
           int r;
           do {
             r = ::fdatasync(fd);
           } while (r < 0 && errno == EINTR);
           return r < 0 ? Failed(errno, "fdatasync") : Ok();
         })
      ->Start();
}

Napi::Value Fsync(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  return MakeWorker(info.Env(), "thinvault:fsync", Returns::kUndefined, [fd]() {
           int r;
           do {
             r = ::fsync(fd);
           } while (r < 0 && errno == EINTR);
           return r < 0 ? Failed(errno, "fsync") : Ok();
         })
      ->Start();
}

enum class FallocKind { kAllocate, kPunch, kZero };

Napi::Value FallocateCommon(const Napi::CallbackInfo& info, FallocKind kind) {
  int fd = ArgFd(info, 0);
  int64_t off = ArgOffset(info, 1, "offset");
  int64_t len = ArgOffset(info, 2, "length");
  if (off + len > static_cast<int64_t>(kMaxSafeInteger)) ThrowRangeError(info.Env(), "offset + length is too large");
  const char* resource = kind == FallocKind::kAllocate ? "thinvault:fallocate"
                         : kind == FallocKind::kPunch  ? "thinvault:punchHole"
                                                       : "thinvault:zeroRange";
  return MakeWorker(info.Env(), resource, Returns::kUndefined, [fd, off, len, kind]() {
           if (len == 0) {  // fallocate(2) rejects an empty range; an empty request is a no-op here
             return ::fcntl(fd, F_GETFD) < 0 ? Failed(errno, "fallocate") : Ok();
           }
           switch (kind) {
             case FallocKind::kAllocate: {
               int err = Fallocate(fd, 0, off, len);
               return err ? Failed(err, "fallocate") : Ok();
             }
             case FallocKind::kPunch: {
               int err = Fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
               return err ? Failed(err, "fallocate") : Ok();
             }
             default:
               return ZeroRange(fd, off, len);
           }
         })
      ->Start();
}

Napi::Value FallocateJs(const Napi::CallbackInfo& info) { return FallocateCommon(info, FallocKind::kAllocate); }
Napi::Value PunchHole(const Napi::CallbackInfo& info) { return FallocateCommon(info, FallocKind::kPunch); }
Napi::Value ZeroRangeJs(const Napi::CallbackInfo& info) { return FallocateCommon(info, FallocKind::kZero); }

// Synchronous: preadv2(RWF_NOWAIT) never waits for the disk. -1 means "not (all) in the page cache, or
// RWF_NOWAIT unsupported": use pread.
Napi::Value PreadNoWait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  Bytes b = ArgBytes(info, 1, "buffer");
  int64_t pos = ArgOffset(info, 2, "position");
  if (b.length == 0) return Napi::Number::New(env, 0);
  iovec iov{b.data, b.length};
  ssize_t n;
  do {
    n = ::preadv2(fd, &iov, 1, static_cast<off_t>(pos), RWF_NOWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || IsUnsupported(err)) return Napi::Number::New(env, -1);
    throw ErrnoError(env, err, "preadv2");
  }
  if (static_cast<size_t>(n) < b.length) return Napi::Number::New(env, -1);
  return Napi::Number::New(env, static_cast<double>(n));
}

// Synchronous flock(2). Without nonBlocking it waits on the JS thread: use it only when no one else can
// hold the lock or waiting is intended.
Napi::Value Flock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  std::string op = ArgString(info, 1, "op");
  bool nonBlocking = false;
  if (info.Length() > 2 && !info[2].IsUndefined()) nonBlocking = ArgBool(info, 2, "nonBlocking");
  int how;
  if (op == "exclusive") {
    how = LOCK_EX;
  } else if (op == "shared") {
    how = LOCK_SH;
  } else if (op == "unlock") {
    how = LOCK_UN;
  } else {
    Napi::Error e = Napi::TypeError::New(env, "The \"op\" argument must be 'exclusive', 'shared' or 'unlock'");
    e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_VALUE"));
    throw e;
  }
  if (nonBlocking) how |= LOCK_NB;
  int r;
  do {
    r = ::flock(fd, how);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (nonBlocking && errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
    throw ErrnoError(env, errno, "flock");
  }
  return Napi::Boolean::New(env, true);
}

Napi::Value AllocAligned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  // 4 GiB: Node 20's Buffer limit (buffer.constants.MAX_LENGTH), and far beyond any sensible I/O buffer.
  size_t size = static_cast<size_t>(ArgInteger(info, 0, "size", 0, 4294967296.0));
  size_t alignment = 4096;
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    alignment = static_cast<size_t>(ArgInteger(info, 1, "alignment", 1, 1073741824.0));
    if ((alignment & (alignment - 1)) != 0) ThrowRangeError(env, "The \"alignment\" argument must be a power of two");
  }
  size_t align = std::max(alignment, sizeof(void*));
  void* mem = nullptr;
  int err = ::posix_memalign(&mem, align, std::max<size_t>(size, 1));
  if (err != 0) throw ErrnoError(env, err, "posix_memalign");
  std::memset(mem, 0, size);
  uint8_t* data = static_cast<uint8_t*>(mem);
  try {
    Napi::Buffer<uint8_t> buf = Napi::Buffer<uint8_t>::New(env, data, size, [size](Napi::Env e, uint8_t* d) {
      std::free(d);
      Napi::MemoryManagement::AdjustExternalMemory(e, -static_cast<int64_t>(size));
    });
    Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(size));
    return buf;
  } catch (const Napi::Error&) {
    // Runtimes that forbid external buffers (e.g. a V8 sandbox): over-allocate a normal Buffer and return
    // an aligned view of it.
    std::free(mem);
    if (env.IsExceptionPending()) env.GetAndClearPendingException();
  }
  Napi::Buffer<uint8_t> big = Napi::Buffer<uint8_t>::New(env, size + align);
  uintptr_t addr = reinterpret_cast<uintptr_t>(big.Data());
  size_t skip = static_cast<size_t>((align - (addr & (align - 1))) & (align - 1));
  std::memset(big.Data(), 0, big.Length());
  Napi::Function subarray = big.Get("subarray").As<Napi::Function>();
  return subarray.Call(big, {Napi::Number::New(env, static_cast<double>(skip)),
                             Napi::Number::New(env, static_cast<double>(skip + size))});
}

// The largest power of two (up to 2^30) dividing the address of the view's first byte; 0 for no memory.
Napi::Value BufferAlignment(const Napi::CallbackInfo& info) {
  Bytes b = ArgBytes(info, 0, "buffer");
  uintptr_t addr = reinterpret_cast<uintptr_t>(b.data);
  if (addr == 0) return Napi::Number::New(info.Env(), 0);
  uintptr_t low = addr & (~addr + 1);
  if (low > (uintptr_t{1} << 30)) low = uintptr_t{1} << 30;
  return Napi::Number::New(info.Env(), static_cast<double>(low));
}

}  // namespace

void InitIo(Napi::Env env, Napi::Object exports) {
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("pread", Napi::Function::New(env, Pread, "pread"));
  exports.Set("pwrite", Napi::Function::New(env, Pwrite, "pwrite"));
  exports.Set("preadv", Napi::Function::New(env, Preadv, "preadv"));
  exports.Set("pwritev", Napi::Function::New(env, Pwritev, "pwritev"));
  exports.Set("read", Napi::Function::New(env, ReadOnce, "read"));
  exports.Set("write", Napi::Function::New(env, WriteOnce, "write"));
  exports.Set("fdatasync", Napi::Function::New(env, Fdatasync, "fdatasync"));
  exports.Set("fsync", Napi::Function::New(env, Fsync, "fsync"));
  exports.Set("fallocate", Napi::Function::New(env, FallocateJs, "fallocate"));
  exports.Set("punchHole", Napi::Function::New(env, PunchHole, "punchHole"));
  exports.Set("zeroRange", Napi::Function::New(env, ZeroRangeJs, "zeroRange"));
  exports.Set("preadNoWait", Napi::Function::New(env, PreadNoWait, "preadNoWait"));
  exports.Set("flock", Napi::Function::New(env, Flock, "flock"));
  exports.Set("allocAligned", Napi::Function::New(env, AllocAligned, "allocAligned"));
  exports.Set("bufferAlignment", Napi::Function::New(env, BufferAlignment, "bufferAlignment"));

  Napi::Object constants = Napi::Object::New(env);
  constants.Set("O_DIRECT", Napi::Number::New(env, O_DIRECT));
  constants.Set("O_NOATIME", Napi::Number::New(env, O_NOATIME));
  constants.Set("O_CLOEXEC", Napi::Number::New(env, O_CLOEXEC));
  constants.Set("O_DSYNC", Napi::Number::New(env, O_DSYNC));
  constants.Set("IOV_MAX", Napi::Number::New(env, IovMax()));
  constants.Freeze();
  exports.Set("constants", constants);
}

}  // namespace thinvault
