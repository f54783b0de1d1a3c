// The decode step of a dense model in one call (docs/decode.md#the-native-dense-step):
// src/models/decode-step.ts's runRows for a model without MoE layers, the
// same kernels in the same order, with no return to JavaScript between them.
// Plain C++, no Node-API types; native/src/napi/dense_napi.cpp checks every
// pointer and size before it gets here.
//
// On a small model (a speculative draft) a step is two dozen kernel calls of
// a microsecond or two each, and the calls' own cost — crossing into the
// addon, checking arguments, the JavaScript between them — was most of the
// step. Here it is paid once per step.
#pragma once
#include <cstdint>
#include <vector>

#include "quant.h"

namespace sigma {

struct DenseDims {
  int64_t V = 0, C = 0, S = 1;    // vocabulary, width, embedding slots
  int64_t H = 0, G = 0, D = 0;    // query heads, key/value heads, head size
  int64_t F = 0;                  // FFN hidden width
  bool rms = false;               // RMSNorm (else LayerNorm: gammas and betas)
  bool rope = false;              // rotary positions (else a learned position table added to the embeddings)
  bool swiglu = false;            // SwiGLU FFN: fc1 holds the gate and up projections stacked (2F rows)
  DecodeAct act = DecodeAct::kFastGelu;  // the GeLU FFN's activation
  float eps = 1e-5f;              // every norm's
  double theta = 10000;           // rotary base
};

// One block's weights. The query layer (PanGu's last block) takes its
// queries from `query_rows` through q and its keys and values from the
// normed stream through kv; the others take all three from the normed
// stream through kv, whose rows are then q's, k's and v's stacked.
struct DenseBlock {
  const float* ln1_g = nullptr;
  const float* ln1_b = nullptr;
  QuantMatrix kv;               // [(H + 2G)·D, C], or [2G·D, C] in the query layer
  const float* kv_bias = nullptr;
  QuantMatrix q;                // the query layer's [H·D, C]
  const float* q_bias = nullptr;
  const float* qn_g = nullptr;  // per-head RMSNorm of q and of k (qkNorm), or null
  const float* kn_g = nullptr;
  QuantMatrix o;                // [C, H·D]
  const float* o_bias = nullptr;
  const float* ln2_g = nullptr;
  const float* ln2_b = nullptr;
  QuantMatrix fc1;              // [F or 2F, C]
  const float* fc1_bias = nullptr;
  QuantMatrix fc2;              // [C, F]
  const float* fc2_bias = nullptr;
  float* k_cache = nullptr;     // [B, cap, G·D]
  float* v_cache = nullptr;
  bool query = false;
};

// One step's rows: R = B·T new positions, B sequences of T, appended to every
// block's cache at `length` (capacity `cap` positions).
struct DenseRun {
  const int32_t* embed = nullptr;  // [R] rows of the token table (slot·V + token)
  const int32_t* slot = nullptr;   // [R]
  const int32_t* pos = nullptr;    // [R]
  int64_t B = 1, T = 1, length = 0, cap = 0;
  const int32_t* pick = nullptr;   // [P] the rows whose logits are wanted, in that order
  int64_t P = 0;
  float* logits = nullptr;         // [P, V]
  QuantMatrix table;               // the output matrix [S·V, C]
  const float* token_rows = nullptr;   // untied: the f32 token table [S·V, C]; tied: null (rows of `table`)
  const float* pos_table = nullptr;    // learned positions [seqLen, C], or null
  const float* query_table = nullptr;  // the query layer's position queries [seqLen, C], or null
  const float* final_g = nullptr;
  const float* final_b = nullptr;
};

// Buffers reused from step to step (grown to the largest step seen).
struct DenseScratch {
  std::vector<float> h, x, tmp, kv, q, k, v, att, stat, lse, f, g, u, rows;
  std::vector<int32_t> offsets, fill, order;
};

// Runs the step: logits of the picked rows, and the new rows' keys and
// values written into every block's cache (the caller advances the lengths).
// `blocks` in order, the query layer (if any) last, after the final norm.
void dense_step(const DenseDims& d, const DenseBlock* blocks, int64_t L, const DenseRun& run, DenseScratch& s);

}  // namespace sigma
