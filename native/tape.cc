// Magnetic tape ioctls (Linux st driver): MTIOCTOP and MTIOCGET, run on the thread pool (a rewind or a
// space over file marks can take minutes).

#include <sys/ioctl.h>
#include <sys/mtio.h>

#include <cerrno>
#include <cstring>

#include "common.h"

#ifndef MTWEOFI
#define MTWEOFI 35  // write file mark(s) without flushing the drive buffer (linux/mtio.h)
#endif

namespace thinvault {

namespace {

class TapeOpWorker final : public PromiseWorker {
 public:
  TapeOpWorker(Napi::Env env, int fd, int op, int count) : PromiseWorker(env, "thinvault:tapeOp"), fd_(fd) {
    std::memset(&mt_, 0, sizeof mt_);
    mt_.mt_op = static_cast<short>(op);
    mt_.mt_count = count;
  }

 protected:
  void Execute() override {
    // Not retried on EINTR: a repeated space or file-mark write would move the tape twice.
    if (::ioctl(fd_, MTIOCTOP, &mt_) < 0) Fail(errno, "ioctl");
  }

 private:
  int fd_;
  struct mtop mt_;
};

class TapeStatusWorker final : public PromiseWorker {
 public:
  TapeStatusWorker(Napi::Env env, int fd) : PromiseWorker(env, "thinvault:tapeStatus"), fd_(fd) {
    std::memset(&st_, 0, sizeof st_);
  }

 protected:
  void Execute() override {
    int r;
    do {
      r = ::ioctl(fd_, MTIOCGET, &st_);
    } while (r < 0 && errno == EINTR);
    if (r < 0) Fail(errno, "ioctl");
  }

  Napi::Value Result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    uint32_t gstat = static_cast<uint32_t>(st_.mt_gstat);
    uint32_t dsreg = static_cast<uint32_t>(st_.mt_dsreg);
    o.Set("type", Napi::Number::New(env, static_cast<double>(st_.mt_type)));
    o.Set("residual", Napi::Number::New(env, static_cast<double>(st_.mt_resid)));
    o.Set("dsreg", Napi::Number::New(env, dsreg));
    o.Set("gstat", Napi::Number::New(env, gstat));
    o.Set("erreg", Napi::Number::New(env, static_cast<double>(st_.mt_erreg)));
    o.Set("fileNumber", Napi::Number::New(env, static_cast<double>(st_.mt_fileno)));
    o.Set("blockNumber", Napi::Number::New(env, static_cast<double>(st_.mt_blkno)));
    o.Set("bot", Napi::Boolean::New(env, GMT_BOT(gstat) != 0));
    o.Set("eot", Napi::Boolean::New(env, GMT_EOT(gstat) != 0));
    o.Set("eod", Napi::Boolean::New(env, GMT_EOD(gstat) != 0));
    o.Set("eof", Napi::Boolean::New(env, GMT_EOF(gstat) != 0));
    o.Set("writeProtected", Napi::Boolean::New(env, GMT_WR_PROT(gstat) != 0));
    o.Set("online", Napi::Boolean::New(env, GMT_ONLINE(gstat) != 0));
    o.Set("doorOpen", Napi::Boolean::New(env, GMT_DR_OPEN(gstat) != 0));
    // SCSI tapes (st): block size (0 = variable) and density code packed in mt_dsreg.
    o.Set("blockSize", Napi::Number::New(env, (dsreg & MT_ST_BLKSIZE_MASK) >> MT_ST_BLKSIZE_SHIFT));
    o.Set("density", Napi::Number::New(env, (dsreg & MT_ST_DENSITY_MASK) >> MT_ST_DENSITY_SHIFT));
    return o;
  }

 private:
  int fd_;
  struct mtget st_;
};

Napi::Value TapeOp(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  int op = static_cast<int>(ArgInteger(info, 1, "op", 0, 32767));
  // mt_count is an int; accept unsigned 32-bit values too (MTSETDRVBUFFER option words).
  int64_t count = ArgInteger(info, 2, "count", -2147483648.0, 4294967295.0);
  auto* w = new TapeOpWorker(info.Env(), fd, op, static_cast<int>(static_cast<uint32_t>(count)));
  return w->Start();
}

Napi::Value TapeStatus(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  auto* w = new TapeStatusWorker(info.Env(), fd);
  return w->Start();
}

}  // namespace

void InitTape(Napi::Env env, Napi::Object exports) {
  exports.Set("tapeOp", Napi::Function::New(env, TapeOp, "tapeOp"));
  exports.Set("tapeStatus", Napi::Function::New(env, TapeStatus, "tapeStatus"));

  Napi::Object ops = Napi::Object::New(env);
#define TV_OP(name) ops.Set(#name, Napi::Number::New(env, name));
  TV_OP(MTRESET) TV_OP(MTFSF) TV_OP(MTBSF) TV_OP(MTFSR) TV_OP(MTBSR) TV_OP(MTWEOF) TV_OP(MTREW) TV_OP(MTOFFL)
  TV_OP(MTNOP) TV_OP(MTRETEN) TV_OP(MTBSFM) TV_OP(MTFSFM) TV_OP(MTEOM) TV_OP(MTERASE) TV_OP(MTRAS1)
  TV_OP(MTRAS2) TV_OP(MTRAS3) TV_OP(MTSETBLK) TV_OP(MTSETDENSITY) TV_OP(MTSEEK) TV_OP(MTTELL)
  TV_OP(MTSETDRVBUFFER) TV_OP(MTFSS) TV_OP(MTBSS) TV_OP(MTWSM) TV_OP(MTLOCK) TV_OP(MTUNLOCK) TV_OP(MTLOAD)
  TV_OP(MTUNLOAD) TV_OP(MTCOMPRESSION) TV_OP(MTSETPART) TV_OP(MTMKPART) TV_OP(MTWEOFI)
#undef TV_OP
  ops.Freeze();
  exports.Set("tapeOps", ops);
}

}  // namespace thinvault
