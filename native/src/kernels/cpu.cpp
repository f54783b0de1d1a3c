#include "cpu.h"

#include <algorithm>
#include <atomic>

namespace sigma {

#if defined(__x86_64__) || defined(__i386__)
bool cpu_has_avx2() { __builtin_cpu_init(); return __builtin_cpu_supports("avx2"); }
bool cpu_has_fma() { __builtin_cpu_init(); return __builtin_cpu_supports("fma"); }
bool cpu_has_avx512f() { __builtin_cpu_init(); return __builtin_cpu_supports("avx512f"); }
#else
bool cpu_has_avx2() { return false; }
bool cpu_has_fma() { return false; }
bool cpu_has_avx512f() { return false; }
#endif

namespace {
// The best path this CPU runs, and the ceiling set by set_kernel_path.
KernelPath detect() {
  if (!cpu_has_avx2() || !cpu_has_fma()) return KernelPath::kPortable;
  return cpu_has_avx512f() ? KernelPath::kAvx512 : KernelPath::kAvx2;
}
std::atomic<int> ceiling{static_cast<int>(KernelPath::kAvx512)};
int level() {
  static const int best = static_cast<int>(detect());
  return std::min(best, ceiling.load(std::memory_order_relaxed));
}
}  // namespace

bool use_avx2() { return level() >= static_cast<int>(KernelPath::kAvx2); }
bool use_avx512() { return level() >= static_cast<int>(KernelPath::kAvx512); }
void set_kernel_path(KernelPath most) { ceiling.store(static_cast<int>(most), std::memory_order_relaxed); }
const char* kernel_path_name() {
  switch (static_cast<KernelPath>(level())) {
    case KernelPath::kAvx512: return "avx512";
    case KernelPath::kAvx2: return "avx2-fma";
    default: return "portable";
  }
}

}  // namespace sigma
