// DMA memory: a memfd (optionally hugetlbfs-backed) mapped MAP_SHARED, exposed
// to JavaScript as an external ArrayBuffer without copies.
//
// Why memfd + MAP_SHARED: parents that run in VA mode (VDUSE, vdpa_sim) only
// map file-backed shared VMAs; anonymous memory is silently skipped and I/O
// never completes. Lifetime: the mapping is shared by the DmaMemory object and
// the ArrayBuffer's finalizer, so it is unmapped exactly once — by free()
// (which first detaches the ArrayBuffer so no view can touch unmapped memory)
// or, if free() is never called, when both have been collected.
//
// new DmaMemory(path) maps memory another process created instead (its memfd
// or hugetlbfs file, by /proc/<pid>/fd/<n>, or /proc/self/fd/<n> of an
// inherited fd): a VMM's second process sees the same guest RAM that way.
#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <string>

#include "errors.h"
#include "state.h"
#include "unique_fd.h"

namespace vdpa {

namespace {

struct Mapping {
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
  ~Mapping() { Unmap(); }
};

using SharedMapping = std::shared_ptr<Mapping>;

class DmaMemory : public Napi::ObjectWrap<DmaMemory> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function cls = DefineClass(
        env, "DmaMemory",
        {InstanceMethod<&DmaMemory::Free>("free"), InstanceAccessor<&DmaMemory::Buffer>("buffer"),
         InstanceAccessor<&DmaMemory::Address>("address"), InstanceAccessor<&DmaMemory::Size>("size"),
         InstanceAccessor<&DmaMemory::Fd>("fd"), InstanceAccessor<&DmaMemory::Freed>("freed")});
    State(env)->dmaMemoryClass = Napi::Persistent(cls);
    exports.Set("DmaMemory", cls);
  }

  // new DmaMemory(size, hugetlb, name): a new memfd. `size` must already be a
  // multiple of the page (or huge page) size; lib/memory validates that with a
  // clear error. new DmaMemory(path): an existing file, mapped whole.
  explicit DmaMemory(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DmaMemory>(info) {
    Napi::Env env = info.Env();
    if (info.Length() == 1 && info[0].IsString()) {
      Attach(env, info[0].As<Napi::String>().Utf8Value());
      return;
    }
    if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsBoolean() || !info[2].IsString()) {
      throw Napi::TypeError::New(
          env, "DmaMemory(size: number, hugetlb: boolean, name: string) or DmaMemory(path: string)");
    }
    const double size = info[0].As<Napi::Number>().DoubleValue();
    if (!(size > 0) || size > 9007199254740991.0) throw Napi::RangeError::New(env, "size must be positive");
    const bool hugetlb = info[1].As<Napi::Boolean>().Value();
    const std::string name = info[2].As<Napi::String>().Utf8Value();

    auto mapping = std::make_shared<Mapping>();
    mapping->length = static_cast<size_t>(size);
    int fd = memfd_create(name.c_str(), MFD_CLOEXEC | (hugetlb ? MFD_HUGETLB : 0));
    if (fd < 0) ThrowErrno(env, errno, "memfd_create");
    mapping->fd = UniqueFd(fd);
    if (ftruncate(fd, static_cast<off_t>(mapping->length)) < 0) ThrowErrno(env, errno, "ftruncate(memfd)");
    Expose(env, mapping, "mmap(memfd)", "");
  }

 private:
  // open(path, O_RDWR), fstat for the size, then Expose().
  void Attach(Napi::Env env, const std::string& path) {
    auto mapping = std::make_shared<Mapping>();
    int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) ThrowErrno(env, errno, "open", path);
    mapping->fd = UniqueFd(fd);
    struct stat st {};
    if (fstat(fd, &st) < 0) ThrowErrno(env, errno, "fstat", path);
    if (st.st_size <= 0)
      throw CodedError(env, "shared memory file " + path + " is empty", EINVAL, "fstat", path);
    mapping->length = static_cast<size_t>(st.st_size);
    Expose(env, mapping, "mmap", path);
  }

  // Maps mapping->fd whole, MAP_SHARED, as the external ArrayBuffer `buffer`.
  void Expose(Napi::Env env, const SharedMapping& mapping, const char* syscall, const std::string& path) {
    void* addr = mmap(nullptr, mapping->length, PROT_READ | PROT_WRITE, MAP_SHARED, mapping->fd.Get(), 0);
    if (addr == MAP_FAILED) ThrowErrno(env, errno, syscall, path);
    mapping->addr = addr;
    mapping_ = mapping;

    // The ArrayBuffer's finalizer holds its own reference to the mapping.
    auto* hint = new SharedMapping(mapping);
    Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(
        env, addr, mapping->length, [](Napi::Env, void*, SharedMapping* ref) { delete ref; }, hint);
    buffer_ = Napi::Persistent(buffer);
  }

  bool IsFreed() const { return !mapping_ || mapping_->addr == nullptr; }

  Napi::Value Buffer(const Napi::CallbackInfo& info) {
    if (IsFreed()) throw Napi::Error::New(info.Env(), "DMA memory has been freed");
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
    // Detach first: every TypedArray over this buffer becomes length 0, so no
    // JavaScript code can reach the memory after munmap.
    Napi::Value value = buffer_.Value();
    if (!value.IsEmpty() && value.IsArrayBuffer()) {
      Napi::ArrayBuffer buffer = value.As<Napi::ArrayBuffer>();
      if (!buffer.IsDetached()) buffer.Detach();
    }
    mapping_->Unmap();
    return info.Env().Undefined();
  }

  SharedMapping mapping_;
  // Strong: `buffer` always returns the same ArrayBuffer, the one free()
  // detaches. The buffer may outlive this object; the mapping then stays
  // alive through the finalizer's reference.
  Napi::Reference<Napi::ArrayBuffer> buffer_;
};

// addressOf(view) → bigint: the user-space address of a typed array's first
// byte. lib/ uses it to explain why memory that is not ours cannot be mapped.
Napi::Value AddressOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray()) throw Napi::TypeError::New(env, "expected a TypedArray");
  Napi::TypedArray view = info[0].As<Napi::TypedArray>();
  auto base = reinterpret_cast<uintptr_t>(view.ArrayBuffer().Data()) + view.ByteOffset();
  return Napi::BigInt::New(env, static_cast<uint64_t>(base));
}

}  // namespace

void InitDmaMemory(Napi::Env env, Napi::Object exports) {
  DmaMemory::Init(env, exports);
  exports.Set("addressOf", Napi::Function::New(env, AddressOf, "addressOf"));
}

}  // namespace vdpa
