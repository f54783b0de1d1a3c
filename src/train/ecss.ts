/**
 * ECSS in a training run (PAPERS.md §5): the glue between the model's MoE
 * layers (compute) and the expert store (storage).
 *
 * Per step:
 *  1. know the experts the step needs — RRE: from (domain, token ids) of the
 *     step's batches before the forward pass, and the NEXT step's experts are
 *     handed to the prefetch worker now, so their reads overlap this step's
 *     compute; learned routers (MoGE, top-k): layer by layer, after routing;
 *  2. each MoE layer asks this bank for the stacked weights of the experts it
 *     uses (copied out of the resident records into fresh [U, …] leaves);
 *  3. after backward, the leaves' gradients are added into one gradient
 *     buffer per touched expert (micro-batches accumulate);
 *  4. clipping counts those gradients with the dense ones;
 *  5. the sparse step updates only the touched experts, each with its own
 *     step count, in place in its record (src/optim/sparse.ts), and marks it
 *     dirty; experts past the memory budget are written back and evicted
 *     (least recently used first).
 *
 * A checkpoint flushes every dirty expert, fsyncs the store and saves the
 * store's index with the dense weights; see src/store/file.ts for why a crash
 * at any point recovers to the newest checkpoint with no torn record.
 */
import { backendFor } from "../backend/index.js";
import { isGradEnabled } from "../autograd/tape.js";
import type { ModelConfig } from "../models/config.js";
import { PanguSigma } from "../models/pangu-sigma.js";
import type { ExpertBank } from "../moe/layer.js";
import { RreRouter } from "../moe/router/rre.js";
import type { GroupHyper } from "../optim/adamw.js";
import { expertAdamW } from "../optim/sparse.js";
import { ResidentSet, type CacheStats, type Resident } from "../store/cache.js";
import { ExpertStoreFile, StoreBuilder, type IoStats } from "../store/file.js";
import { payloadFloats, recordNumber, tensorOffsets, type LayerLayout } from "../store/format.js";
import { Prefetcher, type Pending } from "../store/prefetch.js";
import { Tensor } from "../tensor/tensor.js";
import { SigmaError } from "../util/errors.js";
import { writeFileAtomic } from "../util/fs.js";

/** Where a store's last run statistics go (for `sigma store inspect`). */
export const statsPath = (storePath: string): string => `${storePath}.stats.json`;

/** The store layout of a model config: one entry per sparse layer. */
export function storeLayout(c: ModelConfig): LayerLayout[] {
  const ex = c.experts;
  if (!ex || c.sparseLayers === 0) throw new SigmaError("an expert store needs a model with sparse layers", "set model.sparseLayers > 0 and model.experts, or turn store.enabled off");
  return Array.from({ length: c.sparseLayers }, () => ({ experts: ex.count, width: c.width, expertWidth: ex.width ?? c.ffnWidth }));
}

/**
 * A fresh model whose experts go straight into a new store at `path` as the
 * init draws them: the full [E, …] tensors never exist in RAM, and the values
 * equal those of `new PanguSigma(config)` (same random stream).
 */
export function createModelWithStore(config: ModelConfig, path: string): { model: PanguSigma; store: ExpertStoreFile } {
  const layout = storeLayout(config);
  const b = new StoreBuilder(path, layout);
  const model = new PanguSigma(config, "float32", {
    externalExperts: {
      onInit: (block, name, e, values) => {
        const l = block - config.denseLayers;
        const o = tensorOffsets(layout[l]!);
        b.put(l, e, name === "w1" ? o.w1 : o.w2, values);
      },
    },
  });
  return { model, store: b.finish() };
}

/** Experts needed per sparse layer by RRE for these rows (token ids with their domain index); null for learned routers. */
export function rreNeeds(model: PanguSigma, tokens: Int32Array, domainOfRow: Int32Array): Set<number>[] | null {
  const out: Set<number>[] = [];
  for (const b of model.blocks) {
    if (!b.moe) continue;
    if (!(b.moe.router instanceof RreRouter)) return null;
    out.push(b.moe.router.expertsNeeded(tokens, domainOfRow));
  }
  return out;
}

export interface EcssStats extends CacheStats {
  budget: number;
  residentBytes: number;
  residentExperts: number;
  totalExperts: number;
  prefetchRequested: number;
  io: IoStats;
}

interface Leaves {
  layer: number;
  experts: Int32Array;
  w1: Tensor;
  b1: Tensor;
  w2: Tensor;
  b2: Tensor;
}

export class Ecss implements ExpertBank {
  readonly cache: ResidentSet;
  private readonly layout: LayerLayout[];
  private readonly denseLayers: number;
  private prefetcher: Prefetcher | null;
  private readonly pending = new Map<number, Pending>();
  private pendingBytes = 0;
  private prefetchRequested = 0;
  private leaves: Leaves[] = [];
  /** Gradient accumulators of the experts touched this step, by record key. */
  private readonly grads = new Map<number, { r: Resident; g: Float32Array }>();
  private readonly gradPool = new Map<number, Float32Array[]>();
  private readonly pinned: Resident[] = [];

  constructor(readonly store: ExpertStoreFile, readonly model: PanguSigma, budget: number, prefetch: boolean) {
    this.layout = storeLayout(model.config);
    const have = JSON.stringify(store.header.layers);
    if (have !== JSON.stringify(this.layout)) {
      throw new SigmaError(`the expert store ${store.path} holds layers ${have}, the model needs ${JSON.stringify(this.layout)}`, "point store.path at the store made for this model, or start a fresh run (another out or store.path)");
    }
    this.denseLayers = model.config.denseLayers;
    this.cache = new ResidentSet(budget);
    this.prefetcher = prefetch ? new Prefetcher(store.path) : null;
    for (const b of model.blocks) if (b.moe) b.moe.bank = this;
  }

  /** True when the next step's experts are known before its forward pass (RRE) and read ahead. */
  get prefetches(): boolean {
    return this.prefetcher !== null;
  }

  private key(layer: number, expert: number): number {
    return recordNumber(this.store.header, layer, expert);
  }

  private writeBack = (r: Resident): void => {
    this.store.write(r.layer, r.expert, r.rec, r.step);
    r.dirty = false;
  };

  /**
   * The resident record of (layer, expert), read if needed; pinned until
   * endStep() when `pin`. Counts a hit or a miss the first time a step asks.
   */
  private acquire(layer: number, expert: number, pin: boolean): Resident {
    const key = this.key(layer, expert);
    let r = this.cache.touch(key);
    const first = !r || r.pins === 0;
    let prefetched = false;
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
      this.cache.makeRoom(bytes + this.pendingBytes, this.writeBack);
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

  /** ExpertBank: stacked copies of the used experts' weights, as leaves when training. */
  weights(block: number, experts: Int32Array): { w1: Tensor; b1: Tensor; w2: Tensor; b2: Tensor } {
    const layer = block - this.denseLayers;
    const lay = this.layout[layer]!;
    const [F, C, U] = [lay.expertWidth, lay.width, experts.length];
    const o = tensorOffsets(lay);
    const FC = F * C;
    const training = isGradEnabled();
    const w1 = Tensor.zeros([U, F, C]);
    const b1 = Tensor.zeros([U, F]);
    const w2 = Tensor.zeros([U, C, F]);
    const b2 = Tensor.zeros([U, C]);
    experts.forEach((e, i) => {
      const p = this.acquire(layer, e, training).payload;
      w1.data.set(p.subarray(o.w1, o.w1 + FC), i * FC);
      w2.data.set(p.subarray(o.w2, o.w2 + FC), i * FC);
      b1.data.set(p.subarray(o.b1, o.b1 + F), i * F);
      b2.data.set(p.subarray(o.b2, o.b2 + C), i * C);
    });
    if (training) {
      for (const t of [w1, b1, w2, b2]) t.requiresGrad = true;
      this.leaves.push({ layer, experts, w1, b1, w2, b2 });
    }
    return { w1, b1, w2, b2 };
  }

  /**
   * Before the step's forward pass (RRE): makes the step's experts resident
   * and pinned — waiting for the prefetched ones — then starts reading the
   * next step's experts in the worker.
   */
  beginStep(current: Set<number>[], next: Set<number>[] | null): void {
    current.forEach((es, l) => es.forEach((e) => this.acquire(l, e, true)));
    if (next && this.prefetcher) this.prefetch(next);
  }

  private prefetch(next: Set<number>[]): void {
    // Resident experts the next step needs become most recent, so room is made from others first.
    next.forEach((es, l) => es.forEach((e) => this.cache.touch(this.key(l, e))));
    const items: Parameters<Prefetcher["request"]>[0] = [];
    next.forEach((es, l) => {
      for (const e of es) {
        const key = this.key(l, e);
        if (this.cache.has(key) || this.pending.has(key)) continue;
        const bytes = this.store.recordBytes(l);
        // No room without evicting what the running step pinned: the rest will be read on demand.
        if (!this.cache.makeRoom(this.pendingBytes + bytes, this.writeBack)) return;
        const { offset, entry } = this.store.locate(l, e);
        items.push({ layer: l, expert: e, offset, floats: payloadFloats(this.layout[l]!), entry: { ...entry }, buf: this.cache.buffer(bytes) });
        this.pendingBytes += bytes;
      }
    });
    this.prefetchRequested += items.length;
    for (const p of this.prefetcher!.request(items)) this.pending.set(this.key(p.layer, p.expert), p);
  }

  /** After each backward: adds the leaves' gradients into the touched experts' accumulators. */
  collectGrads(): void {
    for (const lv of this.leaves) {
      const lay = this.layout[lv.layer]!;
      const o = tensorOffsets(lay);
      const [F, C] = [lay.expertWidth, lay.width];
      const FC = F * C;
      if (!lv.w1.grad && !lv.w2.grad && !lv.b1.grad && !lv.b2.grad) continue; // e.g. a recomputed block's first pass
      lv.experts.forEach((e, i) => {
        const key = this.key(lv.layer, e);
        let acc = this.grads.get(key);
        if (!acc) {
          acc = { r: this.cache.peek(key)!, g: this.gradBuffer(o.P) };
          this.grads.set(key, acc);
        }
        const g = acc.g;
        const be = backendFor(g);
        if (lv.w1.grad) be.axpy(g.subarray(o.w1, o.w1 + FC), lv.w1.grad.data.subarray(i * FC, (i + 1) * FC), 1, FC);
        if (lv.w2.grad) be.axpy(g.subarray(o.w2, o.w2 + FC), lv.w2.grad.data.subarray(i * FC, (i + 1) * FC), 1, FC);
        if (lv.b1.grad) be.axpy(g.subarray(o.b1, o.b1 + F), lv.b1.grad.data.subarray(i * F, (i + 1) * F), 1, F);
        if (lv.b2.grad) be.axpy(g.subarray(o.b2, o.b2 + C), lv.b2.grad.data.subarray(i * C, (i + 1) * C), 1, C);
      });
    }
    this.leaves = [];
  }

  private gradBuffer(n: number): Float32Array {
    const g = this.gradPool.get(n)?.pop();
    if (g) {
      g.fill(0);
      return g;
    }
    return new Float32Array(n);
  }

  /**
   * Global gradient-norm clipping over the dense parameters and the touched
   * experts' gradients (untouched experts' gradients are zero); returns the
   * norm before clipping.
   */
  clip(params: Tensor[], maxNorm: number): number {
    let sq = 0;
    for (const p of params) if (p.grad) sq += backendFor(p.grad.data).sumSquares(p.grad.data, p.grad.size);
    for (const { g } of this.grads.values()) sq += backendFor(g).sumSquares(g, g.length);
    const norm = Math.sqrt(sq);
    if (norm > maxNorm && norm > 0) {
      const f = maxNorm / norm;
      for (const p of params) if (p.grad) backendFor(p.grad.data).scale(p.grad.data, p.grad.data, f, p.grad.size);
      for (const { g } of this.grads.values()) backendFor(g).scale(g, g, f, g.length);
    }
    return norm;
  }

  /** The sparse step: each touched expert takes one AdamW step with its own count; then the budget is enforced. */
  update(lr: number, h: GroupHyper): void {
    for (const { r, g } of this.grads.values()) {
      const o = tensorOffsets(this.layout[r.layer]!);
      r.step++;
      expertAdamW(r.payload, g, o.P, o.decayed, lr, h, r.step);
      r.dirty = true;
      const pool = this.gradPool.get(g.length) ?? [];
      pool.push(g);
      this.gradPool.set(g.length, pool);
    }
    this.grads.clear();
    if (this.cache.bytes > this.cache.budget) this.cache.stats.overBudget++;
    for (const r of this.pinned) r.pins = 0;
    this.pinned.length = 0;
    this.cache.makeRoom(this.pendingBytes, this.writeBack);
  }

  /** Writes every dirty expert back and fsyncs the store; returns the index a checkpoint saves. */
  flush(): Uint8Array {
    for (const r of this.cache.entries()) if (r.dirty) this.writeBack(r);
    this.store.sync();
    writeFileAtomic(statsPath(this.store.path), JSON.stringify({ writtenAt: new Date().toISOString(), ...this.stats() }, null, 2) + "\n");
    return this.store.currentIndex();
  }

  /** The checkpoint holding flush()'s index is durable. */
  committed(): void {
    this.store.markCommitted();
  }

  /** Adopts a checkpoint's index (resume): nothing may be resident yet. */
  restore(indexBytes: Uint8Array, source: string): void {
    if (this.cache.size || this.pending.size) throw new Error("Ecss.restore: experts are already resident");
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
    void this.prefetcher?.close();
    this.prefetcher = null;
    this.store.close();
  }
}
