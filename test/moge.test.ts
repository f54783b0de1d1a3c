// MoGE's combine weights, pinned from outside the router: S = softmax(W·h)
// over all E experts, the top-K' of S inside each group, and weights
// S[e]·scale[e] with no renormalisation (a token's K weights sum to less than
// 1). Tested through the MoE layer, so the router's own file can move.
import { test } from "node:test";
import assert from "node:assert/strict";
import { noGrad } from "../src/autograd/tape.js";
import { MoeLayer } from "../src/moe/layer.js";
import { FeedForward } from "../src/nn/layers.js";
import { Tensor } from "../src/tensor/tensor.js";
import { Rng } from "../src/util/rng.js";

test("MoGE: each token's weights are its softmax probabilities over all E experts (top-K' per group) times the expert scale, not renormalised; the output combines the experts with them", () => {
  const rng = new Rng(21);
  const [R, C, F, E, G, Kp] = [12, 6, 5, 8, 2, 2];
  const per = E / G;
  const init = { rng, dtype: "float64" as const, std: 0.5 };
  const layer = new MoeLayer(C, F, E, { kind: "moge", groups: G, perGroup: Kp, auxLossCoef: 0.01, sharedExperts: 0 }, { vocabSize: 10, domainGroup: Int32Array.of(0), layer: 0, outStd: 0.5 }, init);
  const params = layer.namedParameters();
  const W = params.get("router.weight")!.tensor.data; // [E, C]
  const scale = params.get("router.scale")!.tensor.data; // [E]
  assert.equal(W.length, E * C);
  assert.equal(scale.length, E);
  layer.b1!.data.set(Tensor.randn([E, F], rng, 0.1, "float64").data);
  layer.b2!.data.set(Tensor.randn([E, C], rng, 0.1, "float64").data);
  const x = Tensor.randn([R, C], rng, 1, "float64");
  const ctx = { tokenIds: new Int32Array(R), domainIds: new Int32Array(R), vocabSize: 10, domainGroup: Int32Array.of(0) };

  // S by hand, and each group's K' largest.
  const S = Array.from({ length: R }, (_, r) => {
    const logits = Array.from({ length: E }, (_, e) => {
      let s = 0;
      for (let c = 0; c < C; c++) s += W[e * C + c]! * x.data[r * C + c]!;
      return s;
    });
    const mx = Math.max(...logits);
    const z = logits.reduce((a, l) => a + Math.exp(l - mx), 0);
    return logits.map((l) => Math.exp(l - mx) / z);
  });
  const chosen = S.map((s) => Array.from({ length: G }, (_, g) => [...Array(per).keys()].map((i) => g * per + i).sort((a, b) => s[b]! - s[a]!).slice(0, Kp)));

  // Each expert as a plain FFN, to rebuild the layer's output from the weights.
  const expertOut = Array.from({ length: E }, (_, e) => {
    const ffn = new FeedForward(C, F, { rng: new Rng(0), dtype: "float64" });
    ffn.fc1.weight.data.set(layer.w1.data.subarray(e * F * C, (e + 1) * F * C));
    ffn.fc1.bias!.data.set(layer.b1!.data.subarray(e * F, (e + 1) * F));
    ffn.fc2.weight.data.set(layer.w2.data.subarray(e * C * F, (e + 1) * C * F));
    ffn.fc2.bias!.data.set(layer.b2!.data.subarray(e * C, (e + 1) * C));
    return noGrad(() => ffn.forward(x)).data;
  });

  // Scale 1 (its init) first, then a scale of its own per expert.
  for (const s of [new Array<number>(E).fill(1), Array.from({ length: E }, (_, e) => 0.5 + 0.25 * e)]) {
    scale.set(s);
    const { y, routing } = noGrad(() => layer.forward(x, ctx));
    assert.equal(routing.k, G * Kp);
    const w = routing.weights.data;
    let belowOne = 0;
    for (let r = 0; r < R; r++) {
      const ids = Array.from(routing.expertIds.subarray(r * routing.k, (r + 1) * routing.k));
      assert.deepEqual([...ids].sort((a, b) => a - b), chosen[r]!.flat().sort((a, b) => a - b), `token ${r}: not the top-${Kp} of each group`);
      let sum = 0, probs = 0;
      ids.forEach((e, j) => {
        const want = S[r]![e]! * s[e]!;
        assert.ok(Math.abs(w[r * routing.k + j]! - want) < 1e-12, `token ${r}, expert ${e}: weight ${w[r * routing.k + j]}, but S·scale = ${want}`);
        sum += w[r * routing.k + j]!;
        probs += S[r]![e]!;
      });
      // The unchosen experts keep their share of the softmax: the weights do not add up to 1.
      assert.ok(probs < 1 - 1e-3, `token ${r}: the chosen experts hold ${probs} of the probability`);
      if (s.every((v) => v === 1)) {
        assert.ok(Math.abs(sum - probs) < 1e-12, `token ${r}: the weights sum to ${sum}, the chosen probabilities to ${probs}`);
        if (sum < 1 - 1e-3) belowOne++;
      }
      for (let c = 0; c < C; c++) {
        const want = ids.reduce((a, e) => a + S[r]![e]! * s[e]! * expertOut[e]![r * C + c]!, 0);
        assert.ok(Math.abs(y.data[r * C + c]! - want) < 1e-12, `token ${r}, channel ${c}: output ${y.data[r * C + c]}, but Σ S·scale·expert = ${want}`);
      }
    }
    if (s.every((v) => v === 1)) assert.equal(belowOne, R, "with scale 1 every token's weights sum to less than 1");
  }
});
