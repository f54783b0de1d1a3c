// AVX-512 micro-kernel: the 6×16 tile of gemm_avx2.cpp in six zmm
// accumulators, one 16-float vector of B and six broadcasts of A per k, so
// the driver, its blocking and its packed panels are the same on both paths.
// Six chains cover the FMA latency where 512-bit FMAs issue one per cycle
// (Zen 4 runs each as two 256-bit halves, for the same peak as AVX2); the
// gain is in instructions: 13 per k for 192 FLOPs instead of 20.
#pragma GCC target("avx512f,avx2,fma")
#include <immintrin.h>

#include <chrono>

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

double fma_chains_avx512(int64_t iters) {
  // Twelve zmm chains (enough for two 512-bit FMA pipes), iters / 2 times:
  // the same FLOPs as fma_chains_avx2(iters).
  __m512 x0 = _mm512_set1_ps(1.0f), x1 = x0, x2 = x0, x3 = x0, x4 = x0, x5 = x0;
  __m512 x6 = x0, x7 = x0, x8 = x0, x9 = x0, x10 = x0, x11 = x0;
  const __m512 m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-7f);
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters / 2; ++it) {
    x0 = _mm512_fmadd_ps(x0, m, a);
    x1 = _mm512_fmadd_ps(x1, m, a);
    x2 = _mm512_fmadd_ps(x2, m, a);
    x3 = _mm512_fmadd_ps(x3, m, a);
    x4 = _mm512_fmadd_ps(x4, m, a);
    x5 = _mm512_fmadd_ps(x5, m, a);
    x6 = _mm512_fmadd_ps(x6, m, a);
    x7 = _mm512_fmadd_ps(x7, m, a);
    x8 = _mm512_fmadd_ps(x8, m, a);
    x9 = _mm512_fmadd_ps(x9, m, a);
    x10 = _mm512_fmadd_ps(x10, m, a);
    x11 = _mm512_fmadd_ps(x11, m, a);
    // Keeps the compiler from folding the chains; costs no instruction.
    __asm__ volatile("" : "+v"(x0), "+v"(x1), "+v"(x2), "+v"(x3), "+v"(x4), "+v"(x5), "+v"(x6), "+v"(x7), "+v"(x8),
                     "+v"(x9), "+v"(x10), "+v"(x11));
  }
  auto t1 = std::chrono::steady_clock::now();
  const __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(x0, x1), _mm512_add_ps(x2, x3)),
                                 _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(x4, x5), _mm512_add_ps(x6, x7)),
                                               _mm512_add_ps(_mm512_add_ps(x8, x9), _mm512_add_ps(x10, x11))));
  volatile float sink = _mm512_cvtss_f32(s);
  (void)sink;
  return std::chrono::duration<double>(t1 - t0).count();
}

}  // namespace sigma
