/**
 * Text generation with the KV cache: the prompt is run once (prefill), then
 * each new token costs one single-position forward. When the cache reaches
 * the model's seqLen, the last half of the context is re-run into a fresh
 * cache and decoding goes on (the model never saw positions past seqLen).
 */
import { noGrad } from "../autograd/tape.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import { SigmaError } from "../util/errors.js";
import { Rng } from "../util/rng.js";
import { checkSampling, sampleToken, type SamplingOptions } from "./sampling.js";

export interface GenerateOptions extends SamplingOptions {
  /** Tokens to generate at most. */
  maxTokens: number;
  seed: number;
  /** Stop at this token id (e.g. <|endoftext|>); null = never. */
  stopId: number | null;
}

/**
 * Yields generated token ids one at a time (prompt not included). `domain` is
 * the index into model.config.domains whose embedding slot and expert group are used.
 */
export function* generateIds(model: PanguSigma, prompt: ArrayLike<number>, domain: number, o: GenerateOptions): Generator<number> {
  checkSampling(o);
  const c = model.config;
  if (domain < 0 || domain >= c.domains.length) throw new SigmaError(`domain index ${domain} is not one of the model's ${c.domains.length} domains`);
  if (prompt.length === 0) throw new SigmaError("generation needs at least one prompt token", "start with the domain's control token or any text");
  const rng = new Rng(o.seed);
  const domains = Int32Array.of(domain);
  const context = Array.from(prompt);
  const wasTraining = model.training;
  model.eval();
  try {
    let cache = model.newCache(1);
    // Feed `ids` and return the logits of the last position (the only ones computed), read before the next feed: one buffer for all.
    const into = new Float32Array(c.vocabSize);
    const feed = (ids: number[]): Float32Array | Float64Array => noGrad(() => model.forward({ tokens: Int32Array.from(ids), domains, B: 1, T: ids.length, lastOnly: true, logitsInto: into }, cache)).logits.data;
    const refill = (): Float32Array | Float64Array => {
      cache = model.newCache(1);
      return feed(context.slice(-Math.max(1, Math.floor(c.seqLen / 2))));
    };
    let logits = context.length <= c.seqLen - 1 ? feed(context) : refill();
    for (let n = 0; n < o.maxTokens; n++) {
      const id = sampleToken(logits, o, rng);
      if (id === o.stopId) return;
      yield id;
      context.push(id);
      logits = cache.length < c.seqLen ? feed([id]) : refill();
    }
  } finally {
    model.train(wasTraining);
  }
}
