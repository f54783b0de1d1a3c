// AVX2 row kernel of the decode product (quant.h), for CPUs with AVX2, FMA
// and F16C but no AVX-512: the AVX-512 kernel's scheme (quant_decode_avx512.cpp)
// with half the lanes. The unit is half a group, 16 inputs as two ymm of f32
// weights; each weight row streams start to end and meets the rows of x two
// at a time (then one), four accumulators per row of x.
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "decode_tail.h"
#include "quant.h"
#include "reduce_avx2.h"

namespace sigma {
namespace {

struct Row {
  const uint8_t* p;
  const uint16_t* s;
  const uint16_t* m;
};

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// Unit u: inputs 16u … 16u + 15 (group u/2, its first or second half).
struct F32U {
  static constexpr int kBytes = 64;  // stored bytes per unit
  static inline void load(const Row& r, int64_t u, __m256& a, __m256& b) {
    const float* p = reinterpret_cast<const float*>(r.p) + u * 16;
    a = _mm256_loadu_ps(p);
    b = _mm256_loadu_ps(p + 8);
  }
};
struct Bf16U {
  static constexpr int kBytes = 32;
  static inline void load(const Row& r, int64_t u, __m256& a, __m256& b) {
    const __m128i* p = reinterpret_cast<const __m128i*>(r.p + u * 32);
    a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p)), 16));
    b = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p + 1)), 16));
  }
};
struct F16U {
  static constexpr int kBytes = 32;
  static inline void load(const Row& r, int64_t u, __m256& a, __m256& b) {
    const __m128i* p = reinterpret_cast<const __m128i*>(r.p + u * 32);
    a = _mm256_cvtph_ps(_mm_loadu_si128(p));
    b = _mm256_cvtph_ps(_mm_loadu_si128(p + 1));
  }
};
struct Q8U {
  static constexpr int kBytes = 16;
  static inline void load(const Row& r, int64_t u, __m256& a, __m256& b) {
    const uint8_t* p = r.p + u * 16;
    const __m256 d = _mm256_set1_ps(h2f(r.s[u >> 1]));
    a = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))), d);
    b = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)))), d);
  }
};
struct Q4U {
  static constexpr int kBytes = 8;
  static inline void load(const Row& r, int64_t u, __m256& a, __m256& b) {
    const int64_t g = u >> 1;
    const uint8_t* p = r.p + g * 16;  // the group's 16 bytes: the first half in the low nibbles, the second in the high
    const __m256 d = _mm256_set1_ps(h2f(r.s[g])), m = _mm256_set1_ps(h2f(r.m[g]));
    __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)));
    if (u & 1) {
      v0 = _mm256_srli_epi32(v0, 4);
      v1 = _mm256_srli_epi32(v1, 4);
    } else {
      const __m256i low = _mm256_set1_epi32(15);
      v0 = _mm256_and_si256(v0, low);
      v1 = _mm256_and_si256(v1, low);
    }
    a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v0), d, m);
    b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v1), d, m);
  }
};

inline int64_t elem_bytes(WeightFormat f) {
  return f == WeightFormat::kF32 ? 4 : (f == WeightFormat::kBf16 || f == WeightFormat::kF16) ? 2 : 1;
}

inline Row row_of(const QuantMatrix& w, int64_t K, int64_t n) {
  const int64_t G = quant_groups(K);
  return Row{static_cast<const uint8_t*>(w.data) + n * quant_row_elements(w.format, K) * elem_bytes(w.format),
             w.scales ? w.scales + n * G : nullptr, w.mins ? w.mins + n * G : nullptr};
}


// Bytes ahead of the read position that a streaming pass prefetches (rows
// are contiguous: the distance runs on into the next rows), into L2: f32
// +20% over T0 at 2 KiB on the Zen 4 here (bf16 the same). The integer
// kernels (quant_decode_int_avx2.cpp) keep T0 at 2 KiB: T1 cost them 10–15%.
constexpr int64_t kStreamAhead = 4096;

// Each weight row is read start to end, one after the other, so a thread's
// reads form one sequential stream (as a plain sum over memory does),
// prefetched a fixed distance ahead. A group's four vectors go to four
// accumulators per row of x: four independent FMA chains. The rows of x meet
// a weight row two at a time (then one) while it sits in L1, each summed the
// same way in either pass: a row's outputs are the same bits whatever rows
// share the call (tiles of NR weight rows, one accumulator per row of x,
// summed three or more rows in another order than one before).
// finish(r, v) gets row r of x's 8 partial sums.
template <class U, int RC, class Finish>
__attribute__((always_inline)) inline void stream_sums(const Row& row, int64_t K, const float* x, bool ahead, Finish&& finish) {
  const int64_t G = K / 32;
  __m256 acc[RC][4];
  for (int r = 0; r < RC; ++r)
    for (int i = 0; i < 4; ++i) acc[r][i] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    if (ahead) {
      const char* a = reinterpret_cast<const char*>(row.p) + 2 * g * U::kBytes + kStreamAhead;
      for (int b = 0; b < 2 * U::kBytes; b += 64) _mm_prefetch(a + b, _MM_HINT_T1);
    }
    __m256 w0, w1, w2, w3;
    U::load(row, 2 * g, w0, w1);
    U::load(row, 2 * g + 1, w2, w3);
    for (int r = 0; r < RC; ++r) {
      const float* xr = x + r * K + g * 32;
      acc[r][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 8), acc[r][1]);
      acc[r][2] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xr + 16), acc[r][2]);
      acc[r][3] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xr + 24), acc[r][3]);
    }
  }
  for (int r = 0; r < RC; ++r) finish(r, _mm256_add_ps(_mm256_add_ps(acc[r][0], acc[r][1]), _mm256_add_ps(acc[r][2], acc[r][3])));
}

template <class U, int RC>
__attribute__((always_inline)) inline void stream_row(const QuantMatrix& w, const Row& row, int64_t K, int64_t n,
                                                      const float* x, bool ahead, float* y, int64_t ldy) {
  stream_sums<U, RC>(row, K, x, ahead, [&](int r, __m256 v) __attribute__((always_inline)) {
    y[r * ldy + n] = add_tail(hsum(v), w, K, n, x + r * K);
  });
}


// Whole blocks of eight weight rows: the same passes over the rows of x (two,
// then one at a time; the first streams the block from memory, the later one
// finds it in L1), each pass's eight sums per row of x ending in one tree8 —
// the bits of hsum's, so of the row-by-row passes (the rows left over).
// Against the passes reducing row by row (the AVX2 path run on a Zen 4 as a
// stand-in, same process, alternating, tenth session): f32/bf16/f16 at K ≤
// 128 ×1.1–1.9 with 2–8 rows of x and ×1.0–1.27 with one; K ≥ 512 ×1.0–1.3.
template <class U>
__attribute__((noinline)) void blocks(const QuantMatrix& w, float* y, int64_t ldy, const float* x, int64_t R, int64_t K, int64_t n0,
                                      int64_t n1) {
  for (int64_t n = n0; n + 8 <= n1; n += 8) {
    __m256 v[2][8];
    auto pass = [&](auto rc, int64_t r) __attribute__((always_inline)) {
      constexpr int RC = decltype(rc)::value;
      for (int i = 0; i < 8; ++i)
        stream_sums<U, RC>(row_of(w, K, n + i), K, x + r * K, r == 0, [&](int c, __m256 t) __attribute__((always_inline)) { v[c][i] = t; });
      for (int c = 0; c < RC; ++c) {
        float* yr = y + (r + c) * ldy + n;
        _mm256_storeu_ps(yr, tree8(v[c]));
        if (K % 32)
          for (int i = 0; i < 8; ++i) yr[i] = add_tail(yr[i], w, K, n + i, x + (r + c) * K);
      }
    };
    int64_t r = 0;
    for (; r + 2 <= R; r += 2) pass(std::integral_constant<int, 2>{}, r);
    if (r < R) pass(std::integral_constant<int, 1>{}, r);
  }
}

template <class U>
void rows(const QuantMatrix& w, float* y, int64_t ldy, const float* x, int64_t R, int64_t K, int64_t n0, int64_t n1) {
  if (n1 - n0 >= 8) {
    blocks<U>(w, y, ldy, x, R, K, n0, n1);
    n0 += (n1 - n0) / 8 * 8;
  }
  for (int64_t n = n0; n < n1; ++n) {
    const Row row = row_of(w, K, n);
    int64_t r = 0;
    for (; r + 2 <= R; r += 2) stream_row<U, 2>(w, row, K, n, x + r * K, r == 0, y + r * ldy, ldy);
    if (r < R) stream_row<U, 1>(w, row, K, n, x + r * K, r == 0, y + r * ldy, ldy);
  }
}

}  // namespace

void decode_rows_avx2(const QuantMatrix& w, float* y, int64_t ldy, const float* x, int64_t R, int64_t K, int64_t n0,
                      int64_t n1) {
  switch (w.format) {
    case WeightFormat::kF32: return rows<F32U>(w, y, ldy, x, R, K, n0, n1);
    case WeightFormat::kBf16: return rows<Bf16U>(w, y, ldy, x, R, K, n0, n1);
    case WeightFormat::kF16: return rows<F16U>(w, y, ldy, x, R, K, n0, n1);
    case WeightFormat::kQ8: return rows<Q8U>(w, y, ldy, x, R, K, n0, n1);
    case WeightFormat::kQ4: return rows<Q4U>(w, y, ldy, x, R, K, n0, n1);
  }
}

}  // namespace sigma
