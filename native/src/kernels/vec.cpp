#include "vec.h"

#include "simd.h"
#include "cpu.h"
#include "ops_avx2.h"
#include "ops_avx512.h"

#include <algorithm>
#include <limits>

namespace sigma {
namespace {

SIGMA_LOOP float vdot_loop(const float* a, const float* b, int64_t n) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) part[l] += a[i + l] * b[i + l];
  float s = 0;
  for (int l = 0; l < 8; ++l) s += part[l];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

SIGMA_LOOP void vaxpy_loop(float* y, const float* x, float alpha, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

SIGMA_LOOP void vscale_loop(float* x, float alpha, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= alpha;
}

SIGMA_LOOP float vsum_loop(const float* x, int64_t n) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) part[l] += x[i + l];
  float s = 0;
  for (int l = 0; l < 8; ++l) s += part[l];
  for (; i < n; ++i) s += x[i];
  return s;
}

// vmax and vexp_shift: written out for AVX2 and AVX-512; the loops are the portable versions.
float vmax_portable(const float* x, int64_t n) {
  float part[8];
  for (int l = 0; l < 8; ++l) part[l] = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) part[l] = part[l] > x[i + l] ? part[l] : x[i + l];
  float m = part[0];
  for (int l = 1; l < 8; ++l) m = std::max(m, part[l]);
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

float vexp_shift_portable(float* y, const float* x, float m, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fast_expf(x[i] - m);
  return vsum_loop(y, n);
}

// Attention's decode rows walk n cached rows (ld apart) and, in each, the
// runs of nh query heads: query head h is the e-th of key/value head g's rep
// query heads (the walk starts at the e0-th of the first), so body(j, h, run)
// gets row j's run for head h at g·d. With `ahead` > 0 (rows read from
// memory: the weights streamed since evicted them) it prefetches the rows'
// runs `ahead` rows on; rows already in L1 (an f16 cache's converted
// buffer) pass 0.
template <class Body>
SIGMA_LOOP void each_row_head(const float* rows, int64_t ld, int64_t n, int64_t nh, int64_t rep, int64_t e0, int64_t d,
                              int64_t ahead, Body&& body) {
  const int64_t run = ((e0 + nh - 1) / rep + 1) * d;
  for (int64_t j = 0; j < n; ++j) {
    const float* row = rows + j * ld;
    if (ahead > 0 && j + ahead < n)
      for (int64_t x = 0; x < run; x += 16) __builtin_prefetch(row + ahead * ld + x);
    for (int64_t h = 0, g = 0, e = e0; h < nh; ++h) {
      body(j, h, row + g * d);
      if (++e == rep) e = 0, ++g;
    }
  }
}

// s[h·lds + j] = scale·vdot_loop(q_h, k_j,h) and m[h] = max(m[h], …) in order of j.
SIGMA_LOOP void vdot_heads_loop(float* s, int64_t lds, float* m, const float* q, const float* k, int64_t ldk, int64_t n,
                                int64_t nh, int64_t rep, int64_t e0, int64_t d, float scale, int64_t ahead) {
  each_row_head(k, ldk, n, nh, rep, e0, d, ahead, [&](int64_t j, int64_t h, const float* kh) __attribute__((always_inline)) {
    const float x = scale * vdot_loop(q + h * d, kh, d);
    s[h * lds + j] = x;
    m[h] = std::max(m[h], x);
  });
}

// o_h += (p[h·ldp + j]·w[h])·v_j,h for j = 0 … n−1 in order.
SIGMA_LOOP void vaxpy_heads_loop(float* o, const float* v, int64_t ldv, const float* p, int64_t ldp, const float* w,
                                 int64_t n, int64_t nh, int64_t rep, int64_t e0, int64_t d, int64_t ahead) {
  each_row_head(v, ldv, n, nh, rep, e0, d, ahead, [&](int64_t j, int64_t h, const float* vh) __attribute__((always_inline)) {
    vaxpy_loop(o + h * d, vh, p[h * ldp + j] * w[h], d);
  });
}

SIGMA_VERSIONS(vdot_v, vdot_loop)
SIGMA_VERSIONS(vdot_heads_v, vdot_heads_loop)
SIGMA_VERSIONS(vaxpy_heads_v, vaxpy_heads_loop)
SIGMA_VERSIONS(vaxpy_v, vaxpy_loop)
SIGMA_VERSIONS(vscale_v, vscale_loop)
SIGMA_VERSIONS(vsum_v, vsum_loop)

}  // namespace

float vdot(const float* a, const float* b, int64_t n) { return vdot_v(a, b, n); }
void vaxpy(float* y, const float* x, float alpha, int64_t n) { vaxpy_v(y, x, alpha, n); }
void vdot_heads(float* s, int64_t lds, float* m, const float* q, const float* k, int64_t ldk, int64_t n, int64_t nh,
                int64_t rep, int64_t e0, int64_t d, float scale, int64_t ahead) {
  if (use_avx512()) return avx512::vdot_heads(s, lds, m, q, k, ldk, n, nh, rep, e0, d, scale, ahead);
  vdot_heads_v(s, lds, m, q, k, ldk, n, nh, rep, e0, d, scale, ahead);
}
void vaxpy_heads(float* o, const float* v, int64_t ldv, const float* p, int64_t ldp, const float* w, int64_t n,
                 int64_t nh, int64_t rep, int64_t e0, int64_t d, int64_t ahead) {
  if (use_avx512()) return avx512::vaxpy_heads(o, v, ldv, p, ldp, w, n, nh, rep, e0, d, ahead);
  vaxpy_heads_v(o, v, ldv, p, ldp, w, n, nh, rep, e0, d, ahead);
}
void vscale(float* x, float alpha, int64_t n) { vscale_v(x, alpha, n); }
float vsum(const float* x, int64_t n) { return vsum_v(x, n); }

float vmax(const float* x, int64_t n) {
  if (use_avx512()) return avx512::vmax(x, n);
  if (use_avx2()) return avx2::vmax(x, n);
  return vmax_portable(x, n);
}

float vexp_shift(float* y, const float* x, float m, int64_t n) {
  if (use_avx512()) return avx512::vexp_shift(y, x, m, n);
  if (use_avx2()) return avx2::vexp_shift(y, x, m, n);
  return vexp_shift_portable(y, x, m, n);
}

}  // namespace sigma
