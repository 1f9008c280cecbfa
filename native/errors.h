// The one place where an errno becomes a JavaScript Error.
#pragma once

#include <napi.h>

#include <string>

namespace vdpa {

// Builds an Error carrying Node-core-shaped properties: `code` ('EINVAL', or
// 'ENOTSUPP' for the kernel-internal errno 524), `errno`, `syscall` (e.g.
// 'ioctl(VHOST_VDPA_GET_CONFIG)') and, when given, `path`. If JavaScript
// registered an error factory (setErrorFactory), the factory builds the object
// so callers get the library's own Error subclass.
Napi::Error ErrnoError(Napi::Env env, int err, const std::string& syscall,
                       const std::string& path = std::string());

// The same Error with a message of the caller's choosing: for failures the
// addon detects itself before the system call (code and errno still name the
// errno the kernel would have given, e.g. EINVAL).
Napi::Error CodedError(Napi::Env env, const std::string& message, int err, const std::string& syscall,
                       const std::string& path = std::string());

// Throws ErrnoError as a C++ exception (NAPI_CPP_EXCEPTIONS is on).
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const std::string& syscall,
                             const std::string& path = std::string());

// Name of an errno value ('EBUSY'); 'ENOTSUPP' for 524; 'E<number>' if unknown.
std::string ErrnoName(int err);

void InitErrors(Napi::Env env, Napi::Object exports);

}  // namespace vdpa
