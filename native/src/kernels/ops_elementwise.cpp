// Elementwise kernels, bias, activations and the fused AdamW step. Large
// arrays are split over the kernel threads in contiguous chunks.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu.h"
#include "ops.h"
#include "ops_avx2.h"
#include "ops_avx512.h"
#include "simd.h"
#include "threadpool.h"

namespace sigma {
namespace {
constexpr int64_t kGrain = 1 << 15;  // below this one thread is faster than waking another

// Each loop below is a SIGMA_LOOP body; SIGMA_VERSIONS (simd.h) makes its
// AVX2 and baseline versions and the dispatcher named without "_loop".
SIGMA_LOOP void add_loop(float* o, const float* a, const float* b, int64_t n) { for (int64_t i = 0; i < n; ++i) o[i] = a[i] + b[i]; }
SIGMA_LOOP void mul_loop(float* o, const float* a, const float* b, int64_t n) { for (int64_t i = 0; i < n; ++i) o[i] = a[i] * b[i]; }
SIGMA_LOOP void scale_loop(float* o, const float* x, float s, int64_t n) { for (int64_t i = 0; i < n; ++i) o[i] = s * x[i]; }
SIGMA_LOOP void axpy_loop(float* y, const float* x, float s, int64_t n) { for (int64_t i = 0; i < n; ++i) y[i] += s * x[i]; }
SIGMA_VERSIONS(add_k, add_loop)
SIGMA_VERSIONS(mul_k, mul_loop)
SIGMA_VERSIONS(scale_k, scale_loop)
SIGMA_VERSIONS(axpy_k, axpy_loop)

SIGMA_LOOP double sumsq_loop(const float* x, int64_t n) {
  // Eight float partial sums per block of 4096, folded into double: vectorisable and accurate.
  double total = 0;
  for (int64_t b = 0; b < n; b += 4096) {
    const int64_t e = std::min<int64_t>(n, b + 4096);
    float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = b;
    for (; i + 8 <= e; i += 8)
      for (int l = 0; l < 8; ++l) part[l] += x[i + l] * x[i + l];
    double s = 0;
    for (int l = 0; l < 8; ++l) s += part[l];
    for (; i < e; ++i) s += static_cast<double>(x[i]) * x[i];
    total += s;
  }
  return total;
}
SIGMA_VERSIONS(sumsq_k, sumsq_loop)

SIGMA_LOOP float sigmoidf(float z) {
  // Never overflows: exp of a non-positive number only.
  // Branch-free so that it vectorises: e = exp(−|z|) never overflows.
  const float e = fast_expf(-std::fabs(z));
  const float s = 1.f / (1.f + e);
  return z >= 0 ? s : e * s;
}

// The portable FastGeLU loops; AVX2 and AVX-512 versions are in ops_avx2.cpp and ops_avx512.cpp.
void fast_gelu_portable(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * sigmoidf(1.702f * x[i]);
}
void fast_gelu_bwd_portable(float* dx, const float* x, const float* dy, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float s = sigmoidf(1.702f * x[i]);
    dx[i] += dy[i] * (s + 1.702f * x[i] * s * (1.f - s));
  }
}
void gelu_k(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.f + std::erf(x[i] * 0.70710678118654752f));
}
void gelu_bwd_k(float* dx, const float* x, const float* dy, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float d = 0.5f * (1.f + std::erf(v * 0.70710678118654752f)) + v * 0.3989422804014327f * std::exp(-0.5f * v * v);
    dx[i] += dy[i] * d;
  }
}

SIGMA_LOOP void adamw_loop(float* p, const float* g, float* m, float* v, int64_t n, float lr, float b1, float b2,
                           float eps, float wd, float inv_bc1, float inv_bc2, float gs) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * gs;
    const float mi = b1 * m[i] + (1.f - b1) * gi;
    const float vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= lr * ((mi * inv_bc1) / (std::sqrt(vi * inv_bc2) + eps) + wd * p[i]);
  }
}
SIGMA_VERSIONS(adamw_k, adamw_loop)

// SwiGLU (Llama-style FFNs): y = g·σ(g)·u; the backward's two products in one pass.
SIGMA_LOOP void swiglu_loop(float* y, const float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = g[i] * sigmoidf(g[i]) * u[i];
}
SIGMA_LOOP void swiglu_bwd_loop(float* dg, float* du, const float* dy, const float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float s = sigmoidf(g[i]);
    dg[i] += dy[i] * u[i] * s * (1.f + g[i] * (1.f - s));
    du[i] += dy[i] * g[i] * s;
  }
}
SIGMA_VERSIONS(swiglu_k, swiglu_loop)
SIGMA_VERSIONS(swiglu_bwd_k, swiglu_bwd_loop)

template <typename F>
void chunked(int64_t n, F f) {
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) { f(b, e); });
}
}  // namespace

void add(float* o, const float* a, const float* b, int64_t n) { chunked(n, [&](int64_t s, int64_t e) { add_k(o + s, a + s, b + s, e - s); }); }
void mul(float* o, const float* a, const float* b, int64_t n) { chunked(n, [&](int64_t s, int64_t e) { mul_k(o + s, a + s, b + s, e - s); }); }
void scale(float* o, const float* x, float alpha, int64_t n) { chunked(n, [&](int64_t s, int64_t e) { scale_k(o + s, x + s, alpha, e - s); }); }
void axpy(float* y, const float* x, float alpha, int64_t n) { chunked(n, [&](int64_t s, int64_t e) { axpy_k(y + s, x + s, alpha, e - s); }); }

double sum_squares_serial(const float* x, int64_t n) { return sumsq_k(x, n); }

double sum_squares(const float* x, int64_t n) {
  // Fixed chunks (not per-thread ones) so the result does not depend on the thread count.
  const int64_t chunk = 1 << 16;
  const int64_t nc = (n + chunk - 1) / chunk;
  // Grows once, then reused. (A reference: inside the lambda a thread_local name
  // would denote the worker thread's own instance.)
  thread_local std::vector<double> part_tls;
  std::vector<double>& part = part_tls;
  part.assign(static_cast<size_t>(nc), 0.0);
  parallel_for(nc, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) part[c] = sumsq_k(x + c * chunk, std::min(chunk, n - c * chunk));
  });
  double s = 0;
  for (double p : part) s += p;
  return s;
}

void add_serial(float* o, const float* a, const float* b, int64_t n) { add_k(o, a, b, n); }
void gelu_serial(float* y, const float* x, int64_t n) { gelu_k(y, x, n); }
void fast_gelu_serial(float* y, const float* x, int64_t n) {
  if (use_avx512()) avx512::fast_gelu(y, x, n);
  else if (use_avx2()) avx2::fast_gelu(y, x, n);
  else fast_gelu_portable(y, x, n);
}

void gelu(float* y, const float* x, int64_t n) { chunked(n, [&](int64_t s, int64_t e) { gelu_k(y + s, x + s, e - s); }); }
void gelu_backward(float* dx, const float* x, const float* dy, int64_t n) { chunked(n, [&](int64_t s, int64_t e) { gelu_bwd_k(dx + s, x + s, dy + s, e - s); }); }
void fast_gelu(float* y, const float* x, int64_t n) {
  const bool wide = use_avx512(), avx2 = use_avx2();
  chunked(n, [&](int64_t s, int64_t e) {
    if (wide) avx512::fast_gelu(y + s, x + s, e - s);
    else if (avx2) avx2::fast_gelu(y + s, x + s, e - s);
    else fast_gelu_portable(y + s, x + s, e - s);
  });
}
void fast_gelu_backward(float* dx, const float* x, const float* dy, int64_t n) {
  const bool wide = use_avx512(), avx2 = use_avx2();
  chunked(n, [&](int64_t s, int64_t e) {
    if (wide) avx512::fast_gelu_backward(dx + s, x + s, dy + s, e - s);
    else if (avx2) avx2::fast_gelu_backward(dx + s, x + s, dy + s, e - s);
    else fast_gelu_bwd_portable(dx + s, x + s, dy + s, e - s);
  });
}

// The AVX-512 path runs the AVX2 versions (vectorised by the compiler; no hand-written AVX-512 twin yet).
void swiglu(float* y, const float* g, const float* u, int64_t n) { chunked(n, [&](int64_t s, int64_t e) { swiglu_k(y + s, g + s, u + s, e - s); }); }
void swiglu_backward(float* dg, float* du, const float* dy, const float* g, const float* u, int64_t n) {
  chunked(n, [&](int64_t s, int64_t e) { swiglu_bwd_k(dg + s, du + s, dy + s, g + s, u + s, e - s); });
}

void add_bias(float* y, const float* x, const float* bias, int64_t rows, int64_t cols) {
  parallel_for(rows, grain_for(cols, kGrain), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) add_k(y + r * cols, x + r * cols, bias, cols);
  });
}

void add_bias_backward(float* dbias, const float* dy, int64_t rows, int64_t cols) {
  // Column slices per thread: each column's sum runs over rows in order (deterministic).
  parallel_for(cols, grain_for(rows, kGrain, 64), [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; ++r) add_k(dbias + c0, dbias + c0, dy + r * cols + c0, c1 - c0);
  });
}

void adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2, float eps,
           float weight_decay, int64_t step, float grad_scale) {
  const float inv_bc1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step))));
  const float inv_bc2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step))));
  chunked(n, [&](int64_t s, int64_t e) {
    adamw_k(p + s, g + s, m + s, v + s, e - s, lr, beta1, beta2, eps, weight_decay, inv_bc1, inv_bc2, grad_scale);
  });
}

void adamw_experts(float* const* payload, const float* const* grad, const int32_t* steps, int64_t E, int64_t P,
                   int64_t decayed, float lr, float beta1, float beta2, float eps, float weight_decay, float grad_scale) {
  if (E <= 0 || P <= 0) return;
  // Each expert's bias corrections, as adamw computes them.
  thread_local std::vector<float> bc_tls;
  std::vector<float>& bc = bc_tls;
  bc.resize(static_cast<size_t>(2 * E));
  for (int64_t e = 0; e < E; ++e) {
    const double t = static_cast<double>(steps[e]);
    bc[2 * e] = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(beta1), t)));
    bc[2 * e + 1] = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(beta2), t)));
  }
  // The E experts' P values end to end, split over the threads in one go
  // (not a fork and join per expert); a thread's range may cross experts.
  chunked(E * P, [&](int64_t s, int64_t end) {
    while (s < end) {
      const int64_t e = s / P, i0 = s % P, i1 = std::min(P, i0 + (end - s));
      float* p = payload[e];
      const float* g = grad[e];
      // The decayed part [0, decayed), then the rest without decay.
      for (int64_t a = i0; a < i1;) {
        const int64_t b = a < decayed ? std::min(i1, decayed) : i1;
        adamw_k(p + a, g + a, p + P + a, p + 2 * P + a, b - a, lr, beta1, beta2, eps, a < decayed ? weight_decay : 0.f,
                bc[2 * e], bc[2 * e + 1], grad_scale);
        a = b;
      }
      s += i1 - i0;
    }
  });
}

}  // namespace sigma
