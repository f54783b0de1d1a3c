/**
 * `evaluate(model, options)`: per-domain validation loss and perplexity on a
 * prepared data folder, and all domains together. It runs the trainer's own
 * evaluation with the run's settings (batches, batch size, seed) when the
 * checkpoint records them, so it reproduces the numbers the run logged.
 */
import { unigramBaselines } from "../train/baseline.js";
import { evaluateOnData, runEvalSettings, type EvalReport, type EvalSettings } from "../train/evaluate.js";
import { SigmaError } from "../util/errors.js";
import { Model, openModel } from "./model.js";

export interface EvaluateOptions {
  /** Prepared data folder (default: the one the model was trained on, when recorded). */
  data?: string;
  /** Batches per domain (default: the run's eval.batches, else 8). */
  batches?: number;
  /** Sequences per batch (default: the run's batchSize, else 8). */
  batchSize?: number;
  /** Seed of the validation windows (default: the run's, else 1). */
  seed?: number;
  /** @internal How errors name the options (the CLI passes its flags). */
  names?: { data: string; batches: string; batchSize: string };
}

export interface EvaluateResult extends EvalReport {
  /** The data folder evaluated on. */
  data: string;
  /** The settings used. */
  settings: EvalSettings;
  /** Unigram cross-entropy of each domain's validation tokens (a model that ignores context). */
  baselines: Record<string, number>;
}

const DEFAULTS: EvalSettings = { batches: 8, batchSize: 8, seed: 1 };

export async function evaluate(model: Model | string, o: EvaluateOptions = {}): Promise<EvaluateResult> {
  const m = typeof model === "string" ? await openModel(model) : model;
  const names = o.names ?? { data: "data", batches: "batches", batchSize: "batchSize" };
  const data = o.data ?? m.dataDir;
  if (!data) throw new SigmaError(`no prepared data to evaluate on: ${m.path ?? "the model"} names none`, `pass ${names.data} <dir> (a folder written by \`sigma data prepare\`)`);
  const base = m.run ? runEvalSettings(m.run) : DEFAULTS;
  const settings = { batches: o.batches ?? base.batches, batchSize: o.batchSize ?? base.batchSize, seed: o.seed ?? base.seed };
  const report = evaluateOnData(m.network, data, settings, names);
  const baselines = Object.fromEntries(unigramBaselines(data).map((b) => [b.domain, b.crossEntropy]));
  return { ...report, data, settings, baselines };
}
