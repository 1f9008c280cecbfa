// RAII owner of a uv_poll_t that watches one descriptor for readability on the
// Node.js event loop. Used by every object whose data path runs in JavaScript
// when its fd becomes readable (eventfds, the netlink socket).
#pragma once

#include <napi.h>
#include <uv.h>

#include "errors.h"

namespace vdpa {

class FdPoller {
 public:
  // Called on the loop thread with the owner passed to Start() and uv_poll's
  // status (negative libuv error, or 0).
  using Callback = void (*)(void* owner, int status);

  FdPoller() = default;
  FdPoller(const FdPoller&) = delete;
  FdPoller& operator=(const FdPoller&) = delete;
  ~FdPoller() { Stop(); }

  bool Active() const { return handle_ != nullptr; }

  // Starts watching `fd`; returns 0 or a negative libuv error (nothing is left
  // allocated on failure). A no-op returning 0 when already active.
  int Start(Napi::Env env, int fd, Callback callback, void* owner) {
    if (handle_ != nullptr) return 0;
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) return UV_EINVAL;
    auto* handle = new uv_poll_t;
    int rc = uv_poll_init(loop, handle, fd);
    if (rc < 0) {
      delete handle;
      return rc;
    }
    handle->data = this;
    rc = uv_poll_start(handle, UV_READABLE, OnPoll);
    if (rc < 0) {
      Close(handle);
      return rc;
    }
    handle_ = handle;
    callback_ = callback;
    owner_ = owner;
    ApplyRef();
    return 0;
  }

  // Stops watching. The handle is freed by libuv's close callback, so Stop()
  // is safe from inside the poll callback.
  void Stop() {
    if (handle_ == nullptr) return;
    uv_poll_stop(handle_);
    handle_->data = nullptr;
    Close(handle_);
    handle_ = nullptr;
  }

  // Whether an active watch keeps the event loop alive (like timer.ref()).
  void SetRef(bool referenced) {
    referenced_ = referenced;
    ApplyRef();
  }

 private:
  static void OnPoll(uv_poll_t* handle, int status, int /*events*/) {
    auto* self = static_cast<FdPoller*>(handle->data);
    if (self != nullptr) self->callback_(self->owner_, status);
  }

  static void Close(uv_poll_t* handle) {
    uv_close(reinterpret_cast<uv_handle_t*>(handle),
             [](uv_handle_t* closed) { delete reinterpret_cast<uv_poll_t*>(closed); });
  }

  void ApplyRef() {
    if (handle_ == nullptr) return;
    auto* handle = reinterpret_cast<uv_handle_t*>(handle_);
    if (referenced_) {
      uv_ref(handle);
    } else {
      uv_unref(handle);
    }
  }

  uv_poll_t* handle_ = nullptr;
  Callback callback_ = nullptr;
  void* owner_ = nullptr;
  bool referenced_ = true;
};

}  // namespace vdpa

namespace vdpa {

// The watch state of an ObjectWrap whose descriptor's readiness is delivered
// to a JavaScript callback: the poller, the callback, and the reference that
// keeps the wrapper alive while it is watched (so its destructor never runs
// with a live watch). `Wrap` provides `void OnReadable(int status)`, called
// on the loop thread.
template <typename Wrap>
class JsFdWatch {
 public:
  // Starts watching `fd`, or only replaces the callback when already watching.
  // Throws a TypeError for a non-function, an errno Error naming `syscall` if
  // libuv refuses.
  void Start(Wrap* owner, Napi::Env env, int fd, const Napi::Value& callback, const char* syscall) {
    if (!callback.IsFunction()) throw Napi::TypeError::New(env, "callback must be a function");
    callback_ = Napi::Persistent(callback.As<Napi::Function>());
    if (poller_.Active()) return;
    int rc = poller_.Start(
        env, fd, [](void* self, int status) { static_cast<Wrap*>(self)->OnReadable(status); }, owner);
    if (rc < 0) {
      callback_.Reset();
      ThrowErrno(env, -rc, syscall);
    }
    owner->Ref();
  }

  // Stops watching and drops the callback. Called from JavaScript (unwatch,
  // close) only: it releases the reference Start() took.
  void Stop(Wrap* owner) {
    if (!poller_.Active()) return;
    poller_.Stop();
    callback_.Reset();
    owner->Unref();
  }

  // Whether an active watch keeps the event loop alive (like timer.ref()).
  void SetRef(bool referenced) { poller_.SetRef(referenced); }

  Napi::FunctionReference& Callback() { return callback_; }

 private:
  FdPoller poller_;
  Napi::FunctionReference callback_;
};

}  // namespace vdpa
