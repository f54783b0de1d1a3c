// backward(…, { freeActivations: true }) hands the forward's buffers back to
// the pool; the next steps run on recycled buffers. Gradients must be exactly
// those of a run that frees nothing, for every router, with and without
// activation recomputation.
import { test } from "node:test";
import assert from "node:assert/strict";
import { backward, zeroGrad } from "../src/autograd/tape.js";
import { parseModelConfig, type RouterConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { clearPool, poolStats } from "../src/tensor/pool.js";
import { Rng } from "../src/util/rng.js";
import { Tensor } from "../src/tensor/tensor.js";
import * as ops from "../src/ops/index.js";

const routers: Record<string, RouterConfig> = {
  rre: { kind: "rre", groups: 2, seed: 3 },
  moge: { kind: "moge", groups: 2, perGroup: 1, auxLossCoef: 0.01, sharedExperts: 0 },
  topk: { kind: "topk", k: 2, renormalize: true, auxLossCoef: 0.01, zLossCoef: 0.001, capacityFactor: null },
};

// Big enough that activations pass the pool's minimum size (16 Ki elements): B·T·C = 8·32·64.
const [B, T, C, V] = [8, 32, 64, 512];

for (const [name, router] of Object.entries(routers)) {
  for (const recompute of [false, true]) {
    test(`freeing activations leaves ${name} gradients unchanged${recompute ? " (with recomputation)" : ""}`, () => {
      const config = parseModelConfig({
        vocabSize: V, width: C, heads: 4, seqLen: T, ffnWidth: 128, denseLayers: 1, sparseLayers: 1,
        domains: [{ name: "a", slot: 0, group: 0 }, { name: "b", slot: 0, group: 1 }],
        experts: { count: 4, router },
      });
      const model = new PanguSigma(config);
      model.recompute = recompute;
      const rng = new Rng(11);
      const input = { tokens: Int32Array.from({ length: B * T }, () => rng.int(V)), domains: Int32Array.from({ length: B }, (_, b) => b % 2), B, T };
      const targets = Int32Array.from({ length: B * T }, () => rng.int(V));
      const params = model.parameters();
      const step = (free: boolean) => {
        zeroGrad(params);
        const r = model.loss(input, targets);
        backward(r.loss, undefined, { freeActivations: free });
        return { loss: r.loss.item(), grads: params.map((p) => p.grad!.data.slice()) };
      };
      clearPool();
      const kept = step(false);
      const before = poolStats().buffers;
      const freed1 = step(true);
      assert.ok(poolStats().buffers > before, "the pass returned activation buffers to the pool");
      const freed2 = step(true); // runs on the recycled buffers
      for (const run of [freed1, freed2]) {
        assert.equal(run.loss, kept.loss);
        run.grads.forEach((g, i) => assert.deepEqual(g, kept.grads[i], `gradient of ${params[i]!.name ?? i}`));
      }
    });
  }
}

test("freeing activations keeps what is still needed: a view's source until its own node ran, leaves, the loss", () => {
  const n = 1 << 15; // above the pool's minimum
  const rng = new Rng(3);
  const p = Tensor.randn([n / 64, 64], rng, 1);
  p.requiresGrad = true;
  const w = Tensor.randn([64, n / 64], rng, 1);
  const run = (free: boolean) => {
    p.grad = null;
    const pv = ops.reshape(p, [64, n / 64]); // a view of a leaf: never freed
    const a = ops.softmax(pv); // its backward reads its own output…
    const b = ops.reshape(a, [n / 64, 64]); // …which this view shares
    const loss = ops.sum(ops.mul(ops.reshape(b, [64, n / 64]), w));
    backward(loss, undefined, { freeActivations: free });
    return { loss: loss.item(), grad: p.grad!.data.slice() };
  };
  const pBefore = p.data.slice();
  const kept = run(false);
  const freed = run(true);
  for (let i = 0; i < 8; i++) Tensor.zeros([n]); // takes (and zeroes) whatever the pool holds of this size
  assert.deepEqual(p.data, pBefore, "the parameter's values are untouched");
  assert.equal(freed.loss, kept.loss);
  assert.deepEqual(freed.grad, kept.grad);
});

for (const recompute of [false, true]) {
  test(`freeing activations leaves gradients unchanged with the block options (RMSNorm, RoPE, GQA, SwiGLU, q/k norm, gated shared expert)${recompute ? " (with recomputation)" : ""}`, () => {
    const config = parseModelConfig({
      vocabSize: V, width: C, heads: 4, kvHeads: 2, seqLen: T, ffnWidth: 128, denseLayers: 1, sparseLayers: 1, domains: [{ name: "a" }], queryLayer: false,
      norm: "rmsnorm", position: "rope", ffn: "swiglu", ffnBias: false, attentionBias: "qkv", qkNorm: true, tiedEmbeddings: false,
      experts: { count: 4, sharedWidth: 96, sharedGate: true, router: { kind: "topk", k: 2, renormalize: false } },
    });
    const model = new PanguSigma(config);
    model.recompute = recompute;
    const rng = new Rng(12);
    const input = { tokens: Int32Array.from({ length: B * T }, () => rng.int(V)), domains: new Int32Array(B), B, T };
    const targets = Int32Array.from({ length: B * T }, () => rng.int(V));
    const params = model.parameters();
    const step = (free: boolean) => {
      zeroGrad(params);
      const r = model.loss(input, targets);
      backward(r.loss, undefined, { freeActivations: free });
      return { loss: r.loss.item(), grads: params.map((p) => p.grad!.data.slice()) };
    };
    clearPool();
    const kept = step(false);
    for (const run of [step(true), step(true)]) {
      assert.equal(run.loss, kept.loss);
      run.grads.forEach((g, i) => assert.deepEqual(g, kept.grads[i], `gradient of ${params[i]!.name ?? i}`));
    }
  });
}
