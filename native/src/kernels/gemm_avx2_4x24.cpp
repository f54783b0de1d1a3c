// The 4×24 AVX2 tile (avx2-4x24): 4 rows × 24 columns of C in 12 ymm
// accumulators, the other AVX2 shape with twelve chains besides 6×16.
//
// Per k it loads three 8-float vectors of B and broadcasts four values of A:
// 7 loads for 12 FMAs, where 6×16 does 2 + 6 = 8. Registers: 12 accumulators
// + 3 of B + 1 broadcast = 16, all of them. Fewer broadcasts favour cores
// whose load ports are the limit; a 24-column panel is 96 bytes, one and a
// half cache lines per k of B, against 6×16's one line. Which one wins is
// for the tuner to measure.
//
// A is read with strides (a packed 4-row panel, or rows of A in place, as the
// 6×16 tile); rows past mr re-read row 0 and are never written; an edge tile
// (nr < 24) goes through a scratch tile.
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "gemm_ukernel.h"

namespace sigma {
namespace {

constexpr int kRows = 4, kCols = 24;

#define SIGMA_ROW_FMA24(ai, c0, c1, c2)          \
  {                                              \
    const __m256 a = _mm256_broadcast_ss(ai);    \
    c0 = _mm256_fmadd_ps(a, b0, c0);             \
    c1 = _mm256_fmadd_ps(a, b1, c1);             \
    c2 = _mm256_fmadd_ps(a, b2, c2);             \
  }

}  // namespace

void ukernel_avx2_4x24(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb, float* C,
                       int64_t ldc, int mr, int nr, bool accumulate) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00;
  __m256 c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
  const float *a0 = tile_row(A, a_rs, mr, 0), *a1 = tile_row(A, a_rs, mr, 1);
  const float *a2 = tile_row(A, a_rs, mr, 2), *a3 = tile_row(A, a_rs, mr, 3);
  // C's tile is touched only after the k loop: fetch its rows first.
  for (int i = 0; i < mr; ++i) {
    __builtin_prefetch(C + i * ldc, 1, 3);
    __builtin_prefetch(C + i * ldc + nr - 1, 1, 3);
  }
  int64_t o = 0;
  for (int64_t k = 0; k < kc; ++k, o += a_ks, B += ldb) {
    const __m256 b0 = _mm256_loadu_ps(B), b1 = _mm256_loadu_ps(B + 8), b2 = _mm256_loadu_ps(B + 16);
    SIGMA_ROW_FMA24(a0 + o, c00, c01, c02)
    SIGMA_ROW_FMA24(a1 + o, c10, c11, c12)
    SIGMA_ROW_FMA24(a2 + o, c20, c21, c22)
    SIGMA_ROW_FMA24(a3 + o, c30, c31, c32)
  }
  const __m256 acc[kRows][3] = {{c00, c01, c02}, {c10, c11, c12}, {c20, c21, c22}, {c30, c31, c32}};
  if (nr == kCols) {
    for (int i = 0; i < mr; ++i) {
      float* row = C + i * ldc;
      for (int v = 0; v < 3; ++v) {
        const __m256 x = accumulate ? _mm256_add_ps(_mm256_loadu_ps(row + 8 * v), acc[i][v]) : acc[i][v];
        _mm256_storeu_ps(row + 8 * v, x);
      }
    }
    return;
  }
  alignas(32) float tile[kRows][kCols];
  for (int i = 0; i < kRows; ++i)
    for (int v = 0; v < 3; ++v) _mm256_store_ps(tile[i] + 8 * v, acc[i][v]);
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) {
      float& dst = C[i * ldc + j];
      dst = accumulate ? dst + tile[i][j] : tile[i][j];
    }
}
#undef SIGMA_ROW_FMA24

}  // namespace sigma
