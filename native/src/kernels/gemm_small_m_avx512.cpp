// AVX-512 kernel for C[M,N] (+)= op(A)·B[K,N] when op(A) has a few dozen
// rows: the same product as gemm_small_m_avx2.cpp (B read once, in place),
// with 32-column strips. Six rows of B × 32 columns sit in 12 zmm registers
// while every row of C's strip takes them: 12 FMAs of 16 lanes per row of C,
// against two loads and two stores of its partial sums, summed in a
// contiguous [M][32] scratch and written to C once.
//
// A strip is two units of 16 columns, each one 64-byte line of a row of B
// when the rows share an alignment (ldb a multiple of 16): unit 0 holds the
// columns before B's first line boundary (with N a multiple of 16, also those
// after the last one: a split unit), the others start on boundaries. Edge
// strips load and store under each unit's lane masks; full strips use plain
// loads.
//
// On this Zen 4 (512-bit FMAs issued as two 256-bit halves, so the same FMA
// peak as AVX2) it does the same FLOPs in half the instructions. Interleaved
// against the AVX2 kernel (setKernelPath per call): single products of 5–96
// rows 62–99% of its time; 8 experts × 64 rows x·W[e] went from 2–11% slower
// than one 512-row matmul (the AVX2 tiled path) to 11–16% faster. Its
// prefetch is two groups ahead, three per row (the strip's two lines, and the
// second unit's end when rows are unaligned): a first version looping over
// units with four per row cost 10–15 points, and leads of 4–24 groups were
// slower.
#pragma GCC target("avx512f,avx2,fma")
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "gemm_ukernel.h"

namespace sigma {
namespace {

constexpr int kGroup = 6;  // rows of B per register block (12 zmm)

// Lane j of a unit is column col + j where mask has bit j, else (a split
// unit) column col2 + j where mask2 has it.
struct Unit {
  int64_t col = 0, col2 = 0;
  __mmask16 mask = 0, mask2 = 0;
};

inline __m512 load_unit(const float* row, const Unit& u) {
  const __m512 v = _mm512_maskz_loadu_ps(u.mask, row + u.col);
  return u.mask2 ? _mm512_mask_loadu_ps(v, u.mask2, row + u.col2) : v;
}

struct Strip {
  Unit u[2];
};

// Lines touched by rows r .. r+5 of the strip, ahead of use.
inline void prefetch_rows(const float* b, int64_t ldb, int64_t K, int64_t r, const Strip& s) {
  for (int i = 0; i < kGroup && r + i < K; ++i) {
    const float* row = b + (r + i) * ldb;
    _mm_prefetch(reinterpret_cast<const char*>(row + s.u[0].col), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(row + s.u[1].col), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(row + s.u[1].col + 15), _MM_HINT_T0);
  }
}

template <bool Full>
void strip_product(int64_t M, int64_t K, const float* ap, const float* b, int64_t ldb, float* c, int64_t ldc,
                   const Strip& s, const Strip* next, float* t, bool accumulate) {
  const int64_t groups = (K + kGroup - 1) / kGroup;
  const Unit u0 = s.u[0], u1 = s.u[1];
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t k0 = g * kGroup;
    // Two groups ahead (as in the AVX2 kernel); near the end, the next strip's first rows.
    if (k0 + 2 * kGroup < K) prefetch_rows(b, ldb, K, k0 + 2 * kGroup, s);
    else if (next) prefetch_rows(b, ldb, K, k0 + 2 * kGroup - K, *next);
    __m512 w[kGroup][2];
    for (int i = 0; i < kGroup; ++i) {
      if (k0 + i < K) {
        const float* row = b + (k0 + i) * ldb;
        if (Full) {
          w[i][0] = _mm512_loadu_ps(row + u0.col);
          w[i][1] = _mm512_loadu_ps(row + u1.col);
        } else {
          w[i][0] = load_unit(row, u0);
          w[i][1] = load_unit(row, u1);
        }
      } else {
        w[i][0] = w[i][1] = _mm512_setzero_ps();
      }
    }
    const float* ag = ap + g * M * kGroup;
    float* tm = t;
    for (int64_t m = 0; m < M; ++m, tm += 32) {
      const float* am = ag + m * kGroup;
      __m512 c0 = g ? _mm512_load_ps(tm) : _mm512_setzero_ps();
      __m512 c1 = g ? _mm512_load_ps(tm + 16) : _mm512_setzero_ps();
      for (int i = 0; i < kGroup; ++i) {
        const __m512 x = _mm512_set1_ps(am[i]);
        c0 = _mm512_fmadd_ps(x, w[i][0], c0);
        c1 = _mm512_fmadd_ps(x, w[i][1], c1);
      }
      _mm512_store_ps(tm, c0);
      _mm512_store_ps(tm + 16, c1);
    }
  }
  for (int64_t m = 0; m < M; ++m) {
    float* row = c + m * ldc;
    for (int h = 0; h < 2; ++h) {
      const Unit& u = s.u[h];
      if (!u.mask) continue;
      __m512 v = _mm512_load_ps(t + m * 32 + 16 * h);
      if (accumulate) v = _mm512_add_ps(v, load_unit(row, u));
      _mm512_mask_storeu_ps(row + u.col, u.mask, v);
      if (u.mask2) _mm512_mask_storeu_ps(row + u.col2, u.mask2, v);
    }
  }
}

}  // namespace

void gemm_small_m_kn_avx512(int64_t M, int64_t N, int64_t K, const float* ap, const float* b, int64_t ldb, float* c,
                            int64_t ldc, bool accumulate, float* t) {
  // Columns before B's first 64-byte boundary, when every row shares it.
  const uintptr_t addr = reinterpret_cast<uintptr_t>(b);
  const int64_t head = ldb % 16 == 0 && addr % 4 == 0 ? static_cast<int64_t>((64 - addr % 64) % 64 / 4) : 0;
  // With N a multiple of 16, the columns before the first boundary and those
  // after the last make up one split unit (unit 0): lanes below head from
  // column 0, the rest from the row's last 16 columns.
  const bool split = head > 0 && N % 16 == 0 && N >= 32;
  auto unit_at = [&](int64_t j) {  // unit j: columns [lo, hi) ∩ [0, N)
    Unit u;
    if (split) {
      if (j == 0) u.col = 0, u.mask = static_cast<__mmask16>((1u << head) - 1), u.col2 = N - 16,
                  u.mask2 = static_cast<__mmask16>(~u.mask);
      else if (j < N / 16) u.col = head + 16 * (j - 1), u.mask = 0xFFFF;
      return u;
    }
    const int64_t lo = head ? (j == 0 ? 0 : head + 16 * (j - 1)) : 16 * j;
    const int64_t hi = head ? (j == 0 ? head : lo + 16) : lo + 16;
    const int64_t n = std::max<int64_t>(0, std::min(hi, N) - lo);
    u.col = n > 0 ? lo : 0;
    u.mask = static_cast<__mmask16>((1u << n) - 1);
    return u;
  };
  const int64_t units = split ? N / 16 : head ? 1 + (N - std::min(N, head) + 15) / 16 : (N + 15) / 16;
  const int64_t strips = (units + 1) / 2;
  auto strip_at = [&](int64_t i) { return Strip{{unit_at(2 * i), unit_at(2 * i + 1)}}; };
  for (int64_t i = 0; i < strips; ++i) {
    const Strip s = strip_at(i);
    const Strip nx = i + 1 < strips ? strip_at(i + 1) : s;
    const Strip* next = i + 1 < strips ? &nx : nullptr;
    if (s.u[0].mask == 0xFFFF && s.u[1].mask == 0xFFFF)
      strip_product<true>(M, K, ap, b, ldb, c, ldc, s, next, t, accumulate);
    else
      strip_product<false>(M, K, ap, b, ldb, c, ldc, s, next, t, accumulate);
  }
}

}  // namespace sigma
