// Node-API wrappers of the decode kernels (native/include/quant.h): check
// every argument, then call the plain C++ kernel. No math here; the rules
// the checks follow are at the top of args.h.
//
//   decodeMatmulF32 (y, x, w: Float32Array, offsets, E, N, K)
//   decodeMatmulBf16(y, x, w: Uint16Array,  offsets, E, N, K)
//   decodeMatmulF16 (y, x, w: Uint16Array,  offsets, E, N, K)
//   decodeMatmulQ8  (y, x, q: Int8Array,    offsets, E, N, K, scales: Uint16Array)
//   decodeMatmulQ4  (y, x, q: Uint8Array,   offsets, E, N, K, scales: Uint16Array, mins: Uint16Array)
//   … each may take three more: bias: Float32Array [E, N] | null, act: 0 none | 1 fastgelu | 2 gelu,
//   residual: Float32Array [R, N] | null — the epilogue (quant.h): y += bias, y = act(y), residual += y
//   dequantize{Bf16,F16,Q8,Q4}(out, data, rows, K[, scales[, mins]])
//   … decodeMatmulQ8 and Q4 may take two more after those: packed: Uint8Array, packedScales: Uint16Array, from
//   packQ8(q, scales, E, N, K) / packQ4(q, scales, mins, E, N, K) → { packed, scales } (quant.h "packed q8 and
//   q4"; read where decodePacks() is true)
//   decodePath() → "avx512" | "avx2-fma" | "portable"
//   decodeIntPath() → "avx512-vnni" | "avx512-bw" | "avx2" | "portable" (the integer kernels of q8/q4)
//   setDecodeVnni(allow: boolean): lets the AVX-512 integer kernel use VNNI (default) or holds it off (tests)
//   decodeBf16Path() → "avx512-bf16" | "f32-fma" (the bf16 products: vdpbf16ps, or the row kernels over x rounded to bf16)
//   setDecodeBf16Dot(allow: boolean): lets bf16 products use vdpbf16ps where the CPU has it (default) or holds it off (tests)
//   setDecodeIntRows(rows): the most rows of x per expert that take the integer kernels (−1: all, the default; 0: none)
// (the group scales come last so that every decode kernel has E where the
// grouped products have it).
#include <napi.h>

#include <string>

#include "args.h"
#include "quant.h"

namespace sigma_napi {
namespace {

using sigma::WeightFormat;

// A typed array of `type` with at least `need` elements (an input).
template <typename T>
const T* Typed(const Args& g, size_t i, napi_typedarray_type type, const char* type_name, const char* name,
               const Need& need) {
  void* data = nullptr;
  size_t n = 0;
  if (!g.typed(g.info[i], type, name, "", &data, &n)) g.type_error(name, std::string("must be a ") + type_name);
  g.check_length(name, "", n, need);
  return static_cast<const T*>(data);
}

// The stored matrix of E·N rows of K inputs in `format`: data at argument
// `at`, scales and mins (when the format has them) at `scales_at`, `scales_at` + 1.
sigma::QuantMatrix Matrix(const Args& g, WeightFormat f, size_t at, size_t scales_at, uint64_t rows, int64_t K) {
  sigma::QuantMatrix w;
  w.format = f;
  const uint64_t per_row = static_cast<uint64_t>(sigma::quant_row_elements(f, K));
  const Need n = prod(rows, per_row);
  switch (f) {
    case WeightFormat::kF32: w.data = g.f32(at, "w", n); break;
    case WeightFormat::kBf16:
    case WeightFormat::kF16: w.data = Typed<uint16_t>(g, at, napi_uint16_array, "Uint16Array", "w", n); break;
    case WeightFormat::kQ8: w.data = Typed<int8_t>(g, at, napi_int8_array, "Int8Array", "q", n); break;
    case WeightFormat::kQ4: w.data = Typed<uint8_t>(g, at, napi_uint8_array, "Uint8Array", "q", n); break;
  }
  const Need groups = prod(rows, static_cast<uint64_t>(sigma::quant_groups(K)));
  if (f == WeightFormat::kQ8 || f == WeightFormat::kQ4) {
    w.scales = Typed<uint16_t>(g, scales_at, napi_uint16_array, "Uint16Array (f16 bits)", "scales", groups);
  }
  if (f == WeightFormat::kQ4) {
    w.mins = Typed<uint16_t>(g, scales_at + 1, napi_uint16_array, "Uint16Array (f16 bits)", "mins", groups);
  }
  return w;
}

size_t ExtraArgs(WeightFormat f) { return f == WeightFormat::kQ4 ? 2 : f == WeightFormat::kQ8 ? 1 : 0; }

template <WeightFormat F>
Napi::Value DecodeMatmul(const Napi::CallbackInfo& info, const char* kernel) {
  const size_t base = 7 + ExtraArgs(F);
  // q8 and q4 may take their packed copy after the epilogue's three (packQ8, packQ4).
  const bool with_packed = (F == WeightFormat::kQ8 || F == WeightFormat::kQ4) && info.Length() == base + 5;
  const bool with_epilogue = with_packed || info.Length() == base + 3;
  Args g(info, kernel, with_packed ? base + 5 : with_epilogue ? base + 3 : base);
  const int64_t E = g.dim(4, "E"), N = g.dim(5, "N"), K = g.dim(6, "K");
  size_t xlen = 0;
  g.f32(1, "x", 0, &xlen);
  const uint64_t xrows = K == 0 ? UINT64_MAX : xlen / K;
  // Offsets copied and checked: start at 0, never decrease, end within x's rows.
  const int32_t* off = g.i32_copy(3, "offsets", static_cast<uint64_t>(E) + 1);
  if (off[0] != 0) g.range_error("offsets", "must start at 0, got " + std::to_string(off[0]));
  for (int64_t e = 0; e < E; ++e) {
    if (off[e + 1] < off[e]) {
      g.range_error("offsets", "decreases at expert " + std::to_string(e) + " (" + std::to_string(off[e]) + " > " +
                                   std::to_string(off[e + 1]) + ")");
    }
  }
  const uint64_t R = static_cast<uint64_t>(off[E]);
  if (R > xrows) g.range_error("offsets", "ends at " + std::to_string(R) + " but x has only " + std::to_string(xrows) + " rows");
  float* y = g.f32(0, "y", prod(R, N));
  const float* x = g.f32(1, "x", prod(R, K));
  sigma::QuantMatrix w = Matrix(g, F, 2, 7, static_cast<uint64_t>(E) * static_cast<uint64_t>(N), K);  // < 2^62
  if (with_packed) {
    w.packed = Typed<uint8_t>(g, base + 3, napi_uint8_array, "Uint8Array (packQ8, packQ4)", "packed", Need(static_cast<uint64_t>(sigma::packed_bytes(F, E, N, K))));
    w.packed_scales = Typed<uint16_t>(g, base + 4, napi_uint16_array, "Uint16Array (packQ8, packQ4)", "packedScales", Need(static_cast<uint64_t>(sigma::packed_factors(F, E, N, K))));
  }
  sigma::DecodeEpilogue ep;
  if (with_epilogue) {
    auto absent = [&](size_t i) { return info[i].IsNull() || info[i].IsUndefined(); };
    if (!absent(base)) ep.bias = g.f32(base, "bias", prod(static_cast<uint64_t>(E), N));
    const int64_t act = g.integer(base + 1, "act");
    if (act < 0 || act > 2) g.range_error("act", "must be 0 (none), 1 (fastgelu) or 2 (gelu), got " + std::to_string(act));
    ep.act = static_cast<sigma::DecodeAct>(act);
    if (!absent(base + 2)) {
      ep.residual = g.f32(base + 2, "residual", prod(R, N));
      if (ep.residual == y) g.range_error("residual", "must not be y itself");
    }
  }
  if (R == 0 || N == 0) return info.Env().Undefined();
  sigma::decode_matmul(w, y, x, off, E, N, K, with_epilogue ? &ep : nullptr);
  return info.Env().Undefined();
}

template <WeightFormat F>
Napi::Value Dequantize(const Napi::CallbackInfo& info, const char* kernel) {
  Args g(info, kernel, 4 + ExtraArgs(F));
  const int64_t rows = g.dim(2, "rows"), K = g.dim(3, "K");
  float* out = g.f32(0, "out", prod(rows, K));
  const sigma::QuantMatrix w = Matrix(g, F, 1, 4, static_cast<uint64_t>(rows), K);
  sigma::dequantize(w, out, rows, K);
  return info.Env().Undefined();
}

Napi::Value DecodeF32(const Napi::CallbackInfo& i) { return DecodeMatmul<WeightFormat::kF32>(i, "decodeMatmulF32"); }
Napi::Value DecodeBf16(const Napi::CallbackInfo& i) { return DecodeMatmul<WeightFormat::kBf16>(i, "decodeMatmulBf16"); }
Napi::Value DecodeF16(const Napi::CallbackInfo& i) { return DecodeMatmul<WeightFormat::kF16>(i, "decodeMatmulF16"); }
Napi::Value DecodeQ8(const Napi::CallbackInfo& i) { return DecodeMatmul<WeightFormat::kQ8>(i, "decodeMatmulQ8"); }
Napi::Value DecodeQ4(const Napi::CallbackInfo& i) { return DecodeMatmul<WeightFormat::kQ4>(i, "decodeMatmulQ4"); }
Napi::Value DeqBf16(const Napi::CallbackInfo& i) { return Dequantize<WeightFormat::kBf16>(i, "dequantizeBf16"); }
Napi::Value DeqF16(const Napi::CallbackInfo& i) { return Dequantize<WeightFormat::kF16>(i, "dequantizeF16"); }
Napi::Value DeqQ8(const Napi::CallbackInfo& i) { return Dequantize<WeightFormat::kQ8>(i, "dequantizeQ8"); }
Napi::Value DeqQ4(const Napi::CallbackInfo& i) { return Dequantize<WeightFormat::kQ4>(i, "dequantizeQ4"); }

// packQ8(q, scales, E, N, K), packQ4(q, scales, mins, E, N, K) → { packed: Uint8Array, scales: Uint16Array }:
// the matrix of E·N rows repacked for the integer kernels (quant.h, "packed q8 and q4").
template <WeightFormat F>
Napi::Value Pack(const Napi::CallbackInfo& info, const char* kernel) {
  const size_t extra = ExtraArgs(F);
  Args g(info, kernel, 4 + extra);
  const int64_t E = g.dim(1 + extra, "E"), N = g.dim(2 + extra, "N"), K = g.dim(3 + extra, "K");
  const sigma::QuantMatrix w = Matrix(g, F, 0, 1, static_cast<uint64_t>(E) * static_cast<uint64_t>(N), K);
  auto packed = Napi::Uint8Array::New(info.Env(), static_cast<size_t>(sigma::packed_bytes(F, E, N, K)));
  auto scales = Napi::Uint16Array::New(info.Env(), static_cast<size_t>(sigma::packed_factors(F, E, N, K)));
  sigma::pack_quant(w, E, N, K, packed.Data(), scales.Data());
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("packed", packed);
  out.Set("scales", scales);
  return out;
}
Napi::Value PackQ8(const Napi::CallbackInfo& i) { return Pack<WeightFormat::kQ8>(i, "packQ8"); }
Napi::Value PackQ4(const Napi::CallbackInfo& i) { return Pack<WeightFormat::kQ4>(i, "packQ4"); }

Napi::Value DecodePacks(const Napi::CallbackInfo& info) {
  Args g(info, "decodePacks", 0);
  return Napi::Boolean::New(info.Env(), sigma::decode_packs());
}

Napi::Value DecodePath(const Napi::CallbackInfo& info) {
  Args g(info, "decodePath", 0);
  return Napi::String::New(info.Env(), sigma::decode_path_name());
}

Napi::Value DecodeIntPath(const Napi::CallbackInfo& info) {
  Args g(info, "decodeIntPath", 0);
  return Napi::String::New(info.Env(), sigma::decode_int_path_name());
}

Napi::Value SetDecodeVnni(const Napi::CallbackInfo& info) {
  Args g(info, "setDecodeVnni", 1);
  sigma::set_decode_vnni(g.flag(0, "allow"));
  return info.Env().Undefined();
}

Napi::Value DecodeBf16Path(const Napi::CallbackInfo& info) {
  Args g(info, "decodeBf16Path", 0);
  return Napi::String::New(info.Env(), sigma::decode_bf16_path_name());
}

Napi::Value SetDecodeBf16Dot(const Napi::CallbackInfo& info) {
  Args g(info, "setDecodeBf16Dot", 1);
  sigma::set_decode_bf16_dot(g.flag(0, "allow"));
  return info.Env().Undefined();
}

Napi::Value SetDecodeIntRows(const Napi::CallbackInfo& info) {
  Args g(info, "setDecodeIntRows", 1);
  const int64_t rows = g.integer(0, "rows");
  if (rows < -1) g.range_error("rows", "must be −1 (all) or a count, got " + std::to_string(rows));
  sigma::set_decode_int_rows(rows);
  return info.Env().Undefined();
}

}  // namespace

void InitQuant(Napi::Env env, Napi::Object exports) {
  Export(env, exports, "decodeMatmulF32", DecodeF32);
  Export(env, exports, "decodeMatmulBf16", DecodeBf16);
  Export(env, exports, "decodeMatmulF16", DecodeF16);
  Export(env, exports, "decodeMatmulQ8", DecodeQ8);
  Export(env, exports, "decodeMatmulQ4", DecodeQ4);
  Export(env, exports, "dequantizeBf16", DeqBf16);
  Export(env, exports, "dequantizeF16", DeqF16);
  Export(env, exports, "dequantizeQ8", DeqQ8);
  Export(env, exports, "dequantizeQ4", DeqQ4);
  Export(env, exports, "decodePath", DecodePath);
  Export(env, exports, "packQ8", PackQ8);
  Export(env, exports, "packQ4", PackQ4);
  Export(env, exports, "decodePacks", DecodePacks);
  Export(env, exports, "decodeIntPath", DecodeIntPath);
  Export(env, exports, "setDecodeVnni", SetDecodeVnni);
  Export(env, exports, "setDecodeIntRows", SetDecodeIntRows);
  Export(env, exports, "decodeBf16Path", DecodeBf16Path);
  Export(env, exports, "setDecodeBf16Dot", SetDecodeBf16Dot);
}

}  // namespace sigma_napi
