/**
 * Projections that read the same input, as one stored matrix (for the decode
 * steps, src/models/decode-step.ts and src/models/dense-step.ts): their weight
 * rows stacked (the layers' own `stored` then become views of it, so the
 * weights are held once) and their biases side by side. One decode call
 * then computes all of them: a thread wakes once, and the call's fixed cost
 * is paid once, for q, k and v.
 */
import { storedRows, type StoredMatrix } from "../backend/quant.js";
import type { Linear } from "../nn/layers.js";

export interface Fused {
  parts: Linear[];
  /** The views the parts hold; a part whose `stored` is another object (converted again) makes the fusion stale. */
  views: StoredMatrix[];
  matrix: StoredMatrix;
  bias: Float32Array | null;
}

const fusions = new WeakMap<Linear, Fused>();

function concat<A extends Float32Array | Uint16Array | Int8Array | Uint8Array>(parts: A[]): A {
  const out = new (parts[0]!.constructor as new (n: number) => A)(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p as never, at);
    at += p.length;
  }
  return out;
}

/** The fused matrix of `parts` (Linears of the same input width and format), built on first use and again when a part was converted anew. */
export function fused(parts: Linear[]): Fused {
  const f = fusions.get(parts[0]!);
  if (f && f.parts.length === parts.length && f.parts.every((p, i) => p === parts[i] && p.stored === f.views[i])) return f;
  const ms = parts.map((p) => p.stored!);
  const rows = ms.reduce((n, m) => n + m.rows, 0);
  const matrix: StoredMatrix = {
    format: ms[0]!.format,
    rows,
    K: ms[0]!.K,
    data: concat(ms.map((m) => m.data)),
    scales: ms[0]!.scales ? concat(ms.map((m) => m.scales!)) : null,
    mins: ms[0]!.mins ? concat(ms.map((m) => m.mins!)) : null,
  };
  const views: StoredMatrix[] = [];
  let first = 0;
  for (const [i, p] of parts.entries()) {
    views.push(storedRows(matrix, first, ms[i]!.rows));
    first += ms[i]!.rows;
    p.stored = views[i]!;
  }
  const bias = parts.some((p) => p.bias) ? concat(parts.map((p) => (p.bias ? (p.bias.data as Float32Array) : new Float32Array(p.outFeatures)))) : null;
  const made = { parts, views, matrix, bias };
  fusions.set(parts[0]!, made);
  return made;
}

