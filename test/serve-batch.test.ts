// The batched decode core (src/serve/batch.ts, src/serve/kv-pool.ts): a
// sequence's greedy continuation is the same decoded alone, beside others of
// other lengths and domains that join and leave at other steps, prefilled in
// chunks, and through the model's own KV-cache forward (generateIds) — for a
// dense model and each router, and with stored weights (decode-only steps
// then run through the decode step's buffers); and the pool is empty again afterwards.
import { test } from "node:test";
import assert from "node:assert/strict";
import { headDim, kvHeads, parseModelConfig, type ModelConfigInput } from "../src/models/config.js";
import { decodeStepRuns, useDecodeStep } from "../src/models/decode-step.js";
import { quantizeModel } from "../src/models/quantize.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { KVPool } from "../src/serve/kv-pool.js";
import { generateIds } from "../src/serve/generate.js";
import { decodeAll, kvWidth, type Job } from "./serve-fixture.js";
import { Rng } from "../src/util/rng.js";

type RouterInput = NonNullable<ModelConfigInput["experts"]>["router"];
const ROUTERS: Record<string, RouterInput | null> = {
  dense: null,
  rre: { kind: "rre", groups: 2, seed: 5 },
  moge: { kind: "moge", groups: 2, perGroup: 1, sharedExperts: 1 },
  topk: { kind: "topk", k: 2 },
};

function tinyModel(router: RouterInput | null, extra: Partial<ModelConfigInput> = {}): PanguSigma {
  const config = parseModelConfig({
    vocabSize: 97, width: 32, heads: 4, denseLayers: 1, sparseLayers: router ? 2 : 1, seqLen: 40, ffnWidth: 48,
    embeddingSlots: 2, domains: ["zh", "en", "code"].map((name, i) => ({ name, slot: name === "code" ? 1 : 0, group: i % 2 })),
    experts: { count: 4, router: router ?? { kind: "rre", groups: 2 } }, initStd: 0.15, seed: 11, ...extra,
    ...(router ? {} : { sparseLayers: 0, experts: undefined }),
  });
  const m = new PanguSigma(config);
  m.eval();
  return m;
}

function jobs(model: PanguSigma): Job[] {
  const rng = new Rng(3);
  const ids = (n: number) => Array.from({ length: n }, () => 3 + Math.floor(rng.uniform() * (model.config.vocabSize - 3)));
  // Prompt lengths 1…25, three domains (two embedding slots), staggered joins, each to a different length.
  return [
    { prompt: ids(5), domain: 0, joins: 0, steps: 12 },
    { prompt: ids(25), domain: 2, joins: 0, steps: 9 },
    { prompt: ids(1), domain: 1, joins: 3, steps: 15 },
    { prompt: ids(13), domain: 2, joins: 4, steps: 6 },
    { prompt: ids(9), domain: 1, joins: 9, steps: 20 },
  ];
}

for (const [name, router] of Object.entries(ROUTERS)) {
  test(`${name}: greedy text is the same alone, in a batch with chunked prefill, and through the model's KV cache`, () => {
    const model = tinyModel(router);
    const js = jobs(model);
    const together = decodeAll(model, js, 8);
    assert.ok(together.scattered, "some sequence's blocks were not consecutive (the copying path ran)");
    js.forEach((job, j) => {
      const alone = decodeAll(model, [{ ...job, joins: 0 }], 64).out[0]!;
      assert.deepEqual(together.out[j], alone, `sequence ${j} in the batch`);
      const reference = [...generateIds(model, job.prompt, job.domain, { temperature: 0, topK: 0, topP: 1, seed: 1, maxTokens: job.steps, stopId: null })];
      assert.deepEqual(alone, reference, `sequence ${j} against generateIds`);
    });
    // The continuations differ from one another (the check is not of a constant).
    assert.ok(new Set(together.out.map((o) => o.join(","))).size > 2, "the continuations differ");
  });
}

test("stored weights (q8, bf16; PanGu and Llama-style blocks): decode-only steps take the decode step's buffers, and the text is the same alone, in a batch and through generateIds", () => {
  const variants: [string, RouterInput | null, Partial<ModelConfigInput>][] = [
    ["topk", ROUTERS.topk!, {}],
    ["moge", ROUTERS.moge!, {}],
    ["llama", ROUTERS.topk!, { norm: "rmsnorm", position: "rope", kvHeads: 2, ffn: "swiglu", ffnBias: false, attentionBias: "none", tiedEmbeddings: false, queryLayer: false }],
  ];
  for (const [name, router, extra] of variants) {
    for (const format of ["q8", "bf16"] as const) {
      const model = tinyModel(router, extra);
      quantizeModel(model, format);
      const js = jobs(model);
      const before = decodeStepRuns();
      const together = decodeAll(model, js, 8, 4, kvWidth(model));
      assert.ok(decodeStepRuns() > before + 20, `${name} ${format}: the server's decode-only steps ran through the decode step`);
      js.forEach((job, j) => {
        const alone = decodeAll(model, [{ ...job, joins: 0 }], 64, 4, kvWidth(model)).out[0]!;
        assert.deepEqual(together.out[j], alone, `${name} ${format}: sequence ${j} in the batch`);
        const reference = [...generateIds(model, job.prompt, job.domain, { temperature: 0, topK: 0, topP: 1, seed: 1, maxTokens: job.steps, stopId: null })];
        assert.deepEqual(alone, reference, `${name} ${format}: sequence ${j} against generateIds`);
      });
      // And the same text with the decode step off (the blocks' general forward on every step).
      const was = useDecodeStep(false);
      try {
        assert.deepEqual(decodeAll(model, js, 8, 4, kvWidth(model)).out, together.out, `${name} ${format}: the general forward's text`);
      } finally {
        useDecodeStep(was);
      }
    }
  }
});

test("a model without the query layer decodes the same alone and in a batch", () => {
  const model = tinyModel(ROUTERS.topk!, { queryLayer: false });
  const js = jobs(model);
  const together = decodeAll(model, js, 5, 3).out;
  js.forEach((job, j) => {
    const reference = [...generateIds(model, job.prompt, job.domain, { temperature: 0, topK: 0, topP: 1, seed: 1, maxTokens: job.steps, stopId: null })];
    assert.deepEqual(together[j], reference, `sequence ${j}`);
  });
});

test("the pool reserves whole sequences: a full pool refuses, a closed sequence frees its blocks", () => {
  const pool = new KVPool(2, 8, 4, 5);
  const a = pool.open(9)!; // 3 blocks
  assert.equal(pool.available, 2);
  assert.equal(pool.open(9), null, "3 blocks are not free");
  const b = pool.open(8)!;
  assert.equal(pool.available, 0);
  pool.grow(a, 5);
  assert.deepEqual(a.table, [0, 1]);
  assert.equal(pool.used, 2);
  assert.throws(() => pool.grow(b, 9), /reserved 2/);
  pool.close(a);
  assert.equal(pool.available, 3);
  assert.equal(pool.used, 0);
  pool.close(b);
  assert.equal(pool.available, 5);
});
