// Which register tile and which cache blocking the blocked GEMM uses.
//
// The tiles: every micro-kernel the addon has, in one table with its MR×NR
// and the kernel path it needs. The driver (gemm.cpp) packs and walks edges
// for whatever MR×NR the chosen entry has, so a new tile is one more row here.
//
// The default tile, per CPU and kernel path, until the tuner has measured
// this CPU (below):
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
// The tuning (src/backend/native/tune.ts measures it, its cache file sets it
// when the addon loads): per "one thread" and "several threads", a tile and
// blocking for large products and one for short ones (K ≤ kGemmShortK, e.g.
// an expert's weight gradient over its 64 rows), and the row counts up to
// which x·Wᵀ and x·W keep the small-M paths (gemm.cpp) instead of the
// blocked one. It applies while the kernel path is the one it was measured
// on; another path (SIGMA_KERNEL_PATH, setKernelPath) gets the rule.
//
// Overrides (tests, the tuner's timings): a tile by name and any positive MC,
// KC, NC (not multiples of anything: the driver handles every edge), plus
// blocked_only, which sends every product through the blocked path so that a
// test reaches the tile with any shape. An override of the tile or of any
// blocking size sets aside the tuned tile and blocking (sizes not given come
// from the rule). Overrides and tuning are kept under a mutex with a version
// number; each thread caches the plans it derived and rebuilds them when the
// version or the kernel path changed, so a product costs one atomic load.
#include <algorithm>
#include <atomic>
#include <mutex>

#include "gemm.h"
#include "gemm_ukernel.h"
#include "threadpool.h"

namespace sigma {
namespace {

const MicroKernel kTiles[] = {
    {"avx512-12x32", 12, 32, KernelPath::kAvx512, false, ukernel_avx512_12x32},
    {"avx512-14x32", 14, 32, KernelPath::kAvx512, false, ukernel_avx512_14x32},
    {"avx512-8x32", 8, 32, KernelPath::kAvx512, false, ukernel_avx512_8x32},
    {"avx512-6x16", 6, 16, KernelPath::kAvx512, true, ukernel_avx512_direct},
    {"avx2-6x16", 6, 16, KernelPath::kAvx2, true, ukernel_avx2_direct},
    {"avx2-4x24", 4, 24, KernelPath::kAvx2, true, ukernel_avx2_4x24},
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

int path_of(const std::string& name) {
  for (KernelPath p : {KernelPath::kPortable, KernelPath::kAvx2, KernelPath::kAvx512})
    if (name == path_name(p)) return static_cast<int>(p);
  return -1;
}

// A tuned choice with its tile resolved to the table.
struct Tuned {
  int tile = -1;
  GemmBlocking blocking;
};
struct TunedThreads {
  Tuned by_class[2];  // [0] large, [1] short K
  int64_t small_m_nt = kGemmSmallMMax, small_m_nn = kGemmSmallMMax;
};

struct Settings {
  // Overrides.
  int tile = -1;  // -1: the default
  GemmBlocking blocking;
  bool blocked_only = false;
  // Tuning.
  bool tuned = false;
  KernelPath tuned_path = KernelPath::kPortable;
  TunedThreads threads[2];  // [0] one thread, [1] several
  GemmTuning tuning;        // as it was set (reported back by gemm_tuning)
};
std::mutex settings_mutex;
Settings settings_state;               // guarded by settings_mutex
std::atomic<uint64_t> settings_version{1};

Settings read_settings() {
  std::lock_guard<std::mutex> lock(settings_mutex);
  return settings_state;
}
void bump_version() { settings_version.fetch_add(1, std::memory_order_acq_rel); }

bool overrides_tile_or_blocking(const Settings& s) {
  return s.tile >= 0 || s.blocking.mc > 0 || s.blocking.kc > 0 || s.blocking.nc > 0;
}

// The plan for one thread bucket (0: one thread, 1: several) and shape class
// (0: large, 1: short K) on the current path: override, else tuning, else rule.
GemmPlan build_plan(const Settings& s, KernelPath path, int bucket, int cls) {
  const CpuInfo& cpu = cpu_info();
  const bool tuned = s.tuned && s.tuned_path == path;
  const bool use_tuned = tuned && !overrides_tile_or_blocking(s);
  int t = s.tile;
  GemmBlocking want = s.blocking;
  if (use_tuned) {
    t = s.threads[bucket].by_class[cls].tile;
    want = s.threads[bucket].by_class[cls].blocking;
  }
  if (t < 0 || static_cast<int>(kTiles[t].isa) > static_cast<int>(path)) t = default_tile(path, cpu);
  const MicroKernel* tile = &kTiles[t];
  const GemmBlocking rule = gemm_blocking_rule(cpu, tile->mr, tile->nr);
  GemmPlan p;
  p.tile = tile;
  p.mc = want.mc > 0 ? want.mc : rule.mc;
  p.kc = want.kc > 0 ? want.kc : rule.kc;
  p.nc = want.nc > 0 ? want.nc : rule.nc;
  p.blocked_only = s.blocked_only;
  p.small_m_nt = tuned ? s.threads[bucket].small_m_nt : kGemmSmallMMax;
  p.small_m_nn = tuned ? s.threads[bucket].small_m_nn : kGemmSmallMMax;
  return p;
}

}  // namespace

GemmBlocking gemm_blocking_rule(const CpuInfo& cpu, int mr, int nr, int elem_bytes) {
  const int64_t e = elem_bytes;
  const int64_t l1 = cpu.l1d > 0 ? cpu.l1d : 32 << 10;
  const int64_t l2 = cpu.l2 > 0 ? cpu.l2 : 1 << 20;
  GemmBlocking b;
  b.kc = std::clamp<int64_t>(l1 / (e * nr) / 32 * 32, 64, 4096 / e);
  b.mc = std::max<int64_t>(mr, l2 * 3 / 16 / (e * b.kc) / mr * mr);
  int64_t b_bytes = l2 / 2;
  if (cpu.l3 > 0) {
    b_bytes = cpu.l3 / 16;
    const int tpc = std::max(1, cpu.threads_per_core);
    const int64_t cores = cpu.l3_shared_by > 0 ? std::max(1, cpu.l3_shared_by / tpc) : 1;
    b_bytes = std::min(b_bytes, cpu.l3 / cores / 2);
  }
  b.nc = std::clamp<int64_t>(b_bytes / (e * b.kc) / nr * nr, nr, 8192);
  return b;
}

GemmPlan gemm_plan(int64_t K, int threads) {
  struct Cached {
    uint64_t version = 0;
    KernelPath path = KernelPath::kPortable;
    GemmPlan plan[2][2]{};  // [bucket][class]
  };
  thread_local Cached cached;
  const uint64_t v = settings_version.load(std::memory_order_acquire);
  const KernelPath path = current_path();
  if (cached.version != v || cached.path != path) {
    const Settings s = read_settings();
    for (int b = 0; b < 2; ++b)
      for (int c = 0; c < 2; ++c) cached.plan[b][c] = build_plan(s, path, b, c);
    cached.version = v;
    cached.path = path;
  }
  return cached.plan[threads > 1 ? 1 : 0][K <= kGemmShortK ? 1 : 0];
}

std::vector<GemmTileDesc> gemm_tiles() {
  std::vector<GemmTileDesc> out;
  const KernelPath best = cpu_path();
  for (const MicroKernel& t : kTiles)
    out.push_back({t.name, t.mr, t.nr, path_name(t.isa), static_cast<int>(t.isa) <= static_cast<int>(best)});
  return out;
}

GemmSettings gemm_settings(int64_t K, int threads) {
  const Settings o = read_settings();
  const KernelPath path = current_path();
  const GemmPlan p = build_plan(o, path, threads > 1 ? 1 : 0, K <= kGemmShortK ? 1 : 0);
  GemmSettings s;
  s.tile = p.tile->name;
  s.mr = p.tile->mr;
  s.nr = p.tile->nr;
  s.blocking = {p.mc, p.kc, p.nc};
  s.tile_override = o.tile >= 0 && p.tile == &kTiles[o.tile];
  s.blocking_override = o.blocking.mc > 0 || o.blocking.kc > 0 || o.blocking.nc > 0;
  s.blocked_only = o.blocked_only;
  s.tuned = o.tuned && o.tuned_path == path && !overrides_tile_or_blocking(o);
  s.small_m_nt = p.small_m_nt;
  s.small_m_nn = p.small_m_nn;
  return s;
}

namespace {
// A tile name to its index in the table (-1 for "" or "auto"); false with a
// message when it is unknown or needs an ISA this CPU lacks.
bool resolve_tile(const std::string& tile, int* out, std::string* error) {
  *out = -1;
  if (tile.empty() || tile == "auto") return true;
  const int t = find_tile(tile.c_str());
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
  *out = t;
  return true;
}
}  // namespace

bool set_gemm_override(const std::string& tile, GemmBlocking blocking, bool blocked_only, std::string* error) {
  int t = -1;
  if (!resolve_tile(tile, &t, error)) return false;
  {
    std::lock_guard<std::mutex> lock(settings_mutex);
    settings_state.tile = t;
    settings_state.blocking = blocking;
    settings_state.blocked_only = blocked_only;
  }
  bump_version();
  return true;
}

bool set_gemm_tuning(const GemmTuning* tuning, std::string* error) {
  if (tuning == nullptr) {
    {
      std::lock_guard<std::mutex> lock(settings_mutex);
      settings_state.tuned = false;
      settings_state.tuning = GemmTuning{};
    }
    bump_version();
    return true;
  }
  const int path = path_of(tuning->path);
  if (path < 0) {
    if (error) *error = "no kernel path \"" + tuning->path + "\" (avx512, avx2-fma or portable)";
    return false;
  }
  TunedThreads threads[2];
  const GemmTunedThreads* from[2] = {&tuning->one, &tuning->many};
  for (int b = 0; b < 2; ++b) {
    const GemmChoice* choices[2] = {&from[b]->large, &from[b]->short_k};
    for (int c = 0; c < 2; ++c) {
      if (!resolve_tile(choices[c]->tile, &threads[b].by_class[c].tile, error)) return false;
      threads[b].by_class[c].blocking = choices[c]->blocking;
    }
    threads[b].small_m_nt = from[b]->small_m_nt;
    threads[b].small_m_nn = from[b]->small_m_nn;
  }
  {
    std::lock_guard<std::mutex> lock(settings_mutex);
    settings_state.tuned = true;
    settings_state.tuned_path = static_cast<KernelPath>(path);
    settings_state.threads[0] = threads[0];
    settings_state.threads[1] = threads[1];
    settings_state.tuning = *tuning;
  }
  bump_version();
  return true;
}

bool gemm_tuning(GemmTuning* out) {
  const Settings s = read_settings();
  if (!s.tuned) return false;
  *out = s.tuning;
  return true;
}

}  // namespace sigma
