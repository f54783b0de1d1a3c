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
import { backendFor } from "../backend/index.js";
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

/** How a model's KV caches store keys and values: f32, or f16 (half the bytes; decoding only). */
export const KV_FORMATS = ["f32", "f16"] as const;
export type KVFormat = (typeof KV_FORMATS)[number];

/**
 * One layer's cached keys and values as f16 bits: k, v [B, capacity, W]
 * (W = G·D); `length` positions filled. Written rounded to nearest (ties to
 * even) as rows arrive; attention reads them back exactly (backend
 * attentionHalf), so a step costs half the cache bytes of an f32 cache and
 * gives what attention over the rounded keys and values in f32 gives.
 * Decoding and evaluation only: it keeps no gradient.
 */
export interface HalfKVCache {
  readonly half: true;
  readonly k: Uint16Array;
  readonly v: Uint16Array;
  readonly B: number;
  readonly capacity: number;
  readonly width: number;
  length: number;
}

export function newHalfKVCache(B: number, capacity: number, W: number): HalfKVCache {
  return { half: true, k: new Uint16Array(B * capacity * W), v: new Uint16Array(B * capacity * W), B, capacity, width: W, length: 0 };
}

/** A layer's cache in either format. */
export type LayerCache = KVCache | HalfKVCache;

/**
 * Appends B sequences × T new rows of keys and values ([B·T, W] each, f32)
 * to an f16 cache at its length (rounded to f16), then writes into `out`
 * [B·T, H·D] the attention of q [B·T, H·D] over everything cached; lse [B·H·T] is scratch.
 */
export function attendHalf(cache: HalfKVCache, out: Float32Array, lse: Float32Array, q: Float32Array, k: Float32Array, v: Float32Array, B: number, T: number, heads: number, D: number): void {
  const { capacity: cap, width: W } = cache;
  if (B !== cache.B) throw new RangeError(`KV cache holds ${cache.B} sequences, the step has ${B}`);
  if (cache.length + T > cap) throw new RangeError(`KV cache full: ${cache.length} + ${T} positions exceed its capacity ${cap}`);
  const be = backendFor(q);
  for (let b = 0; b < B; b++) {
    const dst = (b * cap + cache.length) * W;
    be.toHalf(cache.k.subarray(dst, dst + T * W), k.subarray(b * T * W), T * W);
    be.toHalf(cache.v.subarray(dst, dst + T * W), v.subarray(b * T * W), T * W);
  }
  cache.length += T;
  be.attentionHalf(out, lse, q, cache.k, cache.v, B, T, cache.length, heads, D, cap, 1 / Math.sqrt(D), W / D);
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
  forward(xq: Tensor, xkv: Tensor, cache?: LayerCache | AttentionCache, positions?: Int32Array): Tensor {
    const q = this.position(this.q.forward(xq), this.qNorm, this.heads, positions);
    const k = this.position(this.k.forward(xkv), this.kNorm, this.kvHeads, positions);
    const v = this.v.forward(xkv);
    if (!cache) return this.o.forward(ops.attention(q, k, v, { heads: this.heads }));
    if ("attend" in cache) return this.o.forward(noGrad(() => cache.attend(q, k, v, this.heads)));
    if ("half" in cache) {
      return noGrad(() => {
        if (q.dtype !== "float32") throw new RangeError("an f16 KV cache serves float32 models only");
        const [B, T] = q.shape as [number, number, number];
        const out = Tensor.zeros(q.shape);
        attendHalf(cache, out.data as Float32Array, new Float32Array(B * this.heads * T), q.data as Float32Array, k.data as Float32Array, v.data as Float32Array, B, T, this.heads, this.headDim);
        return this.o.forward(out);
      });
    }
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
