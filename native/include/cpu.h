// Run-time CPU feature detection and the choice of kernel path.
#pragma once

namespace sigma {

bool cpu_has_avx2();
bool cpu_has_fma();
bool cpu_has_avx512f();

// Kernel families, each including the ones below it: the AVX-512 path runs
// the AVX2+FMA kernels too, with AVX-512 ones where they exist.
enum class KernelPath { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

// True when the AVX2+FMA kernels should run: the CPU has both and the path is
// not held below them.
bool use_avx2();
// True when the AVX-512 kernels should run as well.
bool use_avx512();
// Holds the kernel path at or below `most` (tests, benchmarks); kAvx512
// restores the run-time choice.
void set_kernel_path(KernelPath most);
// "avx512", "avx2-fma" or "portable": the path in use.
const char* kernel_path_name();

}  // namespace sigma
