// The bf16 decode product with vdpbf16ps (quant.h, "bf16 weights take bf16
// activations"), built for AVX512_BF16 and run only where the CPU has it.
//
// A weight row's 32-weight groups are 64 bytes each: one load, and one
// vdpbf16ps per row of x adds the group's 32 products into 16 f32 lanes (two
// per lane). Where the f32 row kernels turn each group into two zmm of f32
// weights (a shift and a mask) and take two FMAs per row of x, this is one
// instruction, so a row streams from memory with the core mostly idle.
//
// Every row of x is summed the same way: groups alternate between two
// accumulators (two independent chains; the loop takes two groups a step,
// each into its own named accumulator — an index computed from g made GCC
// keep them in memory, at half the speed from cache), the row's last short
// group (K not a multiple of 32) read through a mask — x is zero past K, so
// the masked weights meet zeros — and the two accumulators' sum reduced at
// the end.
// Rows of x are taken four at a time (then two, then one) while the weight
// rows sit in L1, sixteen weight rows at a time whose sums end in one
// transposing tree (reduce_avx512.h), and a row's sums do not depend on its
// neighbours: its outputs are the same bits whatever rows share the call.
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "quant.h"
#include "reduce_avx512.h"

namespace sigma {
namespace {

// Prefetch distance into L2, bytes ahead in the weight stream (as the other
// streaming kernels; 8 KiB against 4 KiB: config R's decode step ×1.10–1.16).
constexpr int64_t kBf16Ahead = 8192;

inline __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh>(v); }

// Weight row p (K bf16) with RC rows of x (xb, rows kp apart): finish(r, v)
// gets row r of x's 16 partial sums.
template <int RC, class Finish>
__attribute__((always_inline)) inline void dot_sums(const uint16_t* p, const uint16_t* xb, int64_t kp, int64_t K, bool ahead,
                                                    Finish&& finish) {
  __m512 acc[RC][2];
  for (int r = 0; r < RC; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  const int64_t G = K / 32;
  int64_t g = 0;
  for (; g + 2 <= G; g += 2) {  // group g into acc[·][0], g + 1 into acc[·][1]
    if (ahead) _mm_prefetch(reinterpret_cast<const char*>(p + g * 32) + kBf16Ahead, _MM_HINT_T1);
    if (ahead) _mm_prefetch(reinterpret_cast<const char*>(p + g * 32) + kBf16Ahead + 64, _MM_HINT_T1);
    const __m512i w0 = _mm512_loadu_si512(p + g * 32), w1 = _mm512_loadu_si512(p + g * 32 + 32);
    for (int r = 0; r < RC; ++r) {
      const uint16_t* xr = xb + r * kp + g * 32;
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], as_bh(w0), as_bh(_mm512_loadu_si512(xr)));
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], as_bh(w1), as_bh(_mm512_loadu_si512(xr + 32)));
    }
  }
  if (g < G) {  // an odd last whole group (g even): acc[·][0]
    const __m512i w0 = _mm512_loadu_si512(p + g * 32);
    for (int r = 0; r < RC; ++r) acc[r][0] = _mm512_dpbf16_ps(acc[r][0], as_bh(w0), as_bh(_mm512_loadu_si512(xb + r * kp + g * 32)));
  }
  if (G * 32 < K) {
    const __mmask32 m = static_cast<__mmask32>((uint64_t{1} << (K - G * 32)) - 1);
    const __m512i w = _mm512_maskz_loadu_epi16(m, p + G * 32);
    const int a = static_cast<int>(G & 1);  // the accumulator group G would take
    for (int r = 0; r < RC; ++r) {
      const __m512bh xv = as_bh(_mm512_loadu_si512(xb + r * kp + G * 32));
      if (a) acc[r][1] = _mm512_dpbf16_ps(acc[r][1], as_bh(w), xv);
      else acc[r][0] = _mm512_dpbf16_ps(acc[r][0], as_bh(w), xv);
    }
  }
  for (int r = 0; r < RC; ++r) finish(r, _mm512_add_ps(acc[r][0], acc[r][1]));
}

template <int RC>
__attribute__((always_inline)) inline void dot_row(const uint16_t* p, const uint16_t* xb, int64_t kp, int64_t K,
                                                   bool ahead, float* y, int64_t ldy) {
  dot_sums<RC>(p, xb, kp, K, ahead, [&](int r, __m512 v) __attribute__((always_inline)) { y[r * ldy] = _mm512_reduce_add_ps(v); });
}

// Several rows of x take the blocks only while a block's rows sit in L1 with
// room to spare (16 rows of K ≤ 256 bf16: 8 KiB), where the later passes find
// them: from memory, 5 rows of x streamed 5–7% slower than row by row at
// K = 2048 (a 64 KiB block) and 3–9% at K = 512 in three of four runs
// (alternating, Zen 4); one row of x takes them at every K (the same speed
// from memory, faster from cache).
constexpr int64_t kBlockK = 256;

// Whole blocks of sixteen weight rows: the same passes over the rows of x
// (four, two, then one at a time; the first streams the block from memory,
// later ones find it in L1/L2), each pass's sixteen sums per row of x ending
// in one tree16 (reduce_avx512.h) — the bits of each sum's own reduction, so
// a row's outputs are those of the row-by-row passes (the rows left over).
// Against the row-by-row passes (same process, alternating, Zen 4, tenth
// session): K ≤ 128 ×1.1–1.4 at 1 to 8 rows of x, K = 512 and 2048 ×1.0–1.05;
// the demo model's one-row step ×1.15.
__attribute__((noinline)) void blocks(const uint16_t* base, float* y, int64_t ldy, const uint16_t* xb, int64_t kp, int64_t R,
                                      int64_t K, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n + 16 <= n1; n += 16) {
    __m512 v[4][16];
    auto pass = [&](auto rc, int64_t r) __attribute__((always_inline)) {
      constexpr int RC = decltype(rc)::value;
      for (int i = 0; i < 16; ++i)
        dot_sums<RC>(base + (n + i) * K, xb + r * kp, kp, K, r == 0, [&](int c, __m512 t) __attribute__((always_inline)) { v[c][i] = t; });
      for (int c = 0; c < RC; ++c) _mm512_storeu_ps(y + (r + c) * ldy + n, tree16(v[c]));
    };
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) pass(std::integral_constant<int, 4>{}, r);
    for (; r + 2 <= R; r += 2) pass(std::integral_constant<int, 2>{}, r);
    if (r < R) pass(std::integral_constant<int, 1>{}, r);
  }
}

}  // namespace

void decode_bf16_dot(const QuantMatrix& w, float* y, int64_t ldy, const uint16_t* xb, int64_t kp, int64_t R, int64_t K,
                     int64_t n0, int64_t n1) {
  const uint16_t* base = static_cast<const uint16_t*>(w.data);
  if (n1 - n0 >= 16 && (R == 1 || K <= kBlockK)) {
    blocks(base, y, ldy, xb, kp, R, K, n0, n1);
    n0 += (n1 - n0) / 16 * 16;
  }
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* p = base + n * K;
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) dot_row<4>(p, xb + r * kp, kp, K, r == 0, y + r * ldy + n, ldy);
    for (; r + 2 <= R; r += 2) dot_row<2>(p, xb + r * kp, kp, K, r == 0, y + r * ldy + n, ldy);
    if (r < R) dot_row<1>(p, xb + r * kp, kp, K, r == 0, y + r * ldy + n, ldy);
  }
}

}  // namespace sigma
