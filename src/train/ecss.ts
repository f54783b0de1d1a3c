/**
 * ECSS in a training run (docs/design.md §8.3), the training side: the expert bank
 * the model's MoE layers compute with, and the sparse optimizer step of the
 * experts a step touched. Where the experts live (the store file, the
 * resident records within the memory budget, reads ahead and write-backs)
 * is the expert tier's business (src/store/tier.ts); this file only asks it
 * for records, changes them in place and ends the step.
 *
 * Per step:
 *  1. know the experts the step needs — RRE: from (domain, token ids) of the
 *     step's batches before the forward pass (beginStep): they are acquired
 *     and pinned, and the NEXT step's experts are handed to the tier to read
 *     ahead, so their reads overlap this step's compute; learned routers
 *     (MoGE, top-k): layer by layer, after routing;
 *  2. each MoE layer asks this bank for the weights of the experts it uses:
 *     when training, the matrices are views of the pinned records, computed
 *     on in place, and their gradients accumulate straight into one buffer
 *     per touched expert for the step; the biases (small) are copied into
 *     stacked [U, …] leaves. Without gradients (evaluation) everything is
 *     copied out, so that no view outlives an unpinned record;
 *  3. after backward, the bias leaves' gradients go to those buffers (copied
 *     on the step's first touch, so never zeroed; added after);
 *  4. clipping counts those gradients with the dense ones — their Σ g² as
 *     the weight-gradient kernels summed it while writing them, when every
 *     buffer was written once (one micro-batch, one rank), else by reading
 *     the buffers again;
 *  5. the sparse step updates only the touched experts, each with its own
 *     step count, in place in its record (src/optim/sparse.ts), and marks it
 *     dirty; then the tier ends the step (unpins, and evicts past the budget,
 *     writing dirty records back).
 *
 * A checkpoint goes through the tier too (flush, committed, restore), with
 * the store's index saved beside the dense weights.
 *
 * On several ranks (src/train/ecss-ranks.ts) each rank's bank is its own
 * store (expert parallel: its shard, as store-local ids); between 3 and 4,
 * syncTouched makes every rank's touched set the whole batch's and sums
 * those experts' gradients over the ranks that hold them.
 */
import { backendFor } from "../backend/index.js";
import { BucketedAllreduce } from "../comm/buckets.js";
import type { Communicator } from "../comm/comm.js";
import { isGradEnabled } from "../autograd/tape.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import type { ExpertBank, ExpertWeights } from "../moe/layer.js";
import type { ExpertParts } from "../ops/index.js";
import type { GroupHyper } from "../optim/adamw.js";
import { expertsAdamW } from "../optim/sparse.js";
import type { Resident } from "../store/cache.js";
import type { ExpertStoreFile } from "../store/file.js";
import { tensorOffsets, type LayerLayout } from "../store/format.js";
import { ExpertTier, type TierStats } from "../store/tier.js";
import { Tensor } from "../tensor/tensor.js";
import { Storage } from "../tensor/storage.js";
import { SigmaError } from "../util/errors.js";
import { storeLayout } from "./ecss-model.js";
export { createModelWithStore, expertsNeededAhead, knowsExpertsAhead, statsPath, storeLayout } from "./ecss-model.js";

/** A training run's store statistics (those of its expert tier). */
export type EcssStats = TierStats;

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
  /** Where the experts live: the store file and the resident records. */
  readonly tier: ExpertTier;
  private readonly layout: LayerLayout[];
  private readonly denseLayers: number;
  /** RRE: the next step's experts are read ahead. */
  private readonly readAhead: boolean;
  private leaves: Leaves[] = [];
  /**
   * The gradients of the experts touched this step, by record key: one
   * buffer per expert ([w1 | w2 | b1 | b2], as in its record), written on the
   * step's first touch (see gradOf) and accumulated over later micro-batches.
   */
  private readonly grads = new Map<number, { r: Resident; g: Float32Array; biasFresh: boolean }>();
  /**
   * Per sparse layer: storages reused step after step for the stacked
   * weights and their gradients (growing to the most experts a batch used),
   * so a step neither allocates nor page-faults them again.
   */
  private readonly scratch: { cap: number; b: [Storage, Storage]; g: [Storage, Storage]; w: [Storage, Storage] | null; wCap: number }[] = [];
  private readonly gradPool = new Map<number, Float32Array[]>();
  /**
   * Σ g² over the step's gradient buffers, from the kernels that wrote them
   * (the matrices' weight-gradient products sum the squares as they store;
   * the biases' are summed from their stacked leaves), while that is exact:
   * every buffer written once, by one forward's fresh products. null once a
   * buffer is added to instead (a later micro-batch touches the expert again,
   * gradients summed over ranks, a bf16 product, a backward that did not
   * reach the matrices): gradSquares then reads the buffers.
   */
  private written: number | null = 0;

  /**
   * `budget`: bytes of resident expert records. `readAhead`: the router is
   * RRE and the trainer announces the next step's experts (beginStep).
   * `worker`: do reads ahead and write-backs in the I/O worker thread (off:
   * every read and write on the main thread, and no reading ahead).
   */
  constructor(store: ExpertStoreFile, readonly model: PanguSigma, budget: number, readAhead: boolean, worker = true) {
    // Expert parallel: the store holds the rank's shard (store-local ids), like the model's layers.
    this.layout = storeLayout(model.config, model.blocks.find((b) => b.moe)?.moe?.shard?.count);
    const have = JSON.stringify(store.header.layers);
    if (have !== JSON.stringify(this.layout)) {
      throw new SigmaError(`the expert store ${store.path} holds layers ${have}, the model needs ${JSON.stringify(this.layout)}`, "point store.path at the store made for this model, or start a fresh run (another out or store.path)");
    }
    this.denseLayers = model.config.denseLayers;
    this.tier = new ExpertTier(store, budget, worker);
    this.readAhead = readAhead && this.tier.readsAhead;
    for (const b of model.blocks) if (b.moe) b.moe.bank = this;
  }

  get store(): ExpertStoreFile {
    return this.tier.store;
  }

  /** True when the next step's experts are known before its forward pass (RRE) and read ahead. */
  get prefetches(): boolean {
    return this.readAhead;
  }

  /**
   * Before the step's forward pass (RRE): makes the step's experts resident
   * and pinned — waiting for the prefetched ones — then has the tier start
   * reading the next step's experts.
   */
  beginStep(current: Set<number>[], next: Set<number>[] | null): void {
    current.forEach((es, l) => es.forEach((e) => this.tier.acquire(l, e, true)));
    if (next && this.readAhead) this.tier.prefetch(next);
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
    if (matrices && (!sc.w || sc.wCap < U)) {
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
        const p = this.tier.acquire(layer, e, false).payload;
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
      const r = this.tier.acquire(layer, e, true);
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
   * nothing in it is set: the caller writes or zeroes its matrices' part (the
   * first o.decayed values, [w1 | w2]); its biases' part is written by
   * collectGrads (biasFresh) or zeroed by the caller.
   */
  private gradOf(layer: number, expert: number, r: Resident, o: { decayed: number; P: number }): { g: Float32Array; isNew: boolean } {
    const key = this.tier.key(layer, expert);
    const have = this.grads.get(key);
    if (have) return { g: have.g, isNew: false };
    const g = this.gradPool.get(o.P)?.pop() ?? new Float32Array(o.P);
    this.grads.set(key, { r, g, biasFresh: true });
    return { g, isNew: true };
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
        const entry = this.grads.get(this.tier.key(lv.layer, e))!;
        const { g } = entry;
        // The step's first contribution is copied in (the part was never zeroed), later ones added.
        if (entry.biasFresh) {
          g.set(gb1.subarray(i * F, (i + 1) * F), o.b1);
          g.set(gb2.subarray(i * C, (i + 1) * C), o.b2);
          entry.biasFresh = false;
        } else {
          const be = backendFor(g);
          be.axpy(g.subarray(o.b1, o.b1 + F), gb1.subarray(i * F, (i + 1) * F), 1, F);
          be.axpy(g.subarray(o.b2, o.b2 + C), gb2.subarray(i * C, (i + 1) * C), 1, C);
        }
      });
      // The products wrote fresh buffers (every expert's first touch this step) and summed their
      // squares; the bias parts now hold the leaves' gradients exactly.
      // Otherwise (an expert touched again, bf16, no backward through the matrices) they are read later.
      if (this.written !== null && p1.squares !== undefined && p2.squares !== undefined) {
        const be = backendFor(gb1), U = lv.experts.length;
        this.written += p1.squares + p2.squares + be.sumSquares(gb1, U * F) + be.sumSquares(gb2, U * C);
      } else this.written = null;
    }
    this.leaves = [];
  }

  /**
   * Several ranks (docs/distributed.md, ECSS per rank): after the step's
   * last backward, makes the step's touched set `touched` (per sparse layer,
   * store-local ids, ascending) — decided from the routing counts summed
   * over every rank, so the same on every replica of this store's experts —
   * the set of gradient buffers: an expert this rank's rows did not reach
   * gets a zero gradient (and is read, to be updated). Then, with `comm`,
   * sums exactly those gradients over its ranks, in the same order on
   * every rank (layer, then expert), bucketed like the dense gradients.
   * Returns the seconds spent in communication.
   */
  syncTouched(touched: Int32Array[], comm: Communicator | null): number {
    const arrays: Float32Array[] = [];
    let n = 0;
    touched.forEach((es, l) => {
      const o = tensorOffsets(this.layout[l]!);
      for (const e of es) {
        const r = this.tier.acquire(l, e, true);
        const { g, isNew } = this.gradOf(l, e, r, o);
        if (isNew) g.fill(0); // after the last backward: no collectGrads writes its biases
        arrays.push(g);
        n++;
      }
    });
    // Every expert this rank computed on had tokens somewhere, so it is in the global set.
    if (n !== this.grads.size) throw new Error(`ECSS: ${this.grads.size - n} expert(s) this rank computed on are outside the step's touched set`);
    if (!comm || comm.size === 1 || arrays.length === 0) return 0;
    this.written = null;
    const sum = new BucketedAllreduce(comm, arrays);
    sum.finish();
    return sum.commSeconds;
  }

  /**
   * Σ g² over the touched experts' gradients, for global-norm clipping with
   * the dense parameters' (untouched experts' gradients are zero): as the
   * kernels summed them while writing (see `written`), else read again.
   */
  gradSquares(): number {
    if (this.written !== null) return this.written;
    let sq = 0;
    for (const { g } of this.grads.values()) sq += backendFor(g).sumSquares(g, g.length);
    return sq;
  }

  /**
   * The sparse step: each touched expert takes one AdamW step with its own
   * count, on its gradient times gradScale (clipping), and is marked dirty;
   * then the tier ends the step (unpins, evicts down to the budget).
   */
  update(lr: number, h: GroupHyper, gradScale = 1): void {
    // One kernel call per sparse layer (its experts share a layout).
    const byLayer = new Map<number, { payloads: Float32Array[]; grads: Float32Array[]; steps: number[] }>();
    for (const { r, g } of this.grads.values()) {
      r.step++;
      r.dirty = true;
      let l = byLayer.get(r.layer);
      if (!l) byLayer.set(r.layer, (l = { payloads: [], grads: [], steps: [] }));
      l.payloads.push(r.payload);
      l.grads.push(g);
      l.steps.push(r.step);
    }
    for (const [layer, l] of byLayer) expertsAdamW(l.payloads, l.grads, Int32Array.from(l.steps), tensorOffsets(this.layout[layer]!), lr, h, gradScale);
    for (const { g } of this.grads.values()) {
      const pool = this.gradPool.get(g.length) ?? [];
      pool.push(g);
      this.gradPool.set(g.length, pool);
    }
    this.grads.clear();
    this.written = 0;
    this.tier.endStep();
  }

  /** Writes every dirty expert back and fsyncs the store; returns the index a checkpoint saves. */
  flush(): Uint8Array {
    return this.tier.flush();
  }

  /** The checkpoint holding flush()'s index is durable (see ExpertTier.committed). */
  committed(): void {
    this.tier.committed();
  }

  /** Adopts a checkpoint's index (resume): nothing may be resident yet. */
  restore(indexBytes: Uint8Array, source: string): void {
    this.tier.restore(indexBytes, source);
  }

  /** Reads experts into RAM while they fit in the budget: a warm cache. */
  preload(): void {
    this.tier.preload();
  }

  stats(): EcssStats {
    return this.tier.stats();
  }

  /** Clears the hit/miss counters (e.g. after a warm-up step). */
  resetStats(): void {
    this.tier.resetStats();
  }

  close(): void {
    this.tier.close();
  }
}
