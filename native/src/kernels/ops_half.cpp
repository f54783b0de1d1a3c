// f16 ⇄ f32 conversion of plain arrays and of strided rows, for the f16 KV
// cache (ops.h): F16C's vcvtps2ph / vcvtph2ps, 16 at a time on the AVX-512
// path and 8 on AVX2, chosen per call by the kernel path; the scalar
// definitions (quant.h: float_to_half, half_to_float) on the portable path
// and for the tails. Every path gives the same bits: the conversion to f16
// rounds to nearest, ties to even (NaN stays NaN, quiet), and the way back is exact.
// GCC 12's conversions pass an _mm*_undefined_*() source its own flow analysis then calls uninitialised (as in ops_avx512.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "cpu.h"
#include "ops.h"
#include "quant.h"

namespace sigma {
namespace {

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx512f,f16c,avx2"))) void to_half_avx512(uint16_t* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) dst[i] = float_to_half(src[i]);
}
__attribute__((target("avx512f,f16c,avx2"))) void from_half_avx512(float* dst, const uint16_t* src, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  for (; i < n; ++i) dst[i] = half_to_float(src[i]);
}
__attribute__((target("avx2,f16c"))) void to_half_avx2(uint16_t* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) dst[i] = float_to_half(src[i]);
}
__attribute__((target("avx2,f16c"))) void from_half_avx2(float* dst, const uint16_t* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = half_to_float(src[i]);
}
#endif

void to_half_portable(uint16_t* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_half(src[i]);
}
void from_half_portable(float* dst, const uint16_t* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
}

using ToHalf = void (*)(uint16_t*, const float*, int64_t);
using FromHalf = void (*)(float*, const uint16_t*, int64_t);

// By the kernel path in force now (so the tests reach every version), F16C permitting.
ToHalf to_half_kernel() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool f16c = cpu_has_f16c();
  if (f16c && use_avx512()) return to_half_avx512;
  if (f16c && use_avx2()) return to_half_avx2;
#endif
  return to_half_portable;
}
FromHalf from_half_kernel() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool f16c = cpu_has_f16c();
  if (f16c && use_avx512()) return from_half_avx512;
  if (f16c && use_avx2()) return from_half_avx2;
#endif
  return from_half_portable;
}

}  // namespace

void floats_to_halves(uint16_t* dst, const float* src, int64_t n) { to_half_kernel()(dst, src, n); }

void halves_to_floats(float* dst, const uint16_t* src, int64_t n) { from_half_kernel()(dst, src, n); }

void half_rows_to_floats(float* dst, const uint16_t* src, int64_t stride, int64_t rows, int64_t d) {
  const FromHalf f = from_half_kernel();
  for (int64_t r = 0; r < rows; ++r) {
    // The rows come from memory, a run every `stride`: prefetched 8 rows ahead (the next call's first rows too).
    for (int64_t x = 0; x < d; x += 32) __builtin_prefetch(src + (r + 8) * stride + x);
    f(dst + r * d, src + r * stride, d);
  }
}

}  // namespace sigma
