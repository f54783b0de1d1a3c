/**
 * `npm run bench -- upcycle [--pretrain=N] [--steps=N] [--every=N] [--equal-compute]`: does
 * inheritance pay? (PanGu-Σ grows from dense PanGu-α, docs/design.md §9.)
 *
 * On the default corpus: train a small dense model for `pretrain` steps;
 * upcycle it to an RRE model (1 dense + 1 sparse layer, 8 experts in 4 domain
 * groups) and train that for `steps` steps; train the same sparse model from
 * scratch for the same `steps` steps, with the same train config (schedule,
 * batches, data order). The dense model continued for `steps` more steps is
 * the third curve: it says whether the experts, not just the extra training,
 * make the difference. Validation loss (mean over domains, the same fixed
 * batches every time) is plotted against the steps of the compared phase.
 * The upcycled model has had `pretrain` more steps than the one from scratch;
 * `--equal-compute` adds the sparse model from scratch trained for
 * pretrain + steps steps (its own schedule), drawn so that it ends where the
 * others end, to ask whether upcycling beats spending those steps sparse.
 *
 * It is not a test: the outcome is reported whichever way it goes.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { readManifest } from "../src/data/manifest.js";
import type { ModelConfigInput } from "../src/models/config.js";
import { upcycle } from "../src/models/upcycle.js";
import type { PanguSigma } from "../src/models/pangu-sigma.js";
import { parseTrainConfig, type TrainConfig } from "../src/train/config.js";
import { svgCharts, type Series } from "../src/train/plots.js";
import { Trainer } from "../src/train/trainer.js";
import { writeFileAtomic } from "../src/util/fs.js";
import { benchData, BENCH_DATA } from "./data.js";

const DATA = BENCH_DATA;
const OUT = ".sigma/bench/upcycle";
/** Small enough for a few minutes on two cores: C=128, 2 layers, T=64, B=16 [ours]. */
const SHAPE = { width: 128, heads: 4, layers: 2, seqLen: 64, batch: 16, experts: 8 };

function trainConfig(model: ModelConfigInput, steps: number, name: string): TrainConfig {
  return parseTrainConfig({
    name,
    model,
    data: { dir: DATA },
    batchSize: SHAPE.batch,
    steps,
    optim: { lr: 2e-3, minLr: 1e-4, warmupSteps: Math.min(20, steps - 1) },
    eval: { every: 0, batches: 2 },
    seed: 7,
    out: join(OUT, name),
  });
}

/** Mean validation loss over the domains. */
const valLoss = (t: Trainer): number => {
  const ev = t.evaluate();
  return ev.reduce((a, e) => a + e.loss, 0) / ev.length;
};

/** Trains `steps` steps, evaluating every `every` and at the end; returns the curve [[step, loss]…] from step 0. */
function curve(t: Trainer, steps: number, every: number, label: string): [number, number][] {
  const pts: [number, number][] = [[0, valLoss(t)]];
  const t0 = performance.now();
  for (let s = 1; s <= steps; s++) {
    t.trainStep();
    if (s % every === 0 || s === steps) {
      pts.push([s, valLoss(t)]);
      process.stderr.write(`\r${label}: step ${s}/${steps}, val ${pts[pts.length - 1]![1].toFixed(3)}, ${((performance.now() - t0) / 1000).toFixed(0)} s   `);
    }
  }
  process.stderr.write("\n");
  return pts;
}

function run1(model: PanguSigma | null, cfg: TrainConfig, steps: number, every: number, label: string): { curve: [number, number][]; model: PanguSigma } {
  const t = new Trainer(cfg, model ?? undefined);
  try {
    return { curve: curve(t, steps, every, label), model: t.model };
  } finally {
    t.close();
  }
}

export async function run(args: string[]): Promise<void> {
  const arg = (k: string, d: number) => Number(args.find((a) => a.startsWith(`--${k}=`))?.split("=")[1] ?? d);
  const pretrain = arg("pretrain", 300);
  const steps = arg("steps", 300);
  const every = arg("every", 20);
  await benchData(DATA);
  const m = readManifest(join(DATA, "manifest.json"));
  const domains = m.domains.map((d) => d.name);
  const base = { vocabSize: m.tokenizer.vocabSize, width: SHAPE.width, heads: SHAPE.heads, seqLen: SHAPE.seqLen, ffnWidth: 4 * SHAPE.width, seed: 3 };
  const denseModel: ModelConfigInput = { ...base, denseLayers: SHAPE.layers, sparseLayers: 0, domains: domains.map((name) => ({ name })) };
  const sparseModel: ModelConfigInput = {
    ...base,
    denseLayers: SHAPE.layers - 1,
    sparseLayers: 1,
    domains: domains.map((name, i) => ({ name, group: i % 4 })),
    experts: { count: SHAPE.experts, router: { kind: "rre", groups: 4, seed: 5 } },
  };
  console.log(`C=${SHAPE.width}, ${SHAPE.layers} layers, T=${SHAPE.seqLen}, B=${SHAPE.batch}, V=${base.vocabSize}; dense pre-training ${pretrain} steps, then ${steps} steps each: upcycled RRE (${SHAPE.experts} experts, 4 groups), the same RRE from scratch, the dense model continued`);

  const pre = run1(null, trainConfig(denseModel, pretrain, "dense-pretrain"), pretrain, every, "dense pre-training");
  const dense = pre.model;
  const sparseCfg = trainConfig(sparseModel, steps, "sparse");
  const up = upcycle(dense, sparseCfg.model);
  const upcycled = run1(up, sparseCfg, steps, every, "upcycled RRE");
  const scratch = run1(null, sparseCfg, steps, every, "RRE from scratch");
  const continued = run1(dense, trainConfig(denseModel, steps, "dense-continued"), steps, every, "dense continued");
  const long = args.includes("--equal-compute") ? run1(null, trainConfig(sparseModel, pretrain + steps, "sparse-long"), pretrain + steps, every, "RRE from scratch, equal compute") : null;

  const last = (c: [number, number][]) => c[c.length - 1]![1];
  const denseEnd = last(pre.curve);
  const series: Series[] = [
    { name: "upcycled RRE", points: upcycled.curve },
    { name: "RRE from scratch", points: scratch.curve },
    { name: "dense continued", points: continued.curve, dashed: true },
  ];
  if (long) series.push({ name: `scratch, ${pretrain + steps} steps`, points: long.curve.map(([s, l]) => [s - pretrain, l] as [number, number]).filter(([s]) => s >= 0), dashed: true });
  mkdirSync(OUT, { recursive: true });
  const svg = join(OUT, "loss.svg");
  writeFileAtomic(svg, svgCharts([{ title: `upcycled vs from-scratch RRE (dense pre-trained ${pretrain} steps)`, xLabel: "steps after the start of the compared runs", yLabel: "validation loss (nats/token, mean over domains)", series }]));
  const result = { pretrain, steps, denseAfterPretrain: denseEnd, upcycled: upcycled.curve, scratch: scratch.curve, denseContinued: continued.curve, ...(long ? { scratchEqualCompute: long.curve } : {}) };
  writeFileAtomic(join(OUT, "result.json"), JSON.stringify(result, null, 1));
  console.log(`dense after ${pretrain} steps: val ${denseEnd.toFixed(4)}; upcycled at step 0: ${upcycled.curve[0]![1].toFixed(4)} (inheritance keeps the function)`);
  console.log(`after ${steps} steps: upcycled ${last(upcycled.curve).toFixed(4)}, from scratch ${last(scratch.curve).toFixed(4)} (Δ ${(last(upcycled.curve) - last(scratch.curve)).toFixed(4)}), dense continued ${last(continued.curve).toFixed(4)}`);
  const reach = scratch.curve.find(([, l]) => l <= last(upcycled.curve));
  console.log(reach ? `from scratch reaches the upcycled model's final loss at step ${reach[0]}` : `from scratch does not reach the upcycled model's final loss within ${steps} steps`);
  if (long) console.log(`equal compute (${pretrain + steps} steps each, counting pre-training): upcycled ${last(upcycled.curve).toFixed(4)} vs from scratch ${last(long.curve).toFixed(4)} (Δ ${(last(upcycled.curve) - last(long.curve)).toFixed(4)})`);
  console.log(`plot: ${svg}; numbers: ${join(OUT, "result.json")}`);
}
