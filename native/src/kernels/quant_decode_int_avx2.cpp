// AVX2 integer decode path (quant.h, "integer dot products"), for CPUs with
// AVX2, FMA and F16C but no AVX-512: the quantizer of x and the kernel with
// vpmaddubsw + vpmaddwd (unsigned × signed bytes, pairs summed into int16,
// then pairs of those into int32). q8 makes the weights unsigned with |w| and
// gives their sign to x (vpsignb; pairs reach 2·127·127, no saturation); q4's
// nibbles are unsigned already. One ymm of q8 weights is one group (its eight
// lanes take the group's factor d·scale); one of q4 is two groups (lanes 0–3
// and 4–7). Rows stream as in the AVX-512 kernel.
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "packed_blocks.h"
#include "quant.h"
#include "reduce_avx2.h"

namespace sigma {
namespace {

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }


inline uint32_t hmax_u32(__m256i v) {
  __m128i m = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0x4e));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0xb1));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(m));
}

// Pairs of u8·s8 products into int16, pairs of those into int32.
inline __m256i dot4(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

constexpr int64_t kIntAhead = 2048;

// One stored weight row: its bytes, group scales and (q4) mins.
struct IntRow {
  const uint8_t* p;
  const uint16_t* s;
  const uint16_t* m;
};

// WR weight rows (w) with RC rows of x (xr): finish(i, r, v, m) gets each
// pair's eight partial sums v (its output is hsum(v), plus m for q4);
// `ahead`: prefetch the streams. Every (weight row, x row) pair gets the same
// operations in the same order whatever WR and RC are: only the sharing of
// x's loads differs.
template <int WR, int RC, class Finish>
__attribute__((always_inline)) inline void q8_sums(const IntRow* w, const QuantX* xr, int64_t G, bool ahead, Finish&& finish) {
  __m256 acc[WR][RC][2];
  for (int i = 0; i < WR; ++i)
    for (int r = 0; r < RC; ++r) acc[i][r][0] = acc[i][r][1] = _mm256_setzero_ps();
  // Group g into acc[·][·][g & 1], two groups a step with the accumulators
  // named (an index computed from g made GCC keep them in memory).
  auto group = [&](int64_t g, int a) {
    __m256i xq[RC];
    for (int r = 0; r < RC; ++r) xq[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[r].q + g * 32));
    for (int i = 0; i < WR; ++i) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[i].p + g * 32));  // rows are whole groups
      const __m256i ab = _mm256_abs_epi8(wv);
      const float sc = h2f(w[i].s[g]);
      for (int r = 0; r < RC; ++r) {
        const __m256i t = dot4(ab, _mm256_sign_epi8(xq[r], wv));
        acc[i][r][a] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(xr[r].d[g] * sc), acc[i][r][a]);
      }
    }
  };
  int64_t g = 0;
  for (; g + 2 <= G; g += 2) {
    if (ahead)
      for (int i = 0; i < WR; ++i) _mm_prefetch(reinterpret_cast<const char*>(w[i].p) + g * 32 + kIntAhead, _MM_HINT_T0);
    group(g, 0);
    group(g + 1, 1);
  }
  if (g < G) group(g, 0);
  for (int i = 0; i < WR; ++i)
    for (int r = 0; r < RC; ++r) finish(i, r, _mm256_add_ps(acc[i][r][0], acc[i][r][1]), 0.f);
}

template <int WR, int RC, class Finish>
__attribute__((always_inline)) inline void q4_sums(const IntRow* w, const QuantX* xr, int64_t G, bool ahead, Finish&& finish) {
  const __m256i low = _mm256_set1_epi8(15);
  __m256 acc[WR][RC][2];
  float macc[WR][RC];
  for (int i = 0; i < WR; ++i)
    for (int r = 0; r < RC; ++r) {
      acc[i][r][0] = acc[i][r][1] = _mm256_setzero_ps();
      macc[i][r] = 0.f;
    }
  // Groups g, g + 1 (one ymm of bytes) into acc[·][·][(g / 2) & 1], four groups a step with the accumulators named.
  auto pair_of = [&](int64_t g, int a) {
    const bool pair = g + 1 < G;  // a last odd group reads its own 16 bytes only
    __m256i xlo[RC], xhi[RC];
    for (int r = 0; r < RC; ++r) {
      // Groups g, g + 1 sit side by side in their block of four: first halves at (g % 4)·16, second halves 64 further.
      const int8_t* xq = xr[r].q + (g / 4) * 128 + (g % 4) * 16;
      xlo[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
      xhi[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64));
    }
    for (int i = 0; i < WR; ++i) {
      const uint8_t* p = w[i].p;
      const __m256i v = pair ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + g * 16))
                             : _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + g * 16)));
      const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
      const float s0 = h2f(w[i].s[g]), s1 = pair ? h2f(w[i].s[g + 1]) : 0.f;
      const float m0 = h2f(w[i].m[g]), m1 = pair ? h2f(w[i].m[g + 1]) : 0.f;
      for (int r = 0; r < RC; ++r) {
        const __m256i t = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo[r]), _mm256_maddubs_epi16(hi, xhi[r])),
                                            _mm256_set1_epi16(1));  // each int16 sum ≤ 4·15·127
        const __m256 c = _mm256_set_m128(_mm_set1_ps(xr[r].d[g + 1] * s1), _mm_set1_ps(xr[r].d[g] * s0));
        acc[i][r][a] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), c, acc[i][r][a]);
        // One fma, written out: left to -ffp-contract, GCC fused this sum differently in different passes.
        macc[i][r] += std::fma(m1, xr[r].sx[g + 1], m0 * xr[r].sx[g]);
      }
    }
  };
  int64_t g = 0;
  for (; g + 4 <= G; g += 4) {
    if (ahead)
      for (int i = 0; i < WR; ++i) _mm_prefetch(reinterpret_cast<const char*>(w[i].p) + g * 16 + kIntAhead, _MM_HINT_T0);
    pair_of(g, 0);
    pair_of(g + 2, 1);
  }
  if (g < G) pair_of(g, 0);
  if (g + 2 < G) pair_of(g + 2, 1);
  for (int i = 0; i < WR; ++i)
    for (int r = 0; r < RC; ++r) finish(i, r, _mm256_add_ps(acc[i][r][0], acc[i][r][1]), macc[i][r]);
}

template <int WR, int RC, class Finish>
__attribute__((always_inline)) inline void sums(bool q4, const IntRow* w, const QuantX* xr, int64_t G, bool ahead, Finish&& finish) {
  if (q4) q4_sums<WR, RC>(w, xr, G, ahead, finish);
  else q8_sums<WR, RC>(w, xr, G, ahead, finish);
}

// y[r·ldy + i] for WR weight rows and RC rows of x: hsum (plus q4's min term).
template <int WR, int RC>
__attribute__((always_inline)) inline void pass(bool q4, const IntRow* w, const QuantX* xr, int64_t G, bool ahead, float* y,
                                                int64_t ldy) {
  sums<WR, RC>(q4, w, xr, G, ahead, [&](int i, int r, __m256 v, float m) __attribute__((always_inline)) {
    y[r * ldy + i] = q4 ? hsum(v) + m : hsum(v);
  });
}

}  // namespace

void quantize_x_avx2(const float* x, int64_t R, int64_t K, WeightFormat f, const QuantX& qx) {
  const int64_t G = quant_groups(K), Gx = qx.groups;
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t r = 0; r < R; ++r) {
    const QuantX o = qx.row(r);
    const float* xr = x + r * K;
    const int64_t clear = (G / 4) * 128;
    std::memset(o.q + clear, 0, Gx * 32 - clear);
    for (int64_t g = G; g < Gx; ++g) o.d[g] = o.sx[g] = 0.f;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t cnt = std::min<int64_t>(32, K - g * 32);
      alignas(32) float buf[32] = {};
      const float* src = xr + g * 32;
      if (cnt < 32) {
        std::memcpy(buf, src, cnt * 4);
        src = buf;
      }
      __m256 v[4];
      __m256i amax = _mm256_setzero_si256();
      for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(src + 8 * i);
        amax = _mm256_max_epu32(amax, _mm256_and_si256(_mm256_castps_si256(v[i]), abs_mask));
      }
      const uint32_t amax_bits = hmax_u32(amax);
      o.sx[g] = hsum(_mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3])));
      int8_t* q0 = o.q + quant_x_index(f, g, 0);
      int8_t* q1 = o.q + quant_x_index(f, g, 16);
      if (amax_bits >= 0x7f800000u) {
        o.d[g] = std::numeric_limits<float>::quiet_NaN();
        std::memset(q0, 0, 16);
        std::memset(q1, 0, 16);
        continue;
      }
      float am;
      std::memcpy(&am, &amax_bits, 4);
      o.d[g] = am / 127.f;
      const __m256 inv = _mm256_set1_ps(am > 0.f ? 127.f / am : 0.f);
      __m256i qi[4];
      for (int i = 0; i < 4; ++i) qi[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
      // Narrow 32 int32 to 32 int8 in order (packs work per 128-bit lane; the permute puts the dwords back in order).
      const __m256i b = _mm256_permutevar8x32_epi32(
          _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3])), order);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q0), _mm256_castsi256_si128(b));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q1), _mm256_extracti128_si256(b, 1));
    }
    if (f == WeightFormat::kQ8) {
      for (int64_t l = 0; l < Gx * 32; l += 32) {
        const __m256i s4 = dot4(_mm256_set1_epi8(1), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(o.q + l)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o.neg + l / 4), _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(s4, 7)));
      }
    }
  }
}

namespace {

// Whole blocks of eight weight rows: the passes of decode_int_avx2 (below)
// — rows of x two at a time, one weight row a pass, then a last one, four
// weight rows a pass when they are already in L1 or short — each pass's eight
// sums per row of x ending in one tree8 (reduce_avx2.h): the bits of hsum's,
// so of the passes over four rows, which take the rows left over. Against
// those (run on a Zen 4 as a stand-in, same process, alternating, tenth
// session): q8/q4 ×1.0–1.2 at K ≤ 128, ×1.0–1.08 at K ≥ 512.
__attribute__((noinline)) void blocks(bool q4, const QuantMatrix& w, float* y, int64_t ldy, const QuantX& qx, int64_t R, int64_t G,
                                      int64_t row_bytes, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n + 8 <= n1; n += 8) {
    IntRow rows[8];
    for (int i = 0; i < 8; ++i) rows[i] = IntRow{static_cast<const uint8_t*>(w.data) + (n + i) * row_bytes, w.scales + (n + i) * G, q4 ? w.mins + (n + i) * G : nullptr};
    __m256 v[2][8];
    alignas(32) float m[2][8];
    auto store = [&](int64_t r, int rc) __attribute__((always_inline)) {
      for (int c = 0; c < rc; ++c) {
        const __m256 t = tree8(v[c]);
        _mm256_storeu_ps(y + (r + c) * ldy + n, q4 ? _mm256_add_ps(t, _mm256_load_ps(m[c])) : t);
      }
    };
    int64_t r = 0;
    for (; r + 2 <= R; r += 2) {
      const QuantX xr[2] = {qx.row(r), qx.row(r + 1)};
      for (int i = 0; i < 8; ++i)
        sums<1, 2>(q4, rows + i, xr, G, r == 0, [&](int, int c, __m256 t, float mm) __attribute__((always_inline)) {
          v[c][i] = t;
          m[c][i] = mm;
        });
      store(r, 2);
    }
    if (r < R) {
      const QuantX xr[1] = {qx.row(r)};
      if (r > 0 || G <= 4) {
        for (int i = 0; i < 8; i += 4)
          sums<4, 1>(q4, rows + i, xr, G, r == 0, [&](int k, int, __m256 t, float mm) __attribute__((always_inline)) {
            v[0][i + k] = t;
            m[0][i + k] = mm;
          });
      } else {
        for (int i = 0; i < 8; ++i)
          sums<1, 1>(q4, rows + i, xr, G, r == 0, [&](int, int, __m256 t, float mm) __attribute__((always_inline)) {
            v[0][i] = t;
            m[0][i] = mm;
          });
      }
      store(r, 1);
    }
  }
}

}  // namespace

// Weight rows eight at a time (blocks, above), the rest four at a time: each
// meets the rows of x two at a time (one weight row a pass), then a last one
// (four weight rows a pass, sharing x's loads, when the rows are already in
// L1 or short), while they sit in L1; a row of x gets the same operations
// whatever R is and however the weight rows fall into blocks.
void decode_int_avx2(const QuantMatrix& w, float* y, int64_t ldy, const QuantX& qx, int64_t R, int64_t K, int64_t n0,
                     int64_t n1) {
  const bool q4 = w.format == WeightFormat::kQ4;
  const int64_t G = quant_groups(K), row_bytes = quant_row_elements(w.format, K);
  if (n1 - n0 >= 8) {
    blocks(q4, w, y, ldy, qx, R, G, row_bytes, n0, n1);
    n0 += (n1 - n0) / 8 * 8;
  }
  auto row = [&](int64_t n) {
    return IntRow{static_cast<const uint8_t*>(w.data) + n * row_bytes, w.scales + n * G, q4 ? w.mins + n * G : nullptr};
  };
  for (int64_t n = n0; n < n1; n += 4) {
    const int64_t nw = std::min<int64_t>(4, n1 - n);
    const IntRow rows[4] = {row(n), row(std::min(n + 1, n1 - 1)), row(std::min(n + 2, n1 - 1)), row(std::min(n + 3, n1 - 1))};
    int64_t r = 0;
    for (; r + 2 <= R; r += 2) {
      const QuantX xr[2] = {qx.row(r), qx.row(r + 1)};
      for (int64_t i = 0; i < nw; ++i) pass<1, 2>(q4, rows + i, xr, G, r == 0, y + r * ldy + n + i, ldy);
    }
    if (r < R) {
      const QuantX xr[1] = {qx.row(r)};
      // The rows' first pass reads them from memory: one at a time unless they are short (as the AVX-512
      // kernel; four at a time streamed q4 at K = 2048 at half the speed from memory on a Zen 4).
      if (nw == 4 && (r > 0 || G <= 4)) pass<4, 1>(q4, rows, xr, G, r == 0, y + r * ldy + n, ldy);
      else
        for (int64_t i = 0; i < nw; ++i) pass<1, 1>(q4, rows + i, xr, G, r == 0, y + r * ldy + n + i, ldy);
    }
  }
}

// ------------------------------------------------------------------ q8/q4 packed (quant.h): sixteen rows side by side
//
// As the AVX-512 packed kernel (quant_decode_int_avx512.h), a block's sixteen
// rows in two ymm halves of eight lanes: per four bytes of x broadcast, the
// products (q8: |w| · x with w's sign; q4: the nibbles · x) summed into each
// row's int32 lane, a group's dot exact before one conversion and one FMA
// with the rows' factors (q4: then min·Σx in another). Prefetch 8 KiB ahead:
// at the row kernel's 2 KiB, config R's batch-1 step was 0.89–0.91 of the
// row layout's (this Zen 4 standing in, alternating in one process); at 8,
// ×1.12–1.27.

namespace {

constexpr int64_t kPackedAhead = 8192;

// Rows of x r0 … r0 + RC − 1 against one packed block: acc[h][c] lane i = row 8h + i's sum.
template <int RC, bool kQ4>
__attribute__((always_inline)) inline void packed_block_avx2(const uint8_t* pq, const uint16_t* ps, int64_t G, const QuantX& qx, int64_t r0,
                                                             bool ahead, __m256 (&acc)[2][RC]) {
  constexpr int kQuads = kQ4 ? 4 : 8;
  constexpr int kGroupBytes = 64 * kQuads, kFactors = kQ4 ? 32 : 16;
  constexpr WeightFormat kFormat = kQ4 ? WeightFormat::kQ4 : WeightFormat::kQ8;
  for (int h = 0; h < 2; ++h)
    for (int c = 0; c < RC; ++c) acc[h][c] = _mm256_setzero_ps();
  const int64_t Gx = qx.groups;
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* p = pq + g * kGroupBytes;
    if (ahead)
      for (int b = 0; b < kGroupBytes; b += 64) _mm_prefetch(reinterpret_cast<const char*>(p) + kPackedAhead + b, _MM_HINT_T1);
    for (int h = 0; h < 2; ++h) {
      __m256i t[RC];
      for (int c = 0; c < RC; ++c) t[c] = _mm256_setzero_si256();
      for (int q = 0; q < kQuads; ++q) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * q + 32 * h));
        auto four = [&](int c, int64_t i) __attribute__((always_inline)) {
          int32_t v;
          std::memcpy(&v, qx.q + (r0 + c) * Gx * 32 + quant_x_index(kFormat, g, i), 4);
          return _mm256_set1_epi32(v);
        };
        if constexpr (kQ4) {
          const __m256i lo = _mm256_and_si256(w, _mm256_set1_epi8(15)), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), _mm256_set1_epi8(15));
          for (int c = 0; c < RC; ++c) t[c] = _mm256_add_epi32(_mm256_add_epi32(t[c], dot4(lo, four(c, 4 * q))), dot4(hi, four(c, 16 + 4 * q)));
        } else {
          const __m256i u = _mm256_abs_epi8(w);
          for (int c = 0; c < RC; ++c) t[c] = _mm256_add_epi32(t[c], dot4(u, _mm256_sign_epi8(four(c, 4 * q), w)));
        }
      }
      const __m256 sw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ps + g * kFactors + 8 * h)));
      for (int c = 0; c < RC; ++c) {
        acc[h][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t[c]), _mm256_mul_ps(sw, _mm256_set1_ps(qx.d[(r0 + c) * Gx + g])), acc[h][c]);
        if constexpr (kQ4) {
          const __m256 mn = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ps + g * kFactors + 16 + 8 * h)));
          acc[h][c] = _mm256_fmadd_ps(mn, _mm256_set1_ps(qx.sx[(r0 + c) * Gx + g]), acc[h][c]);
        }
      }
    }
  }
}

template <bool kQ4>
void packed_avx2(const uint8_t* pq, const uint16_t* ps, float* y, int64_t ldy, const QuantX& qx, int64_t R, int64_t K, int64_t n0, int64_t n1) {
  const int64_t G = quant_groups(K);
  for_each_packed_block<kQ4>(pq, ps, y, K, n0, n1, [&](const uint8_t* pb, const uint16_t* sb, float* yb, int64_t lo, int64_t hi) {
    auto pass = [&](auto rc, int64_t r) __attribute__((always_inline)) {
      constexpr int RC = decltype(rc)::value;
      __m256 acc[2][RC];
      packed_block_avx2<RC, kQ4>(pb, sb, G, qx, r, r == 0, acc);
      for (int c = 0; c < RC; ++c) {
        float out[16];
        _mm256_storeu_ps(out, acc[0][c]);
        _mm256_storeu_ps(out + 8, acc[1][c]);
        std::memcpy(yb + (r + c) * ldy + lo, out + lo, static_cast<size_t>(hi - lo) * sizeof(float));
      }
    };
    int64_t r = 0;
    for (; r + 3 <= R; r += 3) pass(std::integral_constant<int, 3>{}, r);
    if (R - r == 2) pass(std::integral_constant<int, 2>{}, r);
    else if (R - r == 1) pass(std::integral_constant<int, 1>{}, r);
  });
}

}  // namespace

void decode_packed_avx2(const uint8_t* pq, const uint16_t* ps, float* y, int64_t ldy, const QuantX& qx, int64_t R, int64_t K,
                        int64_t n0, int64_t n1, bool q4) {
  if (q4) return packed_avx2<true>(pq, ps, y, ldy, qx, R, K, n0, n1);
  packed_avx2<false>(pq, ps, y, ldy, qx, R, K, n0, n1);
}

}  // namespace sigma
