// Run-time ISA choice for the loop kernels: GCC/Clang function multiversioning
// compiles each marked function twice (x86-64-v3 = AVX2 + FMA, and the
// baseline) and picks one when the addon loads. The loops are written so the
// compiler vectorises them (independent lanes, 8-wide partial sums).
#pragma once
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(SIGMA_NO_CLONES)
#define SIGMA_SIMD __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SIGMA_SIMD
#endif

#include <cstdint>
#include <cstring>
#include <cmath>

namespace sigma {

// exp(x) for float, within 2 ulp over the whole range, written with plain
// arithmetic so that loops calling it vectorise (libm's expf does not without
// -ffast-math). Range reduction x = n·ln2 + r, |r| ≤ ln2/2, then a degree-6
// polynomial for e^r (Cephes coefficients) and 2^n built in the exponent bits.
// Inputs are clamped to [-87.3, 88.7]: below that exp underflows (returns
// ~1e-38), above it would overflow.
inline float fast_expf(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

}  // namespace sigma
