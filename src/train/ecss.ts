/**
 * ECSS in a training run (PAPERS.md §5): the glue between the model's MoE
 * layers (compute) and the expert store (storage).
 *
 * Per step:
 *  1. know the experts the step needs — RRE: from (domain, token ids) of the
 *     step's batches before the forward pass, and the NEXT step's experts are
 *     handed to the prefetch worker now, so their reads overlap this step's
 *     compute; learned routers (MoGE, top-k): layer by layer, after routing;
 *  2. each MoE layer asks this bank for the weights of the experts it uses:
 *     when training, the matrices are views of the resident (pinned) records,
 *     computed on in place, and their gradients accumulate straight into one
 *     buffer per touched expert for the step; the biases (small) are copied
 *     into stacked [U, …] leaves. Without gradients (evaluation) everything
 *     is copied out, so that no view outlives an unpinned record;
 *  3. after backward, the bias leaves' gradients are added to those buffers;
 *  4. clipping counts those gradients with the dense ones;
 *  5. the sparse step updates only the touched experts, each with its own
 *     step count, in place in its record (src/optim/sparse.ts), and marks it
 *     dirty; experts past the memory budget are evicted (least recently used
 *     first) and their records sealed and written back by the I/O worker.
 *
 * A checkpoint flushes every dirty expert, fsyncs the store and saves the
 * store's index with the dense weights; see src/store/file.ts for why a crash
 * at any point recovers to the newest checkpoint with no torn record.
 */
import { backendFor } from "../backend/index.js";
import { isGradEnabled } from "../autograd/tape.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import type { ExpertBank, ExpertWeights } from "../moe/layer.js";
import type { ExpertParts } from "../ops/index.js";
import type { GroupHyper } from "../optim/adamw.js";
import { expertAdamW } from "../optim/sparse.js";
import { ResidentSet, type CacheStats, type Resident } from "../store/cache.js";
import type { ExpertStoreFile, IoStats } from "../store/file.js";
import { payloadFloats, recordNumber, tensorOffsets, type LayerLayout } from "../store/format.js";
export { createModelWithStore, expertsNeededAhead, knowsExpertsAhead, statsPath, storeLayout } from "./ecss-model.js";
import { Prefetcher, type Pending } from "../store/prefetch.js";
import { Tensor } from "../tensor/tensor.js";
import { Storage } from "../tensor/storage.js";
import { SigmaError } from "../util/errors.js";
import { writeFileAtomic } from "../util/fs.js";
import { statsPath, storeLayout } from "./ecss-model.js";

export interface EcssStats extends CacheStats {
  budget: number;
  residentBytes: number;
  residentExperts: number;
  totalExperts: number;
  prefetchRequested: number;
  io: IoStats;
}

/** A layer's stacked bias leaves of one forward (their gradients go to the experts' buffers after backward). */
interface Leaves {
  layer: number;
  experts: Int32Array;
  b1: Tensor;
  b2: Tensor;
  /** The matrices' gradient parts (fresh until the backward writes them). */
  parts: [ExpertParts, ExpertParts];
}

export class Ecss implements ExpertBank {
  readonly cache: ResidentSet;
  private readonly layout: LayerLayout[];
  private readonly denseLayers: number;
  /** The I/O worker (reads ahead, writes back); null when disabled. */
  private prefetcher: Prefetcher | null;
  /** RRE: the next step's experts are read ahead. */
  private readonly readAhead: boolean;
  private readonly pending = new Map<number, Pending>();
  private pendingBytes = 0;
  /** Evicted records the worker is still writing: their buffers are not free yet. */
  private readonly writing = new Map<number, { layer: number; expert: number; generation: number; step: number; buf: Uint8Array; status: Int32Array }>();
  private writingBytes = 0;
  /** Test seam: the worker SIGKILLs the process halfway through its next record write. */
  killMidWrite = false;
  private prefetchRequested = 0;
  private leaves: Leaves[] = [];
  /**
   * The gradients of the experts touched this step, by record key: one
   * buffer per expert ([w1 | w2 | b1 | b2], as in its record), written on the
   * step's first touch (see gradOf) and accumulated over later micro-batches.
   */
  private readonly grads = new Map<number, { r: Resident; g: Float32Array }>();
  /**
   * Per sparse layer: storages reused step after step for the stacked
   * weights and their gradients (growing to the most experts a batch used),
   * so a step neither allocates nor page-faults them again.
   */
  private readonly scratch: { cap: number; b: [Storage, Storage]; g: [Storage, Storage]; w: [Storage, Storage] | null; wCap: number }[] = [];
  private readonly gradPool = new Map<number, Float32Array[]>();
  private readonly pinned: Resident[] = [];

  /**
   * `readAhead`: the router is RRE and the trainer announces the next step's
   * experts (beginStep). `worker`: do reads ahead and write-backs in the I/O
   * worker thread (off: every read and write on the main thread).
   */
  constructor(readonly store: ExpertStoreFile, readonly model: PanguSigma, budget: number, readAhead: boolean, worker = true) {
    this.layout = storeLayout(model.config);
    const have = JSON.stringify(store.header.layers);
    if (have !== JSON.stringify(this.layout)) {
      throw new SigmaError(`the expert store ${store.path} holds layers ${have}, the model needs ${JSON.stringify(this.layout)}`, "point store.path at the store made for this model, or start a fresh run (another out or store.path)");
    }
    this.denseLayers = model.config.denseLayers;
    this.cache = new ResidentSet(budget);
    this.prefetcher = worker ? new Prefetcher(store.path) : null;
    this.readAhead = readAhead && worker;
    for (const b of model.blocks) if (b.moe) b.moe.bank = this;
  }

  /** True when the next step's experts are known before its forward pass (RRE) and read ahead. */
  get prefetches(): boolean {
    return this.readAhead;
  }

  private key(layer: number, expert: number): number {
    return recordNumber(this.store.header, layer, expert);
  }

  /** Eviction's write-back: handed to the worker when there is one (returns false: the buffer is still in use). */
  private writeBack = (r: Resident): boolean => {
    r.dirty = false;
    if (!this.prefetcher) {
      this.store.write(r.layer, r.expert, r.rec, r.step);
      return true;
    }
    const { offset, generation } = this.store.beginWrite(r.layer, r.expert, r.step, r.rec.length);
    const floats = payloadFloats(this.layout[r.layer]!);
    const status = this.prefetcher.write({ layer: r.layer, expert: r.expert, offset, generation, step: r.step, floats, buf: r.rec, tear: this.killMidWrite });
    this.writing.set(r.key, { layer: r.layer, expert: r.expert, generation, step: r.step, buf: r.rec, status });
    this.writingBytes += r.rec.length;
    return false;
  };

  /** Finishes a worker write (blocking if needed): records its crc; returns the buffer, still holding the record. */
  private settle(key: number): Uint8Array {
    const w = this.writing.get(key)!;
    this.writing.delete(key);
    this.writingBytes -= w.buf.length;
    const crc = this.prefetcher!.waitWrite(w.status);
    if (crc === null) this.store.write(w.layer, w.expert, w.buf, w.step); // the worker failed or is gone: write here (errors surface)
    else this.store.completeWrite(w.layer, w.expert, w.generation, crc);
    return w.buf;
  }

  /** Frees the buffers of finished writes (without waiting for unfinished ones). */
  private settleFinished(): void {
    for (const [key, w] of this.writing) if (Prefetcher.written(w.status)) this.cache.release(this.settle(key));
  }

  /**
   * Room for `bytes` more next to what is being read ahead. Buffers of
   * write-backs in flight are not counted against the budget (waiting for
   * them would put the writes back on the step's critical path); they are
   * counted in peakBytes, which is what the budget is reported against.
   */
  private room(bytes: number): boolean {
    this.settleFinished();
    const ok = this.cache.makeRoom(bytes + this.pendingBytes, this.writeBack);
    const st = this.cache.stats;
    st.peakBytes = Math.max(st.peakBytes, this.cache.bytes + this.pendingBytes + bytes + this.writingBytes);
    return ok;
  }

  /**
   * The resident record of (layer, expert), read if needed; pinned until
   * endStep() when `pin`. Counts a hit or a miss the first time a step asks.
   */
  private acquire(layer: number, expert: number, pin: boolean): Resident {
    const key = this.key(layer, expert);
    let r = this.cache.touch(key);
    const first = !r || r.pins === 0;
    let prefetched = false;
    if (!r && this.writing.has(key)) {
      // Evicted moments ago and still being written: its buffer holds the newest version.
      const buf = this.settle(key);
      r = this.cache.insert(key, layer, expert, buf, payloadFloats(this.layout[layer]!), this.store.locate(layer, expert).entry.step);
    }
    if (!r) {
      const p = this.pending.get(key);
      if (p) {
        this.pending.delete(key);
        this.pendingBytes -= p.buf.length;
        if (Prefetcher.wait(p)) {
          r = this.cache.insert(key, layer, expert, p.buf, payloadFloats(this.layout[layer]!), p.entry.step);
          prefetched = true;
        } else {
          this.cache.release(p.buf); // the demand read below reports why
        }
      }
    }
    if (!r) {
      const bytes = this.store.recordBytes(layer);
      this.room(bytes);
      const buf = this.cache.buffer(bytes);
      try {
        const entry = this.store.read(layer, expert, buf);
        r = this.cache.insert(key, layer, expert, buf, payloadFloats(this.layout[layer]!), entry.step);
      } catch (e) {
        this.cache.release(buf);
        throw e;
      }
      if (pin) this.cache.stats.misses++;
    } else if (pin && first) {
      this.cache.stats.hits++;
      if (prefetched) this.cache.stats.prefetchHits++;
    }
    if (pin && r.pins === 0) {
      r.pins = 1;
      this.pinned.push(r);
    }
    return r;
  }

  /**
   * The layer's scratch for U experts: stacked biases b1, b2 and their
   * gradients; with `matrices`, stacked w1, w2 too (copies, for evaluation).
   */
  private scratchFor(layer: number, U: number, matrices: boolean): { b: [Storage, Storage]; g: [Storage, Storage]; w: [Storage, Storage] | null } {
    const lay = this.layout[layer]!;
    const [F, C] = [lay.expertWidth, lay.width];
    const grow = (have: number) => Math.max(U, Math.ceil(have * 1.5));
    let sc = this.scratch[layer];
    if (!sc || sc.cap < U) {
      const cap = grow(sc?.cap ?? 0);
      const f = (n: number) => new Storage(new Float32Array(cap * n));
      sc = { cap, b: [f(F), f(C)], g: [f(F), f(C)], w: null, wCap: 0 };
      this.scratch[layer] = sc;
    }
    if (matrices && sc.wCap < U) {
      sc.wCap = grow(sc.wCap);
      sc.w = [new Storage(new Float32Array(sc.wCap * F * C)), new Storage(new Float32Array(sc.wCap * F * C))];
    }
    return { b: sc.b, g: sc.g, w: matrices ? sc.w : null };
  }

  /**
   * ExpertBank: the used experts' weights. Training: the matrices are views
   * of their pinned records with gradients into the step's per-expert
   * buffers, the biases stacked copies as leaves with zeroed gradients.
   * Otherwise: stacked copies of everything. Copies live in per-layer scratch
   * storage, valid until the layer's next call (after collectGrads).
   */
  weights(block: number, experts: Int32Array): ExpertWeights {
    const layer = block - this.denseLayers;
    const lay = this.layout[layer]!;
    const [F, C, U] = [lay.expertWidth, lay.width, experts.length];
    const o = tensorOffsets(lay);
    const FC = F * C;
    const training = isGradEnabled();
    const sc = this.scratchFor(layer, U, !training);
    const [b1, b2] = [new Tensor(sc.b[0], [U, F]), new Tensor(sc.b[1], [U, C])];
    if (!training) {
      const [w1, w2] = [new Tensor(sc.w![0], [U, F, C]), new Tensor(sc.w![1], [U, C, F])];
      experts.forEach((e, i) => {
        const p = this.acquire(layer, e, false).payload;
        w1.data.set(p.subarray(o.w1, o.w1 + FC), i * FC);
        w2.data.set(p.subarray(o.w2, o.w2 + FC), i * FC);
        b1.data.set(p.subarray(o.b1, o.b1 + F), i * F);
        b2.data.set(p.subarray(o.b2, o.b2 + C), i * C);
      });
      return { w1, b1, w2, b2 };
    }
    const w1: ExpertParts = { data: [], grads: [], shape: [F, C] };
    const w2: ExpertParts = { data: [], grads: [], shape: [C, F] };
    const fresh: Float32Array[] = [];
    experts.forEach((e, i) => {
      // Pinned until the step's update: the views below stay valid through backward.
      const r = this.acquire(layer, e, true);
      const p = r.payload;
      w1.data.push(p.subarray(o.w1, o.w1 + FC));
      w2.data.push(p.subarray(o.w2, o.w2 + FC));
      b1.data.set(p.subarray(o.b1, o.b1 + F), i * F);
      b2.data.set(p.subarray(o.b2, o.b2 + C), i * C);
      const { g, isNew } = this.gradOf(layer, e, r, o);
      if (isNew) fresh.push(g);
      w1.grads!.push(g.subarray(o.w1, o.w1 + FC));
      w2.grads!.push(g.subarray(o.w2, o.w2 + FC));
    });
    // The step's first touch of every expert here (one micro-batch): the backward
    // writes the matrices' gradients outright. Otherwise the new buffers start at
    // zero and every gradient is added.
    w1.fresh = w2.fresh = fresh.length === U;
    if (!w1.fresh) for (const g of fresh) g.fill(0, 0, o.decayed);
    [b1, b2].forEach((t, i) => {
      t.requiresGrad = true;
      t.grad = new Tensor(sc.g[i]!, t.shape);
      t.grad.data.fill(0, 0, t.size);
    });
    this.leaves.push({ layer, experts, b1, b2, parts: [w1, w2] });
    return { w1, b1, w2, b2 };
  }

  /**
   * The step's gradient buffer of an expert. isNew: the step's first touch —
   * its biases' part is zeroed, its matrices' part (the first o.decayed
   * values, [w1 | w2]) is not: the caller writes or zeroes it.
   */
  private gradOf(layer: number, expert: number, r: Resident, o: { decayed: number; P: number }): { g: Float32Array; isNew: boolean } {
    const key = this.key(layer, expert);
    const have = this.grads.get(key);
    if (have) return { g: have.g, isNew: false };
    const g = this.gradPool.get(o.P)?.pop() ?? new Float32Array(o.P);
    g.fill(0, o.decayed);
    this.grads.set(key, { r, g });
    return { g, isNew: true };
  }

  /** Reads experts (layer by layer) into the resident set while they fit in the budget: a warm cache. */
  preload(): void {
    this.layout.forEach((lay, l) => {
      for (let e = 0; e < lay.experts; e++) {
        if (this.cache.bytes + this.store.recordBytes(l) > this.cache.budget) return;
        this.acquire(l, e, false);
      }
    });
  }

  /**
   * Before the step's forward pass (RRE): makes the step's experts resident
   * and pinned — waiting for the prefetched ones — then starts reading the
   * next step's experts in the worker.
   */
  beginStep(current: Set<number>[], next: Set<number>[] | null): void {
    current.forEach((es, l) => es.forEach((e) => this.acquire(l, e, true)));
    if (next && this.readAhead) this.prefetch(next);
  }

  private prefetch(next: Set<number>[]): void {
    // Resident experts the next step needs become most recent, so room is made from others first.
    next.forEach((es, l) => es.forEach((e) => this.cache.touch(this.key(l, e))));
    const items: Parameters<Prefetcher["request"]>[0] = [];
    next.forEach((es, l) => {
      for (const e of es) {
        const key = this.key(l, e);
        if (this.cache.has(key) || this.pending.has(key)) continue;
        if (this.writing.has(key)) {
          // Still in memory: take it back instead of reading what is being written.
          this.cache.insert(key, l, e, this.settle(key), payloadFloats(this.layout[l]!), this.store.locate(l, e).entry.step);
          continue;
        }
        const bytes = this.store.recordBytes(l);
        // No room without evicting what the running step pinned: the rest will be read on demand.
        if (!this.room(bytes)) return;
        const { offset, entry } = this.store.locate(l, e);
        items.push({ layer: l, expert: e, offset, floats: payloadFloats(this.layout[l]!), entry: { ...entry }, buf: this.cache.buffer(bytes) });
        this.pendingBytes += bytes;
      }
    });
    if (items.length === 0) return;
    this.prefetchRequested += items.length;
    for (const p of this.prefetcher!.request(items)) this.pending.set(this.key(p.layer, p.expert), p);
  }

  /**
   * After each backward: adds the bias leaves' gradients to the experts'
   * buffers (the matrices' gradients went there directly).
   */
  collectGrads(): void {
    for (const lv of this.leaves) {
      const lay = this.layout[lv.layer]!;
      const o = tensorOffsets(lay);
      const [F, C] = [lay.expertWidth, lay.width];
      const [gb1, gb2] = [lv.b1.grad!.data as Float32Array, lv.b2.grad!.data as Float32Array];
      // A backward that did not reach the matrices left fresh buffers unwritten: they are zero.
      const [p1, p2] = lv.parts;
      for (const p of [p1, p2]) if (p.fresh) for (const g of p.grads!) g.fill(0);
      p1.fresh = p2.fresh = false;
      lv.experts.forEach((e, i) => {
        const { g } = this.grads.get(this.key(lv.layer, e))!;
        const be = backendFor(g);
        be.axpy(g.subarray(o.b1, o.b1 + F), gb1.subarray(i * F, (i + 1) * F), 1, F);
        be.axpy(g.subarray(o.b2, o.b2 + C), gb2.subarray(i * C, (i + 1) * C), 1, C);
      });
    }
    this.leaves = [];
  }

  /**
   * Σ g² over the touched experts' gradients, for global-norm clipping with
   * the dense parameters' (untouched experts' gradients are zero).
   */
  gradSquares(): number {
    let sq = 0;
    for (const { g } of this.grads.values()) sq += backendFor(g).sumSquares(g, g.length);
    return sq;
  }

  /**
   * The sparse step: each touched expert takes one AdamW step with its own
   * count, on its gradient times gradScale (clipping); then the budget is enforced.
   */
  update(lr: number, h: GroupHyper, gradScale = 1): void {
    for (const { r, g } of this.grads.values()) {
      r.step++;
      expertAdamW(r.payload, tensorOffsets(this.layout[r.layer]!), g, lr, h, r.step, gradScale);
      r.dirty = true;
      const pool = this.gradPool.get(g.length) ?? [];
      pool.push(g);
      this.gradPool.set(g.length, pool);
    }
    this.grads.clear();
    if (this.cache.bytes > this.cache.budget) this.cache.stats.overBudget++;
    for (const r of this.pinned) r.pins = 0;
    this.pinned.length = 0;
    this.room(0);
  }

  /** Writes every dirty expert back and fsyncs the store; returns the index a checkpoint saves. */
  flush(): Uint8Array {
    for (const key of [...this.writing.keys()]) this.cache.release(this.settle(key));
    // On this thread: a checkpoint waits for these anyway.
    for (const r of this.cache.entries()) {
      if (!r.dirty) continue;
      this.store.write(r.layer, r.expert, r.rec, r.step);
      r.dirty = false;
    }
    this.store.sync();
    writeFileAtomic(statsPath(this.store.path), JSON.stringify({ writtenAt: new Date().toISOString(), ...this.stats() }, null, 2) + "\n");
    return this.store.currentIndex();
  }

  /**
   * The checkpoint holding flush()'s index is durable. The store's own index
   * then follows it, so the file alone (`sigma store inspect` without --ckpt)
   * reads as of the newest checkpoint. A crash while it is written can leave
   * it torn, which hurts nothing: resuming reads the checkpoint's copy.
   */
  committed(): void {
    this.store.markCommitted();
    this.store.writeOwnIndex();
  }

  /** Adopts a checkpoint's index (resume): nothing may be resident yet. */
  restore(indexBytes: Uint8Array, source: string): void {
    if (this.cache.size || this.pending.size || this.writing.size) throw new Error("Ecss.restore: experts are already resident");
    this.store.restore(indexBytes, source);
  }

  stats(): EcssStats {
    return {
      ...this.cache.stats,
      budget: this.cache.budget,
      residentBytes: this.cache.bytes,
      residentExperts: this.cache.size,
      totalExperts: this.layout.reduce((s, l) => s + l.experts, 0),
      prefetchRequested: this.prefetchRequested,
      io: { ...this.store.io },
    };
  }

  /** Clears the hit/miss counters (e.g. after a warm-up step). */
  resetStats(): void {
    Object.assign(this.cache.stats, { hits: 0, misses: 0, prefetchHits: 0, evictions: 0, writeBacks: 0, overBudget: 0 });
    this.prefetchRequested = 0;
  }

  close(): void {
    for (const p of this.pending.values()) Prefetcher.wait(p);
    this.pending.clear();
    for (const key of [...this.writing.keys()]) this.settle(key);
    void this.prefetcher?.close();
    this.prefetcher = null;
    this.store.close();
  }
}
