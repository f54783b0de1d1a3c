/**
 * The synthetic top-k versus MoGE study (Pangu Pro MoE's finding): for each
 * batch size, route many batches with the synthetic router both ways on the
 * same scores, measure IS, and simulate steps of a model shape on a hardware
 * profile to turn imbalance into throughput.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { distribution, type Distribution, measureBatch, type RoutedBatch } from "./analysis.js";
import type { Hardware } from "./hardware.js";
import { contiguousPlacement, type Placement } from "./placement.js";
import type { SimShape } from "./shape.js";
import { simulateStep, type SimMode } from "./simulator.js";
import { groupedBarsSvg, histogramSvg } from "./svg.js";
import { mogeRouting, SyntheticRouter, topkRouting } from "./synthetic.js";
import { SigmaError } from "../util/errors.js";

export interface StudyOptions {
  shape: SimShape;
  hardware: Hardware;
  devices: number;
  /** Top-k's k; MoGE uses k/groups per group, so both activate k experts per token. */
  k: number;
  /** MoGE groups (default: one per device). */
  groups?: number;
  skew: number;
  /** Batch sizes (tokens) to study. */
  tokens: number[];
  /** Batches per size for the IS distribution. */
  batches: number;
  /** Simulated steps per size (each routes every sparse layer afresh). */
  steps: number;
  mode: SimMode;
  seed: number;
  placement?: Placement;
}

export interface RouterResult {
  imbalance: Distribution;
  /** Mean over batches of the device loads sorted from busiest to idlest, over their mean. */
  sortedLoad: number[];
  /** Median over steps. */
  tokensPerSecond: number;
  stepSeconds: number;
  lostFraction: number;
}

export interface StudyRow {
  tokens: number;
  topk: RouterResult;
  moge: RouterResult;
  isSamples: { topk: number[]; moge: number[] };
}

type Route = (scores: Float64Array) => RoutedBatch;

export function runStudy(o: StudyOptions): StudyRow[] {
  const E = o.shape.experts;
  const groups = o.groups ?? o.devices;
  if (o.k % groups !== 0) throw new SigmaError(`k = ${o.k} is not a multiple of the ${groups} MoGE groups`, "MoGE activates K' experts in each group: choose k = groups·K'");
  const placement = o.placement ?? contiguousPlacement(E, o.devices);
  const routers: Record<"topk" | "moge", Route> = {
    topk: (s) => topkRouting(s, E, o.k),
    moge: (s) => mogeRouting(s, E, groups, o.k / groups),
  };
  return o.tokens.map((N, i) => {
    // One router drives both so that each batch is scored once and routed both ways;
    // every batch size shares the popularity ranks (the seed) and draws its own noise.
    const router = new SyntheticRouter(E, o.skew, o.seed, o.seed + 7919 * (i + 1));
    const is = { topk: [] as number[], moge: [] as number[] };
    const sorted = { topk: new Array<number>(placement.devices).fill(0), moge: new Array<number>(placement.devices).fill(0) };
    for (let b = 0; b < o.batches; b++) {
      const scores = router.scores(N);
      for (const name of ["topk", "moge"] as const) {
        const b = measureBatch(routers[name](scores), placement, null);
        is[name].push(b.imbalance);
        const mean = b.perDevice.reduce((a, c) => a + c, 0) / b.perDevice.length;
        [...b.perDevice].sort((a, c) => c - a).forEach((v, d) => (sorted[name][d] += v / mean / o.batches));
      }
    }
    const sims = { topk: [] as ReturnType<typeof simulateStep>[], moge: [] as ReturnType<typeof simulateStep>[] };
    for (let s = 0; s < o.steps; s++) {
      const layers = { topk: [] as RoutedBatch[], moge: [] as RoutedBatch[] };
      for (let l = 0; l < o.shape.sparseLayers; l++) {
        const scores = router.scores(N);
        layers.topk.push(routers.topk(scores));
        layers.moge.push(routers.moge(scores));
      }
      for (const name of ["topk", "moge"] as const) sims[name].push(simulateStep(o.shape, o.hardware, placement, layers[name], o.mode));
    }
    const result = (name: "topk" | "moge"): RouterResult => {
      const runs = [...sims[name]].sort((a, b) => a.seconds - b.seconds);
      const mid = runs[Math.floor(runs.length / 2)]!;
      return { imbalance: distribution(is[name]), sortedLoad: sorted[name], tokensPerSecond: mid.tokensPerSecond, stepSeconds: mid.seconds, lostFraction: mid.lostToImbalance / mid.seconds };
    };
    return { tokens: N, topk: result("topk"), moge: result("moge"), isSamples: is };
  });
}

const pct = (v: number) => `${(100 * v).toFixed(1)}%`;

/** The comparison table, in Markdown. */
export function formatStudy(rows: StudyRow[]): string {
  const head = "| tokens/batch | IS>0 top-k | IS>0 MoGE | mean IS top-k | max/mean load top-k | top-k tokens/s | MoGE tokens/s | MoGE gain | top-k time lost to imbalance |";
  const sep = "|---:|---:|---:|---:|---:|---:|---:|---:|---:|";
  const fmt = (v: number) => (v >= 1e5 ? v.toExponential(3) : v.toFixed(0));
  const body = rows.map((r) =>
    `| ${r.tokens} | ${pct(r.topk.imbalance.fractionPositive)} | ${pct(r.moge.imbalance.fractionPositive)} | ${r.topk.imbalance.mean.toFixed(3)} | ${r.topk.sortedLoad[0]!.toFixed(2)} | ${fmt(r.topk.tokensPerSecond)} | ${fmt(r.moge.tokensPerSecond)} | ${pct(r.moge.tokensPerSecond / r.topk.tokensPerSecond - 1)} | ${pct(r.topk.lostFraction)} |`,
  );
  return [head, sep, ...body].join("\n");
}

/** One IS histogram and one sorted-device-load chart per batch size; returns the paths. */
export function writeStudyPictures(dir: string, rows: StudyRow[], label: string): string[] {
  mkdirSync(dir, { recursive: true });
  const paths: string[] = [];
  for (const r of rows) {
    const is = join(dir, `is-${r.tokens}.svg`);
    writeFileSync(is, histogramSvg(`IS per batch, ${r.tokens} tokens (${label})`, "imbalance score", [
      { name: "top-k", values: r.isSamples.topk },
      { name: "MoGE", values: r.isSamples.moge },
    ]));
    const loads = join(dir, `device-loads-${r.tokens}.svg`);
    writeFileSync(loads, groupedBarsSvg({
      title: `Device load / mean load, busiest first, ${r.tokens} tokens (${label})`,
      xLabel: "device rank (busiest first)",
      yLabel: "load / mean load",
      categories: r.topk.sortedLoad.map((_, d) => String(d + 1)),
      series: [{ name: "top-k", values: r.topk.sortedLoad }, { name: "MoGE", values: r.moge.sortedLoad }],
      reference: { value: 1, label: "balanced" },
    }));
    paths.push(is, loads);
  }
  return paths;
}
