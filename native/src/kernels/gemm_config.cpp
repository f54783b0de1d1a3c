// Which register tile and which cache blocking the blocked GEMM uses.
//
// The tiles: every micro-kernel the addon has, in one table with its MR×NR
// and the kernel path it needs. The driver (gemm.cpp) packs and walks edges
// for whatever MR×NR the chosen entry has, so a new tile is one more row here.
//
// The default tile, per CPU and kernel path (a later autotuner will choose by
// timing instead; this is the rule until then):
//  - AVX-512 on AMD family 0x19 (Zen 4, whose 512-bit FMAs run as two 256-bit
//    halves: one zmm FMA per cycle): the 6×16 tile, measured there at
//    1.05–1.12× OpenBLAS.
//  - AVX-512 anywhere else (Intel Skylake-SP … Sapphire Rapids, Zen 5, …):
//    the 12×32 tile, whose 24 chains keep two FMA pipes busy; on a one-pipe
//    core it loses nothing but edge work.
//  - AVX2 + FMA: the 6×16 AVX2 tile (12 ymm chains). Portable: the C++ tile.
//
// The blocking rule (bytes of f32; L1d, L2, L3 are one instance's size from
// cpu_info(), with 32 KiB, 1 MiB and "no L3" where a size is unknown):
//  - KC: one packed B micro-panel, KC·NR·4 bytes, fills at most the L1d
//    (the panel is reused for every MR-row tile of the block while A's rows
//    stream past). KC is rounded down to a multiple of 32, within [64, 1024].
//    Half the L1d, the textbook share, gives 256 on Zen 4, where 512 measured
//    best of 256/384/512; the whole L1d gives 512.
//  - MC: the A block, MC·KC·4 bytes, takes 3/16 of L2 (192 KiB of Zen 4's
//    1 MiB, the measured MC = 96 at KC = 512), rounded down to a multiple of
//    MR; the rest of L2 holds the B panels passing through and C's tiles.
//  - NC: the packed B block, NC·KC·4 bytes, takes a sixteenth of the L3, and
//    at most half of one core's share of it (cpuid's count of processors
//    sharing the L3, over threads per core): 2 MiB of Zen 4's 32 MiB, where
//    NC = 1024 at KC = 512 measured 6–10% faster than 4096. Without an L3,
//    half of L2. Rounded down to a multiple of NR, within [NR, 8192].
// On this project's Zen 4 (32 KiB, 1 MiB, 32 MiB) the 6×16 tile gets
// MC 96, KC 512, NC 1024: the constants the driver had before this file.
//
// Overrides (tests, tuning): a tile by name and any positive MC, KC, NC (not
// multiples of anything: the driver handles every edge), plus blocked_only,
// which sends every product through the blocked path so that a test reaches
// the tile with any shape. They are kept under a mutex with a version
// number; each thread caches the plan it derived and rebuilds it when the
// version or the kernel path changed, so a product costs one atomic load.
#include <algorithm>
#include <atomic>
#include <mutex>

#include "gemm.h"
#include "gemm_ukernel.h"

namespace sigma {
namespace {

const MicroKernel kTiles[] = {
    {"avx512-12x32", 12, 32, KernelPath::kAvx512, false, ukernel_avx512_12x32},
    {"avx512-6x16", 6, 16, KernelPath::kAvx512, true, ukernel_avx512_direct},
    {"avx2-6x16", 6, 16, KernelPath::kAvx2, true, ukernel_avx2_direct},
    {"portable-6x16", 6, 16, KernelPath::kPortable, false, ukernel_portable},
};
constexpr int kTileCount = static_cast<int>(sizeof(kTiles) / sizeof(kTiles[0]));

const char* path_name(KernelPath p) {
  switch (p) {
    case KernelPath::kAvx512: return "avx512";
    case KernelPath::kAvx2: return "avx2-fma";
    default: return "portable";
  }
}

KernelPath current_path() {
  return use_avx512() ? KernelPath::kAvx512 : use_avx2() ? KernelPath::kAvx2 : KernelPath::kPortable;
}

// The best path this CPU has, whatever ceiling is set (for "can it run").
KernelPath cpu_path() {
  if (!cpu_has_avx2() || !cpu_has_fma()) return KernelPath::kPortable;
  return cpu_has_avx512f() ? KernelPath::kAvx512 : KernelPath::kAvx2;
}

int find_tile(const char* name) {
  for (int i = 0; i < kTileCount; ++i)
    if (std::string(kTiles[i].name) == name) return i;
  return -1;
}

// The default tile for a kernel path on this CPU (the rule at the top).
int default_tile(KernelPath path, const CpuInfo& cpu) {
  if (path == KernelPath::kAvx512) {
    const bool zen4 = cpu.vendor == "AuthenticAMD" && cpu.family == 0x19;
    return find_tile(zen4 ? "avx512-6x16" : "avx512-12x32");
  }
  return find_tile(path == KernelPath::kAvx2 ? "avx2-6x16" : "portable-6x16");
}

struct Override {
  int tile = -1;  // -1: the default
  GemmBlocking blocking;
  bool blocked_only = false;
};
std::mutex override_mutex;
Override override_state;               // guarded by override_mutex
std::atomic<uint64_t> override_version{1};

Override read_override() {
  std::lock_guard<std::mutex> lock(override_mutex);
  return override_state;
}

// The plan for the current path and override.
GemmPlan build_plan(const Override& o, KernelPath path) {
  const CpuInfo& cpu = cpu_info();
  int t = o.tile;
  if (t < 0 || static_cast<int>(kTiles[t].isa) > static_cast<int>(path)) t = default_tile(path, cpu);
  const MicroKernel* tile = &kTiles[t];
  const GemmBlocking rule = gemm_blocking_rule(cpu, tile->mr, tile->nr);
  GemmPlan p;
  p.tile = tile;
  p.mc = o.blocking.mc > 0 ? o.blocking.mc : rule.mc;
  p.kc = o.blocking.kc > 0 ? o.blocking.kc : rule.kc;
  p.nc = o.blocking.nc > 0 ? o.blocking.nc : rule.nc;
  p.blocked_only = o.blocked_only;
  return p;
}

}  // namespace

GemmBlocking gemm_blocking_rule(const CpuInfo& cpu, int mr, int nr) {
  const int64_t l1 = cpu.l1d > 0 ? cpu.l1d : 32 << 10;
  const int64_t l2 = cpu.l2 > 0 ? cpu.l2 : 1 << 20;
  GemmBlocking b;
  b.kc = std::clamp<int64_t>(l1 / (4 * nr) / 32 * 32, 64, 1024);
  b.mc = std::max<int64_t>(mr, l2 * 3 / 16 / (4 * b.kc) / mr * mr);
  int64_t b_bytes = l2 / 2;
  if (cpu.l3 > 0) {
    b_bytes = cpu.l3 / 16;
    const int tpc = std::max(1, cpu.threads_per_core);
    const int64_t cores = cpu.l3_shared_by > 0 ? std::max(1, cpu.l3_shared_by / tpc) : 1;
    b_bytes = std::min(b_bytes, cpu.l3 / cores / 2);
  }
  b.nc = std::clamp<int64_t>(b_bytes / (4 * b.kc) / nr * nr, nr, 8192);
  return b;
}

GemmPlan gemm_plan() {
  struct Cached {
    uint64_t version = 0;
    KernelPath path = KernelPath::kPortable;
    GemmPlan plan{};
  };
  thread_local Cached cached;
  const uint64_t v = override_version.load(std::memory_order_acquire);
  const KernelPath path = current_path();
  if (cached.version != v || cached.path != path) {
    cached.plan = build_plan(read_override(), path);
    cached.version = v;
    cached.path = path;
  }
  return cached.plan;
}

std::vector<GemmTileDesc> gemm_tiles() {
  std::vector<GemmTileDesc> out;
  const KernelPath best = cpu_path();
  for (const MicroKernel& t : kTiles)
    out.push_back({t.name, t.mr, t.nr, path_name(t.isa), static_cast<int>(t.isa) <= static_cast<int>(best)});
  return out;
}

GemmSettings gemm_settings() {
  const Override o = read_override();
  const GemmPlan p = build_plan(o, current_path());
  GemmSettings s;
  s.tile = p.tile->name;
  s.mr = p.tile->mr;
  s.nr = p.tile->nr;
  s.blocking = {p.mc, p.kc, p.nc};
  s.tile_override = o.tile >= 0 && p.tile == &kTiles[o.tile];
  s.blocking_override = o.blocking.mc > 0 || o.blocking.kc > 0 || o.blocking.nc > 0;
  s.blocked_only = o.blocked_only;
  return s;
}

bool set_gemm_override(const std::string& tile, GemmBlocking blocking, bool blocked_only, std::string* error) {
  int t = -1;
  if (!tile.empty() && tile != "auto") {
    t = find_tile(tile.c_str());
    if (t < 0) {
      if (error) {
        *error = "no tile \"" + tile + "\"; the tiles are";
        for (const MicroKernel& k : kTiles) *error += std::string(" ") + k.name;
      }
      return false;
    }
    if (static_cast<int>(kTiles[t].isa) > static_cast<int>(cpu_path())) {
      if (error) *error = "tile \"" + tile + "\" needs " + path_name(kTiles[t].isa) + ", which this CPU lacks";
      return false;
    }
  }
  {
    std::lock_guard<std::mutex> lock(override_mutex);
    override_state.tile = t;
    override_state.blocking = blocking;
    override_state.blocked_only = blocked_only;
  }
  override_version.fetch_add(1, std::memory_order_acq_rel);
  return true;
}

}  // namespace sigma
