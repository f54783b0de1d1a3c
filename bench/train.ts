/**
 * `npm run bench -- train [--steps=N]`: end-to-end training tokens/s of the
 * reference config R (d=512, 8 heads, 2 dense + 2 sparse layers, 8 experts,
 * top-2, F=2048, V=8192, T=256, B=8) for RRE, MoGE, top-k and the dense twin:
 * whole optimizer steps — loader, forward, backward, clipping, hybrid AdamW —
 * on the default corpus. Each variant runs in its own process so that its
 * peak RSS is its own. FLOP/s are reported as a fraction of the FMA peak
 * measured in this run with the same thread count.
 */
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { getBackend } from "../src/backend/index.js";
import { readManifest } from "../src/data/manifest.js";
import type { RouterConfig } from "../src/models/config.js";
import { parseTrainConfig, type TrainConfig } from "../src/train/config.js";
import { Trainer } from "../src/train/trainer.js";
import { forwardFlopsPerToken } from "./model.js";
import { PEAK_LEGEND, fmaPeak, median, table } from "./util.js";
import { benchData, BENCH_DATA } from "./data.js";

const DATA = BENCH_DATA;
const R = { width: 512, heads: 8, dense: 2, sparse: 2, experts: 8, k: 2, ffn: 2048, vocab: 8192, T: 256, B: 8 };
const VARIANTS: Record<string, RouterConfig | null> = {
  dense: null,
  rre: { kind: "rre", groups: 4, seed: 1 },
  moge: { kind: "moge", groups: 2, perGroup: 1, auxLossCoef: 0.01, sharedExperts: 0 },
  topk: { kind: "topk", k: 2, renormalize: true, auxLossCoef: 0.01, zLossCoef: 0, capacityFactor: null },
};

function configR(router: RouterConfig | null, domains: string[]): TrainConfig {
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
  });
}

interface ChildResult {
  variant: string;
  stepMs: number;
  /** Median over steps of each step's FLOP/s over the FMA peak probed just before it. */
  peakRatio: number;
  /** The best FMA peak probed in this run. */
  bestPeak: number;
  tokensPerSec: number;
  flopsPerToken: number;
  maxRssMiB: number;
  params: number;
}

/** One variant, in this process: `steps` timed optimizer steps after one warm-up step. */
function child(variant: string, steps: number): ChildResult {
  const m = readManifest(join(DATA, "manifest.json"));
  const cfg = configR(VARIANTS[variant]!, m.domains.map((d) => d.name));
  const t = new Trainer(cfg);
  const flopsPerToken = 3 * forwardFlopsPerToken(cfg.model); // backward ≈ 2× forward; the optimizer's O(params) work is not counted
  const threads = getBackend().getThreads();
  const times: number[] = [], ratios: number[] = [];
  let bestPeak = 0;
  for (let s = 0; s <= steps; s++) {
    // The peak probed beside each step: a noisy neighbour on the host slows both alike.
    const localPeak = s > 0 ? fmaPeak(threads, 3) : 0;
    bestPeak = Math.max(bestPeak, localPeak);
    const r = t.trainStep();
    if (s === 0) continue;
    times.push(r.seconds * 1000);
    ratios.push((flopsPerToken * R.B * R.T) / r.seconds / localPeak);
  }
  t.close();
  const stepMs = median(times);
  return {
    variant,
    stepMs,
    peakRatio: median(ratios),
    bestPeak,
    tokensPerSec: (R.B * R.T) / (stepMs / 1000),
    flopsPerToken,
    maxRssMiB: process.resourceUsage().maxRSS / 1024,
    params: t.model.parameterCount(),
  };
}

export async function run(args: string[]): Promise<void> {
  const steps = Number(args.find((a) => a.startsWith("--steps="))?.slice(8) ?? 3);
  const only = args.find((a) => a.startsWith("--only="))?.slice(7)?.split(",");
  await benchData(DATA);
  const threads = getBackend().getThreads();
  const peak = fmaPeak(threads);
  console.log(`FMA peak (${threads} threads): ${(peak / 1e9).toFixed(1)} GFLOP/s`);
  console.log(PEAK_LEGEND);
  let runPeak = peak;
  const results: ChildResult[] = [];
  console.log(`config R: d=${R.width}, ${R.heads} heads, ${R.dense} dense + ${R.sparse} sparse layers, ${R.experts} experts, F=${R.ffn}, V=${R.vocab}, T=${R.T}, B=${R.B}; median of ${steps} optimizer steps after a warm-up step\n`);
  const rows: (string | number)[][] = [];
  for (const variant of Object.keys(VARIANTS).filter((v) => !only || only.includes(v))) {
    const self = fileURLToPath(import.meta.url);
    const p = spawnSync(process.execPath, ["--import", "tsx", self, "--child", variant, String(steps)], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
    if (p.status !== 0) throw new Error(`bench train: the ${variant} run failed (status ${p.status})`);
    const r = JSON.parse(p.stdout.trim().split("\n").pop()!) as ChildResult;
    runPeak = Math.max(runPeak, r.bestPeak);
    results.push(r);
  }
  for (const r of results) {
    const achieved = r.flopsPerToken * r.tokensPerSec;
    rows.push([r.variant, (r.params / 1e6).toFixed(1), r.tokensPerSec.toFixed(0), r.stepMs.toFixed(0), (r.flopsPerToken / 1e9).toFixed(3), (achieved / 1e9).toFixed(1), `${(100 * r.peakRatio).toFixed(1)}%`, `${((100 * achieved) / runPeak).toFixed(1)}%`, r.maxRssMiB.toFixed(0)]);
  }
  console.log(table(["model", "params M", "tokens/s", "step ms", "GFLOP/token", "GFLOP/s", "% of local peak", "% of run peak", "peak RSS MiB"], rows));
}

if (process.argv[2] === "--child") console.log(JSON.stringify(child(process.argv[3]!, Number(process.argv[4]))));
