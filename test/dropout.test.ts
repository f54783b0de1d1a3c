// Dropout (config.dropout): inverted dropout on the attention and FFN outputs
// in training mode, off in eval(), masks fixed by a seed so that a recomputed
// forward and a resumed run draw the same ones.
import { test } from "node:test";
import assert from "node:assert/strict";
import { backward, zeroGrad } from "../src/autograd/tape.js";
import { gradcheck } from "../src/autograd/gradcheck.js";
import { parseModelConfig, type ModelConfigInput } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import * as ops from "../src/ops/index.js";
import { Tensor } from "../src/tensor/tensor.js";
import { Rng } from "../src/util/rng.js";

test("dropout zeroes about p of the elements and scales the rest by 1/(1-p); the seed fixes the mask", () => {
  const n = 100_000;
  const x = Tensor.full([n], 2);
  const p = 0.3;
  const y = ops.dropout(x, p, 5).data;
  let zeros = 0;
  for (const v of y) {
    if (v === 0) zeros++;
    else assert.ok(Math.abs(v - 2 / (1 - p)) < 1e-5, `kept value ${v}, expected ${2 / (1 - p)}`);
  }
  assert.ok(Math.abs(zeros / n - p) < 0.01, `dropped ${zeros / n} of the elements, expected ${p}`);
  assert.deepEqual(ops.dropout(x, p, 5).data, y, "same seed, same mask");
  assert.notDeepEqual(ops.dropout(x, p, 6).data, y, "another seed, another mask");
  assert.equal(ops.dropout(x, 0, 5), x, "p = 0 is the identity");
  assert.throws(() => ops.dropout(x, 1, 5), /outside \[0, 1\)/);
  assert.throws(() => ops.dropout(x, -0.1, 5), /outside \[0, 1\)/);
});

const tiny = (dropout: number): ModelConfigInput => ({
  vocabSize: 13, width: 8, heads: 2, denseLayers: 1, sparseLayers: 1, seqLen: 6, ffnWidth: 12,
  domains: [{ name: "a", slot: 0, group: 0 }, { name: "b", slot: 0, group: 1 }],
  experts: { count: 4, router: { kind: "topk", k: 2, renormalize: true, auxLossCoef: 0.01, zLossCoef: 0, capacityFactor: null } },
  dropout,
  seed: 4,
});

const rng = new Rng(9);
const [B, T] = [2, 6];
const input = { tokens: Int32Array.from({ length: B * T }, () => rng.int(13)), domains: Int32Array.of(0, 1), B, T };
const targets = Int32Array.from({ length: B * T }, () => rng.int(13));

test("a model with dropout: masks follow the seed in training, and eval() turns dropout off", () => {
  const model = new PanguSigma(parseModelConfig(tiny(0.25)));
  const plain = new PanguSigma(parseModelConfig(tiny(0)));
  const logits = (m: PanguSigma, seed?: number) => Array.from(m.forward({ ...input, dropoutSeed: seed }).logits.data);
  assert.deepEqual(logits(model, 1), logits(model, 1), "same seed, same forward");
  assert.notDeepEqual(logits(model, 1), logits(model, 2), "dropout changes the forward");
  assert.notDeepEqual(logits(model, 1), logits(plain, 1), "training mode applies dropout");
  assert.deepEqual(logits(model.eval(), 1), logits(plain.eval(), 1), "eval(): the same weights give the dropout-free forward");
  // Without a seed the model counts its forwards: two training forwards differ.
  model.train(true);
  assert.notDeepEqual(logits(model), logits(model));
});

test("gradient check of a tiny model with dropout on (a fixed seed)", () => {
  const model = new PanguSigma(parseModelConfig(tiny(0.2)), "float64");
  const res = gradcheck(() => model.loss({ ...input, dropoutSeed: 3 }, targets).loss, model.parameters(), { maxPerInput: 6, rtol: 1e-4, atol: 1e-6 });
  assert.ok(res.ok, `worst ${res.worst.toExponential(2)} at ${res.where}`);
});

test("recomputed blocks redraw the same dropout masks: gradients equal those of a stored forward", () => {
  const model = new PanguSigma(parseModelConfig(tiny(0.3)));
  const grads = (recompute: boolean) => {
    model.recompute = recompute;
    zeroGrad(model.parameters());
    backward(model.loss({ ...input, dropoutSeed: 7 }, targets).loss);
    return model.parameters().map((p) => Array.from(p.grad!.data));
  };
  assert.deepEqual(grads(true), grads(false));
});
