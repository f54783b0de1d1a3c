// AVX-512 kernel for C[M,N] (+)= A[M,K]·B[N,K]ᵀ with a few rows of A (2–16):
// a decoding step over M sequences through a linear layer (B is the weight,
// row-major [out, in]), or an expert that got a few tokens.
//
// The product is bound by reading B, so B must be read from memory once
// however many rows A has. Four rows of B (an n-block) are taken at a time;
// for each block of up to four rows of A, the 4×4 dot products run over K
// in 16-lane pieces: four loads of B and four of A (both in place) feed 16
// FMAs into 16 zmm accumulators. The first block of A's rows pulls the four
// rows of B in from memory; the others find them in L1 or L2 (4·K floats,
// 8 KiB at K = 512). The next n-block's rows are prefetched during the first
// pass, into L2 (prefetcht2): four interleaved streams a row apart are more
// than the hardware prefetcher follows on its own. Into L1 instead (t0), the
// same prefetches left 2–16 rows at 5–10 GB/s of B from memory, one thread;
// into L2, 12–22 GB/s, against ~18 GB/s of read bandwidth (the loads that
// follow find the lines in L2 soon enough; t0 ones crowd L1's miss buffers).
// Prefetching two or four n-blocks ahead was no better, eight worse.
//
// The packed small-M path this replaces (Cᵀ = B·Aᵀ with a 6×16 tile over
// A's rows padded to 16) broadcast every element of B from memory, one load
// per FMA, and computed padding for M < 16; it read B at 5–8 GB/s against
// ~18 GB/s of memory read bandwidth with 2 threads (see docs/kernels.md).
//
// The K tail is a masked load (zeros past K, so it adds nothing); past N's
// edge the last row of B is read again and its sums are not stored.
#pragma GCC target("avx512f,avx2,fma")
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "gemm_ukernel.h"

namespace sigma {
namespace {

// The two 256-bit halves of v, added. (A function, not a lambda: GCC does not
// give a lambda the file's target pragma, and warned of the AVX-512 ABI.)
inline __m256 half(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

// Σ of each of four vectors' 16 lanes, as a 4-lane vector [Σ s0, Σ s1, Σ s2, Σ s3].
inline __m128 hsum4(__m512 s0, __m512 s1, __m512 s2, __m512 s3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(half(s0), half(s1)), _mm256_hadd_ps(half(s2), half(s3)));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// Rows r[0..3] of B against MB rows of A (a, lda apart): C[m, 0..nb) (+)= dot products.
template <int MB>
inline void tile(int64_t K, const float* a, int64_t lda, const float* const (&r)[4], int nb, float* c, int64_t ldc,
                 bool accumulate, const float* next, int64_t ldb, unsigned pf_rows) {
  __m512 s[MB][4];
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < 4; ++j) s[m][j] = _mm512_setzero_ps();
  const int64_t k16 = K & ~int64_t{15};
  for (int64_t k = 0; k < k16; k += 16) {
    for (int j = 0; j < 4; ++j)
      if (pf_rows >> j & 1) _mm_prefetch(reinterpret_cast<const char*>(next + j * ldb + k), _MM_HINT_T2);
    const __m512 b0 = _mm512_loadu_ps(r[0] + k), b1 = _mm512_loadu_ps(r[1] + k);
    const __m512 b2 = _mm512_loadu_ps(r[2] + k), b3 = _mm512_loadu_ps(r[3] + k);
    for (int m = 0; m < MB; ++m) {
      const __m512 x = _mm512_loadu_ps(a + m * lda + k);
      s[m][0] = _mm512_fmadd_ps(x, b0, s[m][0]);
      s[m][1] = _mm512_fmadd_ps(x, b1, s[m][1]);
      s[m][2] = _mm512_fmadd_ps(x, b2, s[m][2]);
      s[m][3] = _mm512_fmadd_ps(x, b3, s[m][3]);
    }
  }
  if (k16 < K) {
    const __mmask16 km = static_cast<__mmask16>((1u << (K - k16)) - 1);
    const __m512 b0 = _mm512_maskz_loadu_ps(km, r[0] + k16), b1 = _mm512_maskz_loadu_ps(km, r[1] + k16);
    const __m512 b2 = _mm512_maskz_loadu_ps(km, r[2] + k16), b3 = _mm512_maskz_loadu_ps(km, r[3] + k16);
    for (int m = 0; m < MB; ++m) {
      const __m512 x = _mm512_maskz_loadu_ps(km, a + m * lda + k16);
      s[m][0] = _mm512_fmadd_ps(x, b0, s[m][0]);
      s[m][1] = _mm512_fmadd_ps(x, b1, s[m][1]);
      s[m][2] = _mm512_fmadd_ps(x, b2, s[m][2]);
      s[m][3] = _mm512_fmadd_ps(x, b3, s[m][3]);
    }
  }
  for (int m = 0; m < MB; ++m) {
    __m128 v = hsum4(s[m][0], s[m][1], s[m][2], s[m][3]);
    float* dst = c + m * ldc;
    if (nb == 4) {
      if (accumulate) v = _mm_add_ps(v, _mm_loadu_ps(dst));
      _mm_storeu_ps(dst, v);
    } else {
      alignas(16) float t[4];
      _mm_store_ps(t, v);
      for (int j = 0; j < nb; ++j) dst[j] = accumulate ? dst[j] + t[j] : t[j];
    }
  }
}

}  // namespace

void gemm_small_m_bt_avx512(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb,
                            float* c, int64_t ldc, bool accumulate) {
  for (int64_t n = 0; n < N; n += 4) {
    const int nb = static_cast<int>(std::min<int64_t>(4, N - n));
    const float* const r[4] = {b + n * ldb, b + (n + std::min(1, nb - 1)) * ldb, b + (n + std::min(2, nb - 1)) * ldb,
                               b + (n + std::min(3, nb - 1)) * ldb};
    const float* next = n + 4 < N ? b + (n + 4) * ldb : b;
    const int nnext = n + 4 < N ? static_cast<int>(std::min<int64_t>(4, N - n - 4)) : 0;
    // Every block of A's rows takes this n-block while it is in cache; the
    // next n-block's rows are prefetched spread over the passes (pass p asks
    // for rows p, p + passes, …), so that memory is busy through all of them.
    const int64_t passes = (M + 3) / 4;
    for (int64_t m = 0; m < M; m += 4) {
      const float* am = a + m * lda;
      float* cm = c + m * ldc + n;
      unsigned pf = 0;
      for (int j = static_cast<int>(m / 4); j < nnext; j += static_cast<int>(passes)) pf |= 1u << j;
      switch (std::min<int64_t>(4, M - m)) {
        case 1: tile<1>(K, am, lda, r, nb, cm, ldc, accumulate, next, ldb, pf); break;
        case 2: tile<2>(K, am, lda, r, nb, cm, ldc, accumulate, next, ldb, pf); break;
        case 3: tile<3>(K, am, lda, r, nb, cm, ldc, accumulate, next, ldb, pf); break;
        default: tile<4>(K, am, lda, r, nb, cm, ldc, accumulate, next, ldb, pf); break;
      }
    }
  }
}

}  // namespace sigma
