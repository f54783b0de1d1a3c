// Matrix products with bf16 inputs and f32 accumulation (mixed-precision
// training), plain C++ (no Node-API types).
//
// Same arguments and layouts as gemm.h's sgemm / grouped_gemm /
// grouped_gemm_weight_grad: f32 in memory, row-major, op(A) [M,K], op(B)
// [K,N], C [M,N]. Every element of op(A) and op(B) is first rounded to
// bfloat16 (round to nearest, ties to even; NaN stays a quiet NaN; f32
// subnormals become a signed zero, as VCVTNE2PS2BF16 does), and the products
// of those rounded values (exact in f32) are summed in f32. C stays f32.
//
// Two paths compute this, and each rounds the inputs identically:
//  - "avx512-bf16": where the CPU has AVX512_BF16 (and the kernel path is
//    avx512), the operands are rounded while they are packed into bf16 pairs
//    and a register tile accumulates with vdpbf16ps (gemm_bf16_avx512.cpp).
//  - "converted-f32": anywhere else (or when forced), the operands are
//    rounded into f32 copies and the ordinary f32 GEMM multiplies them.
// The two differ only in the order of the f32 additions (and vdpbf16ps
// flushes subnormal sums to zero), never in the rounding of the inputs.
#pragma once
#include <cstdint>

namespace sigma {

// C (+)= bf16(op(A))·bf16(op(B)), split over the kernel threads.
void bf16_gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b,
               int64_t ldb, float* c, int64_t ldc, bool accumulate);

// The grouped expert products (layouts as grouped_gemm and
// grouped_gemm_weight_grad in gemm.h), stacked and in parts.
void bf16_grouped_gemm(float* y, const float* x, const float* w, const int32_t* offsets, int64_t E, int64_t N,
                       int64_t K, bool transW, bool accumulate);
void bf16_grouped_gemm_parts(float* y, const float* x, const float* const* w, const int32_t* offsets, int64_t E,
                             int64_t N, int64_t K, bool transW, bool accumulate);
void bf16_grouped_gemm_weight_grad(float* dw, const float* dy, const float* x, const int32_t* offsets, int64_t E,
                                   int64_t N, int64_t K, bool transW, bool accumulate);
void bf16_grouped_gemm_weight_grad_parts(float* const* dw, const float* dy, const float* x, const int32_t* offsets,
                                         int64_t E, int64_t N, int64_t K, bool transW, bool accumulate);

// dst[i] = src[i] rounded to bf16 (as above), kept as an f32 whose low 16
// bits are zero. dst may be src.
void round_to_bf16(float* dst, const float* src, int64_t n);
// The same on the calling thread only (no parallel region).
void round_to_bf16_serial(float* dst, const float* src, int64_t n);

// True when this CPU has AVX512_BF16 (and AVX-512 F/BW, which the kernel uses).
bool cpu_has_avx512bf16();
// Forces the converted-f32 path even where the CPU has AVX512_BF16 (tests,
// benchmarks); false restores the run-time choice.
void set_bf16_force_converted(bool force);
// The path bf16 products take now: "avx512-bf16" or "converted-f32".
const char* bf16_path_name();

}  // namespace sigma
