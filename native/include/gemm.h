// Single-precision matrix multiply, plain C++ (no Node-API types).
//
// C[M,N] = op(A)[M,K] · op(B)[K,N]  (or C += … when accumulate), row-major,
// with leading dimensions: A(i,k) is a[i*lda + k] (a[k*lda + i] when transA),
// B(k,j) is b[k*ldb + j] (b[j*ldb + k] when transB), C(i,j) is c[i*ldc + j].
//
// Blocked GotoBLAS-style: B is packed into KC×NR micro-panels, A into MR×KC
// micro-panels, and a register-tiled MR×NR micro-kernel (AVX2+FMA when the CPU
// has it, portable C++ otherwise) does the FMAs. Packing buffers are
// per-thread and grow once; the kernels allocate nothing per call after that.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cpu.h"

namespace sigma {

// One product on the calling thread (used inside a parallel region).
void sgemm_serial(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
                  const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate);

// One product, split over the kernel threads.
void sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b,
           int64_t ldb, float* c, int64_t ldc, bool accumulate);

// `batch` products over contiguous slabs (strides M*K, K*N, M*N).
void sgemm_batched(bool transA, bool transB, int64_t batch, int64_t M, int64_t N, int64_t K, const float* a,
                   const float* b, float* c, bool accumulate);

// Grouped product over stacked weights: rows offsets[e]..offsets[e+1] of x [R,K]
// times W[e] (w [E,N,K] when transW, else [E,K,N]) into y [R,N].
void grouped_gemm(float* y, const float* x, const float* w, const int32_t* offsets, int64_t E, int64_t N, int64_t K,
                  bool transW, bool accumulate);

// Its weight gradient: dw[e] (+)= dy_eᵀ·x_e  ([E,N,K], transW) or x_eᵀ·dy_e ([E,K,N]).
void grouped_gemm_weight_grad(float* dw, const float* dy, const float* x, const int32_t* offsets, int64_t E, int64_t N,
                              int64_t K, bool transW, bool accumulate);

// The same two with each expert's matrix (and gradient) at its own address
// (w[e], dw[e]: N·K floats each), e.g. records of an expert store, not stacked.
void grouped_gemm_parts(float* y, const float* x, const float* const* w, const int32_t* offsets, int64_t E, int64_t N,
                        int64_t K, bool transW, bool accumulate);
void grouped_gemm_weight_grad_parts(float* const* dw, const float* dy, const float* x, const int32_t* offsets, int64_t E,
                                    int64_t N, int64_t K, bool transW, bool accumulate);

// The weight gradients (stacked or in parts) that also return Σ dW² over every
// expert's gradient as it stands after the call, summed as it is written.
double grouped_gemm_weight_grad_squares(float* dw, const float* dy, const float* x, const int32_t* offsets, int64_t E,
                                        int64_t N, int64_t K, bool transW, bool accumulate);
double grouped_gemm_weight_grad_parts_squares(float* const* dw, const float* dy, const float* x, const int32_t* offsets,
                                              int64_t E, int64_t N, int64_t K, bool transW, bool accumulate);

// The grouped products' schedule of experts over nt threads: whole experts
// per thread (largest first, to the least loaded) when that balances, else
// every thread on its slice of each expert. Runs one(e, t, n): t of n is the
// slice of expert e to compute (0 of 1 for a whole expert). Shared with the
// bf16 products (gemm_bf16.cpp).
void for_each_expert(const int32_t* offsets, int64_t E, int nt, const std::function<void(int64_t, int, int)>& one);

// ---- Tiles and cache blocking (gemm_config.cpp) ----

// The blocked path's loop sizes: rows of A per block (MC), depth per block
// (KC), columns of B per block (NC). 0 in an override means "from the rule".
struct GemmBlocking {
  int64_t mc = 0, kc = 0, nc = 0;
};
// Blocking derived from cache sizes for an MR×NR tile, by the rule stated in
// gemm_config.cpp (sizes of 0 take that rule's defaults), for packed elements
// of `elem_bytes` bytes (4: f32; 2: the bf16 driver's).
GemmBlocking gemm_blocking_rule(const CpuInfo& cpu, int mr, int nr, int elem_bytes = 4);

// A registered tile, as the addon lists it.
struct GemmTileDesc {
  std::string name;
  int mr, nr;
  std::string isa;  // the kernel path it needs: "avx512", "avx2-fma" or "portable"
  bool runnable;    // this CPU has that ISA
};
std::vector<GemmTileDesc> gemm_tiles();

// What the blocked path uses now for products of depth K on `threads`
// threads, and whether each part is an override or tuned.
struct GemmSettings {
  std::string tile;
  int mr = 0, nr = 0;
  GemmBlocking blocking;
  bool tile_override = false, blocking_override = false, blocked_only = false;
  bool tuned = false;  // the tile and blocking are the tuner's (no override, tuning for this path)
  int64_t small_m_nt = 0, small_m_nn = 0;
};
GemmSettings gemm_settings(int64_t K, int threads);

// Overrides for tests and tuning: tile "" (or "auto") for the default one,
// blocking fields of 0 for the rule's, blocked_only to send every product
// through the blocked path. Returns false with a message for a tile that is
// unknown or that this CPU cannot run. Process-wide; a product already
// running keeps the settings it started with.
bool set_gemm_override(const std::string& tile, GemmBlocking blocking, bool blocked_only, std::string* error);

// The tuner's choice (set from its cache file when the addon loads; see
// gemm_config.cpp): for products on one thread and on several, a tile and
// blocking per shape class, and how many rows still take the small-M paths.
// Applied only while the kernel path is the one it was tuned on, and below
// any override.
struct GemmChoice {
  std::string tile;
  GemmBlocking blocking;
};
struct GemmTunedThreads {
  GemmChoice large;     // blocked products with K > kGemmShortK
  GemmChoice short_k;   // blocked products with K ≤ kGemmShortK (an expert's weight gradient)
  int64_t small_m_nt = 0;  // op(A)·Bᵀ with at most this many rows: the small-M path (else blocked)
  int64_t small_m_nn = 0;  // op(A)·B likewise
};
struct GemmTuning {
  std::string path;  // the kernel path it was measured on ("avx512", "avx2-fma", "portable")
  GemmTunedThreads one, many;  // products on one thread, on several
};
constexpr int64_t kGemmShortK = 256;
constexpr int64_t kGemmSmallMMax = 96;  // the small-M paths' limit (and the rule's threshold)
// Sets the tuning (nullptr clears it). Returns false with a message for a
// tile that is unknown or that this CPU cannot run, or an unknown path.
bool set_gemm_tuning(const GemmTuning* tuning, std::string* error);
// The tuning set now (false when none).
bool gemm_tuning(GemmTuning* out);

// Benchmark helper: `iters` rounds of 12 independent 8-wide FMA chains per
// thread on `threads` threads (192 FLOPs per round per thread). Returns seconds.
double fma_peak_seconds(int64_t iters, int threads);
constexpr int kFmaPeakFlopsPerIter = 12 * 8 * 2;

}  // namespace sigma
