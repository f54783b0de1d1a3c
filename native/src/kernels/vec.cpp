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

// n dot products of a with rows b, b + stride, …, each times scale, into s;
// returns their max (std::max from −∞, in order). Each is vdot_loop's sum,
// bit for bit: one call per run of keys instead of one per key.
SIGMA_LOOP float vdot_rows_loop(float* s, const float* a, const float* b, int64_t stride, int64_t n, int64_t d, float scale) {
  float m = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    s[j] = scale * vdot_loop(a, b + j * stride, d);
    m = std::max(m, s[j]);
  }
  return m;
}

// y += (w[j]·scale)·x_j for the rows x_j = x + j·stride, j = 0 … n−1 in order (vaxpy_loop each).
SIGMA_LOOP void vaxpy_rows_loop(float* y, const float* x, int64_t stride, const float* w, float scale, int64_t n, int64_t d) {
  for (int64_t j = 0; j < n; ++j) vaxpy_loop(y, x + j * stride, w[j] * scale, d);
}

// Scores of nh query heads (q, D apart) against n cached positions (k, rows ldk
// apart; query head h reads the run at (h / rep)·d of each row):
// s[h·lds + j] = scale·vdot_loop(q_h, k_j,h), and m[h] = max(m[h], …) in order
// of j — per head, vdot_rows_loop's numbers, with each row's heads read side by side.
// Cached rows come from memory (the weights streamed since evicted them), a
// run of a few hundred bytes every row: the loops prefetch kRowsAhead rows ahead.
constexpr int64_t kRowsAhead = 8;
SIGMA_LOOP void prefetch_run(const float* row, int64_t floats) {
  for (int64_t x = 0; x < floats; x += 16) __builtin_prefetch(row + x);
}

SIGMA_LOOP void vdot_heads_loop(float* s, int64_t lds, float* m, const float* q, const float* k, int64_t ldk, int64_t n,
                                int64_t nh, int64_t rep, int64_t e0, int64_t d, float scale) {
  const int64_t run = ((e0 + nh - 1) / rep + 1) * d;
  for (int64_t j = 0; j < n; ++j) {
    const float* kj = k + j * ldk;
    if (j + kRowsAhead < n) prefetch_run(kj + kRowsAhead * ldk, run);
    // Query head h is the e-th of key head g's rep (the run starts at the e0-th of the first one).
    for (int64_t h = 0, g = 0, e = e0; h < nh; ++h) {
      const float x = scale * vdot_loop(q + h * d, kj + g * d, d);
      s[h * lds + j] = x;
      m[h] = std::max(m[h], x);
      if (++e == rep) e = 0, ++g;
    }
  }
}

// o_h += (p[h·ldp + j]·w[h])·v_j,h for j = 0 … n−1 in order, heads h < nh (o_h = o + h·d;
// v rows ldv apart, head h at (h / rep)·d): per head, vaxpy_rows_loop's numbers.
SIGMA_LOOP void vaxpy_heads_loop(float* o, const float* v, int64_t ldv, const float* p, int64_t ldp, const float* w,
                                 int64_t n, int64_t nh, int64_t rep, int64_t e0, int64_t d) {
  const int64_t run = ((e0 + nh - 1) / rep + 1) * d;
  for (int64_t j = 0; j < n; ++j) {
    const float* vj = v + j * ldv;
    if (j + kRowsAhead < n) prefetch_run(vj + kRowsAhead * ldv, run);
    for (int64_t h = 0, g = 0, e = e0; h < nh; ++h) {
      vaxpy_loop(o + h * d, vj + g * d, p[h * ldp + j] * w[h], d);
      if (++e == rep) e = 0, ++g;
    }
  }
}

SIGMA_VERSIONS(vdot_v, vdot_loop)
SIGMA_VERSIONS(vdot_heads_v, vdot_heads_loop)
SIGMA_VERSIONS(vaxpy_heads_v, vaxpy_heads_loop)
SIGMA_VERSIONS(vaxpy_v, vaxpy_loop)
SIGMA_VERSIONS(vdot_rows_v, vdot_rows_loop)
SIGMA_VERSIONS(vaxpy_rows_v, vaxpy_rows_loop)
SIGMA_VERSIONS(vscale_v, vscale_loop)
SIGMA_VERSIONS(vsum_v, vsum_loop)

}  // namespace

float vdot(const float* a, const float* b, int64_t n) { return vdot_v(a, b, n); }
void vaxpy(float* y, const float* x, float alpha, int64_t n) { vaxpy_v(y, x, alpha, n); }
float vdot_rows(float* s, const float* a, const float* b, int64_t stride, int64_t n, int64_t d, float scale) {
  return vdot_rows_v(s, a, b, stride, n, d, scale);
}
void vaxpy_rows(float* y, const float* x, int64_t stride, const float* w, float scale, int64_t n, int64_t d) {
  vaxpy_rows_v(y, x, stride, w, scale, n, d);
}
void vdot_heads(float* s, int64_t lds, float* m, const float* q, const float* k, int64_t ldk, int64_t n, int64_t nh,
                int64_t rep, int64_t e0, int64_t d, float scale) {
  vdot_heads_v(s, lds, m, q, k, ldk, n, nh, rep, e0, d, scale);
}
void vaxpy_heads(float* o, const float* v, int64_t ldv, const float* p, int64_t ldp, const float* w, int64_t n,
                 int64_t nh, int64_t rep, int64_t e0, int64_t d) {
  vaxpy_heads_v(o, v, ldv, p, ldp, w, n, nh, rep, e0, d);
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
