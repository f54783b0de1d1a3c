// What the CPU says about itself: vendor, family and model, brand string,
// cache sizes and core counts, read once from cpuid and kept for the life of
// the process. The GEMM derives its cache blocking from these sizes
// (gemm_config.cpp), and `sigma info` prints them.
//
// Where each number comes from, best first:
//  - Intel: leaf 4, the deterministic cache parameters (one subleaf per cache:
//    type, level, line size, ways × partitions × sets).
//  - AMD (and Hygon): leaf 0x8000001D, the same layout, when the CPU sets the
//    topology-extensions bit; else the older 0x80000005 (L1d) and 0x80000006
//    (L2, L3) summaries.
//  - Either vendor's deterministic leaf is tried when the usual one is empty
//    (a hypervisor may pass one and zero the other), then the summary leaves.
//  - A level still unknown after that is 0 here, and the `source` string says
//    so; the blocking rule then uses its stated defaults.
// Core counts: logical = the online processors the OS reports; threads per
// core from leaf 0xB's SMT level (or 0x8000001E on AMD), physical = logical /
// threads per core. How many FMA-512 pipes a core has is not in cpuid: the
// vendor, family and model are recorded so that a rule (or a timing) can decide.
#include <cstring>
#include <string>
#include <thread>

#include "cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace sigma {
namespace {

#if defined(__x86_64__) || defined(__i386__)
struct Regs {
  unsigned a = 0, b = 0, c = 0, d = 0;
};
Regs cpuid(unsigned leaf, unsigned sub = 0) {
  Regs r;
  __cpuid_count(leaf, sub, r.a, r.b, r.c, r.d);
  return r;
}

// Walks a deterministic-cache leaf (4 on Intel, 0x8000001D on AMD: the same
// layout) and fills the levels it describes. Returns false when it lists no
// data cache at level 1 (an empty or zeroed leaf).
bool read_deterministic(unsigned leaf, CpuInfo& info) {
  bool any = false;
  for (unsigned sub = 0; sub < 16; ++sub) {
    const Regs r = cpuid(leaf, sub);
    const unsigned type = r.a & 31;  // 0 none (end of list), 1 data, 2 instruction, 3 unified
    if (type == 0) break;
    if (type == 2) continue;
    const unsigned level = (r.a >> 5) & 7;
    const int64_t line = (r.b & 0xFFF) + 1, partitions = ((r.b >> 12) & 0x3FF) + 1, ways = ((r.b >> 22) & 0x3FF) + 1;
    const int64_t sets = static_cast<int64_t>(r.c) + 1;
    const int64_t bytes = line * partitions * ways * sets;
    const int shared = static_cast<int>((r.a >> 14) & 0xFFF) + 1;  // logical processors that share it (at most)
    if (level == 1) info.l1d = bytes, info.line = static_cast<int>(line), any = true;
    else if (level == 2) info.l2 = bytes, info.l2_shared_by = shared;
    else if (level == 3) info.l3 = bytes, info.l3_shared_by = shared;
  }
  return any;
}

// AMD's summary leaves: L1d size in KiB (0x80000005 ecx[31:24]), L2 in KiB
// (0x80000006 ecx[31:16]), L3 in 512 KiB units (0x80000006 edx[31:18]).
// Intel fills 0x80000006's L2 field too and leaves the rest zero.
bool read_summary(unsigned max_ext, CpuInfo& info) {
  bool any = false;
  if (max_ext >= 0x80000005) {
    const Regs r = cpuid(0x80000005);
    if (const int64_t kib = r.c >> 24) info.l1d = kib << 10, info.line = static_cast<int>(r.c & 0xFF), any = true;
  }
  if (max_ext >= 0x80000006) {
    const Regs r = cpuid(0x80000006);
    if (const int64_t kib = r.c >> 16) {
      info.l2 = kib << 10, any = true;
      if (info.line == 0) info.line = static_cast<int>(r.c & 0xFF);
    }
    if (const int64_t units = r.d >> 18) info.l3 = units << 19, any = true;
  }
  return any;
}

void read_x86(CpuInfo& info) {
  const Regs v = cpuid(0);
  const unsigned max_leaf = v.a;
  char vendor[13] = {};
  std::memcpy(vendor, &v.b, 4);
  std::memcpy(vendor + 4, &v.d, 4);
  std::memcpy(vendor + 8, &v.c, 4);
  info.vendor = vendor;
  if (max_leaf >= 1) {
    const Regs f = cpuid(1);
    const int base_family = (f.a >> 8) & 0xF, base_model = (f.a >> 4) & 0xF;
    info.family = base_family == 0xF ? base_family + static_cast<int>((f.a >> 20) & 0xFF) : base_family;
    info.model = (base_family == 0x6 || base_family == 0xF) ? base_model | static_cast<int>(((f.a >> 16) & 0xF) << 4)
                                                            : base_model;
    info.stepping = static_cast<int>(f.a & 0xF);
  }
  const unsigned max_ext = cpuid(0x80000000).a;
  if (max_ext >= 0x80000004) {
    char brand[49] = {};
    for (unsigned i = 0; i < 3; ++i) {
      const Regs r = cpuid(0x80000002 + i);
      std::memcpy(brand + 16 * i, &r, 16);
    }
    std::string s(brand);
    const size_t a = s.find_first_not_of(' '), b = s.find_last_not_of(' ');
    info.brand = a == std::string::npos ? "" : s.substr(a, b - a + 1);
  }
  const bool amd = info.vendor == "AuthenticAMD" || info.vendor == "HygonGenuine";
  const bool topoext = max_ext >= 0x80000001 && ((cpuid(0x80000001).c >> 22) & 1);
  const bool has4 = max_leaf >= 4, has1d = topoext && max_ext >= 0x8000001D;
  if (amd && has1d && read_deterministic(0x8000001D, info)) info.cache_source = "cpuid 0x8000001D";
  else if (!amd && has4 && read_deterministic(4, info)) info.cache_source = "cpuid leaf 4";
  else if (has4 && read_deterministic(4, info)) info.cache_source = "cpuid leaf 4";
  else if (has1d && read_deterministic(0x8000001D, info)) info.cache_source = "cpuid 0x8000001D";
  else if (read_summary(max_ext, info)) info.cache_source = "cpuid 0x80000005/6";

  // Threads per core: leaf 0xB's first level when it is the SMT level (type 1).
  info.threads_per_core = 1;
  if (max_leaf >= 0xB) {
    const Regs r = cpuid(0xB, 0);
    if (((r.c >> 8) & 0xFF) == 1 && (r.b & 0xFFFF) > 0) info.threads_per_core = static_cast<int>(r.b & 0xFFFF);
  } else if (amd && topoext && max_ext >= 0x8000001E) {
    info.threads_per_core = static_cast<int>((cpuid(0x8000001E).b >> 8) & 0xFF) + 1;
  }
}
#endif

CpuInfo detect_info() {
  CpuInfo info;
#if defined(__x86_64__) || defined(__i386__)
  read_x86(info);
#endif
#if defined(__linux__) && defined(_SC_LEVEL1_DCACHE_SIZE)
  // glibc's view (from cpuid on x86, from the kernel elsewhere) for a level still missing.
  bool filled = false;
  auto fill = [&](int64_t& field, int name) {
    if (field > 0) return;
    const long v = sysconf(name);
    if (v > 0) field = v, filled = true;
  };
  fill(info.l1d, _SC_LEVEL1_DCACHE_SIZE);
  fill(info.l2, _SC_LEVEL2_CACHE_SIZE);
  fill(info.l3, _SC_LEVEL3_CACHE_SIZE);
  if (info.line == 0) {
    const long v = sysconf(_SC_LEVEL1_DCACHE_LINESIZE);
    if (v > 0) info.line = static_cast<int>(v);
  }
  if (filled) info.cache_source = info.cache_source.empty() ? "sysconf" : info.cache_source + " + sysconf";
#endif
  if (info.cache_source.empty()) info.cache_source = "none (sizes unknown)";
#if defined(_SC_NPROCESSORS_ONLN)
  info.logical_cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
#endif
  if (info.logical_cores <= 0) info.logical_cores = static_cast<int>(std::thread::hardware_concurrency());
  if (info.logical_cores <= 0) info.logical_cores = 1;
  if (info.threads_per_core <= 0) info.threads_per_core = 1;
  info.physical_cores = info.logical_cores >= info.threads_per_core ? info.logical_cores / info.threads_per_core : 1;
  return info;
}

}  // namespace

const CpuInfo& cpu_info() {
  static const CpuInfo info = detect_info();
  return info;
}

}  // namespace sigma
