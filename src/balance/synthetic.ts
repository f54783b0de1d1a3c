/**
 * A synthetic router, to study configurations too large to train here
 * (Pangu Pro MoE's 64 experts on 8 devices).
 *
 * Each token scores every expert with s_e = −skew·ln(rank_e + 1) + g_e, where
 * rank is a random permutation of the experts (popularity unrelated to where
 * an expert is placed) and g_e is standard Gumbel noise drawn per token. The
 * top-k of s is then a draw of k distinct experts without replacement from the
 * Zipf popularity p_e ∝ (rank_e + 1)^−skew (the Gumbel-top-k trick): skew 0 is
 * uniform random top-k, larger skews concentrate tokens on a few experts, as
 * a poorly balanced learned router does.
 *
 * `topk` and `moge` choose on the *same* scores — global top-k versus the
 * top-K' of each group — so the comparison of the two is apples to apples.
 */
import { Rng } from "../util/rng.js";
import { SigmaError } from "../util/errors.js";
import type { RoutedBatch } from "./analysis.js";

export class SyntheticRouter {
  /** Popularity log-weight of each expert [E]. */
  readonly logPopularity: Float64Array;
  private readonly rng: Rng;

  /** `seed` draws the popularity ranks, `noiseSeed` (default: seed) the per-token noise. */
  constructor(readonly experts: number, readonly skew: number, seed: number, noiseSeed = seed) {
    if (!Number.isInteger(experts) || experts < 1) throw new SigmaError(`synthetic router: experts = ${experts} must be a positive integer`);
    if (!(skew >= 0 && Number.isFinite(skew))) throw new SigmaError(`synthetic router: skew = ${skew} must be finite and ≥ 0`, "0 is uniform routing; 1 is a Zipf popularity");
    const rank = Int32Array.from({ length: experts }, (_, i) => i);
    new Rng(seed).shuffle(rank);
    this.rng = new Rng(noiseSeed + 0x51ed);
    this.logPopularity = Float64Array.from(rank, (r) => -skew * Math.log(r + 1));
  }

  /** Scores [R, E] of R fresh tokens. */
  scores(tokens: number): Float64Array {
    const E = this.experts;
    const s = new Float64Array(tokens * E);
    for (let r = 0; r < tokens; r++) {
      for (let e = 0; e < E; e++) {
        let u = 0;
        while (u === 0) u = this.rng.uniform();
        s[r * E + e] = this.logPopularity[e]! - Math.log(-Math.log(u));
      }
    }
    return s;
  }
}

/** Global top-k of each row of scores [R, E]. */
export function topkRouting(scores: Float64Array, experts: number, k: number): RoutedBatch {
  if (k < 1 || k > experts) throw new SigmaError(`top-k: k = ${k} must be in 1..${experts}`);
  return { experts, k, expertIds: chooseTop(scores, experts, 1, k) };
}

/** MoGE: the top-K' of each of G equal groups of each row; K = G·K' choices per token. */
export function mogeRouting(scores: Float64Array, experts: number, groups: number, perGroup: number): RoutedBatch {
  if (experts % groups !== 0) throw new SigmaError(`MoGE: ${groups} groups do not divide ${experts} experts`, "choose groups as a divisor of the expert count");
  if (perGroup < 1 || perGroup > experts / groups) throw new SigmaError(`MoGE: K' = ${perGroup} must be in 1..${experts / groups} (the group size)`);
  return { experts, k: groups * perGroup, expertIds: chooseTop(scores, experts, groups, perGroup) };
}

/** For each row and each of `groups` equal slices, the ids of its `per` largest scores (largest first). */
function chooseTop(scores: Float64Array, E: number, groups: number, per: number): Int32Array {
  const R = scores.length / E;
  const size = E / groups;
  const k = groups * per;
  const ids = new Int32Array(R * k);
  const best = new Int32Array(per);
  for (let r = 0; r < R; r++) {
    for (let g = 0; g < groups; g++) {
      let n = 0;
      // Insertion into a short sorted list: per is small (≤ 8 here).
      for (let e = g * size; e < (g + 1) * size; e++) {
        const v = scores[r * E + e]!;
        let pos = n;
        while (pos > 0 && scores[r * E + best[pos - 1]!]! < v) pos--;
        if (pos >= per) continue;
        for (let i = Math.min(n, per - 1); i > pos; i--) best[i] = best[i - 1]!;
        best[pos] = e;
        if (n < per) n++;
      }
      ids.set(best, r * k + g * per);
    }
  }
  return ids;
}
