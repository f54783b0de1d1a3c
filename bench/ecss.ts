/**
 * `npm run bench -- ecss [--steps=N] [--rounds=N] [--expert-width=F] [--experts=8,32,128] [--only=sparse,budget,hits] [--json]`: ECSS
 * (docs/design.md §8), each figure a ratio measured in this run, each variant in
 * its own process (so its peak RSS is its own), whole optimizer steps
 * (loader, forward, backward, clipping, optimizer, store I/O) on the default
 * corpus with RRE over its 4 domains.
 *
 *  1. sparse: step throughput of ECSS (store-backed, sparse update of the
 *     touched experts) over the "ordinary MoE" (the same model in RAM, dense
 *     AdamW: every expert's weights and moments read and written every
 *     step), for E = 8, 32, 128 experts per layer;
 *  2. budget: a model whose experts plus Adam moments are ≥ 4× the
 *     expert-memory budget, store-backed, against the same model fully in RAM
 *     under the same sparse rule: tokens/s ratio and peak RSS of each;
 *  3. hits: prefetch hit rate of RRE (the budget run, after its first step)
 *     and the cache hit rate of top-k (fetched after routing, LRU).
 *
 * The regime is PanGu-Σ's: many experts, each step touching few of them
 * (one sequence of one domain per step, so RRE routes it into one group),
 * and a small model width, so the optimizer and memory traffic of the
 * experts, not the FLOPs, dominate the ordinary step. The store's reads come
 * from the OS page cache when the file fits in it, as it does here.
 *
 * After the timed steps, a third as many more run under the profiler
 * (src/backend/profile.ts; not timed, since its wrapper costs a little per
 * kernel call): the ordinary and the all-resident ECSS step at the largest E
 * get a breakdown of where their time goes (bench/breakdown.ts).
 *
 * With --json, stdout is one JSON object (tables go to stderr):
 *   { ecss: { ratio128,            // ECSS all resident (preloaded) over the ordinary MoE, tokens/s, E = 128
 *             ceiling128,          // the bench's ceiling estimate for that ratio (see ceilingOf)
 *             expertWidth, steps, rounds,
 *             sparse: [{ E, ordinaryTokensPerSec, touchedPerLayer, ratioSparseRam, ratioAllResident, ratioHalfResident, ceiling, readsPerStepHalf }],
 *             breakdownMs: { ordinary, allResident },  // E = 128, ms per step by category
 *             budget: { ratio, ramTokensPerSec, storeTokensPerSec, ramRssMiB, storeRssMiB, resident peak, overBudget },
 *             hits: { rrePrefetch, topkCache } } }
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { readManifest } from "../src/data/manifest.js";
import type { RouterConfig } from "../src/models/config.js";
import { formatBytes, paramsPerExpert } from "../src/store/format.js";
import { parseTrainConfig, type TrainConfig } from "../src/train/config.js";
import { Trainer } from "../src/train/trainer.js";
import { median, table } from "./util.js";
import { startProfile, stopProfile } from "../src/backend/profile.js";
import { breakdownOf, breakdownTable } from "./breakdown.js";
import { benchData, BENCH_DATA } from "./data.js";

const DATA = BENCH_DATA;
const OUT = "/tmp/sigma-bench-ecss";

interface Variant {
  /** Experts per sparse layer. */
  E: number;
  F: number;
  router: "rre" | "topk";
  mode: "ordinary" | "sparse-ram" | "store";
  /** Store budget in bytes (store mode). */
  budget?: number;
  steps: number;
}

/** Steps before timing: long enough that most experts have been touched once (a long run's steady state). */
const WARMUP = 10;
const W = { width: 64, heads: 2, dense: 1, sparse: 2, ffn: 256, T: 16, B: 1 };

function config(v: Variant, domains: string[], out: string): TrainConfig {
  const router: RouterConfig = v.router === "rre" ? { kind: "rre", groups: 4, seed: 1 } : { kind: "topk", k: 2, renormalize: true, auxLossCoef: 0.01, zLossCoef: 0, capacityFactor: null };
  return parseTrainConfig({
    name: "bench-ecss",
    model: {
      vocabSize: readManifest(join(DATA, "manifest.json")).tokenizer.vocabSize,
      width: W.width, heads: W.heads, denseLayers: W.dense, sparseLayers: W.sparse, seqLen: W.T, ffnWidth: W.ffn,
      domains: domains.map((name, i) => ({ name, group: i % 4 })),
      experts: { count: v.E, width: v.F, router },
    },
    data: { dir: DATA },
    batchSize: W.B,
    steps: 100000,
    optim: { sparseExperts: v.mode === "sparse-ram", warmupSteps: 10 },
    store: { enabled: v.mode === "store", path: join(out, "experts.sgxs"), memory: String(v.budget ?? 0), prefetch: true },
    out,
  });
}

/** Bytes of expert weights + m + v of a variant. */
const expertState = (v: Variant): number => W.sparse * v.E * 12 * paramsPerExpert({ experts: v.E, width: W.width, expertWidth: v.F });

interface ChildResult {
  tokensPerSec: number;
  stepMs: number;
  maxRssMiB: number;
  stats: ReturnType<NonNullable<Trainer["ecss"]>["stats"]> | null;
  touchedPerLayer: number;
  /** Milliseconds per timed step by category (bench/breakdown.ts). */
  breakdownMs: Record<string, number>;
}

function child(v: Variant): ChildResult {
  const m = readManifest(join(DATA, "manifest.json"));
  const out = join(OUT, `${v.mode}-${v.router}-${v.E}-${process.pid}`);
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const t = new Trainer(config(v, m.domains.map((d) => d.name), out));
  // A budget that holds every expert: start warm, as a long run would be (otherwise first touches dominate).
  if (t.ecss && (v.budget ?? 0) >= expertState(v)) t.ecss.preload();
  // Warm-up: the first steps allocate, fault pages in and bring most experts in for the first time.
  for (let s = 0; s < WARMUP; s++) t.trainStep();
  t.ecss?.resetStats();
  const times: number[] = [];
  let touched = 0;
  for (let s = 0; s < v.steps; s++) {
    const r = t.trainStep();
    times.push(r.seconds * 1000);
    touched += r.routing.reduce((a, l) => a + l.tokensPerExpert.filter((n) => n > 0).length, 0) / r.routing.length;
  }
  // The breakdown from further steps under the profiler: its wrapper costs a little per kernel call,
  // and the ECSS step makes many small calls, so the timed steps above run without it.
  const profiled = Math.max(3, Math.ceil(v.steps / 3));
  const profile = startProfile();
  let profiledMs = 0;
  for (let s = 0; s < profiled; s++) profiledMs += t.trainStep().seconds * 1000;
  stopProfile();
  const { breakdownMs } = breakdownOf(profile, profiledMs, profiled);
  const stats = t.ecss?.stats() ?? null;
  t.close();
  rmSync(out, { recursive: true, force: true });
  return { tokensPerSec: (W.B * W.T) / (median(times) / 1000), stepMs: median(times), maxRssMiB: process.resourceUsage().maxRSS / 1024, stats, touchedPerLayer: touched / v.steps, breakdownMs };
}

/**
 * Runs each variant `rounds` times, interleaved (A B C, A B C, …), and keeps
 * each one's median-throughput run: a noisy neighbour on the host then slows
 * every variant alike instead of the one that happened to run during it.
 */
function interleaved(vs: Variant[], rounds: number): ChildResult[] {
  const runs: ChildResult[][] = vs.map(() => []);
  for (let r = 0; r < rounds; r++) vs.forEach((v, i) => runs[i]!.push(spawnChild(v)));
  return runs.map((rs) => [...rs].sort((a, b) => a.tokensPerSec - b.tokensPerSec)[rs.length >> 1]!);
}

function spawnChild(v: Variant): ChildResult {
  const self = fileURLToPath(import.meta.url);
  const p = spawnSync(process.execPath, ["--import", "tsx", self, "--child", JSON.stringify(v)], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
  if (p.status !== 0) throw new Error(`bench ecss: the ${v.mode} run with E=${v.E} failed (status ${p.status})`);
  return JSON.parse(p.stdout.trim().split("\n").pop()!) as ChildResult;
}

const pct = (a: number, b: number): string => (b === 0 ? "-" : `${((100 * a) / b).toFixed(1)}%`);

/**
 * The bench's ceiling for ECSS (all resident) over the ordinary step at E
 * experts per layer with `touched` of them used per step: the expert part of
 * the ordinary step moves ~36 bytes per parameter for every expert, ECSS's
 * ~40 per touched one (the weights read by two products, the gradient
 * written once, AdamW; the clipping norm comes from the kernel that writes
 * the gradient, no pass of its own), and both are memory-bound; the dense part, the same
 * in both, is left out, so a real ratio stays below it.
 */
const CEILING_FACTOR = 36 / 40;
export const ceilingOf = (E: number, touched: number): number => (CEILING_FACTOR * E) / touched;

export async function run(args: string[]): Promise<void> {
  const steps = Number(args.find((a) => a.startsWith("--steps="))?.slice(8) ?? 30);
  const rounds = Number(args.find((a) => a.startsWith("--rounds="))?.slice(9) ?? 3);
  const only = args.find((a) => a.startsWith("--only="))?.slice(7)?.split(",");
  const want = (p: string) => !only || only.includes(p);
  const json = args.includes("--json");
  // With --json only the JSON object goes to stdout.
  const say = json ? (x: string) => console.error(x) : (x: string) => say(x);
  const Es = (args.find((a) => a.startsWith("--experts="))?.slice(10) ?? "8,32,128").split(",").map(Number);
  if (Es.some((e) => !Number.isInteger(e) || e < 4)) throw new Error("--experts must list expert counts of at least 4, e.g. --experts=128");
  const out: Record<string, unknown> = { steps, rounds };
  await benchData(DATA, { log: say });
  say(`model: C=${W.width}, ${W.dense} dense + ${W.sparse} RRE layers (4 groups = the corpus's 4 domains), dense FFN ${W.ffn}; one sequence of ${W.T} tokens per step (one domain)`);
  say(`each figure: median of ${steps} optimizer steps after ${WARMUP} warm-up steps, each variant in its own process;`);
  say(`the variants of a row run interleaved, ${rounds} rounds (--rounds=N), and each keeps its median round\n`);

  if (want("sparse")) {
    // Experts of width 4096 on a width-64 model: the experts hold 98% of the parameters, as in
    // PanGu-Σ, so the step is theirs and not the dense part's. --expert-width=1024 shows a model
    // whose dense part (embeddings, attention, loader) weighs more.
    const F = Number(args.find((a) => a.startsWith("--expert-width="))?.slice(15) ?? 4096);
    say(`1. sparse update (ECSS, store-backed) vs ordinary MoE (in RAM, dense AdamW over every expert every step), expert width F=${F} (--expert-width=N)`);
    const rows: (string | number)[][] = [];
    const sparse: Record<string, number>[] = [];
    let best = 0;
    for (const E of Es) {
      const base: Variant = { E, F, router: "rre", mode: "ordinary", steps };
      const state = expertState(base);
      const [ord, sram, all, half] = interleaved([
        base,
        { ...base, mode: "sparse-ram" },
        // Room for every expert, preloaded: no store I/O until a checkpoint.
        { ...base, mode: "store", budget: Math.ceil(state * 1.1) },
        // Half the expert state resident: steps read ahead and write back experts (LRU churn).
        { ...base, mode: "store", budget: Math.floor(state / 2) },
      ], rounds) as [ChildResult, ChildResult, ChildResult, ChildResult];
      const x = (r: ChildResult) => `${(r.tokensPerSec / ord.tokensPerSec).toFixed(2)}×`;
      const ratio = (r: ChildResult) => r.tokensPerSec / ord.tokensPerSec;
      const reads = (half.stats!.prefetchRequested + half.stats!.io.reads) / steps;
      const ceiling = ceilingOf(E, ord.touchedPerLayer);
      if (E === 128) {
        best = ratio(all);
        out.ratio128 = best;
        out.ceiling128 = ceiling;
        out.breakdownMs = { ordinary: ord.breakdownMs, allResident: all.breakdownMs };
      }
      sparse.push({ E, ordinaryTokensPerSec: ord.tokensPerSec, touchedPerLayer: ord.touchedPerLayer, ratioSparseRam: ratio(sram), ratioAllResident: ratio(all), ratioHalfResident: ratio(half), ceiling, readsPerStepHalf: reads });
      rows.push([E, formatBytes(state), ord.touchedPerLayer.toFixed(1), ord.tokensPerSec.toFixed(0), x(sram), x(all), x(half), `${ceiling.toFixed(1)}×`, reads.toFixed(1)]);
      if (E === Es[Es.length - 1]) {
        say(`where the step's time goes at E=${E} (ms per step; bench/breakdown.ts):`);
        say(breakdownTable([{ column: "ordinary MoE", breakdownMs: ord.breakdownMs }, { column: "ECSS, all resident", breakdownMs: all.breakdownMs }]) + "\n");
      }
    }
    out.expertWidth = F;
    out.sparse = sparse;
    say(table(["E/layer", "expert state", "touched/layer", "ordinary tok/s", "sparse in RAM", "ECSS, all resident (preloaded)", "ECSS, half resident", "ceiling (all resident)", "reads/step (half)"], rows));
    say(`(ratios: tokens/s over the ordinary MoE's; medians of per-step times. Target ≥ 6.3× at 128 experts: ${Es.includes(128) ? `ECSS all resident gives ${best.toFixed(2)}×` : "not run (--experts)"}.`);
    say(" Both steps are bound by memory traffic, not FLOPs. The ordinary step moves ~36 bytes per expert parameter (zeroing, norm,");
    say(" fused AdamW) for all E experts; ECSS ~40 per touched parameter (two products read it, its gradient is written once and");
    say(` its squares summed as it is written, AdamW), plus the dense part, which both pay: the ceiling is about ${CEILING_FACTOR.toFixed(2)} × E / touched (the dense part left out). With half`);
    say(" resident, the I/O worker's checksums and copies run beside the step, on cores the kernels also use.)\n");
  }

  if (want("budget") || want("hits")) {
    const base: Variant = { E: 256, F: 256, router: "rre", mode: "sparse-ram", steps };
    const state = expertState(base);
    const budget = Math.floor(state / 4.5);
    say(`2. a model whose experts + Adam moments (${formatBytes(state)}) are ${(state / budget).toFixed(1)}× the expert-memory budget (${formatBytes(budget)}): E=256 per layer, F=256`);
    const [ram, st] = interleaved([base, { ...base, mode: "store", budget }], rounds) as [ChildResult, ChildResult];
    const s = st.stats!;
    out.budget = { ratio: st.tokensPerSec / ram.tokensPerSec, ramTokensPerSec: ram.tokensPerSec, storeTokensPerSec: st.tokensPerSec, ramRssMiB: ram.maxRssMiB, storeRssMiB: st.maxRssMiB, residentPeakBytes: s.peakBytes, overBudget: s.overBudget };
    out.hits = { rrePrefetch: s.hits + s.misses > 0 ? s.hits / (s.hits + s.misses) : null };
    say(table(
      ["variant", "tokens/s", "step ms (median)", "peak RSS MiB", "touched/layer"],
      [
        ["fully in RAM (sparse rule)", ram.tokensPerSec.toFixed(0), ram.stepMs.toFixed(1), ram.maxRssMiB.toFixed(0), ram.touchedPerLayer.toFixed(1)],
        [`store, budget ${formatBytes(budget)}`, st.tokensPerSec.toFixed(0), st.stepMs.toFixed(1), st.maxRssMiB.toFixed(0), st.touchedPerLayer.toFixed(1)],
      ],
    ));
    say(`store / in RAM tokens/s: ${(100 * st.tokensPerSec / ram.tokensPerSec).toFixed(1)}% (target ≥ 50%); resident peak ${formatBytes(s.peakBytes)}, ${s.overBudget} steps over budget`);
    say(`3a. RRE prefetch hit rate (after warm-up): ${pct(s.hits, s.hits + s.misses)} of ${s.hits + s.misses} expert lookups resident or read ahead (${s.prefetchHits} arrived by prefetch; ${s.misses} demand reads; target 100%)`);
    const tk = spawnChild({ ...base, router: "topk", mode: "store", budget: Math.floor(state / 2) });
    const k = tk.stats!;
    out.hits = { ...(out.hits as object), topkCache: k.hits + k.misses > 0 ? k.hits / (k.hits + k.misses) : null };
    say(`3b. top-k (k=2) cache hit rate, budget half the expert state: ${pct(k.hits, k.hits + k.misses)} of ${k.hits + k.misses} lookups (fetched after routing, layer by layer; LRU), ${tk.tokensPerSec.toFixed(0)} tokens/s, ${tk.touchedPerLayer.toFixed(1)} experts touched per layer per step`);
  }
  if (json) console.log(JSON.stringify({ ecss: out }));
}

if (process.argv[2] === "--child") console.log(JSON.stringify(child(JSON.parse(process.argv[3]!) as Variant)));
