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

const int = (min = 0) => z.number().int().min(min);

export const RreRouterSchema = z
  .object({
    kind: z.literal("rre"),
    /** Expert groups G; each domain owns one (domains[].group). E must be a multiple of G. */
    groups: int(1),
    /** Seed of the frozen token → expert tables (drawn once; saved with the model). */
    seed: z.number().int().default(1),
  })
  .strict();

export const MogeRouterSchema = z
  .object({
    kind: z.literal("moge"),
    /** Expert groups M (one per device in deployment). E must be a multiple of it. */
    groups: int(1),
    /** K': experts chosen inside each group (Pangu Pro MoE: 1). */
    perGroup: int(1).default(1),
    /** α of the batch-level balance loss α·E·Σ f_i·P_i. Small, as in Switch/GShard. */
    auxLossCoef: z.number().min(0).default(0.01),
    /** Always-on shared experts, each of the expert width (Pangu Pro MoE: 4). */
    sharedExperts: int(0).default(0),
  })
  .strict();

export const TopkRouterSchema = z
  .object({
    kind: z.literal("topk"),
    k: int(1).default(2),
    /** Renormalise the chosen weights to sum to 1 (Mixtral); off keeps raw softmax weights (GShard). */
    renormalize: z.boolean().default(true),
    auxLossCoef: z.number().min(0).default(0.01),
    /** Router z-loss coefficient (ST-MoE); 0 turns it off. */
    zLossCoef: z.number().min(0).default(0),
    /** Tokens per expert = ceil(factor·tokens·k/E), the rest dropped; null = dropless. */
    capacityFactor: z.number().positive().nullable().default(null),
  })
  .strict();

export const RouterSchema = z.discriminatedUnion("kind", [RreRouterSchema, MogeRouterSchema, TopkRouterSchema]);

export const DomainSchema = z
  .object({
    name: z.string().min(1),
    /** Embedding slot used to embed and decode this domain's tokens. */
    slot: int(0).default(0),
    /** RRE expert group of this domain (required with the rre router). */
    group: int(0).optional(),
  })
  .strict();

export const ModelConfigSchema = z
  .object({
    vocabSize: int(2),
    width: int(1),
    heads: int(1),
    /** M: dense layers at the bottom, shared by all domains. */
    denseLayers: int(0),
    /** N: sparse (MoE) layers on top of them. */
    sparseLayers: int(0),
    /** T: the longest sequence (size of the position tables). */
    seqLen: int(1),
    /** F: hidden width of the dense FFNs. */
    ffnWidth: int(1),
    domains: z.array(DomainSchema).min(1),
    /** Embedding slots (PanGu-Σ gives code its own). 1 = one shared embedding. */
    embeddingSlots: int(1).default(1),
    experts: z
      .object({
        count: int(1),
        /** Hidden width of each expert; defaults to ffnWidth, which makes upcycling a copy. */
        width: int(1).optional(),
        router: RouterSchema,
      })
      .strict()
      .optional(),
    /** FFN and expert activation. FastGeLU is PanGu-α's; the others exist so imported models (GPT-2: gelu_tanh) compute their own function. */
    activation: z.enum(ACTIVATIONS).default("fastgelu"),
    /** PanGu-α's query layer on top (PAPERS.md §1). Off only for imported models that have none (GPT-2). */
    queryLayer: z.boolean().default(true),
    /** Dropout on attention and FFN outputs; 0 because small models on small data rarely need it. */
    dropout: z.number().min(0).max(0.99).default(0),
    layerNormEps: z.number().positive().default(1e-5),
    /** Std of the normal init (GPT-2 / PanGu-α); output projections get std/sqrt(2·layers). */
    initStd: z.number().positive().default(0.02),
    /** Seed of the parameter init. */
    seed: z.number().int().default(1234),
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
      if (d.slot >= c.embeddingSlots) bad(["domains", i, "slot"], `${d.slot} is not an embedding slot (allowed: 0..${c.embeddingSlots - 1}, or raise embeddingSlots)`);
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
