// Module entry point: each native/*.cc file registers its own exports.
#include <napi.h>

#include "errors.h"
#include "state.h"

namespace vdpa {
void InitDevice(Napi::Env env, Napi::Object exports);
void InitDmaMemory(Napi::Env env, Napi::Object exports);
void InitEventFd(Napi::Env env, Napi::Object exports);
void InitNetlink(Napi::Env env, Napi::Object exports);
void InitVduse(Napi::Env env, Napi::Object exports);
}  // namespace vdpa

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new vdpa::AddonState());
  vdpa::InitErrors(env, exports);
  vdpa::InitDevice(env, exports);
  vdpa::InitDmaMemory(env, exports);
  vdpa::InitEventFd(env, exports);
  vdpa::InitNetlink(env, exports);
  vdpa::InitVduse(env, exports);
  return exports;
}

NODE_API_MODULE(vhost_vdpa, Init)
