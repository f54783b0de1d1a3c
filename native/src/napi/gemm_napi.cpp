// Placeholder: replaced by the real wrappers.
#include <napi.h>
namespace sigma_napi {
void InitGemm(Napi::Env, Napi::Object) {}
}  // namespace sigma_napi
