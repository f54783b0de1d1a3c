/** Reference elementwise kernels and activations. */
import type { Buf } from "../backend.js";
import { need } from "./check.js";

export function addBias(y: Buf, x: Buf, bias: Buf, rows: number, cols: number): void {
  need("addBias", "y", y, rows * cols);
  need("addBias", "x", x, rows * cols);
  need("addBias", "bias", bias, cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) y[r * cols + c] = x[r * cols + c]! + bias[c]!;
}

export function addBiasBackward(dbias: Buf, dy: Buf, rows: number, cols: number): void {
  need("addBiasBackward", "dbias", dbias, cols);
  need("addBiasBackward", "dy", dy, rows * cols);
  for (let c = 0; c < cols; c++) {
    let s = 0;
    for (let r = 0; r < rows; r++) s += dy[r * cols + c]!;
    dbias[c]! += s;
  }
}

export function add(out: Buf, a: Buf, b: Buf, n: number): void {
  need("add", "out", out, n);
  need("add", "a", a, n);
  need("add", "b", b, n);
  for (let i = 0; i < n; i++) out[i] = a[i]! + b[i]!;
}

export function mul(out: Buf, a: Buf, b: Buf, n: number): void {
  need("mul", "out", out, n);
  need("mul", "a", a, n);
  need("mul", "b", b, n);
  for (let i = 0; i < n; i++) out[i] = a[i]! * b[i]!;
}

export function scale(out: Buf, x: Buf, alpha: number, n: number): void {
  need("scale", "out", out, n);
  need("scale", "x", x, n);
  for (let i = 0; i < n; i++) out[i] = alpha * x[i]!;
}

export function axpy(y: Buf, x: Buf, alpha: number, n: number): void {
  need("axpy", "y", y, n);
  need("axpy", "x", x, n);
  for (let i = 0; i < n; i++) y[i]! += alpha * x[i]!;
}

export function sumSquares(x: Buf, n: number): number {
  need("sumSquares", "x", x, n);
  let s = 0;
  for (let i = 0; i < n; i++) s += x[i]! * x[i]!;
  return s;
}

/**
 * erf to about 1e-15: the Taylor series for |x| < 2 (terms stay small, little
 * cancellation) and a continued fraction for erfc beyond.
 */
export function erf(x: number): number {
  const z = Math.abs(x);
  if (z < 2) {
    // erf(x) = 2/√π Σ (−1)^n x^(2n+1) / (n!·(2n+1))
    let term = z;
    let sum = z;
    for (let n = 1; n < 60; n++) {
      term *= (-z * z) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    const v = (2 / Math.sqrt(Math.PI)) * sum;
    return x < 0 ? -v : v;
  }
  // erfc(z) = exp(−z²)/√π · 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + …)))), evaluated from the tail.
  let f = z;
  for (let n = 80; n >= 1; n--) f = z + n / 2 / f;
  const erfc = Math.exp(-z * z) / Math.sqrt(Math.PI) / f;
  return x < 0 ? erfc - 1 : 1 - erfc;
}

const INV_SQRT2 = Math.SQRT1_2;
const INV_SQRT2PI = 1 / Math.sqrt(2 * Math.PI);

export function gelu(y: Buf, x: Buf, n: number): void {
  need("gelu", "y", y, n);
  need("gelu", "x", x, n);
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    y[i] = 0.5 * v * (1 + erf(v * INV_SQRT2));
  }
}

export function geluBackward(dx: Buf, x: Buf, dy: Buf, n: number): void {
  need("geluBackward", "dx", dx, n);
  need("geluBackward", "x", x, n);
  need("geluBackward", "dy", dy, n);
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    // d/dx x·Φ(x) = Φ(x) + x·φ(x)
    const d = 0.5 * (1 + erf(v * INV_SQRT2)) + v * INV_SQRT2PI * Math.exp(-0.5 * v * v);
    dx[i]! += dy[i]! * d;
  }
}

/** σ(z), written so that neither branch overflows. */
function sigmoid(z: number): number {
  if (z >= 0) return 1 / (1 + Math.exp(-z));
  const e = Math.exp(z);
  return e / (1 + e);
}

export function fastGelu(y: Buf, x: Buf, n: number): void {
  need("fastGelu", "y", y, n);
  need("fastGelu", "x", x, n);
  for (let i = 0; i < n; i++) y[i] = x[i]! * sigmoid(1.702 * x[i]!);
}

export function fastGeluBackward(dx: Buf, x: Buf, dy: Buf, n: number): void {
  need("fastGeluBackward", "dx", dx, n);
  need("fastGeluBackward", "x", x, n);
  need("fastGeluBackward", "dy", dy, n);
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    const s = sigmoid(1.702 * v);
    // d/dx x·σ(ax) = σ(ax) + a·x·σ(ax)·(1 − σ(ax))
    dx[i]! += dy[i]! * (s + 1.702 * v * s * (1 - s));
  }
}

export function swiglu(y: Buf, g: Buf, u: Buf, n: number): void {
  need("swiglu", "y", y, n);
  need("swiglu", "g", g, n);
  need("swiglu", "u", u, n);
  for (let i = 0; i < n; i++) y[i] = g[i]! * sigmoid(g[i]!) * u[i]!;
}

export function swigluBackward(dg: Buf, du: Buf, dy: Buf, g: Buf, u: Buf, n: number): void {
  need("swigluBackward", "dg", dg, n);
  need("swigluBackward", "du", du, n);
  need("swigluBackward", "dy", dy, n);
  need("swigluBackward", "g", g, n);
  need("swigluBackward", "u", u, n);
  for (let i = 0; i < n; i++) {
    const v = g[i]!;
    const s = sigmoid(v);
    // d/dg g·σ(g) = σ(g)·(1 + g·(1 − σ(g))); d/du = SiLU(g).
    dg[i]! += dy[i]! * u[i]! * s * (1 + v * (1 - s));
    du[i]! += dy[i]! * v * s;
  }
}
