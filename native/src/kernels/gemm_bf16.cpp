// The bf16 GEMM's driver: which path runs, the blocking, the threads, and the
// converted-f32 path. (What is computed: native/include/gemm_bf16.h.)
//
// The AVX512_BF16 path is the f32 driver's loop nest (gemm.cpp) over bf16
// pair panels instead of f32 ones:
//   for jc in N by NC:             B block [KC × NC], packed into 32-column pair panels
//     for pc in K by KC:
//       pack B(pc, jc)
//       for ic in M by MC:         A block [MC × KC], packed into 12-row pair panels
//         pack A(ic, pc)
//         for jr, ir: the 12×32 vdpbf16ps tile on a tile of C
// Rounding to bf16 happens in the packing, so each operand is rounded once
// per block that uses it; nothing is stored in bf16 between calls. A is
// always packed (the f32 6×16 tile reads A's rows in place, but a bf16 pair
// is not a float of A).
//
// Blocking (bytes of bf16, half those of f32, so the same cache shares hold
// twice the k of the f32 rule in gemm_config.cpp):
//  - KC: one 32-column B panel, KC·32·2 bytes, fills the L1d: 512 on a 32 KiB
//    L1d. A multiple of 32 (the packing converts 32 k at a time), so only the
//    last block of an odd K ends in a half pair.
//  - MC: the A block, MC·KC·2 bytes, takes 3/16 of L2 (192 rows on Zen 4's
//    1 MiB), a multiple of the tile's 12 rows.
//  - NC: the B block, NC·KC·2 bytes, a sixteenth of the L3 and at most half
//    of one core's share of it (half of L2 without an L3), a multiple of 32.
// Threads split C into column (or row) slices as the f32 driver does, each
// packing what it needs; grouped products use the f32 driver's schedule of
// experts over threads (for_each_expert in gemm.cpp).
//
// Elsewhere — no AVX512_BF16, a kernel path held below avx512, or the
// converted path forced — both operands are rounded into f32 scratch copies
// (round_to_bf16) and the ordinary f32 GEMM multiplies them: the products are
// the same exact products of bf16 values, summed in f32 in another order.
#include "gemm_bf16.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "cpu.h"
#include "gemm.h"
#include "gemm_bf16_kernels.h"
#include "panel_buffers.h"
#include "simd.h"
#include "threadpool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace sigma {

bool cpu_has_avx512bf16() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    if (!cpu_has_avx512f()) return false;  // also says the OS saves zmm state
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid_max(0, nullptr) < 7) return false;
    __cpuid_count(7, 0, a, b, c, d);
    const bool bw = (b >> 30) & 1, dq = (b >> 17) & 1, vl = (b >> 31) & 1;
    __cpuid_count(7, 1, a, b, c, d);
    const bool bf16 = (a >> 5) & 1;
    return bw && dq && vl && bf16;
  }();
  return has;
#else
  return false;
#endif
}

namespace {

std::atomic<bool> force_converted{false};

bool use_bf16_tile() {
  return !force_converted.load(std::memory_order_relaxed) && use_avx512() && cpu_has_avx512bf16();
}

constexpr int MR = kBf16MR, NR = kBf16NR;

// The f32 driver's rule (gemm_config.cpp) counted in bf16 bytes: a B micro-panel
// of KC·NR·2 bytes fills the L1d, and so on.
const GemmBlocking& blocking() {
  static const GemmBlocking bk = gemm_blocking_rule(cpu_info(), MR, NR, 2);
  return bk;
}

// Per-thread panel buffers (panel_buffers.h), in words of two bf16.
using PairBuffers = PanelBuffers<uint32_t>;
thread_local PairBuffers tls_pairs;

// op(B)[pc:pc+kc, jc:jc+nc] as 32-column pair panels (panel q at q·kp·32).
void pack_b(uint32_t* dst, const float* b, int64_t ldb, bool trans, int64_t pc, int64_t kc, int64_t jc, int64_t nc) {
  const int64_t kp = (kc + 1) / 2;
  for (int64_t q = 0; q < nc; q += NR, dst += kp * NR) {
    const int64_t cols = std::min<int64_t>(NR, nc - q);
    if (trans) {
      // B stored [N,K]: column j of op(B) is row j of b, contiguous in k; 16 columns per transpose.
      for (int64_t h = 0; h < NR; h += 16) {
        const int rows = static_cast<int>(std::clamp<int64_t>(cols - h, 0, 16));
        bf16_pack_rows(dst + h, NR, 16, b + (jc + q + h) * ldb + pc, ldb, rows, kc);
      }
    } else {
      // B stored [K,N]: row k of op(B) is contiguous in j.
      bf16_pack_interleave(dst, NR, NR, b + pc * ldb + jc + q, ldb, static_cast<int>(cols), kc);
    }
  }
}

// op(A)[ic:ic+mc, pc:pc+kc] as 12-row pair panels (panel at (ir/12)·kp·12).
void pack_a(uint32_t* dst, const float* a, int64_t lda, bool trans, int64_t ic, int64_t mc, int64_t pc, int64_t kc) {
  const int64_t kp = (kc + 1) / 2;
  for (int64_t ir = 0; ir < mc; ir += MR, dst += kp * MR) {
    const int rows = static_cast<int>(std::min<int64_t>(MR, mc - ir));
    if (trans)  // A stored [K,M]: row k holds the panel's rows side by side
      bf16_pack_interleave(dst, MR, MR, a + pc * lda + ic + ir, lda, rows, kc);
    else  // A stored [M,K]: each row contiguous in k
      bf16_pack_rows(dst, MR, MR, a + (ic + ir) * lda + pc, lda, rows, kc);
  }
}

void blocked(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b,
             int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::memset(c + i * ldc, 0, sizeof(float) * N);
    return;
  }
  const GemmBlocking& bk = blocking();
  PairBuffers& buf = tls_pairs;
  const int64_t kp_max = (std::min(bk.kc, K) + 1) / 2;
  const int64_t nc_max = (std::min(bk.nc, N) + NR - 1) / NR * NR;
  const int64_t mc_max = (std::min(bk.mc, M) + MR - 1) / MR * MR;
  buf.b = PairBuffers::grow(buf.b, buf.b_cap, static_cast<size_t>(kp_max * nc_max));
  buf.a = PairBuffers::grow(buf.a, buf.a_cap, static_cast<size_t>(kp_max * mc_max));
  for (int64_t jc = 0; jc < N; jc += bk.nc) {
    const int64_t nc = std::min(bk.nc, N - jc);
    for (int64_t pc = 0; pc < K; pc += bk.kc) {
      const int64_t kc = std::min(bk.kc, K - pc), kp = (kc + 1) / 2;
      const bool acc = accumulate || pc > 0;
      pack_b(buf.b, b, ldb, transB, pc, kc, jc, nc);
      for (int64_t ic = 0; ic < M; ic += bk.mc) {
        const int64_t mc = std::min(bk.mc, M - ic);
        pack_a(buf.a, a, lda, transA, ic, mc, pc, kc);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
          const uint32_t* bp = buf.b + (jr / NR) * kp * NR;
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
            bf16_tile(kp, buf.a + (ir / MR) * kp * MR, bp, c + (ic + ir) * ldc + jc + jr, ldc, mr, nr, acc);
          }
        }
      }
    }
  }
}

// Slice t of nt of C (columns in multiples of 32, or rows in multiples of 12
// when C is tall and narrow), as gemm.cpp's gemm_slice.
void slice(int t, int nt, bool transA, bool transB, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
           const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (N >= M || M < MR * nt) {
    const int64_t panels = (N + NR - 1) / NR;
    const int64_t j0 = panels * t / nt * NR, j1 = std::min(N, panels * (t + 1) / nt * NR);
    if (j0 >= j1) return;
    blocked(transA, transB, M, j1 - j0, K, a, lda, transB ? b + j0 * ldb : b + j0, ldb, c + j0, ldc, accumulate);
  } else {
    const int64_t panels = (M + MR - 1) / MR;
    const int64_t i0 = panels * t / nt * MR, i1 = std::min(M, panels * (t + 1) / nt * MR);
    if (i0 >= i1) return;
    blocked(transA, transB, i1 - i0, N, K, transA ? a + i0 : a + i0 * lda, lda, b, ldb, c + i0 * ldc, ldc, accumulate);
  }
}

int threads_for(int64_t M, int64_t N, int64_t K) {
  return 2.0 * static_cast<double>(M) * N * K < 1e6 ? 1 : num_threads();
}

// ---- The converted-f32 path ----

// Rounded copies of the operands, on the calling thread, grow-once.
thread_local std::vector<float> tls_round_a, tls_round_b;

const float* rounded(std::vector<float>& into, const float* src, int64_t n) {
  if (static_cast<int64_t>(into.size()) < n) into.resize(static_cast<size_t>(n));
  round_to_bf16(into.data(), src, n);
  return into.data();
}

}  // namespace

// The rounding rule of VCVTNE2PS2BF16, element by element (vectorised by the
// compiler): NaN → its top half with the quiet bit set; zero and subnormal →
// signed zero; otherwise add 0x7FFF plus the lowest kept bit (ties go to the
// even neighbour) and drop the low 16 bits. A carry out of the mantissa bumps
// the exponent, and past the largest finite bf16 it gives infinity.
namespace {
SIGMA_LOOP void round_to_bf16_loop(float* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t x;
    std::memcpy(&x, src + i, 4);
    const uint32_t mag = x & 0x7FFFFFFFu;
    uint32_t r = (x + 0x7FFFu + ((x >> 16) & 1u)) & 0xFFFF0000u;
    r = mag < 0x00800000u ? (x & 0x80000000u) : r;
    r = mag > 0x7F800000u ? ((x | 0x00400000u) & 0xFFFF0000u) : r;
    std::memcpy(dst + i, &r, 4);
  }
}
SIGMA_VERSIONS(round_to_bf16_v, round_to_bf16_loop)
}  // namespace
void round_to_bf16_serial(float* dst, const float* src, int64_t n) { round_to_bf16_v(dst, src, n); }

void round_to_bf16(float* dst, const float* src, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t i0, int64_t i1) { round_to_bf16_serial(dst + i0, src + i0, i1 - i0); });
}

void set_bf16_force_converted(bool force) { force_converted.store(force, std::memory_order_relaxed); }

const char* bf16_path_name() { return use_bf16_tile() ? "avx512-bf16" : "converted-f32"; }

void bf16_gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b,
               int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (!use_bf16_tile()) {
    // Rounded copies with the same layouts and leading dimensions (the rows a
    // leading dimension skips are rounded too: they are inside the arrays).
    const int64_t a_len = M <= 0 || K <= 0 ? 0 : (transA ? (K - 1) * lda + M : (M - 1) * lda + K);
    const int64_t b_len = N <= 0 || K <= 0 ? 0 : (transB ? (N - 1) * ldb + K : (K - 1) * ldb + N);
    const float* ar = rounded(tls_round_a, a, a_len);
    const float* br = rounded(tls_round_b, b, b_len);
    sgemm(transA, transB, M, N, K, ar, lda, br, ldb, c, ldc, accumulate);
    return;
  }
  const int nt = threads_for(M, N, K);
  if (nt <= 1) {
    blocked(transA, transB, M, N, K, a, lda, b, ldb, c, ldc, accumulate);
    return;
  }
  parallel_run([&](int t, int n) { slice(t, n, transA, transB, M, N, K, a, lda, b, ldb, c, ldc, accumulate); }, nt);
}

namespace {

// The grouped products on the bf16 tile, expert e's matrix at w_of(e).
template <typename WOf>
void grouped_tile(float* y, const float* x, const WOf& w_of, const int32_t* offsets, int64_t E, int64_t N, int64_t K,
                  bool transW, bool accumulate) {
  for_each_expert(offsets, E, threads_for(offsets[E], N, K), [&](int64_t e, int t, int n) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
    if (rows == 0) return;
    slice(t, n, false, transW, rows, N, K, x + r0 * K, K, w_of(e), transW ? K : N, y + r0 * N, N, accumulate);
  });
}

template <typename DWOf>
void weight_grad_tile(const DWOf& dw_of, const float* dy, const float* x, const int32_t* offsets, int64_t E, int64_t N,
                      int64_t K, bool transW, bool accumulate) {
  for_each_expert(offsets, E, threads_for(std::max<int64_t>(offsets[E], 1), N, K), [&](int64_t e, int t, int n) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
    // transW: dW[e] [N,K] = dy_eᵀ·x_e;  else dW[e] [K,N] = x_eᵀ·dy_e (no rows: zeros, or kept when accumulating).
    if (transW)
      slice(t, n, true, false, N, K, rows, dy + r0 * N, N, x + r0 * K, K, dw_of(e), K, accumulate);
    else
      slice(t, n, true, false, K, N, rows, x + r0 * K, K, dy + r0 * N, N, dw_of(e), N, accumulate);
  });
}

}  // namespace

void bf16_grouped_gemm(float* y, const float* x, const float* w, const int32_t* offsets, int64_t E, int64_t N,
                       int64_t K, bool transW, bool accumulate) {
  if (!use_bf16_tile()) {
    const float* xr = rounded(tls_round_a, x, offsets[E] * K);
    grouped_gemm(y, xr, rounded(tls_round_b, w, E * N * K), offsets, E, N, K, transW, accumulate);
    return;
  }
  grouped_tile(y, x, [&](int64_t e) { return w + e * N * K; }, offsets, E, N, K, transW, accumulate);
}

void bf16_grouped_gemm_parts(float* y, const float* x, const float* const* w, const int32_t* offsets, int64_t E,
                             int64_t N, int64_t K, bool transW, bool accumulate) {
  if (!use_bf16_tile()) {
    // The parts rounded into one stacked copy.
    std::vector<float>& wr = tls_round_b;
    if (static_cast<int64_t>(wr.size()) < E * N * K) wr.resize(static_cast<size_t>(E * N * K));
    for (int64_t e = 0; e < E; ++e) round_to_bf16(wr.data() + e * N * K, w[e], N * K);
    grouped_gemm(y, rounded(tls_round_a, x, offsets[E] * K), wr.data(), offsets, E, N, K, transW, accumulate);
    return;
  }
  grouped_tile(y, x, [&](int64_t e) { return w[e]; }, offsets, E, N, K, transW, accumulate);
}

void bf16_grouped_gemm_weight_grad(float* dw, const float* dy, const float* x, const int32_t* offsets, int64_t E,
                                   int64_t N, int64_t K, bool transW, bool accumulate) {
  if (!use_bf16_tile()) {
    const float* dyr = rounded(tls_round_a, dy, offsets[E] * N);
    grouped_gemm_weight_grad(dw, dyr, rounded(tls_round_b, x, offsets[E] * K), offsets, E, N, K, transW, accumulate);
    return;
  }
  weight_grad_tile([&](int64_t e) { return dw + e * N * K; }, dy, x, offsets, E, N, K, transW, accumulate);
}

void bf16_grouped_gemm_weight_grad_parts(float* const* dw, const float* dy, const float* x, const int32_t* offsets,
                                         int64_t E, int64_t N, int64_t K, bool transW, bool accumulate) {
  if (!use_bf16_tile()) {
    const float* dyr = rounded(tls_round_a, dy, offsets[E] * N);
    grouped_gemm_weight_grad_parts(dw, dyr, rounded(tls_round_b, x, offsets[E] * K), offsets, E, N, K, transW,
                                   accumulate);
    return;
  }
  weight_grad_tile([&](int64_t e) { return dw[e]; }, dy, x, offsets, E, N, K, transW, accumulate);
}

}  // namespace sigma
