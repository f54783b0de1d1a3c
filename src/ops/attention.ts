/** Fused causal multi-head attention. */
import { gradOf, isGradEnabled, record } from "../autograd/tape.js";
import { shapeStr } from "../tensor/shape.js";
import type { Tensor } from "../tensor/tensor.js";
import { be, empty, expectNdim, sameDtype } from "./util.js";
import { repeatHeads } from "./block.js";

export interface AttentionOptions {
  /** Number of heads H; D = C / H. */
  heads: number;
  /** Keys in use (Tk); defaults to k's time dimension. Queries sit at the last Tq of these positions. */
  keys?: number;
  /** Score scale; defaults to 1/sqrt(D). */
  scale?: number;
}

/**
 * q: [B,Tq,C]; k, v: [B,kvCap,C] (C = H·D) of which the first Tk positions are
 * used; returns [B,Tq,C]. Query i attends to keys 0..Tk−Tq+i. In training
 * q, k and v all have T positions; decoding passes the KV cache as k and v.
 *
 * Grouped-query attention: k and v may hold G < H heads ([B,kvCap,G·D], G
 * dividing H); query head h then reads key head ⌊h/(H/G)⌋. The G heads are
 * read in place by the kernel when no gradient is kept (decoding,
 * evaluation), and repeated to H (repeatHeads, differentiable) before it in
 * training; either way a cache stores only G heads per position.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Tensor {
  sameDtype("attention", q, k, v);
  expectNdim("attention", "q", q, 3);
  expectNdim("attention", "k", k, 3);
  expectNdim("attention", "v", v, 3);
  const [B, Tq, C] = q.shape as [number, number, number];
  const kvCap = k.dim(1);
  const H = opts.heads;
  if (!Number.isInteger(H) || H < 1 || C % H !== 0) throw new RangeError(`attention: heads = ${H} must divide the width C = ${C}`);
  const D = C / H;
  // G key/value heads: H, or fewer for grouped-query attention (G·D wide, G dividing H).
  const W = k.dim(2);
  const G = W !== C && W % D === 0 && H % (W / D) === 0 ? W / D : H;
  if (k.dim(0) !== B || W !== G * D || v.dim(0) !== B || v.dim(1) !== kvCap || v.dim(2) !== W) {
    throw new RangeError(`attention: k ${shapeStr(k.shape)} and v ${shapeStr(v.shape)} must both be [${B},kvCap,${C}] (or [${B},kvCap,G·${D}] with G dividing ${H}) to match q ${shapeStr(q.shape)}`);
  }
  const Tk = opts.keys ?? kvCap;
  if (Tk < Tq || Tk > kvCap) throw new RangeError(`attention: keys = ${Tk} must lie between Tq = ${Tq} and the cache size ${kvCap}`);
  // Grouped heads with a gradient to keep (training): repeated to H first; the backward sums the copies.
  const grad = isGradEnabled() && (q.requiresGrad || k.requiresGrad || v.requiresGrad);
  if (G !== H && grad) return attention(q, repeatHeads(k, G, H, Tk), repeatHeads(v, G, H, Tk), { ...opts, keys: Tk });
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const out = empty(q, [B, Tq, C]);
  const lse = empty(q, [B, H, Tq]);
  // Without a gradient the kernel reads the G heads in place (decoding, evaluation).
  if (G !== H) be(q).attention(out.data, lse.data, q.data, k.data, v.data, B, Tq, Tk, H, D, kvCap, scale, G);
  else be(q).attention(out.data, lse.data, q.data, k.data, v.data, B, Tq, Tk, H, D, kvCap, scale);
  record(out, [q, k, v], (g) => {
    const dq = q.requiresGrad ? gradOf(q).data : empty(q, q.shape).data;
    const dk = k.requiresGrad ? gradOf(k).data : empty(k, k.shape).data;
    const dv = v.requiresGrad ? gradOf(v).data : empty(v, v.shape).data;
    be(q).attentionBackward(dq, dk, dv, g.data, q.data, k.data, v.data, out.data, lse.data, B, Tq, Tk, H, D, kvCap, scale);
  });
  return out;
}
