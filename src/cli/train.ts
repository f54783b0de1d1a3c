/**
 * `sigma train`, `sigma eval` and `sigma generate`: run a training config,
 * measure a checkpoint per domain, and sample from one.
 */
import type { Command } from "commander";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { SigmaError } from "../util/errors.js";
import { configWarnings, loadTrainConfig, parseTrainConfig, type TrainConfig } from "../train/config.js";
import { resumeTrainer } from "../train/checkpoint.js";
import { Evaluator, checkEvalBatches, type DomainEval } from "../train/evaluate.js";
import { unigramBaselines } from "../train/baseline.js";
import { prepareRunFolder, runPaths, runTraining, type RunResult } from "../train/run.js";
import { Trainer, storePath } from "../train/trainer.js";
import { readManifest, readManifestIfPresent } from "../data/manifest.js";
import { domainIndex, encodePrompt, loadForInference } from "../serve/load.js";
import { generateIds } from "../serve/generate.js";
import { FLAG_LIMITS, parseIntOpt, parseNumOpt } from "./tokenizer.js";
import { TRAIN_LIMITS } from "../train/config.js";
import { checkBatchFits, checkRunFits } from "../train/memory.js";
import { ensureWritableDir, ensureWritableFile } from "../util/fs.js";
import { TrainProgress } from "./progress.js";
import { describeStore, withStoreOptions } from "./store.js";
import { readInitModel } from "./model-folder.js";

/** Trains with a progress bar, evaluation lines, Ctrl-C → checkpoint and stop. */
export async function trainWithProgress(t: Trainer, opts: { resumed: boolean; baselines?: Record<string, number> }): Promise<RunResult> {
  const bar = new TrainProgress(t.config.steps, t.step, t.config.name);
  let stop = false;
  const onSigint = (): void => {
    if (stop) process.exit(130);
    stop = true;
    bar.log("stopping after this step (a checkpoint is written); Ctrl-C again to quit at once");
  };
  process.on("SIGINT", onSigint);
  try {
    return await runTraining(
      t,
      {
        onStep: (r) => bar.update(r),
        onEval: (step, ev) => bar.log(`step ${step}: val ${ev.map((e) => `${e.domain} ${e.loss.toFixed(3)}`).join(", ")}`),
        shouldStop: () => stop,
      },
      opts,
    );
  } finally {
    bar.stop();
    process.off("SIGINT", onSigint);
  }
}

export function formatEval(evals: DomainEval[], baselines: Record<string, number>): string {
  const rows = [["domain", "val loss", "perplexity", "unigram baseline", "below baseline"]];
  for (const e of evals) {
    const b = baselines[e.domain];
    rows.push([e.domain, e.loss.toFixed(3), e.perplexity.toFixed(1), b === undefined ? "-" : b.toFixed(3), b === undefined ? "-" : `${(b - e.loss).toFixed(3)} nats`]);
  }
  const w = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((x, c) => (c === 0 ? x.padEnd(w[c]!) : x.padStart(w[c]!))).join("  ")).join("\n");
}

export const baselineMap = (dataDir: string): Record<string, number> => Object.fromEntries(unigramBaselines(dataDir).map((b) => [b.domain, b.crossEntropy]));

export function register(program: Command): void {
  program
    .command("train")
    .description("train a model from a JSON config (see README: Training)")
    .requiredOption("--config <file>", "train config (JSON; src/train/config.ts lists the fields)")
    .option("--resume [ckpt]", "continue from a checkpoint (default: the newest in <out>/checkpoints)")
    .option("--init <ckpt>", "start from a model's weights (from sigma upcycle, extract or import; its config must equal the model section)")
    .option("--out <dir>", "override the config's out folder")
    .option("--overwrite", "replace the run that --out already holds (its checkpoints, metrics, plots and the expert store it created)")
    .option("--steps <n>", "override the config's steps", parseIntOpt("steps", 1, TRAIN_LIMITS.steps))
    .option("--store [path]", "ECSS: keep the experts and their Adam moments in an expert store file (default <out>/experts.sgxs)")
    .option("--expert-memory <size>", "ECSS: RAM budget of the resident experts, e.g. 2GiB (implies --store)")
    .action(async (o: { config: string; resume?: string | true; init?: string; out?: string; overwrite?: boolean; steps?: number; store?: string | true; expertMemory?: string }) => {
      let cfg: TrainConfig = loadTrainConfig(o.config);
      if (o.out !== undefined || o.steps !== undefined) cfg = parseTrainConfig({ ...cfg, ...(o.out !== undefined ? { out: o.out } : {}), ...(o.steps !== undefined ? { steps: o.steps } : {}) }, o.config);
      cfg = withStoreOptions(cfg, o, o.config);
      for (const w of configWarnings(cfg, readManifestIfPresent(cfg.data.dir))) console.error(`warning: ${w}`);
      let t: Trainer;
      if (o.resume && o.init) throw new SigmaError("--resume and --init exclude each other", "--init starts a new run from a model; --resume continues a run");
      if (o.resume && o.overwrite) throw new SigmaError("--resume and --overwrite exclude each other", "--resume continues the run in --out; --overwrite replaces it with a new one");
      const outFlag = o.out !== undefined ? "--out" : `out in ${o.config}`;
      // Before anything is written or allocated: a folder we can write, a store path that is a file, and memory for the run.
      ensureWritableDir(cfg.out, outFlag);
      if (cfg.store.enabled) ensureWritableFile(storePath(cfg), typeof o.store === "string" ? "--store" : cfg.store.path !== null ? `store.path in ${o.config}` : `the store path (${outFlag}/experts.sgxs)`);
      const fit = checkRunFits(cfg, o.config);
      if (fit.warning) console.error(`warning: ${fit.warning}`);
      prepareRunFolder(cfg, cfg.store.enabled ? storePath(cfg) : null, { resume: !!o.resume, overwrite: !!o.overwrite, flag: outFlag, log: (l) => console.error(l) });
      for (const [flag, path] of [["--resume", typeof o.resume === "string" ? o.resume : undefined], ["--init", o.init]] as const) {
        if (path !== undefined && !existsSync(path)) throw new SigmaError(`${flag} ${path} does not exist`, `pass a checkpoint folder (a run's checkpoints/ gives its newest)${flag === "--init" ? " or a model .safetensors" : ""}`);
      }
      if (o.resume) {
        const from = o.resume === true ? runPaths(cfg.out).checkpoints : o.resume;
        t = resumeTrainer(from, cfg);
        console.error(`resumed from step ${t.step} (${from})`);
      } else t = new Trainer(cfg, o.init ? readInitModel(o.init, cfg.model, cfg.data.dir) : undefined);
      try {
        const mode = cfg.model.sparseLayers === 0 ? "dense" : cfg.model.denseLayers === 0 ? "sparse" : "mixed";
        console.error(`${cfg.name}: ${mode} model, ${(t.model.parameterCount() / 1e6).toFixed(2)}M parameters, router ${cfg.model.experts?.router.kind ?? "none"}, ${cfg.steps} steps of ${cfg.batchSize * cfg.accumSteps}×${cfg.model.seqLen} tokens`);
        if (t.ecss) console.error(describeStore(t.ecss));
        const baselines = baselineMap(cfg.data.dir);
        const r = await trainWithProgress(t, { resumed: !!o.resume, baselines });
        if (t.ecss) console.error(describeStore(t.ecss));
        console.log(`${r.stopped === "done" ? "finished" : `stopped (${r.stopped})`} at step ${r.steps}`);
        console.log(formatEval(r.finalEval, baselines));
        console.log(`checkpoint: ${r.checkpoint}\nmetrics: ${r.metrics}\nplots: ${r.plots.join(", ")}`);
      } finally {
        t.close();
      }
    });

  program
    .command("eval")
    .description("per-domain validation loss and perplexity of a checkpoint, against the unigram baseline")
    .requiredOption("--ckpt <path>", "checkpoint folder (or a run's checkpoints/ folder: its newest)")
    .option("--data <dir>", "prepared data folder (default: the one the checkpoint was trained on)")
    .option("--batches <n>", "validation batches per domain", parseIntOpt("batches", 1, FLAG_LIMITS.batches), 8)
    .option("--batch-size <n>", "sequences per batch", parseIntOpt("batch-size", 1, FLAG_LIMITS.batchSize), 8)
    .option("--json", "print JSON")
    .action((o: { ckpt: string; data?: string; batches: number; batchSize: number; json?: boolean }) => {
      const loaded = loadForInference(o.ckpt);
      checkBatchFits(loaded.model, o.batchSize, "--batch-size");
      const dataDir = o.data ?? loaded.dataDir;
      if (!dataDir || !existsSync(join(dataDir, "manifest.json"))) throw new SigmaError(`no prepared data to evaluate on (${dataDir ?? "the checkpoint names none"})`, "pass --data <dir> (a folder written by `sigma data prepare`)");
      const m = readManifest(join(dataDir, "manifest.json"));
      if (m.tokenizer.vocabSize !== loaded.model.config.vocabSize) throw new SigmaError(`${dataDir} was tokenized with a vocabulary of ${m.tokenizer.vocabSize}; the model has ${loaded.model.config.vocabSize}`, "evaluate on the data the model was trained on");
      checkEvalBatches(m, loaded.model.config.domains.map((d) => d.name), o.batchSize, loaded.model.config.seqLen, o.batches, "--batches");
      const ev = new Evaluator(dataDir, loaded.model, { batchSize: o.batchSize, seed: 1 });
      try {
        const res = ev.run(loaded.model, o.batches);
        const baselines = baselineMap(dataDir);
        if (o.json) return console.log(JSON.stringify({ checkpoint: loaded.path, step: loaded.step, domains: res, baselines }, null, 2));
        console.log(`${loaded.path}${loaded.step !== null ? ` (step ${loaded.step})` : ""} on ${dataDir}:`);
        console.log(formatEval(res, baselines));
      } finally {
        ev.close();
      }
    });

  program
    .command("generate")
    .description("sample text from a checkpoint, streaming to stdout (KV-cache decoding)")
    .requiredOption("--ckpt <path>", "checkpoint folder, a run's checkpoints/ folder, or a model .safetensors with tokenizer.json beside it")
    .option("--domain <name>", "domain whose embedding slot and experts to use (default: the model's first)")
    .option("--prompt <text>", "text to continue (special tokens such as <|lang:en|> are recognised)", "")
    .option("--max-tokens <n>", "tokens to generate at most", parseIntOpt("max-tokens", 1, FLAG_LIMITS.maxTokens), 100)
    .option("--temperature <t>", "0 = greedy", parseNumOpt("temperature", 0, 1e6), 0.8)
    .option("--top-k <k>", "sample among the k most likely tokens (0 = all)", parseIntOpt("top-k", 0, Number.MAX_SAFE_INTEGER), 40)
    .option("--top-p <p>", "nucleus: the most likely tokens up to this probability (1 = all)", parseNumOpt("top-p", 0, 1, { above: true }), 0.95)
    .option("--seed <n>", "sampling seed", parseIntOpt("seed", 0, FLAG_LIMITS.seed), 1)
    .action((o: { ckpt: string; domain?: string; prompt: string; maxTokens: number; temperature: number; topK: number; topP: number; seed: number }) => {
      const { model, tokenizer } = loadForInference(o.ckpt);
      const domain = o.domain ?? model.config.domains[0]!.name;
      const prompt = encodePrompt(tokenizer, domain, o.prompt);
      process.stdout.write(o.prompt);
      const dec = new TextDecoder("utf-8");
      const t0 = performance.now();
      let n = 0;
      for (const id of generateIds(model, prompt, domainIndex(model, domain), { ...o, stopId: tokenizer.eotId })) {
        process.stdout.write(dec.decode(tokenizer.decodeBytes([id]), { stream: true }));
        n++;
      }
      process.stdout.write(dec.decode() + "\n");
      const s = (performance.now() - t0) / 1000;
      console.error(`${n} tokens in ${s.toFixed(2)} s (${(n / s).toFixed(1)} tokens/s, prompt ${prompt.length} tokens)`);
    });
}
