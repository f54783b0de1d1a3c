// AVX2 + FMA paths of the exp-based row and activation kernels
// (ops_avx2.cpp), the counterparts of those in ops_avx512.h for CPUs without
// AVX-512 (AMD Zen 2/3, Intel Haswell … Alder Lake). The callers take them
// when use_avx2() holds and use_avx512() does not; each computes what the
// loop it replaces computes (up to float rounding), one row or one
// contiguous slice per call, on the calling thread.
#pragma once
#include <cstdint>

namespace sigma::avx2 {

// max x[i] (−inf for n = 0).
float vmax(const float* x, int64_t n);
// y[i] = exp(x[i] − m); returns Σ y. y may be x.
float vexp_shift(float* y, const float* x, float m, int64_t n);
// log Σ exp x.
float row_lse(const float* x, int64_t n);
// d += g·exp(x − lse).
void ce_row_backward(float* d, const float* x, float lse, float g, int64_t n);
void fast_gelu(float* y, const float* x, int64_t n);
void fast_gelu_backward(float* dx, const float* x, const float* dy, int64_t n);

// The first index of the largest element that is not NaN, the caller having
// checked x[0] is not NaN (argmax_rows in ops_rows.cpp): each lane keeps its
// first maximum and its index, then the least index among the lanes at the
// overall maximum; the tail as the scalar scan.
int64_t argmax_row(const float* x, int64_t n);

}  // namespace sigma::avx2
