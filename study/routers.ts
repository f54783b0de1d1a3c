/**
 * `npm run study -- routers [--scale=N] [--seeds=N] [--steps=N] [--out=FILE] [--report-only]`:
 * do Sigma's routers beat a dense model at equal compute?
 *
 * On the default corpus, four models with the SAME active parameters per
 * token (so the same training FLOPs per token) are trained for the same
 * number of steps on the same batches, for several seeds each:
 *
 *   dense   one FFN of width F per layer
 *   top-k   16 experts of width F/2, learned top-2 (Mixtral/GShard style)
 *   MoGE    16 experts of width F/2 in 2 groups, one per group (Pangu Pro MoE)
 *   RRE     8 experts of width F, 4 domain groups of 2, one at random (PanGu-Σ)
 *
 * The three sparse models also hold the same total expert parameters
 * (16 × F/2 = 8 × F). A fifth run asks whether inheritance pays: the dense
 * model trained for half the steps, upcycled to the RRE model and trained for
 * the other half (the same FLOPs as RRE from scratch, since an RRE token
 * computes what a dense token does).
 *
 * Every run is evaluated at fixed points on the same fixed validation
 * windows (one seed for all), per domain. Load balance is the imbalance
 * score IS = (max − min device load) / tokens (Pangu Pro MoE) over the
 * training steps, with ONE device mapping for every router: E experts placed
 * contiguously on D devices, D = 2 and D = 4 (with D = 2, a MoGE group is a
 * device). docs/study.md is written from the results, with the command.
 *
 * It is not a test: the outcome is reported whichever way it goes.
 */
import { mkdirSync, readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { readManifest } from "../src/data/manifest.js";
import { parseModelConfig, type ModelConfig, type ModelConfigInput } from "../src/models/config.js";
import { upcycle } from "../src/models/upcycle.js";
import type { PanguSigma } from "../src/models/pangu-sigma.js";
import { contiguousDeviceLoads, imbalanceScore } from "../src/moe/routing.js";
import { parseTrainConfig, type TrainConfig } from "../src/train/config.js";
import { Evaluator } from "../src/train/evaluate.js";
import { svgCharts, type Series } from "../src/train/plots.js";
import { Trainer } from "../src/train/trainer.js";
import { writeFileAtomic } from "../src/util/fs.js";
import { benchData, BENCH_DATA } from "../bench/data.js";
import { forwardFlopsPerToken } from "../bench/model.js";

const DATA = BENCH_DATA;
const OUT = ".sigma/study/routers";
/** Small enough that the whole study (5 runs × 3 seeds) takes under an hour on two cores [ours]. */
const SHAPE = { width: 128, heads: 4, seqLen: 64, batch: 16, ffn: 512 };
/** Device counts of the imbalance score, the same for every router. */
const DEVICES = [2, 4];
/** Validation windows: one seed for every run, so all are scored on the same text. */
const EVAL = { seed: 4242, batches: 4 };

type Variant = "dense" | "topk" | "moge" | "rre" | "upcycled";
const LABEL: Record<Variant, string> = { dense: "dense", topk: "top-2 of 16", moge: "MoGE 2×(1 of 8)", rre: "RRE (1 of 2 per domain)", upcycled: "RRE upcycled at half-way" };

interface RunResult {
  variant: Variant;
  seed: number;
  /** [training FLOPs, mean validation loss] at each evaluation. */
  curve: [number, number][];
  /** Final per-domain validation loss. */
  final: Record<string, number>;
  /** Mean over training steps and sparse layers of IS, per device count. */
  imbalance: Record<number, number> | null;
  /** Parameters of the trained model (all experts counted). */
  params: number;
  seconds: number;
}

function modelConfig(variant: Exclude<Variant, "upcycled">, vocabSize: number, domains: string[], seed: number): ModelConfigInput {
  // One shared embedding for every model, so that the FFN/MoE layer alone differs.
  const base = { vocabSize, width: SHAPE.width, heads: SHAPE.heads, seqLen: SHAPE.seqLen, ffnWidth: SHAPE.ffn, seed, denseLayers: 1, sparseLayers: 1, embeddingSlots: 1 };
  switch (variant) {
    case "dense":
      return { ...base, denseLayers: 2, sparseLayers: 0, domains: domains.map((name) => ({ name })) };
    case "topk":
      return { ...base, domains: domains.map((name) => ({ name })), experts: { count: 16, width: SHAPE.ffn / 2, router: { kind: "topk", k: 2 } } };
    case "moge":
      return { ...base, domains: domains.map((name) => ({ name })), experts: { count: 16, width: SHAPE.ffn / 2, router: { kind: "moge", groups: 2 } } };
    case "rre":
      return { ...base, domains: domains.map((name, i) => ({ name, group: i % 4 })), experts: { count: 8, router: { kind: "rre", groups: 4, seed: seed + 1 } } };
  }
}

function trainConfig(model: ModelConfigInput, steps: number, seed: number, name: string): TrainConfig {
  return parseTrainConfig({
    name,
    model,
    data: { dir: DATA },
    batchSize: SHAPE.batch,
    steps,
    optim: { lr: 2e-3, minLr: 1e-4, warmupSteps: Math.min(20, steps - 1) },
    eval: { every: 0, batches: EVAL.batches },
    seed,
    out: join(OUT, name),
  });
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
const sd = (xs: number[]): number => {
  if (xs.length < 2) return 0;
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / (xs.length - 1));
};

/**
 * Trains `steps` steps of `t`, evaluating every `every` steps (and at 0 and
 * the end) on the fixed windows; FLOPs count from `flops0` at
 * `flopsPerStep` per step. IS per device count is summed into `is`.
 */
function trainCurve(t: Trainer, steps: number, every: number, flops0: number, flopsPerStep: number, label: string, is: { sums: Record<number, number>; n: number }): { curve: [number, number][]; final: Record<string, number> } {
  const ev = new Evaluator(DATA, t.model, { batchSize: SHAPE.batch, seed: EVAL.seed });
  const evaluate = (): Record<string, number> => Object.fromEntries(ev.run(t.model, EVAL.batches).map((d) => [d.domain, d.loss]));
  let last = evaluate();
  const curve: [number, number][] = [[flops0, mean(Object.values(last))]];
  const t0 = performance.now();
  try {
    for (let s = 1; s <= steps; s++) {
      const r = t.trainStep();
      for (const layer of r.routing) {
        const counts = Int32Array.from(layer.tokensPerExpert);
        for (const D of DEVICES) is.sums[D] = (is.sums[D] ?? 0) + imbalanceScore(contiguousDeviceLoads(counts, D), r.tokens);
        is.n++;
      }
      if (s % every === 0 || s === steps) {
        last = evaluate();
        curve.push([flops0 + s * flopsPerStep, mean(Object.values(last))]);
        process.stderr.write(`\r${label}: step ${s}/${steps}, val ${curve[curve.length - 1]![1].toFixed(3)}, ${((performance.now() - t0) / 1000).toFixed(0)} s   `);
      }
    }
  } finally {
    ev.close();
    process.stderr.write("\n");
  }
  return { curve, final: last };
}

function flopsPerStep(c: ModelConfig): number {
  // Backward ≈ 2× forward; the optimizer's O(params) work is not counted.
  return 3 * forwardFlopsPerToken(c) * SHAPE.batch * SHAPE.seqLen;
}

function runOne(variant: Variant, seed: number, steps: number, every: number, vocabSize: number, domains: string[]): RunResult {
  const t0 = performance.now();
  const is = { sums: {} as Record<number, number>, n: 0 };
  const label = `${LABEL[variant]}, seed ${seed}`;
  let out: { curve: [number, number][]; final: Record<string, number> };
  let params = 0;
  const count = (t: Trainer) => t.model.parameters().reduce((a, p) => a + p.size, 0);
  if (variant === "upcycled") {
    const half = Math.floor(steps / 2);
    const denseCfg = trainConfig(modelConfig("dense", vocabSize, domains, seed), half, seed, `upcycled-dense-s${seed}`);
    const pre = new Trainer(denseCfg);
    let dense: PanguSigma;
    let first: { curve: [number, number][] };
    const perDense = flopsPerStep(denseCfg.model);
    try {
      first = trainCurve(pre, half, every, 0, perDense, `${label} (dense half)`, { sums: {}, n: 0 });
      dense = pre.model;
    } finally {
      pre.close();
    }
    const sparseCfg = trainConfig(modelConfig("rre", vocabSize, domains, seed), steps - half, seed, `upcycled-rre-s${seed}`);
    const t = new Trainer(sparseCfg, upcycle(dense, sparseCfg.model));
    try {
      const second = trainCurve(t, steps - half, every, half * perDense, flopsPerStep(sparseCfg.model), `${label} (RRE half)`, is);
      out = { curve: [...first.curve, ...second.curve.slice(1)], final: second.final };
      params = count(t);
    } finally {
      t.close();
    }
  } else {
    const cfg = trainConfig(modelConfig(variant, vocabSize, domains, seed), steps, seed, `${variant}-s${seed}`);
    const t = new Trainer(cfg);
    try {
      out = trainCurve(t, steps, every, 0, flopsPerStep(cfg.model), label, is);
      params = count(t);
    } finally {
      t.close();
    }
  }
  const imbalance = is.n > 0 ? Object.fromEntries(DEVICES.map((D) => [D, is.sums[D]! / is.n])) : null;
  return { variant, seed, ...out, imbalance, params, seconds: (performance.now() - t0) / 1000 };
}

/** The study's Markdown: setup, tables, plots, and a reading computed from the numbers. */
function report(results: RunResult[], o: { steps: number; seeds: number[]; command: string; domains: string[]; plot: string; vocabSize: number; cpu: string; minutes: number }): string {
  const variants = [...new Set(results.map((r) => r.variant))];
  const of = (v: Variant) => results.filter((r) => r.variant === v);
  const fmt = (xs: number[]) => `${mean(xs).toFixed(3)} ± ${sd(xs).toFixed(3)}`;
  const meanLoss = (r: RunResult) => mean(o.domains.map((d) => r.final[d]!));
  const cfgs = (["dense", "topk", "moge", "rre"] as const).map((v) => parseModelConfig(modelConfig(v, o.vocabSize, o.domains, 1)));
  const lines: string[] = [];
  lines.push("# The routers at equal compute", "");
  lines.push(`Written by \`${o.command}\` (${o.minutes.toFixed(0)} min on ${o.cpu}); \`study/routers.ts\` says how. Rerun it to check, \`--scale=N\` for N× the steps.`, "");
  lines.push("## Setup", "");
  lines.push(`Default corpus (domains ${o.domains.join(", ")}), vocabulary ${o.vocabSize}, width ${SHAPE.width}, ${SHAPE.heads} heads, T = ${SHAPE.seqLen}, batch ${SHAPE.batch}, one dense + one FFN/MoE layer below PanGu-α's query layer, one shared token embedding, AdamW at 2e-3 with cosine decay, ${o.steps} steps for every model, seeds ${o.seeds.join(", ")} (each seed sets the init, the data order and RRE's table). Every model has the same active FFN width per token (${SHAPE.ffn}), so the same training FLOPs per token:`, "");
  lines.push("| model | experts | active per token | parameters | training GFLOPs per step |", "| --- | --- | --- | --: | --: |");
  const params = (v: Variant) => results.find((r) => r.variant === v)?.params ?? NaN;
  const rows: [Variant, string, string, ModelConfig][] = [
    ["dense", "—", `FFN ${SHAPE.ffn}`, cfgs[0]!],
    ["topk", `16 × ${SHAPE.ffn / 2}`, `2 × ${SHAPE.ffn / 2}`, cfgs[1]!],
    ["moge", `16 × ${SHAPE.ffn / 2}`, `2 × ${SHAPE.ffn / 2}`, cfgs[2]!],
    ["rre", `8 × ${SHAPE.ffn}`, `1 × ${SHAPE.ffn}`, cfgs[3]!],
  ];
  for (const [v, ex, act, c] of rows) lines.push(`| ${LABEL[v]} | ${ex} | ${act} | ${(params(v) / 1e6).toFixed(3)} M | ${(flopsPerStep(c) / 1e9).toFixed(2)} |`);
  lines.push("", `"${LABEL.upcycled}" is the dense model trained for half the steps, upcycled (each expert a copy of the dense FFN) and trained as RRE for the other half: the same FLOPs as RRE from scratch.`, "");
  lines.push("## Validation loss per domain (nats/token, mean ± sd over seeds)", "");
  lines.push(`| model | ${o.domains.join(" | ")} | mean |`, `| --- | ${o.domains.map(() => "--:").join(" | ")} | --: |`);
  for (const v of variants) {
    const rs = of(v);
    lines.push(`| ${LABEL[v]} | ${o.domains.map((d) => fmt(rs.map((r) => r.final[d]!))).join(" | ")} | ${fmt(rs.map(meanLoss))} |`);
  }
  lines.push("", `![validation loss against training FLOPs](${o.plot})`, "");
  lines.push("## Load balance", "");
  lines.push(`Imbalance score IS = (max − min device load) / tokens, mean over training steps, experts placed contiguously on D devices, the same placement for every router (with D = 2 a MoGE group is one device). 0 is perfect balance.`, "");
  lines.push(`| model | ${DEVICES.map((D) => `IS, D = ${D}`).join(" | ")} |`, `| --- | ${DEVICES.map(() => "--:").join(" | ")} |`);
  for (const v of variants) {
    const rs = of(v).filter((r) => r.imbalance);
    if (rs.length === 0) continue;
    lines.push(`| ${LABEL[v]} | ${DEVICES.map((D) => fmt(rs.map((r) => r.imbalance![D]!))).join(" | ")} |`);
  }
  lines.push("", "## Reading", "");
  lines.push("Computed from the table by the script; a difference counts as a win only when it holds for every seed.", "");
  const dense = of("dense");
  for (const v of variants.filter((x) => x !== "dense")) {
    const rs = of(v);
    for (const d of ["mean", ...o.domains]) {
      const val = (r: RunResult) => (d === "mean" ? meanLoss(r) : r.final[d]!);
      const diffs = rs.map((r) => val(r) - val(dense.find((x) => x.seed === r.seed)!));
      const m = mean(diffs);
      const all = diffs.every((x) => x < 0) ? "lower for every seed" : diffs.every((x) => x > 0) ? "higher for every seed" : "mixed across seeds";
      const signed = `${m >= 0 ? "+" : ""}${m.toFixed(3)} nats`;
      if (d === "mean") lines.push(`- **${LABEL[v]}** vs dense, mean over domains: ${signed} (${all}).`);
      else if (diffs.every((x) => x > 0)) lines.push(`  - on ${d} it loses to dense: ${signed} (${all}).`);
      else if (!diffs.every((x) => x < 0)) lines.push(`  - on ${d} it is not a consistent win: ${signed} on average (${all}).`);
    }
  }
  const rre = of("rre"), up = of("upcycled");
  if (rre.length && up.length) {
    const diffs = up.map((r) => meanLoss(r) - meanLoss(rre.find((x) => x.seed === r.seed)!));
    lines.push(`- Upcycled vs RRE from scratch at equal FLOPs: ${mean(diffs) >= 0 ? "+" : ""}${mean(diffs).toFixed(3)} nats (${diffs.every((x) => x < 0) ? "upcycling wins for every seed" : diffs.every((x) => x > 0) ? "from scratch wins for every seed" : "mixed across seeds"}).`);
  }
  lines.push("", "The upcycled run's second half has its own warm-up and cosine schedule (as `sigma upcycle` then `sigma train` would run it). These are small models trained briefly on a few MB; the ranking at this scale need not hold at the papers' scale. `--scale` trains longer.", "");
  return lines.join("\n");
}

export async function run(args: string[]): Promise<void> {
  // Flags: --scale=X (positive), --steps=N and --seeds=N (positive integers), --out=FILE, --only=a,b, --report-only; anything else is refused.
  const known = ["scale", "steps", "seeds", "out", "only"];
  for (const a of args) {
    if (a === "--report-only" || known.some((k) => a.startsWith(`--${k}=`))) continue;
    throw new Error(`study routers: unknown flag ${JSON.stringify(a)} (flags: ${known.map((k) => `--${k}=…`).join(", ")}, --report-only)`);
  }
  const arg = (k: string, d: number): number => {
    const text = args.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3);
    const v = text === undefined ? d : Number(text);
    if (!(v > 0) || !Number.isFinite(v) || (k !== "scale" && !Number.isInteger(v))) throw new Error(`study routers: --${k}=${text} is not a positive ${k === "scale" ? "number" : "integer"}`);
    return v;
  };
  const scale = arg("scale", 1);
  let steps = Math.round(arg("steps", 300) * scale);
  const seeds = Array.from({ length: arg("seeds", 3) }, (_, i) => i + 1);
  const every = Math.max(1, Math.round(steps / 10));
  const outArg = args.find((a) => a.startsWith("--out="))?.slice(6);
  const docPath = outArg ?? "docs/study.md";
  const only = args.find((a) => a.startsWith("--only="))?.slice(7).split(",") as Variant[] | undefined;
  const bad = only?.find((v) => !(v in LABEL));
  if (bad !== undefined) throw new Error(`study routers: --only names "${bad}"; the variants are ${Object.keys(LABEL).join(", ")}`);
  await benchData(DATA);
  const m = readManifest(join(DATA, "manifest.json"));
  const domains = m.domains.map((d) => d.name);
  const variants: Variant[] = only ?? ["dense", "topk", "moge", "rre", "upcycled"];
  const t0 = performance.now();
  let results: RunResult[] = [];
  let minutes: number;
  let cmdArgs = args;
  if (args.includes("--report-only")) {
    // Re-render docs/study.md from the last run's numbers (no training).
    const saved = JSON.parse(readFileSync(join(OUT, "result.json"), "utf8")) as { steps: number; seeds: number[]; results: RunResult[]; minutes: number; args: string[] };
    [results, minutes, cmdArgs] = [saved.results, saved.minutes, saved.args];
    seeds.splice(0, seeds.length, ...saved.seeds);
    steps = saved.steps;
  } else {
    for (const seed of seeds) for (const v of variants) results.push(runOne(v, seed, steps, every, m.tokenizer.vocabSize, domains));
    minutes = (performance.now() - t0) / 60000;
    mkdirSync(OUT, { recursive: true });
    writeFileAtomic(join(OUT, "result.json"), JSON.stringify({ steps, seeds, shape: SHAPE, minutes, args, results }, null, 1));
  }
  // Plot: mean over seeds of each variant's curve (same evaluation points for every seed).
  const series: Series[] = [...new Set(results.map((r) => r.variant))].map((v) => {
    const rs = results.filter((r) => r.variant === v);
    return { name: LABEL[v], points: rs[0]!.curve.map(([f], i) => [f / 1e12, mean(rs.map((r) => r.curve[i]![1]))] as [number, number]), dashed: v === "upcycled" };
  });
  const plotPath = join(dirname(docPath), "study", "routers-loss.svg");
  mkdirSync(dirname(plotPath), { recursive: true });
  writeFileAtomic(plotPath, svgCharts([{ title: `validation loss vs training compute (mean of ${seeds.length} seeds)`, xLabel: "training TFLOPs", yLabel: "validation loss (nats/token, mean over domains)", series }]));
  const { cpus } = await import("node:os");
  const cpu = `${cpus()[0]?.model.trim() ?? "unknown CPU"}, ${cpus().length} cores`;
  const command = `npm run study -- routers${cmdArgs.length ? " " + cmdArgs.join(" ") : ""}`;
  writeFileAtomic(docPath, report(results, { steps, seeds, command, domains, plot: relative(dirname(docPath), plotPath), vocabSize: m.tokenizer.vocabSize, cpu, minutes }));
  console.log(`wrote ${docPath}, ${plotPath} and ${join(OUT, "result.json")} (${minutes.toFixed(1)} min)`);
}
