// Portable micro-kernel: the same 6×16 tile as the AVX2 one in plain C++,
// which compilers vectorise with the baseline ISA (SSE2 on x86-64, NEON on arm64).
// Operands with strides, as every tile takes them (gemm_ukernel.h).
#include <chrono>

#include "gemm_ukernel.h"

namespace sigma {

void ukernel_portable(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb, float* C,
                      int64_t ldc, int mr, int nr, bool accumulate) {
  // All kMR rows every k (a loop of constant length keeps acc in registers);
  // rows past mr re-read row 0 and are never written.
  const float* rows[kMR];
  for (int i = 0; i < kMR; ++i) rows[i] = tile_row(A, a_rs, mr, i);
  float acc[kMR][kNR] = {};
  for (int64_t k = 0; k < kc; ++k) {
    const float* b = B + k * ldb;
    for (int i = 0; i < kMR; ++i) {
      const float ai = rows[i][k * a_ks];
      for (int j = 0; j < kNR; ++j) acc[i][j] += ai * b[j];
    }
  }
  for (int i = 0; i < mr; ++i) {
    float* row = C + i * ldc;
    if (accumulate)
      for (int j = 0; j < nr; ++j) row[j] += acc[i][j];
    else
      for (int j = 0; j < nr; ++j) row[j] = acc[i][j];
  }
}

double fma_chains_portable(int64_t iters) {
  float x[12][8];
  for (int i = 0; i < 12; ++i)
    for (int j = 0; j < 8; ++j) x[i][j] = 1.0f + 1e-7f * static_cast<float>(i * 8 + j);
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i)
      for (int j = 0; j < 8; ++j) x[i][j] = x[i][j] * 0.999999f + 1e-7f;
  auto t1 = std::chrono::steady_clock::now();
  volatile float sink = x[0][0];
  (void)sink;
  return std::chrono::duration<double>(t1 - t0).count();
}

}  // namespace sigma
