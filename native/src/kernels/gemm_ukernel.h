// The micro-kernel interface shared by gemm.cpp, gemm_config.cpp and the
// per-ISA kernel files.
//
// Every register tile has one signature (MicroKernelFn): C[mr,nr] (+)= A·B over
// kc steps of k, where
//   A[i,k] = A[i·a_rs + k·a_ks]  (a packed MR-row panel is a_rs = 1, a_ks = MR;
//                                 rows of a row-major matrix read in place are
//                                 a_rs = lda, a_ks = 1),
//   B[k,j] = B[k·ldb + j]        (a packed NR-column panel, ldb = NR, all NR
//                                 columns readable, zero past the edge),
// and only the top-left mr×nr corner of C is written (edge tiles); rows
// i >= mr of A are not used. accumulate: add into C instead of overwriting.
// The tiles themselves, their sizes and which ISA each needs are listed once,
// in gemm_config.cpp's table.
#pragma once
#include <cstdint>

#include "cpu.h"

namespace sigma {

// The 6×16 tile's sizes: the small-M path (gemm.cpp) and the packing helpers
// below are written for it, whichever tile the blocked path uses.
constexpr int kMR = 6;   // rows of the 6×16 tile
constexpr int kNR = 16;  // its columns (two 8-float vectors, or one zmm)

using MicroKernelFn = void (*)(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb,
                               float* C, int64_t ldc, int mr, int nr, bool accumulate);

// One registered tile: its name ("avx512-12x32"), MR×NR, the kernel path it
// needs, whether it reads A's rows in place (else the driver packs A into
// MR-row panels first), and the kernel.
struct MicroKernel {
  const char* name;
  int mr, nr;
  KernelPath isa;
  bool in_place_a;
  MicroKernelFn run;
};

// The 6×16 tile in plain C++ (any CPU); packed or strided operands alike.
void ukernel_portable(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb, float* C,
                      int64_t ldc, int mr, int nr, bool accumulate);
// The 6×16 AVX2 tile (gemm_avx2.cpp).
void ukernel_avx2_direct(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb,
                         float* C, int64_t ldc, int mr, int nr, bool accumulate);
// Row i of an A tile with mr valid rows, for the tiles above: missing rows
// re-read row 0 (their results are never written).
inline const float* tile_row(const float* A, int64_t a_rs, int mr, int i) { return A + (mr > i ? i * a_rs : 0); }
double fma_chains_avx2(int64_t iters);
// The same tile on AVX-512 (gemm_avx512.cpp): same arguments, same panels.
void ukernel_avx512_direct(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb,
                           float* C, int64_t ldc, int mr, int nr, bool accumulate);
// The wide AVX-512 tiles (gemm_avx512_wide.cpp): MR×32 in 2·MR zmm
// accumulators, MR = 8, 12, 14. Fastest on a packed A panel (a_rs = 1,
// a_ks = MR); any strides work.
void ukernel_avx512_8x32(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb, float* C,
                         int64_t ldc, int mr, int nr, bool accumulate);
void ukernel_avx512_14x32(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb,
                          float* C, int64_t ldc, int mr, int nr, bool accumulate);
void ukernel_avx512_12x32(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb,
                          float* C, int64_t ldc, int mr, int nr, bool accumulate);
// The 4×24 AVX2 tile (gemm_avx2_4x24.cpp): 12 ymm accumulators, three
// vectors of B and four broadcasts per k; strided A like the 6×16 tile.
void ukernel_avx2_4x24(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb, float* C,
                       int64_t ldc, int mr, int nr, bool accumulate);
// FMA chains for the peak probe: the FLOPs of fma_chains_avx2(iters), in zmm.
double fma_chains_avx512(int64_t iters);
// Packs 16 columns of a transposed B (16 rows of b, ldb apart, k = 0..kc-1
// each) into dst[k·ldd + 0..15] with 8×8 in-register transposes (ldd = 16 for
// a 16-column panel, 32 for either half of a 32-column one). dst and ldd
// keep every row 32-byte aligned.
void pack_b_trans_avx2(float* dst, int64_t ldd, const float* b, int64_t ldb, int64_t kc);
// C[j·ldc + i] (+)= t[i·16 + j] for i < rows, j < cols ≤ 16: a block of Cᵀ
// computed into a [rows][16] scratch, added into C, 8×8 blocks at a time.
void add_transposed_avx2(float* c, int64_t ldc, const float* t, int64_t rows, int64_t cols, bool accumulate);
// Packs one full MR-row panel of a row-major A (rows lda apart, k = 0..kc-1)
// into dst[kc][6] with in-register transposes. Writes two floats past
// dst[kc·6 − 1] (zeros), so the buffer needs that slack.
void pack_a_avx2(float* dst, const float* a, int64_t lda, int64_t kc);
// Packs an MR-row panel of a row-major A (mr ≤ MR rows lda apart, k =
// 0..kc-1) into dst[kc][MR], zero in rows mr..MR-1, with 8×8 in-register
// transposes: any MR (the 6-row panel has pack_a_avx2 above).
void pack_a_rows_avx2(float* dst, int MR, int mr, const float* a, int64_t lda, int64_t kc);
// The same panel with 16×16 transposes in zmm registers (gemm_pack_avx512.cpp),
// for MR = 8, 12 and 14; false (nothing written) for any other MR.
bool pack_a_rows_avx512(float* dst, int MR, int mr, const float* a, int64_t lda, int64_t kc);
// pack_b_trans_avx2 for 8 columns (the last third of a 24-column panel).
void pack_b_trans8_avx2(float* dst, int64_t ldd, const float* b, int64_t ldb, int64_t kc);
double fma_chains_portable(int64_t iters);

// The tile and blocking the blocked GEMM uses now (gemm_config.cpp): the
// override if one is set (and its tile runs on the current kernel path), else
// the default tile for this CPU and path with blocking from the cache sizes.
struct GemmPlan {
  const MicroKernel* tile;
  int64_t mc, kc, nc;
  bool blocked_only;  // tests: every product takes the blocked path (no thin, small-M or row-vector path)
  int64_t small_m_nt, small_m_nn;  // rows up to which op(A)·Bᵀ / op(A)·B take the small-M path
};
// The plan for a product of depth K run on `threads` threads (the tuning
// differs by shape class and by one thread or several).
GemmPlan gemm_plan(int64_t K, int threads);

// Thin products (gemm_thin_avx2.cpp), read in place, no packing:
// C[M,N] (+)= A[M,K]·B[N,K]ᵀ with A's rows lda apart — for few rows of A.
void gemm_thin_rows_bt_avx2(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb,
                            float* c, int64_t ldc, bool accumulate);
// The same for up to kRowsBT rows with AVX-512 (gemm_small_m_bt_avx512.cpp):
// B read once, 4×4 dot-product tiles in zmm registers.
void gemm_small_m_bt_avx512(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb,
                            float* c, int64_t ldc, bool accumulate);
// C[M,N] (+)= A·B[K,N] with A[i,k] = a[i·a_rs + k·a_ks], eight k at a time:
// each row of C is a sum of rows of B — for few rows of A or a short K.
// With sq, Σ C² (C as it stands after the call) is added into *sq.
void gemm_thin_axpy_avx2(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_ks, const float* b,
                         int64_t ldb, float* c, int64_t ldc, bool accumulate, double* sq = nullptr);

// C[M,N] (+)= op(A)·B[K,N] for few rows of op(A) (gemm_small_m_avx2.cpp): B is
// read once, in place. ap holds op(A) in groups of six k: ap[g][m][i] =
// op(A)[m, 6g + i], zero past K. t is scratch for M×16 floats, 32-byte aligned.
void gemm_small_m_kn_avx2(int64_t M, int64_t N, int64_t K, const float* ap, const float* b, int64_t ldb, float* c,
                          int64_t ldc, bool accumulate, float* t);
// The same with AVX-512 (gemm_small_m_avx512.cpp): 32-column strips, t holds
// M×32 floats, 64-byte aligned.
void gemm_small_m_kn_avx512(int64_t M, int64_t N, int64_t K, const float* ap, const float* b, int64_t ldb, float* c,
                            int64_t ldc, bool accumulate, float* t);

}  // namespace sigma
