#include "cpu.h"

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
std::atomic<bool> forced_portable{false};
bool detect() { return cpu_has_avx2() && cpu_has_fma(); }
}  // namespace

bool use_avx2() {
  static const bool has = detect();
  return has && !forced_portable.load(std::memory_order_relaxed);
}
void force_portable(bool on) { forced_portable.store(on, std::memory_order_relaxed); }
const char* kernel_path_name() { return use_avx2() ? "avx2-fma" : "portable"; }

}  // namespace sigma
