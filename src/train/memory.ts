/**
 * How much memory a training run needs, estimated from its config before
 * anything is allocated, and the check that refuses a run the machine cannot
 * hold — naming the fields to shrink and the bytes needed and available —
 * instead of letting it die halfway through allocating.
 *
 * The estimate (float32 throughout, 4 bytes a value):
 *   - parameters, their gradients and both Adam moments: 16 bytes a
 *     parameter; with the expert store (ECSS) the experts count only up to
 *     store.memory (parameters and moments resident), plus their gradients;
 *   - the routers' state buffers (int32: RRE tables);
 *   - activations of one micro-batch of batchSize × seqLen tokens: what each
 *     block keeps for backward, the logits and their gradient, and one
 *     block's gradients while backward runs; with recompute only the block
 *     inputs are kept, plus one block replayed;
 *   - at a checkpoint, the serialized model and moments (12 bytes a resident
 *     parameter) while the buffer pool may still hold activations (≤ 2 GiB);
 *   - a fixed 256 MiB for Node, the code and the loaders.
 * It is a floor for the run's peak (the allocator and the garbage collector
 * add to it), so a run it refuses could never have fit.
 */
import { freemem, totalmem } from "node:os";
import { expertsPerToken, headDim, kvHeads, largestParts, modelRouter, parameterCounts, sharedWidth, type ModelConfig, type ParameterCounts } from "../models/config.js";
import { formatBytes, parseBytes } from "../store/format.js";
import { SigmaError } from "../util/errors.js";
import type { TrainConfig } from "./config.js";

const F32 = 4;
/** Node, the code, the loaders' buffers: what a run holds before its model. */
const BASELINE = 256 * 2 ** 20;
/** The tensor pool keeps at most this much of the last step's buffers (src/tensor/pool.ts). */
const POOL_BYTES = 2 ** 31;

/** The memory a process on this machine may use: its RAM, or less under a cgroup limit; and what is free now. */
export function machineMemory(): { total: number; free: number } {
  let total = totalmem();
  const limit = process.constrainedMemory?.();
  if (typeof limit === "number" && limit > 0 && limit < total) total = limit;
  return { total, free: Math.min(freemem(), total) };
}

export interface MemoryPart {
  what: string;
  bytes: number;
  /** The config fields that shrink this part. */
  fields: string[];
}

export interface RunMemory {
  /** Estimated peak bytes. */
  total: number;
  parts: MemoryPart[];
}

/** Float values one micro-batch keeps for backward, and the working set of one block. */
export function activationValues(m: ModelConfig, batchSize: number, recompute: boolean): number {
  const R = batchSize * m.seqLen;
  const C = m.width;
  const drop = m.dropout > 0 ? 2 * R * C : 0;
  // ln1, q, k, v, attention output and its log-sum-exp, o, the residual, ln2, norm statistics.
  const [Wq, Wkv] = [m.heads * headDim(m), kvHeads(m) * headDim(m)];
  // Block options: the rotated (and normed) copies of q and k, and grouped-query attention's repeated k and v.
  const extra = (m.position === "rope" ? R * (Wq + Wkv) : 0) + (m.qkNorm ? R * (Wq + Wkv) : 0) + (Wkv !== Wq ? 2 * R * Wq : 0);
  const attention = 4 * R * C + 2 * R * Wq + 2 * R * Wkv + R * m.heads + 4 * R + drop + extra;
  // SwiGLU keeps the gate, the up projection, the gate's SiLU and their product: two more hidden-wide rows than act(fc1).
  const hidden = m.ffn === "swiglu" ? 4 : 2;
  const dense = attention + hidden * R * m.ffnWidth + 2 * R * C;
  let sparse = 0;
  if (m.sparseLayers > 0 && m.experts) {
    const k = expertsPerToken(m);
    const Fe = m.experts.width ?? m.ffnWidth;
    const { spec } = modelRouter(m)!;
    // A learned router keeps its logits and probabilities [R, E].
    const router = spec.learned ? 2 * R * m.experts.count : 0;
    const Fs = sharedWidth(m);
    const shared = Fs > 0 ? hidden * R * Fs + 2 * R * C : 0;
    // Gathered rows, the two expert matmuls with bias and activation (SwiGLU: two more), the combine, the residual.
    sparse = attention + router + 3 * R * k * C + (hidden + 1) * R * k * Fe + 2 * R * C + shared;
  }
  const query = m.queryLayer ? dense + R * C : 0;
  const blocks = m.denseLayers * dense + m.sparseLayers * sparse + query;
  const widest = Math.max(dense, sparse, query);
  // Embeddings and their sum, the final norm, the logits and their gradient.
  const head = 4 * R * C + 2 * R * m.vocabSize;
  const layers = m.denseLayers + m.sparseLayers + (m.queryLayer ? 1 : 0);
  return recompute ? head + layers * 2 * R * C + 2 * widest : head + blocks + widest;
}

const list = (fields: string[]): string => fields.join(", ");

/** The fields that size a parameter part, as a train config names them. */
function paramFields(n: ParameterCounts, m: ModelConfig, store: boolean): string[] {
  const part = largestParts(store ? { ...n, experts: 0 } : n)[0]!;
  const head = part.fields[0];
  if (head === "vocabSize") return ["model.vocabSize", "model.width", ...(m.embeddingSlots > 1 ? ["model.embeddingSlots"] : [])];
  if (head === "seqLen") return ["model.seqLen", "model.width"];
  if (head === "experts") return ["model.experts.count", "model.experts.width", "model.sparseLayers", "store.enabled (keep the experts on disk)"];
  return ["model.denseLayers", "model.sparseLayers", "model.width", "model.ffnWidth"];
}

/** The estimated peak memory of a training run of this config, by part. */
export function estimateRunMemory(cfg: TrainConfig): RunMemory {
  const m = cfg.model;
  const n = parameterCounts(m);
  const store = cfg.store.enabled;
  const resident = n.total - (store ? n.experts : 0);
  const parts: MemoryPart[] = [];
  parts.push({
    what: `${resident.toExponential(2)} parameters with their gradients and Adam moments${store ? " (experts in the store)" : ""}`,
    bytes: 16 * resident,
    fields: paramFields(n, m, store),
  });
  if (store && n.experts > 0) {
    let budget: number;
    try {
      budget = parseBytes(cfg.store.memory);
    } catch {
      budget = 0; // the store reports a bad budget itself
    }
    const held = Math.min(budget, 12 * n.experts);
    parts.push({ what: `resident experts (store.memory, with their gradients)`, bytes: held + held / 3, fields: ["store.memory"] });
  }
  if (n.buffers > 0) {
    const { spec, view } = modelRouter(m)!;
    const buffers = spec.tensors(view).filter((t) => t.buffer);
    const what = `${buffers.map((t) => t.what).join(", ")} of ${m.sparseLayers} sparse layer${m.sparseLayers === 1 ? "" : "s"}`;
    parts.push({ what, bytes: 4 * n.buffers, fields: [...new Set(buffers.flatMap((t) => t.fields.map((f) => `model.${f.join(".")}`)))] });
  }
  const act = F32 * activationValues(m, cfg.batchSize, cfg.recompute);
  parts.push({
    what: `activations of a micro-batch of ${cfg.batchSize} × ${m.seqLen} tokens${cfg.recompute ? " (recomputed)" : ""}`,
    bytes: act,
    fields: ["batchSize", "model.seqLen", ...(cfg.recompute ? [] : ["recompute (set it to true)"])],
  });
  const ckpt = 12 * resident;
  const state = parts.filter((p) => !p.what.startsWith("activations")).reduce((s, p) => s + p.bytes, 0);
  const total = BASELINE + state + Math.max(act, ckpt + Math.min(act, POOL_BYTES));
  if (ckpt + Math.min(act, POOL_BYTES) > act) parts.push({ what: "writing a checkpoint (its serialized copy, beyond the activations)", bytes: ckpt + Math.min(act, POOL_BYTES) - act, fields: paramFields(n, m, store) });
  parts.push({ what: "Node and the loaders", bytes: BASELINE, fields: [] });
  return { total, parts };
}

/** "12.3 GiB" for bytes, past TiB too. */
export function bytesText(n: number): string {
  if (n >= 1024 ** 5) return `${(n / 1024 ** 5).toFixed(1)} PiB`;
  return formatBytes(n);
}

/**
 * Refuses a run whose estimated peak memory exceeds what this machine (or
 * its cgroup) has, before anything is allocated. `available` overrides the
 * machine's total (tests). Returns the estimate and a warning when it is
 * more than is free right now (the run may still fit once caches are
 * dropped, or it may swap).
 */
export function checkRunFits(cfg: TrainConfig, source = "the train config", available?: number): { estimate: RunMemory; warning: string | null } {
  const estimate = estimateRunMemory(cfg);
  const machine = machineMemory();
  const total = available ?? machine.total;
  const m = cfg.model;
  const n = parameterCounts(m);
  if (!cfg.store.enabled && m.sparseLayers > 0 && n.stackedExperts > 2 ** 31 - 1) {
    throw new SigmaError(
      `${source}: a sparse layer's experts, stacked in RAM [experts.count, expert width, width], would have ${n.stackedExperts.toLocaleString("en-US")} elements, more than one tensor may hold (2^31 − 1)`,
      "lower model.experts.count, model.experts.width or model.width, or keep the experts in an expert store (store.enabled: true, or --store)",
    );
  }
  const parts = [...estimate.parts].sort((a, b) => b.bytes - a.bytes);
  if (estimate.total > total) {
    const big = parts[0]!;
    const breakdown = parts.filter((p) => p.bytes >= estimate.total / 100).map((p) => `${p.what} ${bytesText(p.bytes)}`).join(", ");
    throw new SigmaError(
      `${source}: this run needs about ${bytesText(estimate.total)} of memory but the machine has ${bytesText(total)} (${breakdown})`,
      `shrink ${list(big.fields)}: ${big.what} is the largest part`,
    );
  }
  const free = available ?? machine.free;
  const warning = estimate.total > free ? `this run needs about ${bytesText(estimate.total)} of memory and ${bytesText(free)} is free now: it may swap or be stopped by the system (largest part: ${parts[0]!.what}, ${bytesText(parts[0]!.bytes)})` : null;
  return { estimate, warning };
}

/** Float values a forward pass without gradients holds at its peak: the embeddings, the widest block, the logits. */
function inferenceValues(m: ModelConfig, batchSize: number): number {
  const oneLayer: ModelConfig = { ...m, denseLayers: m.sparseLayers > 0 ? 0 : 1, sparseLayers: m.sparseLayers > 0 ? 1 : 0, queryLayer: false };
  // One block's activations (a dense block when the model has no sparse one), plus the embeddings and the logits once.
  const R = batchSize * m.seqLen;
  return activationValues(oneLayer, batchSize, false) - R * m.vocabSize;
}

/**
 * Refuses an inference batch (eval, balance, extract) whose largest tensor
 * would pass 2^31 elements or whose activations would not fit beside the
 * loaded model. `flag` names the option ("--batch-size").
 */
export function checkBatchFits(model: { config: ModelConfig; parameterCount(): number }, batchSize: number, flag: string, available?: number): void {
  const m = model.config;
  const R = batchSize * m.seqLen;
  const Fe = m.experts?.width ?? m.ffnWidth;
  const widest = Math.max(m.vocabSize, m.ffnWidth, expertsPerToken(m) * Fe, sharedWidth(m));
  if (R * widest > 2 ** 31 - 1) {
    throw new SigmaError(
      `${flag} ${batchSize}: a batch of ${batchSize} × ${m.seqLen} tokens would make a ${R.toLocaleString("en-US")} × ${widest.toLocaleString("en-US")} activation, more than one tensor may hold (2^31 − 1)`,
      `lower ${flag} to ${Math.max(1, Math.floor((2 ** 31 - 1) / (m.seqLen * widest)))} or less`,
    );
  }
  const bytes = F32 * inferenceValues(m, batchSize);
  const have = (available ?? machineMemory().total) - F32 * model.parameterCount() - BASELINE;
  if (bytes > have) {
    throw new SigmaError(
      `${flag} ${batchSize}: a batch of ${batchSize} × ${m.seqLen} tokens needs about ${bytesText(bytes)} of memory beside the model, and the machine has ${bytesText(Math.max(0, have))} left`,
      `lower ${flag} to about ${Math.max(1, Math.floor((batchSize * Math.max(0, have)) / bytes))}`,
    );
  }
}

/**
 * Refuses to build a model for inference (generate, eval, balance, extract,
 * upcycle) whose weights alone would not fit in memory, before allocating
 * them; `source` names the file whose config asks for it.
 */
export function checkModelFits(m: ModelConfig, source: string, available?: number): void {
  const n = parameterCounts(m);
  const total = available ?? machineMemory().total;
  if (m.sparseLayers > 0 && n.stackedExperts > 2 ** 31 - 1) {
    throw new SigmaError(`${source}: a sparse layer's experts, stacked in RAM, would have ${n.stackedExperts.toLocaleString("en-US")} elements, more than one tensor may hold (2^31 − 1)`, "a model this large runs only with its experts in an expert store (training with store.enabled)");
  }
  const bytes = F32 * n.total + 4 * n.buffers + BASELINE;
  if (bytes > total) {
    const part = largestParts(n)[0]!;
    throw new SigmaError(`${source}: its config asks for ${n.total.toExponential(2)} parameters, about ${bytesText(bytes)} of memory, but the machine has ${bytesText(total)}`, `the largest part is ${part.what}; use a smaller model (model.${part.fields.join(".")})`);
  }
}
