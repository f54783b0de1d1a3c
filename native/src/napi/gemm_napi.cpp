// Node-API wrappers of the matrix products: validate every argument, then
// forward to the plain C++ kernels in native/src/kernels/gemm.cpp. No math here.
// The rules the checks follow are at the top of args.h.
#include <napi.h>

#include <algorithm>
#include <string>

#include "args.h"
#include "gemm.h"
#include "gemm_bf16.h"
#include "threadpool.h"

namespace sigma_napi {
namespace {

// The f32 products and their bf16-input twins (gemm_bf16.h) take the same
// arguments: each wrapper below is written once, for the kernels of F32 or Bf16.
struct F32 {
  static constexpr const char* kMatmul = "matmul";
  static constexpr const char* kGrouped = "groupedMatmul";
  static constexpr const char* kWeightGrad = "groupedMatmulWeightGrad";
  static constexpr auto gemm = sigma::sgemm;
  static constexpr auto grouped = sigma::grouped_gemm;
  static constexpr auto grouped_parts = sigma::grouped_gemm_parts;
  static constexpr auto weight_grad = sigma::grouped_gemm_weight_grad;
  static constexpr auto weight_grad_parts = sigma::grouped_gemm_weight_grad_parts;
};
struct Bf16 {
  static constexpr const char* kMatmul = "matmulBf16";
  static constexpr const char* kGrouped = "groupedMatmulBf16";
  static constexpr const char* kWeightGrad = "groupedMatmulWeightGradBf16";
  static constexpr auto gemm = sigma::bf16_gemm;
  static constexpr auto grouped = sigma::bf16_grouped_gemm;
  static constexpr auto grouped_parts = sigma::bf16_grouped_gemm_parts;
  static constexpr auto weight_grad = sigma::bf16_grouped_gemm_weight_grad;
  static constexpr auto weight_grad_parts = sigma::bf16_grouped_gemm_weight_grad_parts;
};

// matmul(c, a, b, M, N, K, transA, transB, accumulate)
template <class P>
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  Args g(info, P::kMatmul, 9);
  const int64_t M = g.dim(3, "M"), N = g.dim(4, "N"), K = g.dim(5, "K");
  const bool ta = g.flag(6, "transA"), tb = g.flag(7, "transB"), acc = g.flag(8, "accumulate");
  float* c = g.f32(0, "c", prod(M, N));
  const float* a = g.f32(1, "a", prod(M, K));
  const float* b = g.f32(2, "b", prod(K, N));
  // Leading dimensions follow from the sizes (none is an argument): every
  // access stays inside the M·K, K·N and M·N elements checked above.
  P::gemm(ta, tb, M, N, K, a, ta ? M : K, b, tb ? K : N, c, N, acc);
  return info.Env().Undefined();
}

// bmm(c, a, b, batch, M, N, K, transA, transB, accumulate)
Napi::Value Bmm(const Napi::CallbackInfo& info) {
  Args g(info, "bmm", 10);
  const int64_t S = g.dim(3, "batch"), M = g.dim(4, "M"), N = g.dim(5, "N"), K = g.dim(6, "K");
  const bool ta = g.flag(7, "transA"), tb = g.flag(8, "transB"), acc = g.flag(9, "accumulate");
  const Need nc = prod(S, M, N);
  float* c = g.f32(0, "c", nc);
  const float* a = g.f32(1, "a", prod(S, M, K));
  const float* b = g.f32(2, "b", prod(S, K, N));
  // No element of c: nothing to write (and batch or M, unbounded by any
  // array when N = 0, would only count empty products).
  if (nc.n == 0) return info.Env().Undefined();
  sigma::sgemm_batched(ta, tb, S, M, N, K, a, b, c, acc);
  return info.Env().Undefined();
}

// Copies offsets [E+1] and checks the copy: starts at 0, never decreases,
// ends within `rows`. The kernel reads the copy.
const int32_t* CheckOffsets(const Args& g, size_t i, int64_t E, uint64_t rows) {
  const int32_t* off = g.i32_copy(i, "offsets", static_cast<uint64_t>(E) + 1);
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
template <class P>
Napi::Value GroupedMatmul(const Napi::CallbackInfo& info) {
  Args g(info, P::kGrouped, 9);
  const int64_t E = g.dim(4, "E"), N = g.dim(5, "N"), K = g.dim(6, "K");
  const bool tw = g.flag(7, "transW"), acc = g.flag(8, "accumulate");
  // Parts first: reading them may run JS (getters), which must not run once
  // any pointer is taken or any index checked. E is bounded by the offsets'
  // length before that (a sparse array of 2^31 − 1 holes is cheap to make).
  const bool in_parts = info[2].IsArray();
  std::vector<napi_value> w_parts;
  if (in_parts) {
    g.i32_precheck(3, "offsets", static_cast<uint64_t>(E) + 1);
    w_parts = g.elements(2, "w", E);
  }
  size_t xlen = 0;
  g.f32(1, "x", 0, &xlen);
  const uint64_t xrows = K == 0 ? UINT64_MAX : xlen / K;
  const int32_t* off = CheckOffsets(g, 3, E, xrows);
  const uint64_t R = static_cast<uint64_t>(off[E]);
  float* y = g.f32(0, "y", prod(R, N));
  const float* x = g.f32(1, "x", prod(R, K));
  if (in_parts) {
    std::vector<float*> parts;
    g.f32_parts(w_parts, "w", prod(N, K), parts);
    P::grouped_parts(y, x, parts.data(), off, E, N, K, tw, acc);
  } else {
    P::grouped(y, x, g.f32(2, "w", prod(E, N, K)), off, E, N, K, tw, acc);
  }
  return info.Env().Undefined();
}

// groupedMatmulWeightGrad(dw, dy, x, offsets, E, N, K, transW, accumulate), and
// groupedMatmulWeightGradSquares (the same arguments; f32 only), which also
// returns Σ dw² over every expert's gradient after the call.
template <class P, bool kSquares = false>
Napi::Value GroupedMatmulWeightGrad(const Napi::CallbackInfo& info) {
  Args g(info, kSquares ? "groupedMatmulWeightGradSquares" : P::kWeightGrad, 9);
  const int64_t E = g.dim(4, "E"), N = g.dim(5, "N"), K = g.dim(6, "K");
  const bool tw = g.flag(7, "transW"), acc = g.flag(8, "accumulate");
  const bool in_parts = info[0].IsArray();
  std::vector<napi_value> dw_parts;
  if (in_parts) {  // first: may run JS (see GroupedMatmul)
    g.i32_precheck(3, "offsets", static_cast<uint64_t>(E) + 1);
    dw_parts = g.elements(0, "dw", E);
  }
  size_t xlen = 0;
  g.f32(2, "x", 0, &xlen);
  const uint64_t xrows = K == 0 ? UINT64_MAX : xlen / K;
  const int32_t* off = CheckOffsets(g, 3, E, xrows);
  const uint64_t R = static_cast<uint64_t>(off[E]);
  const float* dy = g.f32(1, "dy", prod(R, N));
  const float* x = g.f32(2, "x", prod(R, K));
  std::vector<float*> parts;
  if (in_parts) g.f32_parts(dw_parts, "dw", prod(N, K), parts);
  float* dw = in_parts ? nullptr : g.f32(0, "dw", prod(E, N, K));
  if constexpr (kSquares) {
    const double sq = in_parts ? sigma::grouped_gemm_weight_grad_parts_squares(parts.data(), dy, x, off, E, N, K, tw, acc)
                               : sigma::grouped_gemm_weight_grad_squares(dw, dy, x, off, E, N, K, tw, acc);
    return Napi::Number::New(info.Env(), sq);
  }
  if (in_parts)
    P::weight_grad_parts(parts.data(), dy, x, off, E, N, K, tw, acc);
  else
    P::weight_grad(dw, dy, x, off, E, N, K, tw, acc);
  return info.Env().Undefined();
}

// The most threads fmaPeak takes (as setThreads): it keeps one result per thread.
constexpr int64_t kMaxThreads = 1024;

// fmaPeak(iters, threads) -> seconds of the slowest thread; kFmaPeakFlopsPerIter FLOPs per iter per thread.
Napi::Value FmaPeak(const Napi::CallbackInfo& info) {
  Args g(info, "fmaPeak", 2);
  const int64_t iters = g.dim(0, "iters");
  const int64_t threads = g.dim(1, "threads");
  if (threads < 1 || threads > kMaxThreads) g.range_error("threads", "must be an integer from 1 to 1024");
  return Napi::Number::New(info.Env(), sigma::fma_peak_seconds(iters, static_cast<int>(threads)));
}

// gemmTiles() -> [{ name, mr, nr, isa, runnable }]: every registered tile.
Napi::Value GemmTiles(const Napi::CallbackInfo& info) {
  Args g(info, "gemmTiles", 0);
  Napi::Env env = info.Env();
  const auto tiles = sigma::gemm_tiles();
  Napi::Array out = Napi::Array::New(env, tiles.size());
  for (size_t i = 0; i < tiles.size(); ++i) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", tiles[i].name);
    o.Set("mr", tiles[i].mr);
    o.Set("nr", tiles[i].nr);
    o.Set("isa", tiles[i].isa);
    o.Set("runnable", tiles[i].runnable);
    out.Set(static_cast<uint32_t>(i), o);
  }
  return out;
}

// gemmConfig([K, threads]) -> { tile, mr, nr, mc, kc, nc, tileOverride, blockingOverride, blockedOnly,
// tuned, smallMRowsNT, smallMRowsNN }: what the blocked product uses now on the current kernel path,
// for large products on the pool's threads, or for a product of depth K on `threads` threads.
Napi::Value GemmConfig(const Napi::CallbackInfo& info) {
  Args g(info, "gemmConfig", info.Length() == 2 ? 2 : 0);
  Napi::Env env = info.Env();
  int64_t K = sigma::kGemmShortK + 1, threads = sigma::num_threads();
  if (info.Length() == 2) {
    K = g.dim(0, "K");
    threads = g.dim(1, "threads");
  }
  const sigma::GemmSettings s = sigma::gemm_settings(K, static_cast<int>(std::min<int64_t>(threads, kMaxThreads)));
  Napi::Object o = Napi::Object::New(env);
  o.Set("tile", s.tile);
  o.Set("mr", s.mr);
  o.Set("nr", s.nr);
  o.Set("mc", static_cast<double>(s.blocking.mc));
  o.Set("kc", static_cast<double>(s.blocking.kc));
  o.Set("nc", static_cast<double>(s.blocking.nc));
  o.Set("tileOverride", s.tile_override);
  o.Set("blockingOverride", s.blocking_override);
  o.Set("blockedOnly", s.blocked_only);
  o.Set("tuned", s.tuned);
  o.Set("smallMRowsNT", static_cast<double>(s.small_m_nt));
  o.Set("smallMRowsNN", static_cast<double>(s.small_m_nn));
  return o;
}

// The largest block an override may ask for: each of MC, KC, NC at most 2^16,
// and a packed block (KC × MC or KC × NC floats) at most 2^26 floats (256 MiB).
constexpr int64_t kMaxBlock = 1 << 16;
constexpr int64_t kMaxBlockFloats = int64_t{1} << 26;

// setGemmConfig(tile, mc, kc, nc, blockedOnly): tile "auto" for the default,
// 0 for a blocking size from the rule; blockedOnly sends every product through
// the blocked path (tests). setGemmConfig("auto", 0, 0, 0, false) restores all.
Napi::Value SetGemmConfig(const Napi::CallbackInfo& info) {
  Args g(info, "setGemmConfig", 5);
  if (!info[0].IsString()) g.type_error("tile", "must be a tile name or \"auto\"");
  const std::string tile = info[0].As<Napi::String>().Utf8Value();
  sigma::GemmBlocking b;
  b.mc = g.dim(1, "mc");
  b.kc = g.dim(2, "kc");
  b.nc = g.dim(3, "nc");
  const bool blocked_only = g.flag(4, "blockedOnly");
  if (b.mc > kMaxBlock) g.range_error("mc", "must be at most 65536 (0: from the cache sizes)");
  if (b.kc > kMaxBlock) g.range_error("kc", "must be at most 65536 (0: from the cache sizes)");
  if (b.nc > kMaxBlock) g.range_error("nc", "must be at most 65536 (0: from the cache sizes)");
  // A size left to the rule is at most 8192 (and KC at most 1024).
  const int64_t kc = b.kc > 0 ? b.kc : 1024, mn = std::max<int64_t>(b.mc > 0 ? b.mc : 8192, b.nc > 0 ? b.nc : 8192);
  if (kc * mn > kMaxBlockFloats) g.range_error("kc", "times mc or nc must be at most 2^26 floats (a 256 MiB block)");
  std::string error;
  if (!sigma::set_gemm_override(tile, b, blocked_only, &error)) g.range_error("tile", error);
  return info.Env().Undefined();
}

// bf16Path() -> "avx512-bf16" | "converted-f32": the path the bf16 products take now.
Napi::Value Bf16Path(const Napi::CallbackInfo& info) {
  Args g(info, "bf16Path", 0);
  return Napi::String::New(info.Env(), sigma::bf16_path_name());
}

// setBf16Path("auto" | "converted-f32"): "converted-f32" forces the rounded
// copies and the f32 GEMM even where the CPU has AVX512_BF16 (tests, benchmarks).
Napi::Value SetBf16Path(const Napi::CallbackInfo& info) {
  Args g(info, "setBf16Path", 1);
  if (!info[0].IsString()) g.type_error("path", "must be \"auto\" or \"converted-f32\"");
  const std::string p = info[0].As<Napi::String>().Utf8Value();
  if (p != "auto" && p != "converted-f32") g.range_error("path", "must be \"auto\" or \"converted-f32\", got \"" + p + "\"");
  sigma::set_bf16_force_converted(p == "converted-f32");
  return info.Env().Undefined();
}

// ---- The tuner's choice: setGemmTuning(tuning | null), gemmTuning() ----
//
// tuning = { path, one: T, many: T }, T = { large: C, shortK: C, smallMRowsNT,
// smallMRowsNN }, C = { tile, mc, kc, nc } (src/backend/native/index.ts types
// it). Every field is checked here and named by its path in a RangeError or
// TypeError; reading the object may run getters, which is harmless: no
// pointer is held meanwhile.

Napi::Value Field(const Args& g, const Napi::Object& o, const std::string& at, const char* key) {
  const Napi::Value v = o.Get(key);
  if (v.IsUndefined()) g.type_error("tuning", "lacks " + at + key);
  return v;
}
Napi::Object ObjectField(const Args& g, const Napi::Object& o, const std::string& at, const char* key) {
  const Napi::Value v = Field(g, o, at, key);
  if (!v.IsObject() || v.IsArray()) g.type_error("tuning", at + key + " must be an object");
  return v.As<Napi::Object>();
}
int64_t IntField(const Args& g, const Napi::Object& o, const std::string& at, const char* key, int64_t lo, int64_t hi) {
  const Napi::Value v = Field(g, o, at, key);
  if (!v.IsNumber()) g.type_error("tuning", at + key + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi)) || d != static_cast<double>(static_cast<int64_t>(d)))
    g.range_error("tuning", at + key + " must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
  return static_cast<int64_t>(d);
}
std::string StringField(const Args& g, const Napi::Object& o, const std::string& at, const char* key) {
  const Napi::Value v = Field(g, o, at, key);
  if (!v.IsString()) g.type_error("tuning", at + key + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

sigma::GemmChoice ReadChoice(const Args& g, const Napi::Object& o, const std::string& at) {
  sigma::GemmChoice c;
  c.tile = StringField(g, o, at, "tile");
  c.blocking.mc = IntField(g, o, at, "mc", 1, kMaxBlock);
  c.blocking.kc = IntField(g, o, at, "kc", 1, kMaxBlock);
  c.blocking.nc = IntField(g, o, at, "nc", 1, kMaxBlock);
  if (c.blocking.kc * std::max(c.blocking.mc, c.blocking.nc) > kMaxBlockFloats)
    g.range_error("tuning", at + "kc times mc or nc must be at most 2^26 floats (a 256 MiB block)");
  return c;
}

sigma::GemmTunedThreads ReadThreads(const Args& g, const Napi::Object& o, const std::string& at) {
  sigma::GemmTunedThreads t;
  t.large = ReadChoice(g, ObjectField(g, o, at, "large"), at + "large.");
  t.short_k = ReadChoice(g, ObjectField(g, o, at, "shortK"), at + "shortK.");
  t.small_m_nt = IntField(g, o, at, "smallMRowsNT", 0, sigma::kGemmSmallMMax);
  t.small_m_nn = IntField(g, o, at, "smallMRowsNN", 0, sigma::kGemmSmallMMax);
  return t;
}

Napi::Value SetGemmTuning(const Napi::CallbackInfo& info) {
  Args g(info, "setGemmTuning", 1);
  std::string error;
  if (info[0].IsNull()) {
    sigma::set_gemm_tuning(nullptr, &error);
    return info.Env().Undefined();
  }
  if (!info[0].IsObject() || info[0].IsArray()) g.type_error("tuning", "must be an object or null");
  const Napi::Object o = info[0].As<Napi::Object>();
  sigma::GemmTuning t;
  t.path = StringField(g, o, "", "path");
  t.one = ReadThreads(g, ObjectField(g, o, "", "one"), "one.");
  t.many = ReadThreads(g, ObjectField(g, o, "", "many"), "many.");
  if (!sigma::set_gemm_tuning(&t, &error)) g.range_error("tuning", error);
  return info.Env().Undefined();
}

Napi::Object ChoiceObject(Napi::Env env, const sigma::GemmChoice& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("tile", c.tile);
  o.Set("mc", static_cast<double>(c.blocking.mc));
  o.Set("kc", static_cast<double>(c.blocking.kc));
  o.Set("nc", static_cast<double>(c.blocking.nc));
  return o;
}
Napi::Object ThreadsObject(Napi::Env env, const sigma::GemmTunedThreads& t) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("large", ChoiceObject(env, t.large));
  o.Set("shortK", ChoiceObject(env, t.short_k));
  o.Set("smallMRowsNT", static_cast<double>(t.small_m_nt));
  o.Set("smallMRowsNN", static_cast<double>(t.small_m_nn));
  return o;
}

// gemmTuning() -> the tuning as set, or null.
Napi::Value GemmTuning(const Napi::CallbackInfo& info) {
  Args g(info, "gemmTuning", 0);
  Napi::Env env = info.Env();
  sigma::GemmTuning t;
  if (!sigma::gemm_tuning(&t)) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  o.Set("path", t.path);
  o.Set("one", ThreadsObject(env, t.one));
  o.Set("many", ThreadsObject(env, t.many));
  return o;
}

}  // namespace

void InitGemm(Napi::Env env, Napi::Object exports) {
  Export(env, exports, "matmul", Matmul<F32>);
  Export(env, exports, "bmm", Bmm);
  Export(env, exports, "groupedMatmul", GroupedMatmul<F32>);
  Export(env, exports, "groupedMatmulWeightGrad", GroupedMatmulWeightGrad<F32>);
  Export(env, exports, "groupedMatmulWeightGradSquares", GroupedMatmulWeightGrad<F32, true>);
  Export(env, exports, "matmulBf16", Matmul<Bf16>);
  Export(env, exports, "groupedMatmulBf16", GroupedMatmul<Bf16>);
  Export(env, exports, "groupedMatmulWeightGradBf16", GroupedMatmulWeightGrad<Bf16>);
  Export(env, exports, "bf16Path", Bf16Path);
  Export(env, exports, "setBf16Path", SetBf16Path);
  Export(env, exports, "fmaPeak", FmaPeak);
  Export(env, exports, "gemmTiles", GemmTiles);
  Export(env, exports, "gemmConfig", GemmConfig);
  Export(env, exports, "setGemmConfig", SetGemmConfig);
  Export(env, exports, "setGemmTuning", SetGemmTuning);
  Export(env, exports, "gemmTuning", GemmTuning);
  exports.Set("fmaPeakFlopsPerIter", Napi::Number::New(env, sigma::kFmaPeakFlopsPerIter));
}

}  // namespace sigma_napi
