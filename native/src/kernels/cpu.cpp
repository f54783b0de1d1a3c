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
// The best path this CPU runs.
KernelPath detect() {
  if (!cpu_has_avx2() || !cpu_has_fma()) return KernelPath::kPortable;
  return cpu_has_avx512f() ? KernelPath::kAvx512 : KernelPath::kAvx2;
}
int best() {
  static const int b = static_cast<int>(detect());
  return b;
}
int level() { return detail::kernel_level_now(); }
}  // namespace

namespace detail {
std::atomic<int> kernel_level{-1};
int detect_kernel_level() {
  int unset = -1;
  kernel_level.compare_exchange_strong(unset, best(), std::memory_order_relaxed);  // unless set_kernel_path came first
  return kernel_level.load(std::memory_order_relaxed);
}
}  // namespace detail

// The path in force is the lower of the CPU's best and the ceiling `most`.
void set_kernel_path(KernelPath most) {
  detail::kernel_level.store(std::min(best(), static_cast<int>(most)), std::memory_order_relaxed);
}
const char* kernel_path_name() {
  switch (static_cast<KernelPath>(level())) {
    case KernelPath::kAvx512: return "avx512";
    case KernelPath::kAvx2: return "avx2-fma";
    default: return "portable";
  }
}

}  // namespace sigma
