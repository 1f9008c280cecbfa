// Per-environment state of the addon (one per Node.js main thread or worker).
#pragma once

#include <napi.h>

namespace vdpa {

struct AddonState {
  Napi::FunctionReference errorFactory;  // optional: builds the library's Error subclass
  Napi::FunctionReference doorbellClass;
  Napi::FunctionReference dmaMemoryClass;
};

inline AddonState* State(Napi::Env env) { return env.GetInstanceData<AddonState>(); }

}  // namespace vdpa
