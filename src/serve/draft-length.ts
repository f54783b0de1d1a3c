/**
 * How many tokens to draft at each step of speculative decoding
 * (docs/decode.md#adaptive-draft-length): the k that is expected to emit the
 * most tokens per millisecond, from what the steps so far have measured.
 *
 * A step with k drafts costs k draft tokens (d ms each: a draft model's
 * forwards, ~0 for prompt lookup) plus one target forward over k + 1 rows
 * (v(k + 1) ms), and emits 1 + the drafts kept. With the first draft kept
 * with probability a₁ and each later one, after a kept one, with a₂, that
 * is E(k) = 1 + a₁·(1 + a₂ + … + a₂^(k−1)) tokens, so
 *
 *   k* = argmax over 0 ≤ k ≤ max of  E(k) / (k·d + v(k + 1))
 *
 * (the largest k within 5% of the best rate: where a few rows more cost next
 * to nothing, noise decides between them, and longer drafts pay off in runs).
 *
 * (Two rates, not one: drafts come in runs — a prompt lookup inside a
 * repeated passage is right several times over, one outside it wrong at
 * once — and a single rate would undervalue long drafts in a run.)
 *
 * A verification of k + 1 rows costs about one plain step where the
 * weights stream from memory (each is read once for all rows) and up to
 * k + 1 steps where the products are compute-bound (a small model in cache,
 * q8's integer kernels): the same draft can double decoding speed on one
 * model and halve it on another. k = 0 is a plain step.
 *
 * - a₁, a₂: first drafts kept over first drafts judged, and later drafts
 *   kept over later drafts judged (up to the first rejection), counts
 *   decayed by DECAY per step that drafts, so that they follow the text; a
 *   prior of one kept and one rejected each before anything is seen.
 * - v(r): the cost of a verification of r rows, near the low edge of what
 *   it measures: a faster measurement is taken at once, a slower one moves
 *   it a third of the way (noise only ever adds time — a descheduled
 *   thread, a garbage collection, a cold first call — while a real rise, a
 *   longer context to attend over, still comes through); a row count's
 *   first measurement is dropped (it pays one-time costs). A row count not
 *   measured yet is estimated from its measured neighbours: linearly between
 *   two, and optimistically outside them (as the nearest one below, or in
 *   proportion to rows under the nearest one above), so that each is tried
 *   once and then judged by its measurement.
 * - d: the same over the draft's milliseconds per token drafted.
 *
 * Every PROBE_EVERY steps one step takes the k whose verification was
 * measured longest ago instead of k*, so that every estimate is measured
 * again now and then (and a₁, a₂, which cannot move while k* is 0). A probe
 * costs what that k costs (a model draft's catch-up over the tokens it
 * missed, too), so while k* stays where it is the probes grow twice as far
 * apart each time, up to PROBE_MOST steps; a new k* brings them back.
 *
 * Used at temperature 0 only, when asked for (`adaptive: true`,
 * src/serve/speculative.ts): the choice depends on timings, and only greedy
 * decoding emits the same text whatever k is; with sampling, k stays fixed
 * so that a seed gives the same text each run.
 */

/** Weight of the history in each decayed count and mean (per observation). */
const DECAY = 0.9;
/** Steps at k* between two probes, at first and at most. */
const PROBE_EVERY = 8;
const PROBE_MOST = 128;
/** How far a slower measurement moves an estimate. */
const RISE = 1 / 3;
/** Rates this close to the best count as the best (the most drafts among them is taken). */
const TIE = 0.05;

/** What one step of speculative decoding did. */
export interface DraftStep {
  /** Tokens drafted (the proposal may be shorter than the k asked for: prompt lookup with no match). */
  proposed: number;
  /** Drafts kept (the first `accepted` of them). */
  accepted: number;
  /** Milliseconds the draft took (model forwards, or the lookup). */
  draftMs: number;
  /** Milliseconds of the target's forward over proposed + 1 rows. */
  verifyMs: number;
}

export class DraftLength {
  /** Decayed counts: first drafts kept and judged, later drafts kept and judged. */
  private readonly kept = [1, 1];
  private readonly judged = [2, 2];
  /** verify[r]: the weighted mean milliseconds of a verification of r rows (NaN: none yet). */
  private readonly verify: Float64Array;
  /** seen[r]: the step at which a verification of r rows was last measured (or probed); firsts[r]: whether one was seen. */
  private readonly seen: Float64Array;
  private readonly firsts: Uint8Array;
  private draftPerToken = Number.NaN;
  private steps = 0;
  private sinceProbe = 0;
  private probeEvery = PROBE_EVERY;
  private lastBest = -1;

  /** `max`: the most tokens a step may draft (--draft-tokens). */
  constructor(readonly max: number) {
    if (!(Number.isInteger(max) && max >= 1)) throw new RangeError(`DraftLength: max must be a positive integer, got ${max}`);
    this.verify = new Float64Array(max + 2).fill(Number.NaN);
    this.seen = new Float64Array(max + 2).fill(-1);
    this.firsts = new Uint8Array(max + 2);
  }

  /** The estimated probability that a step's first draft is kept (which = 0), or a later one after a kept one (which = 1). */
  acceptance(which: 0 | 1 = 0): number {
    return this.kept[which]! / this.judged[which]!;
  }

  /** Tokens a step emits on average with k drafts: 1 + a₁·(1 + a₂ + … + a₂^(k−1)). */
  expectedTokens(k: number): number {
    const [a1, a2] = [this.acceptance(0), this.acceptance(1)];
    let run = 0;
    for (let i = 0, p = 1; i < k; i++, p *= a2) run += p;
    return 1 + a1 * run;
  }

  /** The estimated milliseconds of a verification of r rows (NaN before any was measured). */
  verifyMs(r: number): number {
    const v = this.verify;
    if (!Number.isNaN(v[r]!)) return v[r]!;
    let below = r - 1;
    while (below >= 1 && Number.isNaN(v[below]!)) below--;
    let above = r + 1;
    while (above < v.length && Number.isNaN(v[above]!)) above++;
    const [hasBelow, hasAbove] = [below >= 1, above < v.length];
    if (hasBelow && hasAbove) return v[below]! + ((v[above]! - v[below]!) * (r - below)) / (above - below);
    if (hasBelow) return v[below]!;
    if (hasAbove) return (v[above]! * r) / above;
    return Number.NaN;
  }

  /** The drafts to ask for at the next step. */
  next(): number {
    const d = Number.isNaN(this.draftPerToken) ? 0 : this.draftPerToken;
    if (Number.isNaN(this.verifyMs(1))) return this.max; // nothing measured yet: the most, as a fixed k would
    const rates = Array.from({ length: this.max + 1 }, (_, k) => this.expectedTokens(k) / (k * d + this.verifyMs(k + 1)));
    const top = Math.max(...rates);
    // The most drafts whose rate is within TIE of the best: where verifications stream, a few rows more cost
    // next to nothing and their estimates differ by noise, and the longer draft is the one that pays off in a run.
    let best = this.max;
    while (best > 0 && rates[best]! < (1 - TIE) * top) best--;
    if (best !== this.lastBest) [this.lastBest, this.probeEvery] = [best, PROBE_EVERY];
    if (++this.sinceProbe > this.probeEvery) {
      this.sinceProbe = 0;
      this.probeEvery = Math.min(2 * this.probeEvery, PROBE_MOST);
      let oldest = 0;
      for (let k = 1; k <= this.max; k++) if (this.seen[k + 1]! < this.seen[oldest + 1]!) oldest = k;
      this.seen[oldest + 1] = this.steps; // probed, even if the lookup then proposes fewer
      return oldest;
    }
    return best;
  }

  /** Takes in what a step did. */
  observe(s: DraftStep): void {
    const low = (old: number, x: number) => (Number.isNaN(old) || x < old ? x : old + RISE * (x - old));
    const rows = s.proposed + 1;
    this.steps++;
    if (rows < this.verify.length) {
      // A row count's first verification is not taken: it pays one-time costs (the weights' packed copies
      // made on their first product, buffers for that many rows) that the low edge would keep for long.
      if (this.firsts[rows]) this.verify[rows] = low(this.verify[rows]!, s.verifyMs);
      this.firsts[rows] = 1;
      this.seen[rows] = this.steps;
    }
    if (s.proposed === 0) return;
    this.draftPerToken = low(this.draftPerToken, s.draftMs / s.proposed);
    // Judged: the drafts up to and including the first rejected one (all of them when none was).
    const judged = s.accepted + (s.accepted < s.proposed ? 1 : 0);
    const first = s.accepted > 0 ? 1 : 0;
    for (let i = 0; i < 2; i++) {
      this.kept[i]! *= DECAY;
      this.judged[i]! *= DECAY;
    }
    this.kept[0]! += first;
    this.judged[0]! += 1;
    this.kept[1]! += s.accepted - first;
    this.judged[1]! += judged - 1;
  }
}
