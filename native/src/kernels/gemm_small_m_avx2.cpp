// AVX2 + FMA kernel for C[M,N] (+)= op(A)·B[K,N] when op(A) has a few dozen
// rows (one expert's tokens, x·W[e] in the backward pass): B is read once, in
// place, never packed — packing it would cost as much as the FMAs that reuse
// it when only M rows do.
//
// Six rows of B × 16 columns sit in 12 registers while every row of C's
// 16-column strip takes them (12 FMAs per row of C, two loads and two stores
// of its partial sums). The strip is summed in a contiguous [M][16] scratch —
// C's rows, ldc apart, would share a few L1 sets — and written to C once.
//
// Strips start on B's 64-byte boundaries when every row of B shares one
// alignment (ldb a multiple of 16): a 16-float load then touches one cache
// line, not two. The columns before the first boundary and after the last one
// make up one more strip, split in two.
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "gemm_ukernel.h"
#include "lanes_avx2.h"

namespace sigma {
namespace {

constexpr int kGroup = 6;  // rows of B per register block (12 ymm)

// A strip of up to 16 columns of C (and B): lane j is column lo + j for
// j < split and column hi + j for split <= j < 16. Three kinds:
//  - plain: 16 columns from lo (split = 16, width = 16);
//  - split: lanes below split from lo = 0, the rest from hi = N − 16 (both
//    ranges inside the row, so both halves load unmasked and are blended);
//  - narrow: the last width < 16 columns of a row (masked loads and stores).
enum StripKind { kPlain, kSplit, kNarrow };

struct Strip {
  int64_t lo, hi;
  int split, width;
  StripKind kind() const { return width < 16 ? kNarrow : split < 16 ? kSplit : kPlain; }
};

// Per 8-lane half: lanes taken from hi (split strips), lanes that exist (narrow strips).
struct StripMasks {
  __m256 from_hi[2];
  __m256i valid[2];
  explicit StripMasks(const Strip& s) {
    for (int h = 0; h < 2; ++h) {
      from_hi[h] = _mm256_castsi256_ps(lanes(s.split - 8 * h, 8));
      valid[h] = lanes(0, s.width - 8 * h);
    }
  }
};

template <StripKind Kind>
inline __m256 load_half(const float* row, const Strip& s, const StripMasks& mk, int h) {
  if (Kind == kPlain) return _mm256_loadu_ps(row + s.lo + 8 * h);
  if (Kind == kNarrow) return _mm256_maskload_ps(row + s.lo + 8 * h, mk.valid[h]);
  return _mm256_blendv_ps(_mm256_loadu_ps(row + s.lo + 8 * h), _mm256_loadu_ps(row + s.hi + 8 * h), mk.from_hi[h]);
}

template <StripKind Kind>
inline void store_half(float* row, const Strip& s, const StripMasks& mk, int h, __m256 v, bool accumulate) {
  float* p = row + s.lo + 8 * h;
  if (Kind == kPlain) {
    if (accumulate) v = _mm256_add_ps(v, _mm256_loadu_ps(p));
    _mm256_storeu_ps(p, v);
  } else if (Kind == kNarrow) {
    if (accumulate) v = _mm256_add_ps(v, _mm256_maskload_ps(p, mk.valid[h]));
    _mm256_maskstore_ps(p, mk.valid[h], v);
  } else {
    // Both 8-column spans lie inside this call's columns: each is read, its
    // own lanes replaced, and written back whole (no masked store).
    float* q = row + s.hi + 8 * h;
    const __m256 lo = _mm256_loadu_ps(p), hi = _mm256_loadu_ps(q);
    const __m256 add_lo = accumulate ? _mm256_add_ps(v, lo) : v, add_hi = accumulate ? _mm256_add_ps(v, hi) : v;
    _mm256_storeu_ps(p, _mm256_blendv_ps(add_lo, lo, mk.from_hi[h]));
    _mm256_storeu_ps(q, _mm256_blendv_ps(hi, add_hi, mk.from_hi[h]));
  }
}

// Rows r .. r+5 of B ahead of use; past K, the next strip's first rows.
inline void prefetch_rows(const float* b, int64_t ldb, int64_t K, int64_t r, const Strip& s, const Strip* next) {
  for (int i = 0; i < kGroup; ++i, ++r) {
    const Strip* st = &s;
    int64_t row = r;
    if (row >= K) {
      if (!next || row - K >= K) continue;
      st = next, row -= K;
    }
    // The lines its loads touch: columns lo .. lo + 15 (or the narrow strip's
    // last column), and hi .. hi + 15 for a split strip.
    const float* r0 = b + row * ldb;
    _mm_prefetch(reinterpret_cast<const char*>(r0 + st->lo), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(r0 + st->lo + st->width - 1), _MM_HINT_T0);
    if (st->kind() == kSplit) {
      _mm_prefetch(reinterpret_cast<const char*>(r0 + st->hi), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(r0 + st->hi + 15), _MM_HINT_T0);
    }
  }
}

template <StripKind Kind>
void strip_product(int64_t M, int64_t K, const float* ap, const float* b, int64_t ldb, float* c, int64_t ldc,
                   const Strip& s, const Strip* next, float* t, bool accumulate) {
  const StripMasks mk(s);
  const int64_t groups = (K + kGroup - 1) / kGroup;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t k0 = g * kGroup;
    // Two groups ahead: one group (~6·M cycles of FMAs) is too short a lead from memory here.
    prefetch_rows(b, ldb, K, k0 + 2 * kGroup, s, next);
    __m256 w[kGroup][2];
    for (int i = 0; i < kGroup; ++i) {
      if (k0 + i < K) {
        w[i][0] = load_half<Kind>(b + (k0 + i) * ldb, s, mk, 0);
        w[i][1] = load_half<Kind>(b + (k0 + i) * ldb, s, mk, 1);
      } else {
        w[i][0] = w[i][1] = _mm256_setzero_ps();
      }
    }
    const float* ag = ap + g * M * kGroup;
    float* tm = t;
    for (int64_t m = 0; m < M; ++m, tm += 16) {
      const float* am = ag + m * kGroup;
      __m256 c0 = g ? _mm256_load_ps(tm) : _mm256_setzero_ps();
      __m256 c1 = g ? _mm256_load_ps(tm + 8) : _mm256_setzero_ps();
      for (int i = 0; i < kGroup; ++i) {
        const __m256 x = _mm256_broadcast_ss(am + i);
        c0 = _mm256_fmadd_ps(x, w[i][0], c0);
        c1 = _mm256_fmadd_ps(x, w[i][1], c1);
      }
      _mm256_store_ps(tm, c0);
      _mm256_store_ps(tm + 8, c1);
    }
  }
  for (int64_t m = 0; m < M; ++m) {
    store_half<Kind>(c + m * ldc, s, mk, 0, _mm256_load_ps(t + m * 16), accumulate);
    store_half<Kind>(c + m * ldc, s, mk, 1, _mm256_load_ps(t + m * 16 + 8), accumulate);
  }
}

}  // namespace

void gemm_small_m_kn_avx2(int64_t M, int64_t N, int64_t K, const float* ap, const float* b, int64_t ldb, float* c,
                          int64_t ldc, bool accumulate, float* t) {
  // Floats before B's first 64-byte boundary (rows share it when ldb is a multiple of 16).
  const int64_t head = ((64 - static_cast<int64_t>(reinterpret_cast<uintptr_t>(b) & 63)) & 63) / 4;
  const bool split = head > 0 && N % 16 == 0 && ldb % 16 == 0 && N >= 32 && (reinterpret_cast<uintptr_t>(b) & 3) == 0;
  auto strip_at = [&](int64_t i) -> Strip {  // strip i of the walk
    if (split) {
      if (i == 0) return {0, N - 16, static_cast<int>(head), 16};
      const int64_t n0 = head + (i - 1) * 16;
      return {n0, n0, 16, 16};
    }
    const int64_t n0 = i * 16;
    const int w = static_cast<int>(std::min<int64_t>(16, N - n0));
    return {n0, n0, 16, w};
  };
  const int64_t strips = (N + 15) / 16;  // the same count either way
  for (int64_t i = 0; i < strips; ++i) {
    const Strip s = strip_at(i);
    const Strip nx = i + 1 < strips ? strip_at(i + 1) : s;
    const Strip* next = i + 1 < strips ? &nx : nullptr;
    switch (s.kind()) {
      case kPlain: strip_product<kPlain>(M, K, ap, b, ldb, c, ldc, s, next, t, accumulate); break;
      case kSplit: strip_product<kSplit>(M, K, ap, b, ldb, c, ldc, s, next, t, accumulate); break;
      case kNarrow: strip_product<kNarrow>(M, K, ap, b, ldb, c, ldc, s, next, t, accumulate); break;
    }
  }
}

}  // namespace sigma
