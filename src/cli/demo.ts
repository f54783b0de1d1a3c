/**
 * `sigma demo`: the README's main command. With no arguments it prepares the
 * default corpus and tokenizer if missing, trains a small mixed-mode PanGu-Σ
 * (one dense layer under one RRE layer whose expert groups are the four
 * domains, each domain with its own embedding slot) for a few minutes, prints each
 * domain's validation loss against its unigram baseline, generates a sample
 * per domain and writes the plots.
 */
import type { Command } from "commander";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { readManifest } from "../data/manifest.js";
import { parseTrainConfig, type TrainConfigInput } from "../train/config.js";
import { Trainer } from "../train/trainer.js";
import { prepareRunFolder } from "../train/run.js";
import { openModel } from "../api/model.js";
import { SigmaError } from "../util/errors.js";
import { DEFAULT_DATA, prepareCommand } from "./data.js";
import { DEFAULT_VOCAB } from "../data/vocab.js";
import { formatEval, trainWithProgress } from "./train.js";
import { tuneFirst } from "./tune.js";
import { FLAG_LIMITS, parseIntOpt, parseNumOpt } from "./tokenizer.js";
import { TRAIN_LIMITS } from "../train/config.js";
import { checkRunFits } from "../train/memory.js";
import { perDomainSlots } from "../models/config.js";
import { ensureWritableDir } from "../util/fs.js";

/** The demo's widths: its 4 heads divide them; past 4096 a step takes minutes on a CPU. */
const parseWidth = (v: string): number => {
  const n = parseIntOpt("width", 4, 4096)(v);
  if (n % 4 !== 0) throw new SigmaError(`--width must be a multiple of 4 (the demo model has 4 heads), got "${v}"`);
  return n;
};

/** A prompt per default domain, in the shape of that domain's documents. */
const PROMPTS: Record<string, string> = {
  zh: "子曰：",
  en: "The ",
  bi: "<|lang:zh|>中国<|lang:en|>",
  code: "export function ",
};

interface DemoOpts {
  out: string;
  data: string;
  minutes: number;
  steps: number;
  width: number;
  seed: number;
  codeSlot?: boolean;
  sharedEmbedding?: boolean;
  overwrite?: boolean;
  teacher?: string;
}

/**
 * The demo's run. Sized for two cores: ~3k tokens/s leaves room for a few
 * hundred steps of 16×128 tokens in five minutes [ours]. A peak rate of 3e-3
 * suits a model this small; the schedule is fitted to the steps the budget
 * allows (measured), and the budget still stops the run on a slowing machine.
 */
export function demoConfig(vocabSize: number, domains: string[], o: DemoOpts): TrainConfigInput {
  const slots =
    o.sharedEmbedding ? { embeddingSlots: 1, slots: domains.map(() => 0) }
    : o.codeSlot ? { embeddingSlots: 2, slots: domains.map((n) => (n === "code" ? 1 : 0)) }
    : perDomainSlots(domains);
  return {
    name: "sigma demo",
    model: {
      vocabSize,
      width: o.width,
      heads: 4,
      denseLayers: 1,
      sparseLayers: 1,
      seqLen: 128,
      ffnWidth: 4 * o.width,
      // Each domain owns an RRE expert group of two experts, and — PanGu-Σ's
      // layout, the default of new models — its own token-embedding slot
      // (the default corpus's four domains are all major ones). --shared-embedding
      // gives all one slot; --code-slot, code one and the others another.
      embeddingSlots: slots.embeddingSlots,
      domains: domains.map((name, i) => ({ name, slot: slots.slots[i]!, group: i })),
      experts: { count: 2 * domains.length, router: { kind: "rre", groups: domains.length, seed: o.seed } },
      seed: o.seed,
    },
    data: { dir: o.data },
    batchSize: 16,
    steps: o.steps,
    maxSeconds: o.minutes * 60,
    // 20 warm-up steps, or a tenth of a shorter run (a warm-up as long as the run never reaches the peak rate).
    optim: { lr: 3e-3, minLr: 1e-4, warmupSteps: Math.min(20, Math.floor(o.steps / 10)) },
    eval: { every: 50, batches: 2 },
    checkpoint: { every: 0, keep: 1 },
    // --teacher: a draft for speculative decoding, distilled from the model it will draft for (src/train/distill.ts).
    ...(o.teacher ? { distill: { teacher: o.teacher } } : {}),
    seed: o.seed,
    out: o.out,
  };
}

/** Seconds per training step of this config on this machine (median of three, after a warm-up step). */
function measureStep(cfg: ReturnType<typeof parseTrainConfig>): number {
  const t = new Trainer(cfg);
  try {
    const times: number[] = [];
    for (let i = 0; i < 4; i++) times.push(t.trainStep().seconds);
    return times.slice(1).sort((a, b) => a - b)[1]!;
  } finally {
    t.close();
  }
}

export function register(program: Command): void {
  program
    .command("demo")
    .description("train a small PanGu-Σ (mixed mode, RRE) on the default corpus for a few minutes, then evaluate and sample")
    .option("--out <dir>", "where metrics, plots and the checkpoint go", "sigma-demo")
    .option("--data <dir>", "prepared data (made from the default corpus if missing)", DEFAULT_DATA)
    .option("--minutes <m>", "training time budget", parseNumOpt("minutes", 0, 1e7, { above: true }), 5)
    .option("--steps <n>", "step cap (the schedule spans the steps that fit in the budget, at most this many)", parseIntOpt("steps", 1, TRAIN_LIMITS.steps), 2000)
    .option("--width <n>", "model width C", parseWidth, 128)
    .option("--seed <n>", "seed of the init, the RRE tables and the data order", parseIntOpt("seed", 0, FLAG_LIMITS.seed), 1)
    .option("--shared-embedding", "one token-embedding slot for all domains (default: one per domain, as PanGu-Σ)")
    .option("--code-slot", "two embedding slots: one for code, one shared by the other domains")
    .option("--overwrite", "replace the demo run that --out already holds")
    .option("--teacher <ckpt>", "also learn this model's next-token distributions (distillation): a draft for speculative decoding that agrees with the model it drafts for, e.g. --width 64 --teacher sigma-demo (docs/decode.md)")
    .action(async (o: DemoOpts) => {
      const t0 = performance.now();
      ensureWritableDir(o.out, "--out");
      if (!existsSync(join(o.data, "manifest.json"))) {
        if (o.data !== DEFAULT_DATA) throw new SigmaError(`${o.data} holds no prepared data (no manifest.json)`, "run `sigma data prepare --out <dir>` first, or leave out --data");
        console.error("preparing the default corpus and tokenizer (once)…");
        await prepareCommand({ out: o.data, valFraction: 0.02, seed: 1234, controlTokens: true, vocab: DEFAULT_VOCAB }, "--data");
      }
      const m = readManifest(join(o.data, "manifest.json"));
      let cfg = parseTrainConfig(demoConfig(m.tokenizer.vocabSize, m.domains.map((d) => d.name), o), "demo config");
      const fits = checkRunFits(cfg, "the demo run (--width)");
      if (fits.warning) console.error(`warning: ${fits.warning}`);
      // Lay the schedule out over the steps this machine can do in the budget,
      // so the rate has decayed when time runs out (the budget still stops the run).
      prepareRunFolder(cfg, null, { overwrite: !!o.overwrite, flag: "--out", canResume: false, log: (l) => console.error(l) });
      await tuneFirst();
      const secondsPerStep = measureStep(cfg);
      const fit = Math.floor((0.9 * o.minutes * 60) / secondsPerStep);
      if (fit < cfg.steps) cfg = parseTrainConfig({ ...cfg, steps: Math.max(cfg.optim.warmupSteps + 1, fit) }, "demo config");
      console.error(`${secondsPerStep.toFixed(2)} s per step here: ${cfg.steps} steps fit in ${o.minutes} min`);
      console.error(`training a mixed-mode PanGu-Σ: RRE over ${cfg.model.experts!.count} experts in ${m.domains.length} domain groups, for up to ${o.minutes} min / ${cfg.steps} steps`);
      const result = await trainWithProgress(cfg, { names: { config: "demo config", out: "--out" } });
      const model = await openModel(result.checkpoint);
      console.log(`\ntrained ${result.steps} steps (${(result.tokens / 1e6).toFixed(2)}M tokens) in ${result.seconds.toFixed(0)} s${result.stopped === "time" ? " (time budget reached)" : ""}`);
      console.log("\nper-domain validation loss (nats/token) against the unigram baseline (entropy of the validation tokens under training-split frequencies):");
      console.log(formatEval(result.finalEval, result.baselines, result.all));

      console.log("\nsamples (temperature 0.8, top-k 40, seed 1):");
      for (const d of model.domains) {
        const prompt = PROMPTS[d] ?? "";
        const text = (prompt + (await model.complete(prompt, { domain: d, temperature: 0.8, topK: 40, topP: 1, maxTokens: 48, seed: 1 }))).replace(/\s+/g, " ").trim();
        console.log(`  [${d}] ${text}`);
      }
      console.log(`\ncheckpoint: ${result.checkpoint}\nmetrics:    ${result.metrics}\nplots:      ${result.plots.join(", ")}`);
      console.log(`demo finished in ${((performance.now() - t0) / 1000).toFixed(0)} s; try: npx sigma generate --ckpt ${join(o.out, "checkpoints")} --domain en --prompt "The "`);
    });
}
