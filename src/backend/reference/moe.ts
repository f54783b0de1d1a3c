/** Reference embedding and MoE data movement (gather, scatter-add, permutation, combine). */
import type { Buf, Idx } from "../backend.js";
import { inRange, need } from "./check.js";

export function embedding(out: Buf, table: Buf, ids: Idx, n: number, C: number): void {
  need("embedding", "out", out, n * C);
  need("embedding", "ids", ids, n);
  inRange("embedding", "ids", ids, n, Math.floor(table.length / Math.max(C, 1)));
  for (let i = 0; i < n; i++) for (let c = 0; c < C; c++) out[i * C + c] = table[ids[i]! * C + c]!;
}

export function embeddingBackward(dtable: Buf, dout: Buf, ids: Idx, n: number, C: number): void {
  need("embeddingBackward", "dout", dout, n * C);
  need("embeddingBackward", "ids", ids, n);
  inRange("embeddingBackward", "ids", ids, n, Math.floor(dtable.length / Math.max(C, 1)));
  for (let i = 0; i < n; i++) for (let c = 0; c < C; c++) dtable[ids[i]! * C + c]! += dout[i * C + c]!;
}

export function permuteByExpert(order: Idx, offsets: Idx, expertIds: Idx, n: number, E: number): void {
  need("permuteByExpert", "order", order, n);
  need("permuteByExpert", "offsets", offsets, E + 1);
  need("permuteByExpert", "expertIds", expertIds, n);
  inRange("permuteByExpert", "expertIds", expertIds, n, E);
  // Histogram, exclusive prefix sum, then a stable placement pass.
  offsets.fill(0, 0, E + 1);
  for (let i = 0; i < n; i++) offsets[expertIds[i]! + 1]++;
  for (let e = 0; e < E; e++) offsets[e + 1]! += offsets[e]!;
  const next = offsets.slice(0, E);
  for (let i = 0; i < n; i++) order[next[expertIds[i]!]!++] = i;
}

export function gatherRows(out: Buf, x: Buf, idx: Idx, n: number, C: number): void {
  need("gatherRows", "out", out, n * C);
  need("gatherRows", "idx", idx, n);
  inRange("gatherRows", "idx", idx, n, Math.floor(x.length / Math.max(C, 1)));
  for (let i = 0; i < n; i++) for (let c = 0; c < C; c++) out[i * C + c] = x[idx[i]! * C + c]!;
}

export function scatterAddRows(out: Buf, x: Buf, idx: Idx, n: number, C: number): void {
  need("scatterAddRows", "x", x, n * C);
  need("scatterAddRows", "idx", idx, n);
  inRange("scatterAddRows", "idx", idx, n, Math.floor(out.length / Math.max(C, 1)));
  for (let i = 0; i < n; i++) for (let c = 0; c < C; c++) out[idx[i]! * C + c]! += x[i * C + c]!;
}

export function combine(y: Buf, x: Buf, idx: Idx, w: Buf, n: number, C: number): void {
  need("combine", "x", x, n * C);
  need("combine", "idx", idx, n);
  need("combine", "w", w, n);
  inRange("combine", "idx", idx, n, Math.floor(y.length / Math.max(C, 1)));
  for (let i = 0; i < n; i++) for (let c = 0; c < C; c++) y[idx[i]! * C + c]! += w[i]! * x[i * C + c]!;
}

export function combineBackward(dx: Buf, dw: Buf, dy: Buf, x: Buf, idx: Idx, w: Buf, n: number, C: number): void {
  need("combineBackward", "dx", dx, n * C);
  need("combineBackward", "dw", dw, n);
  need("combineBackward", "x", x, n * C);
  need("combineBackward", "idx", idx, n);
  need("combineBackward", "w", w, n);
  inRange("combineBackward", "idx", idx, n, Math.floor(dy.length / Math.max(C, 1)));
  for (let i = 0; i < n; i++) {
    const o = idx[i]! * C;
    let dot = 0;
    for (let c = 0; c < C; c++) {
      dx[i * C + c]! += w[i]! * dy[o + c]!;
      dot += dy[o + c]! * x[i * C + c]!;
    }
    dw[i]! += dot;
  }
}

export function adamw(param: Buf, grad: Buf, m: Buf, v: Buf, n: number, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, step: number, gradScale: number): void {
  need("adamw", "param", param, n);
  need("adamw", "grad", grad, n);
  need("adamw", "m", m, n);
  need("adamw", "v", v, n);
  if (!(step >= 1)) throw new RangeError(`adamw: argument "step" must be at least 1, got ${step}`);
  const bc1 = 1 - beta1 ** step;
  const bc2 = 1 - beta2 ** step;
  for (let i = 0; i < n; i++) {
    const g = grad[i]! * gradScale;
    m[i] = beta1 * m[i]! + (1 - beta1) * g;
    v[i] = beta2 * v[i]! + (1 - beta2) * g * g;
    const mh = m[i]! / bc1;
    const vh = v[i]! / bc2;
    param[i] = param[i]! - lr * (mh / (Math.sqrt(vh) + eps) + weightDecay * param[i]!);
  }
}

export function adamwExperts(payloads: readonly Buf[], grads: readonly Buf[], steps: Idx, P: number, E: number, decayed: number, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, gradScale: number): void {
  if (payloads.length !== E) throw new RangeError(`adamwExperts: argument "payloads" has ${payloads.length} parts but E = ${E}`);
  if (grads.length !== E) throw new RangeError(`adamwExperts: argument "grads" has ${grads.length} parts but E = ${E}`);
  if (decayed > P) throw new RangeError(`adamwExperts: argument "decayed" is ${decayed} but P = ${P}`);
  need("adamwExperts", "steps", steps, E);
  for (let e = 0; e < E; e++) if (!(steps[e]! >= 1)) throw new RangeError(`adamwExperts: argument "steps" [${e}] = ${steps[e]} must be at least 1`);
  for (let e = 0; e < E; e++) {
    const p = payloads[e]!, g = grads[e]!;
    need("adamwExperts", `payloads[${e}]`, p, 3 * P);
    need("adamwExperts", `grads[${e}]`, g, P);
    // The matrices with weight decay, then the biases without.
    for (const [o, n, wd] of [[0, decayed, weightDecay], [decayed, P - decayed, 0]] as const) {
      if (n > 0) adamw(p.subarray(o, o + n), g.subarray(o, o + n), p.subarray(P + o, P + o + n), p.subarray(2 * P + o, 2 * P + o + n), n, lr, beta1, beta2, eps, wd, steps[e]!, gradScale);
    }
  }
}
