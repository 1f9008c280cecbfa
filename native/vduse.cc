// VDUSE device side: /dev/vduse/control and /dev/vduse/NAME (ioctls, the
// 152-byte request/response messages with a uv_poll watcher), and mappings of
// the file descriptors VDUSE_IOTLB_GET_FD returns. No VDUSE policy lives here:
// request numbers, struct layouts and the message protocol are owned by
// lib/vduse/.
#include <fcntl.h>
#include <linux/ioctl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <string>

#include "errors.h"
#include "fd_poller.h"
#include "unique_fd.h"

namespace vdpa {

namespace {

// A /dev/vduse file (control or device), opened O_RDWR | O_CLOEXEC and, for
// the device, O_NONBLOCK so reads of the message queue never block the loop.
class VduseFile : public Napi::ObjectWrap<VduseFile> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function cls = DefineClass(
        env, "VduseFile",
        {InstanceMethod<&VduseFile::Ioctl>("ioctl"), InstanceMethod<&VduseFile::ReadMessage>("readMessage"),
         InstanceMethod<&VduseFile::WriteMessage>("writeMessage"), InstanceMethod<&VduseFile::Watch>("watch"),
         InstanceMethod<&VduseFile::Unwatch>("unwatch"), InstanceMethod<&VduseFile::SetRef>("setRef"),
         InstanceMethod<&VduseFile::Close>("close"), InstanceAccessor<&VduseFile::Fd>("fd"),
         InstanceAccessor<&VduseFile::Path>("path")});
    exports.Set("VduseFile", cls);
  }

  // new VduseFile(path, nonblocking).
  explicit VduseFile(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VduseFile>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsBoolean()) {
      throw Napi::TypeError::New(env, "VduseFile(path: string, nonblocking: boolean)");
    }
    path_ = info[0].As<Napi::String>().Utf8Value();
    const int flags = O_RDWR | O_CLOEXEC | (info[1].As<Napi::Boolean>().Value() ? O_NONBLOCK : 0);
    int fd = ::open(path_.c_str(), flags);
    if (fd < 0) ThrowErrno(env, errno, "open", path_);
    fd_ = UniqueFd(fd);
  }

  // Runs on the loop thread when the device fd is readable (requests queued)
  // or in error (the kernel marked the device broken): calls callback(status).
  void OnReadable(int status) {
    Napi::Env env = Env();  // inside FdPoller::OnPoll's HandleScope
    if (!fd_.Valid()) return;
    napi_value argv[1] = {nullptr};
    if (napi_create_int32(env, status, &argv[0]) != napi_ok) return;
    watch_.Deliver(env, 1, argv);
  }

 private:
  int CheckedFd(Napi::Env env, const std::string& syscall) {
    if (!fd_.Valid()) ThrowErrno(env, EBADF, syscall, path_);
    return fd_.Get();
  }

  // ioctl(request, name, arg?) → return value (IOTLB_GET_FD returns an fd).
  // `arg` is the in/out struct; a buffer shorter than _IOC_SIZE is refused
  // before the kernel could read or write past its end.
  Napi::Value Ioctl(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsString()) {
      throw Napi::TypeError::New(env, "ioctl(request: number, name: string, arg?: Uint8Array)");
    }
    const auto request = static_cast<unsigned long>(info[0].As<Napi::Number>().Int64Value());
    const std::string syscall = "ioctl(" + info[1].As<Napi::String>().Utf8Value() + ")";
    void* arg = nullptr;
    size_t length = 0;
    if (info.Length() > 2 && info[2].IsTypedArray()) {
      Napi::Uint8Array bytes = info[2].As<Napi::Uint8Array>();
      arg = bytes.Data();
      length = bytes.ByteLength();
    }
    const size_t needed = _IOC_SIZE(request);
    if (_IOC_DIR(request) != _IOC_NONE && length < needed) {
      throw CodedError(env,
                       syscall + " on " + path_ + ": the argument buffer has " + std::to_string(length) +
                           " bytes, the request needs " + std::to_string(needed),
                       EINVAL, syscall, path_);
    }
    int fd = CheckedFd(env, syscall);
    int ret;
    do {
      ret = ::ioctl(fd, request, arg);
    } while (ret < 0 && errno == EINTR);
    if (ret < 0) ThrowErrno(env, errno, syscall, path_);
    return Napi::Number::New(env, ret);
  }

  // readMessage(buffer) → bytes read, or 0 when no request is queued (EAGAIN).
  Napi::Value ReadMessage(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = CheckedFd(env, "read(vduse)");
    if (info.Length() < 1 || !info[0].IsTypedArray())
      throw Napi::TypeError::New(env, "expected a Uint8Array");
    Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
    ssize_t n;
    do {
      n = ::read(fd, bytes.Data(), bytes.ByteLength());
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN) return Napi::Number::New(env, 0);
      ThrowErrno(env, errno, "read(vduse)", path_);
    }
    return Napi::Number::New(env, static_cast<double>(n));
  }

  // writeMessage(buffer): one response, one write().
  Napi::Value WriteMessage(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = CheckedFd(env, "write(vduse)");
    if (info.Length() < 1 || !info[0].IsTypedArray())
      throw Napi::TypeError::New(env, "expected a Uint8Array");
    Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
    ssize_t n;
    do {
      n = ::write(fd, bytes.Data(), bytes.ByteLength());
    } while (n < 0 && errno == EINTR);
    if (n < 0) ThrowErrno(env, errno, "write(vduse)", path_);
    if (static_cast<size_t>(n) != bytes.ByteLength()) ThrowErrno(env, EIO, "write(vduse)", path_);
    return env.Undefined();
  }

  // watch(callback): callback(status) on the loop whenever requests are queued.
  Napi::Value Watch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = CheckedFd(env, "uv_poll_start(vduse)");
    watch_.Start(this, env, fd, info[0], "uv_poll_start(vduse)");
    return env.Undefined();
  }

  Napi::Value Unwatch(const Napi::CallbackInfo& info) {
    watch_.Stop(this);
    return info.Env().Undefined();
  }

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
  Napi::Value Path(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), path_); }

  std::string path_;
  UniqueFd fd_;
  JsFdWatch<VduseFile> watch_;
};

struct FileRegion {
  void* addr = nullptr;
  size_t length = 0;

  void Unmap() {
    if (addr != nullptr) {
      munmap(addr, length);
      addr = nullptr;
    }
  }
  ~FileRegion() { Unmap(); }
};

using SharedRegion = std::shared_ptr<FileRegion>;

// A MAP_SHARED mapping of part of a file (an IOTLB fd: the driver's memory),
// exposed as an external ArrayBuffer. unmap() detaches the buffer first, so no
// view can reach unmapped memory; without it, the mapping goes when both this
// object and the buffer have been collected.
class FileMapping : public Napi::ObjectWrap<FileMapping> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function cls = DefineClass(
        env, "FileMapping",
        {InstanceMethod<&FileMapping::Unmap>("unmap"), InstanceAccessor<&FileMapping::Buffer>("buffer"),
         InstanceAccessor<&FileMapping::Mapped>("mapped")});
    exports.Set("FileMapping", cls);
  }

  // new FileMapping(fd, offset, length, access): mmap(fd, offset) MAP_SHARED
  // with PROT_READ when access & 1 and PROT_WRITE when access & 2 (the
  // VDUSE_ACCESS_* bits: the fd was opened with exactly that access, so a
  // wider protection fails with EACCES). `offset` must be page-aligned (lib/
  // aligns it). The caller keeps (and closes) the fd.
  explicit FileMapping(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FileMapping>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 4 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber() ||
        !info[3].IsNumber()) {
      throw Napi::TypeError::New(env,
                                 "FileMapping(fd: number, offset: number, length: number, access: number)");
    }
    const int fd = info[0].As<Napi::Number>().Int32Value();
    const double offset = info[1].As<Napi::Number>().DoubleValue();
    const double length = info[2].As<Napi::Number>().DoubleValue();
    if (!(length > 0) || length > 9007199254740991.0 || offset < 0 || offset > 9007199254740991.0) {
      throw Napi::RangeError::New(env, "offset and length must be non-negative integers, length > 0");
    }
    const uint32_t access = info[3].As<Napi::Number>().Uint32Value();
    const int prot = ((access & 1) != 0 ? PROT_READ : 0) | ((access & 2) != 0 ? PROT_WRITE : 0);
    if (prot == 0) throw Napi::RangeError::New(env, "access must include read (1) or write (2)");
    auto region = std::make_shared<FileRegion>();
    region->length = static_cast<size_t>(length);
    void* addr = mmap(nullptr, region->length, prot, MAP_SHARED, fd, static_cast<off_t>(offset));
    if (addr == MAP_FAILED) ThrowErrno(env, errno, "mmap(iotlb fd)");
    region->addr = addr;
    region_ = region;
    auto* hint = new SharedRegion(region);
    Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(
        env, addr, region->length, [](Napi::Env, void*, SharedRegion* ref) { delete ref; }, hint);
    buffer_ = Napi::Persistent(buffer);
  }

 private:
  bool IsMapped() const { return region_ && region_->addr != nullptr; }

  Napi::Value Buffer(const Napi::CallbackInfo& info) {
    if (!IsMapped()) throw Napi::Error::New(info.Env(), "the mapping has been unmapped");
    return buffer_.Value();
  }

  Napi::Value Mapped(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), IsMapped()); }

  Napi::Value Unmap(const Napi::CallbackInfo& info) {
    if (!IsMapped()) return info.Env().Undefined();
    Napi::Value value = buffer_.Value();
    if (!value.IsEmpty() && value.IsArrayBuffer()) {
      Napi::ArrayBuffer buffer = value.As<Napi::ArrayBuffer>();
      if (!buffer.IsDetached()) buffer.Detach();
    }
    region_->Unmap();
    return info.Env().Undefined();
  }

  SharedRegion region_;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
};

// closeFd(fd): close(2) of a descriptor the kernel handed over (VDUSE_IOTLB_GET_FD's
// return value) once it is mapped. Not fs.closeSync: Node warns about closing
// descriptors its fs module did not open.
Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "closeFd(fd: number)");
  UniqueFd fd(info[0].As<Napi::Number>().Int32Value());
  return env.Undefined();
}

}  // namespace

void InitVduse(Napi::Env env, Napi::Object exports) {
  VduseFile::Init(env, exports);
  FileMapping::Init(env, exports);
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
}

}  // namespace vdpa
