/** Fused causal multi-head attention. */
import { gradOf, record } from "../autograd/tape.js";
import { shapeStr } from "../tensor/shape.js";
import type { Tensor } from "../tensor/tensor.js";
import { be, empty, expectNdim, sameDtype } from "./util.js";

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
  if (k.dim(0) !== B || k.dim(2) !== C || v.dim(0) !== B || v.dim(1) !== kvCap || v.dim(2) !== C) {
    throw new RangeError(`attention: k ${shapeStr(k.shape)} and v ${shapeStr(v.shape)} must both be [${B},kvCap,${C}] to match q ${shapeStr(q.shape)}`);
  }
  const Tk = opts.keys ?? kvCap;
  if (Tk < Tq || Tk > kvCap) throw new RangeError(`attention: keys = ${Tk} must lie between Tq = ${Tq} and the cache size ${kvCap}`);
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const out = empty(q, [B, Tq, C]);
  const lse = empty(q, [B, H, Tq]);
  be(q).attention(out.data, lse.data, q.data, k.data, v.data, B, Tq, Tk, H, D, kvCap, scale);
  record(out, [q, k, v], (g) => {
    const dq = q.requiresGrad ? gradOf(q).data : empty(q, q.shape).data;
    const dk = k.requiresGrad ? gradOf(k).data : empty(k, k.shape).data;
    const dv = v.requiresGrad ? gradOf(v).data : empty(v, v.shape).data;
    be(q).attentionBackward(dq, dk, dv, g.data, q.data, k.data, v.data, out.data, lse.data, B, Tq, Tk, H, D, kvCap, scale);
  });
  return out;
}
