// Inheritance learning: a sparse model upcycled from a dense one computes the
// dense model's logits (RRE, renormalised top-k), also after the vocabulary
// grows; new rows follow the documented rule; bad targets are refused.
import { test } from "node:test";
import assert from "node:assert/strict";
import { noGrad } from "../src/autograd/tape.js";
import { parseModelConfig, type ModelConfig, type ModelConfigInput, type RouterConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { upcycle } from "../src/models/upcycle.js";
import { newIdsOfOld, vocabMapping } from "../src/models/vocab-map.js";
import { trainBpe, WordCounter } from "../src/tokenizer/trainer.js";
import { Rng } from "../src/util/rng.js";
import { maxDiff } from "./compare.js";

const DOMAINS = [{ name: "en", slot: 0, group: 0 }, { name: "code", slot: 1, group: 1 }];
const base = (V: number): ModelConfigInput => ({ vocabSize: V, width: 16, heads: 2, denseLayers: 3, sparseLayers: 0, seqLen: 8, ffnWidth: 24, domains: DOMAINS, embeddingSlots: 2, seed: 7 });
const sparseOf = (V: number, router: RouterConfig): ModelConfig =>
  parseModelConfig({ ...base(V), denseLayers: 1, sparseLayers: 2, experts: { count: 4, router }, seed: 99 });

/** A dense model whose every parameter (biases and norms too) is random, so that a missed copy shows. */
function randomDense(V: number, extra: Partial<ModelConfigInput> = {}): PanguSigma {
  const m = new PanguSigma(parseModelConfig({ ...base(V), ...extra }));
  const rng = new Rng(3);
  for (const p of m.parameters()) for (let i = 0; i < p.size; i++) p.data[i] = rng.normal() * 0.3;
  return m;
}

function logits(m: PanguSigma, tokens: number[], domain: number): Float32Array {
  return noGrad(() => m.eval().forward({ tokens: Int32Array.from(tokens), domains: Int32Array.of(domain, domain), B: 2, T: tokens.length / 2 }).logits.data) as Float32Array;
}

for (const [name, router] of Object.entries({
  rre: { kind: "rre", groups: 2, seed: 4 },
  "top-k (renormalised)": { kind: "topk", k: 2, renormalize: true, auxLossCoef: 0.01, zLossCoef: 0, capacityFactor: null },
} as Record<string, RouterConfig>)) {
  test(`upcycled ${name} model computes the dense model's logits, every domain`, () => {
    const V = 50;
    const dense = randomDense(V);
    const sparse = upcycle(dense, sparseOf(V, router));
    const rng = new Rng(11);
    const tokens = Array.from({ length: 16 }, () => rng.int(V));
    for (const d of [0, 1]) {
      const a = logits(dense, tokens, d);
      const b = logits(sparse, tokens, d);
      assert.ok(maxDiff(a, b) <= 1e-5, `domain ${d}: max |Δ| = ${maxDiff(a, b)}`);
    }
  });
}

test("MoGE upcycling copies the experts but is not function-preserving (weights sum below 1)", () => {
  const V = 50;
  const dense = randomDense(V);
  const sparse = upcycle(dense, sparseOf(V, { kind: "moge", groups: 2, perGroup: 1, auxLossCoef: 0.01, sharedExperts: 0 }));
  const fc1 = dense.blocks[2]!.ffn!.fc1.weight.data;
  const w1 = sparse.blocks[2]!.moe!.w1.data;
  for (let e = 0; e < 4; e++) assert.deepEqual(w1.subarray(e * fc1.length, (e + 1) * fc1.length), fc1);
  const tokens = Array.from({ length: 16 }, (_, i) => i);
  assert.ok(maxDiff(logits(dense, tokens, 0), logits(sparse, tokens, 0)) > 1e-4);
});

test("noise makes the expert copies differ; the rest is still copied", () => {
  const V = 50;
  const dense = randomDense(V);
  const sparse = upcycle(dense, sparseOf(V, { kind: "rre", groups: 2, seed: 4 }), { noise: 0.01 });
  const fc1 = dense.blocks[1]!.ffn!.fc1.weight.data;
  const w1 = sparse.blocks[1]!.moe!.w1.data;
  const n = fc1.length;
  const d01 = maxDiff(w1.subarray(0, n), w1.subarray(n, 2 * n));
  assert.ok(d01 > 0 && d01 < 0.05, `experts 0 and 1 differ by ${d01}`);
  assert.deepEqual(sparse.blocks[1]!.attn.q.weight.data, dense.blocks[1]!.attn.q.weight.data);
});

test("vocabulary extension: old tokens keep their rows (matched by string), logits agree on them, new rows are the mean of their pieces", () => {
  const wc = new WordCounter();
  for (const t of ["the quick brown fox jumps over the lazy dog", "function add(a, b) { return a + b; }", "for (let i = 0; i < n; i++) sum += a[i];"]) wc.add(t.repeat(4));
  const oldTok = trainBpe(wc, { vocabSize: 275, domains: ["en"], langs: [] });
  const wc2 = new WordCounter();
  for (const t of ["const total = items.reduce((s, x) => s + x, 0);", "the quick brown fox jumps over the lazy dog"]) wc2.add(t.repeat(5));
  wc2.add("function add(a, b) { return a + b; }".repeat(4));
  const newTok = trainBpe(wc2, { vocabSize: 320, domains: ["en", "code"], langs: ["en"] });
  const map = vocabMapping(oldTok, newTok);
  const Vo = oldTok.vocabSize;
  const Vn = newTok.vocabSize;
  assert.ok(Vn > Vo);
  const toNew = newIdsOfOld(map);
  // The byte tokens moved (one more special before them) but kept their rows.
  const byteA = oldTok.vocab.indexOf("a");
  assert.notEqual(toNew[byteA], byteA);
  assert.equal(newTok.vocab[toNew[byteA]!], "a");

  const dense = randomDense(Vo);
  const sparse = upcycle(dense, sparseOf(Vn, { kind: "rre", groups: 2, seed: 4 }), { vocab: map });
  // Tokens of both vocabularies (an old merge the new tokenizer did not learn has no new id).
  const shared = Array.from({ length: Vo }, (_, i) => i).filter((i) => toNew[i]! >= 0);
  assert.ok(shared.length > Vo - 20, `${shared.length} of ${Vo} old tokens kept`);
  const rng = new Rng(5);
  const oldIds = Array.from({ length: 16 }, () => shared[rng.int(shared.length)]!);
  const newIds = oldIds.map((i) => toNew[i]!);
  for (const d of [0, 1]) {
    const a = logits(dense, oldIds, d);
    const b = logits(sparse, newIds, d);
    let m = 0;
    for (let r = 0; r < 16; r++) for (let o = 0; o < Vo; o++) if (toNew[o]! >= 0) m = Math.max(m, Math.abs(a[r * Vo + o]! - b[r * Vn + toNew[o]!]!));
    assert.ok(m <= 1e-5, `domain ${d}: max |Δ| = ${m}`);
  }
  // A new merged token starts as the mean of its old pieces, in each slot.
  const C = 16;
  const [newId, pieces] = [...map.pieces].find(([id, p]) => id >= newTok.specials.length && p.length > 1)!;
  for (const s of [0, 1]) {
    for (let c = 0; c < C; c++) {
      const mean = pieces.reduce((acc, o) => acc + dense.tokenEmbedding.data[(s * Vo + o) * C + c]!, 0) / pieces.length;
      assert.ok(Math.abs(sparse.tokenEmbedding.data[(s * Vn + newId) * C + c]! - mean) < 1e-6);
    }
  }
  // A new special (<|dom:code|>) has no pieces: it starts as the mean of all old rows.
  assert.deepEqual(map.pieces.get(newTok.domainTokenId("code")), []);
});

test("upcycling refuses a target that does not fit, naming the field", () => {
  const dense = randomDense(50);
  const ok = sparseOf(50, { kind: "rre", groups: 2, seed: 4 });
  assert.throws(() => upcycle(dense, { ...ok, width: 32, heads: 2 }), /width is 32 but the dense model's is 16/);
  assert.throws(() => upcycle(dense, { ...ok, sparseLayers: 3 }), /denseLayers \+ sparseLayers is 4 but the dense model has 3 layers/);
  assert.throws(() => upcycle(dense, { ...ok, vocabSize: 60 }), /vocabSize is 60 .* pass the new tokenizer/s);
  assert.throws(() => upcycle(dense, { ...ok, experts: { ...ok.experts!, width: 12 } }), /experts.width is 12/);
  assert.throws(() => upcycle(upcycle(dense, ok), ok), /the source model is mixed, not dense/);
});

test("the upcycled model's RRE tables are saved with it and survive a save/load", async () => {
  const { decodeModel, encodeModel } = await import("../src/models/io.js");
  const dense = randomDense(50);
  const sparse = upcycle(dense, sparseOf(50, { kind: "rre", groups: 2, seed: 4 }));
  const back = decodeModel(encodeModel(sparse), "upcycled.safetensors");
  for (const [name, table] of sparse.namedBuffers()) assert.deepEqual(back.namedBuffers().get(name), table);
  const tokens = Array.from({ length: 16 }, (_, i) => (i * 7) % 50);
  assert.deepEqual(logits(back, tokens, 1), logits(sparse, tokens, 1));
});
