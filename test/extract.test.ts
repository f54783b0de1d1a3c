// Domain sub-models: RRE extraction is loss-free (identical logits on the
// domain, for every domain, sparse and mixed); extraction by usage keeps the
// most used experts, keeps MoGE's groups equal, and refuses bad budgets.
import { test } from "node:test";
import assert from "node:assert/strict";
import { noGrad } from "../src/autograd/tape.js";
import { parseModelConfig, type ModelConfigInput, type RouterConfig } from "../src/models/config.js";
import { expertUsage, extractByDomain, extractByUsage } from "../src/models/extract.js";
import { PanguSigma, type ModelInput } from "../src/models/pangu-sigma.js";
import type { TopkRouter } from "../src/moe/routers/topk.js";
import { Rng } from "../src/util/rng.js";
import { maxDiff } from "./compare.js";

const V = 40;
const DOMAINS = [
  { name: "zh", slot: 0, group: 0 },
  { name: "en", slot: 0, group: 1 },
  { name: "code", slot: 1, group: 2 },
];
const model = (router: RouterConfig, extra: Partial<ModelConfigInput> = {}): PanguSigma => {
  const m = new PanguSigma(parseModelConfig({ vocabSize: V, width: 16, heads: 2, denseLayers: 1, sparseLayers: 2, seqLen: 8, ffnWidth: 20, domains: DOMAINS, embeddingSlots: 2, experts: { count: 6, router }, ...extra }));
  // Random biases and norms too, so that a parameter copied from the wrong place shows.
  const rng = new Rng(8);
  for (const p of m.parameters()) for (let i = 0; i < p.size; i++) p.data[i] = rng.normal() * 0.3;
  return m.eval();
};
const batch = (rng: Rng, d: number, B = 3, T = 8): ModelInput => ({ tokens: Int32Array.from({ length: B * T }, () => rng.int(V)), domains: new Int32Array(B).fill(d), B, T });
const run = (m: PanguSigma, b: ModelInput) => noGrad(() => m.forward(b));
for (const [mode, extra] of [["sparse", { denseLayers: 0, sparseLayers: 3 }], ["mixed", {}]] as const) {
  test(`RRE sub-model of every domain gives the full model's logits on it (${mode})`, () => {
    const full = model({ kind: "rre", groups: 3, seed: 2 }, extra);
    const rng = new Rng(1);
    DOMAINS.forEach((dom, d) => {
      const sub = extractByDomain(full, dom.name);
      assert.equal(sub.config.experts!.count, 2);
      assert.equal(sub.config.embeddingSlots, 1);
      assert.ok(sub.parameterCount() < full.parameterCount());
      const b = batch(rng, d);
      const a = run(full, b).logits.data;
      const s = run(sub, { ...b, domains: new Int32Array(b.B) }).logits.data;
      assert.ok(maxDiff(a, s) <= 1e-6, `${dom.name}: max |Δ| = ${maxDiff(a, s)}`);
      // The sub-model's routing is the full one's, re-indexed into the group.
      const fr = run(full, b).routings;
      const sr = run(sub, { ...b, domains: new Int32Array(b.B) }).routings;
      fr.forEach((r, l) => assert.deepEqual(Array.from(sr[l]!.expertIds, (e) => e + 2 * dom.group), Array.from(r.expertIds)));
    });
  });
}

test("RRE extraction: unknown domain and dense model are refused with a hint", () => {
  const full = model({ kind: "rre", groups: 3, seed: 2 });
  assert.throws(() => extractByDomain(full, "fr"), /Unknown domain "fr"; the model knows zh, en, code/);
  const dense = new PanguSigma(parseModelConfig({ vocabSize: V, width: 8, heads: 2, denseLayers: 1, sparseLayers: 0, seqLen: 4, ffnWidth: 8, domains: [{ name: "en" }] }));
  assert.throws(() => extractByDomain(dense, "en"), /dense: it has no experts/);
});

test("top-k extraction by usage keeps the most used experts, with their router rows", () => {
  const full = model({ kind: "topk", k: 2, renormalize: true, auxLossCoef: 0.01, zLossCoef: 0, capacityFactor: null });
  const rng = new Rng(4);
  const data = [batch(rng, 2), batch(rng, 2)];
  const usage = expertUsage(full, data);
  assert.equal(usage.length, 2);
  assert.equal(usage[0]!.reduce((a, b) => a + b, 0), 2 * 3 * 8 * 2);
  const sub = extractByUsage(full, "code", usage, 3);
  assert.equal(sub.config.experts!.count, 3);
  assert.deepEqual(sub.config.domains, [{ name: "code", slot: 0 }]);
  // Expert i of the sub-model is the i-th most used (in id order) of the full one.
  usage.forEach((u, l) => {
    const top = [...u.keys()].sort((a, b) => u[b]! - u[a]! || a - b).slice(0, 3).sort((a, b) => a - b);
    const [fw, sw] = [full.blocks[l + 1]!.moe!, sub.blocks[l + 1]!.moe!];
    const n = fw.w1.size / 6;
    top.forEach((e, i) => {
      assert.deepEqual(sw.w1.data.subarray(i * n, (i + 1) * n), fw.w1.data.subarray(e * n, (e + 1) * n));
      const r = 16;
      const [fr, sr] = [fw.router as TopkRouter, sw.router as TopkRouter];
      assert.deepEqual(sr.weight.data.subarray(i * r, (i + 1) * r), fr.weight.data.subarray(e * r, (e + 1) * r));
    });
  });
  // Keeping every expert changes nothing.
  const all = extractByUsage(full, "code", usage, 6);
  const b = data[0]!;
  assert.ok(maxDiff(run(full, b).logits.data, run(all, { ...b, domains: new Int32Array(b.B) }).logits.data) <= 1e-6);
  assert.throws(() => extractByUsage(full, "code", usage, 1), /k = 2 per token/);
});

test("MoGE extraction keeps the same number of experts in every group", () => {
  const full = model({ kind: "moge", groups: 2, perGroup: 1, auxLossCoef: 0.01, sharedExperts: 1 });
  const usage = expertUsage(full, [batch(new Rng(6), 0)]);
  const sub = extractByUsage(full, "zh", usage, 4);
  assert.equal(sub.config.experts!.count, 4);
  assert.ok(sub.blocks[1]!.moe!.shared, "shared experts are kept");
  const out = run(sub, batch(new Rng(7), 0));
  // Each token sends one assignment to each group of two experts.
  out.routings.forEach((r) => {
    for (let t = 0; t < r.expertIds.length / 2; t++) {
      assert.ok(r.expertIds[2 * t]! < 2 && r.expertIds[2 * t + 1]! >= 2);
    }
  });
  assert.throws(() => extractByUsage(full, "zh", usage, 3), /same number from each of its 2 groups/);
  assert.throws(() => extractByUsage(model({ kind: "rre", groups: 3, seed: 2 }), "zh", usage, 3), /exact, no budget needed/);
});
