// The AVX512_BF16 routines of the bf16 GEMM (gemm_bf16_avx512.cpp), called
// by its driver (gemm_bf16.cpp) only where the CPU has AVX512_BF16.
// Panel layouts and the pair word are described at the top of that file.
#pragma once
#include <cstdint>

namespace sigma {

// The register tile: kBf16MR rows × 32 columns, 2·kBf16MR zmm accumulators
// (24 chains: enough for two FMA-class pipes of latency 6; Zen 4 issues one
// 512-bit vdpbf16ps per cycle, 32 multiply-adds, twice its f32 FMA rate).
constexpr int kBf16MR = 12;
constexpr int kBf16NR = 32;

// dst[p·ldd + r] = the pair word of row r at pairs p = 0 … (kc+1)/2 − 1, for
// r < lanes (≤ 16); row r is src + r·lds, contiguous in k; rows r ≥ `rows`
// (and k ≥ kc) are zeros.
void bf16_pack_rows(uint32_t* dst, int64_t ldd, int lanes, const float* src, int64_t lds, int rows, int64_t kc);

// dst[p·ldd + j] = the pair word of (src[2p·lds + j], src[(2p+1)·lds + j]) for
// j < lanes (any count; 16 at a time); columns j ≥ `cols` (and k ≥ kc) are zeros.
void bf16_pack_interleave(uint32_t* dst, int64_t ldd, int lanes, const float* src, int64_t lds, int cols, int64_t kc);

// C[mr, nr] (+)= A·B over kp pairs of k: A a packed kBf16MR-row panel
// (A[p·kBf16MR + i]), B a packed 32-column panel (B[p·32 + j]); only the
// top-left mr × nr corner of C is written.
void bf16_tile(int64_t kp, const uint32_t* A, const uint32_t* B, float* C, int64_t ldc, int mr, int nr,
               bool accumulate);

}  // namespace sigma
