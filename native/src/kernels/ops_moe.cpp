// Data movement for embeddings and MoE dispatch. Gathers split rows over
// threads; scatters split COLUMNS, so that repeated indices never race and
// every element is summed in row order whatever the thread count.
#include <algorithm>
#include <cstring>
#include <vector>

#include "ops.h"
#include "simd.h"
#include "threadpool.h"
#include "vec.h"

namespace sigma {
namespace {
int64_t col_grain(int64_t n) { return grain_for(n, 65536, 16); }

}  // namespace

void gather_rows(float* out, const float* x, const int32_t* idx, int64_t n, int64_t C) {
  parallel_for(n, grain_for(C, 16384), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memcpy(out + i * C, x + static_cast<int64_t>(idx[i]) * C, sizeof(float) * C);
  });
}

void scatter_add_rows(float* out, const float* x, const int32_t* idx, int64_t n, int64_t C) {
  parallel_for(C, col_grain(n), [&](int64_t c0, int64_t c1) {
    for (int64_t i = 0; i < n; ++i) vaxpy(out + static_cast<int64_t>(idx[i]) * C + c0, x + i * C + c0, 1.f, c1 - c0);
  });
}

void combine(float* y, const float* x, const int32_t* idx, const float* w, int64_t n, int64_t C) {
  parallel_for(C, col_grain(n), [&](int64_t c0, int64_t c1) {
    for (int64_t i = 0; i < n; ++i) vaxpy(y + static_cast<int64_t>(idx[i]) * C + c0, x + i * C + c0, w[i], c1 - c0);
  });
}

void combine_backward(float* dx, float* dw, const float* dy, const float* x, const int32_t* idx, const float* w,
                      int64_t n, int64_t C) {
  // Each row i owns dx[i] and dw[i]: rows split over threads without races.
  parallel_for(n, grain_for(C, 8192), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float* g = dy + static_cast<int64_t>(idx[i]) * C;
      vaxpy(dx + i * C, g, w[i], C);
      dw[i] += vdot(g, x + i * C, C);
    }
  });
}

void permute_by_expert(int32_t* order, int32_t* offsets, const int32_t* expert_ids, int64_t n, int64_t E) {
  // Histogram, exclusive prefix sum, stable placement: O(n + E), one thread
  // (it is memory-bound and n is the number of token-expert assignments).
  std::fill(offsets, offsets + E + 1, 0);
  for (int64_t i = 0; i < n; ++i) offsets[expert_ids[i] + 1]++;
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] += offsets[e];
  thread_local std::vector<int32_t> next;
  next.assign(offsets, offsets + E);
  for (int64_t i = 0; i < n; ++i) order[next[expert_ids[i]]++] = static_cast<int32_t>(i);
}

}  // namespace sigma
