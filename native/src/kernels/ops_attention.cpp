// Fused causal attention, never holding a [Tq, Tk] matrix; the backward
// recomputes the probabilities from q, k and the saved log-sum-exp.
//
// Two paths:
//  - blocks (Tq >= kBlockMin, training and prompt prefill): a block of BQ
//    queries against all the keys it can see is three small matrix products
//    on the GEMM micro-kernel (S = Q·Kᵀ, then O = P·V; the backward adds
//    dP = dO·Vᵀ, dQ += dS·K, dK += dSᵀ·Q, dV += Pᵀ·dO). Scratch is BQ × Tk
//    floats per thread: linear in the sequence. Above the diagonal the block
//    computes scores it then masks (about BQ/2 per row: a fifth more at T = 256, BQ = 48).
//  - rows (few queries, KV-cache decoding): per query, a scratch row of Tk
//    scores and vector dot products; no work is wasted on masked keys.
// The backward splits work over (b, h) pairs: each pair owns its slices of
// dq, dk and dv, so there are no races.
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "gemm.h"
#include "ops.h"
#include "simd.h"
#include "threadpool.h"
#include "vec.h"

namespace sigma {
namespace {

// G key/value heads (G divides H; G = H without grouped-query attention):
// query head h reads key head h / (H/G), and a cache row holds G·D floats.
struct Layout {
  int64_t B, Tq, Tk, H, D, cap, G;
  int64_t q(int64_t b, int64_t i, int64_t h) const { return ((b * Tq + i) * H + h) * D; }
  int64_t kv(int64_t b, int64_t j, int64_t h) const { return ((b * cap + j) * G + h / (H / G)) * D; }
  int64_t kvd() const { return G * D; }  // floats per cache row
};

// The block path's row loop, written so that its AVX2 version vectorises it
// (fast_expf is plain arithmetic); the softmax rows use vec.h.
// From raw scores s and dP = dO·vⱼ: p = exp(scale·s − lse), and in place of
// dP the score gradient dS = p·(dP − delta)·scale.
SIGMA_LOOP void probs_and_dscores_loop(float* p, float* d, float scale, float l, float delta, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    p[i] = fast_expf(scale * p[i] - l);
    d[i] = p[i] * (d[i] - delta) * scale;
  }
}
SIGMA_VERSIONS(probs_and_dscores, probs_and_dscores_loop)

constexpr int64_t kBQ = 48;        // queries per block
constexpr int64_t kBlockMin = 16;  // fewer queries than this take the row path
// Each thread gets at least ~64k multiply-adds (short sequences stay on one thread).
constexpr int64_t kMinWork = int64_t{1} << 16;
// The row path (decoding) splits at a head's worth of work (D = 64 at 64
// positions): a decode step's 8 heads then share the threads. The keys and
// values it reads come from memory (the weights streamed since evicted them),
// so one thread per layer left most of the bandwidth unused.
constexpr int64_t kMinRowWork = int64_t{1} << 12;

// Keys visible to the last query of a block starting at query i0 with mq rows.
inline int64_t visible(const Layout& L, int64_t i0, int64_t mq) { return L.Tk - L.Tq + i0 + mq; }

// The row path (decoding: few queries). A task is one query row and a run of
// query heads: it reads each cached position's keys for the run's key/value
// heads as one contiguous run (the heads side by side, up to G·D floats),
// then the values the same way — a near-sequential stream the prefetchers
// follow, where one task per head read 256 bytes every 2 KiB. Each head's
// numbers are those of a per-head pass (vdot_heads and vaxpy_heads sum each
// head in order of the rows; the max is exact), and a query row's outputs do
// not depend on the other rows of the call. On AVX-512 a score is summed in
// another order than vdot's (vec.h), so the backward, which recomputes the
// scores with vdot, meets the forward's log-sum-exp to rounding, not to the bit. The H query heads
// are split into as few runs as still give every thread two tasks (a run
// may be part of one key/value head's query heads: with one key/value head,
// batch 1 still spreads over the threads).
struct RowSplit {
  int64_t parts;  // runs of query heads per query row (a divisor of H)
  int64_t nh;     // query heads per run
  int64_t rep;    // query heads per key/value head
};
RowSplit row_split(const Layout& L) {
  const int64_t rows = L.B * L.Tq, want = 2 * static_cast<int64_t>(num_threads());
  int64_t parts = 1;
  while (parts < L.H && rows * parts < want) {
    int64_t p = parts + 1;
    while (L.H % p != 0) ++p;  // the next divisor of H
    parts = p;
  }
  return {parts, L.H / parts, L.H / L.G};
}
struct RowTask {
  int64_t b, i, h0, n;  // batch row, query row, first query head, visible keys
  int64_t e0, width;    // h0's place among its key/value head's query heads; floats of a cached row the run reads
};
RowTask row_task(const Layout& L, const RowSplit& S, int64_t t) {
  const int64_t row = t / S.parts, h0 = (t % S.parts) * S.nh;
  const int64_t i = row % L.Tq;
  const int64_t g0 = h0 / S.rep, g1 = (h0 + S.nh - 1) / S.rep;  // the run's key/value heads
  return {row / L.Tq, i, h0, L.Tk - L.Tq + i + 1, h0 % S.rep, (g1 - g0 + 1) * L.D};
}
struct RowScratch {
  std::vector<float> s, m, inv, buf;
};
// Rows read in place from the cache are prefetched this many rows ahead.
constexpr int64_t kRowsAhead = 8;
// One task: `kv(j0, cnt, values)` gives positions j0 … j0 + cnt − 1 of the
// run's keys (or values) as f32 rows (r.width floats from the run's first
// key/value head) and their stride, taken `chunk` rows at a time; `ahead`:
// the rows' prefetch distance (0 for rows the callback already brought into L1).
template <class KV>
void decode_row(const Layout& L, const RowSplit& S, const RowTask& r, const float* q, float* out, float* lse, float scale,
                RowScratch& w, KV&& kv, int64_t chunk, int64_t ahead) {
  const int64_t n = r.n, nh = S.nh, D = L.D;
  w.s.resize(static_cast<size_t>(nh * n));
  w.m.assign(static_cast<size_t>(nh), -INFINITY);
  w.inv.resize(static_cast<size_t>(nh));
  const float* qi = q + L.q(r.b, r.i, r.h0);
  for (int64_t j0 = 0; j0 < n; j0 += chunk) {
    const int64_t cnt = std::min(chunk, n - j0);
    const auto [rows, ld] = kv(j0, cnt, false);
    vdot_heads(w.s.data() + j0, n, w.m.data(), qi, rows, ld, cnt, nh, S.rep, r.e0, D, scale, ahead);
  }
  for (int64_t h = 0; h < nh; ++h) {
    float* sh = w.s.data() + h * n;
    const float sum = vexp_shift(sh, sh, w.m[h], n);
    w.inv[h] = 1.f / sum;
    lse[((r.b * L.H) + r.h0 + h) * L.Tq + r.i] = w.m[h] + std::log(sum);
  }
  float* o = out + L.q(r.b, r.i, r.h0);
  std::fill(o, o + nh * D, 0.f);
  for (int64_t j0 = 0; j0 < n; j0 += chunk) {
    const int64_t cnt = std::min(chunk, n - j0);
    const auto [rows, ld] = kv(j0, cnt, true);
    vaxpy_heads(o, rows, ld, w.s.data() + j0, n, w.inv.data(), cnt, nh, S.rep, r.e0, D, ahead);
  }
}

// Forward of one block of queries [i0, i0+mq) of pair (b, h); s is scratch of mq × n floats.
void attention_block(float* out, float* lse, const float* q, const float* k, const float* v, const Layout& L,
                     int64_t b, int64_t h, int64_t i0, int64_t mq, float scale, float* s) {
  const int64_t HD = L.H * L.D, KD = L.kvd(), n = visible(L, i0, mq), bh = b * L.H + h;
  sgemm_serial(false, true, mq, n, L.D, q + L.q(b, i0, h), HD, k + L.kv(b, 0, h), KD, s, n, false);
  for (int64_t r = 0; r < mq; ++r) {
    float* row = s + r * n;
    const int64_t valid = n - mq + r + 1;
    vscale(row, scale, valid);
    const float m = vmax(row, valid);
    const float sum = vexp_shift(row, row, m, valid);
    vscale(row, 1.f / sum, valid);
    std::fill(row + valid, row + n, 0.f);
    lse[bh * L.Tq + i0 + r] = m + std::log(sum);
  }
  sgemm_serial(false, false, mq, L.D, n, s, n, v + L.kv(b, 0, h), KD, out + L.q(b, i0, h), HD, false);
}

// Backward of one block; p and ds are scratch of mq × n floats each.
void attention_block_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                              const float* v, const float* out, const float* lse, const Layout& L, int64_t b,
                              int64_t h, int64_t i0, int64_t mq, float scale, float* p, float* ds) {
  const int64_t HD = L.H * L.D, n = visible(L, i0, mq), bh = b * L.H + h;
  const float* qb = q + L.q(b, i0, h);
  const float* gb = dout + L.q(b, i0, h);
  const float* kb = k + L.kv(b, 0, h);
  const float* vb = v + L.kv(b, 0, h);
  sgemm_serial(false, true, mq, n, L.D, qb, HD, kb, HD, p, n, false);   // S
  sgemm_serial(false, true, mq, n, L.D, gb, HD, vb, HD, ds, n, false);  // dP = dO·Vᵀ
  for (int64_t r = 0; r < mq; ++r) {
    float* pr = p + r * n;
    float* dr = ds + r * n;
    const int64_t valid = n - mq + r + 1;
    const float l = lse[bh * L.Tq + i0 + r];
    const float delta = vdot(gb + r * HD, out + L.q(b, i0 + r, h), L.D);  // Σ_j p_j·(dO·v_j)
    probs_and_dscores(pr, dr, scale, l, delta, valid);
    std::fill(pr + valid, pr + n, 0.f);
    std::fill(dr + valid, dr + n, 0.f);
  }
  sgemm_serial(false, false, mq, L.D, n, ds, n, kb, HD, dq + L.q(b, i0, h), HD, true);  // dQ += dS·K
  sgemm_serial(true, false, n, L.D, mq, ds, n, qb, HD, dk + L.kv(b, 0, h), HD, true);   // dK += dSᵀ·Q
  sgemm_serial(true, false, n, L.D, mq, p, n, gb, HD, dv + L.kv(b, 0, h), HD, true);    // dV += Pᵀ·dO
}

}  // namespace

void attention(float* out, float* lse, const float* q, const float* k, const float* v, int64_t B, int64_t Tq,
               int64_t Tk, int64_t H, int64_t D, int64_t kv_cap, float scale, int64_t kv_heads) {
  const Layout L{B, Tq, Tk, H, D, kv_cap, kv_heads > 0 ? kv_heads : H};
  if (Tq >= kBlockMin) {
    const int64_t nb = (Tq + kBQ - 1) / kBQ;
    parallel_for(B * H * nb, grain_for(std::min(kBQ, Tq) * Tk * D, kMinWork), [&](int64_t t0, int64_t t1) {
      thread_local std::vector<float> s;
      s.resize(static_cast<size_t>(kBQ * Tk));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t bh = t / nb, i0 = (t % nb) * kBQ;
        attention_block(out, lse, q, k, v, L, bh / H, bh % H, i0, std::min(kBQ, Tq - i0), scale, s.data());
      }
    });
    return;
  }
  const RowSplit S = row_split(L);
  parallel_for(B * Tq * S.parts, grain_for(Tk * D * S.nh, kMinRowWork), [&](int64_t t0, int64_t t1) {
    thread_local RowScratch w;
    for (int64_t t = t0; t < t1; ++t) {
      const RowTask r = row_task(L, S, t);
      // The keys and the values of the task's heads, one run per cached row, read in place.
      decode_row(L, S, r, q, out, lse, scale, w, [&](int64_t j0, int64_t, bool values) -> std::pair<const float*, int64_t> {
        return {(values ? v : k) + L.kv(r.b, j0, r.h0), L.kvd()};
      }, std::numeric_limits<int64_t>::max(), kRowsAhead);
    }
  });
}

void attention_half(float* out, float* lse, const float* q, const uint16_t* k, const uint16_t* v, int64_t B,
                    int64_t Tq, int64_t Tk, int64_t H, int64_t D, int64_t kv_cap, float scale, int64_t kv_heads) {
  const Layout L{B, Tq, Tk, H, D, kv_cap, kv_heads > 0 ? kv_heads : H};
  const int64_t W = L.kvd();
  if (Tq >= kBlockMin) {
    // A prompt: each sequence's visible keys and values as f32 (Tk·W each, grow-only buffers of the
    // calling thread), then the f32 kernel.
    thread_local std::vector<float> kf, vf;
    if (kf.size() < static_cast<size_t>(Tk * W)) kf.resize(static_cast<size_t>(Tk * W)), vf.resize(static_cast<size_t>(Tk * W));
    for (int64_t b = 0; b < B; ++b) {
      halves_to_floats(kf.data(), k + b * kv_cap * W, Tk * W);
      halves_to_floats(vf.data(), v + b * kv_cap * W, Tk * W);
      attention(out + b * Tq * H * D, lse + b * H * Tq, q + b * Tq * H * D, kf.data(), vf.data(), 1, Tq, Tk, H, D, Tk,
                scale, L.G);
    }
    return;
  }
  // Decoding: attention's row path, the task's runs of keys (then values) converted kChunk rows at a time into an f32 buffer.
  constexpr int64_t kChunk = 8;  // 8 rows of a run (8·G·D f32 at most: 16 KiB at config R's width)
  const RowSplit S = row_split(L);
  parallel_for(B * Tq * S.parts, grain_for(Tk * D * S.nh, kMinRowWork), [&](int64_t t0, int64_t t1) {
    thread_local RowScratch w;
    for (int64_t t = t0; t < t1; ++t) {
      const RowTask r = row_task(L, S, t);
      w.buf.resize(static_cast<size_t>(kChunk * r.width));
      decode_row(L, S, r, q, out, lse, scale, w, [&](int64_t j0, int64_t cnt, bool values) -> std::pair<const float*, int64_t> {
        half_rows_to_floats(w.buf.data(), (values ? v : k) + L.kv(r.b, j0, r.h0), W, cnt, r.width);
        return {w.buf.data(), r.width};
      }, kChunk, 0);  // the conversion prefetches the halves; the f32 buffer is in L1
    }
  });
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, int64_t B, int64_t Tq, int64_t Tk,
                        int64_t H, int64_t D, int64_t kv_cap, float scale) {
  const Layout L{B, Tq, Tk, H, D, kv_cap, H};
  if (Tq >= kBlockMin) {
    parallel_for(B * H, grain_for(Tq * Tk * D, kMinWork), [&](int64_t p0, int64_t p1) {
      thread_local std::vector<float> scratch;
      scratch.resize(static_cast<size_t>(2 * kBQ * Tk));
      for (int64_t bh = p0; bh < p1; ++bh)
        for (int64_t i0 = 0; i0 < Tq; i0 += kBQ) {
          const int64_t mq = std::min(kBQ, Tq - i0);
          attention_block_backward(dq, dk, dv, dout, q, k, v, out, lse, L, bh / H, bh % H, i0, mq, scale,
                                   scratch.data(), scratch.data() + mq * visible(L, i0, mq));
        }
    });
    return;
  }
  parallel_for(B * H, grain_for(Tq * Tk * D, kMinWork), [&](int64_t p0, int64_t p1) {
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
