/**
 * Per-domain validation: the mean next-token loss of each domain's held-out
 * tokens and its perplexity. Each domain has its own seeded loader over the
 * validation split, rewound before every evaluation, so every evaluation sees
 * the same windows and the curves compare step to step.
 */
import { join } from "node:path";
import { noGrad } from "../autograd/tape.js";
import { readManifest, windowTokens } from "../data/manifest.js";
import { Loader } from "../data/loader.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import * as ops from "../ops/index.js";
import type { Manifest } from "../data/manifest.js";
import { SigmaError } from "../util/errors.js";
import { existsSync } from "node:fs";
import { checkBatchFits } from "./memory.js";

export interface DomainEval {
  domain: string;
  /** Mean cross-entropy in nats per token. */
  loss: number;
  perplexity: number;
  tokens: number;
}

export interface EvalSettings {
  /** Batches per domain. */
  batches: number;
  /** Sequences per batch. */
  batchSize: number;
  /** Seed of the validation windows. */
  seed: number;
}

/** How a training run evaluates: eval.batches of its batch size, windows drawn from seed + 1 (not the training order's seed). */
export function runEvalSettings(run: { batchSize: number; seed: number; evalBatches: number }): EvalSettings {
  return { batches: run.evalBatches, batchSize: run.batchSize, seed: run.seed + 1 };
}

/** How many times over an evaluation may sample a domain's validation split (windows are drawn at random). */
const EVAL_OVERSAMPLING = 16;

/**
 * Checks that `batches` evaluation batches of `batchSize` × seqLen tokens
 * do not ask for more than EVAL_OVERSAMPLING times the validation tokens of
 * the smallest evaluated domain: more only repeats the same windows (and can
 * turn one evaluation into hours). `what` names the field or flag.
 */
export function checkEvalBatches(manifest: Manifest, domains: string[], batchSize: number, seqLen: number, batches: number, what: string): void {
  const perBatch = batchSize * seqLen;
  for (const d of manifest.domains) {
    if (!domains.includes(d.name) || d.val.tokens < windowTokens(seqLen)) continue;
    const limit = Math.max(1, EVAL_OVERSAMPLING * Math.ceil(d.val.tokens / perBatch));
    if (batches > limit) {
      throw new SigmaError(
        `${what} ${batches} would evaluate ${(batches * perBatch).toLocaleString("en-US")} tokens per domain, but domain "${d.name}" has ${d.val.tokens.toLocaleString("en-US")} validation tokens`,
        `use at most ${limit} batches of ${batchSize}×${seqLen} tokens (${EVAL_OVERSAMPLING}× its validation split); more only repeats the same windows`,
      );
    }
  }
}

export class Evaluator {
  private readonly loaders: { name: string; modelIndex: number; loader: Loader; start: ReturnType<Loader["getState"]> }[] = [];
  /** Domains without enough validation tokens for one sequence (not evaluated). */
  readonly skipped: string[] = [];

  constructor(dataDir: string, model: PanguSigma, opts: { batchSize: number; seed: number }) {
    const T = model.config.seqLen;
    const names = model.config.domains.map((d) => d.name);
    const manifest = readManifest(join(dataDir, "manifest.json"));
    for (const d of manifest.domains) {
      const modelIndex = names.indexOf(d.name);
      if (modelIndex < 0) continue;
      if (d.val.tokens < windowTokens(T)) {
        this.skipped.push(d.name);
        continue;
      }
      const loader = new Loader(dataDir, { split: "val", seqLen: T, batchSize: opts.batchSize, seed: opts.seed, weights: { [d.name]: 1 } });
      this.loaders.push({ name: d.name, modelIndex, loader, start: loader.getState() });
    }
  }

  get domains(): string[] {
    return this.loaders.map((l) => l.name);
  }

  run(model: PanguSigma, batches: number): DomainEval[] {
    const wasTraining = model.training;
    model.eval();
    try {
      return this.loaders.map(({ name, modelIndex, loader, start }) => {
        loader.setState(start);
        let sum = 0;
        let tokens = 0;
        for (let i = 0; i < batches; i++) {
          const b = loader.next();
          const loss = noGrad(() => {
            const out = model.forward({ tokens: b.x, domains: new Int32Array(b.B).fill(modelIndex), B: b.B, T: b.T });
            return ops.crossEntropy(out.logits, b.y).item();
          });
          sum += loss * b.B * b.T;
          tokens += b.B * b.T;
        }
        const loss = sum / tokens;
        return { domain: name, loss, perplexity: Math.exp(loss), tokens };
      });
    } finally {
      model.train(wasTraining);
    }
  }

  close(): void {
    for (const l of this.loaders) l.loader.close();
  }
}

/** The mean over all evaluated domains, weighted by their tokens (null when none was evaluated). */
export function allDomains(evals: DomainEval[]): DomainEval | null {
  const tokens = evals.reduce((n, e) => n + e.tokens, 0);
  if (tokens === 0) return null;
  const loss = evals.reduce((s, e) => s + e.loss * e.tokens, 0) / tokens;
  return { domain: "all", loss, perplexity: Math.exp(loss), tokens };
}


export interface EvalReport {
  /** One entry per evaluated domain, in the data's domain order. */
  domains: DomainEval[];
  /** Every evaluated domain together (token-weighted mean), or null. */
  all: DomainEval | null;
  /** Model domains the data has too few validation tokens for (one sequence): not evaluated. */
  skipped: string[];
}

/**
 * Evaluates `model` on the validation split of a prepared data folder: the
 * function `sigma eval` and the library's `evaluate` use, with the same
 * Evaluator the trainer runs every eval.every steps — so, given the run's
 * settings (batches, batch size, seed), it prints the numbers the run logged.
 * `flags` names the settings in errors.
 */
export function evaluateOnData(model: PanguSigma, dataDir: string, s: EvalSettings, flags = { batches: "batches", batchSize: "batchSize", data: "data" }): EvalReport {
  const manifestPath = join(dataDir, "manifest.json");
  if (!existsSync(manifestPath)) throw new SigmaError(`${dataDir} holds no prepared data (no manifest.json)`, `pass ${flags.data} a folder written by \`sigma data prepare\``);
  const m = readManifest(manifestPath);
  if (m.tokenizer.vocabSize !== model.config.vocabSize) throw new SigmaError(`${dataDir} was tokenized with a vocabulary of ${m.tokenizer.vocabSize}; the model has ${model.config.vocabSize}`, "evaluate on the data the model was trained on");
  checkBatchFits(model, s.batchSize, flags.batchSize);
  checkEvalBatches(m, model.config.domains.map((d) => d.name), s.batchSize, model.config.seqLen, s.batches, flags.batches);
  const ev = new Evaluator(dataDir, model, { batchSize: s.batchSize, seed: s.seed });
  try {
    const domains = ev.run(model, s.batches);
    if (domains.length === 0) {
      const known = model.config.domains.map((d) => d.name).join(", ");
      throw new SigmaError(`${dataDir} has no validation data for any of the model's domains (${known})`, ev.skipped.length ? `too few validation tokens in ${ev.skipped.join(", ")}: prepare more text or a larger validation share` : "evaluate on data prepared for this model's domains");
    }
    return { domains, all: allDomains(domains), skipped: [...ev.skipped] };
  } finally {
    ev.close();
  }
}
