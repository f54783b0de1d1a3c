// Small vector primitives shared by the loop kernels (each compiled for AVX2+FMA and the baseline).
#pragma once
#include <cstdint>

namespace sigma {
// Σ a[i]·b[i] with eight float partial sums.
float vdot(const float* a, const float* b, int64_t n);
// y[i] += alpha·x[i].
void vaxpy(float* y, const float* x, float alpha, int64_t n);
}  // namespace sigma
