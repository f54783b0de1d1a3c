#include "vec.h"

#include "simd.h"

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

}  // namespace sigma
