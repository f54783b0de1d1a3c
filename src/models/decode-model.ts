/**
 * What the decode steps (src/models/decode-step.ts, src/models/dense-step.ts)
 * read of a PanguSigma — declared here, not imported: the model's forward
 * calls those files —, the key of what they derive from its stored
 * matrices, and the logits tensor they fill.
 */
import type { StoredMatrix } from "../backend/quant.js";
import type { MoeLayer } from "../moe/layer.js";
import type { Attention } from "../nn/attention.js";
import type { FeedForward, Norm } from "../nn/layers.js";
import { Tensor } from "../tensor/tensor.js";
import type { ModelConfig } from "./config.js";

/** A block as the decode steps read it. */
interface DecodeBlock {
  ln1: Norm;
  attn: Attention;
  ln2: Norm;
  ffn: FeedForward | null;
  moe: MoeLayer | null;
}
export interface DecodeModel {
  /** The token lookups' table when the output matrix is untied (the lookups then read these f32 rows). */
  readonly tokenEmbedding: Tensor;
  /** Non-null when the output matrix is untied (storedOutput is then its stored form). */
  readonly outputEmbedding: Tensor | null;
  readonly config: ModelConfig;
  readonly training: boolean;
  readonly blocks: readonly DecodeBlock[];
  readonly finalNorm: Norm;
  readonly queryLayer: { ln1: Norm; attn: Attention; ln2: Norm; ffn: FeedForward } | null;
  readonly queryEmbedding: Tensor | null;
  /** Null with rotary positions. */
  readonly positionEmbedding: Tensor | null;
  readonly storedOutput: StoredMatrix | null;
  readonly domainSlot: Int32Array;
}
/** [R, V] logits to be written in full: a view of `into` when it is a Float32Array with room, else a new tensor. */
export function logitsTensor(R: number, V: number, into?: Float32Array): Tensor {
  return into instanceof Float32Array && into.length >= R * V ? Tensor.from(into.length === R * V ? into : into.subarray(0, R * V), [R, V]) : Tensor.zeros([R, V]);
}


/**
 * What can change in a model after construction that the decode steps
 * derive things from: each Linear's and MoE layer's stored matrices, the
 * output matrix (quantizeModel and unquantizeModel replace them; stacking
 * q|k|v replaces the parts by views), an MoE layer's ECSS bank and shard.
 */
function storedStamp(model: DecodeModel): unknown[] {
  const out: unknown[] = [model.storedOutput];
  const attn = (a: Attention) => out.push(a.q.stored, a.k.stored, a.v.stored, a.o.stored);
  const ffn = (f: FeedForward | null) => f && out.push(f.fc1.stored, f.fc2.stored, f.fc3?.stored);
  for (const b of model.blocks) {
    attn(b.attn);
    ffn(b.ffn);
    if (b.moe) out.push(b.moe.stored, b.moe.sharedGate?.stored, b.moe.bank, b.moe.shard);
    ffn(b.moe?.shared ?? null);
  }
  if (model.queryLayer) {
    attn(model.queryLayer.attn);
    ffn(model.queryLayer.ffn);
  }
  return out;
}

const keys = new WeakMap<DecodeModel, unknown[]>();

/**
 * An object that stays the same while none of the model's stored matrices
 * changes (storedStamp): the key under which the decode steps keep what they
 * derive from them (whether the step covers the model; the native plan).
 */
export function storedKey(model: DecodeModel): object {
  const stamp = storedStamp(model);
  const was = keys.get(model);
  if (was && was.length === stamp.length && was.every((v, i) => v === stamp[i])) return was;
  keys.set(model, stamp);
  return stamp;
}
