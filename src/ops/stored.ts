/**
 * Products with weights in a stored format (bf16, f16, q8, q4, or f32 through
 * the decode kernels; src/backend/quant.ts, docs/decode.md). Inference only:
 * they record nothing on the tape, and refuse inputs that need a gradient.
 *
 * Few rows per weight matrix (decoding: 1–8 per step, an expert's share of a
 * step) go to the decode kernels, which stream the stored bytes once and
 * never materialise f32 weights. Many rows (a prompt's prefill, evaluation
 * batches) would make the decode kernels compute-bound, so above DECODE_ROWS
 * the matrix is dequantized a panel of rows at a time (PANEL_BYTES of f32,
 * into one reused buffer) and the blocked f32 GEMM multiplies each panel:
 * the same weights, a different order of f32 sums, and never an f32 copy of
 * the whole matrix. bf16 weights take x rounded to bf16 on both paths (the
 * decode kernels' rule, docs/decode.md): the many-rows path multiplies with
 * the bf16 GEMM, so a prompt's prefill and its tokens decoded one by one
 * differ only in the order of their sums.
 */
import { isGradEnabled } from "../autograd/tape.js";
import { getBackend } from "../backend/index.js";
import { checkStored, decodeKernels } from "../backend/decode.js";
import { storedRows, type StoredMatrix } from "../backend/quant.js";
import { Tensor } from "../tensor/tensor.js";
import { shapeStr } from "../tensor/shape.js";

/** Rows of x per weight matrix up to which the decode kernels run; beyond, dequantize + GEMM. */
export const DECODE_ROWS = 16;

function inferenceOnly(op: string, x: Tensor): Float32Array {
  if (isGradEnabled() && x.requiresGrad) {
    throw new Error(`${op}: weights in a stored format (bf16, f16, q8, q4) are for inference only; open the model without "weights" to train it`);
  }
  if (!(x.data instanceof Float32Array)) throw new TypeError(`${op}: stored weights take float32 inputs`);
  return x.data;
}

/** Bytes of f32 weights one panel of the many-rows path holds: the panel stays in L2 while the GEMM passes x over it. */
export const PANEL_BYTES = 1 << 20;

/**
 * The many-rows path's scratch, grown once and reused: a panel of
 * dequantized weight rows, and the product of x with it. It never holds a
 * whole matrix (a prompt's prefill costs no f32 copy of the model).
 */
const scratch = { panel: new Float32Array(0), out: new Float32Array(0) };

/** The f32 elements the many-rows scratch holds now (for tests: bounded by a panel, not by a matrix). */
export const panelScratchElements = (): number => scratch.panel.length;

/** Weight rows per panel for rows of K inputs: PANEL_BYTES of f32, a multiple of 16, at least 16. */
export const panelRows = (K: number): number => Math.max(16, Math.floor(PANEL_BYTES / (4 * Math.max(1, K)) / 16) * 16);

/**
 * y [rows of x, N] = x · Wᵀ over `rows` rows of x [rows, K], W one stored
 * matrix [N, K]. Few rows: the decode kernels. Many: W is dequantized a
 * panel of rows at a time into the reused scratch, the blocked GEMM
 * multiplies x by the panel, and the panel's columns go to their place in y.
 */
function product(y: Float32Array, x: Float32Array, w: StoredMatrix, rows: number, N: number, K: number): void {
  if (rows <= DECODE_ROWS) {
    decodeKernels().decodeMatmul(y, x, w, Int32Array.of(0, rows), 1, N, K);
    return;
  }
  const be = getBackend();
  if (w.format === "f32") {
    be.matmul(y, x, w.data as Float32Array, rows, N, K, false, true, false);
    return;
  }
  // bf16: x rounded to bf16 as the decode kernels round it (the panel's weights are bf16 values already).
  const mul = w.format === "bf16" ? be.matmulBf16.bind(be) : be.matmul.bind(be);
  const P = Math.min(N, panelRows(K));
  if (scratch.panel.length < P * K) scratch.panel = new Float32Array(P * K);
  if (scratch.out.length < rows * P) scratch.out = new Float32Array(rows * P);
  const dk = decodeKernels();
  for (let n0 = 0; n0 < N; n0 += P) {
    const np = Math.min(P, N - n0);
    const panel = scratch.panel.subarray(0, np * K);
    dk.dequantize(panel, storedRows(w, n0, np));
    if (np === N) {
      mul(y, x, panel, rows, N, K, false, true, false);
      return;
    }
    const out = scratch.out.subarray(0, rows * np);
    mul(out, x, panel, rows, np, K, false, true, false);
    for (let r = 0; r < rows; r++) y.set(out.subarray(r * np, (r + 1) * np), r * N + n0);
  }
}

/** y = x·Wᵀ + b with W stored [N, K]; x [..., K] → [..., N]. */
export function storedLinear(x: Tensor, w: StoredMatrix, bias: Tensor | null): Tensor {
  const xd = inferenceOnly("storedLinear", x);
  const [N, K] = [w.rows, w.K];
  if (x.dim(-1) !== K) throw new RangeError(`storedLinear: x ${shapeStr(x.shape)} does not end in the weight's input size ${K}`);
  const R = x.size / K;
  const y = Tensor.zeros([...x.shape.slice(0, -1), N]);
  product(y.data as Float32Array, xd, w, R, N, K);
  if (bias) getBackend().addBias(y.data, y.data, bias.data, R, N);
  return y;
}

/**
 * The expert product with stored weights: xs [R, K] sorted by expert
 * (offsets [E+1]), w holding E experts' [N, K] stacked ([E·N, K]) → [R, N].
 * When every expert has at most DECODE_ROWS rows, one call computes all of
 * them (threads split the experts' rows together); otherwise each expert
 * takes the path its row count calls for.
 */
export function storedGroupedMatmul(xs: Tensor, w: StoredMatrix, offsets: Int32Array, E: number, N: number, K: number): Tensor {
  const xd = inferenceOnly("storedGroupedMatmul", xs);
  checkStored(w, E, N, K);
  const R = offsets[E]!;
  if (xs.size !== R * K) throw new RangeError(`storedGroupedMatmul: xs ${shapeStr(xs.shape)} is not [${R}, ${K}]`);
  const y = Tensor.zeros([R, N]);
  const yd = y.data as Float32Array;
  let most = 0;
  for (let e = 0; e < E; e++) most = Math.max(most, offsets[e + 1]! - offsets[e]!);
  if (most <= DECODE_ROWS) {
    decodeKernels().decodeMatmul(yd, xd, w, offsets, E, N, K);
    return y;
  }
  for (let e = 0; e < E; e++) {
    const r0 = offsets[e]!;
    const rows = offsets[e + 1]! - r0;
    if (rows === 0) continue;
    const [ye, xe] = [yd.subarray(r0 * N, (r0 + rows) * N), xd.subarray(r0 * K, (r0 + rows) * K)];
    if (rows <= DECODE_ROWS) {
      // The whole matrix with this expert's rows alone: a decode call over a view made here would pack it anew each time (the packed copy is kept per matrix).
      decodeKernels().decodeMatmul(ye, xe, w, Int32Array.from({ length: E + 1 }, (_, i) => (i > e ? rows : 0)), E, N, K);
      continue;
    }
    product(ye, xe, storedRows(w, e * N, N), rows, N, K);
  }
  return y;
}

/** Rows ids of a stored table [rows, C] as f32 (the embedding lookup of a stored output projection): [...shape, C]. */
export function storedEmbedding(table: StoredMatrix, ids: Int32Array, shape: readonly number[] = [ids.length]): Tensor {
  const C = table.K;
  const y = Tensor.zeros([...shape, C]);
  if (y.size !== ids.length * C) throw new RangeError(`storedEmbedding: shape ${shapeStr(shape)} does not hold ${ids.length} ids`);
  const k = decodeKernels();
  const yd = y.data as Float32Array;
  ids.forEach((id, i) => {
    if (!(id >= 0 && id < table.rows)) throw new RangeError(`storedEmbedding: id ${id} at ${i} is outside [0, ${table.rows})`);
    k.dequantize(yd.subarray(i * C, (i + 1) * C), storedRows(table, id, 1));
  });
  return y;
}
