// Run-time CPU feature detection and the choice of kernel path.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>

namespace sigma {

// What cpuid (or, failing it, the OS) says about this CPU (cpu_info.cpp).
// A size is 0 when nothing reported it; `cache_source` names where the
// sizes came from ("cpuid leaf 4", "cpuid 0x8000001D", "cpuid 0x80000005/6",
// "sysconf", or "none (sizes unknown)").
struct CpuInfo {
  std::string vendor;  // "GenuineIntel", "AuthenticAMD", … ("" off x86)
  std::string brand;   // the brand string, e.g. "AMD EPYC 9R14 96-Core Processor"
  int family = 0, model = 0, stepping = 0;  // display family and model (base + extended)
  int64_t l1d = 0, l2 = 0, l3 = 0;          // bytes, per cache instance
  int line = 0;                             // L1d line size in bytes
  int l2_shared_by = 0, l3_shared_by = 0;   // logical processors per cache instance (0: unknown)
  int logical_cores = 0, physical_cores = 0, threads_per_core = 0;
  std::string cache_source;
};
// Detected once, on first call; the same object after that.
const CpuInfo& cpu_info();

bool cpu_has_avx2();
bool cpu_has_fma();
bool cpu_has_avx512f();

// Kernel families, each including the ones below it: the AVX-512 path runs
// the AVX2+FMA kernels too, with AVX-512 ones where they exist.
enum class KernelPath { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

namespace detail {
// The path in force (a KernelPath value), or −1 until the first call detects
// the CPU; read on every kernel call, so one relaxed load.
extern std::atomic<int> kernel_level;
int detect_kernel_level();
inline int kernel_level_now() {
  const int l = kernel_level.load(std::memory_order_relaxed);
  return l >= 0 ? l : detect_kernel_level();
}
}  // namespace detail

// True when the AVX2+FMA kernels should run: the CPU has both and the path is
// not held below them.
inline bool use_avx2() { return detail::kernel_level_now() >= static_cast<int>(KernelPath::kAvx2); }
// True when the AVX-512 kernels should run as well.
inline bool use_avx512() { return detail::kernel_level_now() >= static_cast<int>(KernelPath::kAvx512); }
// Holds the kernel path at or below `most` (tests, benchmarks); kAvx512
// restores the run-time choice.
void set_kernel_path(KernelPath most);
// "avx512", "avx2-fma" or "portable": the path in use.
const char* kernel_path_name();

}  // namespace sigma
