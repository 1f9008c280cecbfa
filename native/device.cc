// The vhost-vdpa character device: open/close, ioctl, IOTLB message writes and
// doorbell (notification area) mappings. No virtio or vhost policy lives here;
// request numbers, struct layouts and validation are owned by lib/.
#include <fcntl.h>
#include <linux/ioctl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "errors.h"
#include "state.h"
#include "unique_fd.h"

namespace vdpa {

namespace {

uint64_t ToU64(const Napi::Value& value, const char* what) {
  if (value.IsBigInt()) {
    bool lossless = false;
    uint64_t v = value.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(value.Env(), std::string(what) + " does not fit in 64 bits");
    return v;
  }
  if (value.IsNumber()) {
    double d = value.As<Napi::Number>().DoubleValue();
    if (d < 0 || d > 9007199254740991.0 || d != static_cast<double>(static_cast<uint64_t>(d))) {
      throw Napi::RangeError::New(value.Env(), std::string(what) + " must be a non-negative integer");
    }
    return static_cast<uint64_t>(d);
  }
  throw Napi::TypeError::New(value.Env(), std::string(what) + " must be a number or bigint");
}

// Orders every earlier store to normal memory (the rings JavaScript wrote with
// Atomics or plain stores) before the doorbell store that follows, as the
// device observes them: the kernel's virtio_pci notify is iowrite16, which
// issues dma_wmb() (__iowmb) before the MMIO store.
//  - arm64: `dmb oshst`, exactly the kernel's dma_wmb()/__iowmb(). A C++
//    release fence would be `dmb ish`, which orders only for the inner
//    shareable domain (the CPUs), not for a device in the outer shareable
//    one. `dsb st` (wmb()) would also do, but waits for completion, which a
//    doorbell does not need.
//  - x86-64: stores are not reordered with other stores, including uncached
//    MMIO stores (vhost-vdpa maps the notify page uncached), so only the
//    compiler must be kept from sinking ring stores below the doorbell: the
//    release fence is a compiler barrier there, as dma_wmb() is barrier().
//  - elsewhere: a full fence, a conservative choice nobody has measured.
inline void DoorbellWriteBarrier() {
#if defined(__aarch64__)
  __asm__ __volatile__("dmb oshst" ::: "memory");
#elif defined(__x86_64__) || defined(__i386__)
  std::atomic_thread_fence(std::memory_order_release);
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

// A mapped notification page. Stores are volatile so the compiler emits exactly
// one store of the requested width, which is what the device decodes.
class Doorbell : public Napi::ObjectWrap<Doorbell> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function cls = DefineClass(
        env, "Doorbell",
        {InstanceMethod<&Doorbell::Notify16>("notify16"), InstanceMethod<&Doorbell::Notify32>("notify32"),
         InstanceMethod<&Doorbell::Unmap>("unmap"), InstanceAccessor<&Doorbell::Mapped>("mapped")});
    State(env)->doorbellClass = Napi::Persistent(cls);
    exports.Set("Doorbell", cls);
  }

  explicit Doorbell(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Doorbell>(info) {}
  ~Doorbell() override { Release(); }

  void Attach(void* addr, size_t length) {
    addr_ = addr;
    length_ = length;
  }

 private:
  void EnsureMapped(Napi::Env env) {
    if (addr_ == nullptr) throw Napi::Error::New(env, "doorbell is unmapped");
  }

  Napi::Value Notify16(const Napi::CallbackInfo& info) {
    EnsureMapped(info.Env());
    DoorbellWriteBarrier();
    *static_cast<volatile uint16_t*>(addr_) = static_cast<uint16_t>(info[0].As<Napi::Number>().Uint32Value());
    return info.Env().Undefined();
  }

  Napi::Value Notify32(const Napi::CallbackInfo& info) {
    EnsureMapped(info.Env());
    DoorbellWriteBarrier();
    *static_cast<volatile uint32_t*>(addr_) = info[0].As<Napi::Number>().Uint32Value();
    return info.Env().Undefined();
  }

  Napi::Value Unmap(const Napi::CallbackInfo& info) {
    Release();
    return info.Env().Undefined();
  }

  Napi::Value Mapped(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), addr_ != nullptr);
  }

  void Release() {
    if (addr_ != nullptr) {
      munmap(addr_, length_);
      addr_ = nullptr;
    }
  }

  void* addr_ = nullptr;
  size_t length_ = 0;
};

class DeviceHandle : public Napi::ObjectWrap<DeviceHandle> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function cls = DefineClass(
        env, "DeviceHandle",
        {InstanceMethod<&DeviceHandle::Ioctl>("ioctl"),
         InstanceMethod<&DeviceHandle::WriteMessages>("writeMessages"),
         InstanceMethod<&DeviceHandle::MapDoorbell>("mapDoorbell"),
         InstanceMethod<&DeviceHandle::Close>("close"),
         InstanceMethod<&DeviceHandle::IoctlAsync>("ioctlAsync"),
         InstanceMethod<&DeviceHandle::CloseAsync>("closeAsync"), InstanceAccessor<&DeviceHandle::Fd>("fd"),
         InstanceAccessor<&DeviceHandle::Path>("path"), InstanceAccessor<&DeviceHandle::Pending>("pending")});
    exports.Set("DeviceHandle", cls);
  }

  // new DeviceHandle(path): open(path, O_RDWR | O_CLOEXEC). The finalizer
  // (destructor) closes the fd if JavaScript never called close().
  explicit DeviceHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceHandle>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
    path_ = info[0].As<Napi::String>().Utf8Value();
    int fd = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) ThrowErrno(env, errno, "open", path_);
    fd_ = UniqueFd(fd);
  }

 private:
  int CheckedFd(Napi::Env env, const std::string& syscall) {
    if (closing_ || !fd_.Valid()) ThrowErrno(env, EBADF, syscall, path_);
    return fd_.Get();
  }

  // A request that encodes a direction and a size (_IOR/_IOW/_IOWR) makes the
  // kernel copy _IOC_SIZE bytes from or to `arg`: a shorter buffer would be
  // read or written past its end. Longer is fine: some structs end in a
  // flexible array (VHOST_VDPA_GET_CONFIG's header is 8 bytes, data follows).
  void CheckArgumentSize(Napi::Env env, unsigned long request, size_t length, const std::string& syscall) {
    const size_t needed = _IOC_SIZE(request);
    if (_IOC_DIR(request) == _IOC_NONE || needed == 0 || length >= needed) return;
    throw CodedError(env,
                     syscall + " on " + path_ + ": the argument buffer has " + std::to_string(length) +
                         " bytes, the request needs " + std::to_string(needed) +
                         " (_IOC_SIZE); not calling the kernel with a short buffer",
                     EINVAL, syscall, path_);
  }

  // The parsed arguments of ioctl()/ioctlAsync(): request, the name used in
  // errors, and the in/out struct (absent for _IO requests).
  struct IoctlCall {
    unsigned long request = 0;
    std::string syscall;
    Napi::Uint8Array arg;  // empty handle when absent
  };

  IoctlCall ParseIoctl(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    IoctlCall call;
    call.request = static_cast<unsigned long>(ToU64(info[0], "request"));
    call.syscall = "ioctl(" + (info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "?") + ")";
    size_t length = 0;
    if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) {
      if (!info[2].IsTypedArray()) throw Napi::TypeError::New(env, "ioctl argument must be a Uint8Array");
      call.arg = info[2].As<Napi::Uint8Array>();
      length = call.arg.ByteLength();
    }
    CheckArgumentSize(env, call.request, length, call.syscall);
    return call;
  }

  // ioctl(request, name, arg?) → return value. `arg` is a Uint8Array whose
  // bytes are the ioctl's in/out struct (the kernel reads and writes it in
  // place), or omitted for _IO requests. `name` is only used in errors.
  Napi::Value Ioctl(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    IoctlCall call = ParseIoctl(info);
    int fd = CheckedFd(env, call.syscall);
    void* arg = call.arg.IsEmpty() ? nullptr : call.arg.Data();
    int ret;
    do {
      ret = ::ioctl(fd, call.request, arg);
    } while (ret < 0 && errno == EINTR);
    if (ret < 0) ThrowErrno(env, errno, call.syscall, path_);
    return Napi::Number::New(env, ret);
  }

  // ioctlAsync(request, name, arg?) → Promise<return value>: the same ioctl on
  // the libuv thread pool, for requests that may wait on another party (a
  // VDUSE daemon answers SET_STATUS within its msg_timeout, up to 30 s). The
  // struct is copied in and, on success, back into `arg`.
  Napi::Value IoctlAsync(const Napi::CallbackInfo& info);

  // closeAsync() → Promise<void>: close(2) on the thread pool (closing a
  // vhost-vdpa fd resets the device, which on VDUSE waits for the daemon).
  // The handle counts as closed at once (fd -1, every call EBADF); the
  // descriptor itself is closed after any async ioctl still running.
  Napi::Value CloseAsync(const Napi::CallbackInfo& info);

 public:
  // Called on the loop thread when an async ioctl finished: performs a close
  // that waited for it. (Work cancelled at environment teardown does not get
  // here; the handle's finalizer closes the descriptor then.)
  void AsyncIoctlDone(Napi::Env env) {
    if (--pending_ > 0 || !closing_ || !fd_.Valid()) return;
    if (close_waiters_.empty()) {
      fd_.Reset();
    } else {
      StartClose(env);
    }
  }

  void AsyncCloseDone() {
    close_running_ = false;
    std::vector<Napi::Promise::Deferred> waiters = std::move(close_waiters_);
    close_waiters_.clear();
    for (Napi::Promise::Deferred& waiter : waiters) waiter.Resolve(waiter.Env().Undefined());
  }

 private:
  // writeMessages(bytes, messageSize, name) writes `bytes` as consecutive
  // messages of `messageSize` bytes, one write() each (the vhost chardev takes
  // exactly one message per write). On failure the Error carries `index`, the
  // number of messages that had been accepted.
  Napi::Value WriteMessages(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const std::string syscall =
        "write(" + (info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "?") + ")";
    int fd = CheckedFd(env, syscall);
    if (!info[0].IsTypedArray()) throw Napi::TypeError::New(env, "messages must be a Uint8Array");
    Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
    const size_t size = info[1].As<Napi::Number>().Uint32Value();
    if (size == 0 || bytes.ByteLength() % size != 0) {
      throw Napi::RangeError::New(env, "messages length must be a multiple of messageSize");
    }
    const size_t count = bytes.ByteLength() / size;
    for (size_t i = 0; i < count; i++) {
      ssize_t n;
      do {
        n = ::write(fd, bytes.Data() + i * size, size);
      } while (n < 0 && errno == EINTR);
      if (n < 0 || static_cast<size_t>(n) != size) {
        Napi::Error error = ErrnoError(env, n < 0 ? errno : EIO, syscall, path_);
        error.Set("index", Napi::Number::New(env, static_cast<double>(i)));
        throw error;
      }
    }
    return Napi::Number::New(env, static_cast<double>(count));
  }

  // mapDoorbell(queueIndex, pageSize) → Doorbell: mmap(PROT_WRITE, MAP_SHARED)
  // at offset queueIndex * pageSize, as vhost_vdpa_mmap() requires.
  Napi::Value MapDoorbell(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const std::string syscall = "mmap(doorbell)";
    int fd = CheckedFd(env, syscall);
    const uint64_t index = ToU64(info[0], "queueIndex");
    const uint64_t page = ToU64(info[1], "pageSize");
    void* addr = mmap(nullptr, page, PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(index * page));
    if (addr == MAP_FAILED) ThrowErrno(env, errno, syscall, path_);
    Napi::Object object = State(env)->doorbellClass.New({});
    Doorbell::Unwrap(object)->Attach(addr, page);
    return object;
  }

  // close(): closes the descriptor now, or — while an async ioctl still uses
  // it — as soon as that finishes (the handle counts as closed at once).
  Napi::Value Close(const Napi::CallbackInfo& info) {
    closing_ = true;
    if (pending_ == 0 && !close_running_) fd_.Reset();
    return info.Env().Undefined();
  }

  void StartClose(Napi::Env env);

  Napi::Value Fd(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), closing_ ? -1 : fd_.Get());
  }
  Napi::Value Path(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), path_); }
  // Async operations (ioctls and a close) still running on the thread pool.
  Napi::Value Pending(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), pending_ + (close_running_ ? 1 : 0));
  }

  std::string path_;
  UniqueFd fd_;
  bool closing_ = false;        // close() or closeAsync() was called
  int pending_ = 0;             // async ioctls running on fd_
  bool close_running_ = false;  // a CloseWorker owns the descriptor now
  std::vector<Napi::Promise::Deferred> close_waiters_;
};

// Runs one ioctl on the thread pool. Holds the DeviceHandle's JavaScript
// object, so the handle (and its descriptor) outlives the call.
class IoctlWorker : public Napi::AsyncWorker {
 public:
  IoctlWorker(Napi::Env env, DeviceHandle* owner, const Napi::Object& self, int fd, unsigned long request,
              std::string syscall, std::string path, const Napi::Uint8Array& arg)
      : Napi::AsyncWorker(env, "vhost-vdpa:ioctl"),
        deferred_(Napi::Promise::Deferred::New(env)),
        owner_(owner),
        self_(Napi::Persistent(self)),
        fd_(fd),
        request_(request),
        syscall_(std::move(syscall)),
        path_(std::move(path)) {
    if (!arg.IsEmpty()) {
      has_arg_ = true;
      bytes_.assign(arg.Data(), arg.Data() + arg.ByteLength());
      arg_ = Napi::Persistent(arg);
    }
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

  // Thread pool: no JavaScript, no V8 handles.
  void Execute() override {
    int ret;
    do {
      ret = ::ioctl(fd_, request_, has_arg_ ? bytes_.data() : nullptr);
    } while (ret < 0 && errno == EINTR);
    result_ = ret;
    err_ = ret < 0 ? errno : 0;
  }

  void OnOK() override {
    Napi::Env env = Env();
    owner_->AsyncIoctlDone(env);
    if (err_ != 0) {
      deferred_.Reject(ErrnoError(env, err_, syscall_, path_).Value());
      return;
    }
    if (has_arg_) {
      Napi::Uint8Array arg = arg_.Value();
      // A buffer detached or shrunk meanwhile gets nothing back.
      if (arg.ByteLength() >= bytes_.size()) std::copy(bytes_.begin(), bytes_.end(), arg.Data());
    }
    deferred_.Resolve(Napi::Number::New(env, result_));
  }

 private:
  Napi::Promise::Deferred deferred_;
  DeviceHandle* owner_;
  Napi::ObjectReference self_;
  int fd_;
  unsigned long request_;
  std::string syscall_;
  std::string path_;
  bool has_arg_ = false;
  std::vector<uint8_t> bytes_;
  Napi::Reference<Napi::Uint8Array> arg_;
  int result_ = 0;
  int err_ = 0;
};

// Closes a descriptor on the thread pool. It owns the descriptor: if the work
// never runs (environment teardown), its destructor closes it.
class CloseWorker : public Napi::AsyncWorker {
 public:
  CloseWorker(Napi::Env env, DeviceHandle* owner, const Napi::Object& self, UniqueFd fd)
      : Napi::AsyncWorker(env, "vhost-vdpa:close"),
        owner_(owner),
        self_(Napi::Persistent(self)),
        fd_(std::move(fd)) {}

  void Execute() override { fd_.Reset(); }

  void OnOK() override { owner_->AsyncCloseDone(); }

 private:
  DeviceHandle* owner_;
  Napi::ObjectReference self_;
  UniqueFd fd_;
};

Napi::Value DeviceHandle::IoctlAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  IoctlCall call = ParseIoctl(info);
  int fd = CheckedFd(env, call.syscall);
  auto* worker = new IoctlWorker(env, this, Value(), fd, call.request, call.syscall, path_, call.arg);
  pending_++;
  worker->Queue();
  return worker->Promise();
}

Napi::Value DeviceHandle::CloseAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
  closing_ = true;
  if (!fd_.Valid() && !close_running_) {
    deferred.Resolve(env.Undefined());  // already closed
    return deferred.Promise();
  }
  close_waiters_.push_back(deferred);
  if (!close_running_ && pending_ == 0) StartClose(env);
  return deferred.Promise();
}

void DeviceHandle::StartClose(Napi::Env env) {
  close_running_ = true;
  auto* worker = new CloseWorker(env, this, Value(), std::move(fd_));
  worker->Queue();
}

// pageSize() → sysconf(_SC_PAGESIZE): the doorbell mmap stride.
Napi::Value PageSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(sysconf(_SC_PAGESIZE)));
}

}  // namespace

void InitDevice(Napi::Env env, Napi::Object exports) {
  Doorbell::Init(env, exports);
  DeviceHandle::Init(env, exports);
  exports.Set("pageSize", Napi::Function::New(env, PageSize, "pageSize"));
}

}  // namespace vdpa
