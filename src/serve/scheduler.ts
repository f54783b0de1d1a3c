/**
 * Continuous batching: one loop decodes every active sequence together.
 *
 *   submit(requests) → a stream of events per sequence (tokens, then done)
 *
 * Each turn of the loop is one step:
 *   1. Cancelled sequences leave (a client went away, or cancel() was
 *      called): their KV blocks go back to the pool.
 *   2. Waiting sequences join, oldest first, while the batch has room
 *      (maxBatch) and the pool can reserve their positions (prompt +
 *      max_tokens).
 *   3. Each decoding sequence brings its last sampled token; sequences still
 *      in their prompt share a budget of `prefillChunk` prompt tokens, oldest
 *      first, so a long prompt is fed over several steps beside the running
 *      streams instead of stalling them.
 *   4. One batched forward (src/serve/batch.ts) gives the logits of every
 *      sequence that needs a next token.
 *      With n-gram drafting on (draftTokens > 0), a decoding sequence whose
 *      context has a match brings its last token and up to k proposed ones
 *      (src/serve/speculative.ts: prompt lookup) and wants the logits after
 *      each of them. With a draft model instead, the draft first proposes
 *      them: k batched forwards of the draft over every drafting sequence
 *      (its own KV pool, fed the same prompt chunks as the target), each
 *      sampling one token per sequence from the draft's distribution q.
 *   5. Each such sequence samples with its own settings and seeded Rng,
 *      decodes the token to text (held back while a character or a possible
 *      stop string is incomplete), and ends at <|endoftext|>, at a stop
 *      string, or at max_tokens; it then leaves and frees its blocks.
 *      A drafting sequence checks its proposal with the speculative rule
 *      (each drafted token kept with probability p(x), the first rejected
 *      one replaced by a draw from p without it; all kept: one more token
 *      from the last position), emits 1 … k + 1 tokens, and its KV length is
 *      cut back to the positions it kept. At temperature 0 its text is plain
 *      decoding's, token for token.
 * Between steps the loop yields to the event loop, so HTTP requests are read
 * and tokens written while decoding goes on; with nothing to do it sleeps
 * until the next submit.
 *
 * Back-pressure: at most maxBatch sequences decode and at most maxQueue more
 * wait; a submit beyond that throws QueueFullError (the server's 429).
 */
import { setImmediate as nextTurn } from "node:timers/promises";
import type { PanguSigma } from "../models/pangu-sigma.js";
import type { FloatArray } from "../tensor/dtype.js";
import type { TextTokenizer, TextStreamDecoder } from "../tokenizer/codec.js";
import { SigmaError } from "../util/errors.js";
import { Rng } from "../util/rng.js";
import { attentionLayers, forwardBatch, type BatchItem } from "./batch.js";
import { ExpertLoad } from "./expert-load.js";
import { KVPool, type KVSeq } from "./kv-pool.js";
import type { ServerMetrics } from "./metrics.js";
import { checkSampling, sampleToken, type SamplingOptions } from "./sampling.js";
import { checkDraftModel, draftToken, judgeDraft, ngramProposal } from "./speculative.js";
import { StopMatcher } from "./stop.js";

export interface SchedulerOptions {
  /** Sequences decoded together at most (default 16). */
  maxBatch?: number;
  /** Sequences that may wait for a place in the batch (default 64). */
  maxQueue?: number;
  /** Prompt tokens fed per step, over all prefilling sequences (default 64). */
  prefillChunk?: number;
  /** Positions per KV block (default 16). */
  blockSize?: number;
  /** KV blocks in the pool (default: enough for maxBatch sequences of the model's full context). */
  kvBlocks?: number;
  metrics?: ServerMetrics;
  /** Speculative decoding: tokens proposed per step and sequence; 0 = none (default). */
  draftTokens?: number;
  /**
   * The draft that proposes them: a smaller model with the same vocabulary
   * (its domain of the same name, else its first), or n-gram prompt lookup
   * when absent. A sequence whose prompt + max_tokens exceeds the draft's
   * context decodes without drafts.
   */
  draftModel?: PanguSigma;
}

/** One sequence to generate. */
export interface SequenceRequest extends SamplingOptions {
  /** Prompt token ids (at least one). */
  prompt: number[];
  /** Domain index into model.config.domains. */
  domain: number;
  /** Tokens to generate at most; prompt + maxTokens must fit the model's context. */
  maxTokens: number;
  seed: number;
  /** Stop strings (the text ends just before the first to complete). */
  stop?: string[];
  /** Also end at <|endoftext|> (default true). */
  stopAtEndOfText?: boolean;
  /** Report the log-probability of each token and of this many most likely alternatives; null = none. */
  logprobs?: number | null;
  /** Show special tokens in the text (default false). */
  showSpecial?: boolean;
}

export interface TokenLogprob {
  /** The token's own text (its bytes decoded alone). */
  token: string;
  logprob: number;
  /** The most likely tokens at this position, most likely first. */
  top: { token: string; logprob: number }[];
}

export type FinishReason = "stop" | "length" | "cancelled" | "error";

export type SequenceEvent =
  | { kind: "token"; id: number; text: string; logprob?: TokenLogprob }
  | { kind: "done"; finish: FinishReason; text: string; promptTokens: number; completionTokens: number; error?: string };

/** Thrown by submit when the queue is full. */
export class QueueFullError extends Error {
  constructor(readonly waiting: number) {
    super(`the server is busy: ${waiting} sequences are waiting`);
  }
}

/** Thrown by submit after close(). */
export class SchedulerClosedError extends Error {
  constructor() {
    super("the server is shutting down");
  }
}

/** The consumer's side of a sequence: its events as an async iterator, and cancel(). */
export class SequenceStream implements AsyncIterable<SequenceEvent> {
  private readonly events: SequenceEvent[] = [];
  private wake: (() => void) | null = null;
  private ended = false;
  cancelled = false;

  /** Asks the scheduler to end the sequence at its next step (the stream then ends with finish "cancelled"). */
  cancel(): void {
    this.cancelled = true;
    this.notify?.();
  }

  /** @internal Set by the scheduler: wakes its loop. */
  notify: (() => void) | null = null;

  /** @internal */
  push(e: SequenceEvent): void {
    if (this.ended) return;
    if (e.kind === "done") this.ended = true;
    this.events.push(e);
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<SequenceEvent> {
    for (;;) {
      while (this.events.length === 0) await new Promise<void>((r) => (this.wake = r));
      this.wake = null;
      const e = this.events.shift()!;
      yield e;
      if (e.kind === "done") return;
    }
  }
}

/** A sequence inside the scheduler. */
interface Sequence {
  req: SequenceRequest;
  out: SequenceStream;
  rng: Rng;
  text: TextStreamDecoder;
  stop: StopMatcher;
  kv: KVSeq | null;
  /** Prompt tokens fed so far. */
  fed: number;
  generated: number;
  /** The last sampled token, fed at the next step. */
  next: number;
  arrived: number;
  lastToken: number;
  /** Prompt and generated tokens (the n-gram draft looks up its proposals here). */
  context: number[];
  /** The draft model's KV sequence (null: no model draft for this sequence), and the context tokens it holds. */
  dkv: KVSeq | null;
  draftFed: number;
}

/**
 * One sequence's part of a step, the tokens it drafted (checked after the
 * forward) and the draft's distributions they were drawn from (null: a point
 * mass, as n-gram proposals are).
 */
type StepItem = BatchItem & { s: Sequence; prefill: boolean; drafted: number[]; qs: (Float64Array | null)[] };

/** A draft model, its KV pool, and its domain for each of the target's. */
interface DraftModel {
  model: PanguSigma;
  pool: KVPool;
  domainOf: number[];
}

export class Scheduler {
  readonly pool: KVPool;
  /** Kept assignments per expert of each sparse layer over the recent steps (the web page's load view). */
  readonly expertLoad: ExpertLoad;
  readonly maxBatch: number;
  readonly maxQueue: number;
  readonly prefillChunk: number;
  readonly draftTokens: number;
  private readonly waiting: Sequence[] = [];
  private readonly running: Sequence[] = [];
  private wake: (() => void) | null = null;
  private closed = false;
  private readonly done: Promise<void>;
  private lastBatch = 0;
  private readonly draft: DraftModel | null;

  constructor(
    readonly model: PanguSigma,
    readonly tokenizer: TextTokenizer,
    o: SchedulerOptions = {},
    private readonly metrics: ServerMetrics | null = o.metrics ?? null,
  ) {
    this.maxBatch = positive("maxBatch", o.maxBatch ?? 16);
    this.maxQueue = nonNegative("maxQueue", o.maxQueue ?? 64);
    this.prefillChunk = positive("prefillChunk", o.prefillChunk ?? 64);
    this.draftTokens = nonNegative("draftTokens", o.draftTokens ?? 0);
    const blockSize = positive("blockSize", o.blockSize ?? 16);
    const c = model.config;
    const blocks = positive("kvBlocks", o.kvBlocks ?? this.maxBatch * Math.ceil(c.seqLen / blockSize));
    if (blocks < Math.ceil(c.seqLen / blockSize)) throw new SigmaError(`kvBlocks ${blocks} cannot hold one sequence of the model's context (${c.seqLen} positions in blocks of ${blockSize})`, `use at least ${Math.ceil(c.seqLen / blockSize)}`);
    this.pool = new KVPool(attentionLayers(model), model.blocks[0]!.attn.kvWidth, blockSize, blocks, model.tokenEmbedding.dtype, model.kvFormat);
    const dm = o.draftModel;
    if (dm) {
      checkDraftModel(model, dm);
      // As many blocks as the target's pool: whatever the target reserves, the draft can too.
      const names = dm.config.domains.map((d) => d.name);
      this.draft = { model: dm.eval(), pool: new KVPool(attentionLayers(dm), dm.blocks[0]!.attn.kvWidth, blockSize, blocks, dm.tokenEmbedding.dtype, dm.kvFormat), domainOf: c.domains.map((d) => Math.max(0, names.indexOf(d.name))) };
    } else this.draft = null;
    const sparse = model.blocks.flatMap((b, l) => (b.moe ? [l] : []));
    this.expertLoad = new ExpertLoad(sparse, c.experts?.count ?? 0);
    model.eval();
    this.done = this.loop();
  }

  /** The draft model's KV pool (null without a draft model). */
  get draftPool(): KVPool | null {
    return this.draft?.pool ?? null;
  }

  /** Sequences waiting to join, decoding now, and in the last step. */
  get stats(): { waiting: number; running: number; lastBatch: number; kvBlocksUsed: number; kvBlocks: number; kvSequences: number } {
    return { waiting: this.waiting.length, running: this.running.length, lastBatch: this.lastBatch, kvBlocksUsed: this.pool.used, kvBlocks: this.pool.blocks, kvSequences: this.pool.sequences };
  }

  /**
   * Checks `requests` (a SigmaError names what is wrong) and queues them
   * together: all or none. Throws QueueFullError when more would wait than
   * the batch's free places plus maxQueue.
   */
  submit(requests: SequenceRequest[]): SequenceStream[] {
    if (this.closed) throw new SchedulerClosedError();
    for (const r of requests) this.check(r);
    const room = this.maxBatch - this.running.length + this.maxQueue;
    if (this.waiting.length + requests.length > room) throw new QueueFullError(this.waiting.length);
    const now = performance.now();
    // Every sequence is built (a bad stop string throws here) before any is queued.
    const seqs: Sequence[] = requests.map((req) => {
      const out = new SequenceStream();
      out.notify = () => this.wake?.();
      const stop = new StopMatcher(req.stop ?? []);
      const text = this.tokenizer.streamDecoder({ skipSpecial: !req.showSpecial });
      return { req, out, rng: new Rng(req.seed), text, stop, kv: null, fed: 0, generated: 0, next: -1, arrived: now, lastToken: now, context: [...req.prompt], dkv: null, draftFed: 0 };
    });
    this.waiting.push(...seqs);
    this.wake?.();
    return seqs.map((s) => s.out);
  }

  /** Stops the loop; every sequence still waiting or running ends as cancelled. */
  async close(): Promise<void> {
    this.closed = true;
    this.wake?.();
    await this.done;
  }

  private check(r: SequenceRequest): void {
    const c = this.model.config;
    checkSampling(r);
    if (!(Number.isInteger(r.domain) && r.domain >= 0 && r.domain < c.domains.length)) throw new SigmaError(`domain index ${r.domain} is not one of the model's ${c.domains.length} domains`);
    if (r.prompt.length === 0) throw new SigmaError("the prompt is empty", "send at least one token of text");
    for (const id of r.prompt) if (!(Number.isInteger(id) && id >= 0 && id < c.vocabSize)) throw new SigmaError(`prompt token id ${id} is outside the vocabulary [0, ${c.vocabSize})`);
    if (!(Number.isInteger(r.maxTokens) && r.maxTokens >= 1)) throw new SigmaError(`max_tokens must be a positive integer, got ${r.maxTokens}`);
    if (r.prompt.length + r.maxTokens > c.seqLen) {
      throw new SigmaError(`the prompt (${r.prompt.length} tokens) plus max_tokens (${r.maxTokens}) is more than the model's context of ${c.seqLen} tokens`, "shorten the prompt or lower max_tokens");
    }
  }

  private async loop(): Promise<void> {
    while (!this.closed) {
      if (this.waiting.length === 0 && this.running.length === 0) {
        await new Promise<void>((r) => (this.wake = r));
        this.wake = null;
        continue;
      }
      try {
        this.step();
      } catch (e) {
        // A bug in a step ends the sequences in it, never the server.
        for (const s of [...this.running]) this.finish(s, "error", e instanceof Error ? e.message : String(e));
      }
      // Let requests be read and tokens be written before the next step.
      await nextTurn();
    }
    for (const s of [...this.waiting, ...this.running]) this.finish(s, "cancelled");
  }

  /** One step (see the file comment). */
  private step(): void {
    // 1. Cancelled sequences leave.
    for (const s of [...this.waiting, ...this.running]) if (s.out.cancelled) this.finish(s, "cancelled");
    // 2. Waiting sequences join while there is room.
    while (this.waiting.length > 0 && this.running.length < this.maxBatch) {
      const s = this.waiting[0]!;
      s.kv = this.pool.open(s.req.prompt.length + s.req.maxTokens);
      if (!s.kv) break;
      this.waiting.shift();
      this.running.push(s);
      const reach = s.req.prompt.length + s.req.maxTokens;
      if (this.draft && this.draftTokens > 0 && reach <= this.draft.model.config.seqLen) s.dkv = this.draft.pool.open(reach);
    }
    // 3. Each sequence's tokens for this step.
    const items: StepItem[] = [];
    /** Decoding sequences the draft model proposes for, and how many tokens each. */
    const proposing: { it: StepItem; k: number }[] = [];
    let budget = this.prefillChunk;
    for (const s of this.running) {
      const P = s.req.prompt.length;
      if (s.fed === P) {
        // Never more drafts than tokens still to generate after this step's own: the positions stay within the reservation.
        const k = Math.min(this.draftTokens, s.req.maxTokens - s.generated - 1);
        const drafted = k > 0 && !this.draft ? ngramProposal(s.context, k) : [];
        const it: StepItem = { s, seq: s.kv!, tokens: [s.next, ...drafted], domain: s.req.domain, logits: true, allLogits: drafted.length > 0, prefill: false, drafted, qs: drafted.map(() => null) };
        items.push(it);
        if (k > 0 && s.dkv) proposing.push({ it, k });
      } else if (budget > 0) {
        const n = Math.min(P - s.fed, budget);
        budget -= n;
        items.push({ s, seq: s.kv!, tokens: s.req.prompt.slice(s.fed, s.fed + n), domain: s.req.domain, logits: s.fed + n === P, prefill: true, drafted: [], qs: [] });
        s.fed += n;
        if (this.metrics) this.metrics.promptTokens += n;
      }
    }
    if (items.length === 0) return;
    // 4. One forward for the batch (after the draft model's, when there is one).
    const t0 = performance.now();
    let logits: (FloatArray | null)[];
    try {
      if (this.draft) this.draftForwards(this.draft, items, proposing);
      logits = forwardBatch(this.model, this.pool, items, (l, counts) => this.expertLoad.record(l, counts));
    } catch (e) {
      // A failed step ends its sequences, not the server.
      this.expertLoad.endStep();
      for (const it of items) this.finish(it.s, "error", e instanceof Error ? e.message : String(e));
      return;
    }
    const now = performance.now();
    this.expertLoad.endStep();
    this.lastBatch = items.length;
    if (this.metrics) {
      this.metrics.steps++;
      this.metrics.stepSeconds.observe((now - t0) / 1000);
      this.metrics.batchSize.observe(items.length);
    }
    // 5. Sample, emit, end.
    items.forEach((it, i) => {
      const row = logits[i];
      if (!row) return;
      if (it.drafted.length === 0) this.emit(it.s, sampleToken(row, it.s.req, it.s.rng), row, now);
      else this.verify(it, row, now);
    });
  }

  /**
   * The draft model's part of a step: the prompt chunks the target is fed
   * this step go into the draft's cache too; then k batched forwards over the
   * proposing sequences, the first feeding the context the draft has not
   * seen (the last emitted token, and the last accepted draft when all were
   * kept), each next one the token just proposed. Each proposal is drawn
   * from the draft's sampling distribution q (its argmax at temperature 0),
   * with the sequence's own Rng; the items then carry [pending, x₁ … x_k].
   */
  private draftForwards(d: DraftModel, items: StepItem[], proposing: { it: StepItem; k: number }[]): void {
    const prefill: BatchItem[] = [];
    for (const it of items) {
      const s = it.s;
      if (!it.prefill || !s.dkv) continue;
      // A prompt chunk (this step's, fed to the target below).
      prefill.push({ seq: s.dkv, tokens: s.context.slice(s.draftFed, s.fed), domain: d.domainOf[s.req.domain]!, logits: false });
      s.draftFed = s.fed;
    }
    if (prefill.length > 0) forwardBatch(d.model, d.pool, prefill);
    for (let j = 0; ; j++) {
      const now = proposing.filter((p) => p.k > j);
      if (now.length === 0) break;
      const batch: BatchItem[] = now.map(({ it }) => {
        const s = it.s;
        const tokens = j === 0 ? s.context.slice(s.draftFed) : [it.drafted[j - 1]!];
        s.draftFed += tokens.length;
        return { seq: s.dkv!, tokens, domain: d.domainOf[s.req.domain]!, logits: true };
      });
      const rows = forwardBatch(d.model, d.pool, batch);
      now.forEach(({ it }, i) => {
        const { x, q } = draftToken(rows[i]!, it.s.req, it.s.rng);
        it.drafted.push(x);
        it.qs.push(q);
      });
    }
    for (const { it } of proposing) {
      it.tokens = [it.s.next, ...it.drafted];
      it.allLogits = true;
    }
  }

  /**
   * A drafting sequence's step: the drafted tokens judged by the speculative
   * rule against the logits after each position (rows [k + 1, V]), the
   * tokens emitted, and the KV length cut back to pending + the kept drafts.
   */
  private verify(it: StepItem, rows: FloatArray, now: number): void {
    const s = it.s;
    const V = this.model.config.vocabSize;
    const row = (i: number) => rows.subarray(i * V, (i + 1) * V);
    const k = it.drafted.length;
    let kept = 0;
    let live = true;
    for (; kept < k && live; kept++) {
      const { accepted, token } = judgeDraft(row(kept), s.req, it.qs[kept] ?? null, it.drafted[kept]!, s.rng);
      live = this.emit(s, token, row(kept), now);
      if (!accepted) break;
    }
    if (this.metrics) {
      this.metrics.draftProposed += k;
      this.metrics.draftAccepted += kept;
    }
    if (live && kept === k) this.emit(s, sampleToken(row(k), s.req, s.rng), row(k), now);
    // The cache holds pending + k drafts; the next step feeds the last emitted token after pending + the kept ones.
    if (s.kv && this.running.includes(s)) s.kv.length -= k - kept;
    // The draft keeps what matches the context: everything before the last emitted token.
    if (s.dkv && this.running.includes(s)) s.dkv.length = s.draftFed = Math.min(s.draftFed, s.context.length - 1);
  }

  /** Streams `s`'s next token `id` (sampled from `logits`) and ends the sequence when it is done; false when it ended. */
  private emit(s: Sequence, id: number, logits: FloatArray, now: number): boolean {
    s.generated++;
    s.context.push(id);
    if (this.metrics) {
      this.metrics.completionTokens++;
      if (s.generated === 1) this.metrics.timeToFirstToken.observe((now - s.arrived) / 1000);
      else this.metrics.interTokenLatency.observe((now - s.lastToken) / 1000);
    }
    s.lastToken = now;
    const logprob = s.req.logprobs != null ? this.logprobOf(logits, id, s.req.logprobs) : undefined;
    if (id === this.tokenizer.eotId && s.req.stopAtEndOfText !== false) {
      s.out.push({ kind: "token", id, text: "", ...(logprob ? { logprob } : {}) });
      this.finish(s, "stop");
      return false;
    }
    const r = s.stop.push(s.text.push(id));
    s.out.push({ kind: "token", id, text: r.text, ...(logprob ? { logprob } : {}) });
    if (r.stopped) this.finish(s, "stop");
    else if (s.generated >= s.req.maxTokens) this.finish(s, "length");
    else {
      s.next = id;
      return true;
    }
    return false;
  }

  /** Ends `s`: the text still held back, the usage counts; its blocks go back to the pool. */
  private finish(s: Sequence, reason: FinishReason, error?: string): void {
    let rest = "";
    if (reason === "stop" || reason === "length") {
      const r = s.stop.push(s.text.end());
      rest = r.text + (r.stopped ? "" : s.stop.end());
    }
    if (s.kv) this.pool.close(s.kv);
    if (s.dkv) this.draft!.pool.close(s.dkv);
    s.kv = s.dkv = null;
    for (const list of [this.waiting, this.running]) {
      const i = list.indexOf(s);
      if (i >= 0) list.splice(i, 1);
    }
    this.metrics?.finish(reason);
    s.out.push({ kind: "done", finish: reason, text: rest, promptTokens: s.req.prompt.length, completionTokens: s.generated, ...(error !== undefined ? { error } : {}) });
  }

  /** log-softmax of the raw logits at `id`, and the `top` most likely tokens. */
  private logprobOf(logits: FloatArray, id: number, top: number): TokenLogprob {
    let max = -Infinity;
    for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
    let sum = 0;
    for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
    const lse = max + Math.log(sum);
    const best: number[] = [];
    if (top > 0) {
      // A running list of the `top` largest (top is small).
      for (let i = 0; i < logits.length; i++) {
        if (best.length === top && !(logits[i]! > logits[best[top - 1]!]!)) continue;
        if (best.length === top) best.pop();
        let j = best.length;
        best.push(i);
        while (j > 0 && logits[best[j - 1]!]! < logits[i]!) {
          best[j] = best[j - 1]!;
          j--;
        }
        best[j] = i;
      }
    }
    const name = (t: number) => this.tokenizer.decode([t]);
    return { token: name(id), logprob: logits[id]! - lse, top: best.map((t) => ({ token: name(t), logprob: logits[t]! - lse })) };
  }
}

function positive(name: string, v: number): number {
  if (!(Number.isInteger(v) && v >= 1)) throw new SigmaError(`${name} must be a positive integer, got ${v}`);
  return v;
}

function nonNegative(name: string, v: number): number {
  if (!(Number.isInteger(v) && v >= 0)) throw new SigmaError(`${name} must be a non-negative integer, got ${v}`);
  return v;
}
