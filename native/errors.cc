#include "errors.h"

#include <string.h>

#include <cerrno>

#include "errno_names.h"
#include "state.h"

namespace vdpa {

namespace {

// The kernel's ENOTSUPP (include/linux/errno.h). It is not part of the uAPI, so
// libc has no name for it, yet vhost-vdpa returns it to userspace (doorbell
// mmap on parents without a notification area).
constexpr int kKernelEnotsupp = 524;

Napi::Value SetErrorFactory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) {
    throw Napi::TypeError::New(env, "setErrorFactory expects a function");
  }
  State(env)->errorFactory = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

Napi::Value ErrnoNameJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    throw Napi::TypeError::New(env, "errnoName expects a number");
  }
  return Napi::String::New(env, ErrnoName(info[0].As<Napi::Number>().Int32Value()));
}

std::string Describe(int err) {
  if (err == kKernelEnotsupp) return "Operation is not supported by this device";
  return strerror(err);
}

}  // namespace

std::string ErrnoName(int err) {
  if (err == kKernelEnotsupp) return "ENOTSUPP";
  // Our own table rather than strerrorname_np, which only glibc >= 2.32 has.
  for (const ErrnoNameEntry& entry : kErrnoNames) {
    if (entry.value == err) return entry.name;
  }
  return "E" + std::to_string(err);
}

Napi::Error ErrnoError(Napi::Env env, int err, const std::string& syscall, const std::string& path) {
  const std::string code = ErrnoName(err);
  std::string message = syscall + " failed";
  if (!path.empty()) message += " on " + path;
  message += ": " + code + " (" + Describe(err) + ")";
  return CodedError(env, message, err, syscall, path);
}

Napi::Error CodedError(Napi::Env env, const std::string& message, int err, const std::string& syscall,
                       const std::string& path) {
  const std::string code = ErrnoName(err);
  AddonState* state = State(env);
  if (state != nullptr && !state->errorFactory.IsEmpty()) {
    Napi::Value made = state->errorFactory.Call(
        {Napi::String::New(env, message), Napi::String::New(env, code), Napi::Number::New(env, err),
         Napi::String::New(env, syscall), path.empty() ? env.Undefined() : Napi::String::New(env, path)});
    if (made.IsObject()) return Napi::Error(env, made);
  }
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", code);
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("syscall", syscall);
  if (!path.empty()) error.Set("path", path);
  return error;
}

void ThrowErrno(Napi::Env env, int err, const std::string& syscall, const std::string& path) {
  throw ErrnoError(env, err, syscall, path);
}

void InitErrors(Napi::Env env, Napi::Object exports) {
  exports.Set("setErrorFactory", Napi::Function::New(env, SetErrorFactory, "setErrorFactory"));
  exports.Set("errnoName", Napi::Function::New(env, ErrnoNameJs, "errnoName"));
}

}  // namespace vdpa
