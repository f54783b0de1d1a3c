// AVX-512 (BW, VL) integer decode path (quant.h, "integer dot products"):
// the quantizer of x, and the kernel of quant_decode_int_avx512.h built with
// vpmaddubsw + vpmaddwd; with VNNI allowed and present the same kernel runs
// from quant_decode_int_vnni.cpp instead.
#pragma GCC target("avx512f,avx512bw,avx512vl,f16c,avx2,fma")
// GCC 12's reductions pass an _mm512_undefined_*() source its flow analysis calls uninitialised (as in ops_avx512.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "quant_decode_int_avx512.h"

#include <cstring>
#include <limits>

namespace sigma {

void decode_int_avx512_vnni(const QuantMatrix& w, float* y, int64_t ldy, const QuantX& qx, int64_t R, int64_t K,
                            int64_t n0, int64_t n1);
void decode_packed_avx512_vnni(const uint8_t* pq, const uint16_t* ps, float* y, int64_t ldy, const QuantX& qx, const int32_t* gneg,
                               int64_t R, int64_t K, int64_t n0, int64_t n1, bool q4);

// x per group of 32: the largest |x| (compared as bits: NaN above infinity
// above every finite value), d = amax/127, xq = x·(127/amax) rounded to
// nearest even by vcvtps2dq and narrowed by vpmovdb (exact: |xq| ≤ 127), in
// the format's layout; q8 also gets −128·(sum of each four bytes) for VNNI.
void quantize_x_avx512(const float* x, int64_t R, int64_t K, WeightFormat f, const QuantX& qx) {
  const int64_t G = quant_groups(K), Gx = qx.groups;
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  for (int64_t r = 0; r < R; ++r) {
    const QuantX o = qx.row(r);
    const float* xr = x + r * K;
    const int64_t clear = (G / 4) * 128;  // from the block holding group G on (q4 interleaves four groups)
    std::memset(o.q + clear, 0, Gx * 32 - clear);
    for (int64_t g = G; g < Gx; ++g) o.d[g] = o.sx[g] = 0.f;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t cnt = std::min<int64_t>(32, K - g * 32);
      const __m512 a = _mm512_maskz_loadu_ps(static_cast<__mmask16>(full_mask16(cnt)), xr + g * 32);
      const __m512 b = _mm512_maskz_loadu_ps(static_cast<__mmask16>(full_mask16(std::max<int64_t>(cnt - 16, 0))), xr + g * 32 + 16);
      const uint32_t amax_bits = _mm512_reduce_max_epu32(
          _mm512_max_epu32(_mm512_and_si512(_mm512_castps_si512(a), abs_mask), _mm512_and_si512(_mm512_castps_si512(b), abs_mask)));
      o.sx[g] = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
      int8_t* q0 = o.q + quant_x_index(f, g, 0);
      int8_t* q1 = o.q + quant_x_index(f, g, 16);
      if (amax_bits >= 0x7f800000u) {  // a NaN or infinity: the group's outputs are NaN
        o.d[g] = std::numeric_limits<float>::quiet_NaN();
        std::memset(q0, 0, 16);
        std::memset(q1, 0, 16);
        continue;
      }
      float amax;
      std::memcpy(&amax, &amax_bits, 4);
      o.d[g] = amax / 127.f;
      const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q0), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(a, inv))));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q1), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(b, inv))));
    }
    if (f == WeightFormat::kQ8) {
      for (int64_t l = 0; l < Gx * 32; l += 64) {
        const __m512i v = _mm512_loadu_si512(o.q + l);
        const __m512i s4 = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_set1_epi8(1), v), _mm512_set1_epi16(1));
        _mm512_storeu_si512(o.neg + l / 4, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(s4, 7)));
      }
    }
  }
}

void decode_int_avx512(const QuantMatrix& w, float* y, int64_t ldy, const QuantX& qx, int64_t R, int64_t K,
                       int64_t n0, int64_t n1, bool vnni) {
  if (vnni) return decode_int_avx512_vnni(w, y, ldy, qx, R, K, n0, n1);
  int_kernel<false>(w, y, ldy, qx, R, K, n0, n1);
}

void decode_packed_avx512(const uint8_t* pq, const uint16_t* ps, float* y, int64_t ldy, const QuantX& qx, const int32_t* gneg,
                          int64_t R, int64_t K, int64_t n0, int64_t n1, bool q4, bool vnni) {
  if (vnni) return decode_packed_avx512_vnni(pq, ps, y, ldy, qx, gneg, R, K, n0, n1, q4);
  if (q4) return packed_kernel<false, true>(pq, ps, y, ldy, qx, gneg, R, K, n0, n1);
  packed_kernel<false, false>(pq, ps, y, ldy, qx, gneg, R, K, n0, n1);
}

}  // namespace sigma
