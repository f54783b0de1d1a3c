/**
 * One training run's moving parts: the model, PanGu-Σ's hybrid AdamW, the
 * domain-mixing loader, the schedule and the step count. `trainStep` is one
 * optimizer step over `accumSteps` micro-batches; everything it depends on
 * (parameters, moments, loader RNG, step) is what a checkpoint saves, so a
 * resumed trainer continues bit for bit.
 */
import { backward, gradOf, zeroGrad } from "../autograd/tape.js";
import { section } from "../backend/profile.js";
import { soloComm, type Communicator } from "../comm/comm.js";
import { Loader, type Batch } from "../data/loader.js";
import { PanguSigma } from "../models/pangu-sigma.js";
import { layerStats, type LayerStats } from "../moe/routing.js";
import * as ops from "../ops/index.js";
import { AdamW, clipScale, gradSquares, type TouchedExperts } from "../optim/adamw.js";
import { ExpertStoreFile } from "../store/file.js";
import { lockStore } from "../store/lock.js";
import { parseBytes } from "../store/format.js";
import { Ecss, createModelWithStore, expertsNeededAhead, knowsExpertsAhead } from "./ecss.js";
import { rankStorePath } from "./ecss-ranks.js";
import { existsSync } from "node:fs";
import { SigmaError } from "../util/errors.js";
import type { TrainConfig } from "./config.js";
import type { Precision } from "../backend/backend.js";
import { Evaluator, runEvalSettings, type DomainEval, checkEvalBatches } from "./evaluate.js";
import { learningRate, scheduleOf, type Schedule } from "./schedule.js";
import { checkRunFits } from "./memory.js";
import { distilledLoss, openTeacher, teacherTargets, type Teacher } from "./distill.js";
import { DataParallel, assertInSync, expertLayout, parallelPlan, sliceRows, type ExpertLayout } from "./data-parallel.js";
import { shardOf, type ExpertShard } from "../moe/expert-parallel.js";
import type { Tensor } from "../tensor/tensor.js";

export interface StepResult {
  /** Optimizer steps done after this one. */
  step: number;
  /**
   * lm + aux, averaged over the micro-batches; with distillation the loss
   * trained on, (1 − w)·lm + w·T²·CE(teacher, model) + aux — its teacher's
   * term holds the teacher's entropy, so it does not fall toward 0.
   */
  loss: number;
  /** Next-token cross-entropy alone. */
  lm: number;
  /** The routers' balance losses (weighted), summed over layers; 0 without any. */
  balanceLoss: number;
  /** The routers' z-losses (weighted), summed over layers. */
  zLoss: number;
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  tokens: number;
  seconds: number;
  /** Seconds this rank spent in gradient and statistics communication, and (expert parallel) in the token exchanges (0 on one process). */
  commSeconds: number;
  /** Per sparse layer: tokens per expert, per-device load and imbalance score over the step. */
  routing: LayerStats[];
}

/**
 * How many devices the routing statistics (per-device loads, IS) place the
 * experts on: train config `routingDevices`, else the largest divisor of
 * the expert count that is at most 8 [ours] — the same for every router,
 * so that IS figures of runs with different routers compare.
 */
export function routingDevicesFor(c: Pick<TrainConfig, "routingDevices" | "model">): number {
  const E = c.model.experts?.count ?? 1;
  if (c.routingDevices !== null) return c.routingDevices;
  for (let d = Math.min(E, 8); d > 1; d--) if (E % d === 0) return d;
  return 1;
}

export class Trainer {
  readonly model: PanguSigma;
  readonly optimizer: AdamW;
  readonly loader: Loader;
  readonly schedule: Schedule;
  /** Manifest domain id → index into model.config.domains. */
  private readonly domainIndex: Map<number, number>;
  private evaluator: Evaluator | null = null;
  /** ECSS: the expert store and its resident set, when config.store.enabled. */
  readonly ecss: Ecss | null = null;
  /** With RRE prefetch: the next step's batches, drawn one step early, and the loader state before them. */
  private ahead: { state: ReturnType<Loader["getState"]>; batches: Batch[] } | null = null;
  /** Gives the store's lock back (src/store/lock.ts); a no-op without the store. */
  private releaseStore: () => void = () => {};
  step = 0;
  tokens = 0;
  /** Seconds spent in training steps, carried across resumes. */
  seconds = 0;
  /**
   * The precision the checkpoint this trainer resumed from was trained in
   * (null for a fresh run). It may differ from config.precision: weights and
   * optimizer state are f32 in both, so a run may switch at a resume.
   */
  resumedPrecision: Precision | null = null;
  /** The ranks this run trains on (soloComm: one process). */
  readonly comm: Communicator;
  /** With several ranks: this rank's rows of every micro-batch and the gradient sum (src/train/data-parallel.ts). */
  private readonly dp: { rows: { first: number; count: number }; sync: DataParallel } | null = null;
  /** Distillation's teacher (config.distill.teacher), or null. */
  private readonly teacher: Teacher | null = null;
  /** Expert parallel (parallel.expert > 1): the rank layout and this rank's expert shard; else null. */
  readonly expertParallel: { layout: ExpertLayout; shard: ExpertShard; params: Set<Tensor> } | null = null;

  /**
   * With config.store.enabled, a fresh trainer creates the store from the
   * model's init; a given model (resume) must be one without resident experts
   * and opens the existing store, whose index the checkpoint then restores.
   */
  constructor(readonly config: TrainConfig, model?: PanguSigma, comm: Communicator = soloComm) {
    // A run the machine cannot hold is refused before anything is allocated (src/train/memory.ts).
    checkRunFits(config);
    // Distillation (src/train/distill.ts) runs in one process with the experts in RAM: refused before any store is made.
    if (config.distill.teacher !== null && comm.size > 1) throw new SigmaError(`distill.teacher is set, but this run has ${comm.size} ranks: distillation runs in one process`, "run it without mpirun, or remove distill.teacher");
    if (config.distill.teacher !== null && config.store.enabled) throw new SigmaError("distill.teacher is set with the expert store (store.enabled): distillation keeps the experts in RAM", "set store.enabled false, or remove distill.teacher");
    this.comm = comm;
    const plan = parallelPlan(config, comm.size);
    const ep = plan.expert > 1 ? trainerShard(config, comm) : null;
    try {
      if (config.store.enabled) {
        // Several ranks: each has a store of its own, holding its shard's experts (src/train/ecss-ranks.ts).
        const path = rankStorePath(config, plan, comm.rank);
        this.releaseStore = lockStore(path);
        let store: ExpertStoreFile;
        if (model) {
          if ([...model.namedParameters().values()].some((p) => p.group === "expert")) {
            throw new SigmaError("this model holds its experts in RAM, but the config enables the expert store", "train without the store to a first checkpoint, then `sigma store convert --to store` it and resume");
          }
          this.model = model;
          store = ExpertStoreFile.open(path);
        } else {
          // A fresh run would replace the store, and with it what every checkpoint of the run that wrote it needs.
          // Several ranks with the default store.path: the rank stores inside out belong to the run in out, which a
          // fresh run may replace only after prepareRunFolder allowed it (no checkpoints there, or --overwrite).
          if (existsSync(path) && !(comm.size > 1 && config.store.path === null)) throw new SigmaError(`the expert store ${path} already exists`, "resume the run that owns it (--resume), or give this run another out or store.path");
          ({ model: this.model, store } = createModelWithStore(config.model, path, ep?.shard));
        }
        const prefetch = config.store.prefetch && knowsExpertsAhead(this.model);
        this.ecss = new Ecss(store, this.model, parseBytes(config.store.memory), prefetch);
      } else {
        this.model = model ?? new PanguSigma(config.model, "float32", ep ? { expertShard: ep.shard } : {});
      }
      if (ep) {
        const held = this.model.blocks.map((b) => b.moe?.shard).filter((s) => s !== undefined);
        if (held.some((s) => s?.first !== ep.shard.first || s.count !== ep.shard.count)) throw new Error("expert parallel: the model given to the trainer does not hold this rank's expert shard");
        const params = new Set([...this.model.namedParameters().values()].filter((p) => p.group === "expert").map((p) => p.tensor));
        this.expertParallel = { ...ep, params };
      }
      this.model.recompute = config.recompute;
      this.model.setPrecision(config.precision);
      const o = config.optim;
      this.optimizer = new AdamW(this.model.namedParameters(), {
        dense: { beta1: o.beta1, beta2: o.beta2, eps: o.denseEps, weightDecay: o.weightDecay },
        expert: { beta1: o.beta1, beta2: o.beta2, eps: o.expertEps, weightDecay: o.weightDecay },
        sparseExperts: o.sparseExperts,
      });
      this.schedule = scheduleOf(config);
      if (comm.size > 1) {
        // Gradients travel on a communicator of their own, so that their non-blocking sums, started
        // during backward, never interleave with the routers' batch statistics on the world one.
        // Expert parallel: a shard's gradients are summed over its replicas only (none with one replica).
        const sync = new DataParallel(comm, comm.split(0, comm.rank)!, ep ? ep.layout.replicas : undefined);
        this.dp = { rows: sliceRows(comm.rank, comm.size, config.batchSize), sync };
      }
      this.loader = new Loader(config.data.dir, { split: "train", seqLen: config.model.seqLen, batchSize: config.batchSize, seed: config.seed, weights: config.data.weights, ...(this.dp ? { slice: this.dp.rows } : {}) });
      const m = this.loader.manifest;
      if (m.tokenizer.vocabSize !== config.model.vocabSize) {
        throw new SigmaError(`model.vocabSize is ${config.model.vocabSize} but the data in ${config.data.dir} was tokenized with a vocabulary of ${m.tokenizer.vocabSize}`, `set model.vocabSize to ${m.tokenizer.vocabSize}`);
      }
      const names = config.model.domains.map((d) => d.name);
      checkEvalBatches(m, names, config.batchSize, config.model.seqLen, config.eval.batches, "eval.batches");
      if (config.distill.teacher !== null) this.teacher = openTeacher(config, m.tokenizer.sha256);
      this.domainIndex = new Map();
      for (const s of this.loader.streams) {
        const i = names.indexOf(s.name);
        // Names quoted as JSON strings: a config's name may hold anything, a line break included.
        if (i < 0) throw new SigmaError(`the data samples domain ${JSON.stringify(s.name)} but model.domains has only ${names.map((n) => JSON.stringify(n)).join(", ")}`, `add ${JSON.stringify(s.name)} to model.domains, or give it weight 0 in data.weights`);
        this.domainIndex.set(s.id, i);
      }
    } catch (e) {
      // The store stays closed and unlocked for the next try.
      this.ecss?.close();
      this.releaseStore();
      throw e;
    }
  }

  get tokenizerSha256(): string {
    return this.loader.manifest.tokenizer.sha256;
  }

  private drawBatches(): Batch[] {
    return Array.from({ length: this.config.accumSteps }, () => this.loader.next());
  }

  private rowDomains(b: Batch): Int32Array {
    return Int32Array.from(b.domain, (id) => this.domainIndex.get(id)!);
  }

  /**
   * The experts per sparse layer a step's batches need (the union over its
   * micro-batches), for a router that knows them ahead (RRE). Several ranks:
   * this rank's rows' experts — expert parallel: those of its own shard, as
   * store-local ids; the rest of the step's touched set is read when it is known.
   */
  private needs(batches: Batch[]): Set<number>[] {
    const sets: Set<number>[] = [];
    const shard = this.expertParallel?.shard;
    for (const b of batches) {
      const d = this.rowDomains(b);
      const perToken = new Int32Array(b.B * b.T);
      for (let r = 0; r < b.B; r++) perToken.fill(d[r]!, r * b.T, (r + 1) * b.T);
      expertsNeededAhead(this.model, b.x, perToken)!.forEach((s, l) => {
        const into = (sets[l] ??= new Set());
        for (const e of s) if (!shard) into.add(e);
        else if (e >= shard.first && e < shard.first + shard.count) into.add(e - shard.first);
      });
    }
    return sets;
  }

  /**
   * This step's batches. With ECSS prefetch (RRE), the next step's batches
   * are drawn now so that their experts can be read while this step computes.
   */
  private stepBatches(): Batch[] {
    const current = this.ahead?.batches ?? this.drawBatches();
    this.ahead = null;
    if (this.ecss?.prefetches) {
      const state = this.loader.getState();
      const next = this.drawBatches();
      this.ahead = { state, batches: next };
      this.ecss.beginStep(this.needs(current), this.needs(next));
    }
    return current;
  }

  /** The loader state a checkpoint saves: before any batches drawn ahead, so a resume draws them again. */
  loaderState(): ReturnType<Loader["getState"]> {
    return this.ahead?.state ?? this.loader.getState();
  }

  /** One optimizer step over accumSteps micro-batches. */
  trainStep(): StepResult {
    const t0 = performance.now();
    const c = this.config;
    const params = this.model.parameters();
    const E = c.model.experts?.count ?? 0;
    const counts = Array.from({ length: c.model.sparseLayers }, () => new Int32Array(E));
    const dropped = new Array<number>(c.model.sparseLayers).fill(0);
    let loss = 0, lm = 0, balance = 0, z = 0, tokens = 0, ecssComm = 0;
    // Sections: where the step's time goes outside the kernels, when a profile runs (src/backend/profile.ts).
    section("zeroGrad", () => zeroGrad(params));
    if (this.expertParallel) this.expertParallel.shard.timing.seconds = 0;
    const batches = section("loader", () => this.stepBatches());
    const dp = this.dp;
    for (let a = 0; a < c.accumSteps; a++) {
      const b = batches[a]!;
      const domains = this.rowDomains(b);
      // Dropout masks from (seed, step, micro-batch): a resumed run draws the same ones.
      const dropoutSeed = (Math.imul(this.step + 1, 0x9e3779b1) ^ Math.imul(a + 1, 0x85ebca6b) ^ c.seed) >>> 0;
      // Data parallel: b holds this rank's rows of the micro-batch, and the losses are its share of the whole one's.
      const slice = dp ? { slice: { comm: this.comm, sequences: c.batchSize, first: dp.rows.first } } : {};
      const r = this.model.loss({ tokens: b.x, domains, B: b.B, T: b.T, dropoutSeed, ...slice }, b.y);
      // Distillation: the teacher's distributions on the same tokens join the loss (src/train/distill.ts).
      const t = this.teacher;
      const total = t ? distilledLoss(t, { loss: r.loss, lm: r.lm, logits: r.out.logits }, teacherTargets(t, b.x, domains, b.B, b.T)) : r.loss;
      // Gradients add up over micro-batches; scaling each by 1/accum makes the sum their mean.
      // Only scalars (losses) and routing counts are read after backward, so the
      // forward's buffers can go back to the pool for the next micro-batch.
      // Data parallel: the last micro-batch's backward hands each finished gradient to the sum over ranks.
      const ep = this.expertParallel;
      const onLeafReady = dp && a === c.accumSteps - 1 ? dp.sync.beginBackward(params, gradOf, ep ? (p) => ep.params.has(p) : undefined) : undefined;
      backward(c.accumSteps > 1 ? ops.scale(total, 1 / c.accumSteps) : total, undefined, { freeActivations: true, ...(onLeafReady ? { onLeafReady } : {}) });
      this.ecss?.collectGrads();
      loss += total.item();
      lm += r.lm.item();
      r.out.routings.forEach((rt, l) => {
        if (rt.auxLoss) balance += rt.auxLoss.item();
        if (rt.zLoss) z += rt.zLoss.item();
        for (let e = 0; e < E; e++) counts[l]![e] += rt.counts[e]!;
        dropped[l] += rt.dropped;
      });
      tokens += b.B * b.T;
    }
    if (dp) {
      dp.sync.endBackward();
      // The step's statistics over the whole batch: losses (each rank holds its share), tokens, routing counts.
      const L = c.model.sparseLayers;
      const v = new Float64Array(5 + L * (E + 1));
      v.set([loss, lm, balance, z, tokens]);
      for (let l = 0; l < L; l++) {
        v[5 + l * (E + 1)] = dropped[l]!;
        for (let e = 0; e < E; e++) v[6 + l * (E + 1) + e] = counts[l]![e]!;
      }
      dp.sync.sumStats(v);
      [loss, lm, balance, z, tokens] = [v[0]!, v[1]!, v[2]!, v[3]!, v[4]!];
      for (let l = 0; l < L; l++) {
        dropped[l] = v[5 + l * (E + 1)]!;
        for (let e = 0; e < E; e++) counts[l]![e] = v[6 + l * (E + 1) + e]!;
      }
      // ECSS per rank: the step's touched experts follow from the whole batch's counts, so every replica of
      // a store's experts touches the same ones; their gradients are summed over those replicas only.
      if (this.ecss) {
        const ep = this.expertParallel;
        const [first, count] = ep ? [ep.shard.first, ep.shard.count] : [0, E];
        const touched = counts.map((cs) => Int32Array.from({ length: count }, (_, i) => i).filter((i) => cs[first + i]! > 0));
        ecssComm = this.ecss.syncTouched(touched, ep ? ep.layout.replicas : this.comm);
      }
    }
    // Global-norm clipping over every gradient (with ECSS, the store's experts' too),
    // applied as a factor inside the optimizer's fused steps.
    const gradNorm = section("gradNorm", () => Math.sqrt(this.gradSquares(params)));
    const gradScale = clipScale(gradNorm, c.optim.clip ?? Infinity);
    const lr = learningRate(this.schedule, this.step);
    section("optimizer", () => {
      this.optimizer.update(lr, this.optimizer.sparseExperts ? this.touched(counts) : undefined, gradScale);
      this.ecss?.update(lr, this.optimizer.hyper.expert, gradScale);
    });
    this.step++;
    this.tokens += tokens;
    const seconds = (performance.now() - t0) / 1000;
    this.seconds += seconds;
    const n = c.accumSteps;
    const D = routingDevicesFor(c);
    const routing = counts.map((cs, l) => layerStats(cs, D, tokens, dropped[l]!));
    return { step: this.step, loss: loss / n, lm: lm / n, balanceLoss: balance / n, zLoss: z / n, lr, gradNorm, tokens, seconds, commSeconds: (dp?.sync.commSeconds ?? 0) + (this.expertParallel?.shard.timing.seconds ?? 0) + ecssComm, routing };
  }

  /**
   * Σ g² over every gradient (with ECSS, the store's touched experts' too).
   * Expert parallel: each expert counted once — the dense part is the same
   * on every rank, the shards' parts are summed over the expert group
   * (every replica group sums the same numbers).
   */
  private gradSquares(params: Tensor[]): number {
    const ep = this.expertParallel;
    const stored = this.ecss?.gradSquares() ?? 0;
    if (!ep) return gradSquares(params) + stored;
    const shard = Float64Array.of(gradSquares(params.filter((p) => ep.params.has(p))) + stored);
    ep.layout.group.allreduce(shard);
    return gradSquares(params.filter((p) => !ep.params.has(p))) + shard[0]!;
  }

  /** Experts with routed tokens this step, by MoE layer path (the sparse rule's touched set); expert parallel: this rank's shard of them. */
  private touched(counts: Int32Array[]): TouchedExperts {
    const c = this.config.model;
    const s = this.expertParallel?.shard;
    return new Map(counts.map((cs, l) => [`blocks.${c.denseLayers + l}.moe`, Uint8Array.from(s ? cs.subarray(s.first, s.first + s.count) : cs, (n) => (n > 0 ? 1 : 0))]));
  }

  /**
   * Per-domain validation loss and perplexity over `batches` fixed batches per
   * domain. Always in f32, whatever the training precision: the f32 weights
   * are what a checkpoint saves, so the run's validation losses are the ones
   * `sigma eval` gives for its checkpoints.
   */
  evaluate(batches?: number): DomainEval[] {
    const c = this.config;
    const s = runEvalSettings({ batchSize: c.batchSize, seed: c.seed, evalBatches: c.eval.batches });
    this.evaluator ??= new Evaluator(c.data.dir, this.model, s);
    this.model.setPrecision("f32");
    try {
      return this.evaluator.run(this.model, batches ?? s.batches);
    } finally {
      this.model.setPrecision(c.precision);
    }
  }

  /** Throws the same SigmaError on every rank unless all ranks hold the same run (src/train/data-parallel.ts). */
  assertRanksInSync(what: string): void {
    const ep = this.expertParallel;
    const params = this.model.parameters();
    const parts = { step: this.step, config: { ...this.config, out: null, parallel: null }, loader: this.loaderState() };
    assertInSync(this.comm, what, { ...parts, params: ep ? params.filter((p) => !ep.params.has(p)) : params });
    // Expert parallel: a shard's replicas hold the same experts.
    if (ep?.layout.replicas) assertInSync(ep.layout.replicas, `${what} (expert shard ${ep.layout.group.rank})`, { ...parts, params: params.filter((p) => ep.params.has(p)) });
  }

  close(): void {
    this.loader.close();
    this.evaluator?.close();
    this.ecss?.close();
    this.releaseStore();
  }
}

/** Expert parallel: the layout of the ranks and this rank's shard of every sparse layer's experts. */
export function trainerShard(config: TrainConfig, comm: Communicator): { layout: ExpertLayout; shard: ExpertShard } {
  const layout = expertLayout(comm, parallelPlan(config, comm.size));
  return { layout, shard: shardOf(layout.group, config.model.experts!.count) };
}

export { storePath } from "./ecss-ranks.js";
