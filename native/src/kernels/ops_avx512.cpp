// AVX-512 paths of the row and activation kernels: LayerNorm rows and its
// column reductions, softmax rows, the cross-entropy's log-sum-exp and
// gradient over the vocabulary, FastGeLU and its derivative, and the vec.h
// primitives the attention rows use (max, exp-and-sum).
//
// What they gain over the AVX2 loops: 16 lanes per instruction, and an
// exponential built for the ISA — the polynomial of fast_expf (simd.h) with
// the scaling by 2^n done by one vscalefps instead of integer work in the
// exponent bits, and rounding by vrndscaleps — so an exp is ~12 instructions
// per 16 floats. Tails are masked loads and stores, never a scalar loop.
// Zen 4 executes a 512-bit operation as two 256-bit halves, so there the gain
// is in instructions issued; CPUs with two 512-bit FMA pipes gain more.
//
// The results match the loops they replace up to float rounding (sums are
// taken in a different order); the conformance suite compares both paths with
// the reference backend on odd sizes.
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's AVX-512 intrinsics (max, reductions, scalef) pass an
// _mm512_undefined_ps() merge source that its own flow analysis then calls
// uninitialised: a false positive in the header, silenced for this file.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "ops_avx512.h"

#include <immintrin.h>

#include <algorithm>

#include <cmath>
#include <limits>

#include "reduce_avx512.h"

namespace sigma::avx512 {
namespace {

// The lanes [0, n) of a 16-float vector (n clamped to 16).
inline __mmask16 head(int64_t n) { return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1); }

// exp(x) on 16 lanes: x = n·ln2 + r, |r| ≤ ln2/2 (ln2 in two parts, as in
// fast_expf), e^r by the same degree-6 polynomial, then y·2^n by vscalefps.
// Inputs clamped to [-87.3, 88.7] like fast_expf.
inline __m512 exp16(__m512 x) {
  // The constant first: maxps/minps return their second operand when either is NaN, so NaN stays NaN.
  x = _mm512_min_ps(_mm512_set1_ps(88.7f), _mm512_max_ps(_mm512_set1_ps(-87.3f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(y, n);
}

// σ(z) and, for the derivative, the same with e = exp(−|z|) never overflowing:
// σ = 1/(1+e) for z ≥ 0, e/(1+e) below.
inline __m512 sigmoid16(__m512 z) {
  const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(z)));
  const __m512 s = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_add_ps(_mm512_set1_ps(1.f), e));
  const __mmask16 neg = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_mul_ps(s, neg, e, s);
}

}  // namespace

float vmax(const float* x, int64_t n) {
  __m512 a = _mm512_set1_ps(-std::numeric_limits<float>::infinity()), b = a;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a = _mm512_max_ps(a, _mm512_loadu_ps(x + i));
    b = _mm512_max_ps(b, _mm512_loadu_ps(x + i + 16));
  }
  for (; i < n; i += 16) a = _mm512_mask_max_ps(a, head(n - i), a, _mm512_maskz_loadu_ps(head(n - i), x + i));
  return _mm512_reduce_max_ps(_mm512_max_ps(a, b));
}

float vexp_shift(float* y, const float* x, float m, int64_t n) {
  const __m512 mv = _mm512_set1_ps(m);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 e0 = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv));
    const __m512 e1 = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), mv));
    _mm512_storeu_ps(y + i, e0);
    _mm512_storeu_ps(y + i + 16, e1);
    s0 = _mm512_add_ps(s0, e0);
    s1 = _mm512_add_ps(s1, e1);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = head(n - i);
    const __m512 e = _mm512_maskz_mov_ps(k, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), mv)));
    _mm512_mask_storeu_ps(y + i, k, e);
    s0 = _mm512_add_ps(s0, e);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

void scale_row(float* y, float s, int64_t n) {
  const __m512 sv = _mm512_set1_ps(s);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = head(n - i);
    _mm512_mask_storeu_ps(y + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, y + i), sv));
  }
}

void softmax_row_backward(float* dx, const float* y, const float* dy, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = head(n - i);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, y + i), _mm512_maskz_loadu_ps(k, dy + i), acc);
  }
  const __m512 dot = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = head(n - i);
    const __m512 yv = _mm512_maskz_loadu_ps(k, y + i);
    const __m512 d = _mm512_fmadd_ps(yv, _mm512_sub_ps(_mm512_maskz_loadu_ps(k, dy + i), dot), _mm512_maskz_loadu_ps(k, dx + i));
    _mm512_mask_storeu_ps(dx + i, k, d);
  }
}

// Mean and variance in float lanes, each lane's sum over at most C/16 values,
// the lanes added at the end: for C in the thousands that is as accurate as
// the double sums of the AVX2 loop. The variance is the two-pass one,
// Σ(x − mean)², so a large common offset costs no precision.
void ln_row(float* y, const float* x, const float* gamma, const float* beta, int64_t C, float eps, float* mean_out,
            float* rstd_out) {
  __m512 s = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; c += 16) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(head(C - c), x + c));
  const float m = _mm512_reduce_add_ps(s) / static_cast<float>(C);
  const __m512 mv = _mm512_set1_ps(m);
  __m512 v = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = head(C - c);
    const __m512 d = _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, x + c), mv);
    v = _mm512_fmadd_ps(d, d, v);
  }
  const float r = static_cast<float>(1.0 / std::sqrt(static_cast<double>(_mm512_reduce_add_ps(v)) / C + eps));
  const __m512 rv = _mm512_set1_ps(r);
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = head(C - c);
    const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + c), mv), rv);
    _mm512_mask_storeu_ps(y + c, k, _mm512_fmadd_ps(xh, _mm512_maskz_loadu_ps(k, gamma + c), _mm512_maskz_loadu_ps(k, beta + c)));
  }
  *mean_out = m;
  *rstd_out = r;
}

// dx += r·(g − mean(g) − x̂·mean(g·x̂)), g = dy·γ, x̂ = (x − m)·r.
void ln_row_backward(float* dx, const float* dy, const float* x, float m, float r, const float* gamma, int64_t C) {
  const __m512 mv = _mm512_set1_ps(m), rv = _mm512_set1_ps(r);
  __m512 gs = _mm512_setzero_ps(), gx = gs;
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = head(C - c);
    const __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + c), _mm512_maskz_loadu_ps(k, gamma + c));
    const __m512 xh = _mm512_maskz_mul_ps(k, _mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + c), mv), rv);
    gs = _mm512_add_ps(gs, g);
    gx = _mm512_fmadd_ps(g, xh, gx);
  }
  const __m512 gm = _mm512_set1_ps(_mm512_reduce_add_ps(gs) / static_cast<float>(C));
  const __m512 gxm = _mm512_set1_ps(_mm512_reduce_add_ps(gx) / static_cast<float>(C));
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = head(C - c);
    const __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + c), _mm512_maskz_loadu_ps(k, gamma + c));
    const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + c), mv), rv);
    const __m512 t = _mm512_fnmadd_ps(xh, gxm, _mm512_sub_ps(g, gm));
    _mm512_mask_storeu_ps(dx + c, k, _mm512_fmadd_ps(rv, t, _mm512_maskz_loadu_ps(k, dx + c)));
  }
}

void ln_columns_backward(float* dgamma, float* dbeta, const float* dy, const float* x, const float* mean,
                         const float* rstd, int64_t rows, int64_t C, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; c += 16) {
    const __mmask16 k = head(c1 - c);
    __m512 dg = _mm512_maskz_loadu_ps(k, dgamma + c), db = _mm512_maskz_loadu_ps(k, dbeta + c);
    for (int64_t r = 0; r < rows; ++r) {
      const __m512 d = _mm512_maskz_loadu_ps(k, dy + r * C + c);
      const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + r * C + c), _mm512_set1_ps(mean[r])), _mm512_set1_ps(rstd[r]));
      dg = _mm512_fmadd_ps(d, xh, dg);
      db = _mm512_add_ps(db, d);
    }
    _mm512_mask_storeu_ps(dgamma + c, k, dg);
    _mm512_mask_storeu_ps(dbeta + c, k, db);
  }
}

// Two passes over the row (the second from L1/L2: a row of 8192 floats is 32 KiB):
// the max, then Σ exp(x − max) in four accumulators.
float row_lse(const float* x, int64_t n) {
  const float m = vmax(x, n);
  const __m512 mv = _mm512_set1_ps(m);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_add_ps(s0, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv)));
    s1 = _mm512_add_ps(s1, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), mv)));
    s2 = _mm512_add_ps(s2, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i + 32), mv)));
    s3 = _mm512_add_ps(s3, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i + 48), mv)));
  }
  for (; i < n; i += 16) {
    const __mmask16 k = head(n - i);
    s0 = _mm512_add_ps(s0, _mm512_maskz_mov_ps(k, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), mv))));
  }
  return m + std::log(_mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3))));
}

void ce_row_backward(float* d, const float* x, float lse, float g, int64_t n) {
  const __m512 lv = _mm512_set1_ps(lse), gv = _mm512_set1_ps(g);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 e0 = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), lv));
    const __m512 e1 = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), lv));
    _mm512_storeu_ps(d + i, _mm512_fmadd_ps(gv, e0, _mm512_loadu_ps(d + i)));
    _mm512_storeu_ps(d + i + 16, _mm512_fmadd_ps(gv, e1, _mm512_loadu_ps(d + i + 16)));
  }
  for (; i < n; i += 16) {
    const __mmask16 k = head(n - i);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), lv));
    _mm512_mask_storeu_ps(d + i, k, _mm512_fmadd_ps(gv, e, _mm512_maskz_loadu_ps(k, d + i)));
  }
}

// FastGeLU(x) = x·σ(1.702·x).
void fast_gelu(float* y, const float* x, int64_t n) {
  const __m512 a = _mm512_set1_ps(1.702f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = head(n - i);
    const __m512 xv = _mm512_maskz_loadu_ps(k, x + i);
    _mm512_mask_storeu_ps(y + i, k, _mm512_mul_ps(xv, sigmoid16(_mm512_mul_ps(a, xv))));
  }
}

// dx += dy·(s + 1.702·x·s·(1 − s)), s = σ(1.702·x).
void fast_gelu_backward(float* dx, const float* x, const float* dy, int64_t n) {
  const __m512 a = _mm512_set1_ps(1.702f), one = _mm512_set1_ps(1.f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = head(n - i);
    const __m512 xv = _mm512_maskz_loadu_ps(k, x + i);
    const __m512 ax = _mm512_mul_ps(a, xv);
    const __m512 s = sigmoid16(ax);
    const __m512 dv = _mm512_fmadd_ps(_mm512_mul_ps(ax, s), _mm512_sub_ps(one, s), s);
    _mm512_mask_storeu_ps(dx + i, k, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, dy + i), dv, _mm512_maskz_loadu_ps(k, dx + i)));
  }
}

// Attention's decode rows (vec.h's vdot_heads): s[h·lds + j] = scale·(q_h ·
// k_j,h) and m[h] = max(m[h], …) over n cached rows ldk apart, for the run of
// nh query heads starting at the e0-th of its key/value head's rep ones.
// Sixteen rows at a time: per head, sixteen keys' products in sixteen
// accumulators whose sums end in one tree16 (reduce_avx512.h) — where one key
// at a time waited on its own reduction — and the rows left over one by one
// with _mm512_reduce_add_ps, whose order tree16 keeps: a key's score is the
// same bits wherever it falls. Head sizes past a multiple of 16 add their
// last inputs in order with fma. With `ahead` > 0 the rows are prefetched
// that many rows on (they come from memory: the weights streamed since
// evicted them). With vaxpy_heads below, against the AVX2 loops (Zen 4,
// tenth session): the attention kernel alone over a cached KV of 8 heads of
// 64, one query, 2 threads, 16 / 90 / 180 positions 4.7 / 15.0 / 23.4 µs →
// 1.8 / 4.8 / 9.2; the demo model's q8 step at 60 positions ×1.05; config R's
// step about the same (its keys and values come from memory there).
void vdot_heads(float* s, int64_t lds, float* m, const float* q, const float* k, int64_t ldk, int64_t n, int64_t nh,
                int64_t rep, int64_t e0, int64_t d, float scale, int64_t ahead) {
  const int64_t run = ((e0 + nh - 1) / rep + 1) * d;
  const int64_t dv = d / 16 * 16;
  const __m512 sc = _mm512_set1_ps(scale);
  auto tail = [&](float x, const float* qh, const float* kh) {
    for (int64_t c = dv; c < d; ++c) x = std::fma(qh[c], kh[c], x);
    return x;
  };
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    if (ahead > 0)
      for (int64_t r = j + ahead; r < std::min(n, j + ahead + 16); ++r)
        for (int64_t x = 0; x < run; x += 16) _mm_prefetch(reinterpret_cast<const char*>(k + r * ldk + x), _MM_HINT_T0);
    for (int64_t h = 0, g = 0, e = e0; h < nh; ++h) {
      const float* qh = q + h * d;
      const float* kb = k + j * ldk + g * d;
      __m512 v[16];
      for (int i = 0; i < 16; ++i) v[i] = _mm512_setzero_ps();
      for (int64_t c = 0; c < dv; c += 16) {
        const __m512 qv = _mm512_loadu_ps(qh + c);
        for (int i = 0; i < 16; ++i) v[i] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(kb + i * ldk + c), v[i]);
      }
      __m512 x = tree16(v);
      if (dv < d) {
        alignas(64) float t[16];
        _mm512_store_ps(t, x);
        for (int i = 0; i < 16; ++i) t[i] = tail(t[i], qh, kb + i * ldk);
        x = _mm512_load_ps(t);
      }
      x = _mm512_mul_ps(x, sc);
      _mm512_storeu_ps(s + h * lds + j, x);
      m[h] = std::max(m[h], _mm512_reduce_max_ps(x));
      if (++e == rep) e = 0, ++g;
    }
  }
  for (; j < n; ++j) {
    const float* row = k + j * ldk;
    if (ahead > 0 && j + ahead < n)
      for (int64_t x = 0; x < run; x += 16) _mm_prefetch(reinterpret_cast<const char*>(row + ahead * ldk + x), _MM_HINT_T0);
    for (int64_t h = 0, g = 0, e = e0; h < nh; ++h) {
      const float* qh = q + h * d;
      const float* kh = row + g * d;
      __m512 acc = _mm512_setzero_ps();
      for (int64_t c = 0; c < dv; c += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(qh + c), _mm512_loadu_ps(kh + c), acc);
      const float x = scale * tail(_mm512_reduce_add_ps(acc), qh, kh);
      s[h * lds + j] = x;
      m[h] = std::max(m[h], x);
      if (++e == rep) e = 0, ++g;
    }
  }
}

// Attention's decode rows (vec.h's vaxpy_heads): o_h += (p[h·ldp + j]·w[h])·v_j,h
// for j = 0 … n−1 in order, one fma per number (a tail of the head size
// through masks). Sixteen rows at a time: per head and per 16 numbers of it,
// o held in a register over the sixteen rows, where one row at a time loaded
// and stored o for every row; the rows left over one by one, the same fmas
// in the same order.
void vaxpy_heads(float* o, const float* v, int64_t ldv, const float* p, int64_t ldp, const float* w, int64_t n, int64_t nh,
                 int64_t rep, int64_t e0, int64_t d, int64_t ahead) {
  const int64_t run = ((e0 + nh - 1) / rep + 1) * d;
  auto rows = [&](int64_t j, int64_t cnt) {
    for (int64_t h = 0, g = 0, e = e0; h < nh; ++h) {
      const float* vb = v + j * ldv + g * d;
      const float* ph = p + h * ldp + j;
      float* oh = o + h * d;
      for (int64_t c = 0; c < d; c += 16) {
        const __mmask16 k = head(d - c);
        __m512 acc = _mm512_maskz_loadu_ps(k, oh + c);
        for (int64_t i = 0; i < cnt; ++i) acc = _mm512_fmadd_ps(_mm512_set1_ps(ph[i] * w[h]), _mm512_maskz_loadu_ps(k, vb + i * ldv + c), acc);
        _mm512_mask_storeu_ps(oh + c, k, acc);
      }
      if (++e == rep) e = 0, ++g;
    }
  };
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    if (ahead > 0)
      for (int64_t r = j + ahead; r < std::min(n, j + ahead + 16); ++r)
        for (int64_t x = 0; x < run; x += 16) _mm_prefetch(reinterpret_cast<const char*>(v + r * ldv + x), _MM_HINT_T0);
    rows(j, 16);
  }
  if (j < n) rows(j, n - j);
}

int64_t argmax_row(const float* x, int64_t n) {
  const int64_t n16 = n / 16 * 16;
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512i at = _mm512_setzero_si512();
  __m512i cur = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  for (int64_t i = 0; i < n16; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __mmask16 k = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ);  // false for a NaN
    m = _mm512_mask_mov_ps(m, k, v);
    at = _mm512_mask_mov_epi32(at, k, cur);
    cur = _mm512_add_epi32(cur, step);
  }
  float best = -std::numeric_limits<float>::infinity();
  int64_t index = 0;
  if (n16 > 0) {
    best = _mm512_reduce_max_ps(m);
    index = _mm512_mask_reduce_min_epi32(_mm512_cmp_ps_mask(m, _mm512_set1_ps(best), _CMP_EQ_OQ), at);
  }
  for (int64_t i = n16; i < n; ++i) {
    if (x[i] > best) {
      best = x[i];
      index = i;
    }
  }
  return index;
}

}  // namespace sigma::avx512
