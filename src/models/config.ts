/**
 * The model config: a strict zod schema (unknown keys are errors), defaults
 * that each say why, and cross-field checks that name the field at fault.
 *
 * Modes follow from the layer counts: dense (sparseLayers = 0, the PanGu-α
 * shape), sparse (denseLayers = 0), mixed (both) — PAPERS.md §1.
 */
import { z } from "zod";
import { ACTIVATIONS } from "../nn/activation.js";
import { parseWithSchema } from "../util/json.js";

/**
 * The most elements one tensor may have: 2^31 − 1, the reach of the
 * kernels' int32 indices (and far past what fits a CPU's caches anyway).
 */
export const MAX_TENSOR_ELEMENTS = 2 ** 31 - 1;

/** The most parameters a model may have (2^48 ≈ 281 trillion, 260× PanGu-Σ): its byte sizes, ×16 with gradients and Adam moments, stay exact integers. */
export const MAX_PARAMETERS = 2 ** 48;

/**
 * Upper bounds of the model's sizes: generous (well past any model this CPU
 * code can train) but finite, so a typo such as 1e9 is an error naming the
 * field instead of an allocation that takes the machine down. Products of
 * sizes (each tensor's element count) are bounded in the cross-field checks.
 */
export const MODEL_LIMITS = {
  vocabSize: 2 ** 21,
  width: 2 ** 16,
  heads: 2 ** 12,
  /** Each of denseLayers and sparseLayers. */
  layers: 2 ** 12,
  seqLen: 2 ** 20,
  ffnWidth: 2 ** 20,
  experts: 2 ** 16,
  sharedExperts: 2 ** 8,
  domains: 2 ** 12,
  embeddingSlots: 2 ** 12,
} as const;

const int = (min = 0, max = Number.MAX_SAFE_INTEGER) => z.number().int().min(min).max(max, { message: `must be at most ${max}` });
/** A finite number (JSON's 1e999 parses to Infinity). */
const num = () => z.number().finite();
const seed = () => z.number().int().safe();

export const RreRouterSchema = z
  .object({
    kind: z.literal("rre"),
    /** Expert groups G; each domain owns one (domains[].group). E must be a multiple of G. */
    groups: int(1, MODEL_LIMITS.experts),
    /** Seed of the frozen token → expert tables (drawn once; saved with the model). */
    seed: seed().default(1),
  })
  .strict();

export const MogeRouterSchema = z
  .object({
    kind: z.literal("moge"),
    /** Expert groups M (one per device in deployment). E must be a multiple of it. */
    groups: int(1, MODEL_LIMITS.experts),
    /** K': experts chosen inside each group (Pangu Pro MoE: 1). */
    perGroup: int(1, MODEL_LIMITS.experts).default(1),
    /** α of the batch-level balance loss α·E·Σ f_i·P_i. Small, as in Switch/GShard. */
    auxLossCoef: num().min(0).default(0.01),
    /** Always-on shared experts, each of the expert width (Pangu Pro MoE: 4). */
    sharedExperts: int(0, MODEL_LIMITS.sharedExperts).default(0),
  })
  .strict();

export const TopkRouterSchema = z
  .object({
    kind: z.literal("topk"),
    k: int(1, MODEL_LIMITS.experts).default(2),
    /** Renormalise the chosen weights to sum to 1 (Mixtral); off keeps raw softmax weights (GShard). */
    renormalize: z.boolean().default(true),
    auxLossCoef: num().min(0).default(0.01),
    /** Router z-loss coefficient (ST-MoE); 0 turns it off. */
    zLossCoef: num().min(0).default(0),
    /** Tokens per expert = ceil(factor·tokens·k/E), the rest dropped; null = dropless. A factor of E/k already drops nothing. */
    capacityFactor: num().positive().max(MODEL_LIMITS.experts).nullable().default(null),
  })
  .strict();

export const RouterSchema = z.discriminatedUnion("kind", [RreRouterSchema, MogeRouterSchema, TopkRouterSchema]);

export const DomainSchema = z
  .object({
    name: z.string().min(1).max(256),
    /** Embedding slot used to embed and decode this domain's tokens. */
    slot: int(0, MODEL_LIMITS.embeddingSlots).default(0),
    /** RRE expert group of this domain (required with the rre router). */
    group: int(0, MODEL_LIMITS.experts).optional(),
  })
  .strict();

export const ModelConfigSchema = z
  .object({
    vocabSize: int(2, MODEL_LIMITS.vocabSize),
    width: int(1, MODEL_LIMITS.width),
    heads: int(1, MODEL_LIMITS.heads),
    /** M: dense layers at the bottom, shared by all domains. */
    denseLayers: int(0, MODEL_LIMITS.layers),
    /** N: sparse (MoE) layers on top of them. */
    sparseLayers: int(0, MODEL_LIMITS.layers),
    /** T: the longest sequence (size of the position tables). */
    seqLen: int(1, MODEL_LIMITS.seqLen),
    /** F: hidden width of the dense FFNs. */
    ffnWidth: int(1, MODEL_LIMITS.ffnWidth),
    domains: z.array(DomainSchema).min(1).max(MODEL_LIMITS.domains),
    /** Embedding slots (PanGu-Σ gives code its own). 1 = one shared embedding. */
    embeddingSlots: int(1, MODEL_LIMITS.embeddingSlots).default(1),
    experts: z
      .object({
        count: int(1, MODEL_LIMITS.experts),
        /** Hidden width of each expert; defaults to ffnWidth, which makes upcycling a copy. */
        width: int(1, MODEL_LIMITS.ffnWidth).optional(),
        router: RouterSchema,
      })
      .strict()
      .optional(),
    /** FFN and expert activation. FastGeLU is PanGu-α's; the others exist so imported models (GPT-2: gelu_tanh) compute their own function. */
    activation: z.enum(ACTIVATIONS).default("fastgelu"),
    /** PanGu-α's query layer on top (PAPERS.md §1). Off only for imported models that have none (GPT-2). */
    queryLayer: z.boolean().default(true),
    /** Dropout on attention and FFN outputs; 0 because small models on small data rarely need it. */
    dropout: num().min(0).max(0.99).default(0),
    layerNormEps: num().positive().max(1).default(1e-5),
    /** Std of the normal init (GPT-2 / PanGu-α); output projections get std/sqrt(2·layers). */
    initStd: num().positive().max(1e3).default(0.02),
    /** Seed of the parameter init. */
    seed: seed().default(1234),
  })
  .strict()
  .superRefine((c, ctx) => {
    const bad = (path: (string | number)[], message: string) => ctx.addIssue({ code: z.ZodIssueCode.custom, path, message });
    if (c.width % c.heads !== 0) bad(["heads"], `${c.heads} does not divide width ${c.width} (allowed: a divisor of width)`);
    if (c.denseLayers + c.sparseLayers === 0) bad(["denseLayers"], "denseLayers + sparseLayers must be at least 1");
    const names = new Set<string>();
    c.domains.forEach((d, i) => {
      if (names.has(d.name)) bad(["domains", i, "name"], `duplicate domain "${d.name}"`);
      names.add(d.name);
      if (c.embeddingSlots >= 1 && d.slot >= c.embeddingSlots) bad(["domains", i, "slot"], `${d.slot} is not an embedding slot (allowed: 0..${c.embeddingSlots - 1}, or raise embeddingSlots)`);
    });
    if (c.sparseLayers > 0 && !c.experts) bad(["experts"], "sparseLayers > 0 needs an experts section ({count, router})");
    if (!c.experts) return;
    const E = c.experts.count;
    const r = c.experts.router;
    if (r.kind === "rre" || r.kind === "moge") {
      if (E % r.groups !== 0) bad(["experts", "router", "groups"], `${r.groups} groups do not divide ${E} experts (allowed: a divisor of experts.count)`);
    }
    if (r.kind === "rre") {
      c.domains.forEach((d, i) => {
        if (d.group === undefined) bad(["domains", i, "group"], `domain "${d.name}" has no expert group (the rre router needs one: 0..${r.groups - 1})`);
        else if (d.group >= r.groups) bad(["domains", i, "group"], `${d.group} is not an expert group (allowed: 0..${r.groups - 1})`);
      });
    }
    if (r.kind === "moge" && E % r.groups === 0 && r.perGroup > E / r.groups) {
      bad(["experts", "router", "perGroup"], `K' = ${r.perGroup} is larger than a group (${E / r.groups} experts)`);
    }
    if (r.kind === "topk" && r.k > E) bad(["experts", "router", "k"], `k = ${r.k} is larger than experts.count = ${E}`);
  })
  .superRefine((c, ctx) => {
    // Each tensor's element count, and the whole model, within bounds (named by the field that sizes it most).
    const bad = (path: (string | number)[], message: string) => ctx.addIssue({ code: z.ZodIssueCode.custom, path, message });
    const tensor = (path: (string | number)[], what: string, n: number, fix: string) => {
      if (n > MAX_TENSOR_ELEMENTS) bad(path, `${what} would have ${n.toLocaleString("en-US")} elements, more than one tensor may hold (2^31 − 1): ${fix}`);
    };
    const C = c.width;
    tensor(["vocabSize"], "the token embedding [embeddingSlots·vocabSize, width]", c.embeddingSlots * c.vocabSize * C, "lower vocabSize, width or embeddingSlots");
    tensor(["seqLen"], "the position table [seqLen, width]", c.seqLen * C, "lower seqLen or width");
    tensor(["ffnWidth"], "a dense FFN matrix [ffnWidth, width]", c.ffnWidth * C, "lower ffnWidth or width");
    if (c.experts) {
      const Fe = c.experts.width ?? c.ffnWidth;
      const r = c.experts.router;
      tensor(c.experts.width ? ["experts", "width"] : ["ffnWidth"], "an expert's matrix [expert width, width]", Fe * C, "lower the expert width or width");
      if (r.kind !== "rre") tensor(["experts", "count"], "the router [experts.count, width]", c.experts.count * C, "lower experts.count or width");
      if (r.kind === "rre") tensor(["experts", "router", "groups"], "the RRE table [groups·vocabSize]", r.groups * c.vocabSize, "lower the groups or vocabSize");
      if (r.kind === "moge") tensor(["experts", "router", "sharedExperts"], "the shared experts' matrix [sharedExperts·expert width, width]", r.sharedExperts * Fe * C, "lower sharedExperts");
    }
    const n = parameterCounts(c);
    if (n.total > MAX_PARAMETERS) {
      const [part] = largestParts(n);
      bad(part!.fields, `the model would have ${n.total.toExponential(2)} parameters, more than Sigma's bound of 2^48 (${MAX_PARAMETERS.toExponential(2)}); the largest part is ${part!.what} (${part!.count.toExponential(2)})`);
    }
  });

export type ModelConfig = z.infer<typeof ModelConfigSchema>;
export type ModelConfigInput = z.input<typeof ModelConfigSchema>;
export type RouterConfig = z.infer<typeof RouterSchema>;

/** Parses a config; errors name every bad field. `source` (a file name) prefixes the message. */
export function parseModelConfig(input: unknown, source = "model config"): ModelConfig {
  return parseWithSchema(ModelConfigSchema, input, source, "fix the fields named above; see src/models/config.ts for every field and its default");
}

/** "dense", "sparse" or "mixed". */
export function modelMode(c: ModelConfig): "dense" | "sparse" | "mixed" {
  if (c.sparseLayers === 0) return "dense";
  return c.denseLayers === 0 ? "sparse" : "mixed";
}

/** A model's parameters by part, each with the config fields that size it. */
export interface ParameterCounts {
  /** Token embedding: embeddingSlots·vocabSize·width. */
  embedding: number;
  /** Position tables (and the query layer's): seqLen·width each. */
  positions: number;
  /** Attention, norms, dense FFNs, routers, shared experts, the query layer. */
  layers: number;
  /** Routed experts' FFNs over all sparse layers (what an expert store holds). */
  experts: number;
  total: number;
  /** Int32 state values (RRE tables), not parameters. */
  buffers: number;
  /** Elements of one sparse layer's stacked expert matrix [E, expert width, width] when the experts are in RAM. */
  stackedExperts: number;
}

/** The parameter counts a model of this config has (exactly what PanguSigma allocates). */
export function parameterCounts(c: ModelConfig): ParameterCounts {
  const C = c.width;
  const F = c.ffnWidth;
  const attention = 4 * (C * C + C) + 4 * C; // q, k, v, o and the two norms
  const ffn = (hidden: number) => 2 * C * hidden + hidden + C;
  let layers = c.denseLayers * (attention + ffn(F)) + 2 * C;
  let experts = 0;
  let buffers = 0;
  let stackedExperts = 0;
  if (c.sparseLayers > 0 && c.experts) {
    const E = c.experts.count;
    const Fe = c.experts.width ?? F;
    const r = c.experts.router;
    const router = r.kind === "moge" ? E * C + E : r.kind === "topk" ? E * C : 0;
    const shared = r.kind === "moge" && r.sharedExperts > 0 ? ffn(r.sharedExperts * Fe) : 0;
    layers += c.sparseLayers * (attention + router + shared);
    experts = c.sparseLayers * E * ffn(Fe);
    if (r.kind === "rre") buffers = c.sparseLayers * r.groups * c.vocabSize;
    stackedExperts = E * Fe * C;
  }
  if (c.queryLayer) layers += attention + ffn(F);
  const embedding = c.embeddingSlots * c.vocabSize * C;
  const positions = (c.queryLayer ? 2 : 1) * c.seqLen * C;
  return { embedding, positions, layers, experts, total: embedding + positions + layers + experts, buffers, stackedExperts };
}

/**
 * Parameters one token uses: the dense part, and in each sparse layer only the
 * k routed experts it reaches (k = the router's choices per token).
 */
export function activeParameters(c: ModelConfig): number {
  const n = parameterCounts(c);
  if (!c.experts || c.sparseLayers === 0) return n.total;
  const r = c.experts.router;
  const k = r.kind === "rre" ? 1 : r.kind === "moge" ? r.groups * r.perGroup : r.k;
  return n.total - n.experts + (n.experts / c.experts.count) * Math.min(k, c.experts.count);
}

/** The parts of a parameter count, largest first, each with the fields to lower to shrink it. */
export function largestParts(n: ParameterCounts): { what: string; count: number; fields: string[] }[] {
  return [
    { what: "the token embedding (embeddingSlots × vocabSize × width)", count: n.embedding, fields: ["vocabSize"] },
    { what: "the position tables (seqLen × width)", count: n.positions, fields: ["seqLen"] },
    { what: "the layers (denseLayers, sparseLayers × width², ffnWidth)", count: n.layers, fields: ["denseLayers"] },
    { what: "the experts (sparseLayers × experts.count × expert width × width)", count: n.experts, fields: ["experts", "count"] },
  ].sort((a, b) => b.count - a.count);
}
