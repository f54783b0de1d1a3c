// Reductions shared by the AVX2 decode kernels (quant_decode_avx2.cpp,
// quant_decode_int_avx2.cpp): included after each file's own target pragma,
// internal to each file that includes it.
#pragma once
#include <immintrin.h>

namespace sigma {
namespace {

// The sum of v's eight lanes: (v_i + v_i+4) for i < 4, then (s0 + s2) + (s1 + s3).
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight vectors' sums at once: lane i of tree8(v) is hsum(v[i]), added in
// hsum's order (s_i = v_i + v_i+4, then (s0 + s2) + (s1 + s3)), so bit for
// bit what hsum gives each vector alone (NaN payloads apart: where two NaNs
// meet, the NaN that comes out may be the other one). By transposing as it
// adds it takes 22 instructions for the eight, where the hsums take about
// six each in a chain of dependent steps.
inline __m256 tree8(const __m256 (&v)[8]) {
  __m256 t[4], u[2];
  for (int i = 0; i < 4; ++i)  // [s of v[2i] | s of v[2i + 1]]
    t[i] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x20), _mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x31));
  for (int i = 0; i < 2; ++i)  // [s0 + s2, s1 + s3 of v[4i], v[4i + 2] | of v[4i + 1], v[4i + 3]]
    u[i] = _mm256_add_ps(_mm256_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44), _mm256_shuffle_ps(t[2 * i], t[2 * i + 1], 0xee));
  // [v0, v2, v4, v6 | v1, v3, v5, v7]'s sums, then in order.
  const __m256 a = _mm256_add_ps(_mm256_shuffle_ps(u[0], u[1], 0x88), _mm256_shuffle_ps(u[0], u[1], 0xdd));
  return _mm256_permutevar8x32_ps(a, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

}  // namespace
}  // namespace sigma
