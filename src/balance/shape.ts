/**
 * The model shape the simulator needs: only the sizes that set FLOPs and
 * bytes, not the weights. From a Sigma config, a named preset, or JSON.
 */
import { existsSync } from "node:fs";
import { z } from "zod";
import { modelRouter, sharedWidth, type ModelConfig } from "../models/config.js";
import { SigmaError } from "../util/errors.js";
import { parseWithSchema, readJsonFile } from "../util/json.js";

const int = (min = 0) => z.number().int().min(min);

export const SimShapeSchema = z
  .object({
    name: z.string().default("custom"),
    /** E routed experts per sparse layer. */
    experts: int(1),
    /** C model width. */
    width: int(1),
    /** Hidden width of one expert. */
    expertWidth: int(1),
    /** Weight matrices per FFN: 2 for GeLU FFNs (Sigma, PanGu), 3 for SwiGLU (Pangu Pro MoE). */
    ffnMatrices: z.union([z.literal(2), z.literal(3)]).default(2),
    sparseLayers: int(1),
    /** Layers with a dense FFN (attention + FFN on every token, no routing). */
    denseLayers: int(0).default(0),
    /** Hidden width of the dense FFNs. */
    ffnWidth: int(1).default(1),
    /** Always-on experts every token also passes through (MoGE's shared experts). */
    sharedExperts: int(0).default(0),
    /** Keys each query attends to on average: T/2 for causal prefill or training on length T, L when decoding with a cache of L. */
    context: z.number().min(0).default(0),
    /** V, for the output projection (0 leaves it out). */
    vocabSize: int(0).default(0),
    /** Whether the sparse layers have a learned router (a C×E product per token); RRE has none. */
    learnedRouter: z.boolean().default(true),
    /** Bytes per activation and weight value: 2 for bf16/fp16, 4 for fp32. */
    bytesPerValue: z.number().positive().default(2),
  })
  .strict();

export type SimShape = z.infer<typeof SimShapeSchema>;

export const SHAPE_PRESETS: Record<string, SimShape> = {
  // Pangu Pro MoE (docs/design.md §4.1): 48 layers, 64 routed experts in 8 groups, K' = 1,
  // 4 shared experts of width 1344, vocabulary 153,376 [paper / model card].
  // SwiGLU experts (3 matrices) and width 5120 are [secondary]: 5120 is the width
  // that makes the parameter count come out at 72B total, 16B active. Every layer is
  // taken as sparse; context 2048 (prefill of 4096-token sequences) and bf16 are ours.
  "pangu-pro-moe": SimShapeSchema.parse({
    name: "pangu-pro-moe", experts: 64, width: 5120, expertWidth: 1344, ffnMatrices: 3, sparseLayers: 48,
    sharedExperts: 4, context: 2048, vocabSize: 153376, bytesPerValue: 2,
  }),
};

/** The shape of a Sigma model: its query layer counts as one more dense layer; Sigma computes in fp32. */
export function shapeFromConfig(c: ModelConfig): SimShape {
  if (!c.experts || c.sparseLayers === 0) throw new SigmaError("the model has no sparse layers: there is nothing to balance", "use a checkpoint of a sparse or mixed model");
  const { spec } = modelRouter(c)!;
  return {
    name: "checkpoint",
    experts: c.experts.count,
    width: c.width,
    expertWidth: c.experts.width ?? c.ffnWidth,
    ffnMatrices: c.ffn === "swiglu" ? 3 : 2,
    sparseLayers: c.sparseLayers,
    denseLayers: c.denseLayers + 1,
    ffnWidth: c.ffnWidth,
    // The shared FFN in expert widths (experts.sharedWidth need not be a multiple: the nearest count).
    sharedExperts: Math.round(sharedWidth(c) / (c.experts.width ?? c.ffnWidth)),
    context: c.seqLen / 2,
    vocabSize: c.vocabSize,
    learnedRouter: spec.learned,
    bytesPerValue: 4,
  };
}

const HINT = `use a preset (${Object.keys(SHAPE_PRESETS).join(", ")}) or a JSON file with the fields of SimShapeSchema (src/balance/shape.ts)`;

export const parseShape = (json: unknown, source = "model shape"): SimShape => parseWithSchema(SimShapeSchema, json, source, HINT);

/** A preset name or a JSON file. */
export function resolveShape(nameOrPath: string): SimShape {
  const preset = SHAPE_PRESETS[nameOrPath];
  if (preset) return preset;
  if (!existsSync(nameOrPath)) throw new SigmaError(`unknown model shape "${nameOrPath}": not a preset and not a file`, HINT);
  return parseShape(readJsonFile(nameOrPath, "model shape", HINT), nameOrPath);
}
