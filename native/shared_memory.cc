// Shared memory made by another process: a memfd (or hugetlbfs file) reached
// by path — /proc/<pid>/fd/<n> of the process that created it, or
// /proc/self/fd/<n> of an inherited fd — mapped MAP_SHARED and exposed as an
// external ArrayBuffer, like DmaMemory (dma_memory.cc) but without creating
// the file. A VMM's second process uses it to see the same guest RAM.
//
// Lifetime is DmaMemory's: the mapping is shared by this object and the
// ArrayBuffer's finalizer, and free() detaches the buffer before munmap.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <string>

#include "errors.h"
#include "unique_fd.h"

namespace vdpa {

namespace {

struct FileMapping {
  void* addr = nullptr;
  size_t length = 0;
  UniqueFd fd;

  void Unmap() {
    if (addr != nullptr) {
      munmap(addr, length);
      addr = nullptr;
    }
    fd.Reset();
  }
  ~FileMapping() { Unmap(); }
};

using SharedFileMapping = std::shared_ptr<FileMapping>;

class SharedMemory : public Napi::ObjectWrap<SharedMemory> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function cls = DefineClass(
        env, "SharedMemory",
        {InstanceMethod<&SharedMemory::Free>("free"), InstanceAccessor<&SharedMemory::Buffer>("buffer"),
         InstanceAccessor<&SharedMemory::Address>("address"), InstanceAccessor<&SharedMemory::Size>("size"),
         InstanceAccessor<&SharedMemory::Fd>("fd"), InstanceAccessor<&SharedMemory::Freed>("freed")});
    exports.Set("SharedMemory", cls);
  }

  // new SharedMemory(path): open(path, O_RDWR), fstat for the size, mmap the whole file.
  explicit SharedMemory(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SharedMemory>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString())
      throw Napi::TypeError::New(env, "SharedMemory(path: string)");
    const std::string path = info[0].As<Napi::String>().Utf8Value();
    auto mapping = std::make_shared<FileMapping>();
    int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) ThrowErrno(env, errno, "open", path);
    mapping->fd = UniqueFd(fd);
    struct stat st {};
    if (fstat(fd, &st) < 0) ThrowErrno(env, errno, "fstat", path);
    if (st.st_size <= 0)
      throw CodedError(env, "shared memory file " + path + " is empty", EINVAL, "fstat", path);
    mapping->length = static_cast<size_t>(st.st_size);
    void* addr = mmap(nullptr, mapping->length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED) ThrowErrno(env, errno, "mmap", path);
    mapping->addr = addr;
    mapping_ = mapping;
    auto* hint = new SharedFileMapping(mapping);
    Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(
        env, addr, mapping->length, [](Napi::Env, void*, SharedFileMapping* ref) { delete ref; }, hint);
    buffer_ = Napi::Persistent(buffer);
  }

 private:
  bool IsFreed() const { return !mapping_ || mapping_->addr == nullptr; }

  Napi::Value Buffer(const Napi::CallbackInfo& info) {
    if (IsFreed()) throw Napi::Error::New(info.Env(), "shared memory has been freed");
    return buffer_.Value();
  }

  Napi::Value Address(const Napi::CallbackInfo& info) {
    if (IsFreed()) return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(0));
    return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(mapping_->addr)));
  }

  Napi::Value Size(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(mapping_ ? mapping_->length : 0));
  }

  Napi::Value Fd(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), mapping_ ? mapping_->fd.Get() : -1);
  }

  Napi::Value Freed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), IsFreed()); }

  Napi::Value Free(const Napi::CallbackInfo& info) {
    if (IsFreed()) return info.Env().Undefined();
    Napi::Value value = buffer_.Value();
    if (!value.IsEmpty() && value.IsArrayBuffer()) {
      Napi::ArrayBuffer buffer = value.As<Napi::ArrayBuffer>();
      if (!buffer.IsDetached()) buffer.Detach();
    }
    mapping_->Unmap();
    return info.Env().Undefined();
  }

  SharedFileMapping mapping_;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
};

}  // namespace

void InitSharedMemory(Napi::Env env, Napi::Object exports) { SharedMemory::Init(env, exports); }

}  // namespace vdpa
