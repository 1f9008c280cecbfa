// Placeholder until the netlink socket lands (owned by the management work).
#include <napi.h>

namespace vdpa {
void InitNetlink(Napi::Env, Napi::Object) {}
}  // namespace vdpa
