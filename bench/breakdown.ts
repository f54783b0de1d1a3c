/**
 * The step-time breakdown of the training benchmarks (train, ecss): what the
 * profiler (src/backend/profile.ts) measured over some steps, grouped into
 * categories, in milliseconds per step.
 */
import type { KernelName } from "../src/backend/backend.js";
import { exclusiveKernelMs, type Profile } from "../src/backend/profile.js";
import { table } from "./util.js";

/**
 * The categories: kernels of the Backend contract (their time outside
 * sections) and the trainer's sections (src/train/trainer.ts), which include
 * the kernels they call (adamw in the optimizer, sumSquares in the norm).
 * "other" (added last) is the step's time that none of them accounts for:
 * autograd bookkeeping, buffer pools, routing and ECSS's record handling in
 * TypeScript.
 */
export const BREAKDOWN: { name: string; label: string; kernels?: KernelName[]; sections?: string[] }[] = [
  { name: "gemm", label: "GEMM (matmul, bmm, grouped)", kernels: ["matmul", "bmm", "groupedMatmul", "groupedMatmulWeightGrad", "groupedMatmulWeightGradSquares"] },
  { name: "attention", label: "attention (fused: score products + softmax)", kernels: ["attention", "attentionBackward"] },
  { name: "softmax", label: "softmax rows (routers)", kernels: ["softmax", "softmaxBackward"] },
  { name: "layerNorm", label: "layernorm", kernels: ["layerNorm", "layerNormBackward"] },
  { name: "gelu", label: "GELU", kernels: ["gelu", "geluBackward", "fastGelu", "fastGeluBackward"] },
  { name: "crossEntropy", label: "cross-entropy over the vocabulary", kernels: ["crossEntropy", "crossEntropyBackward"] },
  { name: "embedding", label: "embedding", kernels: ["embedding", "embeddingBackward"] },
  { name: "moeDispatch", label: "MoE dispatch (permute, gather, scatter, combine)", kernels: ["permuteByExpert", "gatherRows", "scatterAddRows", "combine", "combineBackward"] },
  { name: "elementwise", label: "elementwise (bias, add, mul, scale, axpy)", kernels: ["addBias", "addBiasBackward", "add", "mul", "scale", "axpy", "sumSquares", "adamw", "adamwExperts"] },
  { name: "optimizer", label: "optimizer (hybrid AdamW)", sections: ["optimizer"] },
  { name: "gradNorm", label: "clipping norm", sections: ["gradNorm"] },
  { name: "zeroGrad", label: "gradient zeroing", sections: ["zeroGrad"] },
  { name: "loader", label: "loader", sections: ["loader"] },
];

export const BREAKDOWN_NAMES = [...BREAKDOWN.map((c) => c.name), "other"];
const LABELS = [...BREAKDOWN.map((c) => c.label), "other (autograd, pools, routing in TypeScript)"];

/** Per step: milliseconds by category, and calls and milliseconds by kernel and section. */
export function breakdownOf(profile: Profile, stepsMs: number, steps: number): { breakdownMs: Record<string, number>; kernels: Record<string, { calls: number; msPerStep: number }> } {
  const breakdownMs: Record<string, number> = {};
  let counted = 0;
  for (const c of BREAKDOWN) {
    let ms = 0;
    for (const k of c.kernels ?? []) ms += exclusiveKernelMs(profile.kernels.get(k)!);
    for (const s of c.sections ?? []) ms += profile.sections.get(s)?.ms ?? 0;
    breakdownMs[c.name] = ms / steps;
    counted += ms;
  }
  breakdownMs.other = Math.max(0, stepsMs - counted) / steps;
  const kernels: Record<string, { calls: number; msPerStep: number }> = {};
  for (const [name, e] of [...profile.kernels, ...profile.sections]) if (e.calls > 0) kernels[name] = { calls: e.calls / steps, msPerStep: e.ms / steps };
  return { breakdownMs, kernels };
}

/** The breakdown as a table: one column per run, each cell the fraction of the step and its ms. */
export function breakdownTable(runs: { column: string; breakdownMs: Record<string, number> }[]): string {
  const total = (b: Record<string, number>) => BREAKDOWN_NAMES.reduce((s, n) => s + b[n]!, 0);
  const cell = (b: Record<string, number>, n: string) => `${((100 * b[n]!) / total(b)).toFixed(1)}% (${b[n]! < 10 ? b[n]!.toFixed(1) : b[n]!.toFixed(0)})`;
  return table(["category", ...runs.map((r) => r.column)], BREAKDOWN_NAMES.map((n, i) => [LABELS[i]!, ...runs.map((r) => cell(r.breakdownMs, n))]));
}
