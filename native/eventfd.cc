// eventfd(2) objects for kick, call and config notifications, with an optional
// uv_poll watcher that reads the counter on the loop thread and hands the count
// to a JavaScript callback (one crossing per wake-up, however many signals).
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "errors.h"
#include "fd_poller.h"
#include "unique_fd.h"

namespace vdpa {

namespace {

class EventFd : public Napi::ObjectWrap<EventFd> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function cls =
        DefineClass(env, "EventFd",
                    {InstanceMethod<&EventFd::Signal>("signal"), InstanceMethod<&EventFd::Read>("read"),
                     InstanceMethod<&EventFd::Watch>("watch"), InstanceMethod<&EventFd::Unwatch>("unwatch"),
                     InstanceMethod<&EventFd::SetRef>("setRef"), InstanceMethod<&EventFd::Close>("close"),
                     InstanceAccessor<&EventFd::Fd>("fd")});
    exports.Set("EventFd", cls);
  }

  // new EventFd(): non-blocking, close-on-exec, counter starts at 0.
  explicit EventFd(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EventFd>(info) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) ThrowErrno(info.Env(), errno, "eventfd");
    fd_ = UniqueFd(fd);
  }

 private:
  int CheckedFd(Napi::Env env, const char* syscall) {
    if (!fd_.Valid()) ThrowErrno(env, EBADF, syscall);
    return fd_.Get();
  }

  // signal(value = 1): add to the counter (this is a kick).
  Napi::Value Signal(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = CheckedFd(env, "write(eventfd)");
    uint64_t value = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int64Value() : 1;
    ssize_t n;
    do {
      n = ::write(fd, &value, sizeof(value));
    } while (n < 0 && errno == EINTR);
    if (n < 0) ThrowErrno(env, errno, "write(eventfd)");
    return env.Undefined();
  }

  // read() → counter value (number), or 0 when nothing was signalled.
  Napi::Value Read(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = CheckedFd(env, "read(eventfd)");
    return Napi::Number::New(env, static_cast<double>(Drain(env, fd)));
  }

  uint64_t Drain(Napi::Env env, int fd) {
    uint64_t value = 0;
    ssize_t n;
    do {
      n = ::read(fd, &value, sizeof(value));
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN) return 0;
      ThrowErrno(env, errno, "read(eventfd)");
    }
    return value;
  }

 public:
  // Runs on the loop thread when the watched eventfd is readable: reads (and
  // resets) the counter and hands the count to the JavaScript callback.
  void OnReadable(int status) {
    if (status < 0 || !fd_.Valid()) return;
    Napi::Env env = Env();  // inside FdPoller::OnPoll's HandleScope
    napi_value argv[2] = {nullptr, nullptr};
    uint64_t count = 0;
    try {
      count = Drain(env, fd_.Get());
    } catch (const Napi::Error& error) {
      argv[0] = env.Undefined();
      argv[1] = error.Value();
      watch_.Deliver(env, 2, argv);
      return;
    }
    if (count == 0) return;
    if (napi_create_double(env, static_cast<double>(count), &argv[0]) != napi_ok) return;
    watch_.Deliver(env, 1, argv);
  }

 private:
  // watch(callback): call callback(count) on the loop whenever the eventfd
  // becomes readable. The object stays alive while watched.
  Napi::Value Watch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = CheckedFd(env, "uv_poll_start(eventfd)");
    watch_.Start(this, env, fd, info[0], "uv_poll_start(eventfd)");
    return env.Undefined();
  }

  Napi::Value Unwatch(const Napi::CallbackInfo& info) {
    watch_.Stop(this);
    return info.Env().Undefined();
  }

  // setRef(bool): whether a watch keeps the event loop alive (like timer.unref()).
  Napi::Value SetRef(const Napi::CallbackInfo& info) {
    watch_.SetRef(info.Length() < 1 || info[0].ToBoolean().Value());
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    watch_.Stop(this);
    fd_.Reset();
    return info.Env().Undefined();
  }

  Napi::Value Fd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_.Get()); }

  UniqueFd fd_;
  JsFdWatch<EventFd> watch_;
};

}  // namespace

void InitEventFd(Napi::Env env, Napi::Object exports) { EventFd::Init(env, exports); }

}  // namespace vdpa
