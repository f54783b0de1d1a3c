/**
 * The training config (`sigma train --config run.json`): a strict zod schema
 * — unknown keys are errors naming the key — whose defaults each say why.
 * The model section is the model config itself (src/models/config.ts).
 */
import { z } from "zod";
import { expertsPerToken, MAX_TENSOR_ELEMENTS, ModelConfigSchema, sharedWidth, type ModelConfig } from "../models/config.js";
import { SigmaError } from "../util/errors.js";
import { readCapped } from "../util/read.js";
import { jsonErrorText, parseJsonStrict } from "../util/strict-json.js";
import { finiteField, intField, parseWithSchema, seedField } from "../util/json.js";
import { windowTokens, type Manifest } from "../data/manifest.js";
import { PRECISIONS } from "../backend/backend.js";

/**
 * Upper bounds of the run's counts: generous but finite, so that a typo
 * (1e9 sequences per batch) is an error naming the field, never a hang or
 * an allocation that takes the machine down. Products (a micro-batch's
 * largest tensor, the tokens of the whole run) are checked across fields.
 */
export const TRAIN_LIMITS = {
  batchSize: 2 ** 16,
  /** Micro-batches per optimizer step: 4,096 × a micro-batch is a very large batch already; more is one step that never ends. */
  accumSteps: 2 ** 12,
  /** Steps, step intervals (eval, checkpoint, log) and schedule lengths. */
  steps: 1e9,
  evalBatches: 1e6,
  keep: 1e6,
  /** maxSeconds: about 31 years. */
  seconds: 1e9,
} as const;

/** A section of the config whose fields all have defaults: strict, and left out = `{}`. */
const section = <S extends z.ZodRawShape>(shape: S) => z.object(shape).strict().default({} as z.input<z.ZodObject<S>>);

/** A periodic action: `every` N steps (and always at the end; 0 = only at the end), plus its own fields. */
const periodic = <S extends z.ZodRawShape>(every: number, shape: S) => section({ every: intField(0, TRAIN_LIMITS.steps).default(every), ...shape });

export const OptimSchema = z
  .object({
    /** Peak learning rate, reached at the end of the warm-up. */
    lr: finiteField().positive().default(3e-4),
    /** Final learning rate after the decay (PanGu-Σ decays to 2e-5). */
    minLr: finiteField().min(0).default(2e-5),
    /** Linear warm-up steps (PanGu-Σ: 5,000 of 180,000; scale it to the run). */
    warmupSteps: intField(0, TRAIN_LIMITS.steps).default(100),
    /** Steps over which the rate decays to minLr; null = the whole run (`steps`). */
    decaySteps: intField(1, TRAIN_LIMITS.steps).nullable().default(null),
    /** Shape of the decay; cosine as in GPT-3 / nanoGPT. */
    decay: z.enum(["cosine", "linear", "constant"]).default("cosine"),
    /** PanGu-Σ's hybrid Adam (docs/design.md §7.1): β shared, ε per group. */
    beta1: finiteField().min(0).max(1).default(0.8),
    beta2: finiteField().min(0).max(1).default(0.95),
    denseEps: finiteField().positive().default(1e-8),
    /** Expert gradients are smaller (each expert sees a fraction of the tokens), hence the tiny ε. */
    expertEps: finiteField().positive().default(1e-20),
    weightDecay: finiteField().min(0).default(0.1),
    /** Global gradient-norm clip; null turns clipping off. 1.0 as in GPT-3. */
    clip: finiteField().positive().nullable().default(1.0),
    /**
     * ECSS's sparse expert rule in RAM: update only the experts a step routed
     * tokens to, each with its own step count (src/optim/sparse.ts). Off by
     * default: ordinary AdamW moves every expert every step. A run with the
     * expert store always uses the sparse rule.
     */
    sparseExperts: z.boolean().default(false),
  })
  .strict();

export const TrainConfigSchema = z
  .object({
    /** A name for the run (shown in logs and plots). */
    name: z.string().min(1).max(1024).default("run"),
    model: ModelConfigSchema,
    data: section({
      /** A folder written by `sigma data prepare`. */
      dir: z.string().min(1).max(4096).default(".sigma/data/default"),
      /** Mixing weight per domain name; default: each domain's share of the training tokens. */
      weights: z.record(z.string(), finiteField().min(0)).optional(),
    }),
    /** Sequences per micro-batch B; the sequence length is model.seqLen. */
    batchSize: intField(1, TRAIN_LIMITS.batchSize).default(8),
    /** Micro-batches whose gradients add up to one optimizer step. */
    accumSteps: intField(1, TRAIN_LIMITS.accumSteps).default(1),
    /** Optimizer steps of the whole run (the schedule is laid out over them). */
    steps: intField(1, TRAIN_LIMITS.steps),
    /** Stop early (with a checkpoint) after this much wall time; null = no limit. */
    maxSeconds: finiteField().positive().max(TRAIN_LIMITS.seconds).nullable().default(null),
    optim: OptimSchema.default({}),
    /** Evaluate every 100 steps (and at the end). */
    eval: periodic(100, {
      /** Validation batches per domain; the same batches every time, so curves compare. */
      batches: intField(1, TRAIN_LIMITS.evalBatches).default(4),
    }),
    /** Save only at the end unless `every` is set. */
    checkpoint: periodic(0, {
      /** Keep the last K checkpoints. */
      keep: intField(1, TRAIN_LIMITS.keep).default(2),
    }),
    /**
     * Devices the routing statistics place the experts on (E/D each,
     * contiguously) to compute each step's per-device loads and imbalance
     * score IS. The same placement for every router, so that runs with
     * different routers compare; null = the largest divisor of
     * experts.count that is at most 8 (one node) [ours].
     */
    routingDevices: intField(1, 2 ** 16).nullable().default(null),
    /** Log a training line (metrics.jsonl) every N steps. */
    logEvery: intField(1, TRAIN_LIMITS.steps).default(1),
    /**
     * ECSS (docs/design.md §8): keep the experts and their Adam moments in a
     * file-backed expert store, with only a bounded set resident in RAM.
     */
    store: section({
      enabled: z.boolean().default(false),
      /** The store file; null = <out>/experts.sgxs. */
      path: z.string().min(1).max(4096).nullable().default(null),
      /** Byte budget of resident experts (parameters + moments), e.g. "2GiB". */
      memory: z.string().max(64).default("2GiB"),
      /** RRE: read the next step's experts in a worker thread while this step computes. */
      prefetch: z.boolean().default(true),
    }),
    /**
     * How the ranks of an MPI launch share the work (docs/distributed.md):
     * `data` ranks each take a slice of every batch, `expert` ranks split each
     * sparse layer's experts; data · expert must equal the ranks launched.
     * data null = all ranks over expert. Ignored by a one-process run.
     */
    parallel: section({
      data: intField(1, 2 ** 20).nullable().default(null),
      expert: intField(1, 2 ** 20).default(1),
    }),
    /**
     * Distillation (docs/decode.md, "Drafts distilled from the target"): the
     * model also learns a teacher's next-token distributions on the same
     * batches — how a draft for speculative decoding is made to agree with its
     * target. The loss is (1 − weight)·CE(data) + weight·T²·CE(softmax(teacher
     * logits / T), model logits / T), plus the routers' losses. One process,
     * experts in RAM.
     */
    distill: section({
      /** The teacher: any model path `sigma generate --ckpt` takes, with this run's vocabulary and domain names; null = no distillation. */
      teacher: z.string().min(1).max(4096).nullable().default(null),
      /** The teacher's share of the loss, 0 … 1. */
      weight: finiteField().min(0).max(1).default(0.9),
      /** T: both distributions are softened by it (and the term scaled by T² so its gradients keep their size). */
      temperature: finiteField().min(0.05).max(100).default(1),
    }),
    /** Recompute each block's activations in the backward pass instead of keeping them: less memory, ~⅓ more compute. */
    recompute: z.boolean().default(false),
    /**
     * "bf16": mixed precision — the linear layers' and experts' matrix products
     * (forward and backward) take bf16-rounded inputs and sum in f32, with
     * AVX512_BF16 where the CPU has it; weights, gradients, optimizer state,
     * attention, norms, softmax and the loss stay f32, and so do checkpoints
     * (docs/training.md, section Precision). "f32": everything in f32.
     */
    precision: z.enum(PRECISIONS, { errorMap: () => ({ message: `must be one of ${PRECISIONS.map((p) => `"${p}"`).join(", ")}` }) }).default("f32"),
    /** Seed of the data order (the model's init seed is model.seed). */
    seed: seedField().default(1),
    /** Where metrics, plots and checkpoints go. */
    out: z.string().min(1).max(4096).default("runs/run"),
  })
  .strict()
  .superRefine((c, ctx) => {
    const bad = (path: string[], message: string) => ctx.addIssue({ code: z.ZodIssueCode.custom, path, message });
    // A micro-batch's largest tensor (elements), named by batchSize: the logits, or an FFN's or the experts' hidden rows.
    const m = c.model;
    const rows = c.batchSize * m.seqLen;
    const k = expertsPerToken(m);
    const Fe = m.experts?.width ?? m.ffnWidth;
    const widest = Math.max(m.vocabSize, m.ffnWidth, k * Fe, k * m.width, sharedWidth(m));
    if (rows * widest > MAX_TENSOR_ELEMENTS) {
      bad(["batchSize"], `a micro-batch of ${c.batchSize} × model.seqLen ${m.seqLen} rows would make a ${rows.toLocaleString("en-US")} × ${widest.toLocaleString("en-US")} activation (${(rows * widest).toLocaleString("en-US")} elements), more than one tensor may hold (2^31 − 1): lower batchSize (use accumSteps for larger batches) or model.seqLen`);
    }
    if (c.routingDevices !== null) {
      const E = m.experts?.count;
      if (E === undefined) bad(["routingDevices"], "the model has no experts to place on devices: remove routingDevices (or set it to null)");
      else if (E % c.routingDevices !== 0) bad(["routingDevices"], `${c.routingDevices} devices do not divide experts.count ${E} (allowed: a divisor of ${E})`);
    }
    // The expert store's records hold two-matrix experts with biases (src/train/ecss.ts).
    if (c.store.enabled && m.sparseLayers > 0 && (m.ffn === "swiglu" || !m.ffnBias)) {
      bad(["store", "enabled"], `the expert store holds two-matrix experts with biases only; this model's experts are ${m.ffn === "swiglu" ? "SwiGLU" : "bias-free"} (model.ffn / model.ffnBias): train them in RAM (store.enabled false)`);
    }
    // Token counts stay exact integers.
    if (c.steps * c.accumSteps * rows > Number.MAX_SAFE_INTEGER) bad(["steps"], `the run would see ${(c.steps * c.accumSteps * rows).toExponential(2)} tokens, past 2^53: lower steps`);
  });

export type TrainConfig = z.infer<typeof TrainConfigSchema>;
export type TrainConfigInput = z.input<typeof TrainConfigSchema>;

/** Parses a train config; the error names every bad field and where it came from. */
export function parseTrainConfig(input: unknown, source = "train config"): TrainConfig & { model: ModelConfig } {
  return parseWithSchema(TrainConfigSchema, input, source, "fix the fields named above; src/train/config.ts lists every field with its default");
}

/**
 * What a valid config does that its author probably did not mean, in words
 * for a person: each names the fields, says what the run will do, and what
 * to change. With the manifest of its data, also the model's domains whose
 * validation split is too small to evaluate (evaluation leaves them out).
 * `sigma train` prints them before it starts; none stops a run.
 */
export function configWarnings(c: TrainConfig, manifest?: Manifest | null): string[] {
  const out: string[] = [];
  const o = c.optim;
  const sig = (v: number): string => String(Number(v.toPrecision(3)));
  if (o.warmupSteps >= c.steps) {
    // learningRate(): step s (0-based) of the warm-up runs at lr·(s+1)/warmupSteps; the last step is steps − 1.
    const reached = o.lr * Math.min(1, c.steps / o.warmupSteps);
    out.push(
      `optim.warmupSteps (${o.warmupSteps}) is not below steps (${c.steps}): the whole run is warm-up — the learning rate ` +
        (o.warmupSteps > c.steps ? `only climbs to ${sig(reached)} (${Math.round((100 * c.steps) / o.warmupSteps)}% of optim.lr ${sig(o.lr)})` : `reaches optim.lr ${sig(o.lr)} on the last step only`) +
        `${o.decay === "constant" ? "" : " and never decays"}; set optim.warmupSteps below steps (a tenth of it, ${Math.floor(c.steps / 10)}, is usual) or raise steps`,
    );
  } else if (o.decay !== "constant" && o.decaySteps !== null && o.decaySteps <= o.warmupSteps) {
    out.push(`optim.decaySteps (${o.decaySteps}) is not above optim.warmupSteps (${o.warmupSteps}): right after the warm-up the learning rate drops from optim.lr ${sig(o.lr)} to optim.minLr ${sig(o.minLr)} in one step; set optim.decaySteps above optim.warmupSteps, or null to decay over the whole run`);
  }
  if (o.decay !== "constant" && o.minLr > o.lr) {
    out.push(`optim.minLr (${sig(o.minLr)}) is above optim.lr (${sig(o.lr)}): the rate cannot decay to it, so it stays at optim.lr after the warm-up; lower optim.minLr, or set optim.decay to "constant" if a flat rate is meant`);
  }
  const need = windowTokens(c.model.seqLen);
  for (const d of manifest?.domains ?? []) {
    if (!c.model.domains.some((md) => md.name === d.name) || d.val.tokens >= need) continue;
    if (d.train.docs + d.val.docs === 0) {
      out.push(`domain "${d.name}" has no documents in ${c.data.dir}: it is neither trained nor evaluated; add text for it and prepare the data again, or leave it out of model.domains`);
      continue;
    }
    out.push(
      `domain "${d.name}" has ${d.val.tokens.toLocaleString("en-US")} validation tokens in ${c.data.dir}, fewer than one sequence of model.seqLen ${c.model.seqLen} + 1: it will not be evaluated (no validation loss for it); ` +
        `prepare the data again with more text for "${d.name}" or a larger --val-fraction (now ${manifest!.split.valFraction}), or use a shorter model.seqLen`,
    );
  }
  return out;
}

/** Reads and parses a JSON train config; bad bytes, bad JSON and bad fields all name the file. */
export function loadTrainConfig(path: string): TrainConfig {
  let bytes: Buffer;
  try {
    bytes = readCapped(path, "the train config", "pass --config with a JSON file (see docs/training.md, section The run config)", 16 * 2 ** 20);
  } catch (e) {
    if (e instanceof SigmaError) throw e;
    throw new SigmaError(`cannot read the train config ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "pass --config with a JSON file (see docs/training.md, section The run config)");
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new SigmaError(`${path} is not UTF-8 text`, "save the config as UTF-8 JSON");
  }
  let raw: unknown;
  try {
    raw = parseJsonStrict(text);
  } catch (e) {
    throw new SigmaError(`${path} is not valid JSON: ${jsonErrorText(e)}`, "check for trailing commas or comments (JSON allows neither)");
  }
  return parseTrainConfig(raw, path);
}
