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

SIGMA_VERSIONS(vdot_v, vdot_loop)
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
