/**
 * One training run's moving parts: the model, PanGu-Σ's hybrid AdamW, the
 * domain-mixing loader, the schedule and the step count. `trainStep` is one
 * optimizer step over `accumSteps` micro-batches; everything it depends on
 * (parameters, moments, loader RNG, step) is what a checkpoint saves, so a
 * resumed trainer continues bit for bit.
 */
import { backward, zeroGrad } from "../autograd/tape.js";
import { Loader } from "../data/loader.js";
import type { ModelConfig } from "../models/config.js";
import { PanguSigma } from "../models/pangu-sigma.js";
import { deviceLoads, imbalanceScore, type LayerStats } from "../moe/routing.js";
import * as ops from "../ops/index.js";
import { AdamW, clipGradNorm } from "../optim/adamw.js";
import { SigmaError } from "../util/errors.js";
import type { TrainConfig } from "./config.js";
import { Evaluator, type DomainEval } from "./evaluate.js";
import { learningRate, scheduleOf, type Schedule } from "./schedule.js";

export interface StepResult {
  /** Optimizer steps done after this one. */
  step: number;
  /** lm + aux, averaged over the micro-batches. */
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
  /** Per sparse layer: tokens per expert, per-device load and imbalance score over the step. */
  routing: LayerStats[];
}

/** How many "devices" the imbalance score spreads experts over: the router's groups, or one per expert for top-k [ours]. */
export function devicesFor(c: ModelConfig): number {
  const r = c.experts?.router;
  if (!r) return 1;
  return r.kind === "topk" ? c.experts!.count : r.groups;
}

export class Trainer {
  readonly model: PanguSigma;
  readonly optimizer: AdamW;
  readonly loader: Loader;
  readonly schedule: Schedule;
  /** Manifest domain id → index into model.config.domains. */
  private readonly domainIndex: Map<number, number>;
  private evaluator: Evaluator | null = null;
  step = 0;
  tokens = 0;
  /** Seconds spent in training steps, carried across resumes. */
  seconds = 0;

  constructor(readonly config: TrainConfig, model?: PanguSigma) {
    this.model = model ?? new PanguSigma(config.model);
    this.model.recompute = config.recompute;
    const o = config.optim;
    this.optimizer = new AdamW(this.model.namedParameters(), {
      dense: { beta1: o.beta1, beta2: o.beta2, eps: o.denseEps, weightDecay: o.weightDecay },
      expert: { beta1: o.beta1, beta2: o.beta2, eps: o.expertEps, weightDecay: o.weightDecay },
    });
    this.schedule = scheduleOf(config);
    this.loader = new Loader(config.data.dir, { split: "train", seqLen: config.model.seqLen, batchSize: config.batchSize, seed: config.seed, weights: config.data.weights });
    const m = this.loader.manifest;
    if (m.tokenizer.vocabSize !== config.model.vocabSize) {
      throw new SigmaError(`model.vocabSize is ${config.model.vocabSize} but the data in ${config.data.dir} was tokenized with a vocabulary of ${m.tokenizer.vocabSize}`, `set model.vocabSize to ${m.tokenizer.vocabSize}`);
    }
    const names = config.model.domains.map((d) => d.name);
    this.domainIndex = new Map();
    for (const s of this.loader.streams) {
      const i = names.indexOf(s.name);
      if (i < 0) throw new SigmaError(`the data samples domain "${s.name}" but model.domains has only ${names.join(", ")}`, `add "${s.name}" to model.domains, or give it weight 0 in data.weights`);
      this.domainIndex.set(s.id, i);
    }
  }

  get tokenizerSha256(): string {
    return this.loader.manifest.tokenizer.sha256;
  }

  /** One optimizer step over accumSteps micro-batches. */
  trainStep(): StepResult {
    const t0 = performance.now();
    const c = this.config;
    const params = this.model.parameters();
    const E = c.model.experts?.count ?? 0;
    const counts = Array.from({ length: c.model.sparseLayers }, () => new Int32Array(E));
    const dropped = new Array<number>(c.model.sparseLayers).fill(0);
    let loss = 0, lm = 0, balance = 0, z = 0, tokens = 0;
    zeroGrad(params);
    for (let a = 0; a < c.accumSteps; a++) {
      const b = this.loader.next();
      const domains = Int32Array.from(b.domain, (id) => this.domainIndex.get(id)!);
      const r = this.model.loss({ tokens: b.x, domains, B: b.B, T: b.T }, b.y);
      // Gradients add up over micro-batches; scaling each by 1/accum makes the sum their mean.
      backward(c.accumSteps > 1 ? ops.scale(r.loss, 1 / c.accumSteps) : r.loss);
      loss += r.loss.item();
      lm += r.lm.item();
      r.out.routings.forEach((rt, l) => {
        if (rt.auxLoss) balance += rt.auxLoss.item();
        if (rt.zLoss) z += rt.zLoss.item();
        for (let e = 0; e < E; e++) counts[l]![e] += rt.counts[e]!;
        dropped[l] += rt.dropped;
      });
      tokens += b.B * b.T;
    }
    const gradNorm = clipGradNorm(params, c.optim.clip ?? Infinity);
    const lr = learningRate(this.schedule, this.step);
    this.optimizer.update(lr);
    this.step++;
    this.tokens += tokens;
    const seconds = (performance.now() - t0) / 1000;
    this.seconds += seconds;
    const n = c.accumSteps;
    const D = devicesFor(c.model);
    const routing = counts.map((cs, l) => ({ tokensPerExpert: Array.from(cs), perDevice: deviceLoads(cs, D), imbalance: imbalanceScore(cs, D, tokens), dropped: dropped[l]! }));
    return { step: this.step, loss: loss / n, lm: lm / n, balanceLoss: balance / n, zLoss: z / n, lr, gradNorm, tokens, seconds, routing };
  }

  /** Per-domain validation loss and perplexity over `batches` fixed batches per domain. */
  evaluate(batches = this.config.eval.batches): DomainEval[] {
    this.evaluator ??= new Evaluator(this.config.data.dir, this.model, { batchSize: this.config.batchSize, seed: this.config.seed + 1 });
    return this.evaluator.run(this.model, batches);
  }

  close(): void {
    this.loader.close();
    this.evaluator?.close();
  }
}
