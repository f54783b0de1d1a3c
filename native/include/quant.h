// Weight formats for inference and their decode kernels (docs/decode.md).
// Plain C++, no Node-API types.
//
// A weight matrix is `rows` rows of K inputs (a Linear's W [out, in], or E
// experts' [E·N, K] stacked). Its stored form, per format:
//   f32   float[rows·K]
//   bf16  uint16[rows·K]: the high half of each f32
//   f16   uint16[rows·K]: IEEE half precision
//   q8    int8[rows·Kp] with Kp = K rounded up to 32, and uint16 (f16) scales[rows·Kp/32]:
//         w = scale[g] · q                          (q in −127…127)
//   q4    uint8[rows·Kp/2], scales[rows·Kp/32] and mins[rows·Kp/32] (both f16):
//         w = scale[g] · q + min[g]                 (q in 0…15)
//         byte j of a group holds element j in its low nibble and element j + 16 in its high one.
// Groups are 32 consecutive inputs of one row; a row whose K is not a
// multiple of 32 ends in a short group (its padding is zero and never read).
//
// Every path computes exactly these f32 weights (q·scale is exact in f32;
// q·scale + min is rounded once) and differs from the others only in the
// order of the f32 additions of the dot products.
#pragma once
#include <cstdint>

namespace sigma {

enum class WeightFormat { kF32 = 0, kBf16 = 1, kF16 = 2, kQ8 = 3, kQ4 = 4 };

// Elements of a q8/q4 group.
constexpr int64_t kQuantGroup = 32;

// One stored weight matrix (pointers into the caller's arrays).
struct QuantMatrix {
  WeightFormat format = WeightFormat::kF32;
  const void* data = nullptr;        // float / uint16 / int8 / uint8, as above
  const uint16_t* scales = nullptr;  // q8, q4
  const uint16_t* mins = nullptr;    // q4
};

// Elements (f32, bf16, f16: values; q8: bytes; q4: bytes) of one stored row, and groups per row.
int64_t quant_row_elements(WeightFormat f, int64_t K);
inline int64_t quant_groups(int64_t K) { return (K + kQuantGroup - 1) / kQuantGroup; }

// The decode product, grouped: for each expert e, rows offsets[e] … offsets[e+1] − 1 of
// x [R, K] are multiplied by expert e's matrix (rows e·N … e·N + N − 1 of w):
//   y[r, n] = Σ_k x[r, k] · w_e[n, k]          y [R, N], R = offsets[E]
// A plain linear layer is E = 1, offsets {0, R}. Made for few rows per expert
// (decoding: 1–8): weights stream once from memory, each tile of weight rows
// meeting every row of x while it sits in L1; threads split the output rows of
// all experts together. Any R works (rows are taken eight at a time).
void decode_matmul(const QuantMatrix& w, float* y, const float* x, const int32_t* offsets, int64_t E, int64_t N,
                   int64_t K);

// out [rows, K] = the f32 weights of `rows` stored rows (threads over rows).
void dequantize(const QuantMatrix& w, float* out, int64_t rows, int64_t K);

// f16 ↔ f32 (IEEE binary16; round to nearest even; overflow to infinity; NaN stays NaN).
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);

// True when the CPU has F16C (the SIMD decode paths need it for f16 weights and scales).
bool cpu_has_f16c();
// The decode kernels in use: "avx512", "avx2-fma" or "portable" (the kernel
// path, held to portable when the CPU lacks F16C).
const char* decode_path_name();

// Per-ISA row kernels (quant_decode_avx512.cpp, quant_decode_avx2.cpp,
// quant_decode.cpp): y[r·ldy + n] for r < R and n in [n0, n1), x [R, K] and
// w's rows n (already offset to the expert).
void decode_rows_avx512(const QuantMatrix& w, float* y, int64_t ldy, const float* x, int64_t R, int64_t K, int64_t n0,
                        int64_t n1);
void decode_rows_avx2(const QuantMatrix& w, float* y, int64_t ldy, const float* x, int64_t R, int64_t K, int64_t n0,
                      int64_t n1);
void decode_rows_portable(const QuantMatrix& w, float* y, int64_t ldy, const float* x, int64_t R, int64_t K,
                          int64_t n0, int64_t n1);

// The weight w[n, k] of a stored matrix as f32, the definition every path
// follows (scalar; the kernels' tails and the portable path use it).
float quant_weight(const QuantMatrix& w, int64_t K, int64_t n, int64_t k);

}  // namespace sigma
