/**
 * Distillation (docs/decode.md, "Drafts distilled from the target"): a model
 * learns a teacher's next-token distributions on its own training batches,
 * besides the data's next tokens. It is how a draft for speculative decoding
 * is made to agree with its target: a draft's proposals are kept where they
 * are the target's choices, and a small model trained on the data alone
 * agrees with a larger one on only part of them.
 *
 * Per micro-batch the teacher runs forward on the same tokens (no gradient,
 * its domains matched to the run's by name) and its logits become target
 * distributions p = softmax(teacher logits / T); the loss is
 *
 *   (1 − w)·CE(data) + w·T²·CE(p, model logits / T) + the routers' losses,
 *
 * where CE(p, ·) is ops.softCrossEntropy: its gradient is the KL
 * divergence's, softmax(logits / T) − p; the T² keeps the term's gradients
 * the size they have at T = 1 (Hinton, Vinyals and Dean, 2015).
 */
import { noGrad } from "../autograd/tape.js";
import { getBackend } from "../backend/index.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import * as ops from "../ops/index.js";
import { openModelSource } from "../serve/open.js";
import type { Tensor } from "../tensor/tensor.js";
import { sha256Hex } from "../tokenizer/hfjson.js";
import { SigmaError } from "../util/errors.js";
import type { TrainConfig } from "./config.js";

export interface Teacher {
  path: string;
  model: PanguSigma;
  /** The teacher's domain index for each of the run's domains. */
  domainOf: Int32Array;
  weight: number;
  temperature: number;
}

/**
 * The run's teacher (config.distill.teacher), checked against the run: the
 * same vocabulary — the same tokenizer file where the teacher has one
 * (`dataTokenizerSha256`, the run's data's) — its domain names, and a
 * sequence length that covers the run's; null without one.
 */
export function openTeacher(config: TrainConfig, dataTokenizerSha256: string): Teacher | null {
  const d = config.distill;
  if (d.teacher === null) return null;
  let src: ReturnType<typeof openModelSource>;
  try {
    src = openModelSource(d.teacher);
  } catch (e) {
    // The resolver's own words, naming the setting they came from (`sigma demo --teacher` sets it).
    if (e instanceof SigmaError) throw new SigmaError(`distill.teacher: ${e.message.split("\n  hint: ")[0]}`, e.hint);
    throw e;
  }
  const model = src.model.eval();
  const c = model.config;
  const share = "a teacher must share the run's tokenizer: one trained on the same data folder (or data prepared with its tokenizer)";
  if (c.vocabSize !== config.model.vocabSize) throw new SigmaError(`distill.teacher ${src.path} has a vocabulary of ${c.vocabSize} tokens, this run's model ${config.model.vocabSize}`, share);
  if (src.tokenizer && sha256Hex(src.tokenizer.text) !== dataTokenizerSha256) {
    throw new SigmaError(`distill.teacher ${src.path} was trained with another tokenizer than this run's data (${config.data.dir}): the same ids would be other tokens`, share);
  }
  if (c.seqLen < config.model.seqLen) {
    throw new SigmaError(`distill.teacher ${src.path} reads ${c.seqLen} positions, fewer than this run's model.seqLen ${config.model.seqLen}`, `set model.seqLen to ${c.seqLen} or less, or distil from a teacher with a longer context`);
  }
  const names = c.domains.map((x) => x.name);
  const domainOf = Int32Array.from(config.model.domains, (x) => {
    const i = names.indexOf(x.name);
    if (i < 0) throw new SigmaError(`distill.teacher ${src.path} has no domain ${JSON.stringify(x.name)} (it has ${names.map((n) => JSON.stringify(n)).join(", ")})`, "distil from a teacher with the run's domains, or give the run the teacher's domain names");
    return i;
  });
  return { path: src.path, model, domainOf, weight: d.weight, temperature: d.temperature };
}

/** The teacher's target distributions for B sequences of T tokens, row by row: softmax(logits / T). */
export function teacherTargets(t: Teacher, tokens: Int32Array, domains: Int32Array, B: number, T: number): Float32Array {
  const out = noGrad(() => t.model.forward({ tokens, domains: Int32Array.from(domains, (d) => t.domainOf[d]!), B, T }));
  const V = t.model.config.vocabSize;
  const logits = Float32Array.from(out.logits.data);
  if (t.temperature !== 1) for (let i = 0; i < logits.length; i++) logits[i]! /= t.temperature;
  getBackend().softmax(logits, logits, B * T, V);
  return logits;
}

/** The step's loss with the teacher's term: (1 − w)·lm + w·T²·CE(p, logits / T) + (loss − lm), the routers' losses kept. */
export function distilledLoss(t: Teacher, r: { loss: Tensor; lm: Tensor; logits: Tensor }, p: Float32Array): Tensor {
  const T = t.temperature;
  const soft = ops.softCrossEntropy(T === 1 ? r.logits : ops.scale(r.logits, 1 / T), p);
  return ops.add(ops.add(r.loss, ops.scale(r.lm, -t.weight)), ops.scale(soft, t.weight * T * T));
}
