// Lane masks for the AVX2 kernel files (include after their
// `#pragma GCC target("avx2,fma")`).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace sigma {

// Lanes [from, to) of an 8-lane vector set, the bounds clamped to 0..8: the
// mask of a vector tail (lanes(0, n)) or of one part of a vector.
inline __m256i lanes(int64_t from, int64_t to) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i f = _mm256_set1_epi32(static_cast<int>(std::clamp<int64_t>(from, 0, 8)));
  const __m256i t = _mm256_set1_epi32(static_cast<int>(std::clamp<int64_t>(to, 0, 8)));
  return _mm256_andnot_si256(_mm256_cmpgt_epi32(f, idx), _mm256_cmpgt_epi32(t, idx));  // from <= idx < to
}

}  // namespace sigma
