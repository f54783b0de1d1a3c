// AVX-512 paths of the row and activation kernels (ops_avx512.cpp). The
// callers in ops_rows.cpp, ops_elementwise.cpp and vec.cpp take them when
// use_avx512() says so, and their AVX2/baseline loops otherwise; each
// function here computes exactly what the loop it replaces computes (up to
// float rounding), one row or one contiguous slice per call, on the calling
// thread.
#pragma once
#include <cstdint>

namespace sigma::avx512 {

// ---- vec.h primitives
float vmax(const float* x, int64_t n);
float vexp_shift(float* y, const float* x, float m, int64_t n);
void vdot_heads(float* s, int64_t lds, float* m, const float* q, const float* k, int64_t ldk, int64_t n, int64_t nh,
                int64_t rep, int64_t e0, int64_t d, float scale, int64_t ahead);
void vaxpy_heads(float* o, const float* v, int64_t ldv, const float* p, int64_t ldp, const float* w, int64_t n, int64_t nh,
                 int64_t rep, int64_t e0, int64_t d, int64_t ahead);

// ---- rows
void ln_row(float* y, const float* x, const float* gamma, const float* beta, int64_t C, float eps, float* mean_out,
            float* rstd_out);
void ln_row_backward(float* dx, const float* dy, const float* x, float m, float r, const float* gamma, int64_t C);
// dgamma[c0..c1) += Σ_r dy·x̂, dbeta[c0..c1) += Σ_r dy, rows in order.
void ln_columns_backward(float* dgamma, float* dbeta, const float* dy, const float* x, const float* mean,
                         const float* rstd, int64_t rows, int64_t C, int64_t c0, int64_t c1);
// y = x / Σ: the last pass of a softmax row.
void scale_row(float* y, float s, int64_t n);
// Σ_c y·dy, then dx += y·(dy − that).
void softmax_row_backward(float* dx, const float* y, const float* dy, int64_t n);
// log Σ exp x.
float row_lse(const float* x, int64_t n);
// d += g·exp(x − lse).
void ce_row_backward(float* d, const float* x, float lse, float g, int64_t n);

// ---- activations
void fast_gelu(float* y, const float* x, int64_t n);
void fast_gelu_backward(float* dx, const float* x, const float* dy, int64_t n);

// The first index of the largest element that is not NaN, the caller having
// checked x[0] is not NaN (argmax_rows in ops_rows.cpp): each lane keeps its
// first maximum and its index, then the least index among the lanes at the
// overall maximum; the tail as the scalar scan.
int64_t argmax_row(const float* x, int64_t n);

}  // namespace sigma::avx512
