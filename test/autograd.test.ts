// Tape semantics: accumulation, noGrad, tape clearing, errors.
import { test } from "node:test";
import assert from "node:assert/strict";
import { backward, noGrad, tapeLength, zeroGrad } from "../src/autograd/tape.js";
import * as ops from "../src/ops/index.js";
import { Tensor } from "../src/tensor/tensor.js";

const f64 = (v: number[], shape?: number[]) => Tensor.from(v, shape, "float64");

test("gradients accumulate across backward calls until zeroGrad", () => {
  const x = f64([1, 2, 3]);
  x.requiresGrad = true;
  for (let i = 0; i < 2; i++) backward(ops.sum(ops.mul(x, x)));
  assert.deepEqual(x.grad!.toArray(), [4, 8, 12]); // 2 · 2x
  zeroGrad([x]);
  assert.deepEqual(x.grad!.toArray(), [0, 0, 0]);
});

test("noGrad records nothing and its outputs need no gradient", () => {
  const x = f64([1, 2]);
  x.requiresGrad = true;
  const y = noGrad(() => ops.scale(x, 2));
  assert.equal(y.requiresGrad, false);
  assert.equal(tapeLength(), 0);
  assert.throws(() => backward(ops.sum(y)), /does not require a gradient/);
});

test("backward clears the tape and frees intermediate gradients", () => {
  const x = f64([1, 2]);
  x.requiresGrad = true;
  const h = ops.scale(x, 3);
  const loss = ops.sum(h);
  assert.ok(tapeLength() >= 2);
  backward(loss);
  assert.equal(tapeLength(), 0);
  assert.equal(h.grad, null);
  assert.deepEqual(x.grad!.toArray(), [3, 3]);
});

test("a tensor used by two ops receives both contributions", () => {
  const x = f64([2]);
  x.requiresGrad = true;
  backward(ops.add(ops.scale(x, 3), ops.mul(x, x))); // 3x + x²
  assert.deepEqual(x.grad!.toArray(), [3 + 4]);
});

test("backward of a non-scalar needs an explicit gradient", () => {
  const x = f64([1, 2]);
  x.requiresGrad = true;
  assert.throws(() => backward(ops.scale(x, 1)), /explicit gradient/);
});

test("shape errors name the argument", () => {
  assert.throws(() => ops.add(f64([1, 2]), f64([1, 2, 3])), /add: b has shape \[3\], expected \[2\]/);
  assert.throws(() => ops.matmul(f64([1, 2], [1, 2]), f64([1, 2, 3], [3, 1])), /inner sizes differ/);
  assert.throws(() => ops.attention(f64([0, 0, 0], [1, 1, 3]), f64([0, 0, 0], [1, 1, 3]), f64([0, 0, 0], [1, 1, 3]), { heads: 2 }), /heads = 2 must divide/);
  assert.throws(() => ops.add(f64([1]), Tensor.from([1])), /mixed dtypes/);
});
