// AVX2 + FMA paths of the exp-based kernels: softmax rows (exp-and-sum),
// the cross-entropy's log-sum-exp and gradient over the vocabulary, and
// FastGeLU with its derivative. The compiler's versions of these loops
// (simd.h) vectorise fast_expf, but spend much of their time on its scalar
// form: the clamp becomes compares and blends, the z ≥ 0 choice of the
// sigmoid more blends, and a tail of up to seven elements runs one at a time.
// Here the exponential is written for the ISA, as in ops_avx512.cpp: the same
// degree-6 polynomial, the clamp as one min and one max, rounding by
// vroundps, and 2ⁿ built by integer arithmetic in the exponent field (AVX2 has
// no vscalefps); tails are masked loads and stores (vmaskmovps).
//
// The results match fast_expf's loops up to float rounding (sums are taken in
// a different order); the conformance suite compares every path with the
// reference backend on odd sizes.
#pragma GCC target("avx2,fma")
#include "ops_avx2.h"

#include <immintrin.h>

#include <cmath>
#include <limits>

#include "lanes_avx2.h"

namespace sigma::avx2 {
namespace {

// exp(x) on 8 lanes: x = n·ln2 + r, |r| ≤ ln2/2 (ln2 in two parts), e^r by
// fast_expf's polynomial, then 2ⁿ as the float whose exponent field is n + 127.
// n comes from one fused multiply-add: t = x·log2(e) + (1.5·2²³ + 127) is
// rounded to an integer by the addition itself (the float spacing at 1.5·2²³
// is 1), t − (1.5·2²³ + 127) is n as a float, and the low bits of t's integer
// form hold n + 127, so shifting them into the exponent field builds 2ⁿ (the
// 1.5·2²³ part is shifted out). Inputs clamped to [-87.3, 88.7] like fast_expf
// (n stays in [-126, 128]).
inline __m256 exp8(__m256 x) {
  const __m256 magic = _mm256_set1_ps(12583039.f);  // 1.5·2²³ + 127
  // The constant first: maxps/minps return their second operand when either is NaN, so NaN stays NaN.
  x = _mm256_min_ps(_mm256_set1_ps(88.7f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x));
  const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
  const __m256 n = _mm256_sub_ps(t, magic);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23)));
}

// σ(z) with e = exp(−|z|), which never overflows: 1/(1+e) for z ≥ 0, e/(1+e) below.
inline __m256 sigmoid8(__m256 z) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  const __m256 e = exp8(_mm256_or_ps(z, sign));  // −|z|
  const __m256 s = _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_add_ps(_mm256_set1_ps(1.f), e));
  return _mm256_blendv_ps(s, _mm256_mul_ps(e, s), z);  // the sign bit of z picks e·s
}

inline __m256 load(const float* p, __m256i k) { return _mm256_maskload_ps(p, k); }
inline void store(float* p, __m256i k, __m256 v) { _mm256_maskstore_ps(p, k, v); }
inline __m256 keep(__m256i k, __m256 v) { return _mm256_and_ps(_mm256_castsi256_ps(k), v); }

inline float hsum(__m256 v) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

inline float hmax(__m256 v) {
  const __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 q = _mm_max_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_max_ss(q, _mm_movehdup_ps(q)));
}

}  // namespace

// The tail's lanes past the end hold −inf.
float vmax(const float* x, int64_t n) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 a = ninf, b = ninf;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a = _mm256_max_ps(a, _mm256_loadu_ps(x + i));
    b = _mm256_max_ps(b, _mm256_loadu_ps(x + i + 8));
  }
  for (; i < n; i += 8) {
    const __m256i k = lanes(0, n - i);
    a = _mm256_max_ps(a, _mm256_blendv_ps(ninf, load(x + i, k), _mm256_castsi256_ps(k)));
  }
  return hmax(_mm256_max_ps(a, b));
}


float vexp_shift(float* y, const float* x, float m, int64_t n) {
  const __m256 mv = _mm256_set1_ps(m);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
    const __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), mv));
    _mm256_storeu_ps(y + i, e0);
    _mm256_storeu_ps(y + i + 8, e1);
    s0 = _mm256_add_ps(s0, e0);
    s1 = _mm256_add_ps(s1, e1);
  }
  for (; i < n; i += 8) {
    const __m256i k = lanes(0, n - i);
    const __m256 e = keep(k, exp8(_mm256_sub_ps(load(x + i, k), mv)));
    store(y + i, k, e);
    s0 = _mm256_add_ps(s0, e);
  }
  return hsum(_mm256_add_ps(s0, s1));
}

// Two passes over the row: the max, then Σ exp(x − max) in four accumulators.
float row_lse(const float* x, int64_t n) {
  const float m = vmax(x, n);
  const __m256 mv = _mm256_set1_ps(m);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_add_ps(s0, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv)));
    s1 = _mm256_add_ps(s1, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), mv)));
    s2 = _mm256_add_ps(s2, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 16), mv)));
    s3 = _mm256_add_ps(s3, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 24), mv)));
  }
  for (; i < n; i += 8) {
    const __m256i k = lanes(0, n - i);
    s0 = _mm256_add_ps(s0, keep(k, exp8(_mm256_sub_ps(load(x + i, k), mv))));
  }
  return m + std::log(hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3))));
}

void ce_row_backward(float* d, const float* x, float lse, float g, int64_t n) {
  const __m256 lv = _mm256_set1_ps(lse), gv = _mm256_set1_ps(g);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), lv));
    const __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), lv));
    _mm256_storeu_ps(d + i, _mm256_fmadd_ps(gv, e0, _mm256_loadu_ps(d + i)));
    _mm256_storeu_ps(d + i + 8, _mm256_fmadd_ps(gv, e1, _mm256_loadu_ps(d + i + 8)));
  }
  for (; i < n; i += 8) {
    const __m256i k = lanes(0, n - i);
    const __m256 e = exp8(_mm256_sub_ps(load(x + i, k), lv));
    store(d + i, k, _mm256_fmadd_ps(gv, e, load(d + i, k)));
  }
}

// FastGeLU(x) = x·σ(1.702·x).
void fast_gelu(float* y, const float* x, int64_t n) {
  const __m256 a = _mm256_set1_ps(1.702f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(xv, sigmoid8(_mm256_mul_ps(a, xv))));
  }
  if (i < n) {
    const __m256i k = lanes(0, n - i);
    const __m256 xv = load(x + i, k);
    store(y + i, k, _mm256_mul_ps(xv, sigmoid8(_mm256_mul_ps(a, xv))));
  }
}

// dx += dy·(s + 1.702·x·s·(1 − s)), s = σ(1.702·x).
void fast_gelu_backward(float* dx, const float* x, const float* dy, int64_t n) {
  const __m256 a = _mm256_set1_ps(1.702f), one = _mm256_set1_ps(1.f);
  const auto step = [&](__m256 xv, __m256 dyv, __m256 dxv) {
    const __m256 ax = _mm256_mul_ps(a, xv);
    const __m256 s = sigmoid8(ax);
    const __m256 dv = _mm256_fmadd_ps(_mm256_mul_ps(ax, s), _mm256_sub_ps(one, s), s);
    return _mm256_fmadd_ps(dyv, dv, dxv);
  };
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dx + i, step(_mm256_loadu_ps(x + i), _mm256_loadu_ps(dy + i), _mm256_loadu_ps(dx + i)));
  if (i < n) {
    const __m256i k = lanes(0, n - i);
    store(dx + i, k, step(load(x + i, k), load(dy + i, k), load(dx + i, k)));
  }
}

int64_t argmax_row(const float* x, int64_t n) {
  const int64_t n8 = n / 8 * 8;
  __m256 m = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 at = _mm256_castsi256_ps(_mm256_setzero_si256());
  __m256i cur = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i step = _mm256_set1_epi32(8);
  for (int64_t i = 0; i < n8; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 k = _mm256_cmp_ps(v, m, _CMP_GT_OQ);  // false for a NaN
    m = _mm256_blendv_ps(m, v, k);
    at = _mm256_blendv_ps(at, _mm256_castsi256_ps(cur), k);
    cur = _mm256_add_epi32(cur, step);
  }
  float best = -std::numeric_limits<float>::infinity();
  int64_t index = 0;
  if (n8 > 0) {
    alignas(32) float lm[8];
    alignas(32) int32_t li[8];
    _mm256_store_ps(lm, m);
    _mm256_store_si256(reinterpret_cast<__m256i*>(li), _mm256_castps_si256(at));
    best = lm[0];
    index = li[0];
    for (int l = 1; l < 8; ++l) {
      if (lm[l] > best || (lm[l] == best && li[l] < index)) {
        best = lm[l];
        index = li[l];
      }
    }
  }
  for (int64_t i = n8; i < n; ++i) {
    if (x[i] > best) {
      best = x[i];
      index = i;
    }
  }
  return index;
}

}  // namespace sigma::avx2
