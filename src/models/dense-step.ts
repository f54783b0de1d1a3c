/**
 * The decode step of a dense model in one native call
 * (docs/decode.md#the-native-dense-step; native/src/kernels/dense_step.cpp).
 *
 * src/models/decode-step.ts runs a step as two dozen kernel calls with
 * TypeScript between them. On a model whose step reads megabytes that is
 * nothing; on a small one — a speculative draft of a few hundred thousand
 * weights — crossing into the addon, checking each call's arguments and the
 * code between the calls were most of the step (a width-64 two-layer draft:
 * ~47 µs a token, ~12 µs of it in its products). For a model without MoE
 * layers the addon runs the whole step — embeddings, blocks, the final
 * norm, PanGu's query layer, the picked rows' logits — on the same kernels
 * in the same order, so its logits are the TypeScript step's.
 *
 * A plan is made on a model's first step (the addon checks every weight's
 * type and size against the config once and holds the arrays) and made
 * again when a matrix was converted anew (quantizeModel): it is kept under
 * the key of the model's stored matrices (decode-model.ts's storedKey). The weights
 * stay the model's; each step the addon takes their pointers again and
 * checks them again. q8 and q4 matrices get a packed copy for the integer
 * kernels inside the plan (as decode.ts keeps one per matrix), made on the
 * first step that reads it.
 *
 * It declines (returns null, and the TypeScript step runs) an MoE layer,
 * an f16 KV cache, norms with different eps, matrices of mixed formats, or an
 * addon without it.
 */
import { getBackend } from "../backend/index.js";
import { loadNative } from "../backend/native/index.js";
import type { StoredMatrix, WeightFormat } from "../backend/quant.js";
import type { LayerCache } from "../nn/attention.js";
import { LayerNorm, type Linear, type Norm, RMSNorm } from "../nn/layers.js";
import type { Attention } from "../nn/attention.js";
import type { FeedForward } from "../nn/layers.js";
import type { Tensor } from "../tensor/tensor.js";
import { headDim, kvHeads } from "./config.js";
import { logitsTensor, storedKey, type DecodeModel } from "./decode-model.js";
import { fused } from "./fuse.js";

/** The addon's two functions (native/src/napi/dense_napi.cpp). */
interface DenseAddon {
  densePlan(dims: Int32Array, nums: Float64Array, arrays: (ArrayBufferView | null)[]): object;
  denseStep(plan: object, embed: Int32Array, slot: Int32Array, pos: Int32Array, caches: Float32Array[], length: number, B: number, T: number, cap: number, pick: Int32Array, logits: Float32Array): void;
}

const FORMAT_CODES: Record<WeightFormat, number> = { f32: 0, bf16: 1, f16: 2, q8: 3, q4: 4 };

/** The addon's plan of a model under its stored matrices' key (decode-model.ts's storedKey); null: a model it does not run. */
const plans = new WeakMap<object, object | null>();

let enabled = true;

/** Turns the native dense step on or off (on by default; off, the TypeScript step runs). Returns the previous setting. For tests and benchmarks. */
export function useDenseStep(on: boolean): boolean {
  const was = enabled;
  enabled = on;
  return was;
}

let runs = 0;
/** How many steps the native dense step has run in this process. For tests and benchmarks. */
export const denseStepRuns = (): number => runs;

function addon(): DenseAddon | null {
  if (getBackend().name !== "native") return null;
  const a = loadNative().backend as unknown as Partial<DenseAddon> | null;
  return a && typeof a.densePlan === "function" && typeof a.denseStep === "function" ? (a as DenseAddon) : null;
}

const data = (t: Tensor | null): Float32Array | null => (t ? (t.data as Float32Array) : null);
const matrixArrays = (m: StoredMatrix): (ArrayBufferView | null)[] => [m.data, m.scales, m.mins];

/** The plan's dims, nums and arrays for `model` (see dense_napi.cpp), or null when the model is not one it runs. */
function describe(model: DecodeModel): { dims: Int32Array; nums: Float64Array; arrays: (ArrayBufferView | null)[] } | null {
  const c = model.config;
  if (model.blocks.some((b) => b.moe || !b.ffn)) return null;
  const layers: { ln1: Norm; attn: Attention; ln2: Norm; ffn: FeedForward; query: boolean }[] = model.blocks.map((b) => ({ ln1: b.ln1, attn: b.attn, ln2: b.ln2, ffn: b.ffn!, query: false }));
  if (model.queryLayer) layers.push({ ...model.queryLayer, query: true });
  const norms: Norm[] = [...layers.flatMap((l) => [l.ln1, l.ln2, ...(l.attn.qNorm ? [l.attn.qNorm] : []), ...(l.attn.kNorm ? [l.attn.kNorm] : [])]), model.finalNorm];
  const rms = model.finalNorm instanceof RMSNorm;
  const eps = norms[0]!.eps;
  // Per-head q/k norms are RMSNorms whatever the block's norm; the others all one kind, and one eps throughout.
  const blockNorms = [...layers.flatMap((l) => [l.ln1, l.ln2]), model.finalNorm];
  if (blockNorms.some((n) => (n instanceof RMSNorm) !== rms || !(n instanceof RMSNorm || n instanceof LayerNorm)) || norms.some((n) => n.eps !== eps)) return null;
  const format = model.storedOutput!.format;
  const arrays: (ArrayBufferView | null)[] = [];
  const linear = (l: Linear): StoredMatrix => l.stored!;
  const ffnKind = layers[0]!.ffn.kind;
  const act = layers[0]!.ffn.activation;
  for (const l of layers) {
    const a = l.attn;
    if (l.ffn.kind !== ffnKind || (ffnKind === "gelu" && l.ffn.activation !== act)) return null;
    const kv = l.query ? fused([a.k, a.v]) : fused([a.q, a.k, a.v]);
    const f1 = l.ffn.fc3 ? fused([l.ffn.fc1, l.ffn.fc3]) : { matrix: linear(l.ffn.fc1), bias: data(l.ffn.fc1.bias) };
    const mats = [kv.matrix, linear(a.o), f1.matrix, linear(l.ffn.fc2), ...(l.query ? [linear(a.q)] : [])];
    if (mats.some((m) => m.format !== format)) return null;
    const gammaBeta = (n: Norm) => [data(n.gamma), n instanceof LayerNorm ? data(n.beta) : null];
    arrays.push(
      ...gammaBeta(l.ln1),
      ...matrixArrays(kv.matrix), kv.bias,
      ...(l.query ? matrixArrays(linear(a.q)) : [null, null, null]), l.query ? data(a.q.bias) : null,
      a.qNorm ? data(a.qNorm.gamma) : null, a.kNorm ? data(a.kNorm.gamma) : null,
      ...matrixArrays(linear(a.o)), data(a.o.bias),
      ...gammaBeta(l.ln2),
      ...matrixArrays(f1.matrix), f1.bias,
      ...matrixArrays(linear(l.ffn.fc2)), data(l.ffn.fc2.bias),
    );
  }
  const fn = model.finalNorm;
  arrays.push(
    data(fn.gamma), fn instanceof LayerNorm ? data(fn.beta) : null,
    ...matrixArrays(model.storedOutput!),
    model.outputEmbedding ? data(model.tokenEmbedding) : null,
    data(model.positionEmbedding),
    data(model.queryEmbedding),
  );
  const theta = layers[0]!.attn.ropeTheta;
  const dims = Int32Array.of(
    c.vocabSize, c.width, c.embeddingSlots, c.heads, kvHeads(c), headDim(c), c.ffnWidth, layers.length,
    rms ? 1 : 0, theta !== null ? 1 : 0, ffnKind === "swiglu" ? 1 : 0, act === "gelu" ? 2 : 1, FORMAT_CODES[format], c.seqLen, model.queryLayer ? 1 : 0, model.outputEmbedding ? 0 : 1,
  );
  return { dims, nums: Float64Array.of(eps, theta ?? 10000), arrays };
}

/** The addon's plan for `model`, made on first use and again when it was converted anew; null when it does not run the model. */
function planFor(a: DenseAddon, model: DecodeModel): object | null {
  const was = plans.get(storedKey(model));
  if (was !== undefined) return was;
  const described = describe(model);
  const plan = described ? a.densePlan(described.dims, described.nums, described.arrays) : null;
  // Under the key as it is now: describe() stacks q|k|v, which replaces the parts' stored matrices by views.
  plans.set(storedKey(model), plan);
  return plan;
}

/** What the TypeScript step has computed of the call before the blocks (decode-step.ts's Work). */
export interface DenseRows {
  embedIds: Int32Array;
  slotOf: Int32Array;
  posIds: Int32Array;
}

/**
 * The logits [pick.length, V] of the rows `pick` names after B sequences × T
 * new positions through the model, their keys and values appended to
 * `layers` and `query` at their length (the lengths advanced); null when
 * this step does not run the model or the caches (the TypeScript step then
 * runs).
 */
export function denseStep(model: DecodeModel, rows: DenseRows, layers: readonly LayerCache[], query: LayerCache, B: number, T: number, pick: Int32Array, into?: Float32Array): Tensor | null {
  if (!enabled) return null;
  const a = addon();
  if (!a) return null;
  const plan = planFor(a, model);
  if (!plan) return null;
  const L = layers.length + (model.queryLayer ? 1 : 0);
  const arrays: Float32Array[] = new Array(2 * L);
  const length = layers[0]!.length;
  let cap = 0;
  for (let l = 0; l < L; l++) {
    const c = l < layers.length ? layers[l]! : query;
    if ("half" in c || c.length !== length || c.k.dtype !== "float32" || c.k.dim(0) !== B || (l > 0 && c.k.dim(1) !== cap)) return null;
    arrays[2 * l] = c.k.data as Float32Array;
    arrays[2 * l + 1] = c.v.data as Float32Array;
    cap = c.k.dim(1);
  }
  // As the TypeScript step says it (attentionInto), before anything is written.
  if (length + T > cap) throw new RangeError(`KV cache full: ${length} + ${T} positions exceed its capacity ${cap}`);
  const logits = logitsTensor(pick.length, model.config.vocabSize, into);
  a.denseStep(plan, rows.embedIds, rows.slotOf, rows.posIds, arrays, length, B, T, cap, pick, logits.data as Float32Array);
  for (let l = 0; l < L; l++) (l < layers.length ? layers[l]! : query).length += T;
  runs++;
  return logits;
}
