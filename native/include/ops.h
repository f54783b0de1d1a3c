// Every kernel except the matrix products, plain C++ (no Node-API types).
// Names, layouts and semantics follow src/backend/backend.ts exactly: outputs
// first; forward kernels overwrite, backward kernels add into their gradients.
// Callers (the Node-API wrappers) have checked sizes and index ranges.
#pragma once
#include <cstdint>

namespace sigma {

// ---- elementwise (n elements)
void add_bias(float* y, const float* x, const float* bias, int64_t rows, int64_t cols);
void add_bias_backward(float* dbias, const float* dy, int64_t rows, int64_t cols);
void add(float* out, const float* a, const float* b, int64_t n);
void mul(float* out, const float* a, const float* b, int64_t n);
void scale(float* out, const float* x, float alpha, int64_t n);
void axpy(float* y, const float* x, float alpha, int64_t n);
double sum_squares(const float* x, int64_t n);
// The same on the calling thread only (for kernels already inside a parallel region).
double sum_squares_serial(const float* x, int64_t n);
void gelu(float* y, const float* x, int64_t n);
void gelu_backward(float* dx, const float* x, const float* dy, int64_t n);
void fast_gelu(float* y, const float* x, int64_t n);
// On the calling thread only (for kernels that finish their own outputs: the decode epilogue).
void add_serial(float* o, const float* a, const float* b, int64_t n);
void gelu_serial(float* y, const float* x, int64_t n);
void fast_gelu_serial(float* y, const float* x, int64_t n);
void fast_gelu_backward(float* dx, const float* x, const float* dy, int64_t n);
// SwiGLU's gated product y = SiLU(g)·u, and dg += dy·u·SiLU'(g), du += dy·SiLU(g).
void swiglu(float* y, const float* g, const float* u, int64_t n);
void swiglu_backward(float* dg, float* du, const float* dy, const float* g, const float* u, int64_t n);
// grad_scale multiplies every gradient first (gradient clipping folded into the step).
void adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2, float eps,
           float weight_decay, int64_t step, float grad_scale);
// One AdamW step for each of E experts in one call (ECSS's sparse step): expert e's
// payload[e] holds params [P] | m [P] | v [P], grad[e] its gradient [P], steps[e]
// its step count; weight decay on the first `decayed` values, none after. Each
// element is computed exactly as adamw computes it.
void adamw_experts(float* const* payload, const float* const* grad, const int32_t* steps, int64_t E, int64_t P,
                   int64_t decayed, float lr, float beta1, float beta2, float eps, float weight_decay, float grad_scale);

// ---- rows: layer norm [rows,C], softmax [rows,cols], cross-entropy [rows,V]
void layer_norm(float* y, float* mean, float* rstd, const float* x, const float* gamma, const float* beta, int64_t rows,
                int64_t C, float eps);
void layer_norm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x, const float* mean,
                         const float* rstd, const float* gamma, int64_t rows, int64_t C);
// RMSNorm: y = x·rstd·gamma, rstd = 1/sqrt(mean(x²) + eps) saved per row.
void rms_norm(float* y, float* rstd, const float* x, const float* gamma, int64_t rows, int64_t C, float eps);
void rms_norm_backward(float* dx, float* dgamma, const float* dy, const float* x, const float* rstd, const float* gamma,
                       int64_t rows, int64_t C);
void softmax(float* y, const float* x, int64_t rows, int64_t cols);
// out[r] = the index of row r's largest element, the first of equals, NaNs passed over (a NaN first element: 0):
// what a scan keeping i when x[i] > x[best] gives (src/serve/sampling.ts's argmax). One thread: rows are few.
void argmax_rows(int32_t* out, const float* x, int64_t rows, int64_t cols);
void softmax_backward(float* dx, const float* y, const float* dy, int64_t rows, int64_t cols);
void cross_entropy(float* loss, float* lse, const float* logits, const int32_t* targets, int64_t rows, int64_t V,
                   int32_t ignore);
void cross_entropy_backward(float* dlogits, const float* logits, const float* lse, const int32_t* targets,
                            const float* dloss, int64_t rows, int64_t V, int32_t ignore);

// ---- gathers and scatters: x, out [*, C] rows
void gather_rows(float* out, const float* x, const int32_t* idx, int64_t n, int64_t C);
void scatter_add_rows(float* out, const float* x, const int32_t* idx, int64_t n, int64_t C);
void combine(float* y, const float* x, const int32_t* idx, const float* w, int64_t n, int64_t C);
void combine_backward(float* dx, float* dw, const float* dy, const float* x, const int32_t* idx, const float* w,
                      int64_t n, int64_t C);
void permute_by_expert(int32_t* order, int32_t* offsets, const int32_t* expert_ids, int64_t n, int64_t E);

// ---- attention: q, out [B,Tq,H,D]; k, v [B,kvCap,G,D] (G = kv_heads, dividing H; 0: G = H);
// lse [B,H,Tq]. Query head h reads key/value head h / (H/G) (grouped-query
// attention, read in place: no repeated copy). The backward takes G = H.
void attention(float* out, float* lse, const float* q, const float* k, const float* v, int64_t B, int64_t Tq,
               int64_t Tk, int64_t H, int64_t D, int64_t kv_cap, float scale, int64_t kv_heads = 0);
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, int64_t B, int64_t Tq, int64_t Tk,
                        int64_t H, int64_t D, int64_t kv_cap, float scale);
// attention over an f16 cache: k, v hold f16 bits in attention's layout. Each
// output is bit for bit attention's over the same values as f32: the row path
// (decoding) converts the keys and values it reads a chunk at a time into a
// small f32 buffer and sums them as attention does; the block path (Tq ≥ 16,
// a prompt) converts each sequence's visible keys and values, then runs attention.
void attention_half(float* out, float* lse, const float* q, const uint16_t* k, const uint16_t* v, int64_t B,
                    int64_t Tq, int64_t Tk, int64_t H, int64_t D, int64_t kv_cap, float scale, int64_t kv_heads = 0);

// ---- f16 (ops_half.cpp): dst[i] = src[i] rounded to f16 (nearest, ties to even), and back (exact).
void floats_to_halves(uint16_t* dst, const float* src, int64_t n);
void halves_to_floats(float* dst, const uint16_t* src, int64_t n);
// rows × d halves, `stride` halves apart, into dst [rows, d].
void half_rows_to_floats(float* dst, const uint16_t* src, int64_t stride, int64_t rows, int64_t d);

}  // namespace sigma
