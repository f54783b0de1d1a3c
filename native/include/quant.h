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
  // q8, q4, optional: the same weights repacked for the integer kernels ("packed q8 and q4" below).
  const uint8_t* packed = nullptr;
  const uint16_t* packed_scales = nullptr;
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
//
// With an epilogue, each thread finishes the outputs it computed while they
// are in its cache: y += bias (row e of the [E, N] biases for expert e's
// rows), then the activation, then residual += y ([R, N], rows as y's). The
// decode step's bias adds, FFN activations and residual adds are then no
// separate passes (or calls).
enum class DecodeAct { kNone = 0, kFastGelu = 1, kGelu = 2 };
struct DecodeEpilogue {
  const float* bias = nullptr;  // [E, N] or null
  DecodeAct act = DecodeAct::kNone;
  float* residual = nullptr;  // [R, N] or null
};
void decode_matmul(const QuantMatrix& w, float* y, const float* x, const int32_t* offsets, int64_t E, int64_t N,
                   int64_t K, const DecodeEpilogue* epilogue = nullptr);

// The matrix starting `row0` rows further (data, scales and mins; the packed copy, if any, is not offset).
QuantMatrix quant_offset_rows(const QuantMatrix& w, int64_t K, int64_t row0);

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

// ------------------------------------------------------------------ integer dot products (quant_decode_int*.cpp)
//
// For q8 and q4 weights x is quantized too and the group products are
// integer dot products (every row count; set_decode_int_rows can hold them off):
//   per row of x and group g of 32 inputs (the last one short when K is not a
//   multiple of 32; its missing inputs are zero):
//     amax_g = max |x|;  d_g = amax_g / 127;  inv_g = 127 / amax_g (0 when amax_g = 0)
//     xq_i = x_i · inv_g rounded to nearest even (f32 product; −127 … 127)
//     sx_g = Σ x_i (f32; q4's min term)
//   y[r, n] = Σ_g (d_g · scale_g) · Σ_i xq_i · q_i      (q8; the f32 product d·scale, the dot exact in int32)
//           + Σ_g min_g · sx_g                            (q4 adds the min term)
// A group with a NaN or infinite x gets d_g = NaN (and xq = 0): its outputs are NaN.
// The sums over groups are f32 in an order of each path's own.

// x's rows quantized for the integer kernels. Each row holds `groups` groups
// (K's groups rounded up to 16; the padding is zero, with d = sx = 0), laid out
// for the format: q8 in input order; q4 in blocks of four groups, the first
// halves (inputs 0…15) of the four groups, then their second halves (16…31),
// matching the low and high nibbles of 64 stored bytes.
struct QuantX {
  int64_t groups = 0;
  int8_t* q = nullptr;     // [rows, groups·32]
  float* d = nullptr;      // [rows, groups]   the groups' x scales
  float* sx = nullptr;     // [rows, groups]   f32 sums of x (q4)
  int32_t* neg = nullptr;  // [rows, groups·8] −128 · (sum of 4 consecutive q) (q8, the VNNI offset)
  QuantX row(int64_t r) const {
    return QuantX{groups, q + r * groups * 32, d + r * groups, sx + r * groups, neg + r * groups * 8};
  }
};
inline int64_t quant_x_groups(int64_t K) { return (quant_groups(K) + 15) / 16 * 16; }
// Where input i (0 … 31) of group g sits in a quantized row of x for format f.
inline int64_t quant_x_index(WeightFormat f, int64_t g, int64_t i) {
  if (f == WeightFormat::kQ8) return g * 32 + i;
  return (g / 4) * 128 + (g % 4) * 16 + (i < 16 ? i : 64 + i - 16);
}

// The integer kernels in use: "avx512-vnni", "avx512-bw", "avx2" or "portable"
// (the kernel path; AVX-512 needs BW and VL, VNNI when allowed and present).
const char* decode_int_path_name();
// Lets the AVX-512 integer kernel use VNNI (vpdpbusd) when the CPU has it (default),
// or holds it to vpmaddubsw + vpmaddwd (tests).
void set_decode_vnni(bool allow);
// The most rows of x per expert that take the integer kernels: −1 all (the default), 0 none
// (the f32 kernels run, as before them: tests and benchmarks compare the two on one build).
void set_decode_int_rows(int64_t rows);

// Quantizes `R` rows of x [R, K] into qx (rows 0 … R − 1 of it) for `f` (q8 or q4).
void quantize_x_avx512(const float* x, int64_t R, int64_t K, WeightFormat f, const QuantX& qx);
void quantize_x_avx2(const float* x, int64_t R, int64_t K, WeightFormat f, const QuantX& qx);
void quantize_x_portable(const float* x, int64_t R, int64_t K, WeightFormat f, const QuantX& qx);

// y[r·ldy + n] for r < R and n in [n0, n1): the integer products of
// q8/q4 weight rows (already offset to the expert) with x quantized in qx.
void decode_int_avx512(const QuantMatrix& w, float* y, int64_t ldy, const QuantX& qx, int64_t R, int64_t K,
                       int64_t n0, int64_t n1, bool vnni);
void decode_int_avx2(const QuantMatrix& w, float* y, int64_t ldy, const QuantX& qx, int64_t R, int64_t K, int64_t n0,
                     int64_t n1);
void decode_int_portable(const QuantMatrix& w, float* y, int64_t ldy, const QuantX& qx, int64_t R, int64_t K,
                         int64_t n0, int64_t n1);

// ------------------------------------------------------------------ packed q8 and q4
//
// A q8 or q4 matrix of E experts × N rows, repacked for the AVX-512 and AVX2
// integer kernels (quant_decode_int_avx512.h, quant_decode_int_avx2.cpp):
// each expert's rows in blocks of 16 (ceil(N/16) blocks, the last one's
// missing rows zero), a block's groups one after the other, a group as quads
// of 64 bytes (q8: 8, q4: 4) — the q-th holding bytes 4q … 4q + 3 of the
// group in each of the block's 16 rows, row i at byte 4i (q4: bytes j hold
// elements j and j + 16 in their nibbles, as stored) — and the block's
// factors as [group][16] f16 scales (q4: [group][32], 16 scales then 16
// mins; zero for missing rows). Bytes past K in a short last group are zero.
// The row layout stays: the other paths, the dequantizer and saving read it.
int64_t packed_bytes(WeightFormat f, int64_t E, int64_t N, int64_t K);    // of `packed`
int64_t packed_factors(WeightFormat f, int64_t E, int64_t N, int64_t K);  // of `packed_scales`
void pack_quant(const QuantMatrix& w, int64_t E, int64_t N, int64_t K, uint8_t* packed, uint16_t* packed_scales);
// Whether the integer kernels in use read packed q8/q4 (the AVX-512 and AVX2
// ones; the decode product takes the row layout when a matrix comes without it).
bool decode_packs();
// y[r·ldy + n] for r < R, n in [n0, n1) of one expert's packed rows (pq, ps at
// its first block); gneg[r·qx.groups + g] = −128 · Σ xq of group g (q8 with VNNI's offset).
void decode_packed_avx512(const uint8_t* pq, const uint16_t* ps, float* y, int64_t ldy, const QuantX& qx, const int32_t* gneg,
                          int64_t R, int64_t K, int64_t n0, int64_t n1, bool q4, bool vnni);
// The same on AVX2 (two ymm halves per block; q8 as |w| and x taking w's sign, as its row kernel).
void decode_packed_avx2(const uint8_t* pq, const uint16_t* ps, float* y, int64_t ldy, const QuantX& qx, int64_t R, int64_t K,
                        int64_t n0, int64_t n1, bool q4);

// ------------------------------------------------------------------ bf16 weights take bf16 activations
//
// A bf16 matrix multiplies x rounded to bf16 (round_to_bf16's rule: nearest
// even, subnormals to signed zero, NaN kept), on every path: where the CPU has
// AVX512_BF16 (and the kernel path is avx512) vdpbf16ps takes 32 weights and
// 32 inputs per instruction (quant_decode_bf16.cpp), elsewhere the f32 row
// kernels multiply the rounded x. The products of two bf16 values are exact
// in f32 either way; the paths differ only in the order of the f32 sums.
// The vdpbf16ps kernel sums each row of x the same way whatever rows share
// the call (a batched or speculative step gives a row the bits decoding it
// alone gives).
//
// xb: R rows of kp bf16 inputs (the rounded x's top halves, zero past K; kp a
// multiple of 32); w's rows n (already offset to the expert).
void decode_bf16_dot(const QuantMatrix& w, float* y, int64_t ldy, const uint16_t* xb, int64_t kp, int64_t R,
                     int64_t K, int64_t n0, int64_t n1);
// The bf16 products in use: "avx512-bf16" (vdpbf16ps) or "f32-fma" (the row kernels over the rounded x).
const char* decode_bf16_path_name();
// Lets bf16 products use vdpbf16ps where the CPU has it (default), or holds them to the row kernels (tests).
void set_decode_bf16_dot(bool allow);

// The weight w[n, k] of a stored matrix as f32, the definition every path
// follows (scalar; the kernels' tails and the portable path use it).
float quant_weight(const QuantMatrix& w, int64_t K, int64_t n, int64_t k);

}  // namespace sigma
