// The AVX-512 integer decode kernel (quant_decode_int_avx512.h) built with
// VNNI: vpdpbusd sums four u8·s8 products into each int32 lane in one
// instruction. Runs only where the CPU reports AVX512_VNNI (quant_decode.cpp).
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "quant_decode_int_avx512.h"

namespace sigma {

void decode_int_avx512_vnni(const QuantMatrix& w, float* y, int64_t ldy, const QuantX& qx, int64_t R, int64_t K,
                            int64_t n0, int64_t n1) {
  int_kernel<true>(w, y, ldy, qx, R, K, n0, n1);
}

void decode_packed_avx512_vnni(const uint8_t* pq, const uint16_t* ps, float* y, int64_t ldy, const QuantX& qx, const int32_t* gneg,
                               int64_t R, int64_t K, int64_t n0, int64_t n1, bool q4) {
  if (q4) return packed_kernel<true, true>(pq, ps, y, ldy, qx, gneg, R, K, n0, n1);
  packed_kernel<true, false>(pq, ps, y, ldy, qx, gneg, R, K, n0, n1);
}

}  // namespace sigma
