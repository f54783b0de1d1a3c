// The addon's entry point: registers every kernel wrapper and the thread and
// CPU-feature controls. The wrappers themselves live in gemm_napi.cpp,
// kernels_napi.cpp and quant_napi.cpp; they validate and forward, and contain no math.
#include <napi.h>

#include <cstdlib>
#include <cstring>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "args.h"
#include "cpu.h"
#include "threadpool.h"

namespace sigma_napi {
void InitGemm(Napi::Env env, Napi::Object exports);
void InitKernels(Napi::Env env, Napi::Object exports);
void InitQuant(Napi::Env env, Napi::Object exports);
void InitDense(Napi::Env env, Napi::Object exports);
}  // namespace sigma_napi

namespace {

Napi::Value GetThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), sigma::num_threads());
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  if (info.Length() != 1 || !info[0].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), "setThreads: expected one number");
  }
  double n = info[0].As<Napi::Number>().DoubleValue();
  if (!(n >= 1) || n != static_cast<int>(n) || n > 1024) {
    throw Napi::RangeError::New(info.Env(), "setThreads: argument \"n\" must be an integer from 1 to 1024");
  }
  // Process-wide: from any JS thread, it waits for a kernel running on the
  // pool (another worker_thread's) to finish, then restarts the workers.
  if (!sigma::set_num_threads(static_cast<int>(n))) {
    throw Napi::Error::New(info.Env(), "setThreads: cannot change the thread count from inside a kernel");
  }
  return info.Env().Undefined();
}

// { avx2, fma, avx512f, path } where path is the kernel family in use.
Napi::Value CpuFeatures(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("avx2", sigma::cpu_has_avx2());
  o.Set("fma", sigma::cpu_has_fma());
  o.Set("avx512f", sigma::cpu_has_avx512f());
  o.Set("path", sigma::kernel_path_name());
  return o;
}

// What cpuid says about the CPU (native/src/kernels/cpu_info.cpp): vendor,
// brand, family/model/stepping, cache sizes in bytes (0: not reported), the
// L1d line size, how many logical processors share L2 and L3, core counts,
// and where the cache sizes came from.
Napi::Value CpuInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const sigma::CpuInfo& c = sigma::cpu_info();
  Napi::Object o = Napi::Object::New(env);
  o.Set("vendor", c.vendor);
  o.Set("brand", c.brand);
  o.Set("family", c.family);
  o.Set("model", c.model);
  o.Set("stepping", c.stepping);
  o.Set("l1d", static_cast<double>(c.l1d));
  o.Set("l2", static_cast<double>(c.l2));
  o.Set("l3", static_cast<double>(c.l3));
  o.Set("line", c.line);
  o.Set("l2SharedBy", c.l2_shared_by);
  o.Set("l3SharedBy", c.l3_shared_by);
  o.Set("logicalCores", c.logical_cores);
  o.Set("physicalCores", c.physical_cores);
  o.Set("threadsPerCore", c.threads_per_core);
  o.Set("cacheSource", c.cache_source);
  return o;
}

// Holds the kernels at or below a path (for tests and benchmarks):
// setKernelPath("portable" | "avx2-fma" | "auto"); "auto" restores the run-time choice.
Napi::Value SetKernelPath(const Napi::CallbackInfo& info) {
  if (info.Length() != 1 || !info[0].IsString()) {
    throw Napi::TypeError::New(info.Env(), "setKernelPath: expected \"portable\", \"avx2-fma\" or \"auto\"");
  }
  std::string p = info[0].As<Napi::String>().Utf8Value();
  if (p == "portable") sigma::set_kernel_path(sigma::KernelPath::kPortable);
  else if (p == "avx2-fma") sigma::set_kernel_path(sigma::KernelPath::kAvx2);
  else if (p == "auto") sigma::set_kernel_path(sigma::KernelPath::kAvx512);
  else
    throw Napi::RangeError::New(info.Env(),
                                "setKernelPath: argument must be \"portable\", \"avx2-fma\" or \"auto\", got \"" + p + "\"");
  return info.Env().Undefined();
}

// Training allocates and drops hundreds of megabytes of activations per step
// as typed arrays, which Node allocates with calloc. glibc serves blocks
// above its mmap threshold with fresh mappings: every step then pays a page
// fault and a kernel page clear per 4 KiB (5–10% of a reference-config step
// here). Raising the threshold to its maximum (32 MiB on 64-bit) and keeping
// freed memory in the heap lets those blocks be reused instead. Process-wide,
// applied once when the kernels load; SIGMA_MALLOC_TUNING=0 leaves glibc alone.
void TuneAllocator() {
#if defined(__GLIBC__)
  const char* env = std::getenv("SIGMA_MALLOC_TUNING");
  if (env && std::strcmp(env, "0") == 0) return;
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  TuneAllocator();
  sigma_napi::Export(env, exports, "getThreads", GetThreads);
  sigma_napi::Export(env, exports, "setThreads", SetThreads);
  sigma_napi::Export(env, exports, "cpuFeatures", CpuFeatures);
  sigma_napi::Export(env, exports, "setKernelPath", SetKernelPath);
  sigma_napi::Export(env, exports, "cpuInfo", CpuInfo);
  sigma_napi::InitGemm(env, exports);
  sigma_napi::InitKernels(env, exports);
  sigma_napi::InitQuant(env, exports);
  sigma_napi::InitDense(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(sigma_native, Init)
