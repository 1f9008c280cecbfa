// A poll thread for poll-mode completions: it spins on the used indices of
// split virtqueues (one acquire load each) and wakes the event loop with one
// uv_async_send per batch, so the loop thread sleeps in epoll instead of
// spinning in JavaScript. It holds no policy: JavaScript arms it with the
// indices it last consumed and a spin budget, and is told "something moved"
// (1) or "nothing within the budget" (0); reading, checking and handing over
// the used entries stays in lib/virtqueue.
#include <napi.h>
#include <uv.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "errors.h"

namespace vdpa {

namespace {

class UsedPoller : public Napi::ObjectWrap<UsedPoller> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function cls = DefineClass(
        env, "UsedPoller",
        {InstanceMethod<&UsedPoller::Watch>("watch"), InstanceMethod<&UsedPoller::Arm>("arm"),
         InstanceMethod<&UsedPoller::SetRef>("setRef"), InstanceMethod<&UsedPoller::Close>("close")});
    exports.Set("UsedPoller", cls);
  }

  // new UsedPoller(callback(found)): found = 1 when a used index moved, 0 when the spin budget ran out.
  explicit UsedPoller(const Napi::CallbackInfo& info) : Napi::ObjectWrap<UsedPoller>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsFunction())
      throw Napi::TypeError::New(env, "callback must be a function");
    callback_ = Napi::Persistent(info[0].As<Napi::Function>());
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) ThrowErrno(env, EINVAL, "uv_async_init");
    async_ = new AsyncHandle;
    async_->owner = this;
    async_->env = env;
    int rc = uv_async_init(loop, &async_->async, OnAsync);
    if (rc < 0) {
      delete async_;
      async_ = nullptr;
      ThrowErrno(env, -rc, "uv_async_init");
    }
    async_->async.data = async_;
    uv_unref(reinterpret_cast<uv_handle_t*>(&async_->async));
    if (napi_add_async_cleanup_hook(env, OnTeardown, async_, &async_->hook) != napi_ok)
      async_->hook = nullptr;
    Ref();  // alive until close(): the thread and the handle point at it
    AsyncHandle* handle = async_;
    thread_ = std::thread([this, handle] { Run(handle); });
  }

  ~UsedPoller() override { Stop(); }

 private:
  struct AsyncHandle {
    uv_async_t async;
    UsedPoller* owner = nullptr;
    napi_env env = nullptr;
    napi_async_cleanup_hook_handle hook = nullptr;
    bool closing = false;
  };

  // watch(memory: ArrayBuffer, byteOffset): the used index (u16) of one more queue. Before the first arm().
  Napi::Value Watch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsArrayBuffer() || !info[1].IsNumber())
      throw Napi::TypeError::New(env, "watch(memory: ArrayBuffer, byteOffset: number)");
    Napi::ArrayBuffer memory = info[0].As<Napi::ArrayBuffer>();
    int64_t offset = info[1].As<Napi::Number>().Int64Value();
    if (offset < 0 || offset % 2 != 0 || static_cast<size_t>(offset) + 2 > memory.ByteLength())
      throw Napi::RangeError::New(env, "used index offset outside the ring memory");
    std::lock_guard<std::mutex> lock(mutex_);
    memories_.push_back(Napi::Persistent(memory));
    indices_.push_back(reinterpret_cast<uint16_t*>(static_cast<uint8_t*>(memory.Data()) + offset));
    last_.push_back(0);
    return env.Undefined();
  }

  // arm(last: number[] (the used index each queue consumed last), spinMicros): the thread spins until an
  // index differs or the budget is spent, then calls back once.
  Napi::Value Arm(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array last = info[0].As<Napi::Array>();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (uint32_t i = 0; i < last_.size() && i < last.Length(); i++)
        last_[i] = static_cast<uint16_t>(last.Get(i).As<Napi::Number>().Uint32Value());
      spin_ns_ = static_cast<int64_t>(info[1].As<Napi::Number>().DoubleValue() * 1000);
      armed_.store(true, std::memory_order_release);
    }
    if (sleeping_.load(std::memory_order_acquire)) wake_.notify_one();
    return env.Undefined();
  }

  Napi::Value SetRef(const Napi::CallbackInfo& info) {
    if (async_ != nullptr) {
      auto* handle = reinterpret_cast<uv_handle_t*>(&async_->async);
      if (info.Length() > 0 && info[0].ToBoolean().Value())
        uv_ref(handle);
      else
        uv_unref(handle);
    }
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (Stop()) Unref();
    return info.Env().Undefined();
  }

  // Joins the thread and closes the handle; true the first time.
  bool Stop() {
    if (!thread_.joinable()) return false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_.store(true, std::memory_order_release);
    }
    wake_.notify_one();
    thread_.join();
    if (async_ != nullptr) CloseHandle(async_);
    async_ = nullptr;
    return true;
  }

  static void CloseHandle(AsyncHandle* handle) {
    if (handle->closing) return;
    handle->closing = true;
    handle->owner = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&handle->async), [](uv_handle_t* closed) {
      auto* done = static_cast<AsyncHandle*>(closed->data);
      if (done->hook != nullptr) napi_remove_async_cleanup_hook(done->hook);
      delete done;
    });
  }

  static void OnTeardown(napi_async_cleanup_hook_handle /*hook*/, void* arg) {
    auto* handle = static_cast<AsyncHandle*>(arg);
    // The environment goes away with the poller open: join the thread, then close the handle (Stop does
    // both).
    if (handle->owner != nullptr)
      handle->owner->Stop();
    else
      CloseHandle(handle);
  }

  static void OnAsync(uv_async_t* async) {
    auto* handle = static_cast<AsyncHandle*>(async->data);
    UsedPoller* self = handle->owner;
    if (self == nullptr) return;
    Napi::Env env(handle->env);
    Napi::HandleScope scope(env);
    int found = self->found_.exchange(-1, std::memory_order_acq_rel);
    if (found < 0) return;  // coalesced with an earlier send
    try {
      // MakeCallback runs the microtask queue afterwards, as for the call eventfd.
      self->callback_.MakeCallback(env.Global(), {Napi::Number::New(env, found)});
    } catch (const Napi::Error& error) {
      napi_fatal_exception(env, error.Value());
    }
  }

  static int64_t NowNs() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  static inline void Relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
  }

  // The thread. `handle` outlives it: it is closed only after the join (Stop()).
  void Run(AsyncHandle* handle) {
    std::vector<uint16_t> last;
    std::vector<uint16_t*> indices;
    for (;;) {
      // Wait to be armed: briefly by spinning (the next arm usually follows within microseconds), then
      // asleep.
      int64_t idle_until = NowNs() + 200000;
      while (!armed_.load(std::memory_order_acquire) && !stop_.load(std::memory_order_acquire) &&
             NowNs() < idle_until)
        Relax();
      int64_t spin_ns;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        if (!armed_.load(std::memory_order_acquire) && !stop_.load(std::memory_order_acquire)) {
          sleeping_.store(true, std::memory_order_release);
          wake_.wait(lock, [this] { return armed_.load() || stop_.load(); });
          sleeping_.store(false, std::memory_order_release);
        }
        if (stop_.load(std::memory_order_acquire)) return;
        last = last_;
        indices = indices_;
        spin_ns = spin_ns_;
      }
      const int64_t deadline = NowNs() + spin_ns;
      int found = 0;
      for (unsigned n = 0; !stop_.load(std::memory_order_relaxed); n++) {
        for (size_t i = 0; i < indices.size(); i++) {
          // Acquire pairs with the device's release of the used index (as Atomics.load in split.ts).
          if (__atomic_load_n(indices[i], __ATOMIC_ACQUIRE) != last[i]) found = 1;
        }
        if (found || ((n & 15) == 0 && NowNs() >= deadline)) break;
        Relax();
      }
      armed_.store(false, std::memory_order_release);
      found_.store(found, std::memory_order_release);
      uv_async_send(&handle->async);
    }
  }

  Napi::FunctionReference callback_;
  AsyncHandle* async_ = nullptr;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<bool> armed_{false};
  std::atomic<bool> stop_{false};
  std::atomic<bool> sleeping_{false};
  std::atomic<int> found_{-1};
  int64_t spin_ns_ = 0;
  std::vector<Napi::Reference<Napi::ArrayBuffer>> memories_;
  std::vector<uint16_t*> indices_;
  std::vector<uint16_t> last_;
};

}  // namespace

void InitUsedPoller(Napi::Env env, Napi::Object exports) { UsedPoller::Init(env, exports); }

}  // namespace vdpa
