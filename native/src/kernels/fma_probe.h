// The FMA-peak probe's loop, instantiated by each ISA file (gemm_avx2.cpp,
// gemm_avx512.cpp) with its own vector type and FMA, after its target pragma.
// Twelve independent chains in named accumulators (an array would live in
// memory): enough to cover the FMA latency on two pipes.
#pragma once
#include <chrono>
#include <cstdint>

namespace sigma {
namespace {  // internal to each ISA file: no shared (weak) symbol across targets

// Seconds for `iters` rounds of x = Fma(x, m, a) on twelve chains of V.
template <typename V, V (*Fma)(V, V, V)>
double time_fma_chains(int64_t iters, V one, V m, V a) {
  V x0 = one, x1 = one, x2 = one, x3 = one, x4 = one, x5 = one;
  V x6 = one, x7 = one, x8 = one, x9 = one, x10 = one, x11 = one;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t it = 0; it < iters; ++it) {
    x0 = Fma(x0, m, a);
    x1 = Fma(x1, m, a);
    x2 = Fma(x2, m, a);
    x3 = Fma(x3, m, a);
    x4 = Fma(x4, m, a);
    x5 = Fma(x5, m, a);
    x6 = Fma(x6, m, a);
    x7 = Fma(x7, m, a);
    x8 = Fma(x8, m, a);
    x9 = Fma(x9, m, a);
    x10 = Fma(x10, m, a);
    x11 = Fma(x11, m, a);
    // Each round's results are taken and given back, so no chain can be
    // folded or dropped; costs no instruction.
    __asm__ volatile("" : "+v"(x0), "+v"(x1), "+v"(x2), "+v"(x3), "+v"(x4), "+v"(x5), "+v"(x6), "+v"(x7), "+v"(x8),
                     "+v"(x9), "+v"(x10), "+v"(x11));
  }
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double>(t1 - t0).count();
}

}  // namespace
}  // namespace sigma
