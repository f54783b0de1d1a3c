/**
 * `sigma train`, `sigma eval` and `sigma generate`: the command-line faces
 * of the library's train, evaluate and Model.generate (src/api/).
 */
import type { Command } from "commander";
import type { WeightFormat } from "../backend/quant.js";
import type { KVFormat } from "../nn/attention.js";
import { kvCacheOption, openOptions, weightsOption } from "./quantize.js";
import { SigmaError } from "../util/errors.js";
import { train, type TrainResult } from "../api/train.js";
import { evaluate } from "../api/evaluate.js";
import { openModel } from "../api/model.js";
import { newSpeculativeStats } from "../serve/speculative.js";
import { loadTrainConfig, parseTrainConfig, type TrainConfig, type TrainConfigInput } from "../train/config.js";
import type { DomainEval } from "../train/evaluate.js";
import { FLAG_LIMITS, parseIntOpt, parseNumOpt } from "./tokenizer.js";
import { TRAIN_LIMITS } from "../train/config.js";
import { runWithStop, TrainProgress } from "./progress.js";
import { describeStore, withStoreOptions } from "./store.js";
import { millions } from "./format.js";
import { streamOut } from "./output.js";
import { joinWorld } from "../comm/comm.js";
import { tuneFirst } from "./tune.js";
import { tuningDisabled } from "../backend/native/tune-cache.js";
import { loadNative as native } from "../backend/native/index.js";

/**
 * Runs `train` with a progress bar, evaluation lines, and Ctrl-C → a
 * checkpoint and stop (Ctrl-C twice quits at once).
 */
export async function trainWithProgress(config: TrainConfigInput | TrainConfig, opts: Omit<Parameters<typeof train>[1] & object, "signal" | "onProgress">): Promise<TrainResult> {
  const c = parseTrainConfig(config, opts.names?.config);
  const lead = (opts.comm?.rank ?? 0) === 0;
  return runWithStop(
    (con) =>
      train(c, {
        ...opts,
        log: con.say,
        signal: con.signal,
        onProgress: (e) => {
          const say = con.say;
          if (e.kind === "start") {
            const mode = c.model.sparseLayers === 0 ? "dense" : c.model.denseLayers === 0 ? "sparse" : "mixed";
            if (e.resumedFrom) say(`resumed from step ${e.step} (${e.resumedFrom})`);
            say(`${c.name}: ${mode} model, ${millions(e.parameters.total)} parameters (${millions(e.parameters.active)} active per token), router ${e.router ?? "none"}, ${c.steps} steps of ${c.batchSize * c.accumSteps}×${c.model.seqLen} tokens`);
            say(`precision: ${describePrecision(e.precision, e.bf16Path)}`);
            if (e.store) say(describeStore(e.store));
            con.bar = new TrainProgress(e.steps, e.step, c.name);
          } else if (e.kind === "step") con.bar?.update(e);
          else if (e.kind === "eval") say(`step ${e.step}: val ${e.domains.map((d) => `${d.domain} ${d.loss.toFixed(3)}`).join(", ")}${e.all && e.domains.length > 1 ? `, all ${e.all.loss.toFixed(3)}` : ""}`);
        },
      }),
    { announce: lead },
  );
}

/** The run's precision in words: for bf16, which path its matrix products take. */
export function describePrecision(precision: "f32" | "bf16", path: string | null): string {
  if (precision === "f32") return "f32";
  const how =
    path === "avx512-bf16" ? "AVX512_BF16: vdpbf16ps on bf16 pairs" : path === "converted-f32" ? "converted f32, as this CPU or kernel path lacks AVX512_BF16: inputs rounded to bf16, then the f32 GEMM" : "the TypeScript reference kernels";
  return `bf16 (linear and expert matrix products with bf16 inputs and f32 sums; ${how}); weights, optimizer and checkpoints f32`;
}

/** The evaluation table: per domain, and all domains together, against the unigram baselines. */
export function formatEval(evals: DomainEval[], baselines: Record<string, number>, all: DomainEval | null = null): string {
  const rows = [["domain", "val loss", "perplexity", "unigram baseline", "below baseline"]];
  const row = (e: DomainEval, b: number | undefined) => [e.domain, e.loss.toFixed(3), e.perplexity.toFixed(1), b === undefined ? "-" : b.toFixed(3), b === undefined ? "-" : `${(b - e.loss).toFixed(3)} nats`];
  for (const e of evals) rows.push(row(e, baselines[e.domain]));
  if (all && evals.length > 1) {
    // The baseline of all domains together, weighted as the losses are.
    const known = evals.every((e) => baselines[e.domain] !== undefined);
    rows.push(row(all, known ? evals.reduce((s, e) => s + baselines[e.domain]! * e.tokens, 0) / all.tokens : undefined));
  }
  const w = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((x, c) => (c === 0 ? x.padEnd(w[c]!) : x.padStart(w[c]!))).join("  ")).join("\n");
}

/** What every training command prints when the run ends. */
export function printTrainResult(r: TrainResult): void {
  if (r.store) console.error(describeStore(r.store));
  console.log(`${r.stopped === "done" ? "finished" : `stopped (${r.stopped === "aborted" ? "requested" : r.stopped})`} at step ${r.steps}`);
  console.log(formatEval(r.finalEval, r.baselines, r.all));
  console.log(`checkpoint: ${r.checkpoint}\nmetrics: ${r.metrics}\nplots: ${r.plots.join(", ")}`);
}

export function register(program: Command): void {
  program
    .command("train")
    .description("train a model from a JSON config (see docs/training.md, section The run config)")
    .requiredOption("--config <file>", "train config (JSON; src/train/config.ts lists the fields)")
    .option("--resume [ckpt]", "continue from a checkpoint (default: the newest in <out>/checkpoints)")
    .option("--init <ckpt>", "start from a model's weights (from sigma upcycle, extract or import; its config must equal the model section)")
    .option("--out <dir>", "override the config's out folder")
    .option("--overwrite", "replace the run that --out already holds (its checkpoints, metrics, plots and the expert store it created)")
    .option("--steps <n>", "override the config's steps", parseIntOpt("steps", 1, TRAIN_LIMITS.steps))
    .option("--store [path]", "ECSS: keep the experts and their Adam moments in an expert store file (default <out>/experts.sgxs)")
    .option("--expert-memory <size>", "ECSS: RAM budget of the resident experts, e.g. 2GiB (implies --store)")
    .action(async (o: { config: string; resume?: string | true; init?: string; out?: string; overwrite?: boolean; steps?: number; store?: string | true; expertMemory?: string }) => {
      // Under mpirun / srun: this process is one rank of a data-parallel run (docs/distributed.md).
      const world = joinWorld();
      let cfg: TrainConfig = loadTrainConfig(o.config);
      if (o.out !== undefined || o.steps !== undefined) cfg = parseTrainConfig({ ...cfg, ...(o.out !== undefined ? { out: o.out } : {}), ...(o.steps !== undefined ? { steps: o.steps } : {}) }, o.config);
      cfg = withStoreOptions(cfg, o, o.config);
      const outFlag = o.out !== undefined ? "--out" : `out in ${o.config}`;
      const storeFlag = typeof o.store === "string" ? "--store" : cfg.store.path !== null ? `store.path in ${o.config}` : `the store path (${outFlag}/experts.sgxs)`;
      // Several ranks would tune at once, on the same cores and the same file: a launched job uses the
      // tuning each machine already has (`sigma tune` once per machine), else the cache-size rule.
      if (world.comm.size === 1) await tuneFirst();
      else if (world.comm.rank === 0 && !tuningDisabled() && !native().backend?.gemmConfig().tuned) {
        console.error("note: no GEMM tuning for this CPU and thread count: the ranks use the cache-size rule (`sigma tune` on each machine, outside mpirun, tunes it)");
      }
      const r = await trainWithProgress(cfg, {
        ...(o.resume !== undefined ? { resume: o.resume } : {}),
        ...(o.init !== undefined ? { init: o.init } : {}),
        overwrite: !!o.overwrite,
        names: { config: o.config, out: outFlag, store: storeFlag },
        comm: world.comm,
      });
      if (world.comm.rank === 0) printTrainResult(r);
      world.finalize();
    });

  const evalCmd = program
    .command("eval")
    .description("per-domain validation loss and perplexity of a checkpoint, against the unigram baseline (the run's own evaluation settings by default)")
    // Not a required option: commander would then demand it of the subcommand \`sigma eval tasks\` in its own place (src/cli/eval-tasks.ts).
    .option("--ckpt <path>", "checkpoint folder (or a run folder: its newest checkpoint)")
    .option("--data <dir>", "prepared data folder (default: the one the checkpoint was trained on)")
    .option("--batches <n>", "validation batches per domain (default: the run's eval.batches, else 8)", parseIntOpt("batches", 1, FLAG_LIMITS.batches))
    .option("--batch-size <n>", "sequences per batch (default: the run's batchSize, else 8)", parseIntOpt("batch-size", 1, FLAG_LIMITS.batchSize))
    .option("--seed <n>", "seed of the validation windows (default: the run's, else 1)", parseIntOpt("seed", 0, FLAG_LIMITS.seed))
    .option("--json", "print JSON");
  weightsOption(evalCmd)
    .action(async (o: { ckpt?: string; data?: string; batches?: number; batchSize?: number; seed?: number; json?: boolean; weights?: WeightFormat }) => {
      if (o.ckpt === undefined) throw new SigmaError("required option '--ckpt <path>' not specified", "pass --ckpt <checkpoint folder or run folder>");
      const model = await openModel(o.ckpt, openOptions(o));
      const res = await evaluate(model, {
        ...(o.data !== undefined ? { data: o.data } : {}),
        ...(o.batches !== undefined ? { batches: o.batches } : {}),
        ...(o.batchSize !== undefined ? { batchSize: o.batchSize } : {}),
        ...(o.seed !== undefined ? { seed: o.seed } : {}),
        names: { data: "--data", batches: "--batches", batchSize: "--batch-size" },
      });
      if (o.json) return console.log(JSON.stringify({ checkpoint: model.path, step: model.step, data: res.data, settings: res.settings, domains: res.domains, all: res.all, skipped: res.skipped, baselines: res.baselines }, null, 2));
      console.log(`${model.path} (step ${model.step}) on ${res.data}, ${res.settings.batches} batches of ${res.settings.batchSize} per domain:`);
      console.log(formatEval(res.domains, res.baselines, res.all));
      if (res.skipped.length) console.error(`not evaluated (fewer validation tokens than one sequence): ${res.skipped.join(", ")}`);
    });

  const generateCmd = program
    .command("generate")
    .description("sample text from a checkpoint, streaming to stdout (KV-cache decoding)")
    .requiredOption("--ckpt <path>", "checkpoint folder, a run folder, or a model .safetensors with tokenizer.json beside it")
    .option("--domain <name>", "domain whose embedding slot and experts to use (default: the model's first)")
    .option("--prompt <text>", "text to continue (special tokens such as <|lang:en|> are recognised)", "")
    .option("--max-tokens <n>", "tokens to generate at most", parseIntOpt("max-tokens", 1, FLAG_LIMITS.maxTokens), 100)
    .option("--temperature <t>", "0 = greedy", parseNumOpt("temperature", 0, 1e6), 0.8)
    .option("--top-k <k>", "sample among the k most likely tokens (0 = all)", parseIntOpt("top-k", 0, Number.MAX_SAFE_INTEGER), 40)
    .option("--top-p <p>", "nucleus: the most likely tokens up to this probability (1 = all)", parseNumOpt("top-p", 0, 1, { above: true }), 0.95)
    .option("--seed <n>", "sampling seed", parseIntOpt("seed", 0, FLAG_LIMITS.seed), 1)
    .option("--stop <text>", "stop before this text (repeat for several; the text is not printed)", (v: string, all: string[] = []) => [...all, v])
    .option("--show-special", "print special tokens such as <|endoftext|> (hidden by default)")
    .option("--draft <model>", "speculative decoding: a smaller model with the same tokenizer (opened like --ckpt, with the same --weights), or ngram (prompt lookup)")
    .option("--draft-tokens <k>", "tokens the draft proposes per step", parseIntOpt("draft-tokens", 1, 64), 4);
  kvCacheOption(weightsOption(generateCmd))
    .action(async ({ draft: draftPath, draftTokens, ...o }: { ckpt: string; domain?: string; prompt: string; maxTokens: number; temperature: number; topK: number; topP: number; seed: number; stop?: string[]; showSpecial?: boolean; weights?: WeightFormat; kvCache?: KVFormat; draft?: string; draftTokens: number }) => {
      const model = await openModel(o.ckpt, openOptions(o, true));
      const draft = draftPath === undefined ? undefined : draftPath === "ngram" ? ("ngram" as const) : await openModel(draftPath, openOptions(o, true));
      const draftStats = newSpeculativeStats();
      const spec = draft === undefined ? {} : { draft, draftTokens, draftStats };
      const t0 = performance.now();
      let n = 0;
      // The prompt is echoed once the first piece arrives: a refused option (a bad domain or stop string) prints nothing else.
      let echoed = false;
      for await (const piece of model.generate(o.prompt, { ...o, ...spec, ...(o.domain !== undefined ? { domain: o.domain } : {}), stop: o.stop ?? [], showSpecial: !!o.showSpecial })) {
        if (!echoed) streamOut(o.prompt);
        echoed = true;
        streamOut(piece.text);
        if (piece.id >= 0) n++;
      }
      streamOut(`${echoed ? "" : o.prompt}\n`);
      const s = (performance.now() - t0) / 1000;
      console.error(`${n} tokens in ${s.toFixed(2)} s (${(n / s).toFixed(1)} tokens/s)`);
      if (draft !== undefined) {
        const rate = draftStats.proposed ? ((100 * draftStats.accepted) / draftStats.proposed).toFixed(0) : "–";
        console.error(`draft: ${draftStats.accepted} of ${draftStats.proposed} proposed tokens accepted (${rate}%), ${draftStats.steps} verification steps`);
      }
    });
}
