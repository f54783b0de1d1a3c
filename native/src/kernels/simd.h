// Run-time ISA choice for the loop kernels. Each loop is written once, as an
// always-inlined body (SIGMA_LOOP) whose loops the compiler vectorises
// (independent lanes, 8-wide partial sums); SIGMA_VERSIONS compiles that
// body twice — for AVX2 + FMA and for the baseline x86-64 (SSE2) — and gives
// a dispatcher that picks one on every call by use_avx2(), i.e. by the kernel
// path in force at that moment (set_kernel_path / SIGMA_KERNEL_PATH), the way
// the GEMM picks its tiles. So `setKernelPath("portable")` reaches these
// loops too and the conformance suite runs both versions on an AVX2 machine.
// (Function multiversioning, GCC's target_clones, chose once when the addon
// loaded and could not be held lower.)
#pragma once
#include <cstdint>
#include <cstring>
#include <cmath>

#include "cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(SIGMA_NO_CLONES)
// Code generation for AVX2 + FMA in one function of an otherwise baseline file.
#define SIGMA_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define SIGMA_TARGET_AVX2
#endif
#if defined(__GNUC__) || defined(__clang__)
// A loop body: always inlined, so that it is compiled (and vectorised) for the
// instruction set of the function it lands in.
#define SIGMA_LOOP inline __attribute__((always_inline))
#else
#define SIGMA_LOOP inline
#endif

// From a SIGMA_LOOP body `body`, three function templates taking the body's
// arguments: name_avx2 (compiled for AVX2 + FMA), name_portable (baseline),
// and name, which calls name_avx2 when use_avx2() holds and name_portable
// otherwise. The avx2 version is never inlined into the dispatcher (their
// targets differ), so no AVX2 instruction runs unless the check passed.
#define SIGMA_VERSIONS(name, body)                                                         \
  template <class... A>                                                                    \
  SIGMA_TARGET_AVX2 auto name##_avx2(A... a) { return body(a...); }                       \
  template <class... A>                                                                    \
  auto name##_portable(A... a) { return body(a...); }                                      \
  template <class... A>                                                                    \
  inline auto name(A... a) { return ::sigma::use_avx2() ? name##_avx2(a...) : name##_portable(a...); }

namespace sigma {

// exp(x) for float, within 2 ulp over the whole range, written with plain
// arithmetic so that loops calling it vectorise (libm's expf does not without
// -ffast-math), on the baseline ISA too. Range reduction x = n·ln2 + r,
// |r| ≤ ln2/2, then a degree-6 polynomial for e^r (Cephes coefficients) and
// 2^n built in the exponent bits. n is rounded without floor() (SSE2 has no
// vector rounding, so a floor() kept the baseline loops scalar): adding
// 1.5·2²³ + 127 rounds x·log2(e) to an integer, because floats that large
// are spaced 1 apart; subtracting it back gives n, and the low bits of the
// sum hold n + 127, which shifted into the exponent field are 2^n (the same
// steps as exp8 in ops_avx2.cpp). Inputs are clamped to [-87.3, 88.7]: below
// that exp underflows (returns ~1e-38), above it would overflow; NaN stays NaN.
SIGMA_LOOP float fast_expf(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  constexpr float kMagic = 12582912.f + 127.f;  // 1.5·2²³ + 127
  const float t = x * 1.44269504088896341f + kMagic;
  const float n = t - kMagic;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  uint32_t bits;
  std::memcpy(&bits, &t, sizeof bits);
  bits <<= 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

}  // namespace sigma
