// Products with stored weights over many rows (src/ops/stored.ts): past
// DECODE_ROWS rows the matrix is dequantized a panel of rows at a time into a
// reused buffer and multiplied by the f32 GEMM (bf16: the bf16 GEMM). The result is x · Wᵀ with W's
// f32 weights (the format's definition; bf16 weights with x rounded to bf16) on odd shapes, over panel edges, with
// a bias; and the scratch never holds more than a panel (no f32 copy of the
// whole matrix per call).
import { test } from "node:test";
import assert from "node:assert/strict";
import { noGrad } from "../src/autograd/tape.js";
import { dequantize, quantize, WEIGHT_FORMATS } from "../src/backend/quant.js";
import { roundedBf16 } from "../src/backend/reference/matmul-bf16.js";
import { DECODE_ROWS, panelRows, panelScratchElements, storedGroupedMatmul, storedLinear } from "../src/ops/stored.js";
import { Tensor } from "../src/tensor/tensor.js";
import { Rng } from "../src/util/rng.js";

const rng = new Rng(31);
const rand = (n: number, s = 1) => Float32Array.from({ length: n }, () => (rng.uniform() * 2 - 1) * s);

test("stored products past DECODE_ROWS rows: x · Wᵀ + b on odd shapes, across panel edges, in every format", () => {
  // K = 2100: 112 rows per panel, so N = 257 takes three panels, the last a short one.
  for (const [rows, N, K] of [[DECODE_ROWS + 1, 1, 1], [17, 3, 33], [40, 257, 2100], [33, 17, 257]] as const) {
    const w = rand(N * K, 0.05);
    const x = rand(rows * K);
    const bias = rand(N);
    for (const f of WEIGHT_FORMATS) {
      const m = quantize(f, w, N, K);
      const wf = dequantize(m);
      // bf16 weights take x rounded to bf16 (docs/decode.md), on this path as on the decode kernels'.
      const xf = f === "bf16" ? (roundedBf16(x) as Float32Array) : x;
      const y = noGrad(() => storedLinear(Tensor.from(x, [rows, K]), m, Tensor.from(bias))).data;
      for (let r = 0; r < rows; r++) {
        for (let n = 0; n < N; n++) {
          let dot = bias[n]!;
          let mag = Math.abs(bias[n]!);
          for (let k = 0; k < K; k++) {
            dot += xf[r * K + k]! * wf[n * K + k]!;
            mag += Math.abs(xf[r * K + k]! * wf[n * K + k]!);
          }
          const err = Math.abs(y[r * N + n]! - dot);
          if (!(err <= (K + 4) * 2 ** -23 * mag + 1e-30)) assert.fail(`${f} ${rows}×${N}×${K}: y[${r},${n}] = ${y[r * N + n]}, want ${dot}`);
        }
      }
    }
  }
});

test("stored products past DECODE_ROWS rows: the scratch holds one panel, not the matrix", () => {
  const [rows, N, K] = [20, 1000, 1024];
  const m = quantize("q8", rand(N * K, 0.05), N, K);
  noGrad(() => storedLinear(Tensor.from(rand(rows * K), [rows, K]), m, null));
  const held = panelScratchElements();
  assert.ok(held > 0 && held <= panelRows(K) * K, `scratch of ${held} floats; a panel is ${panelRows(K) * K}`);
  assert.ok(held < N * K / 2, `scratch of ${held} floats for a ${N}×${K} matrix`);
});

test("stored expert products with one expert past DECODE_ROWS rows: each expert's rows against its own weights, in every format", () => {
  // Experts of 20, 3, 0 and 5 rows: the first takes the panels, the others the decode kernels over the whole matrix.
  const [E, N, K] = [4, 19, 70];
  const rowsPer = [20, 3, 0, 5];
  const offsets = Int32Array.from([0, ...rowsPer.map((_, i) => rowsPer.slice(0, i + 1).reduce((a, b) => a + b, 0))]);
  const R = offsets[E]!;
  const w = rand(E * N * K, 0.05);
  const x = rand(R * K);
  for (const f of WEIGHT_FORMATS) {
    const m = quantize(f, w, E * N, K);
    const wf = dequantize(m);
    const xf = f === "bf16" ? (roundedBf16(x) as Float32Array) : x;
    // Twice: the second call finds what the first made (the kernels' packed copy of the matrix).
    for (let call = 0; call < 2; call++) {
      const y = noGrad(() => storedGroupedMatmul(Tensor.from(x, [R, K]), m, offsets, E, N, K)).data;
      for (let e = 0; e < E; e++) {
        for (let r = offsets[e]!; r < offsets[e + 1]!; r++) {
          for (let n = 0; n < N; n++) {
            let dot = 0;
            let mag = 0;
            for (let k = 0; k < K; k++) {
              dot += xf[r * K + k]! * wf[(e * N + n) * K + k]!;
              mag += Math.abs(xf[r * K + k]! * wf[(e * N + n) * K + k]!);
            }
            // q8/q4 quantize x per group of 32 on the decode kernels: their error is x's rounding, ~2% of the magnitude.
            const tol = f === "q8" || f === "q4" ? 0.02 * mag + 1e-6 : (K + 4) * 2 ** -23 * mag + 1e-30;
            const err = Math.abs(y[r * N + n]! - dot);
            if (!(err <= tol)) assert.fail(`${f}, expert ${e}, row ${r}, n ${n}: ${y[r * N + n]} against ${dot}`);
          }
        }
      }
    }
  }
});
