// The router plug-ins (src/moe/routers): for every registered kind, what its
// spec says (k, its tensors, shared experts, the experts known ahead, the
// devices) is what the module it builds does.
import { test } from "node:test";
import assert from "node:assert/strict";
import { noGrad } from "../src/autograd/tape.js";
import { modelRouter, parseModelConfig, type RouterConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { ROUTER_KINDS } from "../src/moe/routers/index.js";
import { Tensor } from "../src/tensor/tensor.js";
import { Rng } from "../src/util/rng.js";

/** A config of each registered kind; a new router adds one here (the first test says so). */
const SAMPLES: Record<string, RouterConfig> = {
  rre: { kind: "rre", groups: 2, seed: 4 },
  moge: { kind: "moge", groups: 2, perGroup: 2, auxLossCoef: 0.01, sharedExperts: 2 },
  topk: { kind: "topk", k: 3, renormalize: true, auxLossCoef: 0.01, zLossCoef: 0, capacityFactor: null },
};

const E = 8;
const build = (router: RouterConfig) =>
  new PanguSigma(
    parseModelConfig({ vocabSize: 23, width: 8, heads: 2, denseLayers: 1, sparseLayers: 2, seqLen: 6, ffnWidth: 12, domains: [{ name: "a", group: 0 }, { name: "b", group: 1 }], experts: { count: E, width: 5, router } }),
  ).eval();

test("every registered router kind has a sample here", () => {
  assert.deepEqual([...ROUTER_KINDS].sort(), Object.keys(SAMPLES).sort());
});

for (const [name, router] of Object.entries(SAMPLES)) {
  test(`${name}: the spec describes the module it builds`, () => {
    const model = build(router);
    const { spec, view } = modelRouter(model.config)!;
    const block = model.blocks[1]!;
    const moe = block.moe!;
    // Its tensors: the names, sizes and kinds the module registers under router.
    const declared = spec.tensors(view).map((t) => [t.name, t.elements, t.buffer]).sort();
    const params = [...moe.router.namedParameters()].map(([n, p]) => [n, p.tensor.size, false]);
    const buffers = [...moe.router.namedBuffers()].map(([n, b]) => [n, b.length, true]);
    assert.deepEqual([...params, ...buffers].sort(), declared);
    assert.equal(spec.learned, params.length > 0, "a learned router has parameters");
    // The layer builds the shared experts the spec asks for: one FFN of width sharedExperts · expert width.
    assert.equal(moe.shared?.fc1.weight.dim(0) ?? 0, spec.sharedExperts * 5);
    // k, and the experts known before the forward.
    const rng = new Rng(3);
    const tokens = Int32Array.from({ length: 12 }, () => rng.int(23));
    const domains = Int32Array.of(0, 1);
    const out = noGrad(() => model.forward({ tokens, domains, B: 2, T: 6 }));
    for (const r of out.routings) {
      assert.equal(r.k, spec.k);
      assert.equal(r.expertIds.length, 12 * spec.k);
    }
    if (moe.router.expertsNeeded) {
      const rowDomains = Int32Array.from({ length: 12 }, (_, i) => domains[Math.floor(i / 6)]!);
      assert.deepEqual([...moe.router.expertsNeeded(tokens, rowDomains)].sort(), [...new Set(out.routings[0]!.expertIds)].sort());
    }
    assert.equal(E % spec.devices(E), 0, "the devices divide the experts");
  });
}

// Under noGrad the learned routers score on plain buffers (learned.ts's
// untracked path); with a gradient they go through ops. The two must route
// alike, weights bit for bit: evaluation and decoding see what training saw.
test("learned routers: the same experts and weights with and without a gradient", () => {
  const cases: RouterConfig[] = [
    SAMPLES.moge!,
    SAMPLES.topk!,
    { kind: "topk", k: 2, renormalize: false, auxLossCoef: 0.01, zLossCoef: 0.001, capacityFactor: null },
  ];
  for (const router of cases) {
    for (const dtype of ["float32", "float64"] as const) {
      const model = new PanguSigma(
        parseModelConfig({ vocabSize: 23, width: 8, heads: 2, denseLayers: 1, sparseLayers: 2, seqLen: 6, ffnWidth: 12, domains: [{ name: "a", group: 0 }, { name: "b", group: 1 }], experts: { count: E, width: 5, router } }),
        dtype,
      );
      const moe = model.blocks[1]!.moe!;
      const rng = new Rng(11);
      const x = Tensor.from(Array.from({ length: 17 * 8 }, () => rng.normal()), [17, 8], dtype);
      const input = { x, tokenIds: new Int32Array(17), domainIds: new Int32Array(17) };
      const tracked = moe.router.route(input);
      assert.ok(tracked.weights.requiresGrad, `${router.kind}: with a gradient the weights are on the tape`);
      const plain = noGrad(() => moe.router.route(input));
      assert.ok(!plain.weights.requiresGrad);
      const what = `${router.kind} ${JSON.stringify(router)} ${dtype}`;
      assert.deepEqual(plain.expertIds, tracked.expertIds, what);
      assert.deepEqual(plain.weights.data, tracked.weights.data, what);
      assert.deepEqual(plain.counts, tracked.counts, what);
      assert.equal(plain.auxLoss?.item(), tracked.auxLoss?.item(), what);
      assert.equal(plain.zLoss?.item(), tracked.zLoss?.item(), what);
    }
  }
});
