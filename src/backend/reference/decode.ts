/**
 * The TypeScript twin of the decode kernels (../decode.ts): dequantize by
 * the format's definition (../quant.ts weightAt), then an f32 dot product of
 * each row of x with each weight row, summed in float64 and rounded once on
 * store. The readable definition, the fallback without the addon, and the
 * oracle the native kernels are tested against (test/decode-kernels.test.ts).
 */
import { dequantize as dequantizeMatrix, groupsOf, rowElements, type DecodeKernels, type StoredMatrix } from "../quant.js";
import { checkOffsets, need } from "./check.js";

function decodeMatmul(y: Float32Array, x: Float32Array, w: StoredMatrix, offsets: Int32Array, E: number, N: number, K: number): void {
  const kernel = `decodeMatmul${w.format}`;
  checkOffsets(kernel, offsets, E, K === 0 ? Infinity : Math.floor(x.length / K));
  const R = offsets[E]!;
  need(kernel, "y", y, R * N);
  need(kernel, "x", x, R * K);
  need(kernel, "w", w.data as unknown as Float32Array, E * N * rowElements(w.format, K));
  if (w.scales) need(kernel, "scales", w.scales as unknown as Float32Array, E * N * groupsOf(K));
  // Each expert's weights, dequantized once; then y[r, n] = Σ_k x[r, k]·w[n, k].
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
    const wf = dequantizeMatrix(we);
    for (let r = r0; r < r1; r++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += x[r * K + k]! * wf[n * K + k]!;
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
