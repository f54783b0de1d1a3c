/**
 * Choosing the next token from one row of logits: greedy at temperature 0,
 * else softmax(logits / temperature) restricted to the top-k tokens and to
 * the smallest set whose probability reaches top-p (nucleus), then one draw
 * from a seeded Rng — so a seed fixes the text. With neither cut, the draw
 * runs over the tokens in id order, without sorting them.
 */
import { getBackend } from "../backend/index.js";
import { loadNative } from "../backend/native/index.js";
import { SigmaError } from "../util/errors.js";
import type { Rng } from "../util/rng.js";

export interface SamplingOptions {
  /** 0 = greedy (argmax). */
  temperature: number;
  /** Keep the k most likely tokens; 0 = all. */
  topK: number;
  /** Keep the most likely tokens up to this total probability; 1 = all. */
  topP: number;
}

export function checkSampling(o: SamplingOptions): void {
  if (!(o.temperature >= 0 && Number.isFinite(o.temperature))) throw new SigmaError(`temperature must be ≥ 0, got ${o.temperature}`, "0 is greedy; 0.7–1.0 is typical");
  if (!(Number.isInteger(o.topK) && o.topK >= 0)) throw new SigmaError(`top-k must be a non-negative integer, got ${o.topK}`, "0 keeps every token");
  if (!(o.topP > 0 && o.topP <= 1)) throw new SigmaError(`top-p must be in (0, 1], got ${o.topP}`, "1 keeps every token");
}

export function argmax(logits: ArrayLike<number>): number {
  // A vocabulary's row of f32 logits on the native backend: the addon's argmaxRows (the same index; ~1 µs where this scan takes ~10 at V = 8192).
  if (logits instanceof Float32Array && logits.length >= 256 && getBackend().name === "native") {
    if (nativeArgmax === undefined) {
      const addon = loadNative().backend as unknown as { argmaxRows?: (x: Float32Array, rows: number, cols: number, out: Int32Array) => void } | null;
      nativeArgmax = typeof addon?.argmaxRows === "function" ? addon.argmaxRows.bind(addon) : null;
    }
    if (nativeArgmax) {
      nativeArgmax(logits, 1, logits.length, argmaxOut);
      return argmaxOut[0]!;
    }
  }
  return argmaxScan(logits);
}

let nativeArgmax: ((x: Float32Array, rows: number, cols: number, out: Int32Array) => void) | null | undefined;
const argmaxOut = new Int32Array(1);

/** The definition argmax follows: the first index i with logits[i] > every earlier best (NaNs never taken; a NaN first element kept). */
export function argmaxScan(logits: ArrayLike<number>): number {
  let best = 0;
  let top = logits[0]!;
  for (let i = 1; i < logits.length; i++) {
    const v = logits[i]!;
    if (v > top) {
      top = v;
      best = i;
    }
  }
  return best;
}

/** The token to emit after `logits` [V]. */
export function sampleToken(logits: ArrayLike<number>, o: SamplingOptions, rng: Rng): number {
  if (o.temperature === 0) return argmax(logits);
  if (o.topP >= 1 && (o.topK === 0 || o.topK >= logits.length)) return drawAll(logits, o.temperature, rng);
  const ids = mostLikely(logits, o.topK > 0 ? Math.min(o.topK, logits.length) : logits.length);
  const max = logits[ids[0]!]!;
  const p = ids.map((i) => Math.exp((logits[i]! - max) / o.temperature));
  const total = p.reduce((a, b) => a + b, 0);
  let keep = p.length;
  if (o.topP < 1) {
    let acc = 0;
    for (let j = 0; j < p.length; j++) {
      acc += p[j]! / total;
      if (acc >= o.topP) {
        keep = j + 1;
        break;
      }
    }
  }
  const mass = p.slice(0, keep).reduce((a, b) => a + b, 0);
  let u = rng.uniform() * mass;
  for (let j = 0; j < keep; j++) {
    u -= p[j]!;
    if (u < 0) return ids[j]!;
  }
  return ids[keep - 1]!;
}

/**
 * One draw from softmax(logits / temperature) over every token, in id order:
 * with nothing cut there is nothing to sort (a sort of V ids per token is
 * the most expensive part of sampling, and the server samples for every
 * sequence of a step).
 */
function drawAll(logits: ArrayLike<number>, temperature: number, rng: Rng): number {
  const V = logits.length;
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (logits[i]! > max) max = logits[i]!;
  const p = new Float64Array(V);
  let total = 0;
  for (let i = 0; i < V; i++) total += p[i] = Math.exp((logits[i]! - max) / temperature);
  let u = rng.uniform() * total;
  for (let i = 0; i < V; i++) {
    u -= p[i]!;
    if (u < 0) return i;
  }
  return argmax(logits);
}

/**
 * The ids of the `k` largest logits, largest first (ties: lower id first).
 * With k < V one pass keeps a sorted list of k (a full sort of V ids per
 * token costs ~20 ms at V = 50k); with k = V it is that sort.
 */
export function mostLikely(logits: ArrayLike<number>, k: number): number[] {
  const V = logits.length;
  if (k >= V) return Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
  const ids: number[] = [];
  for (let i = 0; i < V; i++) {
    const v = logits[i]!;
    if (ids.length === k && !(v > logits[ids[k - 1]!]!)) continue;
    let j = ids.length < k ? ids.push(i) - 1 : k - 1;
    while (j > 0 && v > logits[ids[j - 1]!]!) {
      ids[j] = ids[j - 1]!;
      j--;
    }
    ids[j] = i;
  }
  return ids;
}
