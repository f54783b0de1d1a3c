// The decode product over stored weights (quant.h): the driver that splits
// output rows over threads, the portable row kernel, the scalar definition
// of each format, f16 conversion, and dequantization for prefill.
//
// Decoding reads every weight once per token and does two flops with it per
// row of x, so it is bound by memory bandwidth: the driver's job is to keep
// each thread streaming its own contiguous share of the weight rows (experts
// of one step together, so that one region covers a whole MoE layer), and
// the row kernels' job is to turn the stored bytes into f32 weights faster
// than memory delivers them.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "cpu.h"
#include "gemm_bf16.h"
#include "ops.h"
#include "quant.h"
#include "threadpool.h"

namespace sigma {

// ------------------------------------------------------------------ f16

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000 | (man << 13);  // infinity, NaN (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);  // rebias 15 → 127
  } else if (man == 0) {
    bits = sign;
  } else {
    // Subnormal: man · 2^-24, normalised.
    int e = 113;
    while (!(man & 0x400)) {
      man <<= 1;
      --e;
    }
    bits = sign | (static_cast<uint32_t>(e) << 23) | ((man & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t ax = x & 0x7fffffff;
  if (ax > 0x7f800000) return sign | 0x7e00 | static_cast<uint16_t>((ax >> 13) & 0x3ff);  // NaN stays NaN (quiet)
  if (ax >= 0x477ff000) return sign | 0x7c00;  // ≥ 65520 (or infinity) rounds to infinity
  if (ax < 0x33000000) return sign;            // < 2^-25 rounds to zero (2^-25 itself ties to even: zero)
  if (ax < 0x38800000) {
    // A half subnormal: round(value / 2^-24) to nearest even.
    const uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - e;  // 14 … 24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  const uint32_t r = ax - 0x38000000;  // exponent rebias 127 → 15
  uint32_t h = r >> 13;
  const uint32_t rem = r & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;  // a carry into the exponent is right
  return sign | static_cast<uint16_t>(h);
}

#if defined(__x86_64__) || defined(__i386__)
bool cpu_has_f16c() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("f16c");
}
#else
bool cpu_has_f16c() { return false; }
#endif

// ------------------------------------------------------------------ the formats

int64_t quant_row_elements(WeightFormat f, int64_t K) {
  switch (f) {
    case WeightFormat::kQ8: return quant_groups(K) * kQuantGroup;
    case WeightFormat::kQ4: return quant_groups(K) * kQuantGroup / 2;
    default: return K;
  }
}

namespace {

int64_t element_bytes(WeightFormat f) {
  switch (f) {
    case WeightFormat::kF32: return 4;
    case WeightFormat::kBf16:
    case WeightFormat::kF16: return 2;
    default: return 1;
  }
}

}  // namespace

QuantMatrix quant_offset_rows(const QuantMatrix& w, int64_t K, int64_t row0) {
  QuantMatrix o = w;
  o.data = static_cast<const uint8_t*>(w.data) + row0 * quant_row_elements(w.format, K) * element_bytes(w.format);
  if (w.scales) o.scales = w.scales + row0 * quant_groups(K);
  if (w.mins) o.mins = w.mins + row0 * quant_groups(K);
  return o;
}

namespace {

inline float bf16_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Elements k0 … k0 + cnt − 1 of row n (k0 a multiple of 32, cnt ≤ 32), as f32.
void dequant_group(const QuantMatrix& w, int64_t K, int64_t n, int64_t k0, int64_t cnt, float* out) {
  const int64_t stride = quant_row_elements(w.format, K);
  switch (w.format) {
    case WeightFormat::kF32: {
      const float* p = static_cast<const float*>(w.data) + n * stride + k0;
      for (int64_t i = 0; i < cnt; ++i) out[i] = p[i];
      break;
    }
    case WeightFormat::kBf16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + n * stride + k0;
      for (int64_t i = 0; i < cnt; ++i) out[i] = bf16_to_float(p[i]);
      break;
    }
    case WeightFormat::kF16:  // exact, so F16C where the path has it gives the same floats
      halves_to_floats(out, static_cast<const uint16_t*>(w.data) + n * stride + k0, cnt);
      break;
    case WeightFormat::kQ8: {
      const int8_t* p = static_cast<const int8_t*>(w.data) + n * stride + k0;
      const float d = half_to_float(w.scales[n * quant_groups(K) + k0 / kQuantGroup]);
      for (int64_t i = 0; i < cnt; ++i) out[i] = d * static_cast<float>(p[i]);
      break;
    }
    case WeightFormat::kQ4: {
      const uint8_t* p = static_cast<const uint8_t*>(w.data) + n * stride + k0 / 2;
      const int64_t g = n * quant_groups(K) + k0 / kQuantGroup;
      const float d = half_to_float(w.scales[g]), m = half_to_float(w.mins[g]);
      for (int64_t i = 0; i < cnt; ++i) {
        const int q = i < 16 ? (p[i] & 15) : (p[i - 16] >> 4);
        out[i] = d * static_cast<float>(q) + m;  // d·q is exact: one rounding, as an FMA's
      }
      break;
    }
  }
}

}  // namespace

float quant_weight(const QuantMatrix& w, int64_t K, int64_t n, int64_t k) {
  float g[kQuantGroup];
  const int64_t k0 = k - k % kQuantGroup;
  dequant_group(w, K, n, k0, std::min<int64_t>(kQuantGroup, K - k0), g);
  return g[k - k0];
}

// ------------------------------------------------------------------ portable row kernel

void decode_rows_portable(const QuantMatrix& w, float* y, int64_t ldy, const float* x, int64_t R, int64_t K,
                          int64_t n0, int64_t n1) {
  float wv[kQuantGroup];
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t r0 = 0; r0 < R; r0 += 8) {
      const int64_t rc = std::min<int64_t>(8, R - r0);
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t k0 = 0; k0 < K; k0 += kQuantGroup) {
        const int64_t cnt = std::min<int64_t>(kQuantGroup, K - k0);
        dequant_group(w, K, n, k0, cnt, wv);
        for (int64_t r = 0; r < rc; ++r) {
          const float* xr = x + (r0 + r) * K + k0;
          float s = 0;
          for (int64_t i = 0; i < cnt; ++i) s += wv[i] * xr[i];
          acc[r] += s;
        }
      }
      for (int64_t r = 0; r < rc; ++r) y[(r0 + r) * ldy + n] = acc[r];
    }
  }
}

// ------------------------------------------------------------------ driver

namespace {

using RowKernel = void (*)(const QuantMatrix&, float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t);

RowKernel row_kernel() {
  static const bool f16c = cpu_has_f16c();
  if (f16c && use_avx512()) return decode_rows_avx512;
  if (f16c && use_avx2()) return decode_rows_avx2;
  return decode_rows_portable;
}

// The integer kernels (quant_decode_int*.cpp) for q8/q4 experts with one or
// two rows of x: by the kernel path, as the row kernels; AVX-512 needs BW and
// VL (vpmaddubsw and masked byte loads), VNNI is taken when present and allowed.
enum class IntPath { kPortable, kAvx2, kAvx512Bw, kAvx512Vnni };

std::atomic<bool> vnni_allowed{true};

IntPath int_path() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool f16c = cpu_has_f16c();
  static const bool bw = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  static const bool vnni = __builtin_cpu_supports("avx512vnni");
  if (f16c && bw && use_avx512()) return vnni && vnni_allowed.load(std::memory_order_relaxed) ? IntPath::kAvx512Vnni : IntPath::kAvx512Bw;
  if (f16c && use_avx2()) return IntPath::kAvx2;
#endif
  return IntPath::kPortable;
}

// bf16 weights: vdpbf16ps where the CPU has AVX512_BF16, the kernel path is
// avx512 and the tests have not held it off; else the row kernels over the rounded x.
std::atomic<bool> bf16_dot_allowed{true};

bool bf16_dot() {
  return bf16_dot_allowed.load(std::memory_order_relaxed) && use_avx512() && cpu_has_avx512bf16();
}

// The most rows of x per expert that take the integer kernels: all (a row's
// outputs then do not depend on how many rows share the call: a batched or
// speculative step gives each row what decoding it alone gives);
// set_decode_int_rows(0) turns them off (tests, benchmarks' before/after).
constexpr int64_t kIntRowsAll = 1 << 30;
std::atomic<int64_t> int_rows{kIntRowsAll};

// Reused, grow-only storage of the quantized x, one per calling thread: a
// call allocates only when it needs more than any call before it on that thread.
struct QuantXBuffer {
  std::vector<int8_t> q;
  std::vector<float> d, sx;
  std::vector<int32_t> neg;
  QuantX view(int64_t rows, int64_t groups) {
    auto grow = [](auto& v, size_t n) {
      if (v.size() < n) v.resize(n);
    };
    grow(q, rows * groups * 32);
    grow(d, rows * groups);
    grow(sx, rows * groups);
    grow(neg, rows * groups * 8);
    return QuantX{groups, q.data(), d.data(), sx.data(), neg.data()};
  }
};

// Reused, grow-only storage of a bf16 matrix's x rounded to bf16: as f32 for
// the row kernels, and packed (kp inputs a row, zero past K) for vdpbf16ps.
struct Bf16XBuffer {
  std::vector<float> rounded;
  std::vector<uint16_t> packed;
};

struct DecodeJob {
  const QuantMatrix* w;
  float* y;
  const float* x;  // for bf16 weights, x rounded to bf16
  const uint16_t* xb;  // x packed to bf16 (kp a row) where vdpbf16ps runs, else null
  int64_t kp;
  const int32_t* offsets;
  int64_t E, N, K, active;
  RowKernel kernel;
  IntPath int_path;
  int64_t int_rows;
  QuantX qx;  // rows quantized for the experts with 1 … int_rows rows (groups == 0: none)
  const DecodeEpilogue* ep;
  bool packed;          // q8/q4 packed, on an integer path that reads it
  const int32_t* gneg;  // with it on the AVX-512 path: −128 · Σ xq per row and group (VNNI's offset)
};

// The epilogue (quant.h) over outputs [lo, hi) of expert e's rows r0 … r0 + R − 1 of y [·, N].
void finish(const DecodeEpilogue& ep, float* y_all, int64_t N, int64_t e, int64_t r0, int64_t R, int64_t lo, int64_t hi) {
  for (int64_t r = r0; r < r0 + R; ++r) {
    float* y = y_all + r * N + lo;
    if (ep.bias) add_serial(y, y, ep.bias + e * N + lo, hi - lo);
    if (ep.act == DecodeAct::kFastGelu) fast_gelu_serial(y, y, hi - lo);
    else if (ep.act == DecodeAct::kGelu) gelu_serial(y, y, hi - lo);
    if (ep.residual) add_serial(ep.residual + r * N + lo, ep.residual + r * N + lo, y, hi - lo);
  }
}

// Thread t's share: items [b0, b1) of the active experts' output rows laid end to end.
void decode_share(const DecodeJob& j, int t, int nth) {
  const int64_t total = j.active * j.N;
  auto bound = [&](int i) -> int64_t {
    if (i >= nth) return total;
    return (total * i / nth) & ~int64_t{15};  // multiples of 16 rows: whole tiles, whole lines of y
  };
  const int64_t b0 = bound(t), b1 = bound(t + 1);
  if (b0 >= b1) return;
  int64_t a = 0;  // index among the active experts
  for (int64_t e = 0; e < j.E; ++e) {
    const int64_t r0 = j.offsets[e], R = j.offsets[e + 1] - r0;
    if (R <= 0) continue;
    const int64_t lo = std::max<int64_t>(b0 - a * j.N, 0), hi = std::min<int64_t>(b1 - a * j.N, j.N);
    ++a;
    if (lo >= hi) {
      if (a * j.N >= b1) break;
      continue;
    }
    const QuantMatrix we = quant_offset_rows(*j.w, j.K, e * j.N);
    if (j.packed && R <= j.int_rows) {
      // Packed q8/q4: expert e's blocks, and x's rows from r0 (q8's VNNI offsets alongside).
      const bool q4 = j.w->format == WeightFormat::kQ4;
      const uint8_t* pq = j.w->packed + e * packed_bytes(j.w->format, 1, j.N, j.K);
      const uint16_t* ps = j.w->packed_scales + e * packed_factors(j.w->format, 1, j.N, j.K);
      float* ye = j.y + r0 * j.N;
      if (j.int_path == IntPath::kAvx2) decode_packed_avx2(pq, ps, ye, j.N, j.qx.row(r0), R, j.K, lo, hi, q4);
      else decode_packed_avx512(pq, ps, ye, j.N, j.qx.row(r0), j.gneg ? j.gneg + r0 * j.qx.groups : nullptr, R, j.K, lo, hi, q4, j.int_path == IntPath::kAvx512Vnni);
    } else if (j.qx.groups > 0 && R <= j.int_rows) {
      const QuantX xe = j.qx.row(r0);
      float* ye = j.y + r0 * j.N;
      switch (j.int_path) {
        case IntPath::kAvx512Vnni: decode_int_avx512(we, ye, j.N, xe, R, j.K, lo, hi, true); break;
        case IntPath::kAvx512Bw: decode_int_avx512(we, ye, j.N, xe, R, j.K, lo, hi, false); break;
        case IntPath::kAvx2: decode_int_avx2(we, ye, j.N, xe, R, j.K, lo, hi); break;
        case IntPath::kPortable: decode_int_portable(we, ye, j.N, xe, R, j.K, lo, hi); break;
      }
    } else if (j.xb) {
      decode_bf16_dot(we, j.y + r0 * j.N, j.N, j.xb + r0 * j.kp, j.kp, R, j.K, lo, hi);
    } else {
      j.kernel(we, j.y + r0 * j.N, j.N, j.x + r0 * j.K, R, j.K, lo, hi);
    }
    if (j.ep) finish(*j.ep, j.y, j.N, e, r0, R, lo, hi);
  }
}

}  // namespace

const char* decode_int_path_name() {
  switch (int_path()) {
    case IntPath::kAvx512Vnni: return "avx512-vnni";
    case IntPath::kAvx512Bw: return "avx512-bw";
    case IntPath::kAvx2: return "avx2";
    default: return "portable";
  }
}

void set_decode_vnni(bool allow) { vnni_allowed.store(allow, std::memory_order_relaxed); }

bool decode_packs() {
  const IntPath p = int_path();
  return p == IntPath::kAvx512Vnni || p == IntPath::kAvx512Bw || p == IntPath::kAvx2;
}

int64_t packed_bytes(WeightFormat f, int64_t E, int64_t N, int64_t K) {
  return E * ((N + 15) / 16) * quant_groups(K) * (f == WeightFormat::kQ4 ? 256 : 512);
}
int64_t packed_factors(WeightFormat f, int64_t E, int64_t N, int64_t K) {
  return E * ((N + 15) / 16) * quant_groups(K) * (f == WeightFormat::kQ4 ? 32 : 16);
}

void pack_quant(const QuantMatrix& w, int64_t E, int64_t N, int64_t K, uint8_t* packed, uint16_t* packed_scales) {
  const bool q4 = w.format == WeightFormat::kQ4;
  const int64_t G = quant_groups(K), blocks = (N + 15) / 16, group_bytes = q4 ? 16 : 32, factors = q4 ? 32 : 16;
  std::fill(packed, packed + packed_bytes(w.format, E, N, K), uint8_t{0});
  std::fill(packed_scales, packed_scales + packed_factors(w.format, E, N, K), uint16_t{0});
  const auto* q = static_cast<const uint8_t*>(w.data);
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t n = 0; n < N; ++n) {
      const int64_t row = e * N + n, b = e * blocks + n / 16, i = n % 16;
      for (int64_t g = 0; g < G; ++g) {
        uint8_t* dst = packed + (b * G + g) * (16 * group_bytes) + 4 * i;
        const uint8_t* src = q + row * G * group_bytes + g * group_bytes;
        const int64_t valid = std::min<int64_t>(32, K - g * 32);
        uint8_t group[32];
        if (valid < 32) {
          // A short last group: its padding zero (q4: byte k holds elements k and k + 16, each kept only below K).
          for (int64_t k = 0; k < group_bytes; ++k) {
            const uint8_t keep = q4 ? static_cast<uint8_t>((k < valid ? 0x0f : 0) | (k + 16 < valid ? 0xf0 : 0)) : (k < valid ? 0xff : 0);
            group[k] = static_cast<uint8_t>(src[k] & keep);
          }
          src = group;
        }
        for (int64_t k = 0; k < group_bytes; k += 4) std::memcpy(dst + (k / 4) * 64, src + k, 4);
        packed_scales[(b * G + g) * factors + i] = w.scales[row * G + g];
        if (q4) packed_scales[(b * G + g) * factors + 16 + i] = w.mins[row * G + g];
      }
    }
  }
}

const char* decode_bf16_path_name() { return bf16_dot() ? "avx512-bf16" : "f32-fma"; }

void set_decode_bf16_dot(bool allow) { bf16_dot_allowed.store(allow, std::memory_order_relaxed); }

void set_decode_int_rows(int64_t rows) { int_rows.store(rows < 0 ? kIntRowsAll : rows, std::memory_order_relaxed); }

const char* decode_path_name() {
  const RowKernel k = row_kernel();
  return k == decode_rows_avx512 ? "avx512" : k == decode_rows_avx2 ? "avx2-fma" : "portable";
}

void decode_matmul(const QuantMatrix& w, float* y, const float* x, const int32_t* offsets, int64_t E, int64_t N,
                   int64_t K, const DecodeEpilogue* epilogue) {
  const int64_t R = offsets[E];
  if (R == 0 || N == 0) return;
  if (K == 0) {
    std::fill(y, y + R * N, 0.f);
    // Still y = act(0 + bias), residual += y.
    if (epilogue)
      for (int64_t e = 0; e < E; ++e) finish(*epilogue, y, N, e, offsets[e], offsets[e + 1] - offsets[e], 0, N);
    return;
  }
  int64_t active = 0;
  for (int64_t e = 0; e < E; ++e) active += offsets[e + 1] > offsets[e];
  const int64_t irows = int_rows.load(std::memory_order_relaxed);
  const DecodeEpilogue* ep = epilogue && (epilogue->bias || epilogue->act != DecodeAct::kNone || epilogue->residual) ? epilogue : nullptr;
  DecodeJob job{&w, y, x, nullptr, 0, offsets, E, N, K, active, row_kernel(), int_path(), irows, QuantX{}, ep, false, nullptr};
  // bf16: x rounded to bf16 once, here, before the threads start (and packed for vdpbf16ps).
  if (w.format == WeightFormat::kBf16) {
    static thread_local Bf16XBuffer buffer;
    if (buffer.rounded.size() < static_cast<size_t>(R * K)) buffer.rounded.resize(static_cast<size_t>(R * K));
    round_to_bf16_serial(buffer.rounded.data(), x, R * K);
    job.x = buffer.rounded.data();
    if (bf16_dot()) {
      const int64_t kp = (K + 31) / 32 * 32;
      if (buffer.packed.size() < static_cast<size_t>(R * kp)) buffer.packed.resize(static_cast<size_t>(R * kp));
      for (int64_t r = 0; r < R; ++r) {
        uint16_t* dst = buffer.packed.data() + r * kp;
        const float* src = buffer.rounded.data() + r * K;
        for (int64_t k = 0; k < K; ++k) {
          uint32_t bits;
          std::memcpy(&bits, src + k, 4);
          dst[k] = static_cast<uint16_t>(bits >> 16);
        }
        std::fill(dst + K, dst + kp, uint16_t{0});
      }
      job.xb = buffer.packed.data();
      job.kp = kp;
    }
  }
  // q8/q4: the experts with 1 … int_rows rows of x take the integer kernels;
  // their rows are quantized here, once, before the threads start.
  if (w.format == WeightFormat::kQ8 || w.format == WeightFormat::kQ4) {
    bool any = false;
    for (int64_t e = 0; e < E && !any; ++e) any = offsets[e + 1] > offsets[e] && offsets[e + 1] - offsets[e] <= irows;
    if (any) {
      static thread_local QuantXBuffer buffer;
      job.qx = buffer.view(R, quant_x_groups(K));
      using Quantizer = void (*)(const float*, int64_t, int64_t, WeightFormat, const QuantX&);
      const Quantizer quantize = job.int_path == IntPath::kPortable ? quantize_x_portable
                                 : job.int_path == IntPath::kAvx2   ? quantize_x_avx2
                                                                    : quantize_x_avx512;
      for (int64_t e = 0; e < E; ++e) {
        const int64_t r0 = offsets[e], Re = offsets[e + 1] - r0;
        if (Re > 0 && Re <= irows) quantize(x + r0 * K, Re, K, w.format, job.qx.row(r0));
      }
      job.packed = w.packed && decode_packs();
      // Packed q8 with VNNI: each group's offset, −128 · Σ xq (the sum of its eight four-byte ones).
      if (job.packed && w.format == WeightFormat::kQ8 && job.int_path == IntPath::kAvx512Vnni) {
        static thread_local std::vector<int32_t> gneg;
        const int64_t Gx = job.qx.groups;
        if (gneg.size() < static_cast<size_t>(R * Gx)) gneg.resize(static_cast<size_t>(R * Gx));
        for (int64_t r = 0; r < R; ++r) {
          const int32_t* neg = job.qx.neg + r * Gx * 8;
          for (int64_t g = 0; g < Gx; ++g) {
            int32_t sum = 0;
            for (int c = 0; c < 8; ++c) sum += neg[g * 8 + c];
            gneg[r * Gx + g] = sum;
          }
        }
        job.gneg = gneg.data();
      }
    }
  }
  // Enough weight bytes per thread that waking one pays: 64 KiB (a thread
  // streams that in a few microseconds).
  const int64_t bytes = active * N * quant_row_elements(w.format, K) * element_bytes(w.format);
  const int64_t by_bytes = std::max<int64_t>(1, bytes / (64 << 10));
  const int64_t by_rows = std::max<int64_t>(1, active * N / 16);
  const int nth = static_cast<int>(std::min<int64_t>({num_threads(), by_bytes, by_rows}));
  const DecodeJob* jp = &job;  // one pointer captured: the std::function holds it without allocating
  parallel_run([jp](int t, int n) { decode_share(*jp, t, n); }, nth);
}

void dequantize(const QuantMatrix& w, float* out, int64_t rows, int64_t K) {
  if (rows == 0 || K == 0) return;
  const QuantMatrix* wp = &w;
  parallel_for(rows, grain_for(K, 1 << 16), [wp, out, K](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t k0 = 0; k0 < K; k0 += kQuantGroup) {
        dequant_group(*wp, K, n, k0, std::min<int64_t>(kQuantGroup, K - k0), out + n * K + k0);
      }
    }
  });
}

}  // namespace sigma
