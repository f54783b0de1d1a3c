// Run-time ISA choice for the loop kernels: GCC/Clang function multiversioning
// compiles each marked function twice (x86-64-v3 = AVX2 + FMA, and the
// baseline) and picks one when the addon loads. The loops are written so the
// compiler vectorises them (independent lanes, 8-wide partial sums).
#pragma once
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(SIGMA_NO_CLONES)
#define SIGMA_SIMD __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SIGMA_SIMD
#endif
