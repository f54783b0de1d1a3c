// The walk over a packed q8/q4 matrix's blocks (quant.h, "packed q8 and q4"),
// shared by the AVX-512 and AVX2 packed kernels: included after each file's
// own target pragma, internal to each file that includes it.
#pragma once
#include <algorithm>
#include <cstdint>

#include "quant.h"

namespace sigma {
namespace {

// fn(pb, sb, yb, lo, hi) for each block of sixteen rows that outputs [n0, n1)
// of one expert (pq, ps at its first block) touch: the block's bytes and
// factors, y at its first row, and the block's lanes [lo, hi) to store.
template <bool kQ4, class Fn>
inline void for_each_packed_block(const uint8_t* pq, const uint16_t* ps, float* y, int64_t K, int64_t n0, int64_t n1, Fn&& fn) {
  const int64_t G = quant_groups(K);
  constexpr int64_t kGroupBytes = kQ4 ? 256 : 512, kFactors = kQ4 ? 32 : 16;
  for (int64_t b = n0 / 16; b * 16 < n1; ++b) {
    fn(pq + b * G * kGroupBytes, ps + b * G * kFactors, y + b * 16, std::max<int64_t>(n0 - b * 16, 0), std::min<int64_t>(n1 - b * 16, 16));
  }
}

}  // namespace
}  // namespace sigma
