/**
 * The model config: a strict zod schema (unknown keys are errors), defaults
 * that each say why, and cross-field checks that name the field at fault.
 *
 * Modes follow from the layer counts: dense (sparseLayers = 0, the PanGu-α
 * shape), sparse (denseLayers = 0), mixed (both) — docs/design.md §1.1.
 */
import { z } from "zod";
import { ACTIVATIONS } from "../nn/activation.js";
import { ATTENTION_BIASES } from "../nn/attention.js";
import { FFN_KINDS, NORMS } from "../nn/layers.js";
import { routerSpec, RouterSchema, type RouterConfig } from "../moe/routers/index.js";
import { MAX_EXPERTS, type ModelView, type RouterSpec } from "../moe/routers/router.js";
import { finiteField, intField, parseWithSchema, seedField } from "../util/json.js";

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
  experts: MAX_EXPERTS,
  domains: 2 ** 12,
  embeddingSlots: 2 ** 12,
} as const;

export const DomainSchema = z
  .object({
    name: z.string().min(1).max(256),
    /**
     * Embedding slot used to embed and decode this domain's tokens. Absent:
     * laid out by the model (defaultSlots below).
     */
    slot: intField(0, MODEL_LIMITS.embeddingSlots).optional(),
    /** A small domain: shares one embedding slot with the other small domains in the default layout (PanGu-Σ's 36 smaller domains). */
    small: z.boolean().optional(),
    /** Expert group of this domain, for routers that route by domain (RRE requires it). */
    group: intField(0, MODEL_LIMITS.experts).optional(),
    /**
     * Added to a trained model by `sigma domain add` (src/models/domain-add.ts),
     * its control token appended to the vocabulary then: that token is not part
     * of the vocabulary of the domains before it, and their sub-models leave it
     * out (extract.ts). Absent: the domain was there from the start.
     */
    added: z.boolean().optional(),
  })
  .strict();

/**
 * PanGu-Σ's embedding layout, the default of every model: each major domain
 * its own token-embedding slot, the small domains (`small`) sharing one more.
 * One domain: one slot.
 */
export function perDomainSlots(names: readonly string[], small: readonly string[] = []): { embeddingSlots: number; slots: number[] } {
  const major = names.filter((n) => !small.includes(n));
  const shared = major.length;
  const slots = names.map((n) => (small.includes(n) ? shared : major.indexOf(n)));
  return { embeddingSlots: major.length + (major.length < names.length ? 1 : 0), slots };
}

/**
 * Fills in the embedding layout: embeddingSlots and every domain's slot.
 * Given embeddingSlots: a domain without a slot takes slot 0. Absent, with
 * slots named: S = the largest named slot + 1, unnamed ones take 0. Absent,
 * with none named: perDomainSlots.
 */
function defaultSlots(c: z.output<typeof ModelConfigFields>): Omit<z.output<typeof ModelConfigFields>, "embeddingSlots" | "domains"> & { embeddingSlots: number; domains: (z.output<typeof DomainSchema> & { slot: number })[] } {
  const named = c.domains.some((d) => d.slot !== undefined);
  const layout =
    c.embeddingSlots !== undefined || named
      ? { embeddingSlots: c.embeddingSlots ?? Math.max(...c.domains.map((d) => d.slot ?? 0)) + 1, slots: c.domains.map((d) => d.slot ?? 0) }
      : perDomainSlots(c.domains.map((d) => d.name), c.domains.filter((d) => d.small).map((d) => d.name));
  // Keys in the schema's order, as a config that had them all parses: a saved
  // config read back serializes to the same bytes.
  const domains = c.domains.map((d, i) => inSchemaOrder(DomainSchema.shape, { ...d, slot: layout.slots[i]! }));
  return inSchemaOrder(ModelConfigFields.shape, { ...c, embeddingSlots: layout.embeddingSlots, domains });
}

function inSchemaOrder<T extends object>(shape: object, o: T): T {
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(shape)) if (k in o) out[k] = (o as Record<string, unknown>)[k];
  return out as T;
}

const ModelConfigFields = z
  .object({
    vocabSize: intField(2, MODEL_LIMITS.vocabSize),
    width: intField(1, MODEL_LIMITS.width),
    heads: intField(1, MODEL_LIMITS.heads),
    /** M: dense layers at the bottom, shared by all domains. */
    denseLayers: intField(0, MODEL_LIMITS.layers),
    /** N: sparse (MoE) layers on top of them. */
    sparseLayers: intField(0, MODEL_LIMITS.layers),
    /** T: the longest sequence (size of the position tables). */
    seqLen: intField(1, MODEL_LIMITS.seqLen),
    /** F: hidden width of the dense FFNs. */
    ffnWidth: intField(1, MODEL_LIMITS.ffnWidth),
    domains: z.array(DomainSchema).min(1).max(MODEL_LIMITS.domains),
    /**
     * Embedding slots S; 1 = one embedding shared by every domain. Absent: the
     * domains' slots say it (the largest + 1), or, where no domain names one,
     * PanGu-Σ's layout (perDomainSlots: a slot per domain, the `small` ones
     * sharing one). Saved models store the value, so this default never
     * changes a trained model.
     */
    embeddingSlots: intField(1, MODEL_LIMITS.embeddingSlots).optional(),
    experts: z
      .object({
        count: intField(1, MODEL_LIMITS.experts),
        /** Hidden width of each expert; defaults to ffnWidth, which makes upcycling a copy. */
        width: intField(1, MODEL_LIMITS.ffnWidth).optional(),
        router: RouterSchema,
        /**
         * Hidden width of the always-on shared expert FFN beside the routed
         * ones (HF shared_expert_intermediate_size; Pangu Pro MoE: 4 × 1344).
         * Default: the router's sharedExperts × the expert width (MoGE), else
         * none. 0 = none.
         */
        sharedWidth: intField(0, MODEL_LIMITS.ffnWidth).optional(),
        /** A sigmoid gate σ(x·w) [w: 1 × width, no bias] on the shared expert's output (Qwen2-MoE's shared_expert_gate). */
        sharedGate: z.boolean().default(false),
      })
      .strict()
      .optional(),
    /** FFN and expert activation. FastGeLU is PanGu-α's; the others exist so imported models (GPT-2: gelu_tanh) compute their own function. */
    activation: z.enum(ACTIVATIONS).default("fastgelu"),
    /** PanGu-α's query layer on top (docs/design.md §1.4). Off only for imported models that have none (GPT-2). */
    queryLayer: z.boolean().default(true),
    /** Dropout on attention and FFN outputs; 0 because small models on small data rarely need it. */
    dropout: finiteField().min(0).max(0.99).default(0),
    /** The eps of every norm (LayerNorm or RMSNorm, and the q/k norms). */
    layerNormEps: finiteField().positive().max(1).default(1e-5),
    // Block options (docs/design.md §1.7). Their defaults are PanGu-α's block, so configs written before them compute as they did.
    /** Every norm of the model (the blocks' two, the query layer's, the final one): LayerNorm (PanGu, GPT-2) or RMSNorm (Llama, Qwen, Pangu Pro MoE). */
    norm: z.enum(NORMS).default("layernorm"),
    /** Positions: a learned table added to the input (PanGu, GPT-2), or rotary positions on q and k (HF Llama's rotate_half convention). */
    position: z.enum(["learned", "rope"]).default("learned"),
    /** RoPE's base θ (Llama 10,000; Qwen2 1,000,000; Pangu Pro MoE 16,000,000). */
    ropeTheta: finiteField().positive().max(1e12).default(10000),
    /** Key/value heads G (grouped-query attention; 1 = multi-query); a divisor of heads. Default: heads. */
    kvHeads: intField(1, MODEL_LIMITS.heads).optional(),
    /** Head size D when it is not width/heads (Qwen3); q is heads·D wide, o maps heads·D back to width. */
    headDim: intField(1, MODEL_LIMITS.width).optional(),
    /** The FFN of dense blocks, shared experts and experts: "gelu" (two matrices, the activation above) or "swiglu" (gate, up, down; SiLU). */
    ffn: z.enum(FFN_KINDS).default("gelu"),
    /** Biases on the FFN and expert projections (PanGu, GPT-2); Llama-style models have none. */
    ffnBias: z.boolean().default(true),
    /** Attention biases: "all" (PanGu, GPT-2, Pangu Pro MoE), "qkv" (Qwen2: none on o), "none" (Llama, Mixtral, Qwen3). */
    attentionBias: z.enum(ATTENTION_BIASES).default("all"),
    /** RMSNorm over each head's q and k before the rotation (Qwen3). */
    qkNorm: z.boolean().default(false),
    /** The output projection is the token embedding (PanGu, GPT-2), or a matrix of its own (outputEmbedding, same shape). */
    tiedEmbeddings: z.boolean().default(true),
    /** Std of the normal init (GPT-2 / PanGu-α); output projections get std/sqrt(2·layers). */
    initStd: finiteField().positive().max(1e3).default(0.02),
    /** Seed of the parameter init. */
    seed: seedField().default(1234),
  })
  .strict();

export const ModelConfigSchema = ModelConfigFields.transform(defaultSlots)
  .superRefine((c, ctx) => {
    const bad = (path: (string | number)[], message: string) => ctx.addIssue({ code: z.ZodIssueCode.custom, path, message });
    if (c.headDim === undefined && c.width % c.heads !== 0) bad(["heads"], `${c.heads} does not divide width ${c.width} (allowed: a divisor of width, or set headDim)`);
    if (c.kvHeads !== undefined && c.heads % c.kvHeads !== 0) bad(["kvHeads"], `${c.kvHeads} does not divide heads ${c.heads} (allowed: a divisor of heads; 1 = multi-query)`);
    if (c.position === "rope" && headDim(c) % 2 !== 0) bad([c.headDim !== undefined ? "headDim" : "heads"], `rotary positions need an even head size; width/heads is ${headDim(c)}`);
    if (c.experts?.sharedGate && sharedWidth(c) === 0) bad(["experts", "sharedGate"], "a gate on the shared expert needs a shared expert: set experts.sharedWidth (or the router's sharedExperts)");
    if (c.denseLayers + c.sparseLayers === 0) bad(["denseLayers"], "denseLayers + sparseLayers must be at least 1");
    const names = new Set<string>();
    c.domains.forEach((d, i) => {
      if (names.has(d.name)) bad(["domains", i, "name"], `duplicate domain "${d.name}"`);
      names.add(d.name);
      if (c.embeddingSlots >= 1 && d.slot >= c.embeddingSlots) bad(["domains", i, "slot"], `${d.slot} is not an embedding slot (allowed: 0..${c.embeddingSlots - 1}, or raise embeddingSlots)`);
    });
    if (c.sparseLayers > 0 && !c.experts) bad(["experts"], "sparseLayers > 0 needs an experts section ({count, router})");
    if (!c.experts) return;
    const { spec, view } = modelRouter(c)!;
    spec.check(view, bad);
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
    tensor(["heads"], "an attention projection [heads·headDim, width]", c.heads * headDim(c) * C, "lower heads or headDim");
    tensor(["ffnWidth"], "a dense FFN matrix [ffnWidth, width]", c.ffnWidth * C, "lower ffnWidth or width");
    if (c.experts) {
      const Fe = c.experts.width ?? c.ffnWidth;
      const { spec, view } = modelRouter(c)!;
      tensor(c.experts.width ? ["experts", "width"] : ["ffnWidth"], "an expert's matrix [expert width, width]", Fe * C, "lower the expert width or width");
      for (const t of spec.tensors(view)) tensor(t.fields[0]!, t.what, t.elements, t.fix);
      tensor(c.experts.sharedWidth !== undefined ? ["experts", "sharedWidth"] : ["experts", "router", "sharedExperts"], "the shared experts' matrix [shared width, width]", sharedWidth(c) * C, "lower the shared width");
    }
    const n = parameterCounts(c);
    if (n.total > MAX_PARAMETERS) {
      const [part] = largestParts(n);
      bad(part!.fields, `the model would have ${n.total.toExponential(2)} parameters, more than Sigma's bound of 2^48 (${MAX_PARAMETERS.toExponential(2)}); the largest part is ${part!.what} (${part!.count.toExponential(2)})`);
    }
  });

export type ModelConfig = z.infer<typeof ModelConfigSchema>;
export type ModelConfigInput = z.input<typeof ModelConfigSchema>;
export type { RouterConfig };

/** Parses a config; errors name every bad field. `source` (a file name) prefixes the message. */
export function parseModelConfig(input: unknown, source = "model config"): ModelConfig {
  return parseWithSchema(ModelConfigSchema, input, source, "fix the fields named above; see src/models/config.ts for every field and its default");
}

/** The router of a config's sparse layers and what it sees of the model; null without an experts section. */
export function modelRouter(c: ModelConfig): { spec: RouterSpec<RouterConfig>; view: ModelView } | null {
  if (!c.experts) return null;
  const view = { vocabSize: c.vocabSize, width: c.width, experts: c.experts.count, expertWidth: c.experts.width ?? c.ffnWidth, domains: c.domains };
  return { spec: routerSpec(c.experts.router), view };
}

/** D: the head size (headDim, else width/heads). */
export function headDim(c: ModelConfig): number {
  return c.headDim ?? c.width / c.heads;
}

/** G: key/value heads (kvHeads, else heads). */
export function kvHeads(c: ModelConfig): number {
  return c.kvHeads ?? c.heads;
}

/** Hidden width of the shared expert FFN of each sparse layer (0 = none): experts.sharedWidth, else the router's sharedExperts × the expert width. */
export function sharedWidth(c: ModelConfig): number {
  if (!c.experts) return 0;
  if (c.experts.sharedWidth !== undefined) return c.experts.sharedWidth;
  return routerSpec(c.experts.router).sharedExperts * (c.experts.width ?? c.ffnWidth);
}

/** Experts each token is routed to in a sparse layer: the router's k; 0 without sparse layers. */
export function expertsPerToken(c: ModelConfig): number {
  return c.sparseLayers === 0 ? 0 : (modelRouter(c)?.spec.k ?? 0);
}

/** "dense", "sparse" or "mixed". */
export function modelMode(c: ModelConfig): "dense" | "sparse" | "mixed" {
  if (c.sparseLayers === 0) return "dense";
  return c.denseLayers === 0 ? "sparse" : "mixed";
}

/** A model's parameters by part, each with the config fields that size it. */
export interface ParameterCounts {
  /** Token embedding: embeddingSlots·vocabSize·width (twice with an untied output matrix). */
  embedding: number;
  /** Position tables (learned positions; the query layer's): seqLen·width each. */
  positions: number;
  /** Attention, norms, dense FFNs, routers, shared experts, the query layer. */
  layers: number;
  /** Routed experts' FFNs over all sparse layers (what an expert store holds). */
  experts: number;
  total: number;
  /** Int32 state values (routers' buffers, such as RRE tables), not parameters. */
  buffers: number;
  /** Elements of one sparse layer's stacked expert matrix [E, expert width, width] when the experts are in RAM. */
  stackedExperts: number;
}

/** The parameter counts a model of this config has (exactly what PanguSigma allocates). */
export function parameterCounts(c: ModelConfig): ParameterCounts {
  const C = c.width;
  const F = c.ffnWidth;
  const D = headDim(c);
  const [Wq, Wkv] = [c.heads * D, kvHeads(c) * D];
  const norm = c.norm === "rmsnorm" ? C : 2 * C;
  const qkvBias = c.attentionBias !== "none" ? Wq + 2 * Wkv : 0;
  const oBias = c.attentionBias === "all" ? C : 0;
  // q, k, v, o, their biases, the q/k norms and the block's two norms.
  const attention = C * Wq + 2 * C * Wkv + Wq * C + qkvBias + oBias + (c.qkNorm ? 2 * D : 0) + 2 * norm;
  const matrices = c.ffn === "swiglu" ? 3 : 2;
  const ffn = (hidden: number) => matrices * C * hidden + (c.ffnBias ? (matrices - 1) * hidden + C : 0);
  let layers = c.denseLayers * (attention + ffn(F)) + norm;
  let experts = 0;
  let buffers = 0;
  let stackedExperts = 0;
  if (c.sparseLayers > 0 && c.experts) {
    const E = c.experts.count;
    const Fe = c.experts.width ?? F;
    const { spec, view } = modelRouter(c)!;
    const state = spec.tensors(view);
    const router = state.reduce((n, t) => n + (t.buffer ? 0 : t.elements), 0);
    const Fs = sharedWidth(c);
    const shared = Fs > 0 ? ffn(Fs) + (c.experts.sharedGate ? C : 0) : 0;
    layers += c.sparseLayers * (attention + router + shared);
    experts = c.sparseLayers * E * ffn(Fe);
    buffers = c.sparseLayers * state.reduce((n, t) => n + (t.buffer ? t.elements : 0), 0);
    stackedExperts = E * Fe * C;
  }
  if (c.queryLayer) layers += attention + ffn(F);
  const embedding = (c.tiedEmbeddings ? 1 : 2) * c.embeddingSlots * c.vocabSize * C;
  const positions = ((c.position === "learned" ? 1 : 0) + (c.queryLayer ? 1 : 0)) * c.seqLen * C;
  return { embedding, positions, layers, experts, total: embedding + positions + layers + experts, buffers, stackedExperts };
}

/**
 * Parameters one token uses: the dense part, and in each sparse layer only the
 * k routed experts it reaches (k = the router's choices per token).
 */
export function activeParameters(c: ModelConfig): number {
  const n = parameterCounts(c);
  if (!c.experts || c.sparseLayers === 0) return n.total;
  return n.total - n.experts + (n.experts / c.experts.count) * Math.min(expertsPerToken(c), c.experts.count);
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
