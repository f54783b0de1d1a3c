/**
 * The small models the decode-step tests run (test/decode-step.test.ts,
 * test/dense-step.test.ts): width 48 (a whole group of 32 and a short one),
 * 3 heads, a 37-token vocabulary, two domains (two embedding slots when
 * asked), 4 experts of width 24 under `router`; biases and norm parameters
 * moved off their initial 0 and 1 by up to ±jitter/2, so that a missing add
 * or scale shows.
 */
import { parseModelConfig, type RouterConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { Rng } from "../src/util/rng.js";

export const V = 37;

export interface DecodeTestShape {
  router: RouterConfig | null;
  denseLayers: number;
  sparseLayers: number;
  seqLen: number;
  jitter: number;
}

export function decodeTestModel(s: DecodeTestShape, extra: Record<string, unknown> = {}): PanguSigma {
  const model = new PanguSigma(
    parseModelConfig({
      vocabSize: V,
      width: 48,
      heads: 3,
      denseLayers: s.denseLayers,
      sparseLayers: s.router ? s.sparseLayers : 0,
      seqLen: s.seqLen,
      ffnWidth: 40,
      seed: 7,
      initStd: 0.3,
      domains: [{ name: "a", group: 0 }, { name: "b", group: 1, slot: extra.embeddingSlots ? 1 : 0 }],
      ...(s.router ? { experts: { count: 4, width: 24, router: s.router } } : {}),
      ...extra,
    }),
  ).eval();
  if (s.jitter > 0) {
    const rng = new Rng(3);
    for (const [name, p] of model.namedParameters()) {
      if (/(bias|b1|b2|beta|gamma)$/.test(name)) p.tensor.data.forEach((v, i, d) => (d[i] = v + (rng.uniform() - 0.5) * s.jitter));
    }
  }
  return model;
}
