// RAII owner of a uv_poll_t that watches one descriptor for readability on the
// Node.js event loop. Used by every object whose data path runs in JavaScript
// when its fd becomes readable (eventfds, the netlink socket).
#pragma once

#include <napi.h>
#include <uv.h>

#include <exception>

#include "errors.h"

namespace vdpa {

class FdPoller {
 public:
  // Called on the loop thread with the owner passed to Start() and uv_poll's
  // status (negative libuv error, or 0), inside a HandleScope that OnPoll
  // opened (a callback needs no scope of its own: in Node each one is a
  // malloc and a free per wake-up). May throw: FdPoller catches every
  // exception before it could unwind into libuv (see OnPoll).
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
    auto* handle = new PollHandle;
    handle->env = env;
    int rc = uv_poll_init(loop, &handle->poll, fd);
    if (rc < 0) {
      delete handle;
      return rc;
    }
    handle->poll.data = handle;
    // From here until its close callback, the handle is covered by an
    // environment cleanup hook (see OnEnvironmentTeardown).
    if (napi_add_async_cleanup_hook(env, OnEnvironmentTeardown, handle, &handle->hook) != napi_ok) {
      handle->hook = nullptr;
      Close(handle);
      return UV_ENOMEM;
    }
    rc = uv_poll_start(&handle->poll, UV_READABLE, OnPoll);
    if (rc < 0) {
      Close(handle);
      return rc;
    }
    handle->poller = this;
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
    PollHandle* handle = handle_;
    handle_ = nullptr;
    handle->poller = nullptr;
    Close(handle);
  }

  // Whether an active watch keeps the event loop alive (like timer.ref()).
  void SetRef(bool referenced) {
    referenced_ = referenced;
    ApplyRef();
  }

 private:
  // The libuv side of a watch. It lives from uv_poll_init until libuv's close
  // callback, which may come after the FdPoller is gone (a finalizer) or
  // after its environment began tearing down (a Worker that exits).
  struct PollHandle {
    uv_poll_t poll;
    napi_env env = nullptr;
    napi_async_cleanup_hook_handle hook = nullptr;
    FdPoller* poller = nullptr;  // null once detached (stopped or torn down)
    bool closing = false;
  };

  static void OnPoll(uv_poll_t* poll, int status, int /*events*/) {
    auto* handle = static_cast<PollHandle*>(poll->data);
    FdPoller* self = handle->poller;
    if (self == nullptr) return;
    Napi::Env env(handle->env);
    Napi::HandleScope scope(env);
    // An exception must not unwind into libuv (C code: std::terminate, exit
    // 134). JavaScript exceptions from the callback arrive here as Napi::Error
    // (NAPI_CPP_EXCEPTIONS is on in binding.gyp): they go to Node's
    // 'uncaughtException', exactly as an exception thrown in a timer would.
    try {
      self->callback_(self->owner_, status);
    } catch (const Napi::Error& error) {
      napi_fatal_exception(env, error.Value());
    } catch (const std::exception& error) {
      napi_fatal_exception(env, Napi::Error::New(env, error.what()).Value());
    }
  }

  // The environment (main thread or Worker) is going away while the handle
  // is open. Node runs this before it finalizes our objects and unloads the
  // addon, and keeps running the loop until the hook is removed — which the
  // close callback does. Without it, libuv would call the close callback
  // after the addon's code was unmapped (a Worker's exit: SIGSEGV).
  static void OnEnvironmentTeardown(napi_async_cleanup_hook_handle /*hook*/, void* arg) {
    auto* handle = static_cast<PollHandle*>(arg);
    if (handle->poller != nullptr) {
      handle->poller->handle_ = nullptr;
      handle->poller = nullptr;
    }
    Close(handle);
  }

  static void Close(PollHandle* handle) {
    if (handle->closing) return;
    handle->closing = true;
    uv_poll_stop(&handle->poll);
    uv_close(reinterpret_cast<uv_handle_t*>(&handle->poll), [](uv_handle_t* closed) {
      auto* done = static_cast<PollHandle*>(closed->data);
      if (done->hook != nullptr) napi_remove_async_cleanup_hook(done->hook);
      delete done;
    });
  }

  void ApplyRef() {
    if (handle_ == nullptr) return;
    auto* handle = reinterpret_cast<uv_handle_t*>(&handle_->poll);
    if (referenced_) {
      uv_ref(handle);
    } else {
      uv_unref(handle);
    }
  }

  PollHandle* handle_ = nullptr;
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

  // Calls the callback with `argv` through napi_make_callback (which runs
  // microtasks afterwards, so promise continuations that a completion resolves
  // run before the next wake-up). Never throws: a JavaScript exception from
  // the callback goes to 'uncaughtException', as one from a timer would; when
  // the environment can no longer run JavaScript (a Worker being terminated,
  // whose loop may still deliver a readable fd) the event is dropped. Raw
  // Node-API on purpose: node-addon-api turns the failed call into a C++
  // Napi::Error, and building that Error in a terminating environment is a
  // fatal error (abort) rather than an exception.
  void Deliver(napi_env env, size_t argc, const napi_value* argv) {
    napi_value callback = nullptr;
    napi_value global = nullptr;
    if (callback_.IsEmpty() || napi_get_reference_value(env, callback_, &callback) != napi_ok ||
        callback == nullptr || napi_get_global(env, &global) != napi_ok) {
      return;
    }
    napi_value result = nullptr;
    if (napi_make_callback(env, nullptr, global, callback, argc, argv, &result) == napi_ok) return;
    ReportPendingException(env);
  }

  // Hands an exception pending on `env` (if any) to 'uncaughtException'.
  // A failed call with nothing pending means JavaScript cannot run any more.
  static void ReportPendingException(napi_env env) {
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) != napi_ok || !pending) return;
    napi_value exception = nullptr;
    if (napi_get_and_clear_last_exception(env, &exception) != napi_ok) return;
    // Fails quietly (NAPI_PREAMBLE) when the environment is stopping.
    napi_fatal_exception(env, exception);
  }

 private:
  FdPoller poller_;
  Napi::FunctionReference callback_;
};

}  // namespace vdpa
