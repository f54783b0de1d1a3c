/**
 * What the decode steps (src/models/decode-step.ts, src/models/dense-step.ts)
 * read of a PanguSigma — declared here, not imported: the model's forward
 * calls those files — and the logits tensor they fill.
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
/** [R, V] logits to be written in full: a view of `into` when it has room, else a new tensor. */
export function logitsTensor(R: number, V: number, into?: Float32Array): Tensor {
  return into && into.length >= R * V ? Tensor.from(into.length === R * V ? into : into.subarray(0, R * V), [R, V]) : Tensor.zeros([R, V]);
}

