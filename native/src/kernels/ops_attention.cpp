// Fused causal attention. Per (batch, head) and query, the scores against the
// visible keys are held in a per-thread scratch row of Tk floats (linear in
// the sequence, never a [Tq, Tk] matrix); the backward recomputes them from q,
// k and the saved log-sum-exp. Work is split over (b, h) pairs: each pair owns
// its slices of dq, dk and dv, so the backward has no races.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops.h"
#include "simd.h"
#include "threadpool.h"
#include "vec.h"

namespace sigma {
namespace {

struct Layout {
  int64_t B, Tq, Tk, H, D, cap;
  int64_t q(int64_t b, int64_t i, int64_t h) const { return ((b * Tq + i) * H + h) * D; }
  int64_t kv(int64_t b, int64_t j, int64_t h) const { return ((b * cap + j) * H + h) * D; }
};

}  // namespace

void attention(float* out, float* lse, const float* q, const float* k, const float* v, int64_t B, int64_t Tq,
               int64_t Tk, int64_t H, int64_t D, int64_t kv_cap, float scale) {
  const Layout L{B, Tq, Tk, H, D, kv_cap};
  parallel_for(B * H * Tq, 16, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> s;
    s.resize(static_cast<size_t>(Tk));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bh = t / Tq, i = t % Tq, b = bh / H, h = bh % H;
      const int64_t last = Tk - Tq + i;
      const float* qi = q + L.q(b, i, h);
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j <= last; ++j) {
        s[j] = scale * vdot(qi, k + L.kv(b, j, h), D);
        m = std::max(m, s[j]);
      }
      float sum = 0;
      for (int64_t j = 0; j <= last; ++j) {
        s[j] = fast_expf(s[j] - m);
        sum += s[j];
      }
      float* o = out + L.q(b, i, h);
      std::fill(o, o + D, 0.f);
      const float inv = 1.f / sum;
      for (int64_t j = 0; j <= last; ++j) vaxpy(o, v + L.kv(b, j, h), s[j] * inv, D);
      lse[bh * Tq + i] = m + std::log(sum);
    }
  });
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, int64_t B, int64_t Tq, int64_t Tk,
                        int64_t H, int64_t D, int64_t kv_cap, float scale) {
  const Layout L{B, Tq, Tk, H, D, kv_cap};
  parallel_for(B * H, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t bh = p0; bh < p1; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t qo = L.q(b, i, h);
        const float* qi = q + qo;
        const float* gi = dout + qo;
        const float l = lse[bh * Tq + i];
        const float delta = vdot(gi, out + qo, D);  // Σ_j p_j·(dout·v_j)
        for (int64_t j = 0; j <= Tk - Tq + i; ++j) {
          const int64_t ko = L.kv(b, j, h);
          const float p = fast_expf(scale * vdot(qi, k + ko, D) - l);
          const float ds = p * (vdot(gi, v + ko, D) - delta) * scale;
          vaxpy(dv + ko, gi, p, D);
          vaxpy(dq + qo, k + ko, ds, D);
          vaxpy(dk + ko, qi, ds, D);
        }
      }
    }
  });
}

}  // namespace sigma
