/**
 * Causal multi-head attention with separate q/k/v/o projections (PanGu-α's
 * layout), for self-attention and for the query layer (whose queries come
 * from elsewhere). A KV cache makes decoding incremental.
 *
 * The block options (docs/design.md §1.7), all off by default:
 *   kvHeads G < H     grouped-query attention: k and v have G heads of D, each
 *                     serving H/G query heads; caches hold only those G heads
 *   headDim D         the head size when it is not C/H (Qwen3): q is H·D wide
 *   bias              "all" (PanGu, GPT-2), "qkv" (Qwen2: no bias on o), "none" (Llama)
 *   qkNorm            an RMSNorm over each head's q and k (gain [D], shared by
 *                     the heads), before the rotation (Qwen3)
 *   rope θ            q and k turned by their rows' positions (ops.rope: the
 *                     Hugging Face rotate_half pairing i ↔ i + D/2), before
 *                     the keys enter a cache — so cached keys keep the
 *                     position they were computed at
 */
import { noGrad } from "../autograd/tape.js";
import * as ops from "../ops/index.js";
import { Tensor } from "../tensor/tensor.js";
import { Linear, RMSNorm, type InitOptions } from "./layers.js";
import { Module } from "./module.js";

/** One layer's cached keys and values: k, v [B, capacity, C]; `length` positions filled. */
export interface KVCache {
  k: Tensor;
  v: Tensor;
  length: number;
}

/**
 * A cache that stores keys and values its own way and attends itself: given
 * the new rows' q, k, v ([1, R, C]), it keeps k and v and returns each
 * row's attention over the positions its own sequence has cached ([1, R, C],
 * before the output projection). The server's paged pool (src/serve/kv-pool.ts)
 * is one: R rows from several sequences of different lengths in one step.
 */
export interface AttentionCache {
  attend(q: Tensor, k: Tensor, v: Tensor, heads: number): Tensor;
}

export function newKVCache(B: number, capacity: number, C: number, dtype: Tensor["dtype"] = "float32"): KVCache {
  return { k: Tensor.zeros([B, capacity, C], dtype), v: Tensor.zeros([B, capacity, C], dtype), length: 0 };
}

export const ATTENTION_BIASES = ["all", "qkv", "none"] as const;
export type AttentionBias = (typeof ATTENTION_BIASES)[number];

/** The block options of attention (all optional; the defaults are PanGu's). */
export interface AttentionOptions {
  /** G: key/value heads (default H). */
  kvHeads?: number;
  /** D: head size (default C/H). */
  headDim?: number;
  bias?: AttentionBias;
  /** RMSNorm over each head's q and k, with this eps; null/absent = off. */
  qkNorm?: { eps: number } | null;
  /** Rotary positions with base θ; null/absent = none (learned positions are added to the input instead). */
  rope?: { theta: number } | null;
}

export class Attention extends Module {
  readonly q: Linear;
  readonly k: Linear;
  readonly v: Linear;
  readonly o: Linear;
  readonly qNorm: RMSNorm | null;
  readonly kNorm: RMSNorm | null;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly ropeTheta: number | null;
  constructor(readonly width: number, readonly heads: number, init: InitOptions, outStd?: number, opts: AttentionOptions = {}) {
    super();
    const D = opts.headDim ?? width / heads;
    const G = opts.kvHeads ?? heads;
    if (!(Number.isInteger(D) && D >= 1)) throw new RangeError(`Attention: head size ${D} is not a positive integer`);
    if (!(Number.isInteger(G) && G >= 1 && heads % G === 0)) throw new RangeError(`Attention: ${G} key/value heads do not divide ${heads} heads`);
    this.headDim = D;
    this.kvHeads = G;
    this.ropeTheta = opts.rope?.theta ?? null;
    const bias = opts.bias ?? "all";
    const qkvBias = bias !== "none";
    this.q = this.child("q", new Linear(width, heads * D, init, qkvBias));
    this.k = this.child("k", new Linear(width, G * D, init, qkvBias));
    this.v = this.child("v", new Linear(width, G * D, init, qkvBias));
    this.o = this.child("o", new Linear(heads * D, width, { ...init, std: outStd ?? init.std }, bias === "all"));
    const dtype = init.dtype ?? "float32";
    this.qNorm = opts.qkNorm ? this.child("qNorm", new RMSNorm(D, opts.qkNorm.eps, dtype)) : null;
    this.kNorm = opts.qkNorm ? this.child("kNorm", new RMSNorm(D, opts.qkNorm.eps, dtype)) : null;
  }

  /** Width of the keys (and values) one position stores in a cache: G·D. */
  get kvWidth(): number {
    return this.kvHeads * this.headDim;
  }

  /** q or k after the per-head norm and the rotation (each when on); `heads` of D per row. */
  private position(x: Tensor, norm: RMSNorm | null, heads: number, positions: Int32Array | undefined): Tensor {
    let y = x;
    if (norm) {
      const shape = y.shape;
      y = ops.reshape(norm.forward(ops.reshape(y, [-1, this.headDim])), shape);
    }
    if (this.ropeTheta !== null) {
      if (!positions) throw new Error("Attention: rotary positions need each row's position");
      y = ops.rope(y, positions, heads, this.ropeTheta);
    }
    return y;
  }

  /**
   * xq: [B,Tq,C] (queries' source), xkv: [B,Tq,C] (keys' and values' source, same positions).
   * Without a cache, all Tq positions attend causally among themselves. With a
   * cache (inference only), the new keys/values are appended at cache.length
   * and the queries attend to everything cached so far; an AttentionCache
   * does both itself. `positions` [B·Tq]: each row's position (rotary
   * positions only; the queries' and the keys' rows are the same positions).
   */
  forward(xq: Tensor, xkv: Tensor, cache?: KVCache | AttentionCache, positions?: Int32Array): Tensor {
    const q = this.position(this.q.forward(xq), this.qNorm, this.heads, positions);
    const k = this.position(this.k.forward(xkv), this.kNorm, this.kvHeads, positions);
    const v = this.v.forward(xkv);
    if (!cache) return this.o.forward(ops.attention(q, k, v, { heads: this.heads }));
    if ("attend" in cache) return this.o.forward(noGrad(() => cache.attend(q, k, v, this.heads)));
    return noGrad(() => {
      const [B, Tn, C] = k.shape as [number, number, number];
      const cap = cache.k.dim(1);
      if (cache.length + Tn > cap) throw new RangeError(`KV cache full: ${cache.length} + ${Tn} positions exceed its capacity ${cap}`);
      for (let b = 0; b < B; b++) {
        const src = b * Tn * C;
        const dst = (b * cap + cache.length) * C;
        cache.k.data.set(k.data.subarray(src, src + Tn * C), dst);
        cache.v.data.set(v.data.subarray(src, src + Tn * C), dst);
      }
      cache.length += Tn;
      return this.o.forward(ops.attention(q, cache.k, cache.v, { heads: this.heads, keys: cache.length }));
    });
  }
}
