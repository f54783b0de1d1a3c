// Run-time CPU feature detection and the choice of kernel path.
#pragma once

namespace sigma {

bool cpu_has_avx2();
bool cpu_has_fma();
bool cpu_has_avx512f();

// True when the AVX2+FMA kernels should run: the CPU has both and the
// portable path is not forced.
bool use_avx2();
// Forces the portable (compiler-vectorised, no intrinsics) path on or off.
void force_portable(bool on);
// "avx2-fma" or "portable".
const char* kernel_path_name();

}  // namespace sigma
