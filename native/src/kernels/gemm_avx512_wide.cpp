// The wide AVX-512 tile: 12 rows × 32 columns of C in 24 zmm accumulators.
//
// Why this shape: a core with two 512-bit FMA pipes and a 4-cycle FMA latency
// needs at least 2 × 4 = 8 independent accumulator chains in flight to keep
// both pipes busy; the 6×16 tile has six. Here each k step loads two 16-float
// vectors of B (columns 0–15 and 16–31) and, for each of the 12 rows, takes
// one value of A as a broadcast memory operand of the FMA itself, so the step
// is 24 independent FMAs. Registers: 24 accumulators + 2 of B = 26 of the 32
// zmm, and the broadcasts need none. Loads per step: 2 of B and 12 broadcasts
// for 24 FMAs, fewer per FMA than the 6×16 tile's 1 + 6 for 6.
//
// A is read from a packed 12-row panel (a_rs = 1, a_ks = 12: one pointer and
// constant offsets); other strides run the same loop with a pointer per row
// (correct, slower, not used by the driver). Edge tiles: rows past mr are
// computed on the panel's zero padding and not stored (a tile of at most six
// rows runs a six-row loop); columns past nr are masked off on store.
#pragma GCC target("avx512f,avx2,fma")
#include <immintrin.h>

#include "gemm_ukernel.h"

namespace sigma {
namespace {

constexpr int kRows = 12, kCols = 32;

// Writes one 16-column half row of the tile (masked at the edge), adding when accumulate.
inline void store_half(float* row, __m512 v, __mmask16 cols, bool accumulate) {
  if (cols == 0) return;
  if (cols == 0xFFFF) {
    if (accumulate) v = _mm512_add_ps(v, _mm512_loadu_ps(row));
    _mm512_storeu_ps(row, v);
  } else {
    if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(cols, row));
    _mm512_mask_storeu_ps(row, cols, v);
  }
}

// Named accumulators (an array indexed in the loop would live in memory).
#define SIGMA_WIDE_ROW(i, ai, ca, cb)                   \
  {                                                     \
    const __m512 a = _mm512_set1_ps((ai)[o]);           \
    ca = _mm512_fmadd_ps(a, b0, ca);                    \
    cb = _mm512_fmadd_ps(a, b1, cb);                    \
  }

// R rows (12, or 6 for an edge tile of at most six); Packed: A is a 12-row panel.
template <int R, bool Packed>
__attribute__((always_inline)) inline void wide_tile(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks,
                                                     const float* B, int64_t ldb, float* C, int64_t ldc, int mr, int nr,
                                                     bool accumulate) {
  const __m512 z = _mm512_setzero_ps();
  __m512 c0a = z, c0b = z, c1a = z, c1b = z, c2a = z, c2b = z, c3a = z, c3b = z, c4a = z, c4b = z, c5a = z, c5b = z;
  __m512 c6a = z, c6b = z, c7a = z, c7b = z, c8a = z, c8b = z, c9a = z, c9b = z, c10a = z, c10b = z, c11a = z,
         c11b = z;
  const int64_t rs = Packed ? 1 : a_rs, ks = Packed ? kRows : a_ks;
  // Packed: every row pointer is A plus a constant; else rows past mr re-read row 0.
  const float *a0 = Packed ? A : tile_row(A, rs, mr, 0), *a1 = Packed ? A + 1 : tile_row(A, rs, mr, 1);
  const float *a2 = Packed ? A + 2 : tile_row(A, rs, mr, 2), *a3 = Packed ? A + 3 : tile_row(A, rs, mr, 3);
  const float *a4 = Packed ? A + 4 : tile_row(A, rs, mr, 4), *a5 = Packed ? A + 5 : tile_row(A, rs, mr, 5);
  const float *a6 = Packed ? A + 6 : tile_row(A, rs, mr, 6), *a7 = Packed ? A + 7 : tile_row(A, rs, mr, 7);
  const float *a8 = Packed ? A + 8 : tile_row(A, rs, mr, 8), *a9 = Packed ? A + 9 : tile_row(A, rs, mr, 9);
  const float *a10 = Packed ? A + 10 : tile_row(A, rs, mr, 10), *a11 = Packed ? A + 11 : tile_row(A, rs, mr, 11);
  // C's tile is touched only after the k loop: fetch its rows first.
  for (int i = 0; i < mr; ++i) {
    __builtin_prefetch(C + i * ldc, 1, 3);
    __builtin_prefetch(C + i * ldc + nr - 1, 1, 3);
  }
  int64_t o = 0;
  for (int64_t k = 0; k < kc; ++k, o += ks, B += ldb) {
    const __m512 b0 = _mm512_loadu_ps(B), b1 = _mm512_loadu_ps(B + 16);
    SIGMA_WIDE_ROW(0, a0, c0a, c0b)
    SIGMA_WIDE_ROW(1, a1, c1a, c1b)
    SIGMA_WIDE_ROW(2, a2, c2a, c2b)
    SIGMA_WIDE_ROW(3, a3, c3a, c3b)
    SIGMA_WIDE_ROW(4, a4, c4a, c4b)
    SIGMA_WIDE_ROW(5, a5, c5a, c5b)
    if constexpr (R == 12) {
      SIGMA_WIDE_ROW(6, a6, c6a, c6b)
      SIGMA_WIDE_ROW(7, a7, c7a, c7b)
      SIGMA_WIDE_ROW(8, a8, c8a, c8b)
      SIGMA_WIDE_ROW(9, a9, c9a, c9b)
      SIGMA_WIDE_ROW(10, a10, c10a, c10b)
      SIGMA_WIDE_ROW(11, a11, c11a, c11b)
    }
  }
  (void)a6, (void)a7, (void)a8, (void)a9, (void)a10, (void)a11;
  const __mmask16 m0 = static_cast<__mmask16>(nr >= 16 ? 0xFFFF : (1u << nr) - 1);
  const __mmask16 m1 = static_cast<__mmask16>(nr >= 32 ? 0xFFFF : nr > 16 ? (1u << (nr - 16)) - 1 : 0);
  const __m512 acc[kRows][2] = {{c0a, c0b}, {c1a, c1b}, {c2a, c2b},   {c3a, c3b},   {c4a, c4b},   {c5a, c5b},
                                {c6a, c6b}, {c7a, c7b}, {c8a, c8b}, {c9a, c9b}, {c10a, c10b}, {c11a, c11b}};
  for (int i = 0; i < mr; ++i) {
    store_half(C + i * ldc, acc[i][0], m0, accumulate);
    store_half(C + i * ldc + 16, acc[i][1], m1, accumulate);
  }
}
#undef SIGMA_WIDE_ROW

__attribute__((noinline)) void wide_packed6(int64_t kc, const float* A, const float* B, int64_t ldb, float* C,
                                            int64_t ldc, int mr, int nr, bool accumulate) {
  wide_tile<6, true>(kc, A, 1, kRows, B, ldb, C, ldc, mr, nr, accumulate);
}
__attribute__((noinline)) void wide_strided(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B,
                                            int64_t ldb, float* C, int64_t ldc, int mr, int nr, bool accumulate) {
  wide_tile<12, false>(kc, A, a_rs, a_ks, B, ldb, C, ldc, mr, nr, accumulate);
}

}  // namespace

void ukernel_avx512_12x32(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb,
                          float* C, int64_t ldc, int mr, int nr, bool accumulate) {
  static_assert(kCols == 32, "the tile is two zmm wide");
  if (a_rs != 1 || a_ks != kRows)
    wide_strided(kc, A, a_rs, a_ks, B, ldb, C, ldc, mr, nr, accumulate);
  else if (mr <= 6)
    wide_packed6(kc, A, B, ldb, C, ldc, mr, nr, accumulate);
  else
    wide_tile<12, true>(kc, A, 1, kRows, B, ldb, C, ldc, mr, nr, accumulate);
}

}  // namespace sigma
