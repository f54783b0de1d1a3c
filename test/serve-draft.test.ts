// N-gram drafting in the server's scheduler (src/serve/scheduler.ts,
// draftTokens): greedy text token for token that of the scheduler without
// drafts, for several sequences decoded together (one of them past its
// prompt's repeats, one with a short max_tokens), the KV pool left empty,
// and the acceptance in the metrics.
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseModelConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { ServerMetrics } from "../src/serve/metrics.js";
import { encodePrompt } from "../src/serve/prompt.js";
import { Scheduler, type SequenceRequest } from "../src/serve/scheduler.js";
import { trainBpe, WordCounter } from "../src/tokenizer/trainer.js";
import { toHfJson } from "../src/tokenizer/hfjson.js";
import { Model } from "../src/api/model.js";
import { serve } from "../src/api/serve.js";

const wc = new WordCounter();
wc.add("The quick brown fox jumps over the lazy dog. Hello there, how are you today? export const x = 1;\n".repeat(8));
const tok = trainBpe(wc, { vocabSize: 320, domains: ["en", "code"], langs: [] });
const config = parseModelConfig({
  vocabSize: tok.vocabSize, width: 32, heads: 2, denseLayers: 1, sparseLayers: 1, seqLen: 160, ffnWidth: 64, embeddingSlots: 2,
  domains: [{ name: "en", group: 0 }, { name: "code", slot: 1, group: 1 }], experts: { count: 4, router: { kind: "topk", k: 2 } }, initStd: 0.3, seed: 5,
});
const net = new PanguSigma(config).eval();

const PROMPTS: [string, number, number][] = [
  // text, domain, max tokens
  ["The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. The quick", 0, 40],
  ["export const x = 1;\nexport const x = 1;\nexport", 1, 30],
  ["Hello there", 0, 3],
  ["how are you today? how are you today? how", 0, 50],
];

async function runAll(draftTokens: number, sampling: { temperature: number; topK: number; topP: number }, draftModel?: PanguSigma): Promise<{ ids: number[][]; texts: string[]; metrics: ServerMetrics; left: number }> {
  const metrics = new ServerMetrics();
  const s = new Scheduler(net, tok, { maxBatch: 4, draftTokens, metrics, ...(draftModel ? { draftModel } : {}) });
  try {
    const reqs: SequenceRequest[] = PROMPTS.map(([text, domain, maxTokens], i) => ({ prompt: encodePrompt(tok, config.domains[domain]!.name, text), domain, maxTokens, seed: 7 + i, stopAtEndOfText: false, ...sampling }));
    const streams = s.submit(reqs);
    const out = await Promise.all(
      streams.map(async (st) => {
        const ids: number[] = [];
        let text = "";
        for await (const e of st) {
          if (e.kind === "token") ids.push(e.id);
          text += e.text;
        }
        return { ids, text };
      }),
    );
    return { ids: out.map((o) => o.ids), texts: out.map((o) => o.text), metrics, left: s.stats.kvSequences + (s.draftPool?.sequences ?? 0) };
  } finally {
    await s.close();
  }
}

test("serve with n-gram drafts: at temperature 0 every sequence's tokens are those without drafts; acceptance in the metrics", { timeout: 60_000 }, async () => {
  const greedy = { temperature: 0, topK: 0, topP: 1 };
  const plain = await runAll(0, greedy);
  for (const k of [1, 4]) {
    const drafted = await runAll(k, greedy);
    assert.deepEqual(drafted.ids, plain.ids, `k = ${k}: the same tokens`);
    assert.deepEqual(drafted.texts, plain.texts);
    drafted.ids.forEach((ids, i) => assert.equal(ids.length, PROMPTS[i]![2], "max_tokens exactly"));
    assert.equal(drafted.left, 0, "every sequence's KV blocks went back");
    const m = drafted.metrics;
    assert.ok(m.draftProposed > 0 && m.draftAccepted > 0 && m.draftAccepted <= m.draftProposed, `proposed ${m.draftProposed}, accepted ${m.draftAccepted}`);
    assert.ok(m.steps < plain.metrics.steps, `fewer steps with drafts (${m.steps} vs ${plain.metrics.steps})`);
    assert.match(m.render({}), /sigma_draft_tokens_accepted_total \d+/);
  }
  assert.equal(plain.metrics.draftProposed, 0);
});

test("serve with n-gram drafts at temperature 1: sequences finish with their max_tokens and the pool empties", { timeout: 60_000 }, async () => {
  const r = await runAll(3, { temperature: 1, topK: 0, topP: 1 });
  r.ids.forEach((ids, i) => assert.equal(ids.length, PROMPTS[i]![2]));
  assert.equal(r.left, 0);
});

test("serve({ draftTokens }): the HTTP answer is the library's greedy text, and /metrics counts the drafts", { timeout: 60_000 }, async () => {
  const model = new Model(net, tok, null, 0, null, null, toHfJson(tok));
  const server = await serve(model, { port: 0, draftTokens: 4, apiKey: null, name: "drafty" });
  try {
    const prompt = PROMPTS[0]![0];
    const want = await model.complete(prompt, { temperature: 0, topK: 0, topP: 1, maxTokens: 24, domain: "en" });
    const r = await fetch(`${server.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: server.models[0], prompt, max_tokens: 24, temperature: 0 }) });
    const body = (await r.json()) as { choices: { text: string }[] };
    assert.equal(body.choices[0]!.text, want);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const proposed = Number(/sigma_draft_tokens_proposed_total (\d+)/.exec(metrics)?.[1]);
    assert.ok(proposed > 0, metrics);
  } finally {
    await server.close();
  }
});

// A draft model in the scheduler: its own KV pool, fed the prompt chunks the target is fed, k batched draft forwards a step.
const small = (o: { seed: number; seqLen?: number; vocabSize?: number }) =>
  new PanguSigma(parseModelConfig({ vocabSize: o.vocabSize ?? tok.vocabSize, width: 16, heads: 2, denseLayers: 1, sparseLayers: 0, seqLen: o.seqLen ?? 160, ffnWidth: 32, embeddingSlots: 1, domains: [{ name: "code" }, { name: "en" }], initStd: 0.3, seed: o.seed })).eval();

test("serve with a draft model: at temperature 0 the tokens are those without drafts; the target as its own draft is always accepted", { timeout: 120_000 }, async () => {
  const greedy = { temperature: 0, topK: 0, topP: 1 };
  const plain = await runAll(0, greedy);
  // The target drafting for itself: every proposal is its own argmax, so all are kept; the draft's cache must follow the
  // context exactly (a position off, and the proposals stop matching).
  const self = await runAll(3, greedy, net);
  assert.deepEqual(self.ids, plain.ids);
  assert.deepEqual(self.texts, plain.texts);
  assert.ok(self.metrics.draftProposed > 0 && self.metrics.draftAccepted === self.metrics.draftProposed, `proposed ${self.metrics.draftProposed}, accepted ${self.metrics.draftAccepted}`);
  assert.ok(self.metrics.steps < plain.metrics.steps / 2, `${self.metrics.steps} steps vs ${plain.metrics.steps}`);
  assert.equal(self.left, 0, "both pools empty");
  // Another model (its domains in another order: matched by name); one whose context is shorter than some requests (those decode without drafts).
  for (const draft of [small({ seed: 9 }), small({ seed: 9, seqLen: 60 })]) {
    const r = await runAll(4, greedy, draft);
    assert.deepEqual(r.ids, plain.ids);
    assert.deepEqual(r.texts, plain.texts);
    assert.ok(r.metrics.draftProposed > 0 && r.metrics.draftAccepted <= r.metrics.draftProposed);
    assert.equal(r.left, 0);
  }
  assert.throws(() => new Scheduler(net, tok, { draftTokens: 2, draftModel: small({ seed: 1, vocabSize: tok.vocabSize + 1 }) }), /draft model's vocabulary/);
});

test("serve with a draft model at temperature 1: the target as its own draft is (almost) always accepted; another draft finishes every sequence", { timeout: 120_000 }, async () => {
  const hot = { temperature: 1, topK: 0, topP: 1 };
  const self = await runAll(3, hot, net);
  self.ids.forEach((ids, i) => assert.equal(ids.length, PROMPTS[i]![2]));
  // p and q come from the same model through different batch shapes: equal up to rounding, so a rejection is a ~1e-6 event.
  assert.ok(self.metrics.draftAccepted >= 0.97 * self.metrics.draftProposed, `proposed ${self.metrics.draftProposed}, accepted ${self.metrics.draftAccepted}`);
  assert.equal(self.left, 0);
  const other = await runAll(4, { temperature: 0.8, topK: 20, topP: 0.9 }, small({ seed: 4 }));
  other.ids.forEach((ids, i) => assert.equal(ids.length, PROMPTS[i]![2]));
  assert.equal(other.left, 0);
});
