// The AVX512_BF16 half of the bf16 GEMM (the driver is gemm_bf16.cpp): the
// packing routines that round f32 operands to bf16 pairs, and the register
// tile that multiplies them with vdpbf16ps.
//
// vdpbf16ps takes, per 32-bit lane j, a pair of bf16 values from each source
// and adds both products to an f32 accumulator:
//   c[j] += a[2j+1]·b[2j+1];  c[j] += a[2j]·b[2j]
// so both operands are packed as pairs of consecutive k in one 32-bit word
// (the even k in the low half): word(p) = bf16(x[2p]) | bf16(x[2p+1]) << 16.
// A k past the end of an odd K pairs with a zero. The products of two bf16
// values are exact in f32; only the additions round.
//
// Panels (the f32 driver's layout with a k-pair where it has a k):
//  - B: NR = 32 columns per panel, for each pair p the 32 columns' words in a
//    row: dst[p·32 + j]. The tile loads them as two zmm of 16 pairs.
//  - A: MR rows per panel, dst[p·MR + i]. The tile broadcasts one word (a
//    row's pair) per row and pair.
// Columns past a block's edge and rows past its edge are zero words.
//
// Rounding: VCVTNE2PS2BF16, round to nearest even, NaN quieted, subnormal
// inputs to signed zero; round_to_bf16 in gemm_bf16.cpp is the same rule in
// plain C++ for the converted-f32 path (a test holds them equal bit for bit).
//
// Two packing routines cover the four layouts an operand comes in:
//  - bf16_pack_rows: each panel row (a row of A, a column of op(B) = a row of
//    B stored [N,K]) is contiguous in k, so its pairs are adjacent floats.
//    Sixteen rows × 32 k are converted in sixteen zmm (one per row, 16 words
//    each) and transposed as a 16×16 matrix of words: one zmm per pair.
//  - bf16_pack_interleave: the panel's lanes are contiguous and k is the
//    stride (A stored [K,M], B stored [K,N]): rows 2p and 2p+1 are converted
//    together and their bf16 halves interleaved with one vpermw.
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")
// GCC 12's masked-load intrinsics start from a self-initialised "undefined"
// vector, which -Wmaybe-uninitialized reports at every use: a false alarm.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "gemm_bf16_kernels.h"

namespace sigma {
namespace {

inline __mmask16 lane_mask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : n <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << n) - 1);
}

// 32 floats (fewer at the edge: zeros past n) as 16 bf16 pair words in order.
inline __m512i pairs_of(const float* s, int64_t n) {
  const __m512 lo = _mm512_maskz_loadu_ps(lane_mask(n), s);
  const __m512 hi = _mm512_maskz_loadu_ps(lane_mask(n - 16), s + 16);
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));  // hi's words above lo's
}

// In-register transpose of a 16×16 matrix of 32-bit words, r[i] = row i.
// Three rounds of interleaving: words of row pairs within 128-bit lanes,
// then 64-bit halves of those, then 128-bit lanes across registers (twice).
inline void transpose16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // u[4g + c], lane L: column 4L + c of rows 4g … 4g+3.
  for (int g = 0; g < 16; g += 4) {
    u[g + 0] = _mm512_unpacklo_epi64(t[g + 0], t[g + 2]);
    u[g + 1] = _mm512_unpackhi_epi64(t[g + 0], t[g + 2]);
    u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
    u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
  }
  // Row 4L + c of the result: lane L of u[c], u[4 + c], u[8 + c], u[12 + c].
  for (int c = 0; c < 4; ++c) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xDD);
    const __m512i w0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88), w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_i32x4(v0, w0, 0x88);
    r[8 + c] = _mm512_shuffle_i32x4(v0, w0, 0xDD);
    r[4 + c] = _mm512_shuffle_i32x4(v1, w1, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(v1, w1, 0xDD);
  }
}

template <int MR>
__attribute__((always_inline)) inline void tile(int64_t kp, const uint32_t* A, const uint32_t* B, float* C, int64_t ldc,
                                                int mr, int nr, bool accumulate) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) c0[i] = _mm512_setzero_ps(), c1[i] = _mm512_setzero_ps();
  for (int i = 0; i < mr; ++i) __builtin_prefetch(C + i * ldc, 1, 3), __builtin_prefetch(C + i * ldc + nr - 1, 1, 3);
  for (int64_t p = 0; p < kp; ++p, A += MR, B += kBf16NR) {
    const __m512bh b0 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(B));
    const __m512bh b1 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(B + 16));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512bh a = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(A[i])));
      c0[i] = _mm512_dpbf16_ps(c0[i], a, b0);
      c1[i] = _mm512_dpbf16_ps(c1[i], a, b1);
    }
  }
  const __mmask16 m0 = lane_mask(nr), m1 = lane_mask(nr - 16);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (i >= mr) break;
    float* row = C + i * ldc;
    __m512 v0 = c0[i], v1 = c1[i];
    if (accumulate) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, row));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, row + 16));
    }
    _mm512_mask_storeu_ps(row, m0, v0);
    _mm512_mask_storeu_ps(row + 16, m1, v1);
  }
}

}  // namespace

void bf16_pack_rows(uint32_t* dst, int64_t ldd, int lanes, const float* src, int64_t lds, int rows, int64_t kc) {
  const __mmask16 store = lane_mask(lanes);
  const int64_t kp = (kc + 1) / 2;
  __m512i r[16];
  for (int64_t k0 = 0; k0 < kc; k0 += 32) {
    for (int i = 0; i < 16; ++i) r[i] = i < rows ? pairs_of(src + i * lds + k0, kc - k0) : _mm512_setzero_si512();
    transpose16(r);
    const int64_t p0 = k0 / 2, pairs = std::min<int64_t>(16, kp - p0);
    for (int64_t q = 0; q < pairs; ++q) _mm512_mask_storeu_epi32(dst + (p0 + q) * ldd, store, r[q]);
  }
}

void bf16_pack_interleave(uint32_t* dst, int64_t ldd, int lanes, const float* src, int64_t lds, int cols, int64_t kc) {
  // Word j of the result takes 16-bit element j (row 2p's bf16) and 16 + j (row 2p+1's).
  alignas(64) static const uint16_t kIdx[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(kIdx);
  const int64_t kp = (kc + 1) / 2;
  for (int c0 = 0; c0 < lanes; c0 += 16) {
    const __mmask16 load = lane_mask(cols - c0), store = lane_mask(lanes - c0);
    for (int64_t p = 0; p < kp; ++p) {
      const float* s = src + 2 * p * lds + c0;
      const __m512 lo = _mm512_maskz_loadu_ps(load, s);
      const __m512 hi = 2 * p + 1 < kc ? _mm512_maskz_loadu_ps(load, s + lds) : _mm512_setzero_ps();
      const __m512i v = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
      _mm512_mask_storeu_epi32(dst + p * ldd + c0, store, _mm512_permutexvar_epi16(idx, v));
    }
  }
}

void bf16_tile(int64_t kp, const uint32_t* A, const uint32_t* B, float* C, int64_t ldc, int mr, int nr,
               bool accumulate) {
  tile<kBf16MR>(kp, A, B, C, ldc, mr, nr, accumulate);
}

}  // namespace sigma
