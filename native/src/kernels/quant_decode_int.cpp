// Integer dot products for the decode product over q8 and q4 weights
// (quant.h, "integer dot products"): the portable quantizer of x and the
// portable kernel, the definition the SIMD paths follow.
//
// Why: at one or two rows of x, the f32 kernels turn every stored group of
// 32 weights into f32 (widen, convert, scale, and for q4 add the minimum)
// before two FMAs per row of x, which is more work per byte than memory
// delivers bytes for q4 (and about even for q8). Quantizing x once per call
// to int8 per group of 32 lets the weights stay bytes: a group's product is
// one integer dot product (exact in int32: at most 32·127·127), scaled once
// by (x's scale × the group's scale); q4's minimum adds min·Σx, the f32 sum
// of the group's x, kept beside the quantized row.
//
// The rounding of x: xq = x·(127/amax) in f32, rounded to nearest even; the
// SIMD quantizers (cvtps2dq in the default rounding mode) give the same bytes.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "quant.h"

namespace sigma {

namespace {

inline uint32_t abs_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return b & 0x7fffffffu;
}

inline float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

}  // namespace

void quantize_x_portable(const float* x, int64_t R, int64_t K, WeightFormat f, const QuantX& qx) {
  const int64_t G = quant_groups(K), Gx = qx.groups;
  for (int64_t r = 0; r < R; ++r) {
    const QuantX o = qx.row(r);
    const float* xr = x + r * K;
    std::memset(o.q, 0, Gx * 32);  // the short group's missing inputs and the padding groups are zero
    for (int64_t g = G; g < Gx; ++g) o.d[g] = o.sx[g] = 0.f;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t k0 = g * 32, cnt = std::min<int64_t>(32, K - k0);
      // The largest |x| compared as bits: NaN's bits exceed infinity's, which exceed every finite value's.
      uint32_t amax_bits = 0;
      float sum = 0.f;
      for (int64_t i = 0; i < cnt; ++i) {
        amax_bits = std::max(amax_bits, abs_bits(xr[k0 + i]));
        sum += xr[k0 + i];
      }
      o.sx[g] = sum;
      if (amax_bits >= 0x7f800000u) {  // a NaN or infinity: the group's outputs are NaN
        o.d[g] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      const float amax = from_bits(amax_bits);
      o.d[g] = amax / 127.f;
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      for (int64_t i = 0; i < cnt; ++i) {
        const float v = xr[k0 + i] * inv;  // |v| ≤ 127 (a hair above at most): rounds into −127 … 127
        o.q[quant_x_index(f, g, i)] = static_cast<int8_t>(std::nearbyint(v));
      }
    }
    if (f == WeightFormat::kQ8) {
      for (int64_t l = 0; l < Gx * 8; ++l) {
        o.neg[l] = -128 * (o.q[4 * l] + o.q[4 * l + 1] + o.q[4 * l + 2] + o.q[4 * l + 3]);
      }
    }
  }
}

void decode_int_portable(const QuantMatrix& w, float* y, int64_t ldy, const QuantX& qx, int64_t R, int64_t K,
                         int64_t n0, int64_t n1) {
  const int64_t G = quant_groups(K);
  const bool q4 = w.format == WeightFormat::kQ4;
  const int64_t row_bytes = quant_row_elements(w.format, K);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* p = static_cast<const uint8_t*>(w.data) + n * row_bytes;
    const uint16_t* sc = w.scales + n * G;
    const uint16_t* mn = q4 ? w.mins + n * G : nullptr;
    for (int64_t r = 0; r < R; ++r) {
      const QuantX o = qx.row(r);
      float acc = 0.f, acc_min = 0.f;
      for (int64_t g = 0; g < G; ++g) {
        const int64_t cnt = std::min<int64_t>(32, K - g * 32);
        int32_t dot = 0;
        if (q4) {
          const uint8_t* b = p + g * 16;
          for (int64_t i = 0; i < cnt; ++i) {
            const int32_t wq = i < 16 ? (b[i] & 15) : (b[i - 16] >> 4);
            dot += wq * o.q[quant_x_index(w.format, g, i)];
          }
          acc_min += half_to_float(mn[g]) * o.sx[g];
        } else {
          const int8_t* b = reinterpret_cast<const int8_t*>(p) + g * 32;
          for (int64_t i = 0; i < cnt; ++i) dot += b[i] * o.q[g * 32 + i];
        }
        acc += static_cast<float>(dot) * (o.d[g] * half_to_float(sc[g]));
      }
      y[r * ldy + n] = acc + acc_min;
    }
  }
}

}  // namespace sigma
