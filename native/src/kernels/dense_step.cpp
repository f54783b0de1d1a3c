// The decode step of a dense model in one call (dense_step.h): the blocks of
// src/models/decode-step.ts's runRows, op for op on the same kernels
// (decode_matmul with its epilogue, layer_norm / rms_norm, attention,
// swiglu), so its logits are the TypeScript step's. Read top to bottom: the
// embeddings, each block (attention, then the FFN), the final norm, the
// query layer, the logits of the picked rows.
#include "dense_step.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops.h"

namespace sigma {
namespace {

template <typename T>
void grow(std::vector<T>& v, int64_t n) {
  if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
}

// Every buffer at its size for R rows and P picked ones, before any pointer into them is taken.
void prepare(const DenseDims& d, int64_t R, int64_t P, DenseScratch& s) {
  const int64_t HD = d.H * d.D, W = d.G * d.D;
  for (auto* v : {&s.h, &s.x, &s.tmp}) grow(*v, R * d.C);
  grow(s.kv, R * std::max((d.H + 2 * d.G) * d.D, 2 * d.F));
  grow(s.q, R * HD);
  grow(s.k, R * W);
  grow(s.v, R * W);
  grow(s.att, R * std::max(d.H, d.G) * d.D);
  grow(s.stat, 2 * R * std::max<int64_t>({1, d.H, d.G}));
  grow(s.lse, R * d.H);
  grow(s.f, std::max(R * d.F, P * d.V));
  grow(s.g, R * d.F);
  grow(s.u, R * d.F);
  grow(s.rows, std::max(R, P) * d.C);
  grow(s.offsets, d.S + 1);
  grow(s.fill, d.S);
  grow(s.order, P);
}

void norm(const DenseDims& d, float* y, float* stat, const float* x, const float* g, const float* b, int64_t rows) {
  if (d.rms) {
    rms_norm(y, stat, x, g, rows, d.C, d.eps);
  } else {
    layer_norm(y, stat, stat + rows, x, g, b, rows, d.C, d.eps);
  }
}

// y [R, N] = x [R, K] · wᵀ (+ bias, activation, residual += y): one expert, every row.
void product(const QuantMatrix& w, float* y, const float* x, int64_t R, int64_t N, int64_t K, const float* bias,
             DecodeAct act = DecodeAct::kNone, float* residual = nullptr) {
  const int32_t offsets[2] = {0, static_cast<int32_t>(R)};
  DecodeEpilogue ep;
  ep.bias = bias;
  ep.act = act;
  ep.residual = residual;
  decode_matmul(w, y, x, offsets, 1, N, K, &ep);
}

// Each row's `heads` heads of D: the per-head RMSNorm (when g), then the
// rotation by the row's position (when rope) — decode-step.ts's turn().
void turn(const DenseDims& d, float* y, const float* g, int64_t R, int64_t heads, const DenseRun& run, DenseScratch& s) {
  const int64_t D = d.D;
  if (g) {
    float* normed = s.att.data();
    rms_norm(normed, s.stat.data(), y, g, R * heads, D, d.eps);
    std::memcpy(y, normed, sizeof(float) * R * heads * D);
  }
  if (!d.rope) return;
  const int64_t half = D / 2;
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(run.pos[r]) * std::pow(d.theta, (-2.0 * static_cast<double>(i)) / static_cast<double>(D));
      const double c = std::cos(a), sn = std::sin(a);
      for (int64_t h = 0; h < heads; ++h) {
        float* o = y + (r * heads + h) * D;
        const double x0 = o[i], x1 = o[i + half];
        o[i] = static_cast<float>(x0 * c - x1 * sn);
        o[i + half] = static_cast<float>(x1 * c + x0 * sn);
      }
    }
  }
}

// h += attention's output (after o) for the rows in x (queries from `queries`
// in the query layer), the new keys and values appended to the block's cache.
void attend(const DenseDims& d, const DenseBlock& b, float* h, const float* x, const float* queries, const DenseRun& run,
            DenseScratch& s) {
  const int64_t R = run.B * run.T, C = d.C, H = d.H, G = d.G, D = d.D, W = G * D;
  float* q = s.q.data();
  float* k = s.k.data();
  float* v = s.v.data();
  // The stacked product, then its parts (q|k|v, or k|v in the query layer) row by row.
  const int64_t lead = b.query ? 0 : H * D, N = lead + 2 * W;
  float* y = s.kv.data();
  product(b.kv, y, x, R, N, C, b.kv_bias);
  for (int64_t r = 0; r < R; ++r) {
    const float* row = y + r * N;
    if (!b.query) std::memcpy(q + r * H * D, row, sizeof(float) * H * D);
    std::memcpy(k + r * W, row + lead, sizeof(float) * W);
    std::memcpy(v + r * W, row + lead + W, sizeof(float) * W);
  }
  if (b.query) product(b.q, q, queries, R, H * D, C, b.q_bias);
  turn(d, q, b.qn_g, R, H, run, s);
  turn(d, k, b.kn_g, R, G, run, s);
  for (int64_t i = 0; i < run.B; ++i) {
    const int64_t at = (i * run.cap + run.length) * W;
    std::memcpy(b.k_cache + at, k + i * run.T * W, sizeof(float) * run.T * W);
    std::memcpy(b.v_cache + at, v + i * run.T * W, sizeof(float) * run.T * W);
  }
  float* att = s.att.data();
  attention(att, s.lse.data(), q, b.k_cache, b.v_cache, run.B, run.T, run.length + run.T, H, D, run.cap,
            static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))), G);
  product(b.o, s.tmp.data(), att, R, C, H * D, b.o_bias, DecodeAct::kNone, h);
}

// h += the FFN of x.
void ffn(const DenseDims& d, const DenseBlock& b, float* h, const float* x, int64_t R, DenseScratch& s) {
  const int64_t C = d.C, F = d.F;
  float* hid = s.f.data();
  if (d.swiglu) {
    float* y = s.kv.data();
    product(b.fc1, y, x, R, 2 * F, C, b.fc1_bias);
    float* g = s.g.data();
    float* u = s.u.data();
    for (int64_t r = 0; r < R; ++r) {
      std::memcpy(g + r * F, y + r * 2 * F, sizeof(float) * F);
      std::memcpy(u + r * F, y + r * 2 * F + F, sizeof(float) * F);
    }
    swiglu(hid, g, u, R * F);
  } else {
    product(b.fc1, hid, x, R, F, C, b.fc1_bias, d.act);
  }
  product(b.fc2, s.tmp.data(), hid, R, C, F, b.fc2_bias, DecodeAct::kNone, h);
}

}  // namespace

void dense_step(const DenseDims& d, const DenseBlock* blocks, int64_t L, const DenseRun& run, DenseScratch& s) {
  const int64_t R = run.B * run.T, C = d.C, V = d.V;
  prepare(d, R, run.P, s);
  float* h = s.h.data();
  float* x = s.x.data();
  float* stat = s.stat.data();
  // h = the token's embedding (+ its position's).
  for (int64_t r = 0; r < R; ++r) {
    float* row = h + r * C;
    if (run.token_rows) {
      std::memcpy(row, run.token_rows + static_cast<int64_t>(run.embed[r]) * C, sizeof(float) * C);
    } else {
      dequantize(quant_offset_rows(run.table, C, run.embed[r]), row, 1, C);
    }
    if (run.pos_table) add(row, row, run.pos_table + static_cast<int64_t>(run.pos[r]) * C, C);
  }
  int64_t l = 0;
  for (; l < L && !blocks[l].query; ++l) {
    const DenseBlock& b = blocks[l];
    norm(d, x, stat, h, b.ln1_g, b.ln1_b, R);
    attend(d, b, h, x, x, run, s);
    norm(d, x, stat, h, b.ln2_g, b.ln2_b, R);
    ffn(d, b, h, x, R, s);
  }
  float* tmp = s.tmp.data();
  norm(d, tmp, stat, h, run.final_g, run.final_b, R);
  std::memcpy(h, tmp, sizeof(float) * R * C);
  if (l < L) {
    // The query layer: queries from the position table, keys and values from the normed stream.
    const DenseBlock& b = blocks[l];
    float* queries = s.rows.data();
    for (int64_t r = 0; r < R; ++r) std::memcpy(queries + r * C, run.query_table + static_cast<int64_t>(run.pos[r]) * C, sizeof(float) * C);
    norm(d, x, stat, h, b.ln1_g, b.ln1_b, R);
    attend(d, b, h, x, queries, run, s);
    norm(d, x, stat, h, b.ln2_g, b.ln2_b, R);
    ffn(d, b, h, x, R, s);
  }
  // The picked rows' logits, grouped by slot (one product over the slots' tables), back in pick order.
  const int64_t P = run.P, S = d.S;
  float* xs = s.rows.data();
  int32_t* offsets = s.offsets.data();
  std::fill(offsets, offsets + S + 1, 0);
  for (int64_t p = 0; p < P; ++p) offsets[run.slot[run.pick[p]] + 1]++;
  for (int64_t i = 0; i < S; ++i) offsets[i + 1] += offsets[i];
  bool in_order = true;
  for (int64_t p = 1; p < P && in_order; ++p) in_order = run.slot[run.pick[p - 1]] <= run.slot[run.pick[p]];
  int32_t* fill = s.fill.data();
  std::copy(offsets, offsets + S, fill);
  for (int64_t p = 0; p < P; ++p) {
    const int32_t r = run.pick[p];
    const int32_t at = in_order ? static_cast<int32_t>(p) : fill[run.slot[r]]++;
    s.order[p] = at;
    std::memcpy(xs + static_cast<int64_t>(at) * C, h + static_cast<int64_t>(r) * C, sizeof(float) * C);
  }
  float* out = in_order ? run.logits : s.f.data();
  decode_matmul(run.table, out, xs, offsets, S, V, C, nullptr);
  if (!in_order) {
    for (int64_t p = 0; p < P; ++p) std::memcpy(run.logits + p * V, out + static_cast<int64_t>(s.order[p]) * V, sizeof(float) * V);
  }
}

}  // namespace sigma
