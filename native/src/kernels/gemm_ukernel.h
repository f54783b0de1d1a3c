// The micro-kernel interface shared by gemm.cpp and the per-ISA kernel files.
#pragma once
#include <cstdint>

namespace sigma {

constexpr int kMR = 6;   // rows of the register tile
constexpr int kNR = 16;  // columns of the register tile (two 8-float vectors)

// C[kMR,kNR] (+)= Ap[kc,kMR]ᵀ · Bp[kc,kNR] where Ap holds kMR values per k and
// Bp kNR values per k (packed, zero-padded). Writes only the top-left mr×nr
// corner of C (edge tiles). accumulate: add into C instead of overwriting.
// The portable tile (any CPU); on AVX2 machines ukernel_avx2_direct takes
// packed panels too.
void ukernel_portable(int64_t kc, const float* Ap, const float* Bp, float* C, int64_t ldc, int mr, int nr,
                      bool accumulate);
// The AVX2 tile, its operands read with strides, packed or in place:
// A[i,k] = A[i·a_rs + k·a_ks] (so a packed A panel is a_rs = 1, a_ks = kMR, and
// rows of a row-major matrix are a_rs = lda, a_ks = 1); B[k, 0..15] =
// B[k·ldb + 0..15], all 16 columns readable. Rows i >= mr of A are not read.
void ukernel_avx2_direct(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb,
                         float* C, int64_t ldc, int mr, int nr, bool accumulate);
// Row i of an A tile with mr valid rows, for the tiles above: missing rows
// re-read row 0 (their results are never written).
inline const float* tile_row(const float* A, int64_t a_rs, int mr, int i) { return A + (mr > i ? i * a_rs : 0); }
double fma_chains_avx2(int64_t iters);
// The same tile on AVX-512 (gemm_avx512.cpp): same arguments, same panels.
void ukernel_avx512_direct(int64_t kc, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb,
                           float* C, int64_t ldc, int mr, int nr, bool accumulate);
// FMA chains for the peak probe: the FLOPs of fma_chains_avx2(iters), in zmm.
double fma_chains_avx512(int64_t iters);
// Packs a full 16-column panel of a transposed B (16 rows of b, ldb apart,
// k = 0..kc-1 each) into dst[kc][16] with 8×8 in-register transposes. dst is 32-byte aligned.
void pack_b_trans_avx2(float* dst, const float* b, int64_t ldb, int64_t kc);
// C[j·ldc + i] (+)= t[i·16 + j] for i < rows, j < cols ≤ 16: a block of Cᵀ
// computed into a [rows][16] scratch, added into C, 8×8 blocks at a time.
void add_transposed_avx2(float* c, int64_t ldc, const float* t, int64_t rows, int64_t cols, bool accumulate);
// Packs one full MR-row panel of a row-major A (rows lda apart, k = 0..kc-1)
// into dst[kc][6] with in-register transposes. Writes two floats past
// dst[kc·6 − 1] (zeros), so the buffer needs that slack.
void pack_a_avx2(float* dst, const float* a, int64_t lda, int64_t kc);
double fma_chains_portable(int64_t iters);

// Thin products (gemm_thin_avx2.cpp), read in place, no packing:
// C[M,N] (+)= A[M,K]·B[N,K]ᵀ with A's rows lda apart — for few rows of A.
void gemm_thin_rows_bt_avx2(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb,
                            float* c, int64_t ldc, bool accumulate);
// C[M,N] (+)= A·B[K,N] with A[i,k] = a[i·a_rs + k·a_ks], eight k at a time:
// each row of C is a sum of rows of B — for few rows of A or a short K.
void gemm_thin_axpy_avx2(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_ks, const float* b,
                         int64_t ldb, float* c, int64_t ldc, bool accumulate);

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
