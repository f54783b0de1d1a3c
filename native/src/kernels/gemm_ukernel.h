// The micro-kernel interface shared by gemm.cpp and the per-ISA kernel files.
#pragma once
#include <cstdint>

namespace sigma {

constexpr int kMR = 6;   // rows of the register tile
constexpr int kNR = 16;  // columns of the register tile (two 8-float vectors)

// C[kMR,kNR] (+)= Ap[kc,kMR]ᵀ · Bp[kc,kNR] where Ap holds kMR values per k and
// Bp kNR values per k (packed, zero-padded). Writes only the top-left mr×nr
// corner of C (edge tiles). accumulate: add into C instead of overwriting.
using MicroKernel = void (*)(int64_t kc, const float* Ap, const float* Bp, float* C, int64_t ldc, int mr, int nr,
                             bool accumulate);

void ukernel_portable(int64_t kc, const float* Ap, const float* Bp, float* C, int64_t ldc, int mr, int nr,
                      bool accumulate);
void ukernel_avx2(int64_t kc, const float* Ap, const float* Bp, float* C, int64_t ldc, int mr, int nr,
                  bool accumulate);
double fma_chains_avx2(int64_t iters);
// Packs a full 16-column panel of a transposed B (16 rows of b, ldb apart,
// k = 0..kc-1 each) into dst[kc][16] with 8×8 in-register transposes. dst is 32-byte aligned.
void pack_b_trans_avx2(float* dst, const float* b, int64_t ldb, int64_t kc);
double fma_chains_portable(int64_t iters);

}  // namespace sigma
