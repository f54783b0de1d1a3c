// Small vector primitives shared by the loop kernels (each compiled for AVX2+FMA and the baseline,
// chosen per call by the kernel path; vmax and vexp_shift have AVX-512 versions too).
#pragma once
#include <cstdint>

namespace sigma {
// Σ a[i]·b[i] with eight float partial sums.
float vdot(const float* a, const float* b, int64_t n);
// y[i] += alpha·x[i].
void vaxpy(float* y, const float* x, float alpha, int64_t n);
// Attention's decode rows, several heads per cached row: with g(h) = (e0 + h)/rep (query head h of the run is
// the ((e0 + h) mod rep)-th of key head g(h)), s[h·lds + j] = scale·vdot(q + h·d, k + j·ldk + g(h)·d, d) and
// m[h] = max(m[h], s[h·lds + j]) (std::max from the caller's m, in order of j), for j < n, h < nh. On
// AVX-512 (ops_avx512.cpp) each dot is summed in 16 lanes and _mm512_reduce_add_ps's order, not vdot's
// 8: the same number to rounding, and the same bits for a key wherever it falls in the call.
// `ahead` > 0: prefetch the rows that many rows on (rows read from memory); 0 for rows already in L1.
void vdot_heads(float* s, int64_t lds, float* m, const float* q, const float* k, int64_t ldk, int64_t n, int64_t nh,
                int64_t rep, int64_t e0, int64_t d, float scale, int64_t ahead);
// vaxpy(o + h·d, v + j·ldv + g(h)·d, p[h·ldp + j]·w[h], d) for j = 0 … n−1 in order, h < nh.
void vaxpy_heads(float* o, const float* v, int64_t ldv, const float* p, int64_t ldp, const float* w, int64_t n,
                 int64_t nh, int64_t rep, int64_t e0, int64_t d, int64_t ahead);
// x[i] *= alpha, in place.
void vscale(float* x, float alpha, int64_t n);
// Σ x[i] with eight float partial sums.
float vsum(const float* x, int64_t n);
// max x[i] with eight partial maxima (−inf for n = 0).
float vmax(const float* x, int64_t n);
// y[i] = exp(x[i] − m) (fast_expf); returns Σ y. y may be x.
float vexp_shift(float* y, const float* x, float m, int64_t n);
}  // namespace sigma
