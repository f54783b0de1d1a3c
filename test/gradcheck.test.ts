// Every differentiable op against float64 central differences (reference backend).
import { test } from "node:test";
import assert from "node:assert/strict";
import { gradcheck } from "../src/autograd/gradcheck.js";
import * as ops from "../src/ops/index.js";
import { Tensor } from "../src/tensor/tensor.js";
import { Rng } from "../src/util/rng.js";

const rng = new Rng(7);
const r = (...shape: number[]) => Tensor.randn(shape, rng, 1, "float64");
const ints = (n: number, hi: number) => Int32Array.from({ length: n }, () => rng.int(hi));

function check(name: string, f: (xs: Tensor[]) => Tensor, inputs: Tensor[], opts = {}) {
  test(`gradcheck ${name}`, () => {
    const res = gradcheck(f, inputs, opts);
    assert.ok(res.checked > 0, "no element was checked");
    assert.ok(res.ok, `${name}: worst error ratio ${res.worst.toExponential(2)} at ${res.where}`);
  });
}

check("reshape", ([x]) => ops.reshape(x!, [3, -1]), [r(2, 3, 2)]);
check("add", ([a, b]) => ops.add(a!, b!), [r(3, 4), r(3, 4)]);
check("add (same tensor twice)", ([a]) => ops.add(a!, a!), [r(5)]);
check("dropout (a fixed mask: the seed)", ([x]) => ops.dropout(x!, 0.3, 7), [r(4, 9)]);
check("mul", ([a, b]) => ops.mul(a!, b!), [r(3, 5), r(3, 5)]);
check("scale", ([a]) => ops.scale(a!, -1.7), [r(7)]);
check("addBias", ([x, b]) => ops.addBias(x!, b!), [r(4, 3), r(3)]);
check("sum", ([x]) => ops.sum(x!), [r(3, 3)]);
check("mean", ([x]) => ops.mean(x!), [r(17)]);

for (const transA of [false, true]) {
  for (const transB of [false, true]) {
    const [M, N, K] = [3, 5, 4];
    check(`matmul transA=${transA} transB=${transB}`, ([a, b]) => ops.matmul(a!, b!, transA, transB), [
      transA ? r(K, M) : r(M, K),
      transB ? r(N, K) : r(K, N),
    ]);
    check(`bmm transA=${transA} transB=${transB}`, ([a, b]) => ops.bmm(a!, b!, transA, transB), [
      transA ? r(2, K, M) : r(2, M, K),
      transB ? r(2, N, K) : r(2, K, N),
    ]);
  }
}
check("linear with bias", ([x, w, b]) => ops.linear(x!, w!, b!), [r(2, 3, 4), r(5, 4), r(5)]);
check("linear without bias", ([x, w]) => ops.linear(x!, w!), [r(3, 4), r(2, 4)]);

// Experts 0..3 with 2, 0, 5 and 1 rows: an empty expert included.
const offsets = Int32Array.from([0, 2, 2, 7, 8]);
check("groupedMatmul transW", ([x, w]) => ops.groupedMatmul(x!, w!, offsets, true), [r(8, 3), r(4, 5, 3)]);
check("groupedMatmul no transW", ([x, w]) => ops.groupedMatmul(x!, w!, offsets, false), [r(8, 3), r(4, 3, 5)]);

check("gelu", ([x]) => ops.gelu(x!), [r(20)]);
check("fastGelu", ([x]) => ops.fastGelu(x!), [r(20)]);
check("softmax", ([x]) => ops.softmax(x!), [r(3, 7)]);
check("logsumexp", ([x]) => ops.logsumexp(x!), [r(4, 5)]);
check("layerNorm", ([x, g, b]) => ops.layerNorm(x!, g!, b!), [r(4, 6), r(6), r(6)]);
{
  const targets = Int32Array.from([2, -1, 0, 4, 4]);
  check("crossEntropy with ignored row", ([x]) => ops.crossEntropy(x!, targets, -1), [r(5, 6)]);
}
{
  // Target distributions: a softmax of other numbers per row (rows sum to 1), one of them nearly a point mass.
  const raw = Float64Array.from({ length: 5 * 6 }, (_, i) => Math.sin(3.7 * i) * (i < 6 ? 12 : 2));
  const p = new Float64Array(raw.length);
  for (let row = 0; row < 5; row++) {
    const xs = raw.subarray(row * 6, row * 6 + 6);
    const m = Math.max(...xs);
    const e = Array.from(xs, (x) => Math.exp(x - m));
    const t = e.reduce((a, b) => a + b, 0);
    e.forEach((v, j) => (p[row * 6 + j] = v / t));
  }
  check("softCrossEntropy (a teacher's distributions)", ([x]) => ops.softCrossEntropy(x!, p), [r(5, 6)]);
}
{
  const ids = Int32Array.from([3, 1, 3, 0, 3]);
  check("embedding (repeated ids)", ([t]) => ops.embedding(t!, ids, [5]), [r(4, 3)]);
}
check("attention training (B=2, T=5, H=2, D=3)", ([q, k, v]) => ops.attention(q!, k!, v!, { heads: 2 }), [r(2, 5, 6), r(2, 5, 6), r(2, 5, 6)]);
check("attention decode (Tq=2, Tk=5, kvCap=7)", ([q, k, v]) => ops.attention(q!, k!, v!, { heads: 3, keys: 5 }), [r(1, 2, 6), r(1, 7, 6), r(1, 7, 6)]);
check("attention D=1", ([q, k, v]) => ops.attention(q!, k!, v!, { heads: 4 }), [r(1, 3, 4), r(1, 3, 4), r(1, 3, 4)]);
{
  const idx = Int32Array.from([2, 0, 2, 1, 2]);
  check("gatherRows (repeated rows)", ([x]) => ops.gatherRows(x!, idx), [r(3, 4)]);
  check("combine (repeated rows)", ([x, w]) => ops.combine(x!, idx, w!, 4), [r(5, 3), r(5)]);
}

// A whole tiny top-2 MoE layer, route → permute → grouped matmul → unpermute,
// with routing weights that depend on the input through softmax.
test("gradcheck tiny MoE layer end to end", () => {
  const [T, C, F, E, K] = [6, 4, 5, 3, 2];
  const expertIds = Int32Array.from([0, 2, 1, 2, 0, 1, 2, 1, 0, 0, 1, 2]); // T*K assignments, token t owns 2t, 2t+1
  const { order, offsets: off } = ops.permuteByExpert(expertIds, E);
  const tokenOf = order.map((a) => Math.floor(a / K));
  const pick = Int32Array.from(order);
  const res = gradcheck(
    ([x, wr, w1, w2]) => {
      const probs = ops.reshape(ops.softmax(ops.linear(x!, wr!)), [T * E]); // router probabilities
      const flatIdx = Int32Array.from(pick, (a) => Math.floor(a / K) * E + expertIds[a]!);
      const w = ops.reshape(ops.gatherRows(ops.reshape(probs, [T * E, 1]), flatIdx), [T * K]);
      const xs = ops.gatherRows(x!, tokenOf);
      const h = ops.fastGelu(ops.groupedMatmul(xs, w1!, off, true));
      const ys = ops.groupedMatmul(h, w2!, off, true);
      return ops.combine(ys, tokenOf, w, T);
    },
    [r(T, C), r(E, C), r(E, F, C), r(E, C, F)],
  );
  assert.ok(res.ok, `worst ${res.worst} at ${res.where}`);
});

// The block options' ops (src/ops/block.ts, docs/design.md §1.7).
check("rmsNorm", ([x, g]) => ops.rmsNorm(x!, g!, 1e-5), [r(4, 6), r(6)]);
check("rmsNorm (one column)", ([x, g]) => ops.rmsNorm(x!, g!, 0.1), [r(3, 1), r(1)]);
check("swiglu", ([g, u]) => ops.swiglu(g!, u!), [r(4, 5), r(4, 5)]);
check("sigmoid", ([x]) => ops.sigmoid(x!), [r(13)]);
check("rope (3 heads of 4, positions out of order)", ([x]) => ops.rope(x!, Int32Array.from([0, 5, 2, 7, 1, 3]), 3, 100), [r(2, 3, 12)]);
check("rope (one pair per head)", ([x]) => ops.rope(x!, Int32Array.from([9, 4, 1]), 2, 10000), [r(3, 4)]);
check("repeatHeads (2 key heads for 6 query heads)", ([x]) => ops.repeatHeads(x!, 2, 6), [r(2, 3, 4)]);
check("repeatHeads (first 2 of 5 positions)", ([x]) => ops.repeatHeads(x!, 1, 3, 2), [r(1, 5, 3)]);
check("attention grouped-query (6 heads, 2 kv heads)", ([q, k, v]) => ops.attention(q!, k!, v!, { heads: 6 }), [r(2, 4, 12), r(2, 4, 4), r(2, 4, 4)]);
check("attention multi-query decode (Tq=2, Tk=4, kvCap=6)", ([q, k, v]) => ops.attention(q!, k!, v!, { heads: 3, keys: 4 }), [r(1, 2, 9), r(1, 6, 3), r(1, 6, 3)]);
