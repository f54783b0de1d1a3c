#include "vec.h"

#include "simd.h"
#include "cpu.h"
#include "ops_avx512.h"

#include <algorithm>
#include <limits>

namespace sigma {

SIGMA_SIMD float vdot(const float* a, const float* b, int64_t n) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) part[l] += a[i + l] * b[i + l];
  float s = 0;
  for (int l = 0; l < 8; ++l) s += part[l];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

SIGMA_SIMD void vaxpy(float* y, const float* x, float alpha, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

SIGMA_SIMD void vscale(float* x, float alpha, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= alpha;
}

SIGMA_SIMD float vsum(const float* x, int64_t n) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) part[l] += x[i + l];
  float s = 0;
  for (int l = 0; l < 8; ++l) s += part[l];
  for (; i < n; ++i) s += x[i];
  return s;
}

SIGMA_SIMD float vmax(const float* x, int64_t n) {
  if (use_avx512()) return avx512::vmax(x, n);
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

SIGMA_SIMD float vexp_shift(float* y, const float* x, float m, int64_t n) {
  if (use_avx512()) return avx512::vexp_shift(y, x, m, n);
  for (int64_t i = 0; i < n; ++i) y[i] = fast_expf(x[i] - m);
  return vsum(y, n);
}

}  // namespace sigma
