// Node-API wrappers of every kernel but the matrix products: check each
// argument (types, lengths against the sizes given, index ranges), then call
// the plain C++ kernel in native/src/kernels/ops_*.cpp. No math here.
// The rules the checks follow are at the top of args.h.
#include <napi.h>

#include "args.h"
#include "ops.h"

namespace sigma_napi {
namespace {

using Info = const Napi::CallbackInfo&;

// Every idx[i] (i < n) must lie in [0, hi) unless it equals `allow`.
void CheckIndices(const Args& g, const char* name, const int32_t* idx, int64_t n, int64_t hi, bool has_allow = false,
                  int32_t allow = 0) {
  for (int64_t i = 0; i < n; ++i) {
    const int32_t v = idx[i];
    if ((v < 0 || v >= hi) && !(has_allow && v == allow)) {
      g.range_error(name, "[" + std::to_string(i) + "] = " + std::to_string(v) + " is outside [0, " + std::to_string(hi) + ")");
    }
  }
}

int64_t RowsOf(const Args& g, size_t i, const char* name, int64_t C) {
  size_t len = 0;
  g.f32(i, name, 0, &len);
  return C == 0 ? 0 : static_cast<int64_t>(len / C);
}

Napi::Value AddBias(Info info) {
  Args g(info, "addBias", 5);
  const int64_t R = g.dim(3, "rows"), C = g.dim(4, "cols");
  float* y = g.f32(0, "y", prod(R, C));
  const float* x = g.f32(1, "x", prod(R, C));
  const float* bias = g.f32(2, "bias", C);
  // No element to write (rows, unbounded by any array when cols = 0, would only count empty rows).
  if (R * C == 0) return info.Env().Undefined();
  sigma::add_bias(y, x, bias, R, C);
  return info.Env().Undefined();
}
Napi::Value AddBiasBackward(Info info) {
  Args g(info, "addBiasBackward", 4);
  const int64_t R = g.dim(2, "rows"), C = g.dim(3, "cols");
  sigma::add_bias_backward(g.f32(0, "dbias", C), g.f32(1, "dy", prod(R, C)), R, C);
  return info.Env().Undefined();
}

// out, a, b, n
template <void (*F)(float*, const float*, const float*, int64_t)>
Napi::Value Binary(Info info, const char* name, const char* n0, const char* n1, const char* n2) {
  Args g(info, name, 4);
  const int64_t n = g.dim(3, "n");
  F(g.f32(0, n0, n), g.f32(1, n1, n), g.f32(2, n2, n), n);
  return info.Env().Undefined();
}
Napi::Value Add(Info info) { return Binary<sigma::add>(info, "add", "out", "a", "b"); }
Napi::Value Mul(Info info) { return Binary<sigma::mul>(info, "mul", "out", "a", "b"); }
Napi::Value Gelu(Info info) {
  Args g(info, "gelu", 3);
  const int64_t n = g.dim(2, "n");
  sigma::gelu(g.f32(0, "y", n), g.f32(1, "x", n), n);
  return info.Env().Undefined();
}
Napi::Value FastGelu(Info info) {
  Args g(info, "fastGelu", 3);
  const int64_t n = g.dim(2, "n");
  sigma::fast_gelu(g.f32(0, "y", n), g.f32(1, "x", n), n);
  return info.Env().Undefined();
}
Napi::Value GeluBackward(Info info) {
  Args g(info, "geluBackward", 4);
  const int64_t n = g.dim(3, "n");
  sigma::gelu_backward(g.f32(0, "dx", n), g.f32(1, "x", n), g.f32(2, "dy", n), n);
  return info.Env().Undefined();
}
Napi::Value FastGeluBackward(Info info) {
  Args g(info, "fastGeluBackward", 4);
  const int64_t n = g.dim(3, "n");
  sigma::fast_gelu_backward(g.f32(0, "dx", n), g.f32(1, "x", n), g.f32(2, "dy", n), n);
  return info.Env().Undefined();
}
Napi::Value Scale(Info info) {
  Args g(info, "scale", 4);
  const int64_t n = g.dim(3, "n");
  sigma::scale(g.f32(0, "out", n), g.f32(1, "x", n), static_cast<float>(g.num(2, "alpha")), n);
  return info.Env().Undefined();
}
Napi::Value Axpy(Info info) {
  Args g(info, "axpy", 4);
  const int64_t n = g.dim(3, "n");
  sigma::axpy(g.f32(0, "y", n), g.f32(1, "x", n), static_cast<float>(g.num(2, "alpha")), n);
  return info.Env().Undefined();
}
Napi::Value SumSquares(Info info) {
  Args g(info, "sumSquares", 2);
  const int64_t n = g.dim(1, "n");
  return Napi::Number::New(info.Env(), sigma::sum_squares(g.f32(0, "x", n), n));
}

Napi::Value LayerNorm(Info info) {
  Args g(info, "layerNorm", 9);
  const int64_t R = g.dim(6, "rows"), C = g.dim(7, "C");
  sigma::layer_norm(g.f32(0, "y", prod(R, C)), g.f32(1, "mean", R), g.f32(2, "rstd", R), g.f32(3, "x", prod(R, C)),
                    g.f32(4, "gamma", C), g.f32(5, "beta", C), R, C, static_cast<float>(g.num(8, "eps")));
  return info.Env().Undefined();
}
Napi::Value LayerNormBackward(Info info) {
  Args g(info, "layerNormBackward", 10);
  const int64_t R = g.dim(8, "rows"), C = g.dim(9, "C");
  sigma::layer_norm_backward(g.f32(0, "dx", prod(R, C)), g.f32(1, "dgamma", C), g.f32(2, "dbeta", C),
                             g.f32(3, "dy", prod(R, C)), g.f32(4, "x", prod(R, C)), g.f32(5, "mean", R),
                             g.f32(6, "rstd", R), g.f32(7, "gamma", C), R, C);
  return info.Env().Undefined();
}
Napi::Value RmsNorm(Info info) {
  Args g(info, "rmsNorm", 7);
  const int64_t R = g.dim(4, "rows"), C = g.dim(5, "C");
  sigma::rms_norm(g.f32(0, "y", prod(R, C)), g.f32(1, "rstd", R), g.f32(2, "x", prod(R, C)), g.f32(3, "gamma", C), R, C,
                  static_cast<float>(g.num(6, "eps")));
  return info.Env().Undefined();
}
Napi::Value RmsNormBackward(Info info) {
  Args g(info, "rmsNormBackward", 8);
  const int64_t R = g.dim(6, "rows"), C = g.dim(7, "C");
  sigma::rms_norm_backward(g.f32(0, "dx", prod(R, C)), g.f32(1, "dgamma", C), g.f32(2, "dy", prod(R, C)),
                           g.f32(3, "x", prod(R, C)), g.f32(4, "rstd", R), g.f32(5, "gamma", C), R, C);
  return info.Env().Undefined();
}
Napi::Value Swiglu(Info info) {
  Args g(info, "swiglu", 4);
  const int64_t n = g.dim(3, "n");
  sigma::swiglu(g.f32(0, "y", n), g.f32(1, "g", n), g.f32(2, "u", n), n);
  return info.Env().Undefined();
}
Napi::Value SwigluBackward(Info info) {
  Args g(info, "swigluBackward", 6);
  const int64_t n = g.dim(5, "n");
  sigma::swiglu_backward(g.f32(0, "dg", n), g.f32(1, "du", n), g.f32(2, "dy", n), g.f32(3, "g", n), g.f32(4, "u", n), n);
  return info.Env().Undefined();
}
Napi::Value Softmax(Info info) {
  Args g(info, "softmax", 4);
  const int64_t R = g.dim(2, "rows"), C = g.dim(3, "cols");
  float* y = g.f32(0, "y", prod(R, C));
  const float* x = g.f32(1, "x", prod(R, C));
  if (R * C == 0) return info.Env().Undefined();  // nothing to write (see AddBias)
  sigma::softmax(y, x, R, C);
  return info.Env().Undefined();
}
// argmaxRows(x: Float32Array [rows, cols], rows, cols, out: Int32Array [rows])
Napi::Value ArgmaxRows(Info info) {
  Args g(info, "argmaxRows", 4);
  const int64_t R = g.dim(1, "rows"), C = g.dim(2, "cols");
  const float* x = g.f32(0, "x", prod(R, C));
  int32_t* out = g.i32_out(3, "out", Need(static_cast<uint64_t>(R)));
  if (C >= (int64_t{1} << 31)) g.range_error("cols", "must be below 2^31");
  sigma::argmax_rows(out, x, R, C);
  return info.Env().Undefined();
}
Napi::Value SoftmaxBackward(Info info) {
  Args g(info, "softmaxBackward", 5);
  const int64_t R = g.dim(3, "rows"), C = g.dim(4, "cols");
  float* dx = g.f32(0, "dx", prod(R, C));
  const float* y = g.f32(1, "y", prod(R, C));
  const float* dy = g.f32(2, "dy", prod(R, C));
  if (R * C == 0) return info.Env().Undefined();  // nothing to write (see AddBias)
  sigma::softmax_backward(dx, y, dy, R, C);
  return info.Env().Undefined();
}
Napi::Value CrossEntropy(Info info) {
  Args g(info, "crossEntropy", 7);
  const int64_t R = g.dim(4, "rows"), V = g.dim(5, "V");
  const int32_t ignore = static_cast<int32_t>(g.integer(6, "ignoreIndex"));
  const int32_t* t = g.i32_copy(3, "targets", R);
  CheckIndices(g, "targets", t, R, V, true, ignore);
  sigma::cross_entropy(g.f32(0, "loss", R), g.f32(1, "lse", R), g.f32(2, "logits", prod(R, V)), t, R, V, ignore);
  return info.Env().Undefined();
}
Napi::Value CrossEntropyBackward(Info info) {
  Args g(info, "crossEntropyBackward", 8);
  const int64_t R = g.dim(5, "rows"), V = g.dim(6, "V");
  const int32_t ignore = static_cast<int32_t>(g.integer(7, "ignoreIndex"));
  const int32_t* t = g.i32_copy(3, "targets", R);
  CheckIndices(g, "targets", t, R, V, true, ignore);
  sigma::cross_entropy_backward(g.f32(0, "dlogits", prod(R, V)), g.f32(1, "logits", prod(R, V)), g.f32(2, "lse", R), t,
                                g.f32(4, "dloss", R), R, V, ignore);
  return info.Env().Undefined();
}

// embedding / gatherRows: out[n,C] = src[idx]
Napi::Value Gather(Info info, const char* name, const char* src, const char* idxName) {
  Args g(info, name, 5);
  const int64_t n = g.dim(3, "n"), C = g.dim(4, "C");
  const int64_t rows = RowsOf(g, 1, src, C);
  const int32_t* idx = g.i32_copy(2, idxName, n);
  CheckIndices(g, idxName, idx, n, rows);
  sigma::gather_rows(g.f32(0, "out", prod(n, C)), g.f32(1, src, 0), idx, n, C);
  return info.Env().Undefined();
}
// embeddingBackward / scatterAddRows: dst[idx] += src[n,C]
Napi::Value Scatter(Info info, const char* name, const char* dst, const char* src, const char* idxName) {
  Args g(info, name, 5);
  const int64_t n = g.dim(3, "n"), C = g.dim(4, "C");
  const int64_t rows = RowsOf(g, 0, dst, C);
  const int32_t* idx = g.i32_copy(2, idxName, n);
  CheckIndices(g, idxName, idx, n, rows);
  sigma::scatter_add_rows(g.f32(0, dst, 0), g.f32(1, src, prod(n, C)), idx, n, C);
  return info.Env().Undefined();
}
Napi::Value Embedding(Info info) { return Gather(info, "embedding", "table", "ids"); }
Napi::Value GatherRows(Info info) { return Gather(info, "gatherRows", "x", "idx"); }
Napi::Value EmbeddingBackward(Info info) { return Scatter(info, "embeddingBackward", "dtable", "dout", "ids"); }
Napi::Value ScatterAddRows(Info info) { return Scatter(info, "scatterAddRows", "out", "x", "idx"); }

Napi::Value Combine(Info info) {
  Args g(info, "combine", 6);
  const int64_t n = g.dim(4, "n"), C = g.dim(5, "C");
  const int64_t rows = RowsOf(g, 0, "y", C);
  const int32_t* idx = g.i32_copy(2, "idx", n);
  CheckIndices(g, "idx", idx, n, rows);
  sigma::combine(g.f32(0, "y", 0), g.f32(1, "x", prod(n, C)), idx, g.f32(3, "w", n), n, C);
  return info.Env().Undefined();
}
Napi::Value CombineBackward(Info info) {
  Args g(info, "combineBackward", 8);
  const int64_t n = g.dim(6, "n"), C = g.dim(7, "C");
  const int64_t rows = RowsOf(g, 2, "dy", C);
  const int32_t* idx = g.i32_copy(4, "idx", n);
  CheckIndices(g, "idx", idx, n, rows);
  sigma::combine_backward(g.f32(0, "dx", prod(n, C)), g.f32(1, "dw", n), g.f32(2, "dy", 0), g.f32(3, "x", prod(n, C)),
                          idx, g.f32(5, "w", n), n, C);
  return info.Env().Undefined();
}
Napi::Value PermuteByExpert(Info info) {
  Args g(info, "permuteByExpert", 5);
  const int64_t n = g.dim(3, "n"), E = g.dim(4, "E");
  const int32_t* ids = g.i32_copy(2, "expertIds", n);
  CheckIndices(g, "expertIds", ids, n, E);
  // order and offsets may share memory with each other: the kernel's
  // indices come from the copy of expertIds and from counts it keeps itself.
  sigma::permute_by_expert(g.i32_out(0, "order", n), g.i32_out(1, "offsets", static_cast<uint64_t>(E) + 1), ids, n, E);
  return info.Env().Undefined();
}

// Tq <= Tk <= kvCap, and D >= 1: with D = 0 no array would bound kvCap, and
// the kernels keep Tk floats of scratch per thread (48·Tk forward, 96·Tk backward).
void CheckAttention(const Args& g, int64_t Tq, int64_t Tk, int64_t cap, int64_t D) {
  if (Tq > Tk) g.range_error("Tq", "must not exceed Tk (" + std::to_string(Tq) + " > " + std::to_string(Tk) + ")");
  if (Tk > cap) g.range_error("Tk", "must not exceed kvCap (" + std::to_string(Tk) + " > " + std::to_string(cap) + ")");
  if (D < 1) g.range_error("D", "must be at least 1");
}
// attention(out, lse, q, k, v, B, Tq, Tk, H, D, kvCap, scale[, kvHeads]): kvHeads (G, dividing H) key/value heads per cache row.
Napi::Value Attention(Info info) {
  const bool grouped = info.Length() == 13;
  Args g(info, "attention", grouped ? 13 : 12);
  const int64_t B = g.dim(5, "B"), Tq = g.dim(6, "Tq"), Tk = g.dim(7, "Tk"), H = g.dim(8, "H"), D = g.dim(9, "D"),
                cap = g.dim(10, "kvCap");
  CheckAttention(g, Tq, Tk, cap, D);
  const int64_t G = grouped ? g.dim(12, "kvHeads") : H;
  if (grouped && (G < 1 || H % G != 0)) g.range_error("kvHeads", "must divide H = " + std::to_string(H) + ", got " + std::to_string(G));
  const Need nq = prod(B, Tq, H, D), nkv = prod(B, cap, G, D), nl = prod(B, H, Tq);
  float* out = g.f32(0, "out", nq);
  float* lse = g.f32(1, "lse", nl);
  const float* q = g.f32(2, "q", nq);
  const float* k = g.f32(3, "k", nkv);
  const float* v = g.f32(4, "v", nkv);
  const float scale = static_cast<float>(g.num(11, "scale"));
  // No query: nothing to write (and B·H, unbounded by any array when Tq = 0, would only count empty pairs).
  if (nl.n == 0) return info.Env().Undefined();
  sigma::attention(out, lse, q, k, v, B, Tq, Tk, H, D, cap, scale, G);
  return info.Env().Undefined();
}
// A Uint16Array (f16 bits) with at least `need` elements.
uint16_t* Halves(const Args& g, size_t i, const char* name, const Need& need) {
  void* data = nullptr;
  size_t n = 0;
  if (!g.typed(g.info[i], napi_uint16_array, name, "", &data, &n)) g.type_error(name, "must be a Uint16Array (f16 bits)");
  g.check_length(name, "", n, need);
  return static_cast<uint16_t*>(data);
}
// attentionHalf(out, lse, q, k, v, B, Tq, Tk, H, D, kvCap, scale, kvHeads): attention over an f16 cache (k, v: Uint16Array).
Napi::Value AttentionHalf(Info info) {
  Args g(info, "attentionHalf", 13);
  const int64_t B = g.dim(5, "B"), Tq = g.dim(6, "Tq"), Tk = g.dim(7, "Tk"), H = g.dim(8, "H"), D = g.dim(9, "D"),
                cap = g.dim(10, "kvCap"), G = g.dim(12, "kvHeads");
  CheckAttention(g, Tq, Tk, cap, D);
  if (G < 1 || H % G != 0) g.range_error("kvHeads", "must divide H = " + std::to_string(H) + ", got " + std::to_string(G));
  const Need nq = prod(B, Tq, H, D), nkv = prod(B, cap, G, D), nl = prod(B, H, Tq);
  float* out = g.f32(0, "out", nq);
  float* lse = g.f32(1, "lse", nl);
  const float* q = g.f32(2, "q", nq);
  const uint16_t* k = Halves(g, 3, "k", nkv);
  const uint16_t* v = Halves(g, 4, "v", nkv);
  const float scale = static_cast<float>(g.num(11, "scale"));
  if (nl.n == 0) return info.Env().Undefined();
  sigma::attention_half(out, lse, q, k, v, B, Tq, Tk, H, D, cap, scale, G);
  return info.Env().Undefined();
}
// toHalf(dst: Uint16Array, src: Float32Array, n) and fromHalf(dst: Float32Array, src: Uint16Array, n).
Napi::Value ToHalf(Info info) {
  Args g(info, "toHalf", 3);
  const int64_t n = g.dim(2, "n");
  uint16_t* dst = Halves(g, 0, "dst", Need{static_cast<uint64_t>(n)});
  sigma::floats_to_halves(dst, g.f32(1, "src", Need{static_cast<uint64_t>(n)}), n);
  return info.Env().Undefined();
}
Napi::Value FromHalf(Info info) {
  Args g(info, "fromHalf", 3);
  const int64_t n = g.dim(2, "n");
  float* dst = g.f32(0, "dst", Need{static_cast<uint64_t>(n)});
  sigma::halves_to_floats(dst, Halves(g, 1, "src", Need{static_cast<uint64_t>(n)}), n);
  return info.Env().Undefined();
}
Napi::Value AttentionBackward(Info info) {
  Args g(info, "attentionBackward", 16);
  const int64_t B = g.dim(9, "B"), Tq = g.dim(10, "Tq"), Tk = g.dim(11, "Tk"), H = g.dim(12, "H"), D = g.dim(13, "D"),
                cap = g.dim(14, "kvCap");
  CheckAttention(g, Tq, Tk, cap, D);
  const Need nq = prod(B, Tq, H, D), nkv = prod(B, cap, H, D), nl = prod(B, H, Tq);
  float* dq = g.f32(0, "dq", nq);
  float* dk = g.f32(1, "dk", nkv);
  float* dv = g.f32(2, "dv", nkv);
  const float* dout = g.f32(3, "dout", nq);
  const float* q = g.f32(4, "q", nq);
  const float* k = g.f32(5, "k", nkv);
  const float* v = g.f32(6, "v", nkv);
  const float* out = g.f32(7, "out", nq);
  const float* lse = g.f32(8, "lse", nl);
  const float scale = static_cast<float>(g.num(15, "scale"));
  // No query: no gradient to add (the backward loops over B·H pairs, unbounded when Tq = 0).
  if (nl.n == 0) return info.Env().Undefined();
  sigma::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, B, Tq, Tk, H, D, cap, scale);
  return info.Env().Undefined();
}

Napi::Value AdamW(Info info) {
  Args g(info, "adamw", 12);
  const int64_t n = g.dim(4, "n");
  const int64_t step = g.dim(10, "step");
  if (step < 1) g.range_error("step", "must be at least 1");
  sigma::adamw(g.f32(0, "param", n), g.f32(1, "grad", n), g.f32(2, "m", n), g.f32(3, "v", n), n,
               static_cast<float>(g.num(5, "lr")), static_cast<float>(g.num(6, "beta1")),
               static_cast<float>(g.num(7, "beta2")), static_cast<float>(g.num(8, "eps")),
               static_cast<float>(g.num(9, "weightDecay")), step, static_cast<float>(g.num(11, "gradScale")));
  return info.Env().Undefined();
}

// adamwExperts(payloads, grads, steps, P, E, decayed, lr, beta1, beta2, eps, weightDecay, gradScale)
Napi::Value AdamWExperts(Info info) {
  Args g(info, "adamwExperts", 12);
  const int64_t P = g.dim(3, "P"), E = g.dim(4, "E"), decayed = g.dim(5, "decayed");
  // steps first, copied into this call's own memory: its length bounds E, so a
  // sparse array of 2^31 - 1 "parts" is refused before its elements are read
  // (reading them makes one handle each). Then the parts, whose getters may run
  // JS (args.h), even a re-entrant call that reuses i32_copy's buffer.
  const int32_t* steps_view = g.i32_copy(2, "steps", E);
  const std::vector<int32_t> step_copy(steps_view, steps_view + E);
  const int32_t* steps = step_copy.data();
  const std::vector<napi_value> pv = g.elements(0, "payloads", E);
  const std::vector<napi_value> gv = g.elements(1, "grads", E);
  if (decayed > P) g.range_error("decayed", "is " + std::to_string(decayed) + " but P = " + std::to_string(P));
  for (int64_t e = 0; e < E; ++e)
    if (steps[e] < 1) g.range_error("steps", "[" + std::to_string(e) + "] = " + std::to_string(steps[e]) + " must be at least 1");
  std::vector<float*> payload, grad;
  g.f32_parts(pv, "payloads", prod(3, P), payload, "3·P");
  g.f32_parts(gv, "grads", P, grad, "P");
  sigma::adamw_experts(payload.data(), grad.data(), steps, E, P, decayed, static_cast<float>(g.num(6, "lr")),
                       static_cast<float>(g.num(7, "beta1")), static_cast<float>(g.num(8, "beta2")),
                       static_cast<float>(g.num(9, "eps")), static_cast<float>(g.num(10, "weightDecay")),
                       static_cast<float>(g.num(11, "gradScale")));
  return info.Env().Undefined();
}

}  // namespace

void InitKernels(Napi::Env env, Napi::Object exports) {
  struct Entry {
    const char* name;
    Napi::Value (*fn)(Info);
  };
  const Entry entries[] = {
      {"addBias", AddBias}, {"addBiasBackward", AddBiasBackward}, {"add", Add}, {"mul", Mul}, {"scale", Scale},
      {"axpy", Axpy}, {"sumSquares", SumSquares}, {"gelu", Gelu}, {"geluBackward", GeluBackward},
      {"fastGelu", FastGelu}, {"fastGeluBackward", FastGeluBackward}, {"layerNorm", LayerNorm}, {"rmsNorm", RmsNorm}, {"rmsNormBackward", RmsNormBackward}, {"swiglu", Swiglu}, {"swigluBackward", SwigluBackward},
      {"layerNormBackward", LayerNormBackward}, {"softmax", Softmax}, {"argmaxRows", ArgmaxRows}, {"softmaxBackward", SoftmaxBackward},
      {"crossEntropy", CrossEntropy}, {"crossEntropyBackward", CrossEntropyBackward}, {"embedding", Embedding},
      {"embeddingBackward", EmbeddingBackward}, {"attention", Attention}, {"attentionBackward", AttentionBackward}, {"attentionHalf", AttentionHalf}, {"toHalf", ToHalf}, {"fromHalf", FromHalf},
      {"permuteByExpert", PermuteByExpert}, {"gatherRows", GatherRows}, {"scatterAddRows", ScatterAddRows},
      {"combine", Combine}, {"combineBackward", CombineBackward}, {"adamw", AdamW}, {"adamwExperts", AdamWExperts},
  };
  for (const Entry& e : entries) Export(env, exports, e.name, e.fn);
}

}  // namespace sigma_napi
