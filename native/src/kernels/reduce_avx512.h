// Reductions shared by the AVX-512 kernels (quant_decode_avx512.cpp,
// quant_decode_bf16.cpp, quant_decode_int_avx512.h, ops_avx512.cpp's
// attention rows): included after each file's own target pragma,
// internal to each file that includes it.
#pragma once
#include <immintrin.h>

namespace sigma {
namespace {

// Sixteen vectors' sums at once: lane i of tree16(v) is v[i]'s sum, added
// in _mm512_reduce_add_ps's order (GCC's: s_i = v_i + v_i+8, u_i = s_i +
// s_i+4, then (u0 + u2) + (u1 + u3)), so it is bit for bit the sum that
// reduction gives each vector alone (where two NaNs meet, the NaN that comes
// out may be the other one: addition commutes but for NaN payloads) — a
// kernel may reduce some rows one by one and others sixteen at a time, and
// a row's outputs do not depend on which. By transposing as it adds it
// takes 46 instructions for the sixteen, where the reductions take about
// eight each in a chain of dependent adds.
inline __m512 tree16(const __m512 (&v)[16]) {
  __m512 s[8], u[4], w[2];
  for (int i = 0; i < 8; ++i)  // [v s0…s7 | v' s0…s7] for v = v[2i], v' = v[2i + 1]
    s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
  for (int i = 0; i < 4; ++i)  // [u0…u3] of v[4i], v[4i + 1], v[4i + 2], v[4i + 3], one per 128-bit block
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0x88), _mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0xdd));
  for (int i = 0; i < 2; ++i) {  // block k: [x u0+u2, x u1+u3, y u0+u2, y u1+u3], x = v[8i + k], y = v[8i + 4 + k]
    const __m512d a = _mm512_castps_pd(u[2 * i]), b = _mm512_castps_pd(u[2 * i + 1]);
    w[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  // Block k: the sums of v[k], v[4 + k], v[8 + k], v[12 + k]; lane i takes v[i]'s from lane 4·(i mod 4) + i / 4.
  const __m512 t = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xdd));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), t);
}

}  // namespace
}  // namespace sigma
