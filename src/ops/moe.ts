/**
 * MoE data movement: route → permute → grouped matmul → unpermute.
 * permuteByExpert sorts token-expert assignments by expert; gatherRows brings
 * the tokens into that order; combine weighs the expert outputs and adds them
 * back to their tokens. gather and scatter-add are each other's backward.
 */
import { gradOf, record } from "../autograd/tape.js";
import type { Backend } from "../backend/backend.js";
import { getBackend } from "../backend/index.js";
import { shapeStr } from "../tensor/shape.js";
import type { Tensor } from "../tensor/tensor.js";
import { be, empty, expectNdim, expectShape, sameDtype } from "./util.js";

export interface Permutation {
  /** order[p] = the assignment at sorted position p (stable within each expert). */
  order: Int32Array;
  /** offsets[e] = first sorted position of expert e; offsets[E] = number of assignments. */
  offsets: Int32Array;
}

/** Stable sort of assignments by expert id (not differentiable: integers only). */
export function permuteByExpert(expertIds: Int32Array, E: number, backend: Backend = getBackend()): Permutation {
  const n = expertIds.length;
  const order = new Int32Array(n);
  const offsets = new Int32Array(E + 1);
  backend.permuteByExpert(order, offsets, expertIds, n, E);
  return { order, offsets };
}

/** out[i] = x[idx[i]] for x [rows, C]; returns [idx.length, C]. */
export function gatherRows(x: Tensor, idx: Int32Array): Tensor {
  expectNdim("gatherRows", "x", x, 2);
  const C = x.dim(1);
  const n = idx.length;
  const y = empty(x, [n, C]);
  be(x).gatherRows(y.data, x.data, idx, n, C);
  record(y, [x], (g) => be(x).scatterAddRows(gradOf(x).data, g.data, idx, n, C));
  return y;
}

/**
 * y[idx[i]] += w[i]·x[i], y starting at zero: the weighted return of expert
 * outputs x [n, C] to `rows` tokens. w: [n].
 */
export function combine(x: Tensor, idx: Int32Array, w: Tensor, rows: number): Tensor {
  sameDtype("combine", x, w);
  expectNdim("combine", "x", x, 2);
  const [n, C] = [x.dim(0), x.dim(1)];
  if (idx.length !== n) throw new RangeError(`combine: idx has ${idx.length} entries for ${n} rows of x ${shapeStr(x.shape)}`);
  expectShape("combine", "w", w, [n]);
  const y = empty(x, [rows, C]);
  be(x).combine(y.data, x.data, idx, w.data, n, C);
  record(y, [x, w], (g) => {
    const dx = x.requiresGrad ? gradOf(x).data : empty(x, x.shape).data;
    const dw = w.requiresGrad ? gradOf(w).data : empty(w, w.shape).data;
    be(x).combineBackward(dx, dw, g.data, x.data, idx, w.data, n, C);
  });
  return y;
}
