// AVX-512 micro-kernel: the 6×16 tile of gemm_avx2.cpp in six zmm
// accumulators, one 16-float vector of B and six broadcasts of A per k, so
// the driver, its blocking and its packed panels are the same on both paths.
// Six chains cover the FMA latency where 512-bit FMAs issue one per cycle
// (Zen 4 runs each as two 256-bit halves, for the same peak as AVX2); the
// gain is in instructions: 13 per k for 192 FLOPs instead of 20.
#pragma GCC target("avx512f,avx2,fma")
#include <immintrin.h>


#include "fma_probe.h"
#include "gemm_ukernel.h"

namespace sigma {

namespace {


inline void store_row(float* row, __m512 v, __mmask16 cols, bool accumulate) {
  if (cols == 0xFFFF) {
    if (accumulate) v = _mm512_add_ps(v, _mm512_loadu_ps(row));
    _mm512_storeu_ps(row, v);
  } else {
    if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(cols, row));
    _mm512_mask_storeu_ps(row, cols, v);
  }
}

template <int R>
__attribute__((always_inline)) inline void tile_rows(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks,
                                                     const float* B, int64_t ldb, float* C, int64_t ldc, int mr, int nr,
                                                     bool accumulate) {
  __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
  const float *a0 = tile_row(A, a_rs, mr, 0), *a1 = tile_row(A, a_rs, mr, 1);
  const float *a2 = tile_row(A, a_rs, mr, 2), *a3 = tile_row(A, a_rs, mr, 3);
  const float *a4 = tile_row(A, a_rs, mr, 4), *a5 = tile_row(A, a_rs, mr, 5);
  // C's tile is touched only after the k loop: fetch its rows first.
  for (int i = 0; i < mr; ++i) __builtin_prefetch(C + i * ldc, 1, 3), __builtin_prefetch(C + i * ldc + nr - 1, 1, 3);
  int64_t o = 0;
  for (int64_t k = 0; k < kc; ++k, o += a_ks, B += ldb) {
    const __m512 b = _mm512_loadu_ps(B);
    c0 = _mm512_fmadd_ps(_mm512_set1_ps(a0[o]), b, c0);
    c1 = _mm512_fmadd_ps(_mm512_set1_ps(a1[o]), b, c1);
    c2 = _mm512_fmadd_ps(_mm512_set1_ps(a2[o]), b, c2);
    c3 = _mm512_fmadd_ps(_mm512_set1_ps(a3[o]), b, c3);
    if constexpr (R == 6) {
      c4 = _mm512_fmadd_ps(_mm512_set1_ps(a4[o]), b, c4);
      c5 = _mm512_fmadd_ps(_mm512_set1_ps(a5[o]), b, c5);
    }
  }
  (void)a4, (void)a5;
  const __mmask16 cols = static_cast<__mmask16>(nr >= 16 ? 0xFFFF : (1u << nr) - 1);
  const __m512 acc[kMR] = {c0, c1, c2, c3, c4, c5};
  for (int i = 0; i < mr; ++i) store_row(C + i * ldc, acc[i], cols, accumulate);
}

__attribute__((noinline)) void tile_rows4(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B,
                                          int64_t ldb, float* C, int64_t ldc, int mr, int nr, bool accumulate) {
  tile_rows<4>(kc, A, a_rs, a_ks, B, ldb, C, ldc, mr, nr, accumulate);
}

}  // namespace

void ukernel_avx512_direct(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb,
                           float* C, int64_t ldc, int mr, int nr, bool accumulate) {
  if (mr <= 4)
    tile_rows4(kc, A, a_rs, a_ks, B, ldb, C, ldc, mr, nr, accumulate);
  else
    tile_rows<6>(kc, A, a_rs, a_ks, B, ldb, C, ldc, mr, nr, accumulate);
}

namespace {
// The probe's FMA (an intrinsic's own address is not to be taken).
inline __m512 fma_zmm(__m512 x, __m512 m, __m512 a) { return _mm512_fmadd_ps(x, m, a); }
}  // namespace

double fma_chains_avx512(int64_t iters) {
  // iters / 2 rounds of zmm: the FLOPs of fma_chains_avx2(iters).
  return time_fma_chains<__m512, fma_zmm>(iters / 2, _mm512_set1_ps(1.0f), _mm512_set1_ps(0.999999f),
                                          _mm512_set1_ps(1e-7f));
}

}  // namespace sigma
