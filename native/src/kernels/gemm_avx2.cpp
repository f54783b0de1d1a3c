// AVX2 + FMA micro-kernels: a 6×16 tile of C in 12 ymm accumulators. Per k they
// load two 8-float vectors of B, broadcast six values of A, and issue 12
// independent FMAs — enough independent chains to cover the FMA latency on
// two pipes. ukernel_avx2_direct reads A with strides, so it takes a packed
// A panel and A's rows in place alike (in L1, 98–100% of the FMA probe on
// both; a separate kernel for packed panels reached 86–93% and is gone).
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include <algorithm>

#include "fma_probe.h"
#include "gemm_ukernel.h"

namespace sigma {

namespace {
// Writes the 6×16 register tile into C, adding when accumulate; edge tiles
// (mr < 6 or nr < 16) write only their corner.
inline void store_tile(const __m256 (&acc)[kMR][2], float* C, int64_t ldc, int mr, int nr, bool accumulate) {
  if (mr == kMR && nr == kNR) {
    for (int i = 0; i < kMR; ++i) {
      float* row = C + i * ldc;
      if (accumulate) {
        _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), acc[i][0]));
        _mm256_storeu_ps(row + 8, _mm256_add_ps(_mm256_loadu_ps(row + 8), acc[i][1]));
      } else {
        _mm256_storeu_ps(row, acc[i][0]);
        _mm256_storeu_ps(row + 8, acc[i][1]);
      }
    }
    return;
  }
  alignas(32) float tile[kMR][kNR];
  for (int i = 0; i < kMR; ++i) {
    _mm256_store_ps(tile[i], acc[i][0]);
    _mm256_store_ps(tile[i] + 8, acc[i][1]);
  }
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) {
      float& dst = C[i * ldc + j];
      dst = accumulate ? dst + tile[i][j] : tile[i][j];
    }
}


// C's tile is read (or written) only after the k loop: fetch its rows first,
// so that the loop hides the miss (C rarely stays cached between k blocks).
// 8–12% less time on config R's large products, 1 and 2 threads.
inline void prefetch_c_tile(const float* C, int64_t ldc, int mr, int nr) {
  for (int i = 0; i < mr; ++i) {
    __builtin_prefetch(C + i * ldc, 1, 3);
    __builtin_prefetch(C + i * ldc + nr - 1, 1, 3);
  }
}
}  // namespace

// The register tile: twelve named accumulators (an array would live in memory).
#define SIGMA_TILE_ZERO                                                       \
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();                \
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();                \
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();                \
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();                \
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();                \
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();

// One k step of one row of the tile: A's value at pointer Ai times the 16
// values of B in b0, b1, into that row's accumulators.
#define SIGMA_ROW_FMA(Ai, ci0, ci1)                                           \
  {                                                                           \
    const __m256 a = _mm256_broadcast_ss(Ai);                                 \
    ci0 = _mm256_fmadd_ps(a, b0, ci0);                                        \
    ci1 = _mm256_fmadd_ps(a, b1, ci1);                                        \
  }

#define SIGMA_TILE_ACC {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}}

namespace {
// The tile's k loop for the first R rows (R = 6, or 4 for an edge tile of at
// most four rows, such as the last of 64: eight accumulators still cover the
// FMA latency and the loop does 4/6 of the work, 1–3% less time on 8 experts
// × 64 rows, x·W[e], interleaved A/B). The four-row loop is kept out of line,
// so that the six-row one compiles as it did before the four-row one existed.
template <int R>
__attribute__((always_inline)) inline void tile_rows(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks,
                                                     const float* B, int64_t ldb, float* C, int64_t ldc, int mr, int nr,
                                                     bool accumulate) {
  SIGMA_TILE_ZERO
  const float *a0 = tile_row(A, a_rs, mr, 0), *a1 = tile_row(A, a_rs, mr, 1);
  const float *a2 = tile_row(A, a_rs, mr, 2), *a3 = tile_row(A, a_rs, mr, 3);
  const float *a4 = tile_row(A, a_rs, mr, 4), *a5 = tile_row(A, a_rs, mr, 5);
  prefetch_c_tile(C, ldc, mr, nr);
  int64_t o = 0;
  for (int64_t k = 0; k < kc; ++k, o += a_ks, B += ldb) {
    const __m256 b0 = _mm256_loadu_ps(B), b1 = _mm256_loadu_ps(B + 8);
    SIGMA_ROW_FMA(a0 + o, c00, c01)
    SIGMA_ROW_FMA(a1 + o, c10, c11)
    SIGMA_ROW_FMA(a2 + o, c20, c21)
    SIGMA_ROW_FMA(a3 + o, c30, c31)
    if constexpr (R == 6) {
      SIGMA_ROW_FMA(a4 + o, c40, c41)
      SIGMA_ROW_FMA(a5 + o, c50, c51)
    }
  }
  (void)a4, (void)a5;
  const __m256 acc[kMR][2] = SIGMA_TILE_ACC;
  store_tile(acc, C, ldc, mr, nr, accumulate);
}

__attribute__((noinline)) void tile_rows4(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B,
                                          int64_t ldb, float* C, int64_t ldc, int mr, int nr, bool accumulate) {
  tile_rows<4>(kc, A, a_rs, a_ks, B, ldb, C, ldc, mr, nr, accumulate);
}
}  // namespace

void ukernel_avx2_direct(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb,
                         float* C, int64_t ldc, int mr, int nr, bool accumulate) {
  if (mr <= 4)
    tile_rows4(kc, A, a_rs, a_ks, B, ldb, C, ldc, mr, nr, accumulate);
  else
    tile_rows<6>(kc, A, a_rs, a_ks, B, ldb, C, ldc, mr, nr, accumulate);
}

namespace {
// In-register transpose of an 8×8 block held in r[0..7].
inline void transpose8x8(__m256 r[8]) {
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}
}  // namespace

void add_transposed_avx2(float* c, int64_t ldc, const float* t, int64_t rows, int64_t cols, bool accumulate) {
  int64_t i0 = 0;
  for (; i0 + 8 <= rows; i0 += 8)
    for (int64_t j0 = 0; j0 < cols; j0 += 8) {
      __m256 r[8];
      for (int u = 0; u < 8; ++u) r[u] = _mm256_loadu_ps(t + (i0 + u) * kNR + j0);
      transpose8x8(r);
      const int64_t n = std::min<int64_t>(8, cols - j0);
      for (int64_t u = 0; u < n; ++u) {
        float* dst = c + (j0 + u) * ldc + i0;
        _mm256_storeu_ps(dst, accumulate ? _mm256_add_ps(_mm256_loadu_ps(dst), r[u]) : r[u]);
      }
    }
  for (int64_t j = 0; j < cols; ++j)
    for (int64_t i = i0; i < rows; ++i) {
      float& dst = c[j * ldc + i];
      dst = accumulate ? dst + t[i * kNR + j] : t[i * kNR + j];
    }
}

void pack_b_trans_avx2(float* dst, int64_t ldd, const float* b, int64_t ldb, int64_t kc) {
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    for (int half = 0; half < 2; ++half) {
      __m256 r[8];
      for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(b + (half * 8 + j) * ldb + k);
      transpose8x8(r);
      for (int kk = 0; kk < 8; ++kk) _mm256_store_ps(dst + (k + kk) * ldd + half * 8, r[kk]);
    }
  }
  for (; k < kc; ++k)
    for (int j = 0; j < 16; ++j) dst[k * ldd + j] = b[j * ldb + k];
}

void pack_a_avx2(float* dst, const float* a, int64_t lda, int64_t kc) {
  int64_t k = 0;
  const __m256 zero = _mm256_setzero_ps();
  for (; k + 8 <= kc; k += 8) {
    __m256 r[8];
    for (int i = 0; i < kMR; ++i) r[i] = _mm256_loadu_ps(a + i * lda + k);
    r[6] = zero;
    r[7] = zero;
    transpose8x8(r);
    // Row kk of the transpose holds the six values of k+kk (and two zeros):
    // eight-float stores, each overwriting the previous one's two extra lanes.
    for (int kk = 0; kk < 8; ++kk) _mm256_storeu_ps(dst + (k + kk) * kMR, r[kk]);
  }
  for (; k < kc; ++k)
    for (int i = 0; i < kMR; ++i) dst[k * kMR + i] = a[i * lda + k];
}

void pack_a_rows_avx2(float* dst, int MR, int mr, const float* a, int64_t lda, int64_t kc) {
  const __m256 zero = _mm256_setzero_ps();
  // Eight rows of the panel at a time: 8×8 blocks transposed in registers,
  // each k's eight values stored at once (fewer lanes for the panel's last
  // group when MR is not a multiple of eight: a masked store).
  for (int g0 = 0; g0 < MR; g0 += 8) {
    const int w = std::min(8, MR - g0), valid = std::max(0, std::min(8, mr - g0));
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(w), lanes);
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
      __m256 r[8];
      for (int u = 0; u < 8; ++u) r[u] = u < valid ? _mm256_loadu_ps(a + (g0 + u) * lda + k) : zero;
      transpose8x8(r);
      float* d = dst + k * MR + g0;
      if (w == 8)
        for (int kk = 0; kk < 8; ++kk) _mm256_storeu_ps(d + kk * MR, r[kk]);
      else
        for (int kk = 0; kk < 8; ++kk) _mm256_maskstore_ps(d + kk * MR, mask, r[kk]);
    }
    for (; k < kc; ++k)
      for (int u = 0; u < w; ++u) dst[k * MR + g0 + u] = u < valid ? a[(g0 + u) * lda + k] : 0.f;
  }
}

void pack_b_trans8_avx2(float* dst, int64_t ldd, const float* b, int64_t ldb, int64_t kc) {
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    __m256 r[8];
    for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(b + j * ldb + k);
    transpose8x8(r);
    for (int kk = 0; kk < 8; ++kk) _mm256_storeu_ps(dst + (k + kk) * ldd, r[kk]);
  }
  for (; k < kc; ++k)
    for (int j = 0; j < 8; ++j) dst[k * ldd + j] = b[j * ldb + k];
}

namespace {
// The probe's FMA (an intrinsic's own address is not to be taken).
inline __m256 fma_ymm(__m256 x, __m256 m, __m256 a) { return _mm256_fmadd_ps(x, m, a); }
}  // namespace

double fma_chains_avx2(int64_t iters) {
  return time_fma_chains<__m256, fma_ymm>(iters, _mm256_set1_ps(1.0f), _mm256_set1_ps(0.999999f),
                                          _mm256_set1_ps(1e-7f));
}

}  // namespace sigma
