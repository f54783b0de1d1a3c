/**
 * Matrix products: matmul, linear, bmm, groupedMatmul (the MoE expert product).
 *
 * matmul, linear and groupedMatmul take a precision: "f32" (the default), or
 * "bf16" — the inputs of every product rounded to bfloat16, summed in f32
 * (Backend.matmulBf16 and its grouped twins), in the forward pass and in both
 * gradient products of the backward pass. Outputs and gradients stay f32.
 */
import { gradOf, record } from "../autograd/tape.js";
import type { Backend, Precision } from "../backend/backend.js";
import { Tensor } from "../tensor/tensor.js";
import { shapeStr } from "../tensor/shape.js";
import { be, empty, expectNdim, expectShape, sameDtype } from "./util.js";

/** The backend's matmul, or its bf16-input twin. */
function mm(k: Backend, precision: Precision): Backend["matmul"] {
  return precision === "bf16" ? (...args) => k.matmulBf16(...args) : (...args) => k.matmul(...args);
}

/** The backend's grouped product and its weight gradient, or their bf16-input twins. */
function grouped(k: Backend, precision: Precision): [Backend["groupedMatmul"], Backend["groupedMatmulWeightGrad"]] {
  return precision === "bf16"
    ? [(...args) => k.groupedMatmulBf16(...args), (...args) => k.groupedMatmulWeightGradBf16(...args)]
    : [(...args) => k.groupedMatmul(...args), (...args) => k.groupedMatmulWeightGrad(...args)];
}

/**
 * C = op(A)·op(B) for 2-D tensors. op(A) is [M,K] (A is [K,M] when transA);
 * op(B) is [K,N] (B is [N,K] when transB).
 */
export function matmul(a: Tensor, b: Tensor, transA = false, transB = false, precision: Precision = "f32"): Tensor {
  sameDtype("matmul", a, b);
  expectNdim("matmul", "a", a, 2);
  expectNdim("matmul", "b", b, 2);
  const [M, Ka] = transA ? [a.dim(1), a.dim(0)] : [a.dim(0), a.dim(1)];
  const [Kb, N] = transB ? [b.dim(1), b.dim(0)] : [b.dim(0), b.dim(1)];
  if (Ka !== Kb) throw new RangeError(`matmul: inner sizes differ: op(a) is [${M},${Ka}], op(b) is [${Kb},${N}]`);
  const K = Ka;
  const c = empty(a, [M, N]);
  mm(be(a), precision)(c.data, a.data, b.data, M, N, K, transA, transB, false);
  record(c, [a, b], (g) => {
    const matmul = mm(be(a), precision);
    // d op(A) = dC·op(B)ᵀ and d op(B) = op(A)ᵀ·dC, written for each storage layout.
    if (a.requiresGrad) {
      if (!transA) matmul(gradOf(a).data, g.data, b.data, M, K, N, false, !transB, true);
      else matmul(gradOf(a).data, b.data, g.data, K, M, N, transB, true, true);
    }
    if (b.requiresGrad) {
      if (!transB) matmul(gradOf(b).data, a.data, g.data, K, N, M, !transA, false, true);
      else matmul(gradOf(b).data, g.data, a.data, N, K, M, true, transA, true);
    }
  });
  return c;
}

/**
 * y = x·Wᵀ + bias, the layout of every projection in Sigma.
 * x: [..., K]; w: [N, K] ("[out, in]"); bias: [N] or null; y: [..., N].
 */
export function linear(x: Tensor, w: Tensor, bias: Tensor | null = null, precision: Precision = "f32"): Tensor {
  sameDtype("linear", x, w, bias);
  expectNdim("linear", "w", w, 2);
  const [N, K] = [w.dim(0), w.dim(1)];
  if (x.dim(-1) !== K) throw new RangeError(`linear: x ${shapeStr(x.shape)} does not end in the weight's input size ${K} (w is ${shapeStr(w.shape)})`);
  if (bias) expectShape("linear", "bias", bias, [N]);
  const R = x.size / K;
  const y = empty(x, [...x.shape.slice(0, -1), N]);
  const k0 = be(x);
  mm(k0, precision)(y.data, x.data, w.data, R, N, K, false, true, false);
  if (bias) k0.addBias(y.data, y.data, bias.data, R, N);
  record(y, [x, w, bias], (g) => {
    const k = be(x);
    const matmul = mm(k, precision);
    if (x.requiresGrad) matmul(gradOf(x).data, g.data, w.data, R, K, N, false, false, true);
    if (w.requiresGrad) matmul(gradOf(w).data, g.data, x.data, N, K, R, true, false, true);
    if (bias?.requiresGrad) k.addBiasBackward(gradOf(bias).data, g.data, R, N);
  });
  return y;
}

/** Batched matmul over 3-D tensors: c[i] = op(a[i])·op(b[i]). */
export function bmm(a: Tensor, b: Tensor, transA = false, transB = false): Tensor {
  sameDtype("bmm", a, b);
  expectNdim("bmm", "a", a, 3);
  expectNdim("bmm", "b", b, 3);
  const batch = a.dim(0);
  if (b.dim(0) !== batch) throw new RangeError(`bmm: batch sizes differ: a ${shapeStr(a.shape)}, b ${shapeStr(b.shape)}`);
  const [M, Ka] = transA ? [a.dim(2), a.dim(1)] : [a.dim(1), a.dim(2)];
  const [Kb, N] = transB ? [b.dim(2), b.dim(1)] : [b.dim(1), b.dim(2)];
  if (Ka !== Kb) throw new RangeError(`bmm: inner sizes differ: op(a) is [${M},${Ka}], op(b) is [${Kb},${N}]`);
  const K = Ka;
  const c = empty(a, [batch, M, N]);
  be(a).bmm(c.data, a.data, b.data, batch, M, N, K, transA, transB, false);
  record(c, [a, b], (g) => {
    const k = be(a);
    if (a.requiresGrad) {
      if (!transA) k.bmm(gradOf(a).data, g.data, b.data, batch, M, K, N, false, !transB, true);
      else k.bmm(gradOf(a).data, b.data, g.data, batch, K, M, N, transB, true, true);
    }
    if (b.requiresGrad) {
      if (!transB) k.bmm(gradOf(b).data, a.data, g.data, batch, K, N, M, !transA, false, true);
      else k.bmm(gradOf(b).data, g.data, a.data, batch, N, K, M, true, transA, true);
    }
  });
  return c;
}

/**
 * Experts whose matrices live apart (ECSS: views into the expert store's
 * resident records) rather than as one stacked tensor: data[e] is expert e's
 * matrix, `shape` as stored ([N,K] when transW, else [K,N]); grads[e], when
 * training, is where its weight gradient accumulates. They are not tensors on
 * the tape: their gradients go straight to `grads`, which the owner (the
 * expert bank) reads after backward (the product is on the tape when x needs
 * a gradient, as a trained model's hidden states always do).
 */
export interface ExpertParts {
  data: Float32Array[];
  grads: Float32Array[] | null;
  shape: readonly [number, number];
  /**
   * grads hold nothing yet, not even zeros: the backward writes them instead
   * of adding to them, and clears this flag (so the owner can tell whether
   * the backward reached them). Saves a zeroing pass and a read per step.
   */
  fresh?: boolean;
  /**
   * Set by the backward when it wrote fresh gradients (`fresh`) in f32:
   * Σ of their squares, summed by the kernel as it wrote them
   * (Backend.groupedMatmulWeightGradSquares), so that clipping needs no
   * second pass over them. Left as it was otherwise.
   */
  squares?: number;
}

/**
 * Expert products. x: [R,K] with rows sorted by expert; offsets: [E+1] row
 * offsets; w: stacked [E,N,K] when transW (y_e = x_e·W[e]ᵀ), else [E,K,N] —
 * or the E matrices as ExpertParts (no stacking copy). Returns y: [R,N].
 */
export function groupedMatmul(x: Tensor, w: Tensor | ExpertParts, offsets: Int32Array, transW = true, precision: Precision = "f32"): Tensor {
  expectNdim("groupedMatmul", "x", x, 2);
  const stacked = w instanceof Tensor ? w : null;
  if (stacked) {
    sameDtype("groupedMatmul", x, stacked);
    expectNdim("groupedMatmul", "w", stacked, 3);
  }
  const parts = w instanceof Tensor ? null : w;
  const E = stacked ? stacked.dim(0) : parts!.data.length;
  const [rows, cols] = stacked ? [stacked.dim(1), stacked.dim(2)] : parts!.shape;
  const [N, K] = transW ? [rows, cols] : [cols, rows];
  const wShape = stacked ? shapeStr(stacked.shape) : `${E} parts of [${rows},${cols}]`;
  if (x.dim(1) !== K) throw new RangeError(`groupedMatmul: x ${shapeStr(x.shape)} does not match the experts' input size ${K} (w is ${wShape})`);
  if (offsets.length !== E + 1) throw new RangeError(`groupedMatmul: offsets has ${offsets.length} entries, expected E + 1 = ${E + 1}`);
  if (parts?.grads && parts.grads.length !== E) throw new RangeError(`groupedMatmul: ${parts.grads.length} gradient parts for ${E} experts`);
  const R = x.dim(0);
  if (offsets[E] !== R) throw new RangeError(`groupedMatmul: offsets[E] = ${offsets[E]} but x has ${R} rows`);
  const wData = stacked ? stacked.data : parts!.data;
  const y = empty(x, [R, N]);
  grouped(be(x), precision)[0](y.data, x.data, wData, offsets, E, N, K, transW, false);
  record(y, stacked ? [x, stacked] : [x], (g) => {
    const [product, weightGrad] = grouped(be(x), precision);
    if (x.requiresGrad) product(gradOf(x).data, g.data, wData, offsets, E, K, N, !transW, true);
    const dw = stacked ? (stacked.requiresGrad ? gradOf(stacked).data : null) : parts!.grads;
    if (parts?.fresh && dw && precision === "f32") parts.squares = be(x).groupedMatmulWeightGradSquares(dw, g.data, x.data, offsets, E, N, K, transW, false);
    else if (dw) weightGrad(dw, g.data, x.data, offsets, E, N, K, transW, !parts?.fresh);
    if (parts) parts.fresh = false;
  });
  return y;
}
