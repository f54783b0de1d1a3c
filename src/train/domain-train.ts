/**
 * Training only the new parameters of a grown model (`sigma domain add`,
 * src/models/domain-add.ts): everything else is frozen.
 *
 *  - No gradient: a parameter with no new range gets requiresGrad = false
 *    for the run, so backward never computes its gradient. A stacked tensor
 *    that holds new ranges (the experts [E, …], the token embedding, router
 *    rows) gets its gradient computed whole — the autograd works on whole
 *    tensors — but only the new ranges are read from it.
 *  - No optimizer state: Adam's moments exist for the new ranges only.
 *  - Bytes unchanged: the update writes inside the new ranges only.
 *
 * Adam is PanGu-Σ's (β 0.8/0.95), no weight decay [ours: a few hundred steps
 * on one domain], warm-up over the first tenth of the steps, then constant.
 * Batches are drawn from the new domain alone.
 */
import { backward, noGrad, zeroGrad } from "../autograd/tape.js";
import { backendFor } from "../backend/index.js";
import { Loader } from "../data/loader.js";
import type { NewRange } from "../models/domain-add.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import * as ops from "../ops/index.js";
import { HYBRID_DEFAULTS } from "../optim/adamw.js";
import type { Tensor } from "../tensor/tensor.js";
import { SigmaError } from "../util/errors.js";

export interface NewPartsTraining {
  /** Prepared data folder holding the domain. */
  dataDir: string;
  /** The domain's name in the data, and its index in the model. */
  domain: string;
  domainIndex: number;
  steps: number;
  lr: number;
  batchSize: number;
  seed: number;
  /** Called after each step with its training loss. */
  onStep?: (step: number, loss: number) => void;
}

/** Mean next-token loss of `batches` validation batches of one domain (eval mode, fixed windows). */
export function domainValLoss(model: PanguSigma, dataDir: string, domain: string, domainIndex: number, o: { batches: number; batchSize: number; seed: number }, mapIds?: (t: number) => number): number {
  const loader = new Loader(dataDir, { split: "val", seqLen: model.config.seqLen, batchSize: o.batchSize, seed: o.seed, weights: { [domain]: 1 } });
  const was = model.training;
  model.eval();
  try {
    let sum = 0, n = 0;
    for (let i = 0; i < o.batches; i++) {
      const b = loader.next();
      const [x, y] = mapIds ? [b.x.map(mapIds), b.y.map(mapIds)] : [b.x, b.y];
      sum += noGrad(() => ops.crossEntropy(model.forward({ tokens: x, domains: new Int32Array(b.B).fill(domainIndex), B: b.B, T: b.T }).logits, y).item()) * b.B * b.T;
      n += b.B * b.T;
    }
    return sum / n;
  } finally {
    loader.close();
    model.train(was);
  }
}

/** Trains the ranges `trainable` of `model` on its new domain's data; returns each step's loss. */
export function trainNewParts(model: PanguSigma, trainable: NewRange[], o: NewPartsTraining): number[] {
  const params = model.namedParameters();
  for (const r of trainable) if (!params.has(r.name)) throw new Error(`trainNewParts: the model has no parameter "${r.name}"`);
  const live = new Set(trainable.map((r) => r.name));
  const moments = trainable.map((r) => {
    const p = params.get(r.name)!;
    // Adam's moments, for this range only (same element type as the parameter).
    return { tensor: p.tensor, range: r, group: p.group, m: p.tensor.data.slice(r.start, r.end).fill(0), v: p.tensor.data.slice(r.start, r.end).fill(0) };
  });
  const frozen: Tensor[] = [];
  for (const [name, p] of params) {
    if (live.has(name)) continue;
    p.tensor.requiresGrad = false;
    p.tensor.grad = null;
    frozen.push(p.tensor);
  }
  const loader = new Loader(o.dataDir, { split: "train", seqLen: model.config.seqLen, batchSize: o.batchSize, seed: o.seed, weights: { [o.domain]: 1 } });
  const used = [...live].map((n) => params.get(n)!.tensor);
  const warmup = Math.max(1, Math.floor(o.steps / 10));
  const losses: number[] = [];
  model.train();
  try {
    for (let step = 0; step < o.steps; step++) {
      zeroGrad(used);
      const b = loader.next();
      const { loss } = model.loss({ tokens: b.x, domains: new Int32Array(b.B).fill(o.domainIndex), B: b.B, T: b.T, dropoutSeed: o.seed + step }, b.y);
      const value = loss.item();
      if (!Number.isFinite(value)) throw new SigmaError(`training the new domain diverged at step ${step + 1} (loss ${value})`, "lower --lr");
      backward(loss);
      const lr = step < warmup ? (o.lr * (step + 1)) / warmup : o.lr;
      for (const s of moments) {
        const g = s.tensor.grad;
        if (!g) continue;
        const h = HYBRID_DEFAULTS[s.group];
        const { start, end } = s.range;
        backendFor(s.tensor.data).adamw(s.tensor.data.subarray(start, end), g.data.subarray(start, end), s.m, s.v, end - start, lr, h.beta1, h.beta2, h.eps, 0, step + 1, 1);
      }
      losses.push(value);
      o.onStep?.(step + 1, value);
    }
  } finally {
    loader.close();
    zeroGrad(used, true);
    for (const t of frozen) t.requiresGrad = true;
  }
  return losses;
}
