// Row kernels: LayerNorm, softmax, fused softmax cross-entropy. Rows are
// independent, so threads take contiguous row ranges; column reductions
// (dgamma, dbeta) run column-parallel so their summation order is fixed.
#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu.h"
#include "ops.h"
#include "ops_avx2.h"
#include "ops_avx512.h"
#include "simd.h"
#include "threadpool.h"
#include "vec.h"

namespace sigma {
namespace {

// Sums in eight float lanes (so that the loops vectorise), the lanes added
// in double; the variance is the two-pass Σ(x − mean)².
SIGMA_LOOP void ln_row_loop(float* y, const float* x, const float* gamma, const float* beta, int64_t C, float eps,
                            float* mean_out, float* rstd_out) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 8 <= C; c += 8)
    for (int l = 0; l < 8; ++l) part[l] += x[c + l];
  double s = 0;
  for (int l = 0; l < 8; ++l) s += part[l];
  for (; c < C; ++c) s += x[c];
  const float m = static_cast<float>(s / C);
  float vpart[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (c = 0; c + 8 <= C; c += 8)
    for (int l = 0; l < 8; ++l) vpart[l] += (x[c + l] - m) * (x[c + l] - m);
  double v = 0;
  for (int l = 0; l < 8; ++l) v += vpart[l];
  for (; c < C; ++c) v += static_cast<double>(x[c] - m) * (x[c] - m);
  const float r = static_cast<float>(1.0 / std::sqrt(v / C + eps));
  for (c = 0; c < C; ++c) y[c] = (x[c] - m) * r * gamma[c] + beta[c];
  *mean_out = m;
  *rstd_out = r;
}
SIGMA_VERSIONS(ln_row, ln_row_loop)

SIGMA_LOOP void ln_row_backward_loop(float* dx, const float* dy, const float* x, float m, float r, const float* gamma,
                                     int64_t C) {
  // dx = r·(g − mean(g) − x̂·mean(g·x̂)), g = dy·γ, x̂ = (x − m)·r.
  float gsum = 0, gxsum = 0;
  for (int64_t c = 0; c < C; ++c) {
    const float g = dy[c] * gamma[c];
    gsum += g;
    gxsum += g * (x[c] - m) * r;
  }
  const float gm = gsum / C, gxm = gxsum / C;
  for (int64_t c = 0; c < C; ++c) dx[c] += r * (dy[c] * gamma[c] - gm - (x[c] - m) * r * gxm);
}
SIGMA_VERSIONS(ln_row_backward, ln_row_backward_loop)

// dgamma[c0..c1) += Σ_r dy·x̂, dbeta[c0..c1) += Σ_r dy: each column's sum over the rows in order.
SIGMA_LOOP void ln_columns_backward_loop(float* dgamma, float* dbeta, const float* dy, const float* x, const float* mean,
                                         const float* rstd, int64_t rows, int64_t C, int64_t c0, int64_t c1) {
  for (int64_t r = 0; r < rows; ++r) {
    const float m = mean[r], s = rstd[r];
    const float* xr = x + r * C;
    const float* dr = dy + r * C;
    for (int64_t c = c0; c < c1; ++c) {
      dgamma[c] += dr[c] * (xr[c] - m) * s;
      dbeta[c] += dr[c];
    }
  }
}
SIGMA_VERSIONS(ln_columns_backward, ln_columns_backward_loop)

SIGMA_LOOP void scale_row_loop(float* y, float s, int64_t n) {
  for (int64_t c = 0; c < n; ++c) y[c] *= s;
}
SIGMA_VERSIONS(scale_row, scale_row_loop)

SIGMA_LOOP void softmax_row_backward_loop(float* dx, const float* y, const float* dy, int64_t n) {
  float dot = 0;
  for (int64_t c = 0; c < n; ++c) dot += y[c] * dy[c];
  for (int64_t c = 0; c < n; ++c) dx[c] += y[c] * (dy[c] - dot);
}
SIGMA_VERSIONS(softmax_row_backward, softmax_row_backward_loop)

// RMSNorm: Σx² in eight float lanes folded into double (as ln_row's sums), no mean.
SIGMA_LOOP void rms_row_loop(float* y, const float* x, const float* gamma, int64_t C, float eps, float* rstd_out) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 8 <= C; c += 8)
    for (int l = 0; l < 8; ++l) part[l] += x[c + l] * x[c + l];
  double s = 0;
  for (int l = 0; l < 8; ++l) s += part[l];
  for (; c < C; ++c) s += static_cast<double>(x[c]) * x[c];
  const float r = static_cast<float>(1.0 / std::sqrt(s / C + eps));
  for (c = 0; c < C; ++c) y[c] = x[c] * r * gamma[c];
  *rstd_out = r;
}
SIGMA_VERSIONS(rms_row, rms_row_loop)

SIGMA_LOOP void rms_row_backward_loop(float* dx, const float* dy, const float* x, float r, const float* gamma, int64_t C) {
  // dx = r·(g − x̂·mean(g·x̂)), g = dy·γ, x̂ = x·r.
  float gxsum = 0;
  for (int64_t c = 0; c < C; ++c) gxsum += dy[c] * gamma[c] * x[c] * r;
  const float gxm = gxsum / C;
  for (int64_t c = 0; c < C; ++c) dx[c] += r * (dy[c] * gamma[c] - x[c] * r * gxm);
}
SIGMA_VERSIONS(rms_row_backward, rms_row_backward_loop)

// dgamma[c0..c1) += Σ_r dy·x̂: each column's sum over the rows in order.
SIGMA_LOOP void rms_columns_backward_loop(float* dgamma, const float* dy, const float* x, const float* rstd, int64_t rows,
                                          int64_t C, int64_t c0, int64_t c1) {
  for (int64_t r = 0; r < rows; ++r) {
    const float s = rstd[r];
    const float* xr = x + r * C;
    const float* dr = dy + r * C;
    for (int64_t c = c0; c < c1; ++c) dgamma[c] += dr[c] * xr[c] * s;
  }
}
SIGMA_VERSIONS(rms_columns_backward, rms_columns_backward_loop)

int64_t row_grain(int64_t cols) { return grain_for(cols, 16384); }

}  // namespace

void layer_norm(float* y, float* mean, float* rstd, const float* x, const float* gamma, const float* beta, int64_t rows,
                int64_t C, float eps) {
  const bool wide = use_avx512();
  parallel_for(rows, row_grain(C), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      if (wide) avx512::ln_row(y + r * C, x + r * C, gamma, beta, C, eps, mean + r, rstd + r);
      else ln_row(y + r * C, x + r * C, gamma, beta, C, eps, mean + r, rstd + r);
    }
  });
}

void layer_norm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x, const float* mean,
                         const float* rstd, const float* gamma, int64_t rows, int64_t C) {
  const bool wide = use_avx512();
  parallel_for(rows, row_grain(C), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      if (wide) avx512::ln_row_backward(dx + r * C, dy + r * C, x + r * C, mean[r], rstd[r], gamma, C);
      else ln_row_backward(dx + r * C, dy + r * C, x + r * C, mean[r], rstd[r], gamma, C);
    }
  });
  parallel_for(C, grain_for(rows, 16384, 16), [&](int64_t c0, int64_t c1) {
    if (wide) avx512::ln_columns_backward(dgamma, dbeta, dy, x, mean, rstd, rows, C, c0, c1);
    else ln_columns_backward(dgamma, dbeta, dy, x, mean, rstd, rows, C, c0, c1);
  });
}

// The AVX-512 path runs the AVX2 versions (vectorised by the compiler; no hand-written AVX-512 twin yet).
void rms_norm(float* y, float* rstd, const float* x, const float* gamma, int64_t rows, int64_t C, float eps) {
  parallel_for(rows, row_grain(C), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) rms_row(y + r * C, x + r * C, gamma, C, eps, rstd + r);
  });
}

void rms_norm_backward(float* dx, float* dgamma, const float* dy, const float* x, const float* rstd, const float* gamma,
                       int64_t rows, int64_t C) {
  parallel_for(rows, row_grain(C), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) rms_row_backward(dx + r * C, dy + r * C, x + r * C, rstd[r], gamma, C);
  });
  parallel_for(C, grain_for(rows, 16384, 16), [&](int64_t c0, int64_t c1) { rms_columns_backward(dgamma, dy, x, rstd, rows, C, c0, c1); });
}

void argmax_rows(int32_t* out, const float* x, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    // A NaN first element is kept by the scan (nothing compares greater); the vector paths need x[0] a number.
    if (cols == 0 || std::isnan(xr[0])) {
      out[r] = 0;
    } else if (use_avx512()) {
      out[r] = static_cast<int32_t>(avx512::argmax_row(xr, cols));
    } else if (use_avx2()) {
      out[r] = static_cast<int32_t>(avx2::argmax_row(xr, cols));
    } else {
      int64_t best = 0;
      for (int64_t i = 1; i < cols; ++i)
        if (xr[i] > xr[best]) best = i;
      out[r] = static_cast<int32_t>(best);
    }
  }
}

void softmax(float* y, const float* x, int64_t rows, int64_t cols) {
  const bool wide = use_avx512();
  parallel_for(rows, row_grain(cols), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* xr = x + r * cols;
      float* yr = y + r * cols;
      const float s = vexp_shift(yr, xr, vmax(xr, cols), cols);
      if (wide) avx512::scale_row(yr, 1.f / s, cols);
      else scale_row(yr, 1.f / s, cols);
    }
  });
}

void softmax_backward(float* dx, const float* y, const float* dy, int64_t rows, int64_t cols) {
  const bool wide = use_avx512();
  parallel_for(rows, row_grain(cols), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      if (wide) avx512::softmax_row_backward(dx + r * cols, y + r * cols, dy + r * cols, cols);
      else softmax_row_backward(dx + r * cols, y + r * cols, dy + r * cols, cols);
    }
  });
}

namespace {
// log Σ exp of a row, without writing it (exp computed into a per-thread scratch row).
// The portable versions; AVX2 and AVX-512 ones are in ops_avx2.cpp and ops_avx512.cpp.
float row_lse_portable(const float* x, int64_t n) {
  const float m = vmax(x, n);
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) part[l] += fast_expf(x[i + l] - m);
  float s = 0;
  for (int l = 0; l < 8; ++l) s += part[l];
  for (; i < n; ++i) s += fast_expf(x[i] - m);
  return m + std::log(s);
}

void ce_row_backward_portable(float* d, const float* x, float lse, float g, int64_t V) {
  for (int64_t v = 0; v < V; ++v) d[v] += g * fast_expf(x[v] - lse);
}
}  // namespace

void cross_entropy(float* loss, float* lse, const float* logits, const int32_t* targets, int64_t rows, int64_t V,
                   int32_t ignore) {
  const bool wide = use_avx512(), avx2 = use_avx2();
  parallel_for(rows, row_grain(V), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* xr = logits + r * V;
      const float l = wide ? avx512::row_lse(xr, V) : avx2 ? avx2::row_lse(xr, V) : row_lse_portable(xr, V);
      lse[r] = l;
      loss[r] = targets[r] == ignore ? 0.f : l - xr[targets[r]];
    }
  });
}

void cross_entropy_backward(float* dlogits, const float* logits, const float* lse, const int32_t* targets,
                            const float* dloss, int64_t rows, int64_t V, int32_t ignore) {
  const bool wide = use_avx512(), avx2 = use_avx2();
  parallel_for(rows, row_grain(V), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      if (targets[r] == ignore) continue;
      if (wide) avx512::ce_row_backward(dlogits + r * V, logits + r * V, lse[r], dloss[r], V);
      else if (avx2) avx2::ce_row_backward(dlogits + r * V, logits + r * V, lse[r], dloss[r], V);
      else ce_row_backward_portable(dlogits + r * V, logits + r * V, lse[r], dloss[r], V);
      dlogits[r * V + targets[r]] -= dloss[r];
    }
  });
}

}  // namespace sigma
