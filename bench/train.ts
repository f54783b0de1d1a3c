/**
 * `npm run bench -- train [--steps=N] [--only=dense,rre,…] [--json]`: end-to-end
 * training tokens/s of the reference config R (d=512, 8 heads, 2 dense + 2
 * sparse layers, 8 experts, top-2, F=2048, V=8192, T=256, B=8) for RRE, MoGE,
 * top-k and the dense twin: whole optimizer steps — loader, forward,
 * backward, clipping, hybrid AdamW — on the default corpus. Each variant runs
 * in its own process so that its peak RSS is its own. FLOP/s are reported as a
 * fraction of the FMA peak measured in this run with the same thread count.
 *
 * Where the step's time goes: the timed steps run under the profiler
 * (src/backend/profile.ts), which times every backend call by kernel and the
 * trainer's sections (loader, gradient zeroing, the clipping norm, the
 * optimizer); the breakdown groups them into categories (BREAKDOWN below) as
 * fractions of the step, "other" being what no kernel or section accounts
 * for (autograd bookkeeping, buffer pools, routing in TypeScript).
 *
 * With --json, stdout is one JSON object (tables go to stderr):
 *   { train: { threads, steps, fmaPeak, configR: { <router>: {
 *       peakFraction,        // median over steps of FLOP/s over the FMA peak probed beside the step
 *       peakFractionRunPeak, // median FLOP/s over the best peak probed in the whole run
 *       tokensPerSec, stepMs, flopsPerToken, params, maxRssMiB,
 *       breakdown: { <category>: fraction of the step },  // sums to 1
 *       gemmFraction,        // breakdown.gemm
 *       kernels: { <kernel or section>: { calls, msPerStep } },
 *       [bf16Speedup]        // bf16 tokens/s over f32, when a bf16 run exists (RUNS below)
 *   } } } }
 *
 * `--ranks 1,2` (or --ranks=1,2) instead runs config R under mpirun with each
 * number of ranks (each rank on cores/N threads; the MoE variants expert
 * parallel, parallel.expert = N, the dense one data parallel) and reports
 * tokens/s and the time each step spends in communication — gradient sums,
 * statistics and the expert exchanges (the trainer's commSeconds), median
 * over the steps and the maximum over the ranks. Without MPI the runs above
 * one rank are skipped with one line. With --json:
 *   { trainRanks: { threads, steps, runs: [{ variant, ranks, parallel,
 *       tokensPerSec, stepMs, commMs, commFraction }], skipped? } }
 */
import { spawnSync } from "node:child_process";
import { cpus } from "node:os";
import { joinWorld } from "../src/comm/comm.js";
import { MPIRUN_ENV, mpiMissing } from "./comm.js";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { bf16Path, getBackend } from "../src/backend/index.js";
import { startProfile, stopProfile } from "../src/backend/profile.js";
import { readManifest } from "../src/data/manifest.js";
import type { RouterConfig } from "../src/models/config.js";
import { parseTrainConfig, type TrainConfig } from "../src/train/config.js";
import { Trainer } from "../src/train/trainer.js";
import { forwardFlopsPerToken } from "./model.js";
import { PEAK_LEGEND, fmaPeak, median, table } from "./util.js";
import { BREAKDOWN_NAMES, breakdownOf, breakdownTable } from "./breakdown.js";
import { benchData, BENCH_DATA } from "./data.js";

const DATA = BENCH_DATA;
const R = { width: 512, heads: 8, dense: 2, sparse: 2, experts: 8, k: 2, ffn: 2048, vocab: 8192, T: 256, B: 8 };
const VARIANTS: Record<string, RouterConfig | null> = {
  dense: null,
  rre: { kind: "rre", groups: 4, seed: 1 },
  moge: { kind: "moge", groups: 2, perGroup: 1, auxLossCoef: 0.01, sharedExperts: 0 },
  topk: { kind: "topk", k: 2, renormalize: true, auxLossCoef: 0.01, zLossCoef: 0, capacityFactor: null },
};

/**
 * The runs per variant: each a child process with these fields added to the
 * train config. The first is the baseline; the bf16 run (mixed precision:
 * bf16 GEMM inputs, f32 sums and master weights) adds `bf16Speedup` to its
 * variant. On a CPU without AVX512_BF16 the bf16 run takes the converted-f32
 * path, which is not meant to be faster: `--precision=f32` skips it.
 */
const ALL_RUNS: { label: string; extra: Record<string, unknown> }[] = [{ label: "f32", extra: {} }, { label: "bf16", extra: { precision: "bf16" } }];
let RUNS = ALL_RUNS;

function configR(router: RouterConfig | null, domains: string[], extra: Record<string, unknown>): TrainConfig {
  return parseTrainConfig({
    name: "bench",
    model: {
      vocabSize: R.vocab, width: R.width, heads: R.heads, seqLen: R.T, ffnWidth: R.ffn,
      // The dense twin: the same depth with every layer dense.
      denseLayers: router ? R.dense : R.dense + R.sparse,
      sparseLayers: router ? R.sparse : 0,
      domains: domains.map((name, i) => ({ name, group: i % 4 })),
      experts: router ? { count: R.experts, router } : undefined,
    },
    data: { dir: DATA },
    batchSize: R.B,
    steps: 1000,
    out: "/tmp/sigma-bench-train",
    ...extra,
  });
}

interface ChildResult {
  variant: string;
  run: string;
  stepMs: number;
  /** Median over steps of each step's FLOP/s over the FMA peak probed just before it. */
  peakRatio: number;
  /** The best FMA peak probed in this run. */
  bestPeak: number;
  tokensPerSec: number;
  flopsPerToken: number;
  maxRssMiB: number;
  params: number;
  /** Milliseconds per step by category (BREAKDOWN, plus "other"). */
  breakdownMs: Record<string, number>;
  /** Per kernel and section: calls and milliseconds per step. */
  kernels: Record<string, { calls: number; msPerStep: number }>;
}

/** One variant, in this process: `steps` timed (and profiled) optimizer steps after one warm-up step. */
function child(variant: string, run: string, steps: number): ChildResult {
  const m = readManifest(join(DATA, "manifest.json"));
  const cfg = configR(VARIANTS[variant]!, m.domains.map((d) => d.name), ALL_RUNS.find((r) => r.label === run)!.extra);
  const t = new Trainer(cfg);
  const flopsPerToken = 3 * forwardFlopsPerToken(cfg.model); // backward ≈ 2× forward; the optimizer's O(params) work is not counted
  const threads = getBackend().getThreads();
  const times: number[] = [], ratios: number[] = [];
  let bestPeak = 0;
  t.trainStep(); // warm-up: allocates gradients and moments, faults pages in
  const profile = startProfile();
  let profiledMs = 0;
  for (let s = 0; s < steps; s++) {
    // The peak probed beside each step (outside the profile): a noisy neighbour on the host slows both alike.
    const localPeak = fmaPeak(threads, 3);
    bestPeak = Math.max(bestPeak, localPeak);
    const r = t.trainStep();
    profiledMs += r.seconds * 1000;
    times.push(r.seconds * 1000);
    ratios.push((flopsPerToken * R.B * R.T) / r.seconds / localPeak);
  }
  stopProfile();
  t.close();
  const { breakdownMs, kernels } = breakdownOf(profile, profiledMs, steps);
  const stepMs = median(times);
  return {
    variant, run, stepMs,
    peakRatio: median(ratios),
    bestPeak,
    tokensPerSec: (R.B * R.T) / (stepMs / 1000),
    flopsPerToken,
    maxRssMiB: process.resourceUsage().maxRSS / 1024,
    params: t.model.parameterCount(),
    breakdownMs,
    kernels,
  };
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

interface RanksResult {
  variant: string;
  ranks: number;
  parallel: { data: number; expert: number };
  tokensPerSec: number;
  stepMs: number;
  commMs: number;
  commFraction: number;
}

/** The parallel layout of a variant on N ranks: expert parallel for the MoE variants (when N divides the experts), else data parallel. */
function layoutFor(variant: string, N: number): { data: number; expert: number } {
  return VARIANTS[variant] && N > 1 && R.experts % N === 0 ? { data: 1, expert: N } : { data: N, expert: 1 };
}

/** One rank of a --ranks run: `steps` timed steps after a warm-up; rank 0 returns the medians (slowest rank's). */
function rankChild(variant: string, steps: number): RanksResult | null {
  const world = joinWorld();
  const comm = world.comm;
  const N = comm.size;
  const m = readManifest(join(DATA, "manifest.json"));
  const parallel = layoutFor(variant, N);
  const cfg = configR(VARIANTS[variant]!, m.domains.map((d) => d.name), { parallel });
  const t = new Trainer(cfg, undefined, comm);
  t.trainStep();
  const step: number[] = [], inComm: number[] = [];
  for (let s = 0; s < steps; s++) {
    const r = t.trainStep();
    step.push(r.seconds);
    inComm.push(r.commSeconds);
  }
  t.close();
  const v = Float64Array.of(median(step), median(inComm));
  comm.allreduce(v, "max");
  world.finalize();
  if (comm.rank !== 0) return null;
  return { variant, ranks: N, parallel, tokensPerSec: (R.B * R.T) / v[0]!, stepMs: v[0]! * 1000, commMs: v[1]! * 1000, commFraction: v[1]! / v[0]! };
}

/** bench train --ranks: config R on each number of ranks, under mpirun. */
async function runRanks(ranks: number[], variants: string[], steps: number, json: boolean, say: (s: string) => void): Promise<void> {
  await benchData(DATA, { log: say });
  const cores = cpus().length;
  const missing = ranks.some((n) => n > 1) ? mpiMissing() : null;
  if (missing) say(`bench train --ranks: runs on more than one rank skipped: MPI is not available: ${missing}`);
  const self = fileURLToPath(import.meta.url);
  const results: RanksResult[] = [];
  say(`config R on ${ranks.join(", ")} rank(s) of this machine (${cores} cores, each rank on cores/N threads); median of ${steps} steps after a warm-up; communication = gradient and statistics sums plus the expert exchanges\n`);
  for (const variant of variants) {
    for (const N of ranks) {
      if (N > 1 && missing) continue;
      const threads = String(Math.max(1, Math.floor(cores / N)));
      const cmd = ["--import", "tsx", self, "--rank-child", variant, String(steps)];
      const p = N === 1
        ? spawnSync(process.execPath, cmd, { encoding: "utf8", env: { ...process.env, SIGMA_THREADS: threads }, stdio: ["ignore", "pipe", "inherit"] })
        : spawnSync("mpirun", ["--oversubscribe", "-np", String(N), "-x", `SIGMA_THREADS=${threads}`, process.execPath, ...cmd], { encoding: "utf8", env: { ...process.env, ...MPIRUN_ENV }, stdio: ["ignore", "pipe", "inherit"] });
      if (p.status !== 0) throw new Error(`bench train: the ${variant} run on ${N} rank(s) failed (status ${p.status})`);
      results.push(JSON.parse(p.stdout.trim().split("\n").pop()!) as RanksResult);
    }
  }
  say(table(["model", "ranks", "parallel", "tokens/s", "step ms", "comm ms", "comm share"], results.map((r) => [r.variant, r.ranks, `data ${r.parallel.data} × expert ${r.parallel.expert}`, r.tokensPerSec.toFixed(0), r.stepMs.toFixed(0), r.commMs.toFixed(1), pct(r.commFraction)])));
  if (json) console.log(JSON.stringify({ trainRanks: { cores, steps, runs: results, ...(missing ? { skipped: `MPI is not available: ${missing}` } : {}) } }));
}

export async function run(args: string[]): Promise<void> {
  const steps = Number(args.find((a) => a.startsWith("--steps="))?.slice(8) ?? 3);
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`--steps must be a positive integer`);
  const only = args.find((a) => a.startsWith("--only="))?.slice(7)?.split(",");
  const json = args.includes("--json");
  const precision = args.find((a) => a.startsWith("--precision="))?.slice(12);
  if (precision !== undefined) {
    RUNS = ALL_RUNS.filter((r) => precision.split(",").includes(r.label));
    if (RUNS[0]?.label !== "f32") throw new Error(`--precision takes f32 or f32,bf16 (the f32 run is the baseline), got "${precision}"`);
  }
  const say = json ? (s: string) => console.error(s) : (s: string) => console.log(s);
  const ranksAt = args.findIndex((a) => a === "--ranks" || a.startsWith("--ranks="));
  if (ranksAt >= 0) {
    const text = args[ranksAt] === "--ranks" ? args[ranksAt + 1] ?? "" : args[ranksAt]!.slice(8);
    const ranks = text.split(",").map(Number);
    if (!ranks.length || ranks.some((n) => !Number.isInteger(n) || n < 1 || n > R.B)) throw new Error(`--ranks takes rank counts from 1 to ${R.B} separated by commas (e.g. 1,2), got "${text}"`);
    return runRanks(ranks, Object.keys(VARIANTS).filter((v) => !only || only.includes(v)), steps, json, say);
  }
  await benchData(DATA, { log: say });
  const threads = getBackend().getThreads();
  const peak = fmaPeak(threads);
  say(`FMA peak (${threads} threads): ${(peak / 1e9).toFixed(1)} GFLOP/s`);
  say(PEAK_LEGEND);
  let runPeak = peak;
  const results: ChildResult[] = [];
  say(`config R: d=${R.width}, ${R.heads} heads, ${R.dense} dense + ${R.sparse} sparse layers, ${R.experts} experts, F=${R.ffn}, V=${R.vocab}, T=${R.T}, B=${R.B}; median of ${steps} optimizer steps after a warm-up step\n`);
  const variants = Object.keys(VARIANTS).filter((v) => !only || only.includes(v));
  for (const variant of variants) {
    for (const r of RUNS) {
      const self = fileURLToPath(import.meta.url);
      const p = spawnSync(process.execPath, ["--import", "tsx", self, "--child", variant, r.label, String(steps)], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
      if (p.status !== 0) throw new Error(`bench train: the ${variant} (${r.label}) run failed (status ${p.status})`);
      const res = JSON.parse(p.stdout.trim().split("\n").pop()!) as ChildResult;
      runPeak = Math.max(runPeak, res.bestPeak);
      results.push(res);
    }
  }
  const base = results.filter((r) => r.run === RUNS[0]!.label);
  const rows = results.map((r) => {
    const achieved = r.flopsPerToken * r.tokensPerSec;
    return [r.run === RUNS[0]!.label ? r.variant : `${r.variant} ${r.run}`, (r.params / 1e6).toFixed(1), r.tokensPerSec.toFixed(0), r.stepMs.toFixed(0), (r.flopsPerToken / 1e9).toFixed(3), (achieved / 1e9).toFixed(1), pct(r.peakRatio), pct(achieved / runPeak), r.maxRssMiB.toFixed(0)];
  });
  say(table(["model", "params M", "tokens/s", "step ms", "GFLOP/token", "GFLOP/s", "% of local peak", "% of run peak", "peak RSS MiB"], rows));

  say(`\nWhere the step's time goes (fraction of the profiled steps; ms per step in brackets):\n`);
  say(breakdownTable(base.map((r) => ({ column: r.variant, breakdownMs: r.breakdownMs }))));

  if (!json) return;
  const configR: Record<string, unknown> = {};
  for (const r of base) {
    const achieved = r.flopsPerToken * r.tokensPerSec;
    const total = BREAKDOWN_NAMES.reduce((a, n) => a + r.breakdownMs[n]!, 0);
    const breakdown = Object.fromEntries(BREAKDOWN_NAMES.map((n) => [n, r.breakdownMs[n]! / total]));
    const entry: Record<string, unknown> = {
      peakFraction: r.peakRatio, peakFractionRunPeak: achieved / runPeak,
      tokensPerSec: r.tokensPerSec, stepMs: r.stepMs, flopsPerToken: r.flopsPerToken, params: r.params, maxRssMiB: r.maxRssMiB,
      breakdown, gemmFraction: breakdown.gemm, breakdownMs: r.breakdownMs, kernels: r.kernels,
    };
    for (const other of results.filter((x) => x.variant === r.variant && x !== r)) {
      entry[other.run] = { tokensPerSec: other.tokensPerSec, stepMs: other.stepMs, peakFraction: other.peakRatio, breakdownMs: other.breakdownMs };
      if (other.run === "bf16") entry.bf16Speedup = other.tokensPerSec / r.tokensPerSec;
    }
    configR[r.variant] = entry;
  }
  const path16 = RUNS.some((r) => r.label === "bf16") ? bf16Path() : null;
  console.log(JSON.stringify({ train: { threads, steps, fmaPeak: runPeak, bf16Path: path16, configR } }));
}

if (process.argv[2] === "--child") console.log(JSON.stringify(child(process.argv[3]!, process.argv[4]!, Number(process.argv[5]))));
if (process.argv[2] === "--rank-child") {
  const r = rankChild(process.argv[3]!, Number(process.argv[4]));
  if (r) console.log(JSON.stringify(r));
}
