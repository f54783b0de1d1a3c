// The wide AVX-512 tiles: MR rows × 32 columns of C in 2·MR zmm accumulators,
// for MR = 8, 12 and 14 (avx512-8x32, avx512-12x32, avx512-14x32).
//
// Why these shapes: a core with two 512-bit FMA pipes and a 4-cycle FMA
// latency needs at least 2 × 4 = 8 independent accumulator chains in flight
// to keep both pipes busy; the 6×16 tile has six. Here each k step loads two
// 16-float vectors of B (columns 0–15 and 16–31) and, for each of the MR rows,
// takes one value of A as a broadcast memory operand of the FMA itself, so the
// step is 2·MR independent FMAs: 16, 24 or 28 chains. Registers: 2·MR
// accumulators + 2 of B, at most 30 of the 32 zmm for MR = 14, and the
// broadcasts need none. Loads per FMA: (2 + MR) / (2·MR), 0.63 for 8 rows,
// 0.58 for 12, 0.57 for 14 (the 6×16 tile: 7 for 6). Which one wins on a
// given core (more chains, or less edge work for 64-row blocks: 64 = 8·8 but
// 5·12 + 4) is for the tuner to measure; the rule in gemm_config.cpp picks 12×32.
//
// A is read from a packed MR-row panel (a_rs = 1, a_ks = MR: one pointer and
// constant offsets); other strides run the same loop with a pointer per row
// (correct, slower, not used by the driver). Edge tiles: rows past mr are
// computed on the panel's zero padding and not stored (a tile of at most six
// rows runs a six-row loop, of at most eight an eight-row one); columns past
// nr are masked off on store.
#pragma GCC target("avx512f,avx2,fma")
#include <immintrin.h>

#include "gemm_ukernel.h"

namespace sigma {
namespace {

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

// One k step of row i (when the loop has that row): named accumulators, since
// an array indexed in the loop would live in memory.
#define SIGMA_WIDE_ROW(i, ca, cb)                 \
  if constexpr (R > i) {                          \
    const __m512 a = _mm512_set1_ps(a##i[o]);     \
    ca = _mm512_fmadd_ps(a, b0, ca);              \
    cb = _mm512_fmadd_ps(a, b1, cb);              \
  }
// Row i's pointer into A: a constant offset in a packed panel; else rows past
// mr re-read row 0 (their results are never stored).
#define SIGMA_WIDE_PTR(i) const float* a##i = Packed ? A + (i < MR ? i : 0) : tile_row(A, rs, mr, i < MR ? i : 0);

// MR: the panel's rows (its k stride when packed); R ≤ MR: rows the loop
// computes (fewer for an edge tile); Packed: A is an MR-row panel.
template <int MR, int R, bool Packed>
__attribute__((always_inline)) inline void wide_tile(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks,
                                                     const float* B, int64_t ldb, float* C, int64_t ldc, int mr, int nr,
                                                     bool accumulate) {
  static_assert(R <= MR && MR <= 14, "at most 14 rows: 28 accumulators and two vectors of B");
  const __m512 z = _mm512_setzero_ps();
  __m512 c0a = z, c0b = z, c1a = z, c1b = z, c2a = z, c2b = z, c3a = z, c3b = z, c4a = z, c4b = z, c5a = z, c5b = z;
  __m512 c6a = z, c6b = z, c7a = z, c7b = z, c8a = z, c8b = z, c9a = z, c9b = z, c10a = z, c10b = z, c11a = z,
         c11b = z, c12a = z, c12b = z, c13a = z, c13b = z;
  const int64_t rs = Packed ? 1 : a_rs, ks = Packed ? MR : a_ks;
  SIGMA_WIDE_PTR(0) SIGMA_WIDE_PTR(1) SIGMA_WIDE_PTR(2) SIGMA_WIDE_PTR(3) SIGMA_WIDE_PTR(4) SIGMA_WIDE_PTR(5)
  SIGMA_WIDE_PTR(6) SIGMA_WIDE_PTR(7) SIGMA_WIDE_PTR(8) SIGMA_WIDE_PTR(9) SIGMA_WIDE_PTR(10) SIGMA_WIDE_PTR(11)
  SIGMA_WIDE_PTR(12) SIGMA_WIDE_PTR(13)
  // C's tile is touched only after the k loop: fetch its rows first.
  for (int i = 0; i < mr; ++i) {
    __builtin_prefetch(C + i * ldc, 1, 3);
    __builtin_prefetch(C + i * ldc + nr - 1, 1, 3);
  }
  int64_t o = 0;
  for (int64_t k = 0; k < kc; ++k, o += ks, B += ldb) {
    const __m512 b0 = _mm512_loadu_ps(B), b1 = _mm512_loadu_ps(B + 16);
    SIGMA_WIDE_ROW(0, c0a, c0b)
    SIGMA_WIDE_ROW(1, c1a, c1b)
    SIGMA_WIDE_ROW(2, c2a, c2b)
    SIGMA_WIDE_ROW(3, c3a, c3b)
    SIGMA_WIDE_ROW(4, c4a, c4b)
    SIGMA_WIDE_ROW(5, c5a, c5b)
    SIGMA_WIDE_ROW(6, c6a, c6b)
    SIGMA_WIDE_ROW(7, c7a, c7b)
    SIGMA_WIDE_ROW(8, c8a, c8b)
    SIGMA_WIDE_ROW(9, c9a, c9b)
    SIGMA_WIDE_ROW(10, c10a, c10b)
    SIGMA_WIDE_ROW(11, c11a, c11b)
    SIGMA_WIDE_ROW(12, c12a, c12b)
    SIGMA_WIDE_ROW(13, c13a, c13b)
  }
  (void)a0, (void)a1, (void)a2, (void)a3, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8, (void)a9, (void)a10;
  (void)a11, (void)a12, (void)a13;
  const __mmask16 m0 = static_cast<__mmask16>(nr >= 16 ? 0xFFFF : (1u << nr) - 1);
  const __mmask16 m1 = static_cast<__mmask16>(nr >= 32 ? 0xFFFF : nr > 16 ? (1u << (nr - 16)) - 1 : 0);
  const __m512 acc[14][2] = {{c0a, c0b}, {c1a, c1b}, {c2a, c2b},   {c3a, c3b},   {c4a, c4b},   {c5a, c5b},   {c6a, c6b},
                             {c7a, c7b}, {c8a, c8b}, {c9a, c9b}, {c10a, c10b}, {c11a, c11b}, {c12a, c12b}, {c13a, c13b}};
  for (int i = 0; i < mr; ++i) {
    store_half(C + i * ldc, acc[i][0], m0, accumulate);
    store_half(C + i * ldc + 16, acc[i][1], m1, accumulate);
  }
}
#undef SIGMA_WIDE_ROW
#undef SIGMA_WIDE_PTR

// Out of line, so that each loop is compiled on its own: the full panel, an
// edge of at most six rows and (for 12 and 14 rows) one of at most eight.
template <int MR, int R>
__attribute__((noinline)) void wide_packed(int64_t kc, const float* A, const float* B, int64_t ldb, float* C,
                                           int64_t ldc, int mr, int nr, bool accumulate) {
  wide_tile<MR, R, true>(kc, A, 1, MR, B, ldb, C, ldc, mr, nr, accumulate);
}
template <int MR>
__attribute__((noinline)) void wide_strided(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B,
                                            int64_t ldb, float* C, int64_t ldc, int mr, int nr, bool accumulate) {
  wide_tile<MR, MR, false>(kc, A, a_rs, a_ks, B, ldb, C, ldc, mr, nr, accumulate);
}

template <int MR>
void wide(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb, float* C, int64_t ldc,
          int mr, int nr, bool accumulate) {
  if (a_rs != 1 || a_ks != MR)
    wide_strided<MR>(kc, A, a_rs, a_ks, B, ldb, C, ldc, mr, nr, accumulate);
  else if (mr <= 6)
    wide_packed<MR, 6>(kc, A, B, ldb, C, ldc, mr, nr, accumulate);
  else if (MR > 8 && mr <= 8)
    wide_packed<MR, (MR > 8 ? 8 : MR)>(kc, A, B, ldb, C, ldc, mr, nr, accumulate);
  else
    wide_packed<MR, MR>(kc, A, B, ldb, C, ldc, mr, nr, accumulate);
}

}  // namespace

void ukernel_avx512_8x32(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb, float* C,
                         int64_t ldc, int mr, int nr, bool accumulate) {
  wide<8>(kc, A, a_rs, a_ks, B, ldb, C, ldc, mr, nr, accumulate);
}
void ukernel_avx512_12x32(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb,
                          float* C, int64_t ldc, int mr, int nr, bool accumulate) {
  wide<12>(kc, A, a_rs, a_ks, B, ldb, C, ldc, mr, nr, accumulate);
}
void ukernel_avx512_14x32(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb,
                          float* C, int64_t ldc, int mr, int nr, bool accumulate) {
  wide<14>(kc, A, a_rs, a_ks, B, ldb, C, ldc, mr, nr, accumulate);
}

}  // namespace sigma
