/**
 * `finetune(options)`: supervised fine-tuning of a trained model on chat or
 * instruction records, as a library call — the function `sigma finetune` is a
 * thin shell over (docs/finetune.md).
 *
 * The records are rendered with the chat template `sigma serve` uses and the
 * loss covers only the assistant's tokens (src/train/finetune-data.ts); what
 * trains is chosen by `freeze` and `lora` (src/train/finetune.ts). The run
 * folder is laid out as `sigma train`'s (checkpoints/, metrics.jsonl) and is
 * guarded the same way: a fresh run never replaces another unless asked
 * (`overwrite`), and `resume` continues one exactly.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { storedFormat } from "../models/quantize.js";
import { openModelSource } from "../serve/open.js";
import { diffFields } from "../train/checkpoint.js";
import { readRecords } from "../train/finetune-data.js";
import { FinetuneConfigSchema, FinetuneTrainer, openFinetuneCheckpoint, runFinetune, sha256File, type FinetuneConfig, type FinetuneStep, type Freeze } from "../train/finetune.js";
import { prepareRunFolder, runPaths } from "../train/run.js";
import { Tokenizer } from "../tokenizer/codec.js";
import { toHfJson } from "../tokenizer/hfjson.js";
import { SigmaError } from "../util/errors.js";
import { ensureWritableDir } from "../util/fs.js";
import { parseWithSchema } from "../util/json.js";
import { Model } from "./model.js";

export interface FinetuneOptions {
  /** The model to fine-tune: a path any command opens (a run folder, a checkpoint, a model file), or an opened Model (trained in place). Not needed with `resume`. */
  ckpt?: string | Model;
  /** JSONL records: {"messages": [...]} or {"prompt", "completion"}. */
  data: string;
  /** The run folder: checkpoints/, metrics.jsonl. */
  out: string;
  /** Optimizer steps (default: one epoch, ⌈records / (batchSize · accumSteps)⌉). */
  steps?: number;
  /** Peak learning rate (default 1e-4). */
  lr?: number;
  /** Final learning rate of the cosine decay (default lr / 10). */
  minLr?: number;
  /** Linear warm-up steps (default: a tenth of the steps). */
  warmupSteps?: number;
  /** Records per micro-batch (default 8) and micro-batches per step (default 1). */
  batchSize?: number;
  accumSteps?: number;
  /** Which part stays fixed (default "none"). */
  freeze?: Freeze;
  /** LoRA rank for the dense part's linear layers (default: none). */
  lora?: number | null;
  /** Domain of records that name none (default: the model's first). */
  domain?: string;
  /** Seed of the record order and the adapters' init (default 1). */
  seed?: number;
  /** Weight decay (default 0) and the gradient-norm clip (default 1; null = none). */
  weightDecay?: number;
  clip?: number | null;
  /** Checkpoint every N steps (default 0: only at the end); keep the newest K (default 2). */
  checkpointEvery?: number;
  keep?: number;
  /** Continue the run in `out` (true: its newest checkpoint), or from this checkpoint folder. */
  resume?: boolean | string;
  /** Replace the run `out` already holds. */
  overwrite?: boolean;
  signal?: AbortSignal;
  onProgress?: (event: FinetuneEvent) => void;
  log?: (line: string) => void;
  /** @internal How errors name the options (the CLI passes its flags). */
  names?: { out?: string };
  /** @internal Stop once this step is reached (tests of interrupted runs). */
  stopAtStep?: number;
}

export type FinetuneEvent =
  | { kind: "start"; step: number; steps: number; records: number; trainable: number; total: number; resumedFrom: string | null }
  | ({ kind: "step"; steps: number } & FinetuneStep)
  | { kind: "checkpoint"; step: number; path: string };

export interface FinetuneResult {
  stopped: "done" | "aborted" | "stopAtStep";
  steps: number;
  /** Target (assistant) tokens trained on, and seconds spent, over the whole run. */
  tokens: number;
  seconds: number;
  /** The newest checkpoint: a model folder every command opens (the fine-tuned, merged weights). */
  checkpoint: string;
  metrics: string;
  /** The last step's loss (null when no step ran in this call). */
  loss: number | null;
  records: number;
  /** Parameters updated, and all of the model's. */
  trainable: number;
  total: number;
  config: FinetuneConfig;
}

/** Options a resumed run may change: the rest must be what the checkpoint was made with. */
const MAY_CHANGE = new Set(["steps", "out", "checkpointEvery", "keep"]);

export async function finetune(o: FinetuneOptions): Promise<FinetuneResult> {
  const outFlag = o.names?.out ?? "out";
  if (o.resume && o.overwrite) throw new SigmaError("--resume and --overwrite exclude each other", "--resume continues the run in --out; --overwrite replaces it with a new one");
  ensureWritableDir(o.out, outFlag);
  const bytes = readRecordsBytes(o.data);
  const records = readRecords(o.data);
  const digest = sha256File(bytes);

  let config: FinetuneConfig;
  let trainer: FinetuneTrainer;
  let resumedFrom: string | null = null;
  if (o.resume) {
    resumedFrom = o.resume === true ? runPaths(o.out).checkpoints : o.resume;
    const { folder, state } = openFinetuneCheckpoint(resumedFrom);
    if (state.config.recordsSha256 !== digest) throw new SigmaError(`${o.data} is not the file the checkpoint ${folder.path} was fine-tuned on (its sha256 differs)`, "resume with the same --data, or start a new run (another --out)");
    const given = explicitConfig(o);
    const changed = diffFields(pick(state.config, Object.keys(given)), given).filter((d) => !MAY_CHANGE.has(d.split(":")[0]!.split(".")[0]!));
    if (changed.length) throw new SigmaError(`the checkpoint ${folder.path} was made with other settings:\n  ${changed.join("\n  ")}`, "resume with the checkpoint's settings (or leave those options out), or start a new run (another --out)");
    config = parseWithSchema(FinetuneConfigSchema, { ...state.config, records: resolve(o.data), out: o.out, ...pickMayChange(given) }, "fine-tuning options", "fix the options named above");
    prepareRunFolder({ out: config.out }, null, { resume: true, flag: outFlag });
    const src = openModelSource(folder.path);
    trainer = new FinetuneTrainer(config, baseOf(Model.fromSource(src), src.path), records);
    try {
      trainer.restore(folder, state);
    } catch (e) {
      trainer.release();
      throw e;
    }
  } else {
    if (o.ckpt === undefined) throw new SigmaError("no model to fine-tune", "pass --ckpt with a checkpoint folder, a run folder or a model file");
    const m = typeof o.ckpt === "string" ? Model.fromSource(openModelSource(o.ckpt)) : o.ckpt;
    const B = o.batchSize ?? 8;
    const accum = o.accumSteps ?? 1;
    const steps = o.steps ?? Math.max(1, Math.ceil(records.length / (B * accum)));
    const lr = o.lr ?? 1e-4;
    config = parseWithSchema(
      FinetuneConfigSchema,
      {
        records: resolve(o.data),
        recordsSha256: digest,
        base: m.path ?? "(in memory)",
        domain: o.domain ?? m.domains[0]!,
        steps,
        batchSize: B,
        accumSteps: accum,
        lr,
        minLr: o.minLr ?? lr / 10,
        warmupSteps: o.warmupSteps ?? Math.floor(steps / 10),
        decay: "cosine",
        weightDecay: o.weightDecay ?? 0,
        clip: o.clip === undefined ? 1 : o.clip,
        freeze: o.freeze ?? "none",
        lora: o.lora ?? null,
        seed: o.seed ?? 1,
        checkpointEvery: o.checkpointEvery ?? 0,
        keep: o.keep ?? 2,
        out: o.out,
      },
      "fine-tuning options",
      "fix the options named above",
    );
    // Everything is checked (records, domains, lengths, freeze) before the folder is touched.
    trainer = new FinetuneTrainer(config, baseOf(m, m.path), records);
    try {
      prepareRunFolder({ out: config.out }, null, { overwrite: !!o.overwrite, flag: outFlag, ...(o.log ? { log: o.log } : {}) });
    } catch (e) {
      trainer.release();
      throw e;
    }
  }
  const emit = o.onProgress ?? (() => {});
  const total = trainer.model.parameterCount();
  emit({ kind: "start", step: trainer.step, steps: config.steps, records: records.length, trainable: trainer.trainableParameters, total, resumedFrom });
  let r: Awaited<ReturnType<typeof runFinetune>>;
  try {
    r = await runFinetune(trainer, resumedFrom !== null, {
      onStep: (s) => emit({ kind: "step", steps: config.steps, ...s }),
      onCheckpoint: (path) => emit({ kind: "checkpoint", step: trainer.step, path }),
      shouldStop: () => o.signal?.aborted === true,
      ...(o.stopAtStep !== undefined ? { stopAtStep: o.stopAtStep } : {}),
    });
  } finally {
    trainer.release();
  }
  return { stopped: r.stopped, steps: trainer.step, tokens: trainer.tokens, seconds: trainer.seconds, checkpoint: r.checkpoint, metrics: r.metrics, loss: r.lastLoss, records: records.length, trainable: trainer.trainableParameters, total, config };
}

function readRecordsBytes(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new SigmaError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "pass --data with a JSONL file of chat or prompt/completion records");
  }
}

/** The base model as the trainer takes it: an f32 network with its tokenizer. */
function baseOf(m: Model, path: string | null) {
  const where = path ?? "the model";
  if (!m.tokenizer) throw new SigmaError(`${where} has no tokenizer, so its records cannot be tokenized`, "fine-tune a checkpoint that carries its tokenizer.json");
  if (!(m.tokenizer instanceof Tokenizer)) throw new SigmaError(`${where} carries a Hugging Face tokenizer; fine-tuning renders records with Sigma's chat template and padding token, which need a Sigma tokenizer`, "fine-tune a model trained with a Sigma tokenizer");
  if (storedFormat(m.network) !== null || [...m.network.namedParameters().values()].some((p) => !(p.tensor.data instanceof Float32Array))) {
    throw new SigmaError(`${where} holds converted (quantized) weights, which cannot be trained`, "fine-tune the f32 checkpoint it was made from");
  }
  return { network: m.network, tokenizer: m.tokenizer, tokenizerText: m.tokenizerText ?? toHfJson(m.tokenizer), dataDir: m.dataDir };
}

/** The config fields the caller set explicitly (to compare with a checkpoint's). */
function explicitConfig(o: FinetuneOptions): Record<string, unknown> {
  const keys = ["steps", "lr", "minLr", "warmupSteps", "batchSize", "accumSteps", "freeze", "lora", "domain", "seed", "weightDecay", "clip", "checkpointEvery", "keep"] as const;
  return Object.fromEntries(keys.filter((k) => o[k] !== undefined).map((k) => [k, o[k]]));
}

const pick = (c: Record<string, unknown>, keys: string[]): Record<string, unknown> => Object.fromEntries(keys.map((k) => [k, c[k]]));
const pickMayChange = (g: Record<string, unknown>): Record<string, unknown> => Object.fromEntries(Object.entries(g).filter(([k]) => MAY_CHANGE.has(k)));
