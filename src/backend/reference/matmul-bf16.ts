/**
 * Reference bf16 matrix products: the definition the native bf16 GEMM
 * (native/src/kernels/gemm_bf16.cpp) is tested against. Every input element
 * is rounded to bfloat16 — 8 exponent bits and 7 stored mantissa bits, the
 * top half of an f32 — and the products of the rounded values are summed
 * exactly as the f32 reference does (float64 over k, rounded once on store).
 *
 * The rounding is VCVTNE2PS2BF16's: round to nearest, ties to the even
 * neighbour; a NaN stays NaN (quiet); an f32 subnormal becomes a signed
 * zero; a value past the largest finite bf16 becomes infinity. A float64
 * buffer is first rounded to f32 (the bf16 of its f32 value).
 */
import type { Buf, Idx } from "../backend.js";
import { checkOffsets, need } from "./check.js";
import { groupedMatmul, groupedMatmulWeightGrad, matmul } from "./matmul.js";

const f32 = new Float32Array(1);
const bits = new Uint32Array(f32.buffer);

/** x rounded to bf16, as a number (exactly representable in f32). */
export function roundBf16(x: number): number {
  f32[0] = x;
  const b = bits[0]!;
  const mag = b & 0x7fffffff;
  if (mag > 0x7f800000) bits[0] = (b | 0x00400000) & 0xffff0000; // NaN: quiet it, keep its top half
  else if (mag < 0x00800000) bits[0] = b & 0x80000000; // zero or subnormal: signed zero
  else bits[0] = (b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000; // nearest, ties to even (a carry bumps the exponent)
  return f32[0]!;
}

/** A copy of the first n elements of x, each rounded to bf16, in x's own float type. */
export function roundedBf16(x: Buf, n = x.length): Buf {
  const out = x instanceof Float64Array ? new Float64Array(n) : new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = roundBf16(x[i]!);
  return out;
}

export function matmulBf16(c: Buf, a: Buf, b: Buf, M: number, N: number, K: number, transA: boolean, transB: boolean, accumulate: boolean): void {
  need("matmulBf16", "c", c, M * N);
  need("matmulBf16", "a", a, M * K);
  need("matmulBf16", "b", b, K * N);
  matmul(c, roundedBf16(a, M * K), roundedBf16(b, K * N), M, N, K, transA, transB, accumulate);
}

/** Stacked [E·n] or E parts of n each, rounded, in the same form. */
function roundedExperts(kernel: string, name: string, w: Buf | readonly Buf[], E: number, n: number): Buf | Buf[] {
  if (!Array.isArray(w)) {
    need(kernel, name, w as Buf, E * n);
    return roundedBf16(w as Buf, E * n);
  }
  const parts = w as readonly Buf[];
  if (parts.length !== E) throw new RangeError(`${kernel}: argument "${name}" has ${parts.length} parts but E = ${E}`);
  return parts.map((p, e) => {
    need(kernel, `${name}[${e}]`, p, n);
    return roundedBf16(p, n);
  });
}

export function groupedMatmulBf16(y: Buf, x: Buf, w: Buf | readonly Buf[], offsets: Idx, E: number, N: number, K: number, transW: boolean, accumulate: boolean): void {
  checkOffsets("groupedMatmulBf16", offsets, E, Math.floor(x.length / Math.max(K, 1)));
  const R = offsets[E]!;
  need("groupedMatmulBf16", "y", y, R * N);
  need("groupedMatmulBf16", "x", x, R * K);
  const wr = roundedExperts("groupedMatmulBf16", "w", w, E, N * K);
  groupedMatmul(y, roundedBf16(x, R * K), wr, offsets, E, N, K, transW, accumulate);
}

export function groupedMatmulWeightGradBf16(dw: Buf | readonly Buf[], dy: Buf, x: Buf, offsets: Idx, E: number, N: number, K: number, transW: boolean, accumulate: boolean): void {
  checkOffsets("groupedMatmulWeightGradBf16", offsets, E, Math.floor(x.length / Math.max(K, 1)));
  const R = offsets[E]!;
  if (Array.isArray(dw)) {
    if (dw.length !== E) throw new RangeError(`groupedMatmulWeightGradBf16: argument "dw" has ${dw.length} parts but E = ${E}`);
    dw.forEach((p: Buf, e) => need("groupedMatmulWeightGradBf16", `dw[${e}]`, p, N * K));
  } else need("groupedMatmulWeightGradBf16", "dw", dw as Buf, E * N * K);
  need("groupedMatmulWeightGradBf16", "dy", dy, R * N);
  need("groupedMatmulWeightGradBf16", "x", x, R * K);
  groupedMatmulWeightGrad(dw, roundedBf16(dy, R * N), roundedBf16(x, R * K), offsets, E, N, K, transW, accumulate);
}
