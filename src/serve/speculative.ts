/**
 * Speculative decoding (docs/decode.md): a cheap draft proposes k tokens, the
 * target model checks all of them in one forward over k + 1 positions, and a
 * rejection rule keeps the target's own sampling distribution exactly.
 *
 * One step, with `pending` the last emitted token (not yet in the target's
 * cache) and x₁ … x_k the draft's proposal drawn from q₁ … q_k:
 *
 *   forward [pending, x₁ … x_k] through the target's cache → p₁ … p_{k+1}
 *   for i = 1 … k: accept xᵢ with probability min(1, pᵢ(xᵢ) / qᵢ(xᵢ));
 *                  on rejection emit a draw from normalize(max(0, pᵢ − qᵢ)) and stop
 *   all k accepted: emit one more token drawn from p_{k+1}
 *   roll the caches back to the tokens that were kept
 *
 * p and q are the distributions after the same temperature / top-k / top-p
 * transform that plain sampling uses (src/serve/sampling.ts), so the emitted
 * tokens follow exactly the distribution plain decoding samples from. At
 * temperature 0 both are point masses on the argmax: a draft token is kept
 * iff it is the target's argmax, the residual is the argmax, and the text is
 * token for token that of plain decoding.
 *
 * Drafts: another Sigma model with the same tokenizer (its own KV cache,
 * rolled back like the target's), or prompt lookup ("ngram"): the k tokens
 * that followed the most recent earlier occurrence of the context's last n
 * tokens (continuing the copy periodically past the context's end). Its q is a point mass on each proposed token, so the rule becomes:
 * accept x with probability p(x), else draw from p without x, renormalized.
 */
import { noGrad } from "../autograd/tape.js";
import type { ModelCache, PanguSigma } from "../models/pangu-sigma.js";
import { DECODE_ROWS } from "../ops/stored.js";
import { SigmaError } from "../util/errors.js";
import { Rng } from "../util/rng.js";
import type { GenerateOptions } from "./generate.js";
import { DraftLength } from "./draft-length.js";
import { argmax, checkSampling, mostLikely, type SamplingOptions } from "./sampling.js";

/** Where the proposals come from. */
export type Draft = { kind: "ngram"; /** longest suffix matched (default 3) */ n?: number } | { kind: "model"; model: PanguSigma; /** index into the draft's domains */ domain: number };

export interface SpeculativeOptions extends GenerateOptions {
  /** Tokens the draft proposes per step (k ≥ 1); with `adaptive`, the most a step proposes. */
  draftTokens: number;
  /**
   * At temperature 0, choose each step's number of drafts (0 … draftTokens)
   * from the acceptance and the costs measured so far (./draft-length.ts;
   * default false). The text is the same either way; with sampling k is
   * always draftTokens. Off by default: where verifications stream (the
   * case speculative decoding is for) a fixed k of about 4 was as fast or
   * faster in the eleventh session's runs (config R: 1.91–2.27× against
   * 2.10–2.52×); it pays where verifying costs many plain steps.
   */
  adaptive?: boolean;
}

/** Counters of one generation, filled as it runs. */
export interface SpeculativeStats {
  /** Target forwards after the prefill (verification steps). */
  steps: number;
  /** Draft tokens proposed and accepted. */
  proposed: number;
  accepted: number;
  /** Tokens emitted. */
  emitted: number;
  /** Milliseconds spent in the prompt's forward (the prefill, before the first verification), so that decoding speed can be told apart from it. */
  prefillMs: number;
  /** Milliseconds spent drafting (the draft model's forwards and choices, or the prompt lookup). */
  draftMs: number;
  /** Milliseconds spent in the target's verification forwards. */
  verifyMs: number;
}

export const newSpeculativeStats = (): SpeculativeStats => ({ steps: 0, proposed: 0, accepted: 0, emitted: 0, prefillMs: 0, draftMs: 0, verifyMs: 0 });

/**
 * The probabilities plain sampling draws the next token from, over all V ids:
 * a point mass on the argmax at temperature 0, else softmax(logits / T) cut to
 * the top-k ids and to the nucleus of mass top-p, renormalized — the same
 * steps, in the same order and with the same ties, as sampleToken.
 */
export function samplingDistribution(logits: ArrayLike<number>, o: SamplingOptions): Float64Array {
  const V = logits.length;
  const p = new Float64Array(V);
  if (o.temperature === 0) {
    p[argmax(logits)] = 1;
    return p;
  }
  if (o.topP >= 1 && (o.topK === 0 || o.topK >= V)) {
    let max = -Infinity;
    for (let i = 0; i < V; i++) if (logits[i]! > max) max = logits[i]!;
    let total = 0;
    for (let i = 0; i < V; i++) total += p[i] = Math.exp((logits[i]! - max) / o.temperature);
    for (let i = 0; i < V; i++) p[i]! /= total;
    return p;
  }
  const ids = mostLikely(logits, o.topK > 0 ? Math.min(o.topK, V) : V);
  const max = logits[ids[0]!]!;
  const w = ids.map((i) => Math.exp((logits[i]! - max) / o.temperature));
  const total = w.reduce((a, b) => a + b, 0);
  let keep = w.length;
  if (o.topP < 1) {
    let acc = 0;
    for (let j = 0; j < w.length; j++) {
      acc += w[j]! / total;
      if (acc >= o.topP) {
        keep = j + 1;
        break;
      }
    }
  }
  let mass = 0;
  for (let j = 0; j < keep; j++) mass += w[j]!;
  for (let j = 0; j < keep; j++) p[ids[j]!] = w[j]! / mass;
  return p;
}

/** One draw from the weights `w` (not necessarily normalized, total > 0), in id order. */
export function drawFrom(w: ArrayLike<number>, rng: Rng, total?: number): number {
  let t = total ?? 0;
  if (total === undefined) for (let i = 0; i < w.length; i++) t += w[i]!;
  let u = rng.uniform() * t;
  let last = -1;
  for (let i = 0; i < w.length; i++) {
    if (!(w[i]! > 0)) continue;
    last = i;
    u -= w[i]!;
    if (u < 0) return i;
  }
  return last; // rounding left u ≥ 0 after the last weight
}

/**
 * The speculative-sampling rule for one proposed token x drawn from q
 * (`q` null: a point mass on x, as n-gram drafts are), judged by the
 * target's p: keep x with probability min(1, p(x) / q(x)); otherwise the
 * token emitted instead is a draw from normalize(max(0, p − q)). Certain
 * outcomes (probability 0 or 1) draw no random number, so at temperature 0
 * the rule is deterministic.
 */
export function acceptOrResample(p: Float64Array, q: Float64Array | null, x: number, rng: Rng): { accepted: boolean; token: number } {
  const qx = q ? q[x]! : 1;
  const ratio = qx > 0 ? p[x]! / qx : 1;
  if (ratio >= 1 || (ratio > 0 && rng.uniform() < ratio)) return { accepted: true, token: x };
  // The residual: where the target puts more mass than the draft did.
  const r = new Float64Array(p.length);
  let total = 0;
  for (let i = 0; i < p.length; i++) {
    const d = p[i]! - (q ? q[i]! : i === x ? 1 : 0);
    if (d > 0) total += r[i] = d;
  }
  // p = q up to rounding: nothing left over, so the target's own draw stands in.
  return { accepted: false, token: total > 0 ? drawFrom(r, rng, total) : drawFrom(p, rng) };
}

/**
 * A draft model's next token from its logits, and the distribution q it was
 * drawn from: at temperature 0 the argmax, with q null (a point mass on it,
 * as an n-gram draft's — no V-long array per proposal); else a draw from q.
 */
export function draftToken(logits: ArrayLike<number>, o: SamplingOptions, rng: Rng): { x: number; q: Float64Array | null } {
  if (o.temperature === 0) return { x: argmax(logits), q: null };
  const q = samplingDistribution(logits, o);
  return { x: drawFrom(q, rng, 1), q };
}

/**
 * The rule for a drafted token x (drawn from q; null: a point mass on x)
 * judged by the target's logits at its position: acceptOrResample against
 * the target's sampling distribution. At temperature 0 that is a point mass
 * on the argmax, so x is kept iff it is the argmax, which is also what
 * replaces it — decided here without building the V-long distributions.
 */
export function judgeDraft(logits: ArrayLike<number>, o: SamplingOptions, q: Float64Array | null, x: number, rng: Rng): { accepted: boolean; token: number } {
  if (o.temperature === 0) {
    const best = argmax(logits);
    return { accepted: best === x, token: best };
  }
  return acceptOrResample(samplingDistribution(logits, o), q, x, rng);
}

/**
 * Rolls a model's KV cache back to its first `length` positions: the keys and
 * values past it are left in place and overwritten by the next forward.
 */
export function truncateCache(cache: ModelCache, length: number): void {
  if (!(Number.isInteger(length) && length >= 0 && length <= cache.length)) throw new RangeError(`truncateCache: ${length} is not within the cache's ${cache.length} positions`);
  for (const kv of cache.layers) kv.length = length;
  cache.query.length = length;
  cache.length = length;
}

/**
 * The tokens that followed the most recent earlier occurrence of the
 * context's last m tokens, for m = n … 1 (the longest suffix that occurred
 * before wins), k of them — past the context's end the copy goes on from
 * its own start, so a repeating pattern is proposed in full; [] when no
 * suffix occurred before.
 */
export function ngramProposal(context: readonly number[], k: number, n = 3): number[] {
  const L = context.length;
  for (let m = Math.min(n, L - 1); m >= 1; m--) {
    for (let j = L - m - 1; j >= 0; j--) {
      let same = true;
      for (let t = 0; t < m && same; t++) same = context[j + t] === context[L - m + t];
      if (!same) continue;
      // The copy runs on past the context's end into its own proposal: a pattern of period P < k repeats in full.
      const out: number[] = [];
      for (let i = 0; i < k; i++) out.push(j + m + i < L ? context[j + m + i]! : out[j + m + i - L]!);
      return out;
    }
  }
  return [];
}

const lengths = new WeakMap<PanguSigma, { ngram: DraftLength | null; models: WeakMap<PanguSigma, DraftLength> }>();

/**
 * The draft-length choice of a target with a draft: kept across generations
 * (a chat's replies, a benchmark's prompts), since what a verification costs
 * is the target's and the machine's, and the acceptance follows the text.
 * Weakly held: neither model is kept alive by it.
 */
function draftLength(target: PanguSigma, draft: Draft, max: number): DraftLength {
  let byDraft = lengths.get(target);
  if (!byDraft) lengths.set(target, (byDraft = { ngram: null, models: new WeakMap() }));
  let l = draft.kind === "model" ? byDraft.models.get(draft.model) : byDraft.ngram;
  if (!l || l.max !== max) {
    l = new DraftLength(max);
    if (draft.kind === "model") byDraft.models.set(draft.model, l);
    else byDraft.ngram = l;
  }
  return l;
}

/** A model and its cache; the cache holds context[offset … offset + cache.length). `logits`: room its forwards write their logits into. */
interface Cached {
  model: PanguSigma;
  domains: Int32Array;
  cache: ModelCache;
  offset: number;
  logits: Float32Array;
}

/** Feeds `ids` after the cache; returns the logits of every new position, one row each (`lastOnly`: of the last one only), valid until the next feed. */
function feed(c: Cached, ids: readonly number[], lastOnly = false): (Float32Array | Float64Array)[] {
  const out = noGrad(() => c.model.forward({ tokens: Int32Array.from(ids), domains: c.domains, B: 1, T: ids.length, lastOnly, logitsInto: c.logits }, c.cache));
  const V = c.model.config.vocabSize;
  return (lastOnly ? ids.slice(-1) : ids).map((_, i) => out.logits.data.subarray(i * V, (i + 1) * V));
}

/** Refuses a draft model whose vocabulary is not the target's. */
export function checkDraftModel(target: PanguSigma, draft: PanguSigma): void {
  if (draft.config.vocabSize !== target.config.vocabSize) {
    throw new SigmaError(`the draft model's vocabulary (${draft.config.vocabSize} tokens) is not the target's (${target.config.vocabSize} tokens)`, "a draft must share the target's tokenizer: train it on the same data folder, or cut it from the target with sigma extract; or use --draft ngram");
  }
}

/**
 * Yields generated token ids one at a time (prompt not included), as
 * generateIds does, drafting `o.draftTokens` tokens per step. `stats`, when
 * given, counts the proposals and acceptances.
 */
export function* speculativeIds(target: PanguSigma, prompt: ArrayLike<number>, domain: number, o: SpeculativeOptions, draft: Draft, stats: SpeculativeStats = newSpeculativeStats()): Generator<number> {
  checkSampling(o);
  const c = target.config;
  if (domain < 0 || domain >= c.domains.length) throw new SigmaError(`domain index ${domain} is not one of the model's ${c.domains.length} domains`);
  if (prompt.length === 0) throw new SigmaError("generation needs at least one prompt token", "start with the domain's control token or any text");
  if (!(Number.isInteger(o.draftTokens) && o.draftTokens >= 1)) throw new SigmaError(`draft tokens must be a positive integer, got ${o.draftTokens}`, "4 is typical");
  if (draft.kind === "model") {
    checkDraftModel(target, draft.model);
    if (draft.domain < 0 || draft.domain >= draft.model.config.domains.length) throw new SigmaError(`domain index ${draft.domain} is not one of the draft model's ${draft.model.config.domains.length} domains`);
  }
  const rng = new Rng(o.seed);
  const context = Array.from(prompt);
  const models = draft.kind === "model" ? [target, draft.model] : [target];
  const wasTraining = models.map((m) => m.training);
  for (const m of models) m.eval();
  try {
    // After a fill the target's cache holds every context token but the last (`pending`), which opens the next verification forward.
    // Each forward's logits are read before the next one: one buffer per model (a verification's k + 1 rows; a draft's one).
    const tgt: Cached = { model: target, domains: Int32Array.of(domain), cache: target.newCache(1), offset: 0, logits: new Float32Array((o.draftTokens + 1) * c.vocabSize) };
    const dft: Cached | null = draft.kind === "model" ? { model: draft.model, domains: Int32Array.of(draft.domain), cache: draft.model.newCache(1), offset: 0, logits: new Float32Array(draft.model.config.vocabSize) } : null;
    // The prompt, and a restart when the cache is full, as plain decoding does them (generate.ts): the context — past
    // seqLen its last half — in one forward, and the next token drawn from its last position. So greedy text is plain
    // decoding's token for token from the first token on (a verification's rows are a one-row step's, but the prompt's
    // forward is not: past DECODE_ROWS positions it takes other kernels, and a near-tie could go the other way).
    const fill = (): number => {
      tgt.cache = target.newCache(1);
      const tail = context.length <= c.seqLen - 1 ? context : context.slice(-Math.max(1, Math.floor(c.seqLen / 2)));
      tgt.offset = context.length - tail.length;
      // A model draft restarts at the same place (it proposes from the window the target now sees).
      if (dft && dft.offset < tgt.offset) [dft.cache, dft.offset] = [dft.model.newCache(1), tgt.offset];
      const logits = feed(tgt, tail, true)[0]!;
      return o.temperature === 0 ? argmax(logits) : drawFrom(samplingDistribution(logits, o), rng, 1);
    };

    /** The draft model's k tokens and the distributions they were drawn from. */
    const proposeByModel = (d: Cached, k: number): { xs: number[]; qs: (Float64Array | null)[] } => {
      const Ld = d.model.config.seqLen;
      let missing = context.slice(d.offset + d.cache.length);
      if (d.cache.length + missing.length + k - 1 > Ld) {
        d.cache = d.model.newCache(1);
        missing = context.slice(-Math.max(1, Math.floor(Ld / 2)));
        d.offset = context.length - missing.length;
        k = Math.min(k, Ld - missing.length + 1);
      }
      const xs: number[] = [];
      const qs: (Float64Array | null)[] = [];
      // The catch-up (a whole prompt, the first time) in pieces of DECODE_ROWS positions: each a decode step,
      // where one forward of more rows takes the general path (a millisecond or more on a small draft, for
      // logits that only decide what it proposes; the target's prefill stays plain decoding's own).
      for (let at = 0; at + DECODE_ROWS < missing.length; at += DECODE_ROWS) feed(d, missing.slice(at, at + DECODE_ROWS), true);
      let logits = feed(d, missing.slice(Math.floor((missing.length - 1) / DECODE_ROWS) * DECODE_ROWS), true)[0]!;
      for (let i = 0; i < k; i++) {
        const { x, q } = draftToken(logits, o, rng);
        xs.push(x);
        qs.push(q);
        if (i < k - 1) logits = feed(d, [x])[0]!;
      }
      return { xs, qs };
    };

    // Greedy and asked for: the text does not depend on k, so each step takes the k expected to be fastest.
    const chooser = o.temperature === 0 && o.adaptive === true ? draftLength(target, draft, o.draftTokens) : null;

    /** One step: the draft's proposal verified in one forward from pending; the tokens it keeps. */
    const verify = (emitted: number): number[] => {
      // Room for pending + k drafts in the cache, and no drafting past maxTokens (the step always adds one token of its own).
      const k = Math.min(chooser ? chooser.next() : o.draftTokens, c.seqLen - tgt.cache.length - 1, o.maxTokens - emitted - 1);
      let xs: number[] = [];
      let qs: (Float64Array | null)[] = [];
      const t1 = performance.now();
      if (k > 0 && dft) ({ xs, qs } = proposeByModel(dft, k));
      else if (k > 0) {
        xs = ngramProposal(context, k, draft.kind === "ngram" ? draft.n : undefined);
        qs = xs.map(() => null);
      }
      const t2 = performance.now();
      stats.draftMs += t2 - t1;
      const before = tgt.cache.length;
      const rows = feed(tgt, [context.at(-1)!, ...xs]);
      const t3 = performance.now();
      stats.verifyMs += t3 - t2;
      const kept: number[] = [];
      let accepted = 0;
      for (let i = 0; ; i++) {
        if (i === xs.length) {
          kept.push(o.temperature === 0 ? argmax(rows[i]!) : drawFrom(samplingDistribution(rows[i]!, o), rng, 1));
          break;
        }
        const r = judgeDraft(rows[i]!, o, qs[i]!, xs[i]!, rng);
        kept.push(r.token);
        if (!r.accepted) break;
        accepted++;
      }
      stats.steps++;
      stats.proposed += xs.length;
      stats.accepted += accepted;
      chooser?.observe({ proposed: xs.length, accepted, draftMs: t2 - t1, verifyMs: t3 - t2 });
      // Roll back: the target keeps pending and the accepted drafts; the last kept token is the next pending.
      truncateCache(tgt.cache, before + 1 + accepted);
      return kept;
    };

    let emitted = 0;
    let fresh = true;
    while (emitted < o.maxTokens) {
      // The prompt's forward and each restart's give one token, as in plain decoding; verifications the rest.
      let kept: number[];
      if (fresh || tgt.cache.length + 1 > c.seqLen) {
        const t0 = performance.now();
        kept = [fill()];
        if (fresh) stats.prefillMs += performance.now() - t0;
        fresh = false;
      } else kept = verify(emitted);
      for (const id of kept) {
        if (id === o.stopId) return;
        yield id;
        context.push(id);
        stats.emitted++;
        if (++emitted >= o.maxTokens) return;
      }
      // The draft keeps what matches the context: everything before the last kept token.
      if (dft) truncateCache(dft.cache, Math.max(0, Math.min(dft.cache.length, context.length - 1 - dft.offset)));
    }
  } finally {
    models.forEach((m, i) => m.train(wasTraining[i]!));
  }
}
