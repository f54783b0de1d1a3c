/**
 * Causal multi-head attention with separate q/k/v/o projections (PanGu-α's
 * layout), for self-attention and for the query layer (whose queries come
 * from elsewhere). A KV cache makes decoding incremental.
 */
import { noGrad } from "../autograd/tape.js";
import * as ops from "../ops/index.js";
import { Tensor } from "../tensor/tensor.js";
import { Linear, type InitOptions } from "./layers.js";
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

export class Attention extends Module {
  readonly q: Linear;
  readonly k: Linear;
  readonly v: Linear;
  readonly o: Linear;
  constructor(readonly width: number, readonly heads: number, init: InitOptions, outStd?: number) {
    super();
    this.q = this.child("q", new Linear(width, width, init));
    this.k = this.child("k", new Linear(width, width, init));
    this.v = this.child("v", new Linear(width, width, init));
    this.o = this.child("o", new Linear(width, width, { ...init, std: outStd ?? init.std }));
  }

  /**
   * xq: [B,Tq,C] (queries' source), xkv: [B,Tq,C] (keys' and values' source, same positions).
   * Without a cache, all Tq positions attend causally among themselves. With a
   * cache (inference only), the new keys/values are appended at cache.length
   * and the queries attend to everything cached so far; an AttentionCache
   * does both itself.
   */
  forward(xq: Tensor, xkv: Tensor, cache?: KVCache | AttentionCache): Tensor {
    const q = this.q.forward(xq);
    const k = this.k.forward(xkv);
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
