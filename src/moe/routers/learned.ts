/**
 * Pieces shared by the learned routers (MoGE, top-k): weight picking, the
 * balance loss, top-k selection, the router matrix, and the extraction
 * helpers.
 */
import { isGradEnabled } from "../../autograd/tape.js";
import { backendFor } from "../../backend/index.js";
import * as ops from "../../ops/index.js";
import { Tensor } from "../../tensor/tensor.js";
import type { BatchSlice } from "../routing.js";
import type { ModelView, RouterTensor } from "./router.js";

/**
 * Where no gradient flows back through the router (decoding, evaluation,
 * anything under noGrad), its scores are computed by the same kernels on
 * plain buffers, without the ops' tensors, checks and tape: the same
 * numbers, for a few microseconds a layer instead of tens. This decides.
 */
const untracked = (...ts: Tensor[]): boolean => !isGradEnabled() || ts.every((t) => !t.requiresGrad);

/** The router's logits x·Wᵀ [R, E] (W [E, C]) and their softmax over the experts. */
export function gateScores(x: Tensor, w: Tensor): { logits: Tensor; probs: Tensor } {
  if (!untracked(x, w)) {
    const logits = ops.linear(x, w);
    return { logits, probs: ops.softmax(logits) };
  }
  const [E, C] = w.shape as [number, number];
  if (x.dtype !== w.dtype) throw new TypeError(`router: mixed dtypes ${x.dtype} and ${w.dtype}`);
  if (x.dim(-1) !== C) throw new RangeError(`router: x [${x.shape.join(", ")}] does not end in its matrix's input size ${C} (the matrix is [${E}, ${C}])`);
  const R = x.size / C;
  const k = backendFor(x.data);
  const logits = Tensor.zeros([R, E], x.dtype);
  const probs = Tensor.zeros([R, E], x.dtype);
  k.matmul(logits.data, x.data, w.data, R, E, C, false, true, false); // as ops.linear
  k.softmax(probs.data, logits.data, R, E); // as ops.softmax
  return { logits, probs };
}

/**
 * Picks entries of a [R, N] tensor: out[i] = m[rows[i]·N + cols[i]] given the
 * flat indices, as a differentiable [n] tensor.
 */
export function pick(m: Tensor, flat: Int32Array): Tensor {
  if (untracked(m)) {
    const out = Tensor.zeros([flat.length], m.dtype);
    for (let i = 0; i < flat.length; i++) out.data[i] = m.data[flat[i]!]!;
    return out;
  }
  return ops.reshape(ops.gatherRows(ops.reshape(m, [m.size, 1]), flat), [flat.length]);
}

/** softmax over each row of k of a flat [R·k] tensor (renormalized top-k weights), as a flat [R·k] tensor. */
export function softmaxRows(t: Tensor, k: number): Tensor {
  const R = t.size / k;
  if (untracked(t)) {
    const out = Tensor.zeros([R * k], t.dtype);
    backendFor(t.data).softmax(out.data, t.data, R, k); // as ops.softmax
    return out;
  }
  return ops.reshape(ops.softmax(ops.reshape(t, [R, k])), [R * k]);
}

/**
 * Balance loss α·E·Σ_i f_i·P_i (Switch / GShard; Pangu Pro MoE's batch-level
 * form). f_i = kept assignments of expert i / (R·k), so Σ f = 1 [ours]; P_i is
 * the mean router probability of expert i over the batch. Equals α when both
 * are uniform. Only P carries a gradient.
 *
 * Over a batch split between ranks (`slice`), f comes from every rank's
 * counts (summed across them) and R is the whole batch's rows; this rank's P
 * sums only its own rows' probabilities, over the whole batch's R. The
 * result is this rank's share: the shares sum to the one-process loss, and
 * each one's gradient is exactly the part that flows into this rank's rows.
 */
export function balanceLoss(probs: Tensor, counts: Int32Array, k: number, alpha: number, slice?: BatchSlice): Tensor | null {
  if (alpha === 0) return null;
  const [R, E] = probs.shape as [number, number];
  let total: ArrayLike<number> = counts;
  let rows = R;
  if (slice) {
    total = Float64Array.from(counts);
    slice.comm.allreduce(total as Float64Array);
    rows = slice.rows;
  }
  const meanRow = Tensor.full([1, R], 1 / rows, probs.dtype);
  const P = ops.matmul(meanRow, probs); // [1, E]
  const f = Tensor.zeros([1, E], probs.dtype);
  for (let e = 0; e < E; e++) f.data[e] = total[e]! / Math.max(rows * k, 1);
  return ops.scale(ops.sum(ops.mul(P, f)), alpha * E);
}

/** Indices of the k largest of v[from..to), largest first; ties go to the lower index. */
export function topIndices(v: ArrayLike<number>, from: number, to: number, k: number, out: number[]): void {
  out.length = 0;
  for (let i = from; i < to; i++) {
    let pos = out.length;
    while (pos > 0 && v[out[pos - 1]!]! < v[i]!) pos--;
    if (pos < k) {
      out.splice(pos, 0, i);
      if (out.length > k) out.pop();
    }
  }
}

/** The learned router's matrix W [E, C], saved as router.weight. */
export function routerMatrix(model: ModelView): RouterTensor {
  return { name: "weight", elements: model.experts * model.width, buffer: false, what: "the router [experts.count, width]", fields: [["experts", "count"], ["width"]], fix: "lower experts.count or width" };
}

/** Extraction: rows `kept` of `from` [E, …] into `to` [kept.length, …], in order. */
export function copyRows(to: Tensor, from: Tensor, kept: readonly number[]): void {
  const n = from.size / from.dim(0);
  kept.forEach((e, i) => to.data.set(from.data.subarray(e * n, (e + 1) * n), i * n));
}

/** Extraction by usage: the `n` most used of `ids` (ties to the lower id), ascending. */
export function mostUsed(usage: Float64Array, ids: number[], n: number): number[] {
  return [...ids].sort((a, b) => usage[b]! - usage[a]! || a - b).slice(0, n).sort((a, b) => a - b);
}
