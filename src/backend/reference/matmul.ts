/**
 * Reference matrix products. Element (i, j) of op(A)·op(B) is accumulated in
 * float64 (a JS number) over k: the definition, not a fast path.
 */
import type { Buf, Idx } from "../backend.js";
import { checkOffsets, need } from "./check.js";

/**
 * C[M,N] (+)= op(A)·op(B) on sub-arrays starting at aOff, bOff, cOff.
 * A is [M,K] (or [K,M] if transA), B is [K,N] (or [N,K] if transB).
 */
function gemm(c: Buf, cOff: number, a: Buf, aOff: number, b: Buf, bOff: number, M: number, N: number, K: number, transA: boolean, transB: boolean, accumulate: boolean): void {
  const row = new Float64Array(N);
  for (let i = 0; i < M; i++) {
    row.fill(0);
    for (let k = 0; k < K; k++) {
      const aik = transA ? a[aOff + k * M + i]! : a[aOff + i * K + k]!;
      if (aik === 0) continue;
      if (transB) for (let j = 0; j < N; j++) row[j]! += aik * b[bOff + j * K + k]!;
      else {
        const base = bOff + k * N;
        for (let j = 0; j < N; j++) row[j]! += aik * b[base + j]!;
      }
    }
    const base = cOff + i * N;
    if (accumulate) for (let j = 0; j < N; j++) c[base + j]! += row[j]!;
    else for (let j = 0; j < N; j++) c[base + j] = row[j]!;
  }
}

export function matmul(c: Buf, a: Buf, b: Buf, M: number, N: number, K: number, transA: boolean, transB: boolean, accumulate: boolean): void {
  need("matmul", "c", c, M * N);
  need("matmul", "a", a, M * K);
  need("matmul", "b", b, K * N);
  gemm(c, 0, a, 0, b, 0, M, N, K, transA, transB, accumulate);
}

export function bmm(c: Buf, a: Buf, b: Buf, batch: number, M: number, N: number, K: number, transA: boolean, transB: boolean, accumulate: boolean): void {
  need("bmm", "c", c, batch * M * N);
  need("bmm", "a", a, batch * M * K);
  need("bmm", "b", b, batch * K * N);
  for (let s = 0; s < batch; s++) gemm(c, s * M * N, a, s * M * K, b, s * K * N, M, N, K, transA, transB, accumulate);
}

/** Expert e's matrix as (buffer, offset): stacked [E, N·K], or E parts of N·K each. */
function expertsOf(kernel: string, name: string, w: Buf | readonly Buf[], E: number, NK: number): (e: number) => [Buf, number] {
  if (!Array.isArray(w)) {
    need(kernel, name, w as Buf, E * NK);
    return (e) => [w as Buf, e * NK];
  }
  const parts = w as readonly Buf[];
  if (parts.length !== E) throw new RangeError(`${kernel}: argument "${name}" has ${parts.length} parts but E = ${E}`);
  parts.forEach((p, e) => need(kernel, `${name}[${e}]`, p, NK));
  return (e) => [parts[e]!, 0];
}

export function groupedMatmul(y: Buf, x: Buf, w: Buf | readonly Buf[], offsets: Idx, E: number, N: number, K: number, transW: boolean, accumulate: boolean): void {
  checkOffsets("groupedMatmul", offsets, E, Math.floor(x.length / Math.max(K, 1)));
  const R = offsets[E]!;
  need("groupedMatmul", "y", y, R * N);
  need("groupedMatmul", "x", x, R * K);
  const wOf = expertsOf("groupedMatmul", "w", w, E, N * K);
  for (let e = 0; e < E; e++) {
    const r0 = offsets[e]!;
    const rows = offsets[e + 1]! - r0;
    const [we, wo] = wOf(e);
    if (rows > 0) gemm(y, r0 * N, x, r0 * K, we, wo, rows, N, K, false, transW, accumulate);
  }
}

/** The weight gradient of groupedMatmul; returns Σ dw² over the experts' gradients after it. */
function weightGrad(kernel: string, dw: Buf | readonly Buf[], dy: Buf, x: Buf, offsets: Idx, E: number, N: number, K: number, transW: boolean, accumulate: boolean): number {
  checkOffsets(kernel, offsets, E, Math.floor(x.length / Math.max(K, 1)));
  const R = offsets[E]!;
  const dwOf = expertsOf(kernel, "dw", dw, E, N * K);
  need(kernel, "dy", dy, R * N);
  need(kernel, "x", x, R * K);
  let squares = 0;
  for (let e = 0; e < E; e++) {
    const r0 = offsets[e]!;
    const rows = offsets[e + 1]! - r0;
    const [de, dOff] = dwOf(e);
    // transW: dW[e] [N,K] = dy_eᵀ·x_e; else dW[e] [K,N] = x_eᵀ·dy_e. An empty expert gets 0 (or keeps its value).
    if (transW) gemm(de, dOff, dy, r0 * N, x, r0 * K, N, K, rows, true, false, accumulate);
    else gemm(de, dOff, x, r0 * K, dy, r0 * N, K, N, rows, true, false, accumulate);
    for (let i = dOff; i < dOff + N * K; i++) squares += de[i]! * de[i]!;
  }
  return squares;
}

export function groupedMatmulWeightGrad(dw: Buf | readonly Buf[], dy: Buf, x: Buf, offsets: Idx, E: number, N: number, K: number, transW: boolean, accumulate: boolean): void {
  weightGrad("groupedMatmulWeightGrad", dw, dy, x, offsets, E, N, K, transW, accumulate);
}

/** groupedMatmulWeightGrad, returning Σ dw² over every expert's gradient as it stands after the call. */
export function groupedMatmulWeightGradSquares(dw: Buf | readonly Buf[], dy: Buf, x: Buf, offsets: Idx, E: number, N: number, K: number, transW: boolean, accumulate: boolean): number {
  return weightGrad("groupedMatmulWeightGradSquares", dw, dy, x, offsets, E, N, K, transW, accumulate);
}
