// AVX2 + FMA kernels for thin products, where the 6×16 register tile would
// mostly compute padding and packing would copy the big operand for a few
// FMAs per element: few rows of A (an expert that got one or two tokens, a
// decoding step) or a short inner dimension (that expert's weight gradient, a
// rank-1 or rank-2 update). Both read the big operand once, in place, in
// contiguous streams, so they run at the speed of its memory traffic.
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include <algorithm>

#include "gemm_ukernel.h"
#include "lanes_avx2.h"

namespace sigma {
namespace {

// [Σ s0, Σ s1, Σ s2, Σ s3] over each vector's eight lanes.
inline __m128 hsum4(__m256 s0, __m256 s1, __m256 s2, __m256 s3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// C[M, n..n+4) (+)= A[M,K]·B[n..n+4, K]ᵀ for M rows (template, ≤ 4): four
// rows of B dotted with every row of A. With prefetch, the next four rows of
// B are fetched meanwhile (only the first block of A's rows asks for them).
template <int M>
void dot_rows(int64_t n, int64_t N, int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
              int64_t ldc, bool accumulate, bool prefetch) {
  const int64_t k8 = K & ~int64_t{7};
  const __m256i km = lanes(0, K - k8);
  {
    const int nb = static_cast<int>(std::min<int64_t>(4, N - n));
    // Past N's edge the last row is dotted again; those sums are not stored.
    const float* r0 = b + n * ldb;
    const float* r1 = b + (n + std::min(1, nb - 1)) * ldb;
    const float* r2 = b + (n + std::min(2, nb - 1)) * ldb;
    const float* r3 = b + (n + std::min(3, nb - 1)) * ldb;
    __m256 s[M][4];
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < 4; ++j) s[m][j] = _mm256_setzero_ps();
    // The next four rows are fetched (into L2) while these are summed: four
    // interleaved streams a row apart are more than the hardware prefetcher
    // follows (into L1 they left B at a third of the read bandwidth; see
    // gemm_small_m_bt_avx512.cpp).
    const float* nx = prefetch && n + 4 < N ? b + (n + 4) * ldb : nullptr;
    const int nnext = nx ? static_cast<int>(std::min<int64_t>(4, N - n - 4)) : 0;
    for (int64_t k = 0; k < k8; k += 8) {
      if ((k & 15) == 0)
        for (int j = 0; j < nnext; ++j) _mm_prefetch(reinterpret_cast<const char*>(nx + j * ldb + k), _MM_HINT_T2);
      const __m256 b0 = _mm256_loadu_ps(r0 + k), b1 = _mm256_loadu_ps(r1 + k);
      const __m256 b2 = _mm256_loadu_ps(r2 + k), b3 = _mm256_loadu_ps(r3 + k);
      for (int m = 0; m < M; ++m) {
        const __m256 x = _mm256_loadu_ps(a + m * lda + k);
        s[m][0] = _mm256_fmadd_ps(x, b0, s[m][0]);
        s[m][1] = _mm256_fmadd_ps(x, b1, s[m][1]);
        s[m][2] = _mm256_fmadd_ps(x, b2, s[m][2]);
        s[m][3] = _mm256_fmadd_ps(x, b3, s[m][3]);
      }
    }
    if (k8 < K) {
      const __m256 b0 = _mm256_maskload_ps(r0 + k8, km), b1 = _mm256_maskload_ps(r1 + k8, km);
      const __m256 b2 = _mm256_maskload_ps(r2 + k8, km), b3 = _mm256_maskload_ps(r3 + k8, km);
      for (int m = 0; m < M; ++m) {
        const __m256 x = _mm256_maskload_ps(a + m * lda + k8, km);
        s[m][0] = _mm256_fmadd_ps(x, b0, s[m][0]);
        s[m][1] = _mm256_fmadd_ps(x, b1, s[m][1]);
        s[m][2] = _mm256_fmadd_ps(x, b2, s[m][2]);
        s[m][3] = _mm256_fmadd_ps(x, b3, s[m][3]);
      }
    }
    for (int m = 0; m < M; ++m) {
      __m128 r = hsum4(s[m][0], s[m][1], s[m][2], s[m][3]);
      float* dst = c + m * ldc;
      if (nb == 4) {
        if (accumulate) r = _mm_add_ps(r, _mm_loadu_ps(dst));
        _mm_storeu_ps(dst, r);
      } else {
        alignas(16) float t[4];
        _mm_store_ps(t, r);
        for (int j = 0; j < nb; ++j) dst[j] = accumulate ? dst[j] + t[j] : t[j];
      }
    }
  }
}

// One row of C over columns [n0, n1): C[n] (+)= Σ_{kk < KB} w[kk]·B[kk][n].
// SQ: the squares of the values stored are added into *sq as well (the last
// k block: those values are C's final ones), from the registers they are
// stored from — the sum of squares costs no second read of C. Masked-off
// lanes hold zeros and add nothing.
template <int KB, bool SQ>
inline void axpy_row(float* ci, const float* bk, int64_t ldb, int64_t n0, int64_t n1, const __m256 (&w)[8], bool add,
                     __m256* sq) {
  int64_t n = n0;
  __m256 s = _mm256_setzero_ps();
  for (; n + 8 <= n1; n += 8) {
    __m256 v = add ? _mm256_loadu_ps(ci + n) : _mm256_setzero_ps();
    for (int kk = 0; kk < KB; ++kk) v = _mm256_fmadd_ps(w[kk], _mm256_loadu_ps(bk + kk * ldb + n), v);
    _mm256_storeu_ps(ci + n, v);
    if (SQ) s = _mm256_fmadd_ps(v, v, s);
  }
  if (n < n1) {
    const __m256i m = lanes(0, n1 - n);
    __m256 v = add ? _mm256_maskload_ps(ci + n, m) : _mm256_setzero_ps();
    for (int kk = 0; kk < KB; ++kk) v = _mm256_fmadd_ps(w[kk], _mm256_maskload_ps(bk + kk * ldb + n, m), v);
    _mm256_maskstore_ps(ci + n, m, v);
    if (SQ) s = _mm256_fmadd_ps(v, v, s);
  }
  if (SQ) *sq = s;
}

// axpy_row for KB = kb (1 … 8), with or without the squares.
template <bool SQ>
inline void axpy_row_kb(int kb, float* ci, const float* bk, int64_t ldb, int64_t n0, int64_t n1, const __m256 (&w)[8],
                        bool add, __m256* sq) {
  switch (kb) {
    case 1: axpy_row<1, SQ>(ci, bk, ldb, n0, n1, w, add, sq); break;
    case 2: axpy_row<2, SQ>(ci, bk, ldb, n0, n1, w, add, sq); break;
    case 3: axpy_row<3, SQ>(ci, bk, ldb, n0, n1, w, add, sq); break;
    case 4: axpy_row<4, SQ>(ci, bk, ldb, n0, n1, w, add, sq); break;
    case 5: axpy_row<5, SQ>(ci, bk, ldb, n0, n1, w, add, sq); break;
    case 6: axpy_row<6, SQ>(ci, bk, ldb, n0, n1, w, add, sq); break;
    case 7: axpy_row<7, SQ>(ci, bk, ldb, n0, n1, w, add, sq); break;
    default: axpy_row<8, SQ>(ci, bk, ldb, n0, n1, w, add, sq); break;
  }
}

// Σ of a row's eight float lanes (each at most 64 squares: one 512-column
// chunk) folded into four double lanes, so that a whole matrix sums in double.
inline __m256d fold_squares(__m256d total, __m256 s) {
  total = _mm256_add_pd(total, _mm256_cvtps_pd(_mm256_castps256_ps128(s)));
  return _mm256_add_pd(total, _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1)));
}

}  // namespace

void gemm_thin_rows_bt_avx2(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb,
                            float* c, int64_t ldc, bool accumulate) {
  // Four rows of B at a time, each read from memory once: every block of
  // A's rows takes them while they are in cache (the blocks of A loop
  // inside, so 5–16 rows do not stream B once per block).
  for (int64_t n = 0; n < N; n += 4) {
    for (int64_t m = 0; m < M; m += 4) {
      const float* am = a + m * lda;
      float* cm = c + m * ldc + n;
      const bool pf = m == 0;
      switch (std::min<int64_t>(4, M - m)) {
        case 1: dot_rows<1>(n, N, K, am, lda, b, ldb, cm, ldc, accumulate, pf); break;
        case 2: dot_rows<2>(n, N, K, am, lda, b, ldb, cm, ldc, accumulate, pf); break;
        case 3: dot_rows<3>(n, N, K, am, lda, b, ldb, cm, ldc, accumulate, pf); break;
        default: dot_rows<4>(n, N, K, am, lda, b, ldb, cm, ldc, accumulate, pf); break;
      }
    }
  }
}

void gemm_thin_axpy_avx2(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_ks, const float* b,
                         int64_t ldb, float* c, int64_t ldc, bool accumulate, double* sq) {
  // 512 columns of 8 rows of B (16 KiB) stay in L1 while every row of C takes them.
  constexpr int64_t kChunk = 512;
  __m256d total = _mm256_setzero_pd();
  for (int64_t k0 = 0; k0 < K; k0 += 8) {
    const int kb = static_cast<int>(std::min<int64_t>(8, K - k0));
    const bool add = accumulate || k0 > 0;
    // The last k block writes C's final values: their squares are summed as they are stored.
    const bool squares = sq && k0 + 8 >= K;
    const float* bk = b + k0 * ldb;
    for (int64_t n0 = 0; n0 < N; n0 += kChunk) {
      const int64_t n1 = std::min(N, n0 + kChunk);
      // Fetch the rows two k blocks ahead (the hardware prefetcher does not follow eight rows at once).
      for (int64_t kk = k0 + 16; kk < std::min(K, k0 + 24); ++kk)
        for (int64_t n = n0; n < n1; n += 16) _mm_prefetch(reinterpret_cast<const char*>(b + kk * ldb + n), _MM_HINT_T2);
      for (int64_t i = 0; i < M; ++i) {
        __m256 w[8];
        for (int kk = 0; kk < kb; ++kk) w[kk] = _mm256_broadcast_ss(a + i * a_rs + (k0 + kk) * a_ks);
        float* ci = c + i * ldc;
        if (squares) {
          __m256 s;
          axpy_row_kb<true>(kb, ci, bk, ldb, n0, n1, w, add, &s);
          total = fold_squares(total, s);
        } else {
          axpy_row_kb<false>(kb, ci, bk, ldb, n0, n1, w, add, nullptr);
        }
      }
    }
  }
  if (sq) {
    alignas(32) double t[4];
    _mm256_store_pd(t, total);
    *sq += (t[0] + t[1]) + (t[2] + t[3]);
  }
}

}  // namespace sigma
