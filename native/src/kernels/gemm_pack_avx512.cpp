// Packing a row-major A into the MR-row panels of the wide AVX-512 tiles
// (MR = 8, 12, 14) with 16×16 transposes in zmm registers.
//
// A panel is dst[k][MR]: for each k the MR values of the panel's rows side by
// side. Reading A's rows 16 k at a time (one cache line each) and transposing
// the 16 × 16 block in registers gives, in output vector c, the values of
// k + c for all rows; each is stored with a mask of MR lanes at dst[k + c][0],
// so the 16 stores tile dst[k .. k+15][·] exactly, with no masked AVX2 stores
// (vmaskmovps, slow on AMD) and no second pass for the rows past eight, as the
// AVX2 packer (gemm_avx2.cpp, 8×8 blocks) needs for 12- and 14-row panels.
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's AVX-512 intrinsics pass an _mm512_undefined_ps() merge source that
// its own flow analysis then calls uninitialised (as in ops_avx512.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>

#include "gemm_ukernel.h"

namespace sigma {
namespace {

// In-register transpose of a 16 × 16 block held as r[row] (16 lanes of k), in
// four steps: pairs of rows interleaved (unpack), then groups of four rows
// (shuffle_ps), which leaves 4 × 4 blocks in the 128-bit lanes; then those
// lanes transposed across groups (shuffle_f32x4 twice). Rows of a zero group
// (rows ≥ live, live a multiple of four) are constants the compiler folds.
template <int kGroups>
inline void transpose16(__m512 r[16]) {
  __m512 v[4][4];  // v[g][j], lane L: rows 4g..4g+3 at k = 4L + j
  for (int g = 0; g < 4; ++g) {
    if (g >= kGroups) {
      for (int j = 0; j < 4; ++j) v[g][j] = _mm512_setzero_ps();
      continue;
    }
    const __m512 t0 = _mm512_unpacklo_ps(r[4 * g], r[4 * g + 1]), t1 = _mm512_unpackhi_ps(r[4 * g], r[4 * g + 1]);
    const __m512 t2 = _mm512_unpacklo_ps(r[4 * g + 2], r[4 * g + 3]), t3 = _mm512_unpackhi_ps(r[4 * g + 2], r[4 * g + 3]);
    v[g][0] = _mm512_shuffle_ps(t0, t2, 0x44);
    v[g][1] = _mm512_shuffle_ps(t0, t2, 0xEE);
    v[g][2] = _mm512_shuffle_ps(t1, t3, 0x44);
    v[g][3] = _mm512_shuffle_ps(t1, t3, 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    // Output k = 4L + j takes lane L of v[0][j] … v[3][j].
    const __m512 x0 = _mm512_shuffle_f32x4(v[0][j], v[1][j], 0x44), x1 = _mm512_shuffle_f32x4(v[0][j], v[1][j], 0xEE);
    const __m512 x2 = _mm512_shuffle_f32x4(v[2][j], v[3][j], 0x44), x3 = _mm512_shuffle_f32x4(v[2][j], v[3][j], 0xEE);
    r[j] = _mm512_shuffle_f32x4(x0, x2, 0x88);
    r[4 + j] = _mm512_shuffle_f32x4(x0, x2, 0xDD);
    r[8 + j] = _mm512_shuffle_f32x4(x1, x3, 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(x1, x3, 0xDD);
  }
}

template <int MR>
void pack_rows(float* dst, int mr, const float* a, int64_t lda, int64_t kc) {
  constexpr int kGroups = (MR + 3) / 4;
  const __mmask16 lanes = static_cast<__mmask16>((1u << MR) - 1);
  int64_t k = 0;
  for (; k + 16 <= kc; k += 16) {
    __m512 r[16];
    for (int u = 0; u < 16; ++u) r[u] = u < mr && u < MR ? _mm512_loadu_ps(a + u * lda + k) : _mm512_setzero_ps();
    transpose16<kGroups>(r);
    for (int c = 0; c < 16; ++c) _mm512_mask_storeu_ps(dst + (k + c) * MR, lanes, r[c]);
  }
  for (; k < kc; ++k)
    for (int u = 0; u < MR; ++u) dst[k * MR + u] = u < mr ? a[u * lda + k] : 0.f;
}

}  // namespace

bool pack_a_rows_avx512(float* dst, int MR, int mr, const float* a, int64_t lda, int64_t kc) {
  switch (MR) {
    case 8: pack_rows<8>(dst, mr, a, lda, kc); return true;
    case 12: pack_rows<12>(dst, mr, a, lda, kc); return true;
    case 14: pack_rows<14>(dst, mr, a, lda, kc); return true;
    default: return false;
  }
}

}  // namespace sigma
