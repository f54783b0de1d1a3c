// AVX-512 row kernel of the decode product (quant.h): y[r, n] = Σ_k x[r, k]·w[n, k]
// for a few rows r of x and output rows n in [n0, n1).
//
// The unit of work is one group of 32 inputs: each format turns the group's
// stored bytes into two zmm of f32 weights (f32: two loads; bf16: a shift
// and a mask, x reordered to match; f16: vcvtph2ps; q8: widen, convert,
// times the group's scale; q4: widen the 16 bytes, split the nibbles,
// convert, then scale·q + min in one FMA), and every row of x takes those
// two vectors with two FMAs. Each weight row streams start to end, meeting
// the rows of x four, two, then one at a time while it sits in L1; a row of
// x is summed the same way whatever rows share the call. Inputs past the
// last whole group (K not a multiple of 32) are added by the scalar definition.
#pragma GCC target("avx512f,f16c,avx2,fma")
// GCC 12's _mm512_reduce_add_ps and conversions pass an _mm512_undefined_*()
// source its own flow analysis then calls uninitialised (as in ops_avx512.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "decode_tail.h"
#include "quant.h"
#include "reduce_avx512.h"

namespace sigma {
namespace {

// One stored row: its bytes and, for q8/q4, its group scales and mins.
struct Row {
  const uint8_t* p;
  const uint16_t* s;
  const uint16_t* m;
};

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

struct F32U {
  static constexpr int kBytes = 128;  // stored bytes per group
  static inline void load(const Row& r, int64_t g, __m512& a, __m512& b) {
    const float* p = reinterpret_cast<const float*>(r.p) + g * 32;
    a = _mm512_loadu_ps(p);
    b = _mm512_loadu_ps(p + 16);
  }
};
// bf16 for the streaming kernels: a group's 64 bytes are one load, read as
// 16 dwords each holding two bf16 (the even one low): shifting left by 16
// gives the even weights' f32 bits, masking the low half off the odd ones' —
// one instruction per 16 weights instead of a widening and a shift. x is
// taken in the same order (bf16_order: a group's even inputs, then its odd
// ones), so each product meets its own input.
struct Bf16Unpack {
  static constexpr int kBytes = 64;
  static inline void load(const Row& r, int64_t g, __m512& a, __m512& b) {
    const __m512i v = _mm512_loadu_si512(r.p + g * 64);
    a = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    b = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
  }
};

// x's whole groups of 32 in Bf16Unpack's order (its tail as it is), for R rows.
const float* bf16_order(const float* x, int64_t R, int64_t K) {
  static thread_local std::vector<float> buf;
  if (buf.size() < static_cast<size_t>(R * K)) buf.resize(static_cast<size_t>(R * K));
  const int64_t G = K / 32;
  for (int64_t r = 0; r < R; ++r) {
    const float* src = x + r * K;
    float* dst = buf.data() + r * K;
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (int64_t g = 0; g < G; ++g) {
      const __m512 lo = _mm512_loadu_ps(src + g * 32), hi = _mm512_loadu_ps(src + g * 32 + 16);
      _mm512_storeu_ps(dst + g * 32, _mm512_permutex2var_ps(lo, even, hi));
      _mm512_storeu_ps(dst + g * 32 + 16, _mm512_permutex2var_ps(lo, odd, hi));
    }
    for (int64_t k = G * 32; k < K; ++k) dst[k] = src[k];
  }
  return buf.data();
}

struct F16U {
  static constexpr int kBytes = 64;
  static inline void load(const Row& r, int64_t g, __m512& a, __m512& b) {
    const __m256i* p = reinterpret_cast<const __m256i*>(r.p + g * 64);
    a = _mm512_cvtph_ps(_mm256_loadu_si256(p));
    b = _mm512_cvtph_ps(_mm256_loadu_si256(p + 1));
  }
};
struct Q8U {
  static constexpr int kBytes = 32;
  static inline void load(const Row& r, int64_t g, __m512& a, __m512& b) {
    const __m128i* p = reinterpret_cast<const __m128i*>(r.p + g * 32);
    const __m512 d = _mm512_set1_ps(h2f(r.s[g]));
    a = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p))), d);
    b = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p + 1))), d);
  }
};
struct Q4U {
  static constexpr int kBytes = 16;
  static inline void load(const Row& r, int64_t g, __m512& a, __m512& b) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r.p + g * 16)));
    const __m512 d = _mm512_set1_ps(h2f(r.s[g])), m = _mm512_set1_ps(h2f(r.m[g]));
    a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15))), d, m);
    b = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), d, m);
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

// Bytes ahead of the read position that a streaming pass prefetches: rows
// are contiguous, so one distance covers the row's end and the next rows.
// Into L2 (T1), 8 KiB ahead. Over one token's matrices from memory (config
// R, 2 threads, interleaved in one process) 4 KiB streamed f32 at 29–32 GB/s
// against 22–24 with T0 at 2 KiB, bf16 26 against 20–23, f16 27–29 against
// 20; two or four accumulators made no difference. 8 KiB against 4 KiB
// (config R's decode step, settings alternating in one process, Zen 4):
// f16 ×1.09–1.10, f32 the same; a lone 16 MiB f32 product from memory ×1.15.
constexpr int64_t kStreamAhead = 8192;

// Each weight row is read start to end, one row after the other, so that a
// thread's reads form one sequential stream (as a plain sum over memory
// does) and the prefetch a fixed distance ahead runs on into the next rows.
// Two groups per step into two accumulators: two independent FMA chains
// per row of x. The rows of x meet a weight row four at a time (then
// two, then one) while it sits in L1, and every row of x is summed the same
// way in each of these passes: a row's outputs are the same bits whatever
// rows share the call (a batched step, a speculative verification's k + 1
// rows give each row what decoding it alone gives). Tiles of NR weight rows
// × up to 8 rows of x, one accumulator each, summed a row in another order
// before, so three or more rows gave other last bits than one.
// finish(r, v) gets row r of x's 16 partial sums.
template <class U, int RC, class Finish>
__attribute__((always_inline)) inline void stream_sums(const Row& row, int64_t K, const float* x, bool ahead, Finish&& finish) {
  const int64_t G = K / 32;
  __m512 acc[RC][2];
  for (int r = 0; r < RC; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 2 <= G; g += 2) {
    if (ahead) {
      const char* a = reinterpret_cast<const char*>(row.p) + g * U::kBytes + kStreamAhead;
      for (int b = 0; b < 2 * U::kBytes; b += 64) _mm_prefetch(a + b, _MM_HINT_T1);
    }
    __m512 wa0, wb0, wa1, wb1;
    U::load(row, g, wa0, wb0);
    U::load(row, g + 1, wa1, wb1);
    for (int r = 0; r < RC; ++r) {
      const float* xr = x + r * K + g * 32;
      acc[r][0] = _mm512_fmadd_ps(wa0, _mm512_loadu_ps(xr), acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(wb0, _mm512_loadu_ps(xr + 16), acc[r][1]);
      acc[r][0] = _mm512_fmadd_ps(wa1, _mm512_loadu_ps(xr + 32), acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(wb1, _mm512_loadu_ps(xr + 48), acc[r][1]);
    }
  }
  for (; g < G; ++g) {
    __m512 wa, wb;
    U::load(row, g, wa, wb);
    for (int r = 0; r < RC; ++r) {
      const float* xr = x + r * K + g * 32;
      acc[r][0] = _mm512_fmadd_ps(wa, _mm512_loadu_ps(xr), acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(wb, _mm512_loadu_ps(xr + 16), acc[r][1]);
    }
  }
  for (int r = 0; r < RC; ++r) finish(r, _mm512_add_ps(acc[r][0], acc[r][1]));
}

template <class U, int RC>
__attribute__((always_inline)) inline void stream_row(const QuantMatrix& w, const Row& row, int64_t K, int64_t n,
                                                      const float* x, bool ahead, float* y, int64_t ldy) {
  stream_sums<U, RC>(row, K, x, ahead, [&](int r, __m512 v) __attribute__((always_inline)) {
    y[r * ldy + n] = add_tail(_mm512_reduce_add_ps(v), w, K, n, x + r * K);
  });
}

// One row of x (decoding one sequence): sixteen weight rows' sums end in one
// tree16 (reduce_avx512.h), bit for bit what each row's own reduction gives
// (NaN payloads apart); a function of its own, so that the passes over
// several rows keep their speed.
template <class U>
__attribute__((noinline)) void one_row(const QuantMatrix& w, float* y, const float* x, int64_t K, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 16 <= n1; n += 16) {
    __m512 v[16];
    for (int i = 0; i < 16; ++i)
      stream_sums<U, 1>(row_of(w, K, n + i), K, x, true, [&](int, __m512 t) __attribute__((always_inline)) { v[i] = t; });
    _mm512_storeu_ps(y + n, tree16(v));
    if (K % 32)
      for (int i = 0; i < 16; ++i) y[n + i] = add_tail(y[n + i], w, K, n + i, x);
  }
  for (; n < n1; ++n) stream_row<U, 1>(w, row_of(w, K, n), K, n, x, true, y, 1);
}

// Several rows of x over whole blocks of sixteen weight rows: the same
// passes (rows of x four, two, then one at a time; the first pass streams the
// block from memory, later ones find it in L1/L2), each pass's sixteen
// partial-sum vectors per row of x ending in one tree16 — the bits of each
// sum's own reduction, so of one_row's and of the row-by-row passes below.
// Against those passes reducing row by row (same process, alternating, Zen
// 4, tenth session): products of 2–8 rows at K ≤ 128 ×1.1–1.9, at K = 512
// and 2048 ×1.0–1.1 (f16 at 5 and 8 rows ×1.3–1.5); the demo model's 5-row
// step f32 ×1.13, f16 ×1.33.
template <class U>
__attribute__((noinline)) void several_rows(const QuantMatrix& w, float* y, int64_t ldy, const float* x, int64_t R, int64_t K, int64_t n0,
                                            int64_t n1) {
  for (int64_t n = n0; n + 16 <= n1; n += 16) {
    __m512 v[4][16];
    auto pass = [&](auto rc, int64_t r) __attribute__((always_inline)) {
      constexpr int RC = decltype(rc)::value;
      for (int i = 0; i < 16; ++i)
        stream_sums<U, RC>(row_of(w, K, n + i), K, x + r * K, r == 0, [&](int c, __m512 t) __attribute__((always_inline)) { v[c][i] = t; });
      for (int c = 0; c < RC; ++c) {
        float* yr = y + (r + c) * ldy + n;
        _mm512_storeu_ps(yr, tree16(v[c]));
        if (K % 32)
          for (int i = 0; i < 16; ++i) yr[i] = add_tail(yr[i], w, K, n + i, x + (r + c) * K);
      }
    };
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) pass(std::integral_constant<int, 4>{}, r);
    for (; r + 2 <= R; r += 2) pass(std::integral_constant<int, 2>{}, r);
    if (r < R) pass(std::integral_constant<int, 1>{}, r);
  }
}

template <class U>
void rows(const QuantMatrix& w, float* y, int64_t ldy, const float* x, int64_t R, int64_t K, int64_t n0, int64_t n1) {
  if (R == 1) return one_row<U>(w, y, x, K, n0, n1);
  if (n1 - n0 >= 16) {
    several_rows<U>(w, y, ldy, x, R, K, n0, n1);
    n0 += (n1 - n0) / 16 * 16;
  }
  for (int64_t n = n0; n < n1; ++n) {
    const Row row = row_of(w, K, n);
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) stream_row<U, 4>(w, row, K, n, x + r * K, r == 0, y + r * ldy, ldy);
    for (; r + 2 <= R; r += 2) stream_row<U, 2>(w, row, K, n, x + r * K, r == 0, y + r * ldy, ldy);
    if (r < R) stream_row<U, 1>(w, row, K, n, x + r * K, r == 0, y + r * ldy, ldy);
  }
}


}  // namespace

void decode_rows_avx512(const QuantMatrix& w, float* y, int64_t ldy, const float* x, int64_t R, int64_t K, int64_t n0,
                        int64_t n1) {
  switch (w.format) {
    case WeightFormat::kF32: return rows<F32U>(w, y, ldy, x, R, K, n0, n1);
    case WeightFormat::kBf16: return rows<Bf16Unpack>(w, y, ldy, bf16_order(x, R, K), R, K, n0, n1);
    case WeightFormat::kF16: return rows<F16U>(w, y, ldy, x, R, K, n0, n1);
    case WeightFormat::kQ8: return rows<Q8U>(w, y, ldy, x, R, K, n0, n1);
    case WeightFormat::kQ4: return rows<Q4U>(w, y, ldy, x, R, K, n0, n1);
  }
}

}  // namespace sigma
