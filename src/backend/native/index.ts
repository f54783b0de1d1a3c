/**
 * The only place that loads the native addon (build/Release/sigma_native.node).
 *
 * The addon exports one function per kernel, with exactly the name, argument
 * order and semantics of the `Backend` interface (src/backend/backend.ts), so
 * this file adds no wrapper: it checks that every kernel is present and hands
 * the functions out. All calls are synchronous and run on the calling thread
 * (plus the addon's own worker threads); none returns a promise.
 *
 * Errors: every kernel validates its arguments and throws a TypeError or
 * RangeError naming the kernel and the argument; it never crashes the process
 * (sizes whose products overflow, detached or resized buffers, index arrays
 * rewritten during a call, out of memory for scratch: native/src/napi/args.h
 * lists the rules; test/addon-fuzz-child.ts fuzzes every export).
 *
 * Threads: the addon may be loaded by several JS threads (worker_threads) at
 * once. They share one kernel thread pool: a threaded kernel waits for
 * another thread's to finish, and setThreads (process-wide) waits too.
 */
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { KERNEL_NAMES, type Backend } from "../backend.js";
import { applyCachedTuning, type GemmTuning } from "./tune-cache.js";
import { packageRoot } from "../../util/package-root.js";

export type { GemmChoice, GemmTunedThreads, GemmTuning } from "./tune-cache.js";

/** What the addon exports besides the kernels. */
export interface NativeExtras {
  /** CPU features detected at run time and the kernel path in use ("avx512", "avx2-fma" or "portable"). */
  cpuFeatures(): { avx2: boolean; fma: boolean; avx512f: boolean; path: string };
  /** What cpuid says about the CPU: cache sizes in bytes (0 when not reported), cores, vendor and model. */
  cpuInfo(): CpuInfo;
  /**
   * Holds the kernels at or below a path (tests, benchmarks): "portable" (no
   * intrinsics), "avx2-fma" (no AVX-512 kernels); "auto" restores the run-time choice.
   */
  setKernelPath(path: "portable" | "avx2-fma" | "auto"): void;
  /** Every registered GEMM register tile, and whether this CPU runs it. */
  gemmTiles(): { name: string; mr: number; nr: number; isa: string; runnable: boolean }[];
  /**
   * The tile and cache blocking the blocked GEMM uses now (native/src/kernels/gemm_config.cpp states the rule):
   * for large products on the pool's threads, or for a product of depth K on `threads` threads.
   */
  gemmConfig(): GemmConfig;
  gemmConfig(K: number, threads: number): GemmConfig;
  /**
   * Overrides for tests and tuning: a tile by name ("auto": the default), MC, KC, NC (0: from the cache sizes),
   * blockedOnly (every product through the blocked path). setGemmConfig("auto", 0, 0, 0, false) restores all.
   */
  setGemmConfig(tile: string, mc: number, kc: number, nc: number, blockedOnly: boolean): void;
  /**
   * The tuner's choice (./tune.ts measures it; ./tune-cache.ts sets it from the cache file when the addon loads):
   * applied while the kernel path is `tuning.path` and no override is set. null clears it.
   */
  setGemmTuning(tuning: GemmTuning | null): void;
  /** The tuning set now, or null. */
  gemmTuning(): GemmTuning | null;
  /** Benchmark helper: runs `iters` rounds of independent FMA chains on `threads` threads; returns seconds. */
  fmaPeak(iters: number, threads: number): number;
  /**
   * The path the bf16 products (matmulBf16, …) take now: "avx512-bf16" (the
   * vdpbf16ps tile: the CPU has AVX512_BF16 and the kernel path is avx512) or
   * "converted-f32" (inputs rounded to bf16 in f32 copies, then the f32 GEMM).
   */
  bf16Path(): Bf16Path;
  /** "converted-f32" forces that path even where AVX512_BF16 exists (tests, benchmarks); "auto" restores the choice. */
  setBf16Path(path: "auto" | "converted-f32"): void;
}

/** The two paths of the bf16 products (native/include/gemm_bf16.h). */
export type Bf16Path = "avx512-bf16" | "converted-f32";

/** The addon's cpuInfo() (native/src/kernels/cpu_info.cpp says where each number comes from). */
export interface CpuInfo {
  vendor: string;
  brand: string;
  family: number;
  model: number;
  stepping: number;
  l1d: number;
  l2: number;
  l3: number;
  line: number;
  l2SharedBy: number;
  l3SharedBy: number;
  logicalCores: number;
  physicalCores: number;
  threadsPerCore: number;
  cacheSource: string;
}

/** The addon's gemmConfig(). */
export interface GemmConfig {
  tile: string;
  mr: number;
  nr: number;
  mc: number;
  kc: number;
  nc: number;
  tileOverride: boolean;
  blockingOverride: boolean;
  blockedOnly: boolean;
  /** The tile and blocking are the tuner's (a tuning for this kernel path is set, and no override). */
  tuned: boolean;
  /** Rows up to which x·Wᵀ (NT) and x·W (NN) products take the small-M paths instead of the blocked one. */
  smallMRowsNT: number;
  smallMRowsNN: number;
}

export type NativeBackend = Backend & NativeExtras;

export interface NativeLoad {
  backend: NativeBackend | null;
  /** Why the addon could not be used (null when it loaded). */
  error: string | null;
  path: string | null;
}


let cached: NativeLoad | undefined;

const KERNEL_PATHS = ["auto", "avx2-fma", "portable"] as const;

/**
 * SIGMA_KERNEL_PATH: the most the native kernels may use ("auto", the
 * default: the best the CPU has; "avx2-fma": no AVX-512 kernels;
 * "portable": no intrinsics). Returns an error message for any other value.
 */
export function kernelPathSetting(): { path: (typeof KERNEL_PATHS)[number]; error: string | null } {
  const v = process.env.SIGMA_KERNEL_PATH;
  if (v === undefined || v === "") return { path: "auto", error: null };
  if ((KERNEL_PATHS as readonly string[]).includes(v)) return { path: v as (typeof KERNEL_PATHS)[number], error: null };
  return { path: "auto", error: `SIGMA_KERNEL_PATH="${v}" is not a kernel path: use ${KERNEL_PATHS.join(", ")} (or leave it unset)` };
}

/** Loads the addon once. Never throws: a failure is reported in `error`. */
export function loadNative(): NativeLoad {
  if (cached) return cached;
  const root = packageRoot();
  const candidates = [join(root, "build", "Release", "sigma_native.node"), join(root, "build", "Debug", "sigma_native.node")];
  const path = candidates.find((p) => existsSync(p)) ?? null;
  if (path === null) {
    cached = { backend: null, path: null, error: `the native addon is not built (looked for ${candidates[0]}); run \`npm run build:native\`` };
    return cached;
  }
  try {
    const require = createRequire(import.meta.url);
    const addon = require(path) as Record<string, unknown>;
    const missing = [...KERNEL_NAMES, "getThreads", "setThreads", "cpuFeatures", "cpuInfo", "setKernelPath"].filter(
      (name) => typeof addon[name] !== "function",
    );
    if (missing.length > 0) {
      cached = { backend: null, path, error: `the native addon at ${path} lacks kernels: ${missing.join(", ")} (rebuild it with \`npm run build:native\`)` };
      return cached;
    }
    // Every name the interface lists was checked above; the addon's functions
    // take the Backend arguments verbatim, so it is used as the backend itself.
    const backend = { ...addon, name: "native" } as unknown as NativeBackend;
    const setting = kernelPathSetting();
    if (setting.error) {
      cached = { backend: null, path, error: setting.error };
      return cached;
    }
    backend.setKernelPath(setting.path);
    // The tuner's choice for this CPU, build, thread count and path, when its cache file has one.
    applyCachedTuning(backend, path);
    cached = { backend, path, error: null };
  } catch (e) {
    cached = { backend: null, path, error: `the native addon at ${path} failed to load: ${(e as Error).message}` };
  }
  return cached;
}

/**
 * The addon's exports as they are, without the completeness check — for the
 * kernel tests and benchmarks of one kernel family. Throws when no addon is built.
 */
export function loadAddonExports(): Partial<NativeBackend> & Record<string, unknown> {
  const root = packageRoot();
  const path = join(root, "build", "Release", "sigma_native.node");
  if (!existsSync(path)) throw new Error(`the native addon is not built (no ${path}); run \`npm run build:native\``);
  return createRequire(import.meta.url)(path) as Partial<NativeBackend> & Record<string, unknown>;
}
