// The AVX-512 integer decode kernel (quant.h, "integer dot products"),
// included by quant_decode_int_avx512.cpp (vpmaddubsw + vpmaddwd, AVX512BW)
// and quant_decode_int_vnni.cpp (vpdpbusd, AVX512_VNNI): each file compiles
// it under its own target, so no VNNI instruction reaches the BW build. All
// of it has internal linkage: the two builds never merge.
//
// Weight rows are read start to end, four neighbouring rows at a time (one
// stream per thread, prefetched 4 KiB ahead into L2, as the f32 streaming
// kernels do), in blocks of 16 groups: q8 512 bytes (eight zmm, two groups
// each), q4 256 bytes (four zmm, four groups each). Per zmm of weights and
// row of x: the products of bytes, summed four by four into 16 int32 lanes
// (every lane inside one group), converted to f32 and multiplied by the
// lane's group factor c = d·scale with one FMA into an f32 accumulator. The
// block's 16 factors are one vector (16 f16 scales converted, times 16 x
// scales); vpermps spreads them over the lanes of each zmm. The last block
// of a row, when its groups are fewer than 16, reads through byte masks:
// nothing past the row is touched, and the masked bytes meet zero x.
//
// u8 × s8. vpdpbusd and vpmaddubsw multiply unsigned bytes by signed ones.
// q4 is unsigned already (0…15): nibbles × xq. q8 is signed:
//   VNNI: w + 128 (w xor 0x80) is unsigned, Σ (w + 128)·xq = Σ w·xq + 128·Σ xq,
//     so the int32 accumulator starts at −128·Σ xq per lane (QuantX::neg,
//     computed once with x) and the dot comes out exact.
//   BW: |w| is unsigned and xq takes w's sign (xq is in −127…127, so negating
//     it is exact); vpmaddubsw adds two products into int16, at most
//     2·127·127 = 32258: no saturation (w + 128 would reach 2·255·127 and
//     saturate, hence the other trick). q4 pairs reach 2·15·127.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "packed_blocks.h"
#include "quant.h"
#include "reduce_avx512.h"

namespace sigma {
namespace {

inline int32_t full_mask16(int64_t n) { return n >= 16 ? 0xffff : static_cast<int32_t>((1u << n) - 1); }
inline __mmask64 byte_mask(int64_t n) { return n >= 64 ? ~__mmask64{0} : ((__mmask64{1} << n) - 1); }

// Sums of four adjacent u8·s8 products per int32 lane, added to acc.
template <bool kVnni>
inline __m512i dot4(__m512i acc, __m512i u, __m512i s) {
  if constexpr (kVnni) {
    return _mm512_dpbusd_epi32(acc, u, s);
  } else {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
  }
}

// Σ w·xq per int32 lane for 64 q8 weights (see the top: the two tricks).
template <bool kVnni>
inline __m512i q8_dot(__m512i w, __m512i xq, const int32_t* neg) {
  if constexpr (kVnni) {
    return _mm512_dpbusd_epi32(_mm512_loadu_si512(neg), _mm512_xor_si512(w, _mm512_set1_epi8(-128)), xq);
  } else {
    const __mmask64 negative = _mm512_movepi8_mask(w);
    const __m512i xs = _mm512_mask_sub_epi8(xq, negative, _mm512_setzero_si512(), xq);
    return _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(w), xs), _mm512_set1_epi16(1));
  }
}

// Lane l of zmm j of a block takes factor (q8) 2j + l/8, (q4) 4j + l/4.
inline __m512i q8_lanes(int j) {
  return _mm512_add_epi32(_mm512_set1_epi32(2 * j), _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 3));
}
inline __m512i q4_lanes(int j) {
  return _mm512_add_epi32(_mm512_set1_epi32(4 * j), _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 2));
}

// Prefetch distance in the weight stream, bytes, into L2 (as the f32
// streaming kernels: measured q8 +5–25%, q4 +3–5% against T0 at 2 KiB; then
// 8 KiB against 4 KiB, config R's decode step in one process, settings
// alternating, Zen 4: q8 ×1.06–1.08, q4 the same).
constexpr int64_t kIntAhead = 8192;

// The 16 f16 values at p (gr of them; the rest zero) as f32.
inline __m512 halves(const uint16_t* p, int64_t gr) {
  if (gr >= 16) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>(full_mask16(gr)), p));
}

inline __m512i weight_bytes(const uint8_t* p, int64_t bytes) {
  if (bytes >= 64) return _mm512_loadu_si512(p);
  return _mm512_maskz_loadu_epi8(byte_mask(bytes), p);
}

// One stored weight row: its bytes, group scales and (q4) mins.
struct IntRow {
  const uint8_t* p;
  const uint16_t* s;
  const uint16_t* m;
};

// One block of gr ≤ 16 groups from group g of WR q8 rows, each against RC
// rows of x. Every (weight row, x row) pair gets the same operations in the
// same order whatever WR and RC are: only the sharing of loads differs.
template <bool kVnni, int WR, int RC>
__attribute__((always_inline)) inline void q8_block(const IntRow* w, const QuantX* xr, int64_t g, int64_t gr,
                                                    __m512 (&acc)[WR][RC][2]) {
  __m512 c[WR][RC];
  for (int i = 0; i < WR; ++i) {
    const __m512 sc = halves(w[i].s + g, gr);
    for (int r = 0; r < RC; ++r) c[i][r] = _mm512_mul_ps(sc, _mm512_loadu_ps(xr[r].d + g));
  }
  // zmm j of the block (false past the block's groups).
  auto step = [&](int j) __attribute__((always_inline)) {
    const int64_t bytes = 32 * gr - 64 * j;
    if (bytes <= 0) return false;
    for (int i = 0; i < WR; ++i) {
      const __m512i wv = weight_bytes(w[i].p + g * 32 + 64 * j, bytes);
      for (int r = 0; r < RC; ++r) {
        const __m512i t = q8_dot<kVnni>(wv, _mm512_loadu_si512(xr[r].q + g * 32 + 64 * j), xr[r].neg + g * 8 + 16 * j);
        acc[i][r][j & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_permutexvar_ps(q8_lanes(j), c[i][r]), acc[i][r][j & 1]);
      }
    }
    return true;
  };
  if constexpr (WR * RC == 1) {
    for (int j = 0; j < 8 && step(j); ++j) {}  // GCC's own choice: faster from memory for one row, one weight row
  } else {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j)
      if (!step(j)) break;
  }
}

// One block of gr ≤ 16 groups from group g of WR q4 rows (bytes, scales,
// mins) against RC rows of x; macc takes min·Σx.
template <bool kVnni, int WR, int RC>
__attribute__((always_inline)) inline void q4_block(const IntRow* w, const QuantX* xr, int64_t g, int64_t gr,
                                                    __m512 (&acc)[WR][RC][2], __m512 (&macc)[WR][RC]) {
  __m512 c[WR][RC];
  for (int i = 0; i < WR; ++i) {
    const __m512 sc = halves(w[i].s + g, gr), mn = halves(w[i].m + g, gr);
    for (int r = 0; r < RC; ++r) {
      c[i][r] = _mm512_mul_ps(sc, _mm512_loadu_ps(xr[r].d + g));
      macc[i][r] = _mm512_fmadd_ps(mn, _mm512_loadu_ps(xr[r].sx + g), macc[i][r]);
    }
  }
  const __m512i low = _mm512_set1_epi8(15);
  auto step = [&](int j) __attribute__((always_inline)) {
    const int64_t bytes = 16 * gr - 64 * j;
    if (bytes <= 0) return false;
    for (int i = 0; i < WR; ++i) {
      const __m512i v = weight_bytes(w[i].p + g * 16 + 64 * j, bytes);
      const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
      for (int r = 0; r < RC; ++r) {
        const int8_t* xq = xr[r].q + g * 32 + 128 * j;  // the four groups' first halves, then their second halves
        __m512i t = dot4<kVnni>(_mm512_setzero_si512(), lo, _mm512_loadu_si512(xq));
        t = dot4<kVnni>(t, hi, _mm512_loadu_si512(xq + 64));
        acc[i][r][j & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_permutexvar_ps(q4_lanes(j), c[i][r]), acc[i][r][j & 1]);
      }
    }
    return true;
  };
  if constexpr (WR * RC == 1) {
    for (int j = 0; j < 4 && step(j); ++j) {}
  } else {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j)
      if (!step(j)) break;
  }
}

// WR weight rows with RC rows of x; finish(i, r, v) gets each pair's 16
// partial sums, for i < WR, r < RC.
// `ahead`: bytes ahead of each row's read position to prefetch (0: none — a later pass finds the rows in L1).
template <bool kVnni, int WR, int RC, class Finish>
__attribute__((always_inline)) inline void row_sums(bool q4, const IntRow* w, const QuantX* xr, int64_t G, int64_t ahead,
                                                    Finish&& finish) {
  const int64_t Gfull = G / 16 * 16;
  const int64_t block_bytes = q4 ? 256 : 512;
  __m512 acc[WR][RC][2], macc[WR][RC];
  for (int i = 0; i < WR; ++i)
    for (int r = 0; r < RC; ++r) acc[i][r][0] = acc[i][r][1] = macc[i][r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < Gfull; g += 16) {
    if (ahead) {
      for (int i = 0; i < WR; ++i) {
        const char* a = reinterpret_cast<const char*>(w[i].p) + g * (block_bytes / 16) + ahead;
        for (int b = 0; b < block_bytes; b += 64) _mm_prefetch(a + b, _MM_HINT_T1);
      }
    }
    if (q4) q4_block<kVnni, WR, RC>(w, xr, g, 16, acc, macc);
    else q8_block<kVnni, WR, RC>(w, xr, g, 16, acc);
  }
  if (Gfull < G) {
    if (q4) q4_block<kVnni, WR, RC>(w, xr, Gfull, G - Gfull, acc, macc);
    else q8_block<kVnni, WR, RC>(w, xr, Gfull, G - Gfull, acc);
  }
  for (int i = 0; i < WR; ++i)
    for (int r = 0; r < RC; ++r) finish(i, r, _mm512_add_ps(_mm512_add_ps(acc[i][r][0], acc[i][r][1]), macc[i][r]));
}

// WR weight rows with RC rows of x: y[r·ldy + i] for i < WR, r < RC.
template <bool kVnni, int WR, int RC>
__attribute__((always_inline)) inline void row_pass(bool q4, const IntRow* w, const QuantX* xr, int64_t G, int64_t ahead,
                                                    float* y, int64_t ldy) {
  row_sums<kVnni, WR, RC>(q4, w, xr, G, ahead, [&](int i, int r, __m512 v) __attribute__((always_inline)) {
    y[r * ldy + i] = _mm512_reduce_add_ps(v);
  });
}

// A stored q8/q4 matrix as the kernels below walk it: its rows, and the
// prefetch distances. One row at a time streams kIntAhead ahead; a pass
// over several rows at once moves through four rows together, so each row
// prefetches its place in a later block of four (at least kIntAhead on):
// "4 KiB ahead" of each of four 2 KiB rows would mostly land inside the
// block being read.
struct IntMatrix {
  const QuantMatrix& w;
  int64_t G, row_bytes, one, several;
  bool q4;
  IntMatrix(const QuantMatrix& m, int64_t K)
      : w(m), G(quant_groups(K)), row_bytes(quant_row_elements(m.format, K)), one(kIntAhead), q4(m.format == WeightFormat::kQ4) {
    const int64_t block = 4 * row_bytes;
    several = (kIntAhead + block - 1) / block * block;
  }
  IntRow row(int64_t n) const {
    return IntRow{static_cast<const uint8_t*>(w.data) + n * row_bytes, w.scales + n * G, q4 ? w.mins + n * G : nullptr};
  }
};

// One row of x (decoding one sequence): sixteen weight rows' sums end in one
// tree16, bit for bit what each row's own reduction gives (NaN payloads
// apart: q8/q4 outputs of a NaN group are one NaN anyway; checked over
// formats, shapes 1 … 8192 × 17 … 2048 and both threads counts against the
// kernel before). Against that kernel, in one process, alternating, 2
// threads, Zen 4: from memory q8 and q4 ×1.08–1.14 at K ≤ 512, the same at
// K = 2048; from cache q8 ×1.4 (K = 512) and ×2.0 (K = 128), q4 ×1.2 and
// ×1.5. A function of its own, not inlined: inside int_kernel it changed how
// GCC compiled the passes over several rows (5 rows of x ~10% slower). It is
// several_rows_kernel's R = 1 case written out: run through that function
// (R at run time, or as a template constant) one row streamed 15–30% slower
// from cache at K ≤ 512, alternating in one process.
template <bool kVnni>
__attribute__((noinline)) void one_row_kernel(const QuantMatrix& w, float* y, const QuantX& qx, int64_t K, int64_t n0, int64_t n1) {
  const IntMatrix m(w, K);
  const int64_t G = m.G, one = m.one, several = m.several;
  const bool q4 = m.q4;
  auto row = [&](int64_t n) { return m.row(n); };
  const QuantX xr[1] = {qx.row(0)};
  int64_t n = n0;
  for (; n + 16 <= n1; n += 16) {
    __m512 v[16];
    if (G <= 4) {
      for (int i = 0; i < 16; i += 4) {
        const IntRow rows[4] = {row(n + i), row(n + i + 1), row(n + i + 2), row(n + i + 3)};
        row_sums<kVnni, 4, 1>(q4, rows, xr, G, several, [&](int k, int, __m512 s) __attribute__((always_inline)) { v[i + k] = s; });
      }
    } else {
      for (int i = 0; i < 16; ++i) {
        const IntRow one_row[1] = {row(n + i)};
        row_sums<kVnni, 1, 1>(q4, one_row, xr, G, one, [&](int, int, __m512 s) __attribute__((always_inline)) { v[i] = s; });
      }
    }
    _mm512_storeu_ps(y + n, tree16(v));
  }
  for (; n < n1; ++n) {
    const IntRow one_row[1] = {row(n)};
    row_pass<kVnni, 1, 1>(q4, one_row, xr, G, one, y + n, 1);
  }
}

// Several rows of x over whole blocks of sixteen weight rows: the passes
// of int_kernel (below) — rows of x four, two, then one at a time, the
// first pass reading the weight rows from memory one at a time, later ones
// taking them in L1 several together — with each pass's pair sums for the
// sixteen rows ending in one tree16 per row of x (the bits of each pair's
// own reduction, as one_row_kernel's). Against the passes over four rows
// reducing pair by pair, config R's decode step in one process,
// alternating (Zen 4, ninth session): 5 rows of x (a k = 4 verification)
// q8 ×1.08, q4 ×1.12, the demo model's q8 ×1.17; 8 rows q8 ×1.03.
template <bool kVnni>
__attribute__((noinline)) void several_rows_kernel(const QuantMatrix& w, float* y, int64_t ldy, const QuantX& qx, int64_t R,
                                                   int64_t K, int64_t n0, int64_t n1) {
  const IntMatrix m(w, K);
  const int64_t G = m.G, one = m.one, several = m.several;
  const bool q4 = m.q4;
  for (int64_t n = n0; n + 16 <= n1; n += 16) {
    IntRow rows[16];
    for (int i = 0; i < 16; ++i) rows[i] = m.row(n + i);
    __m512 v[4][16];
    auto store = [&](int64_t r, int rc) {
      for (int c = 0; c < rc; ++c) _mm512_storeu_ps(y + (r + c) * ldy + n, tree16(v[c]));
    };
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) {
      const QuantX xr[4] = {qx.row(r), qx.row(r + 1), qx.row(r + 2), qx.row(r + 3)};
      for (int i = 0; i < 16; ++i)
        row_sums<kVnni, 1, 4>(q4, rows + i, xr, G, r == 0 ? one : 0, [&](int, int c, __m512 t) __attribute__((always_inline)) { v[c][i] = t; });
      store(r, 4);
    }
    for (; r + 2 <= R; r += 2) {
      const QuantX xr[2] = {qx.row(r), qx.row(r + 1)};
      if (r > 0 || G <= 4) {
        for (int i = 0; i < 16; i += 2)
          row_sums<kVnni, 2, 2>(q4, rows + i, xr, G, r == 0 ? several : 0, [&](int k, int c, __m512 t) __attribute__((always_inline)) { v[c][i + k] = t; });
      } else {
        for (int i = 0; i < 16; ++i)
          row_sums<kVnni, 1, 2>(q4, rows + i, xr, G, one, [&](int, int c, __m512 t) __attribute__((always_inline)) { v[c][i] = t; });
      }
      store(r, 2);
    }
    if (r < R) {
      const QuantX xr[1] = {qx.row(r)};
      if (r > 0 || G <= 4) {
        for (int i = 0; i < 16; i += 4)
          row_sums<kVnni, 4, 1>(q4, rows + i, xr, G, r == 0 ? several : 0, [&](int k, int, __m512 t) __attribute__((always_inline)) { v[0][i + k] = t; });
      } else {
        for (int i = 0; i < 16; ++i)
          row_sums<kVnni, 1, 1>(q4, rows + i, xr, G, one, [&](int, int, __m512 t) __attribute__((always_inline)) { v[0][i] = t; });
      }
      store(r, 1);
    }
  }
}

// Weight rows are taken four at a time; each meets every row of x, four
// rows of x at a time (one weight row per pass), then two (two weight rows
// per pass), then one (four weight rows per pass), while the four sit in L1:
// the weight bytes are unpacked once per pass, so a verification step's 5
// rows take two passes, not three, and with one or two rows of x the loads
// of x are shared and several rows' chains run side by side. A (weight row,
// x row) pair gets the same operations in the same order in every kind of
// pass, so a row's outputs do not depend on R (nor on how the weight rows
// fall into fours). The `#pragma GCC unroll` on the blocks' loops of
// passes over several rows keeps acc[·][·][j & 1] in registers (rolled, GCC
// 12 left them in memory); a one-row, one-weight-row pass keeps GCC's own
// choice, which streamed faster from memory. Measured on Zen 4 in one
// process, kernels alternating, 2 threads, against the kernel before this
// session: five rows of x (a k = 4 verification) q8 1.1–1.3× and q4 1.0–1.3×
// from memory; one row at K = 128 1.2–1.3×; one row at K ≥ 512 the same.
template <bool kVnni>
void int_kernel(const QuantMatrix& w, float* y, int64_t ldy, const QuantX& qx, int64_t R, int64_t K, int64_t n0,
                int64_t n1) {
  const IntMatrix m(w, K);
  const int64_t G = m.G, one = m.one, several = m.several;
  const bool q4 = m.q4;
  auto row = [&](int64_t n) { return m.row(n); };
  // The first pass over the rows reads them from memory: one at a time (as before this session's change),
  // unless they are short (K ≤ 128: four rows are one run of at most 512 bytes, and the per-row work
  // dominates). Measured in one process, kernels alternating (2 threads, one row of x, Zen 4): four at a
  // time streamed q8 at K = 512 and 2048 at 20.6–21.2 GB/s against one at a time's 23.6–24.0, and
  // K = 128 at 18.0 against 15.6. Later passes find the rows in L1 and take them four (or two) at a time.
  if (R == 1) return one_row_kernel<kVnni>(w, y, qx, K, n0, n1);
  // Whole blocks of sixteen weight rows take several_rows_kernel's passes; the rest (the last rows of an
  // expert's part of a thread's share) these.
  const int64_t whole = n0 + (n1 - n0) / 16 * 16;
  several_rows_kernel<kVnni>(w, y, ldy, qx, R, K, n0, whole);
  for (int64_t n = whole; n < n1; n += 4) {
    const int64_t nw = std::min<int64_t>(4, n1 - n);
    auto together = [&](int64_t r) { return nw == 4 && (r > 0 || G <= 4); };
    const IntRow rows[4] = {row(n), row(std::min(n + 1, n1 - 1)), row(std::min(n + 2, n1 - 1)), row(std::min(n + 3, n1 - 1))};
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) {
      const QuantX xr[4] = {qx.row(r), qx.row(r + 1), qx.row(r + 2), qx.row(r + 3)};
      for (int64_t i = 0; i < nw; ++i) row_pass<kVnni, 1, 4>(q4, rows + i, xr, G, r == 0 ? one : 0, y + r * ldy + n + i, ldy);
    }
    for (; r + 2 <= R; r += 2) {
      const QuantX xr[2] = {qx.row(r), qx.row(r + 1)};
      if (together(r)) {
        row_pass<kVnni, 2, 2>(q4, rows, xr, G, r == 0 ? several : 0, y + r * ldy + n, ldy);
        row_pass<kVnni, 2, 2>(q4, rows + 2, xr, G, r == 0 ? several : 0, y + r * ldy + n + 2, ldy);
      } else {
        for (int64_t i = 0; i < nw; ++i) row_pass<kVnni, 1, 2>(q4, rows + i, xr, G, r == 0 ? one : 0, y + r * ldy + n + i, ldy);
      }
    }
    if (r < R) {
      const QuantX xr[1] = {qx.row(r)};
      if (together(r)) {
        row_pass<kVnni, 4, 1>(q4, rows, xr, G, r == 0 ? several : 0, y + r * ldy + n, ldy);
      } else {
        for (int64_t i = 0; i < nw; ++i) row_pass<kVnni, 1, 1>(q4, rows + i, xr, G, r == 0 ? one : 0, y + r * ldy + n + i, ldy);
      }
    }
  }
}


// ------------------------------------------------------------------ q8/q4 repacked (quant.h, "packed q8 and q4")
//
// Sixteen weight rows side by side: lane i of the 64 bytes of quad q holds
// bytes 4q … 4q + 3 of row i's group g, so one vpdpbusd with four bytes of
// x broadcast adds four products of each of the sixteen rows to its own
// lane, eight of them the group's whole dot in int32 (exact), and one
// conversion and one FMA with the sixteen rows' c = scale·d add the group
// to each row's f32 sum. Against the row layout (above), whose lanes hold
// pieces of two groups of one row and pay a conversion, a permutation of
// the factors and an FMA per 64 bytes and row of x, then a reduction: 3–6
// times fewer instructions per row of x (measured below, quant_decode.cpp).
// Every row of x takes the same operations whatever rows share the call.

// Sixteen rows' 16-lane sums of a block for RC rows of x from row r0 of qx:
// acc[c] lane i = Σ_g c_g·dot_g (+ min_g·sx_g, q4) of weight row i with x row r0 + c.
// q8: a group is 8 quads (512 bytes), its factors 16 scales; q4: 4 quads
// (256 bytes: bytes j of a row's group hold elements j and j + 16 in their
// low and high nibbles), its factors 16 scales then 16 mins.
template <bool kVnni, int RC, bool kQ4>
__attribute__((always_inline)) inline void packed_block(const uint8_t* pq, const uint16_t* ps, int64_t G, const QuantX& qx,
                                                        const int32_t* gneg, int64_t r0, bool ahead, __m512 (&acc)[RC]) {
  constexpr int kQuads = kQ4 ? 4 : 8;
  constexpr int kGroupBytes = 64 * kQuads, kFactors = kQ4 ? 32 : 16;
  for (int c = 0; c < RC; ++c) acc[c] = _mm512_setzero_ps();
  const int64_t Gx = qx.groups;
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* p = pq + g * kGroupBytes;
    if (ahead)
      for (int b = 0; b < kGroupBytes; b += 64) _mm_prefetch(reinterpret_cast<const char*>(p) + kIntAhead + b, _MM_HINT_T1);
    // q8: w[q] (+128 for VNNI, |w| and its signs otherwise); q4: w[q] the low nibbles, w[4 + q] the high ones.
    __m512i w[8];
    __mmask64 negative[8];
    for (int q = 0; q < kQuads; ++q) {
      const __m512i v = _mm512_loadu_si512(p + 64 * q);
      if constexpr (kQ4) {
        w[q] = _mm512_and_si512(v, _mm512_set1_epi8(15));
        w[4 + q] = _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(15));
      } else if constexpr (kVnni) {
        w[q] = _mm512_xor_si512(v, _mm512_set1_epi8(-128));  // w + 128: unsigned; gneg takes the 128·Σ xq back
      } else {
        w[q] = _mm512_abs_epi8(v);  // |w|, and xq takes w's sign
        negative[q] = _mm512_movepi8_mask(v);
      }
    }
    const __m512 sw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps + g * kFactors)));
    for (int c = 0; c < RC; ++c) {
      const int64_t r = r0 + c;
      const int8_t* xr = qx.q + r * Gx * 32;
      // Four bytes of x from its quantized row (q4's layout: quant_x_index) as one broadcast dword.
      auto four = [&](int64_t i) __attribute__((always_inline)) {
        int32_t v;
        std::memcpy(&v, xr + quant_x_index(kQ4 ? WeightFormat::kQ4 : WeightFormat::kQ8, g, i), 4);
        return _mm512_set1_epi32(v);
      };
      __m512i t;
      if constexpr (kQ4) {
        t = _mm512_setzero_si512();
        for (int q = 0; q < 4; ++q) {
          t = dot4<kVnni>(t, w[q], four(4 * q));
          t = dot4<kVnni>(t, w[4 + q], four(16 + 4 * q));
        }
      } else if constexpr (kVnni) {
        t = _mm512_set1_epi32(gneg[r * Gx + g]);
        for (int q = 0; q < 8; ++q) t = _mm512_dpbusd_epi32(t, w[q], four(4 * q));
      } else {
        t = _mm512_setzero_si512();
        for (int q = 0; q < 8; ++q) {
          const __m512i xb = four(4 * q);
          const __m512i xs = _mm512_mask_sub_epi8(xb, negative[q], _mm512_setzero_si512(), xb);
          t = _mm512_add_epi32(t, _mm512_madd_epi16(_mm512_maddubs_epi16(w[q], xs), _mm512_set1_epi16(1)));
        }
      }
      acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(sw, _mm512_set1_ps(qx.d[r * Gx + g])), acc[c]);
      if constexpr (kQ4) {
        const __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps + g * kFactors + 16)));
        acc[c] = _mm512_fmadd_ps(mn, _mm512_set1_ps(qx.sx[r * Gx + g]), acc[c]);
      }
    }
  }
}

// y[r·ldy + n] for r < R and n in [n0, n1) of one expert's packed q8/q4 rows
// (pq, ps: its first block); whole blocks of sixteen, the lanes of a block
// outside [n0, n1) computed but not stored. Rows of x eight at a time.
template <bool kVnni, bool kQ4>
void packed_kernel(const uint8_t* pq, const uint16_t* ps, float* y, int64_t ldy, const QuantX& qx, const int32_t* gneg,
                   int64_t R, int64_t K, int64_t n0, int64_t n1) {
  const int64_t G = quant_groups(K);
  for_each_packed_block<kQ4>(pq, ps, y, K, n0, n1, [&](const uint8_t* pb, const uint16_t* sb, float* yb, int64_t lo, int64_t hi) {
    const __mmask16 keep = static_cast<__mmask16>(full_mask16(hi) & ~full_mask16(lo));
    auto pass = [&](auto rc, int64_t r) __attribute__((always_inline)) {
      constexpr int RC = decltype(rc)::value;
      __m512 acc[RC];
      packed_block<kVnni, RC, kQ4>(pb, sb, G, qx, gneg, r, r == 0, acc);
      for (int c = 0; c < RC; ++c) _mm512_mask_storeu_ps(yb + (r + c) * ldy, keep, acc[c]);
    };
    int64_t r = 0;
    for (; r + 8 <= R; r += 8) pass(std::integral_constant<int, 8>{}, r);
    switch (R - r) {
      case 7: pass(std::integral_constant<int, 7>{}, r); break;
      case 6: pass(std::integral_constant<int, 6>{}, r); break;
      case 5: pass(std::integral_constant<int, 5>{}, r); break;
      case 4: pass(std::integral_constant<int, 4>{}, r); break;
      case 3: pass(std::integral_constant<int, 3>{}, r); break;
      case 2: pass(std::integral_constant<int, 2>{}, r); break;
      case 1: pass(std::integral_constant<int, 1>{}, r); break;
      default: break;
    }
  });
}

}  // namespace
}  // namespace sigma
