/** Reference LayerNorm, softmax and fused softmax cross-entropy (statistics in float64). */
import type { Buf, Idx } from "../backend.js";
import { need } from "./check.js";

export function layerNorm(y: Buf, mean: Buf, rstd: Buf, x: Buf, gamma: Buf, beta: Buf, rows: number, C: number, eps: number): void {
  need("layerNorm", "y", y, rows * C);
  need("layerNorm", "mean", mean, rows);
  need("layerNorm", "rstd", rstd, rows);
  need("layerNorm", "x", x, rows * C);
  need("layerNorm", "gamma", gamma, C);
  need("layerNorm", "beta", beta, C);
  for (let r = 0; r < rows; r++) {
    const o = r * C;
    let m = 0;
    for (let c = 0; c < C; c++) m += x[o + c]!;
    m /= C;
    let v = 0;
    for (let c = 0; c < C; c++) v += (x[o + c]! - m) ** 2;
    v /= C;
    const s = 1 / Math.sqrt(v + eps);
    for (let c = 0; c < C; c++) y[o + c] = (x[o + c]! - m) * s * gamma[c]! + beta[c]!;
    mean[r] = m;
    rstd[r] = s;
  }
}

export function layerNormBackward(dx: Buf, dgamma: Buf, dbeta: Buf, dy: Buf, x: Buf, mean: Buf, rstd: Buf, gamma: Buf, rows: number, C: number): void {
  need("layerNormBackward", "dx", dx, rows * C);
  need("layerNormBackward", "dgamma", dgamma, C);
  need("layerNormBackward", "dbeta", dbeta, C);
  need("layerNormBackward", "dy", dy, rows * C);
  need("layerNormBackward", "x", x, rows * C);
  need("layerNormBackward", "mean", mean, rows);
  need("layerNormBackward", "rstd", rstd, rows);
  need("layerNormBackward", "gamma", gamma, C);
  for (let r = 0; r < rows; r++) {
    const o = r * C;
    const m = mean[r]!;
    const s = rstd[r]!;
    // With x̂ = (x − m)·s and g = dy·γ: dx = s·(g − mean(g) − x̂·mean(g·x̂)).
    let gMean = 0;
    let gxMean = 0;
    for (let c = 0; c < C; c++) {
      const xh = (x[o + c]! - m) * s;
      const g = dy[o + c]! * gamma[c]!;
      gMean += g;
      gxMean += g * xh;
      dgamma[c]! += dy[o + c]! * xh;
      dbeta[c]! += dy[o + c]!;
    }
    gMean /= C;
    gxMean /= C;
    for (let c = 0; c < C; c++) {
      const xh = (x[o + c]! - m) * s;
      dx[o + c]! += s * (dy[o + c]! * gamma[c]! - gMean - xh * gxMean);
    }
  }
}

export function softmax(y: Buf, x: Buf, rows: number, cols: number): void {
  need("softmax", "y", y, rows * cols);
  need("softmax", "x", x, rows * cols);
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let m = -Infinity;
    for (let c = 0; c < cols; c++) m = Math.max(m, x[o + c]!);
    let s = 0;
    for (let c = 0; c < cols; c++) s += Math.exp(x[o + c]! - m);
    for (let c = 0; c < cols; c++) y[o + c] = Math.exp(x[o + c]! - m) / s;
  }
}

export function softmaxBackward(dx: Buf, y: Buf, dy: Buf, rows: number, cols: number): void {
  need("softmaxBackward", "dx", dx, rows * cols);
  need("softmaxBackward", "y", y, rows * cols);
  need("softmaxBackward", "dy", dy, rows * cols);
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let dot = 0;
    for (let c = 0; c < cols; c++) dot += dy[o + c]! * y[o + c]!;
    for (let c = 0; c < cols; c++) dx[o + c]! += y[o + c]! * (dy[o + c]! - dot);
  }
}

function checkTargets(kernel: string, targets: Idx, rows: number, V: number, ignoreIndex: number): void {
  need(kernel, "targets", targets, rows);
  for (let r = 0; r < rows; r++) {
    const t = targets[r]!;
    if (t !== ignoreIndex && (t < 0 || t >= V)) throw new RangeError(`${kernel}: targets[${r}] = ${t} is outside [0, ${V}) and is not the ignore index ${ignoreIndex}`);
  }
}

export function crossEntropy(loss: Buf, lse: Buf, logits: Buf, targets: Idx, rows: number, V: number, ignoreIndex: number): void {
  need("crossEntropy", "loss", loss, rows);
  need("crossEntropy", "lse", lse, rows);
  need("crossEntropy", "logits", logits, rows * V);
  checkTargets("crossEntropy", targets, rows, V, ignoreIndex);
  for (let r = 0; r < rows; r++) {
    const o = r * V;
    let m = -Infinity;
    for (let v = 0; v < V; v++) m = Math.max(m, logits[o + v]!);
    let s = 0;
    for (let v = 0; v < V; v++) s += Math.exp(logits[o + v]! - m);
    const l = m + Math.log(s);
    lse[r] = l;
    const t = targets[r]!;
    loss[r] = t === ignoreIndex ? 0 : l - logits[o + t]!;
  }
}

export function crossEntropyBackward(dlogits: Buf, logits: Buf, lse: Buf, targets: Idx, dloss: Buf, rows: number, V: number, ignoreIndex: number): void {
  need("crossEntropyBackward", "dlogits", dlogits, rows * V);
  need("crossEntropyBackward", "logits", logits, rows * V);
  need("crossEntropyBackward", "lse", lse, rows);
  need("crossEntropyBackward", "dloss", dloss, rows);
  checkTargets("crossEntropyBackward", targets, rows, V, ignoreIndex);
  for (let r = 0; r < rows; r++) {
    const t = targets[r]!;
    if (t === ignoreIndex) continue;
    const o = r * V;
    const g = dloss[r]!;
    for (let v = 0; v < V; v++) dlogits[o + v]! += g * (Math.exp(logits[o + v]! - lse[r]!) - (v === t ? 1 : 0));
  }
}

export function rmsNorm(y: Buf, rstd: Buf, x: Buf, gamma: Buf, rows: number, C: number, eps: number): void {
  need("rmsNorm", "y", y, rows * C);
  need("rmsNorm", "rstd", rstd, rows);
  need("rmsNorm", "x", x, rows * C);
  need("rmsNorm", "gamma", gamma, C);
  for (let r = 0; r < rows; r++) {
    const o = r * C;
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[o + c]! * x[o + c]!;
    const s = 1 / Math.sqrt(ss / C + eps);
    for (let c = 0; c < C; c++) y[o + c] = x[o + c]! * s * gamma[c]!;
    rstd[r] = s;
  }
}

export function rmsNormBackward(dx: Buf, dgamma: Buf, dy: Buf, x: Buf, rstd: Buf, gamma: Buf, rows: number, C: number): void {
  need("rmsNormBackward", "dx", dx, rows * C);
  need("rmsNormBackward", "dgamma", dgamma, C);
  need("rmsNormBackward", "dy", dy, rows * C);
  need("rmsNormBackward", "x", x, rows * C);
  need("rmsNormBackward", "rstd", rstd, rows);
  need("rmsNormBackward", "gamma", gamma, C);
  for (let r = 0; r < rows; r++) {
    const o = r * C;
    const s = rstd[r]!;
    // With x̂ = x·s and g = dy·γ: dx = s·(g − x̂·mean(g·x̂)) (no mean term: RMSNorm subtracts none).
    let gxMean = 0;
    for (let c = 0; c < C; c++) {
      const xh = x[o + c]! * s;
      gxMean += dy[o + c]! * gamma[c]! * xh;
      dgamma[c]! += dy[o + c]! * xh;
    }
    gxMean /= C;
    for (let c = 0; c < C; c++) dx[o + c]! += s * (dy[o + c]! * gamma[c]! - x[o + c]! * s * gxMean);
  }
}
