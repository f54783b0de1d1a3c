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

async function runAll(draftTokens: number, sampling: { temperature: number; topK: number; topP: number }): Promise<{ ids: number[][]; texts: string[]; metrics: ServerMetrics; left: number }> {
  const metrics = new ServerMetrics();
  const s = new Scheduler(net, tok, { maxBatch: 4, draftTokens, metrics });
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
    return { ids: out.map((o) => o.ids), texts: out.map((o) => o.text), metrics, left: s.stats.kvSequences };
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
