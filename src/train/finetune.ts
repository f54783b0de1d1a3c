/**
 * Fine-tuning a trained model on chat / instruction records: the run's
 * config, its trainer (one optimizer step over `accumSteps` micro-batches of
 * rendered records, the loss on the assistant's tokens only), its
 * checkpoints and its loop.
 *
 * What trains (`freeze`, `lora`):
 *   - freeze "none": every parameter; "experts": everything but the experts
 *     (routers' gates included); "dense": the experts only.
 *   - lora r: the dense part's linear weights train through rank-r adapters
 *     (src/train/lora.ts); the rest of the dense part (embeddings, norms,
 *     biases) is frozen; the experts train unless freeze is "experts".
 *
 * Data order: record permutations per epoch drawn from (seed, epoch), and
 * micro-batch k of the run takes rows k·B … k·B + B − 1 of that sequence. The
 * order is thus a function of the step alone, and with the weights, the
 * optimizer's moments and step in the checkpoint a resumed run continues bit
 * for bit, as `sigma train` does. Rows are padded to the longest in their
 * micro-batch with <|pad|>, which is never a target.
 *
 * Checkpoints use the training checkpoints' folder machinery
 * (src/checkpoint/folder.ts: all-or-nothing, every file hashed) and files:
 *
 *   step-NNNNNNNN/
 *     model.safetensors      the fine-tuned model (with LoRA: merged), opened by every command
 *     optimizer.safetensors  AdamW moments of the trained parameters, the optimizer step
 *     tokenizer.json         the base model's tokenizer
 *     lora.safetensors       with --lora: base weights W0 and adapters A, B (resuming needs them)
 *     state.json             format "sigma-finetune", the config, step, tokens, seconds
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { z } from "zod";
import { backward, zeroGrad } from "../autograd/tape.js";
import { decodeSafetensors, encodeSafetensors, type StArray } from "../checkpoint/safetensors.js";
import { FilesSchema, openCheckpointFolder, pruneCheckpoints, saveCheckpointFolder, StepSchema, type LoadedFolder } from "../checkpoint/folder.js";
import { encodeModel } from "../models/io.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import type { ParamInfo } from "../nn/module.js";
import * as ops from "../ops/index.js";
import { AdamW, clipScale, gradSquares } from "../optim/adamw.js";
import type { Tokenizer } from "../tokenizer/codec.js";
import { sha256Hex } from "../tokenizer/hfjson.js";
import { SigmaError } from "../util/errors.js";
import { finiteField, intField, parseWithSchema, seedField } from "../util/json.js";
import { Rng } from "../util/rng.js";
import { optimizerStep } from "./checkpoint.js";
import { maskedTargets, renderRecord, type ChatRecord, type RenderedRecord } from "./finetune-data.js";
import { LoraAdapters } from "./lora.js";
import { MetricsLog } from "./metrics.js";
import { learningRate, type Schedule } from "./schedule.js";

export const FINETUNE_FORMAT = "sigma-finetune";
export const FREEZE = ["none", "experts", "dense"] as const;
export type Freeze = (typeof FREEZE)[number];

export const FinetuneConfigSchema = z
  .object({
    /** The fine-tuning records (JSONL) and their sha256: a resumed run must see the same file. */
    records: z.string().min(1).max(4096),
    recordsSha256: z.string().regex(/^[0-9a-f]{64}$/),
    /** The model fine-tuned from (for the record). */
    base: z.string().min(1).max(4096),
    /** Domain of records that name none. */
    domain: z.string().min(1).max(256),
    steps: intField(1, 1e9),
    batchSize: intField(1, 2 ** 16),
    accumSteps: intField(1, 2 ** 12),
    /** Peak learning rate [ours: 1e-4, a tenth of a pre-training rate, as is usual for fine-tuning]. */
    lr: finiteField().positive(),
    minLr: finiteField().min(0),
    warmupSteps: intField(0, 1e9),
    decay: z.enum(["cosine", "linear", "constant"]),
    weightDecay: finiteField().min(0),
    clip: finiteField().positive().nullable(),
    freeze: z.enum(FREEZE),
    /** LoRA rank, or null for none. */
    lora: intField(1, 4096).nullable(),
    seed: seedField(),
    /** Checkpoint every N steps (0 = only at the end); keep the newest K. */
    checkpointEvery: intField(0, 1e9),
    keep: intField(1, 1e6),
    out: z.string().min(1).max(4096),
  })
  .strict();
export type FinetuneConfig = z.infer<typeof FinetuneConfigSchema>;

const FinetuneStateSchema = z
  .object({
    files: FilesSchema,
    format: z.literal(FINETUNE_FORMAT),
    version: z.literal(1),
    step: StepSchema,
    tokens: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    seconds: z.number().finite().min(0),
    config: z.unknown(),
  })
  .passthrough();

/** A fine-tuning checkpoint's state.json, validated; `folder` is an opened checkpoint folder. */
export function readFinetuneState(folder: LoadedFolder): { step: number; tokens: number; seconds: number; config: FinetuneConfig } {
  const raw = folder.state as Record<string, unknown>;
  if (raw.format !== FINETUNE_FORMAT) throw new SigmaError(`${folder.path} is not a fine-tuning checkpoint (format ${JSON.stringify(raw.format) ?? "missing"})`, "--resume takes a checkpoint written by `sigma finetune` (or its --out folder)");
  const s = parseWithSchema(FinetuneStateSchema, raw, `${folder.path}/state.json`, "the checkpoint is damaged or was edited; use an earlier one");
  return { step: s.step, tokens: s.tokens, seconds: s.seconds, config: parseWithSchema(FinetuneConfigSchema, s.config, `${folder.path}/state.json (config)`, "the checkpoint is damaged or was edited; use an earlier one") };
}

export const sha256File = (bytes: Uint8Array): string => createHash("sha256").update(bytes).digest("hex");

export interface FinetuneStep {
  step: number;
  /** Mean cross-entropy over the step's target (assistant) tokens, plus the routers' auxiliary losses. */
  loss: number;
  lm: number;
  lr: number;
  gradNorm: number;
  /** Target tokens (loss positions) in the step. */
  tokens: number;
  seconds: number;
}

/** A micro-batch: B rows of T tokens, the masked targets and each row's domain. */
export interface FinetuneBatch {
  x: Int32Array;
  y: Int32Array;
  domains: Int32Array;
  B: number;
  T: number;
}

/** The base model a run starts from, as src/api hands it over. */
export interface FinetuneBase {
  network: PanguSigma;
  tokenizer: Tokenizer;
  tokenizerText: string;
  /** The data folder the base model was trained on (recorded so that `sigma eval` finds it), or null. */
  dataDir: string | null;
}

export class FinetuneTrainer {
  readonly model: PanguSigma;
  readonly rows: RenderedRecord[];
  readonly optimizer: AdamW;
  readonly lora: LoraAdapters | null;
  readonly trainable: Map<string, ParamInfo>;
  readonly schedule: Schedule;
  step = 0;
  tokens = 0;
  seconds = 0;
  private readonly perms = new Map<number, Int32Array>();
  private readonly wasTraining: boolean;

  constructor(readonly config: FinetuneConfig, readonly base: FinetuneBase, records: ChatRecord[]) {
    const c = config;
    this.model = base.network;
    const names = this.model.config.domains.map((d) => d.name);
    if (!names.includes(c.domain)) throw new SigmaError(`the model has no domain "${c.domain}"; it knows ${names.join(", ")}`, "pass one of them with --domain");
    const maxTokens = this.model.config.seqLen + 1;
    this.rows = records.map((r) => {
      const name = r.domain ?? c.domain;
      const d = names.indexOf(name);
      if (d < 0) throw new SigmaError(`${c.records} line ${r.line}: "domain" is "${name}", which the model does not have (it knows ${names.join(", ")})`, "fix the record's domain, or leave it out to use --domain");
      return renderRecord(base.tokenizer, r, name, d, maxTokens, c.records);
    });
    if (c.lora !== null && c.freeze === "dense") throw new SigmaError("--lora trains the dense part through adapters, but --freeze dense freezes it", "drop one of the two (--lora already freezes the dense part's own weights)");
    // What trains: see the file comment.
    this.lora = c.lora !== null ? new LoraAdapters(this.model, c.lora, c.seed) : null;
    const adapted = new Set(this.lora?.layers.map((l) => l.weight) ?? []);
    this.trainable = new Map();
    const trains = (p: ParamInfo): boolean => (p.group === "expert" ? c.freeze !== "experts" : c.freeze !== "dense" && this.lora === null);
    for (const [name, p] of this.model.namedParameters()) if (trains(p)) this.trainable.set(name, p);
    for (const [name, p] of this.lora?.parameters() ?? []) this.trainable.set(name, p);
    if (this.trainable.size === 0) throw new SigmaError(`nothing to train: --freeze ${c.freeze} leaves no parameter of this model trainable`, this.model.config.sparseLayers === 0 ? "a dense model has no experts: use --freeze none or experts" : "use another --freeze");
    const wd = c.weightDecay;
    this.optimizer = new AdamW(this.trainable, { dense: { weightDecay: wd }, expert: { weightDecay: wd } });
    this.schedule = { lr: c.lr, minLr: Math.min(c.minLr, c.lr), warmupSteps: c.warmupSteps, decaySteps: c.steps, decay: c.decay };
    // A frozen parameter needs no gradient, except an adapted weight: its gradient is the adapters' (release() undoes this).
    for (const p of this.model.namedParameters().values()) p.tensor.requiresGrad = trains(p) || adapted.has(p.tensor);
    for (const p of this.lora?.parameters().values() ?? []) p.tensor.requiresGrad = true;
    this.wasTraining = this.model.training;
    this.model.train(true);
  }

  /**
   * Gives the model back as the caller handed it over: every parameter
   * requires a gradient again (a later training run would otherwise leave
   * the ones frozen here untouched), in the training mode it had.
   */
  release(): void {
    for (const p of this.model.parameters()) p.requiresGrad = true;
    this.model.train(this.wasTraining);
  }

  /** Parameters the run updates (LoRA: the adapters' and the experts' when they train). */
  get trainableParameters(): number {
    let n = 0;
    for (const p of this.trainable.values()) n += p.tensor.size;
    return n;
  }

  /** The record order of an epoch: a permutation drawn from (seed, epoch). */
  private perm(epoch: number): Int32Array {
    let p = this.perms.get(epoch);
    if (!p) {
      const rng = new Rng((Math.imul(this.config.seed, 0x9e3779b1) ^ Math.imul(epoch + 1, 0x85ebca6b)) >>> 0);
      p = Int32Array.from({ length: this.rows.length }, (_, i) => i);
      for (let i = p.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [p[i], p[j]] = [p[j]!, p[i]!];
      }
      if (this.perms.size > 4) this.perms.clear();
      this.perms.set(epoch, p);
    }
    return p;
  }

  /** Micro-batch `micro` of the run (step · accumSteps + a): the next B records in the epochs' order, padded. */
  batch(micro: number): FinetuneBatch {
    const B = this.config.batchSize;
    const N = this.rows.length;
    const picked: RenderedRecord[] = [];
    for (let i = 0; i < B; i++) {
      const g = micro * B + i;
      picked.push(this.rows[this.perm(Math.floor(g / N))[g % N]!]!);
    }
    const T = Math.max(...picked.map((r) => r.ids.length - 1));
    const x = new Int32Array(B * T).fill(this.base.tokenizer.padId);
    const y = new Int32Array(B * T).fill(-1);
    picked.forEach((r, b) => {
      x.set(r.ids.subarray(0, r.ids.length - 1), b * T);
      y.set(maskedTargets(r.ids, r.mask), b * T);
    });
    return { x, y, domains: Int32Array.from(picked, (r) => r.domain), B, T };
  }

  /** One optimizer step over accumSteps micro-batches. */
  trainStep(): FinetuneStep {
    const t0 = performance.now();
    const c = this.config;
    const n = c.accumSteps;
    zeroGrad([...this.model.parameters(), ...[...this.trainable.values()].map((p) => p.tensor)]);
    let loss = 0;
    let lm = 0;
    let tokens = 0;
    for (let a = 0; a < n; a++) {
      const b = this.batch(this.step * n + a);
      // Dropout masks from (seed, step, micro-batch), as the trainer draws them: a resumed run draws the same.
      const dropoutSeed = (Math.imul(this.step + 1, 0x9e3779b1) ^ Math.imul(a + 1, 0x85ebca6b) ^ c.seed) >>> 0;
      const r = this.model.loss({ tokens: b.x, domains: b.domains, B: b.B, T: b.T, dropoutSeed }, b.y);
      backward(n > 1 ? ops.scale(r.loss, 1 / n) : r.loss, undefined, { freeActivations: true });
      loss += r.loss.item();
      lm += r.lm.item();
      for (const t of b.y) if (t >= 0) tokens++;
    }
    this.lora?.collectGrads();
    const trained = [...this.trainable.values()].map((p) => p.tensor);
    const gradNorm = Math.sqrt(gradSquares(trained));
    const lr = learningRate(this.schedule, this.step);
    this.optimizer.update(lr, undefined, clipScale(gradNorm, c.clip ?? Infinity));
    // The adapted weights hold W0 + s·BA again, with the new adapters.
    this.lora?.apply();
    this.step++;
    this.tokens += tokens;
    const seconds = (performance.now() - t0) / 1000;
    this.seconds += seconds;
    return { step: this.step, loss: loss / n, lm: lm / n, lr, gradNorm, tokens, seconds };
  }

  /** Saves the run's complete state under `dir` (keeping the newest config.keep); returns the folder. */
  save(dir: string): string {
    const moments = new Map<string, { shape: number[]; data: StArray }>();
    for (const [name, { m, v }] of this.optimizer.moments()) {
      moments.set(`m.${name}`, { shape: [...m.shape], data: m.data });
      moments.set(`v.${name}`, { shape: [...v.shape], data: v.data });
    }
    const files = new Map<string, Uint8Array | string>([
      ["model.safetensors", encodeModel(this.model)],
      ["optimizer.safetensors", encodeSafetensors(moments, { format: "sigma-adamw", step: String(this.optimizer.step) })],
      ["tokenizer.json", this.base.tokenizerText],
    ]);
    if (this.lora) files.set("lora.safetensors", encodeSafetensors(this.lora.tensors(), { format: "sigma-lora", rank: String(this.lora.rank), scale: String(this.lora.scale) }));
    const state = {
      format: FINETUNE_FORMAT,
      version: 1,
      tokens: this.tokens,
      seconds: this.seconds,
      config: this.config,
      tokenizer: { sha256: sha256Hex(this.base.tokenizerText), vocabSize: this.model.config.vocabSize },
      from: this.config.base,
      ...(this.base.dataDir ? { dataDir: this.base.dataDir } : {}),
    };
    const path = saveCheckpointFolder(dir, this.step, files, state);
    pruneCheckpoints(dir, this.config.keep);
    return path;
  }

  /** Restores the optimizer, adapters and counters from a checkpoint this run's config wrote (the weights are already in the model). */
  restore(folder: LoadedFolder, s: { step: number; tokens: number; seconds: number }): void {
    const optPath = join(folder.path, "optimizer.safetensors");
    const opt = decodeSafetensors(folder.read("optimizer.safetensors"), optPath);
    for (const [name, { m, v }] of this.optimizer.moments()) {
      for (const [key, dst] of [[`m.${name}`, m], [`v.${name}`, v]] as const) {
        const src = opt.tensors.get(key);
        if (!src || src.data.length !== dst.size || src.dtype !== "F32") throw new SigmaError(`${optPath}: moment "${key}" is missing or has the wrong size`, "the checkpoint does not match its config; use an earlier one");
        dst.data.set(src.data);
      }
    }
    this.optimizer.step = optimizerStep(opt.metadata, optPath);
    if (this.lora) {
      const path = join(folder.path, "lora.safetensors");
      const lora = decodeSafetensors(folder.read("lora.safetensors"), path);
      const bad = this.lora.restore((n) => lora.tensors.get(n));
      if (bad) throw new SigmaError(`${path}: "${bad}" is missing or has the wrong size`, "the checkpoint is damaged; use an earlier one");
    }
    this.step = s.step;
    this.tokens = s.tokens;
    this.seconds = s.seconds;
  }
}

/** Opens a fine-tuning checkpoint (a step folder, or a folder of them: the newest) and reads its state. */
export function openFinetuneCheckpoint(path: string): { folder: LoadedFolder; state: ReturnType<typeof readFinetuneState> } {
  const folder = openCheckpointFolder(path);
  return { folder, state: readFinetuneState(folder) };
}

export interface FinetuneLoopHooks {
  onStep?(r: FinetuneStep): void;
  onCheckpoint?(path: string): void;
  shouldStop?(): boolean;
  /** @internal Stop once this step is reached (tests of interrupted runs). */
  stopAtStep?: number;
}

/** Steps to config.steps, logging metrics.jsonl and writing checkpoints; returns why it stopped and the last checkpoint. */
export async function runFinetune(t: FinetuneTrainer, resumed: boolean, hooks: FinetuneLoopHooks = {}): Promise<{ stopped: "done" | "aborted" | "stopAtStep"; checkpoint: string; metrics: string; lastLoss: number | null }> {
  const c = t.config;
  const metrics = join(c.out, "metrics.jsonl");
  const dir = join(c.out, "checkpoints");
  const log = new MetricsLog(metrics, resumed ? t.step : null);
  let stopped: "done" | "aborted" | "stopAtStep" = "done";
  let checkpoint = "";
  let savedAt = -1;
  let lastLoss: number | null = null;
  const save = (): void => {
    checkpoint = t.save(dir);
    savedAt = t.step;
    log.append({ kind: "checkpoint", step: t.step, path: checkpoint });
    hooks.onCheckpoint?.(checkpoint);
  };
  while (t.step < c.steps) {
    if (hooks.stopAtStep !== undefined && t.step >= hooks.stopAtStep) {
      stopped = "stopAtStep";
      break;
    }
    if (hooks.shouldStop?.()) {
      stopped = "aborted";
      break;
    }
    const r = t.trainStep();
    if (!Number.isFinite(r.loss)) throw new SigmaError(`fine-tuning diverged at step ${r.step}: the loss is ${r.loss} (learning rate ${r.lr.toPrecision(3)}, gradient norm ${r.gradNorm})`, "lower --lr, then start again or --resume from an earlier checkpoint");
    lastLoss = r.loss;
    log.append({ kind: "train", ...r, tokensSeen: t.tokens, elapsed: t.seconds });
    hooks.onStep?.(r);
    if (c.checkpointEvery > 0 && r.step % c.checkpointEvery === 0) save();
    await new Promise((res) => setImmediate(res));
  }
  if (savedAt !== t.step) save();
  log.append({ kind: "end", step: t.step, stopped });
  return { stopped, checkpoint, metrics, lastLoss };
}
