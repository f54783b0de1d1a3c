// The decode row kernels' inputs past a row's last whole group of 32, shared
// by the AVX2 and AVX-512 files (quant_decode_avx2.cpp, quant_decode_avx512.cpp):
// internal to each file that includes it, so each compiles it for its own
// target and no copy built for one ISA runs on a CPU with only the other.
#pragma once
#include <cstdint>

#include "quant.h"

namespace sigma {
namespace {

// s plus the inputs past the last whole group of row n, by the scalar definition.
inline float add_tail(float s, const QuantMatrix& w, int64_t K, int64_t n, const float* x) {
  for (int64_t k = K / 32 * 32; k < K; ++k) s += quant_weight(w, K, n, k) * x[k];
  return s;
}

}  // namespace
}  // namespace sigma
