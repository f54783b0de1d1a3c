// The GEMM driver: blocking, packing, threading and dispatch.
//
// Loop nest (per thread, on its own slice of C):
//   for jc in N by NC:            B block  [KC × NC] packed into NR-wide panels
//     for pc in K by KC:
//       pack B(pc, jc)
//       for ic in M by MC:        A block  [MC × KC] packed into MR-high panels
//         pack A(ic, pc)          (only when A is transposed; else read in place)
//         for jr, ir: micro-kernel on an MR×NR tile of C
// The register tile (MR×NR) and MC, KC, NC are data: gemm_plan(K, threads)
// (gemm_config.cpp) gives the tile and blocking for this CPU, kernel path,
// shape class and thread count — the tuner's, or derived from the cache
// sizes — or the overrides a test or the tuner set. Nothing below
// assumes a particular MR, NR or blocking: packing pads every edge panel with
// zeros, and a block of any size ends in edge tiles the kernel writes partly.
// (On Zen 4 the rule gives KC 512, MC 96, NC 1024 for the 6×16 tile: one B
// micro-panel of 32 KiB per L1d, a 192 KiB A block in L2, a 2 MiB B block.)
//
// The 6×16 tile comes as AVX2 and as AVX-512 (same panels): on Zen 4, whose
// 512-bit FMAs have the AVX2 peak, the zmm one runs the same FLOPs in 13
// instructions per k instead of 20, and squares 512–2048 took 8–29% less
// time, 1 and 2 threads (interleaved in a C++ harness, the path switched per call).
//
// Threads split C into disjoint column (or row) slices; each packs what it
// needs itself, so a region needs no barrier. Packing is O(MK + KN) per thread
// against O(MNK / threads) FMAs.
#include "gemm.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "cpu.h"
#include "gemm_ukernel.h"
#include "ops.h"
#include "panel_buffers.h"
#include "threadpool.h"
#include "vec.h"

namespace sigma {
namespace {

// Up to kGemmSmallMMax rows of op(A) (gemm.h; the tuner may lower it per
// direction, plan.small_m_nt / small_m_nn): the small-M path (below), not the blocked one.
constexpr int64_t kThinRows = 4; // up to this many rows of A (one too, for B stored [K,N]) …
constexpr int64_t kThinK = 8;    // … or this short an inner dimension: the thin kernels, 1.4–3× the tiled path here
// Up to this many rows of A with B stored [N,K] (x·Wᵀ, a batched decoding
// step, an expert's few tokens): the dot-product kernels that read B once
// (gemm_small_m_bt_avx512.cpp, gemm_thin_avx2.cpp), not the packed small-M
// path; up to kRowsBTLong when K is also short. With 2 threads and W from
// memory they took 0.61–0.81 of the packed path's time at 8 rows (W 2048×512
// and 512×2048), 0.73 and 0.89 at 12 and 16 rows with K 512, but 1.11 and
// 1.39 with K 2048 (3–4 passes over blocks of W's rows that no longer fit L1).
constexpr int64_t kRowsBT = 8;
constexpr int64_t kRowsBTLong = 16, kRowsBTShortK = 512;
constexpr int64_t kRowsBTNarrowN = 64;  // … or whatever K when B has at most this many rows
constexpr int64_t kPackSlack = 8; // floats past a packed A block that pack_a_avx2 may write

// Per-thread packing buffers (panel_buffers.h).
using PackBuffers = PanelBuffers<float>;
thread_local PackBuffers tls_pack;

// Packs op(A)[i0:i0+mc, k0:k0+kc] into MR-row panels: panel p holds, for each
// k, the MR values of rows i0+p*MR … (zero past the edge).
void pack_a(float* dst, const float* a, int64_t lda, bool trans, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
            int MR) {
  if (trans) {
    // A stored [K,M]: row k holds the mc values this block needs side by side.
    // Sixteen rows at a time are dealt out to every panel, rather than each
    // panel walking down all kc rows: rows lda apart land in the same few
    // cache sets, so a panel-by-panel walk rereads them from further out.
    constexpr int64_t kRows = 16;
    for (int64_t k1 = 0; k1 < kc; k1 += kRows) {
      const int64_t k2 = std::min(kc, k1 + kRows);
      for (int64_t p = 0; p < mc; p += MR) {
        const int mr = static_cast<int>(std::min<int64_t>(MR, mc - p));
        float* d = dst + (p / MR) * kc * MR;
        for (int64_t k = k1; k < k2; ++k) {
          const float* src = a + (k0 + k) * lda + i0 + p;
          if (MR == 6 && mr == MR && k + 1 < kc) {
            // One 8-float copy instead of six: the two extra floats come from
            // this row (or the start of the next, which exists: k + 1 < kc) and
            // land where row k + 1 of this panel is written next.
            std::memcpy(d + k * MR, src, 8 * sizeof(float));
            continue;
          }
          if (mr == MR) {
            std::memcpy(d + k * MR, src, MR * sizeof(float));
            continue;
          }
          for (int r = 0; r < mr; ++r) d[k * MR + r] = src[r];
          for (int r = mr; r < MR; ++r) d[k * MR + r] = 0.f;
        }
      }
    }
    return;
  }
  for (int64_t p = 0; p < mc; p += MR) {
    const int mr = static_cast<int>(std::min<int64_t>(MR, mc - p));
    if (MR == 6 && mr == MR && use_avx2()) {
      pack_a_avx2(dst, a + (i0 + p) * lda + k0, lda, kc);
    } else if (use_avx512() && pack_a_rows_avx512(dst, MR, mr, a + (i0 + p) * lda + k0, lda, kc)) {
    } else if (use_avx2()) {
      pack_a_rows_avx2(dst, MR, mr, a + (i0 + p) * lda + k0, lda, kc);
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        for (int r = 0; r < mr; ++r) dst[k * MR + r] = a[(i0 + p + r) * lda + k0 + k];
        for (int r = mr; r < MR; ++r) dst[k * MR + r] = 0.f;
      }
    }
    dst += kc * MR;
  }
}

// Packs op(B)[k0:k0+kc, j0:j0+nc] into NR-column panels: panel q holds, for
// each k, the NR values of columns j0+q*NR … (zero past the edge).
void pack_b(float* dst, const float* b, int64_t ldb, bool trans, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
            int NR) {
  for (int64_t q = 0; q < nc; q += NR) {
    const int nr = static_cast<int>(std::min<int64_t>(NR, nc - q));
    if (!trans) {
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = b + (k0 + k) * ldb + j0 + q;
        float* d = dst + k * NR;
        if (nr == NR) std::memcpy(d, src, sizeof(float) * NR);
        else {
          for (int j = 0; j < nr; ++j) d[j] = src[j];
          for (int j = nr; j < NR; ++j) d[j] = 0.f;
        }
      }
    } else if (nr == NR && NR % 8 == 0 && use_avx2()) {
      // Sixteen columns at a time (eight for the rest of a 24-column panel),
      // each group into its place in the panel's rows.
      int j = 0;
      for (; j + 16 <= NR; j += 16) pack_b_trans_avx2(dst + j, NR, b + (j0 + q + j) * ldb + k0, ldb, kc);
      for (; j < NR; j += 8) pack_b_trans8_avx2(dst + j, NR, b + (j0 + q + j) * ldb + k0, ldb, kc);
    } else {
      // B stored [N,K]: walk each column's contiguous k run.
      for (int j = 0; j < NR; ++j) {
        if (j < nr) {
          const float* src = b + (j0 + q + j) * ldb + k0;
          for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = src[k];
        } else {
          for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = 0.f;
        }
      }
    }
    dst += kc * NR;
  }
}

// Packs op(A)[0:M, 0:K] in groups of six k for gemm_small_m_kn_avx2:
// dst[g][m][i] = op(A)[m, 6g + i], zero past K.
void pack_a_kgroups(float* dst, const float* a, int64_t lda, bool trans, int64_t M, int64_t K) {
  const int64_t full = K / 6, rest = K - full * 6, groups = (K + 5) / 6;
  if (!trans) {
    // Row by row: A's rows are read in order, each group's six values land M·6 floats apart.
    for (int64_t m = 0; m < M; ++m) {
      const float* src = a + m * lda;
      for (int64_t g = 0; g < full; ++g) std::memcpy(dst + (g * M + m) * 6, src + g * 6, 6 * sizeof(float));
      if (rest) {
        float* d = dst + (full * M + m) * 6;
        for (int i = 0; i < 6; ++i) d[i] = i < rest ? src[full * 6 + i] : 0.f;
      }
    }
    return;
  }
  // A stored [K,M]: row k holds op(A)[·, k] for every m.
  for (int64_t k = 0; k < groups * 6; ++k) {
    float* d = dst + (k / 6) * M * 6 + k % 6;
    if (k < K)
      for (int64_t m = 0; m < M; ++m) d[m * 6] = a[k * lda + m];
    else
      for (int64_t m = 0; m < M; ++m) d[m * 6] = 0.f;
  }
}

// One row of A (a decoding step: one token through a layer): a matrix-vector
// product bound by reading B once, so no packing and no register tile —
// a dot product per column when B is stored [N,K], a row-by-row axpy when [K,N].
void sgemv_row(bool transA, bool transB, int64_t N, int64_t K, const float* a, int64_t lda, const float* b,
               int64_t ldb, float* c, bool accumulate) {
  thread_local std::vector<float> xs;
  const float* x = a;
  if (transA) {  // op(A) = a[k·lda]: gather the strided row once
    xs.resize(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) xs[k] = a[k * lda];
    x = xs.data();
  }
  if (transB) {
    for (int64_t j = 0; j < N; ++j) {
      const float d = vdot(x, b + j * ldb, K);
      c[j] = accumulate ? c[j] + d : d;
    }
  } else {
    if (!accumulate) std::memset(c, 0, sizeof(float) * N);
    for (int64_t k = 0; k < K; ++k) vaxpy(c, b + k * ldb, x[k], N);
  }
}

// Small M (all of op(A) fits one row block, as for one expert's rows): every
// element of B meets few rows, so B's packing is no longer paid for by the
// FMAs that reuse it, and streaming B from memory is no longer hidden by them.
//  - B stored [N,K] (y = x·Wᵀ, the expert forward): B is not packed at all.
//    The roles swap, Cᵀ = B·op(A)ᵀ: op(A)ᵀ is packed as 16-column panels (it
//    is small), the micro-kernel broadcasts B's rows in place, and each block
//    of Cᵀ lands in a small scratch tile that is added, transposed, into C
//    (writing C transposed tile by tile would hit rows ldc apart in one L1 set),
//    in 8×8 register transposes: 2–5% less time than element by element on
//    8 experts × 64 rows, 1 and 2 threads (interleaved A/B).
//    A pass spans up to 2048 k (kKCSmall), not KC: B's rows are read in
//    longer runs and C is written once; blocks of B rows shrink as the depth
//    grows so that a block stays near 192 KiB of L2. With rows of at most KC
//    floats (2 KiB) the next block is prefetched, spread over the current
//    block's tiles: each 2 KiB row is a fresh stream that the hardware
//    prefetcher has to pick up again, and with B in DRAM (eight experts'
//    weights, 32 MiB) 8 × 64 rows took 3–17% longer than one 512-row matmul.
//    Both changes together: 95–110% (interleaved A/B, K 512 and 2048, 1 and 2
//    threads). The prefetch is left out with longer rows (it cost 4–8 points
//    there) and with one panel of op(A)ᵀ (M ≤ 16: each tile is then short, and
//    a single product with B warm in L3 took 8–15% longer).
//  - B stored [K,N] (dx = dy·W[e], the expert backward): B is not packed
//    either. gemm_small_m_kn_avx2 keeps six rows × 16 columns of B in
//    registers while every row of C takes them (gemm_small_m_kn_avx512: × 32
//    columns, where the CPU has AVX-512); op(A) is packed in groups of
//    six k. Packing B instead cost about 13 cycles per 64-byte line in place
//    (rdtsc), against 64 cycles of FMAs per line for 64 rows; with 8 experts
//    × 64 rows this path takes 8–15 points off the grouped product's time
//    relative to one 512-row matmul, and 25–45% off single products of 5–33
//    rows (interleaved A/B of the two builds).
constexpr int64_t kNBSmall = 96;   // rows of B per scratch block ([N,K] case, kc ≤ kKCShort), a multiple of kMR
constexpr int64_t kKCSmall = 2048; // depth of a pass ([N,K] case)
constexpr int64_t kKCShort = 512;  // rows of B up to this long: blocks of kNBSmall rows, and prefetched

void sgemm_small_m(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
                   const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  PackBuffers& buf = tls_pack;
  if (!transB) {
    const bool avx512 = use_avx512();
    buf.a = PackBuffers::grow(buf.a, buf.a_cap, static_cast<size_t>((K + 5) / 6 * 6 * M));
    buf.b = PackBuffers::grow(buf.b, buf.b_cap, static_cast<size_t>(M * (avx512 ? 32 : 16)));
    pack_a_kgroups(buf.a, a, lda, transA, M, K);
    if (avx512)
      gemm_small_m_kn_avx512(M, N, K, buf.a, b, ldb, c, ldc, accumulate, buf.b);
    else
      gemm_small_m_kn_avx2(M, N, K, buf.a, b, ldb, c, ldc, accumulate, buf.b);
    return;
  }
  const auto ukernel = use_avx512() ? ukernel_avx512_direct : ukernel_avx2_direct;
  const int64_t kc_max = std::min<int64_t>(kKCSmall, K);
  // Rows of B per block: about 192 KiB of B whatever the depth.
  const int64_t nb_max =
      kc_max <= kKCShort ? kNBSmall : std::max<int64_t>(kMR, kNBSmall * kKCShort / kc_max / kMR * kMR);
  // op(A)ᵀ packed as NR-column panels.
  const int64_t m_pad = (M + kNR - 1) / kNR * kNR;
  buf.a = PackBuffers::grow(buf.a, buf.a_cap, static_cast<size_t>(kc_max * m_pad));
  buf.b = PackBuffers::grow(buf.b, buf.b_cap, static_cast<size_t>(nb_max * kNR));
  const int64_t tiles_per_block = (M + kNR - 1) / kNR * (nb_max / kMR);
  for (int64_t pc = 0; pc < K; pc += kc_max) {
    const int64_t kc = std::min(kc_max, K - pc);
    const bool acc = accumulate || pc > 0;
    // Short rows of B and more than one panel of op(A)ᵀ: the next block of B
    // is prefetched into L2, a share of its lines before each tile.
    const bool prefetch = kc <= kKCShort && M > kNR;
    const int64_t lines_per_row = (kc + 15) / 16;
    pack_b(buf.a, a, lda, !transA, pc, kc, 0, M, kNR);  // op(A)ᵀ[k, m]: a stored [M,K] is a "transposed B"
    float* scratch = buf.b;                         // [nb_max, 16]: a block of Cᵀ
    for (int64_t nb0 = 0; nb0 < N; nb0 += nb_max) {
      const int64_t nb = std::min(nb_max, N - nb0);
      const int64_t next_rows = prefetch ? std::max<int64_t>(0, std::min(nb_max, N - nb0 - nb_max)) : 0;
      const int64_t next_lines = next_rows * lines_per_row;
      const float* next = next_rows ? b + (nb0 + nb_max) * ldb + pc : b;
      int64_t tile = 0, row = 0, col = 0;  // the next block's line to prefetch: row, float column
      for (int64_t m0 = 0; m0 < M; m0 += kNR) {
        const float* panel = buf.a + (m0 / kNR) * kc * kNR;
        for (int64_t n0 = 0; n0 < nb; n0 += kMR, ++tile) {
          const int mr = static_cast<int>(std::min<int64_t>(kMR, nb - n0));
          const int64_t l0 = next_lines * tile / tiles_per_block, l1 = next_lines * (tile + 1) / tiles_per_block;
          for (int64_t l = l0; l < l1; ++l) {
            __builtin_prefetch(next + row * ldb + col, 0, 2);
            col += 16;
            if (col >= kc) col = 0, ++row;
          }
          ukernel(kc, b + (nb0 + n0) * ldb + pc, ldb, 1, panel, kNR, scratch + n0 * kNR, kNR, mr, kNR,
                              false);
        }
        add_transposed_avx2(c + m0 * ldc + nb0, ldc, scratch, nb, std::min<int64_t>(kNR, M - m0), acc);
      }
    }
  }
}

// The blocked product with the plan's tile and blocking.
void sgemm_blocked(const GemmPlan& plan, bool transA, bool transB, int64_t M, int64_t N, int64_t K, const float* a,
                   int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  const MicroKernel& tile = *plan.tile;
  const int MR = tile.mr, NR = tile.nr;
  const int64_t MC = plan.mc, KC = plan.kc, NC = plan.nc;
  PackBuffers& buf = tls_pack;
  // Packed blocks hold whole panels: a block's size rounded up to the tile.
  const int64_t nc_max = (std::min(NC, N) + NR - 1) / NR * NR;
  const int64_t mc_max = (std::min(MC, M) + MR - 1) / MR * MR;
  const int64_t kc_max = std::min(KC, K);
  buf.b = PackBuffers::grow(buf.b, buf.b_cap, static_cast<size_t>(kc_max * nc_max));
  buf.a = PackBuffers::grow(buf.a, buf.a_cap, static_cast<size_t>(kc_max * mc_max + kPackSlack));
  // A stored [M,K] is not packed when the tile reads A's rows in place: it
  // broadcasts from them (MR contiguous streams; the block stays in L2).
  // Transposed A is always packed: read in place its MR values per k would be
  // one cache line per k, lda apart.
  const bool in_place = !transA && tile.in_place_a;

  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc);
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      const bool acc = accumulate || pc > 0;
      pack_b(buf.b, b, ldb, transB, pc, kc, jc, nc, NR);
      for (int64_t ic = 0; ic < M; ic += MC) {
        const int64_t mc = std::min(MC, M - ic);
        if (!in_place) pack_a(buf.a, a, lda, transA, ic, mc, pc, kc, MR);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
          const float* bp = buf.b + (jr / NR) * kc * NR;
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
            float* ct = c + (ic + ir) * ldc + jc + jr;
            if (in_place)
              tile.run(kc, a + (ic + ir) * lda + pc, lda, 1, bp, NR, ct, ldc, mr, nr, acc);
            else
              tile.run(kc, buf.a + (ir / MR) * kc * MR, 1, MR, bp, NR, ct, ldc, mr, nr, acc);
          }
        }
      }
    }
  }
}

// Σ C² over the M×N block at c (rows ldc apart), on the calling thread.
double block_sum_squares(const float* c, int64_t ldc, int64_t M, int64_t N) {
  double s = 0;
  for (int64_t i = 0; i < M; ++i) s += sum_squares_serial(c + i * ldc, N);
  return s;
}

// Thin products with B stored [K,N] (few rows of op(A), or a short inner
// dimension: an expert's rank-few weight gradient) take gemm_thin_axpy_avx2.
bool thin_axpy_case(const GemmPlan& plan, bool transB, int64_t M, int64_t K) {
  return !plan.blocked_only && use_avx2() && !transB && (M <= kThinRows || K <= kThinK);
}

void serial_product(const GemmPlan& plan, bool transA, bool transB, int64_t M, int64_t N, int64_t K,
                    const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                    bool accumulate);

// The serial product; with sq, Σ C² (C as it stands after the product) is
// added into *sq: by the thin kernel from the registers it stores from (an
// expert's weight gradient over its few tokens: no second read of C), and
// otherwise by reading the block back right after the product, while much
// of it is still in cache.
void sgemm_serial_plan(const GemmPlan& plan, bool transA, bool transB, int64_t M, int64_t N, int64_t K,
                       const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                       bool accumulate, double* sq = nullptr) {
  if (M <= 0 || N <= 0) return;
  if (sq && K > 0 && thin_axpy_case(plan, transB, M, K)) {
    gemm_thin_axpy_avx2(M, N, K, a, transA ? 1 : lda, transA ? lda : 1, b, ldb, c, ldc, accumulate, sq);
    return;
  }
  serial_product(plan, transA, transB, M, N, K, a, lda, b, ldb, c, ldc, accumulate);
  if (sq) *sq += block_sum_squares(c, ldc, M, N);
}

void serial_product(const GemmPlan& plan, bool transA, bool transB, int64_t M, int64_t N, int64_t K,
                    const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                    bool accumulate) {
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::memset(c + i * ldc, 0, sizeof(float) * N);
    return;
  }
  if (!plan.blocked_only) {
    // Thin products (an expert with a few tokens, its rank-few weight gradient):
    // read in place; the tiled path would pack B for a few FMAs per element.
    if (use_avx2()) {
      // B stored [K,N], one row of A too: sums of B's rows, eight at a time,
      // read as contiguous streams (sgemv_row's row-by-row axpy took 1.3–2×
      // as long with B from memory, 2 threads).
      if (thin_axpy_case(plan, transB, M, K)) {
        gemm_thin_axpy_avx2(M, N, K, a, transA ? 1 : lda, transA ? lda : 1, b, ldb, c, ldc, accumulate);
        return;
      }
      // One row too: these kernels sum a row of A the same way whatever rows
      // share the call, so a row's products are the same bits at M = 1 and
      // at M = 5 (a decoding step's router gates beside a speculative
      // verification's; sgemv_row summed in another order). A narrow B (a
      // router's gate, N = experts) takes them up to 16 rows whatever K: it
      // stays in cache, and a verification of 9–16 rows then routes as its
      // one-row steps do on a model of any width.
      if (transB && !transA && M <= kRowsBTLong && (M <= kRowsBT || K <= kRowsBTShortK || N <= kRowsBTNarrowN)) {
        if (use_avx512())
          gemm_small_m_bt_avx512(M, N, K, a, lda, b, ldb, c, ldc, accumulate);
        else
          gemm_thin_rows_bt_avx2(M, N, K, a, lda, b, ldb, c, ldc, accumulate);
        return;
      }
    }
    if (M == 1) {
      sgemv_row(transA, transB, N, K, a, lda, b, ldb, c, accumulate);
      return;
    }
    if (M <= (transB ? plan.small_m_nt : plan.small_m_nn) && use_avx2()) {
      sgemm_small_m(transA, transB, M, N, K, a, lda, b, ldb, c, ldc, accumulate);
      return;
    }
  }
  sgemm_blocked(plan, transA, transB, M, N, K, a, lda, b, ldb, c, ldc, accumulate);
}

}  // namespace

void sgemm_serial(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
                  const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  // Called inside a parallel region: the plan for products on busy cores.
  sgemm_serial_plan(gemm_plan(K, num_threads()), transA, transB, M, N, K, a, lda, b, ldb, c, ldc, accumulate);
}

namespace {

// Splits C into `nt` slices along N (or M when C is tall and narrow) and runs
// the serial product on slice `t`, all slices with the caller's plan. Column
// slices are multiples of the tile's NR, row slices of its MR.
void gemm_slice(const GemmPlan& plan, int t, int nt, bool transA, bool transB, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
                const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate, double* sq = nullptr) {
  // Split the larger dimension, so that each thread packs the smaller share of the
  // operand it does not share (row slices pack half of A, column slices half of B).
  const int64_t MR = plan.tile->mr, NR = plan.tile->nr;
  if (N >= M || M < MR * nt) {
    const int64_t panels = (N + NR - 1) / NR;
    const int64_t p0 = panels * t / nt, p1 = panels * (t + 1) / nt;
    const int64_t j0 = p0 * NR, j1 = std::min(N, p1 * NR);
    if (j0 >= j1) return;
    const float* bs = transB ? b + j0 * ldb : b + j0;
    sgemm_serial_plan(plan, transA, transB, M, j1 - j0, K, a, lda, bs, ldb, c + j0, ldc, accumulate, sq);
  } else {
    const int64_t panels = (M + MR - 1) / MR;
    const int64_t p0 = panels * t / nt, p1 = panels * (t + 1) / nt;
    const int64_t i0 = p0 * MR, i1 = std::min(M, p1 * MR);
    if (i0 >= i1) return;
    const float* as = transA ? a + i0 : a + i0 * lda;
    sgemm_serial_plan(plan, transA, transB, i1 - i0, N, K, as, lda, b, ldb, c + i0 * ldc, ldc, accumulate, sq);
  }
}

// Threads worth using for a product of this size (below ~1 MFLOP one thread wins).
int threads_for(int64_t M, int64_t N, int64_t K) {
  const double flops = 2.0 * static_cast<double>(M) * N * K;
  if (flops < 1e6) return 1;
  return num_threads();
}

}  // namespace

void sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b,
           int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  const int nt = threads_for(M, N, K);
  const GemmPlan plan = gemm_plan(K, nt);
  if (nt <= 1) {
    sgemm_serial_plan(plan, transA, transB, M, N, K, a, lda, b, ldb, c, ldc, accumulate);
    return;
  }
  parallel_run([&](int t, int n) { gemm_slice(plan, t, n, transA, transB, M, N, K, a, lda, b, ldb, c, ldc, accumulate); },
               nt);
}

void sgemm_batched(bool transA, bool transB, int64_t batch, int64_t M, int64_t N, int64_t K, const float* a,
                   const float* b, float* c, bool accumulate) {
  const int64_t lda = transA ? M : K, ldb = transB ? K : N;
  const int nt = threads_for(batch * M, N, K);
  const GemmPlan plan = gemm_plan(K, nt);
  auto one = [&](int64_t s, int t, int nt) {
    gemm_slice(plan, t, nt, transA, transB, M, N, K, a + s * M * K, lda, b + s * K * N, ldb, c + s * M * N, N, accumulate);
  };
  if (nt <= 1) {
    for (int64_t s = 0; s < batch; ++s) one(s, 0, 1);
    return;
  }
  // Many small products: whole products per thread; few large ones: split each.
  if (batch >= 4 * nt) {
    parallel_for(batch, 1, [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s) one(s, 0, 1);
    });
  } else {
    parallel_run([&](int t, int n) {
      for (int64_t s = 0; s < batch; ++s) one(s, t, n);
    }, nt);
  }
}

namespace {

// Whole experts per thread: each expert's weights are then streamed, and its
// rows packed, by one thread only, where slicing every expert across threads
// has each thread pack the same rows again. Experts go, largest first, to the
// least loaded thread. Returns the owner of each expert (the calling thread's
// grow-once scratch, read by the workers through this pointer), or null when
// that would leave the busiest thread more than an eighth over an even share
// (few experts, or one holding most rows): then every thread takes a slice of each.
const int* whole_expert_owners(const int32_t* offsets, int64_t E, int nt) {
  if (E < 2 * nt) return nullptr;
  thread_local std::vector<int> owner;
  thread_local std::vector<int64_t> order, load;
  owner.assign(static_cast<size_t>(E), 0);
  order.resize(static_cast<size_t>(E));
  load.assign(static_cast<size_t>(nt), 0);
  for (int64_t e = 0; e < E; ++e) order[e] = e;
  auto rows_of = [&](int64_t e) { return static_cast<int64_t>(offsets[e + 1] - offsets[e]); };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rows_of(a) > rows_of(b); });
  for (int64_t e : order) {
    const int t = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[e] = t;
    load[t] += rows_of(e);
  }
  const int64_t R = offsets[E], most = *std::max_element(load.begin(), load.end());
  return most * nt <= R + R / 8 ? owner.data() : nullptr;
}

// Runs one(e, t, n) for every expert: whole experts per thread when
// whole_expert_owners allows it (t = 0, n = 1: the expert's product runs
// serially on its owner), else every thread on its slice of each expert.
template <typename F>
void for_experts(const int32_t* offsets, int64_t E, int nt, const F& one) {
  if (nt <= 1) {
    for (int64_t e = 0; e < E; ++e) one(e, 0, 1);
    return;
  }
  if (const int* own = whole_expert_owners(offsets, E, nt)) {
    parallel_run([&](int t, int) {
      for (int64_t e = 0; e < E; ++e)
        if (own[e] == t) one(e, 0, 1);
    }, nt);
    return;
  }
  parallel_run([&](int t, int n) {
    for (int64_t e = 0; e < E; ++e) one(e, t, n);
  }, nt);
}

}  // namespace

void for_each_expert(const int32_t* offsets, int64_t E, int nt, const std::function<void(int64_t, int, int)>& one) {
  for_experts(offsets, E, nt, one);
}

namespace {

// WOf(e): expert e's matrix (or its gradient).
template <typename WOf>
void grouped_gemm_impl(float* y, const float* x, const WOf& w_of, const int32_t* offsets, int64_t E, int64_t N,
                       int64_t K, bool transW, bool accumulate) {
  const int nt = threads_for(offsets[E], N, K);
  const GemmPlan plan = gemm_plan(K, nt);
  for_experts(offsets, E, nt, [&](int64_t e, int t, int n) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
    if (rows == 0) return;
    gemm_slice(plan, t, n, false, transW, rows, N, K, x + r0 * K, K, w_of(e), transW ? K : N, y + r0 * N, N, accumulate);
  });
}

// With `squares`, also returns Σ dW² over every expert's gradient as it
// stands after the call (ECSS clips with it instead of reading the gradients
// again): each slice's sum is taken as the slice is written (sgemm_serial_plan),
// kept per (slice, expert), and added up in a fixed order afterwards.
template <typename DWOf>
double grouped_gemm_weight_grad_impl(const DWOf& dw_of, const float* dy, const float* x, const int32_t* offsets, int64_t E,
                                     int64_t N, int64_t K, bool transW, bool accumulate, bool squares = false) {
  const int nt = threads_for(std::max<int64_t>(offsets[E], 1), N, K);
  // The products' depth is an expert's rows: the plan for the average expert.
  const GemmPlan plan = gemm_plan(std::max<int64_t>(1, offsets[E] / std::max<int64_t>(E, 1)), nt);
  // part[t·E + e]: slice t of expert e (t = 0 for a whole expert); written by one thread each.
  thread_local std::vector<double> part_tls;
  std::vector<double>& part = part_tls;
  if (squares) part.assign(static_cast<size_t>(nt * E), 0.0);
  for_experts(offsets, E, nt, [&](int64_t e, int t, int n) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
    float* out = dw_of(e);
    double* sq = squares ? &part[static_cast<size_t>(t * E + e)] : nullptr;
    // transW: dW[e] [N,K] = dy_eᵀ [N,rows] · x_e [rows,K];  else dW[e] [K,N] = x_eᵀ · dy_e.
    // An expert with no rows gets zeros (or keeps its gradient when accumulating).
    if (transW)
      gemm_slice(plan, t, n, true, false, N, K, rows, dy + r0 * N, N, x + r0 * K, K, out, K, accumulate, sq);
    else
      gemm_slice(plan, t, n, true, false, K, N, rows, x + r0 * K, K, dy + r0 * N, N, out, N, accumulate, sq);
  });
  double total = 0;
  if (squares)
    for (int64_t e = 0; e < E; ++e)
      for (int t = 0; t < nt; ++t) total += part[static_cast<size_t>(t * E + e)];
  return total;
}

}  // namespace

void grouped_gemm(float* y, const float* x, const float* w, const int32_t* offsets, int64_t E, int64_t N, int64_t K,
                  bool transW, bool accumulate) {
  grouped_gemm_impl(y, x, [&](int64_t e) { return w + e * N * K; }, offsets, E, N, K, transW, accumulate);
}

void grouped_gemm_parts(float* y, const float* x, const float* const* w, const int32_t* offsets, int64_t E, int64_t N,
                        int64_t K, bool transW, bool accumulate) {
  grouped_gemm_impl(y, x, [&](int64_t e) { return w[e]; }, offsets, E, N, K, transW, accumulate);
}

void grouped_gemm_weight_grad(float* dw, const float* dy, const float* x, const int32_t* offsets, int64_t E, int64_t N,
                              int64_t K, bool transW, bool accumulate) {
  grouped_gemm_weight_grad_impl([&](int64_t e) { return dw + e * N * K; }, dy, x, offsets, E, N, K, transW, accumulate);
}

void grouped_gemm_weight_grad_parts(float* const* dw, const float* dy, const float* x, const int32_t* offsets, int64_t E,
                                    int64_t N, int64_t K, bool transW, bool accumulate) {
  grouped_gemm_weight_grad_impl([&](int64_t e) { return dw[e]; }, dy, x, offsets, E, N, K, transW, accumulate);
}

double grouped_gemm_weight_grad_squares(float* dw, const float* dy, const float* x, const int32_t* offsets, int64_t E,
                                        int64_t N, int64_t K, bool transW, bool accumulate) {
  return grouped_gemm_weight_grad_impl([&](int64_t e) { return dw + e * N * K; }, dy, x, offsets, E, N, K, transW,
                                       accumulate, true);
}

double grouped_gemm_weight_grad_parts_squares(float* const* dw, const float* dy, const float* x, const int32_t* offsets,
                                              int64_t E, int64_t N, int64_t K, bool transW, bool accumulate) {
  return grouped_gemm_weight_grad_impl([&](int64_t e) { return dw[e]; }, dy, x, offsets, E, N, K, transW, accumulate,
                                       true);
}

double fma_peak_seconds(int64_t iters, int threads) {
  // At most the pool's threads, each running one chain set (more would queue
  // on the threads there are and time one set each).
  threads = std::max(1, std::min(threads, num_threads()));
  std::vector<double> secs(threads);
  parallel_run(
      [&](int t, int) {
        secs[t] = use_avx512() ? fma_chains_avx512(iters) : use_avx2() ? fma_chains_avx2(iters) : fma_chains_portable(iters);
      },
      threads);
  return *std::max_element(secs.begin(), secs.end());
}

}  // namespace sigma
