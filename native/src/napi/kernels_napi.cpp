// Placeholder: replaced by the real wrappers.
#include <napi.h>
namespace sigma_napi {
void InitKernels(Napi::Env, Napi::Object) {}
}  // namespace sigma_napi
