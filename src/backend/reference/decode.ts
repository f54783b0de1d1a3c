/**
 * The TypeScript twin of the decode kernels (../decode.ts): the readable
 * definition, the fallback without the addon, and the oracle the native
 * kernels are tested against (test/decode-kernels.test.ts). Two products:
 *
 * - **f32 weights** (f32, bf16, f16): dequantize by the format's
 *   definition (../quant.ts weightAt), then a dot product of each row of x
 *   with each weight row, summed in float64 and rounded once on store. For
 *   bf16 weights x is first rounded to bf16 (`roundBf16`, as
 *   native/include/quant.h "bf16 weights take bf16 activations": the
 *   addon's vdpbf16ps kernel and its row kernels over the rounded x).
 * - **integer dots** (q8 and q4; native/include/quant.h "integer dot
 *   products"; the native setDecodeIntRows(0) holds them off): each row of x
 *   quantized to int8 per group of 32 (`quantizeActivations`), each group's
 *   product an exact integer dot with the stored q, times the f32 factor
 *   d·scale; q4 adds min·Σx. Summed in float64 here (`intDot`); the kernels
 *   sum in f32 in their own order and are held to this within the rounding
 *   of those sums.
 */
import { dequantize as dequantizeMatrix, GROUP, groupsOf, halfValue, rowElements, type DecodeEpilogue, type DecodeKernels, type StoredMatrix } from "../quant.js";
import { checkOffsets, need } from "./check.js";
import { roundedBf16 } from "./matmul-bf16.js";
import { add, addBias, fastGelu, gelu } from "./elementwise.js";

/** One row of x quantized per group of 32: q in input order (a short group's missing inputs 0), the scales d and the sums of x. */
export interface QuantizedRow {
  q: Int8Array;
  /** f32 x scale per group: amax/127 (NaN when the group holds a NaN or infinity). */
  d: Float32Array;
  /** Σ x per group, in float64 (the kernels sum in f32). */
  sx: Float64Array;
  /** Σ |x| per group (the scale of the rounding of sx). */
  ax: Float64Array;
}

/** v rounded to the nearest integer, ties to even (as vcvtps2dq and nearbyint in the default mode). */
function roundEven(v: number): number {
  const f = Math.floor(v);
  const diff = v - f;
  if (diff < 0.5) return f;
  if (diff > 0.5) return f + 1;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * x[offset … offset + K − 1] quantized per group g of 32: amax = max |x|,
 * d = amax/127 (f32), inv = 127/amax (f32; 0 when amax = 0), q = x·inv
 * (f32 product) rounded to nearest even, in −127…127. A group with a NaN or
 * infinity gets d = NaN and q = 0: its outputs are NaN.
 */
export function quantizeActivations(x: Float32Array, offset: number, K: number): QuantizedRow {
  const G = groupsOf(K);
  const out: QuantizedRow = { q: new Int8Array(G * GROUP), d: new Float32Array(G), sx: new Float64Array(G), ax: new Float64Array(G) };
  for (let g = 0; g < G; g++) {
    const k0 = g * GROUP;
    const cnt = Math.min(GROUP, K - k0);
    let amax = 0;
    let finite = true;
    let sum = 0;
    let sumAbs = 0;
    for (let i = 0; i < cnt; i++) {
      const v = x[offset + k0 + i]!;
      if (!Number.isFinite(v)) finite = false;
      else amax = Math.max(amax, Math.abs(v));
      sum += v;
      sumAbs += Math.abs(v);
    }
    out.sx[g] = sum;
    out.ax[g] = sumAbs;
    if (!finite) {
      out.d[g] = NaN;
      continue;
    }
    out.d[g] = amax / 127; // rounded to f32 on store
    const inv = amax > 0 ? Math.fround(127 / amax) : 0;
    for (let i = 0; i < cnt; i++) out.q[k0 + i] = roundEven(Math.fround(x[offset + k0 + i]! * inv));
  }
  return out;
}

/**
 * Row n of a q8/q4 matrix (w: one expert's rows) with a quantized row of x:
 * value = Σ_g c_g·Σ_i q_i·xq_i (+ Σ_g min_g·sx_g for q4), c_g = d_g·scale_g
 * rounded to f32, in float64; magnitude = the same sums of absolute values,
 * the scale of the kernels' f32 rounding (tests bound their difference by it).
 */
export function intDot(xq: QuantizedRow, w: StoredMatrix, n: number): { value: number; magnitude: number } {
  const K = w.K;
  const G = groupsOf(K);
  let value = 0;
  let magnitude = 0;
  for (let g = 0; g < G; g++) {
    const cnt = Math.min(GROUP, K - g * GROUP);
    let dot = 0;
    let abs = 0;
    for (let i = 0; i < cnt; i++) {
      let wq: number;
      if (w.format === "q8") wq = w.data[n * G * GROUP + g * GROUP + i]!;
      else {
        const byte = w.data[(n * G * GROUP) / 2 + g * (GROUP / 2) + (i % (GROUP / 2))]!;
        wq = i < GROUP / 2 ? byte & 15 : byte >>> 4;
      }
      dot += wq * xq.q[g * GROUP + i]!;
      abs += Math.abs(wq * xq.q[g * GROUP + i]!);
    }
    const c = Math.fround(xq.d[g]! * halfValue(w.scales![n * G + g]!));
    value += c * dot;
    magnitude += Math.abs(c) * abs;
    if (w.format === "q4") {
      const m = halfValue(w.mins![n * G + g]!);
      value += m * xq.sx[g]!;
      magnitude += Math.abs(m) * xq.ax[g]!;
    }
  }
  return { value, magnitude };
}

/** Whether a product of this format takes the integer dots (q8, q4: every row count, so a row's outputs do not depend on its batch). */
export const takesIntDot = (w: StoredMatrix): boolean => w.format === "q8" || w.format === "q4";

function decodeMatmul(y: Float32Array, x: Float32Array, w: StoredMatrix, offsets: Int32Array, E: number, N: number, K: number, ep?: DecodeEpilogue): void {
  const kernel = `decodeMatmul${w.format}`;
  checkOffsets(kernel, offsets, E, K === 0 ? Infinity : Math.floor(x.length / K));
  const R = offsets[E]!;
  need(kernel, "y", y, R * N);
  if (ep?.bias) need(kernel, "bias", ep.bias, E * N);
  if (ep?.residual) {
    need(kernel, "residual", ep.residual, R * N);
    if (ep.residual === y) throw new RangeError(`${kernel}: residual must not be y itself`);
  }
  need(kernel, "x", x, R * K);
  need(kernel, "w", w.data as unknown as Float32Array, E * N * rowElements(w.format, K));
  if (w.scales) need(kernel, "scales", w.scales as unknown as Float32Array, E * N * groupsOf(K));
  products(y, x, w, offsets, E, N, K);
  if (!ep) return;
  // The epilogue, in the addon's order: bias, activation, residual.
  for (let e = 0; e < E; e++) {
    for (let r = offsets[e]!; r < offsets[e + 1]!; r++) {
      const row = y.subarray(r * N, (r + 1) * N);
      if (ep.bias) addBias(row, row, ep.bias.subarray(e * N, (e + 1) * N), 1, N);
      if (ep.act === "fastgelu") fastGelu(row, row, N);
      else if (ep.act === "gelu") gelu(row, row, N);
      if (ep.residual) add(ep.residual.subarray(r * N, (r + 1) * N), ep.residual.subarray(r * N, (r + 1) * N), row, N);
    }
  }
}

/** y = the plain products (decodeMatmul without its epilogue). */
function products(y: Float32Array, x: Float32Array, w: StoredMatrix, offsets: Int32Array, E: number, N: number, K: number): void {
  const xf = w.format === "bf16" ? (roundedBf16(x, offsets[E]! * K) as Float32Array) : x;
  for (let e = 0; e < E; e++) {
    const r0 = offsets[e]!;
    const r1 = offsets[e + 1]!;
    if (r1 === r0) continue;
    const per = rowElements(w.format, K);
    const G = groupsOf(K);
    const we: StoredMatrix = {
      format: w.format,
      rows: N,
      K,
      data: w.data.subarray(e * N * per, (e + 1) * N * per),
      scales: w.scales ? w.scales.subarray(e * N * G, (e + 1) * N * G) : null,
      mins: w.mins ? w.mins.subarray(e * N * G, (e + 1) * N * G) : null,
    };
    if (K > 0 && takesIntDot(w)) {
      for (let r = r0; r < r1; r++) {
        const xq = quantizeActivations(x, r * K, K);
        for (let n = 0; n < N; n++) y[r * N + n] = intDot(xq, we, n).value;
      }
      continue;
    }
    // The expert's weights, dequantized once; then y[r, n] = Σ_k x[r, k]·w[n, k] (bf16: x rounded to bf16).
    const wf = dequantizeMatrix(we);
    for (let r = r0; r < r1; r++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += xf[r * K + k]! * wf[n * K + k]!;
        y[r * N + n] = s;
      }
    }
  }
}

export const referenceDecode: DecodeKernels = {
  name: "reference",
  decodeMatmul,
  dequantize(out, w) {
    need(`dequantize${w.format}`, "out", out, w.rows * w.K);
    dequantizeMatrix(w, out);
  },
};
