// Node-API wrappers of the matrix products: validate every argument, then
// forward to the plain C++ kernels in native/src/kernels/gemm.cpp. No math here.
#include <napi.h>

#include "args.h"
#include "gemm.h"
#include "threadpool.h"

namespace sigma_napi {
namespace {

// matmul(c, a, b, M, N, K, transA, transB, accumulate)
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  Args g(info, "matmul", 9);
  const int64_t M = g.dim(3, "M"), N = g.dim(4, "N"), K = g.dim(5, "K");
  const bool ta = g.flag(6, "transA"), tb = g.flag(7, "transB"), acc = g.flag(8, "accumulate");
  float* c = g.f32(0, "c", prod(M, N));
  const float* a = g.f32(1, "a", prod(M, K));
  const float* b = g.f32(2, "b", prod(K, N));
  sigma::sgemm(ta, tb, M, N, K, a, ta ? M : K, b, tb ? K : N, c, N, acc);
  return info.Env().Undefined();
}

// bmm(c, a, b, batch, M, N, K, transA, transB, accumulate)
Napi::Value Bmm(const Napi::CallbackInfo& info) {
  Args g(info, "bmm", 10);
  const int64_t S = g.dim(3, "batch"), M = g.dim(4, "M"), N = g.dim(5, "N"), K = g.dim(6, "K");
  const bool ta = g.flag(7, "transA"), tb = g.flag(8, "transB"), acc = g.flag(9, "accumulate");
  float* c = g.f32(0, "c", prod(S, M, N));
  const float* a = g.f32(1, "a", prod(S, M, K));
  const float* b = g.f32(2, "b", prod(S, K, N));
  sigma::sgemm_batched(ta, tb, S, M, N, K, a, b, c, acc);
  return info.Env().Undefined();
}

// Checks offsets [E+1]: starts at 0, never decreases, ends within `rows`.
const int32_t* CheckOffsets(const Args& g, size_t i, int64_t E, uint64_t rows) {
  const int32_t* off = g.i32(i, "offsets", static_cast<uint64_t>(E) + 1);
  if (off[0] != 0) g.range_error("offsets", "must start at 0, got " + std::to_string(off[0]));
  for (int64_t e = 0; e < E; ++e) {
    if (off[e + 1] < off[e]) {
      g.range_error("offsets", "decreases at expert " + std::to_string(e) + " (" + std::to_string(off[e]) + " > " +
                                   std::to_string(off[e + 1]) + ")");
    }
  }
  if (static_cast<uint64_t>(off[E]) > rows) {
    g.range_error("offsets", "ends at " + std::to_string(off[E]) + " but only " + std::to_string(rows) +
                                 " rows are available");
  }
  return off;
}

// groupedMatmul(y, x, w, offsets, E, N, K, transW, accumulate)
Napi::Value GroupedMatmul(const Napi::CallbackInfo& info) {
  Args g(info, "groupedMatmul", 9);
  const int64_t E = g.dim(4, "E"), N = g.dim(5, "N"), K = g.dim(6, "K");
  const bool tw = g.flag(7, "transW"), acc = g.flag(8, "accumulate");
  g.f32(1, "x", 0);
  const uint64_t xrows = K == 0 ? UINT64_MAX : g.length(1) / K;
  const int32_t* off = CheckOffsets(g, 3, E, xrows);
  const uint64_t R = static_cast<uint64_t>(off[E]);
  float* y = g.f32(0, "y", prod(R, N));
  const float* x = g.f32(1, "x", prod(R, K));
  if (info[2].IsArray()) {
    std::vector<float*> parts;
    g.f32_parts(2, "w", E, prod(N, K), parts);
    sigma::grouped_gemm_parts(y, x, parts.data(), off, E, N, K, tw, acc);
  } else {
    sigma::grouped_gemm(y, x, g.f32(2, "w", prod(E, N, K)), off, E, N, K, tw, acc);
  }
  return info.Env().Undefined();
}

// groupedMatmulWeightGrad(dw, dy, x, offsets, E, N, K, transW, accumulate)
Napi::Value GroupedMatmulWeightGrad(const Napi::CallbackInfo& info) {
  Args g(info, "groupedMatmulWeightGrad", 9);
  const int64_t E = g.dim(4, "E"), N = g.dim(5, "N"), K = g.dim(6, "K");
  const bool tw = g.flag(7, "transW"), acc = g.flag(8, "accumulate");
  g.f32(2, "x", 0);
  const uint64_t xrows = K == 0 ? UINT64_MAX : g.length(2) / K;
  const int32_t* off = CheckOffsets(g, 3, E, xrows);
  const uint64_t R = static_cast<uint64_t>(off[E]);
  const float* dy = g.f32(1, "dy", prod(R, N));
  const float* x = g.f32(2, "x", prod(R, K));
  if (info[0].IsArray()) {
    std::vector<float*> parts;
    g.f32_parts(0, "dw", E, prod(N, K), parts);
    sigma::grouped_gemm_weight_grad_parts(parts.data(), dy, x, off, E, N, K, tw, acc);
  } else {
    sigma::grouped_gemm_weight_grad(g.f32(0, "dw", prod(E, N, K)), dy, x, off, E, N, K, tw, acc);
  }
  return info.Env().Undefined();
}

// fmaPeak(iters, threads) -> seconds of the slowest thread; kFmaPeakFlopsPerIter FLOPs per iter per thread.
Napi::Value FmaPeak(const Napi::CallbackInfo& info) {
  Args g(info, "fmaPeak", 2);
  const int64_t iters = g.dim(0, "iters");
  const int64_t threads = g.dim(1, "threads");
  if (threads < 1) g.range_error("threads", "must be at least 1");
  return Napi::Number::New(info.Env(), sigma::fma_peak_seconds(iters, static_cast<int>(threads)));
}

}  // namespace

void InitGemm(Napi::Env env, Napi::Object exports) {
  exports.Set("matmul", Napi::Function::New(env, Matmul, "matmul"));
  exports.Set("bmm", Napi::Function::New(env, Bmm, "bmm"));
  exports.Set("groupedMatmul", Napi::Function::New(env, GroupedMatmul, "groupedMatmul"));
  exports.Set("groupedMatmulWeightGrad", Napi::Function::New(env, GroupedMatmulWeightGrad, "groupedMatmulWeightGrad"));
  exports.Set("fmaPeak", Napi::Function::New(env, FmaPeak, "fmaPeak"));
  exports.Set("fmaPeakFlopsPerIter", Napi::Number::New(env, sigma::kFmaPeakFlopsPerIter));
}

}  // namespace sigma_napi
