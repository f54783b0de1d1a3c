// `serve()` (src/api/serve.ts, src/serve/server.ts, src/serve/scheduler.ts)
// driven by the official `openai` client and by raw fetch: completions and
// chat, streamed and not, n > 1, stop strings, logprobs, domains by model id,
// the errors (400, 401, 404, 429), disconnects, metrics, greedy text equal
// alone and in a batch, and a bounded loopback load test.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runInNewContext } from "node:vm";
import { setFlagsFromString } from "node:v8";
import OpenAI from "openai";
import { Model } from "../src/api/model.js";
import { serve, type SigmaServer } from "../src/api/serve.js";
import { parseModelConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { chatPrompt, CHAT_STOPS } from "../src/serve/chat.js";
import { encodePrompt } from "../src/serve/prompt.js";
import { Scheduler } from "../src/serve/scheduler.js";
import { toHfJson } from "../src/tokenizer/hfjson.js";
import { trainBpe, WordCounter } from "../src/tokenizer/trainer.js";

const root = mkdtempSync(join(tmpdir(), "sigma-serve-"));
const wc = new WordCounter();
wc.add("The quick brown fox jumps over the lazy dog. Hello there, how are you today? export const x = 1;\n".repeat(8));
const tok = trainBpe(wc, { vocabSize: 320, domains: ["en", "code"], langs: [] });
const config = parseModelConfig({
  vocabSize: tok.vocabSize, width: 32, heads: 2, denseLayers: 1, sparseLayers: 1, seqLen: 256, ffnWidth: 64, embeddingSlots: 2,
  domains: [{ name: "en", group: 0 }, { name: "code", slot: 1, group: 1 }], experts: { count: 4, router: { kind: "topk", k: 2 } }, initStd: 0.1, seed: 5,
});
const model = new Model(new PanguSigma(config), tok, null, 0, null, null, toHfJson(tok));
const ckpt = model.save(join(root, "tiny-run", "checkpoints"));

/** The default model id (the first domain). */
const EN = "sigma/tiny-run/en";
let server: SigmaServer;
let client: OpenAI;
before(async () => {
  server = await serve(ckpt, { port: 0, maxBatch: 8, maxQueue: 512, apiKey: null });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
});
after(async () => {
  await server.close();
  rmSync(root, { recursive: true, force: true });
});

/** The library's greedy continuation (single-sequence KV-cache decoding), the reference for the server's. */
const greedy = { temperature: 0, topK: 0, topP: 1 };
const reference = (prompt: string, maxTokens: number, domain = "en", stop: string[] = []) => model.complete(prompt, { ...greedy, maxTokens, domain, stop });
const statusOf = (e: unknown) => (e instanceof OpenAI.APIError ? e.status : e);

test("GET /v1/models lists one id per domain; /health answers", { timeout: 60_000 }, async () => {
  assert.deepEqual(server.models, ["sigma/tiny-run/en", "sigma/tiny-run/code"]);
  const list = await client.models.list();
  assert.deepEqual(list.data.map((m) => m.id), server.models);
  const health = await (await fetch(`${server.url}/health`)).json();
  assert.equal(health.status, "ok");
});

test("completions, not streamed and streamed, give the library's greedy text and the usage", { timeout: 60_000 }, async () => {
  const want = await reference("Hello there", 12);
  const r = await client.completions.create({ model: "sigma/tiny-run/en", prompt: "Hello there", max_tokens: 12, temperature: 0 });
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0]!.text, want);
  assert.equal(r.choices[0]!.finish_reason, "length");
  const promptTokens = encodePrompt(tok, "en", "Hello there").length;
  assert.deepEqual(r.usage, { prompt_tokens: promptTokens, completion_tokens: 12, total_tokens: promptTokens + 12 });

  const stream = await client.completions.create({ model: EN, prompt: "Hello there", max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true } });
  let text = "";
  let finish: string | null = null;
  let usage: unknown = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      text += c.text;
      finish = c.finish_reason ?? finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, want);
  assert.equal(finish, "length");
  assert.deepEqual(usage, r.usage);
});

test("chat completions, not streamed and streamed, give Model.chat's greedy reply", { timeout: 60_000 }, async () => {
  const messages = [{ role: "system" as const, content: "Be brief." }, { role: "user" as const, content: "How are you today?" }];
  let want = "";
  for await (const p of model.chat(messages, { ...greedy, maxTokens: 10 })) want += p.text;
  // The template, and the reply after it, as documented.
  assert.equal(chatPrompt(messages), "System: Be brief.\n\nUser: How are you today?\n\nAssistant:");
  assert.equal(want, (await reference(chatPrompt(messages), 10, "en", [...CHAT_STOPS])).trimStart());
  const r = await client.chat.completions.create({ model: "sigma/tiny-run/en", messages, max_tokens: 10, temperature: 0 });
  assert.equal(r.object, "chat.completion");
  assert.equal(r.choices[0]!.message.role, "assistant");
  assert.equal(r.choices[0]!.message.content, want);
  assert.equal(r.usage!.prompt_tokens, encodePrompt(tok, "en", chatPrompt(messages)).length);

  const stream = await client.chat.completions.create({ model: EN, messages, max_completion_tokens: 10, temperature: 0, stream: true, stream_options: { include_usage: true } });
  let text = "";
  let role: string | undefined;
  let usage: OpenAI.CompletionUsage | null | undefined;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      role ??= c.delta.role;
      text += c.delta.content ?? "";
    }
    usage = chunk.usage ?? usage;
  }
  assert.equal(role, "assistant");
  assert.equal(text, want);
  assert.deepEqual(usage, r.usage);
});

test("n > 1: seeded choices are reproducible and differ from one another; greedy ones agree", { timeout: 60_000 }, async () => {
  const ask = () => client.completions.create({ model: EN, prompt: "The quick", max_tokens: 16, temperature: 1, seed: 42, n: 3 });
  const [a, b] = await Promise.all([ask(), ask()]);
  assert.deepEqual(a.choices.map((c) => c.index), [0, 1, 2]);
  assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
  assert.ok(new Set(a.choices.map((c) => c.text)).size > 1, "different seeds per choice");
  assert.equal(a.usage!.completion_tokens, a.choices.reduce((n, c) => n + (c.finish_reason === "length" ? 16 : 0), 0) || a.usage!.completion_tokens);
  const g = await client.chat.completions.create({ model: EN, messages: [{ role: "user", content: "Hello" }], max_tokens: 8, temperature: 0, n: 2 });
  assert.equal(g.choices.length, 2);
  assert.equal(g.choices[0]!.message.content, g.choices[1]!.message.content);
});

test("stop strings end the text just before them, streamed or not", { timeout: 60_000 }, async () => {
  const full = await reference("Hello", 40);
  // A stop string from the middle of the greedy text (no broken character in it).
  let at = 8;
  while (at < full.length - 3 && /[\uFFFD\uD800-\uDFFF]/.test(full.slice(at, at + 3))) at++;
  const stop = full.slice(at, at + 3);
  const want = full.slice(0, full.indexOf(stop));
  const r = await client.completions.create({ model: EN, prompt: "Hello", max_tokens: 40, temperature: 0, stop: [stop, "\u0000never"] });
  assert.equal(r.choices[0]!.text, want);
  assert.equal(r.choices[0]!.finish_reason, "stop");
  assert.ok(r.usage!.completion_tokens < 40, "fewer tokens than max_tokens");
  let text = "";
  for await (const chunk of await client.completions.create({ model: EN, prompt: "Hello", max_tokens: 40, temperature: 0, stop, stream: true })) text += chunk.choices[0]?.text ?? "";
  assert.equal(text, want);
});

test("logprobs on completions: one entry per token, the chosen token's log-probability at most 0, alternatives sorted", { timeout: 60_000 }, async () => {
  const r = await client.completions.create({ model: EN, prompt: "Hello", max_tokens: 5, temperature: 0, logprobs: 3 });
  const lp = r.choices[0]!.logprobs!;
  assert.equal(lp.tokens!.length, 5);
  assert.equal(lp.token_logprobs!.length, 5);
  for (let i = 0; i < 5; i++) {
    const top = Object.values(lp.top_logprobs![i]!);
    assert.equal(top.length, 3);
    assert.ok(lp.token_logprobs![i]! <= 0, `token ${i}: a log-probability`);
    // Greedy: the chosen token is the most likely one.
    assert.ok(Math.abs(lp.token_logprobs![i]! - top[0]!) < 1e-9, `token ${i}: the most likely one`);
    assert.ok(top[0]! >= top[1]! && top[1]! >= top[2]!, `token ${i}: alternatives sorted`);
  }
});

test("a domain is chosen by model id or by the domain field; a conflict is a 400, an unknown sigma/ id a 404", { timeout: 60_000 }, async () => {
  const want = await reference("export const", 8, "code");
  assert.notEqual(want, await reference("export const", 8, "en"), "the domains differ (code has its own embedding slot)");
  const byId = await client.completions.create({ model: "sigma/tiny-run/code", prompt: "export const", max_tokens: 8, temperature: 0 });
  assert.equal(byId.choices[0]!.text, want);
  assert.equal(byId.model, "sigma/tiny-run/code");
  const byField = await client.completions.create({ model: "sigma/tiny-run", prompt: "export const", max_tokens: 8, temperature: 0, domain: "code" } as OpenAI.CompletionCreateParamsNonStreaming);
  assert.equal(byField.choices[0]!.text, want);
  await assert.rejects(client.completions.create({ model: "sigma/tiny-run/en", prompt: "x", domain: "code" } as OpenAI.CompletionCreateParamsNonStreaming), (e) => statusOf(e) === 400);
  await assert.rejects(client.completions.create({ model: "sigma/other/en", prompt: "x" }), (e) => statusOf(e) === 404);
});

test("bad requests are 400s with OpenAI's error body, and the server goes on", { timeout: 60_000 }, async () => {
  const post = async (path: string, body: string) => {
    const r = await fetch(`${server.url}/v1/${path}`, { method: "POST", headers: { "content-type": "application/json" }, body });
    return { status: r.status, body: (await r.json()) as { error: { message: string; type: string; param: string | null; code: string | null } } };
  };
  const cases: [string, string, string | null][] = [
    ["completions", "{not json", null],
    ["completions", "[1, 2]", null],
    ["completions", JSON.stringify({ prompt: "x", temperature: "hot" }), "temperature"],
    ["completions", JSON.stringify({ prompt: 5 }), "prompt"],
    ["completions", JSON.stringify({ prompt: "x", max_tokens: 1.5 }), "max_tokens"],
    ["completions", JSON.stringify({ prompt: "x", n: 0 }), "n"],
    ["completions", JSON.stringify({ prompt: "x", stop: [""] }), "stop"],
    ["completions", JSON.stringify({ prompt: "x", frobnicate: true }), "frobnicate"],
    ["completions", JSON.stringify({ prompt: "word ".repeat(300) }), "prompt"],
    ["completions", JSON.stringify({ prompt: "x", max_tokens: 256 }), "max_tokens"],
    ["completions", JSON.stringify({ prompt: "x", domain: "klingon" }), "domain"],
    ["chat/completions", JSON.stringify({ messages: [{ role: "wizard", content: "hi" }] }), "messages.0.role"],
    ["chat/completions", JSON.stringify({ messages: [] }), "messages"],
  ];
  for (const [path, body, param] of cases) {
    const r = await post(path, body);
    assert.equal(r.status, 400, body);
    assert.equal(r.body.error.type, "invalid_request_error", body);
    assert.equal(typeof r.body.error.message, "string");
    assert.equal(r.body.error.param, param, body);
  }
  assert.equal((await post("completions", JSON.stringify({ prompt: "word ".repeat(300) }))).body.error.code, "context_length_exceeded");
  // Through the client: its BadRequestError.
  await assert.rejects(client.completions.create({ model: EN, prompt: "x", max_tokens: 1000 }), (e) => e instanceof OpenAI.BadRequestError && /context length/.test(e.message));
  // Still serving, with nothing left in the pool.
  assert.equal((await client.completions.create({ model: EN, prompt: "x", max_tokens: 2 })).choices.length, 1);
  assert.equal(server.stats().kvSequences, 0);
});

test("the raw SSE stream: data: {json} events, data: [DONE] last", { timeout: 60_000 }, async () => {
  const r = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 5, temperature: 0, stream: true }) });
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type")!, /^text\/event-stream/);
  const raw = await r.text();
  assert.ok(raw.endsWith("data: [DONE]\n\n"), "the stream ends with data: [DONE]");
  const events = raw.split("\n\n").filter((e) => e !== "");
  assert.equal(events.at(-1), "data: [DONE]");
  const chunks = events.slice(0, -1).map((e) => {
    assert.match(e, /^data: \{/);
    return JSON.parse(e.slice("data: ".length));
  });
  assert.ok(chunks.every((c) => c.object === "chat.completion.chunk" && c.id === chunks[0].id), "every chunk is a chat.completion.chunk of one id");
  assert.deepEqual(chunks[0].choices[0].delta, { role: "assistant", content: "" });
  assert.equal(chunks.at(-1).choices[0].finish_reason, "length");
});

test("greedy text is the same alone and among concurrent requests of other lengths", { timeout: 60_000 }, async () => {
  const prompts = ["Hello", "The quick brown fox jumps over the lazy dog.", "export const x = 1;", "how are you", "Hello there, how are you today? The quick brown fox", "x"];
  const ask = (p: string, i: number) => client.completions.create({ model: server.models[i % 2], prompt: p, max_tokens: 6 + 3 * i, temperature: 0 }).then((r) => r.choices[0]!.text);
  const alone: string[] = [];
  for (const [i, p] of prompts.entries()) alone.push(await ask(p, i));
  const together = await Promise.all(prompts.map(ask));
  assert.deepEqual(together, alone);
  for (const [i, p] of prompts.entries()) assert.equal(alone[i], await reference(p, 6 + 3 * i, i % 2 ? "code" : "en"));
});

test("a client that disconnects has its sequence cancelled at the next step and its blocks freed", { timeout: 60_000 }, async () => {
  const metric = async (re: RegExp) => Number(re.exec(await (await fetch(`${server.url}/metrics`)).text())?.[1] ?? 0);
  const cancelledBefore = await metric(/^sigma_sequences_finished_total\{reason="cancelled"\} (\d+)$/m);
  const ac = new AbortController();
  // Greedy, so that it runs its whole length unless cancelled (the "length" finish of the same request is checked in the 429 test).
  const stream = await client.completions.create({ model: EN, prompt: "Hello", max_tokens: 240, temperature: 0, stream: true }, { signal: ac.signal });
  let chunks = 0;
  try {
    for await (const _ of stream) if (++chunks === 2) ac.abort();
  } catch (e) {
    assert.ok(e instanceof Error && /abort/i.test(e.name + e.message), String(e));
  }
  assert.equal(chunks, 2, "the stream ended at the abort");
  for (let i = 0; i < 200 && server.stats().kvSequences > 0; i++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(server.stats().kvSequences, 0);
  assert.equal(server.stats().kvBlocksUsed, 0);
  assert.equal(await metric(/^sigma_sequences_finished_total\{reason="cancelled"\} (\d+)$/m), cancelledBefore + 1);
});

test("GET /metrics is Prometheus text with requests, tokens, queue, batch size and latency histograms", { timeout: 60_000 }, async () => {
  const r = await fetch(`${server.url}/metrics`);
  assert.match(r.headers.get("content-type")!, /^text\/plain; version=0\.0\.4/);
  const text = await r.text();
  for (const name of ["sigma_requests_total", "sigma_prompt_tokens_total", "sigma_completion_tokens_total", "sigma_queue_length", "sigma_batch_size", "sigma_time_to_first_token_seconds", "sigma_inter_token_latency_seconds"]) {
    assert.match(text, new RegExp(`^# TYPE ${name} (counter|gauge|histogram)$`, "m"), name);
  }
  assert.match(text, /^sigma_requests_total\{route="\/v1\/completions",status="200"\} [1-9]\d*$/m);
  assert.match(text, /^sigma_requests_total\{route="\/v1\/completions",status="400"\} [1-9]\d*$/m);
  assert.match(text, /^sigma_time_to_first_token_seconds_bucket\{le="\+Inf"\} [1-9]\d*$/m);
  assert.match(text, /^sigma_queue_length 0$/m);
  // Every sample line is `name{labels} number`.
  for (const line of text.split("\n").filter((l) => l && !l.startsWith("#"))) assert.match(line, /^[a-z_]+(\{[^}]*\})? -?[\d.e+-]+$/, line);
});

test("an API key is required when set: none or a wrong one is a 401", { timeout: 60_000 }, async () => {
  const keyed = await serve(model, { name: "tiny-run", port: 0, apiKey: "s3cret" });
  try {
    const as = (apiKey: string) => new OpenAI({ baseURL: `${keyed.url}/v1`, apiKey, maxRetries: 0 });
    await assert.rejects(as("wrong").completions.create({ model: EN, prompt: "x", max_tokens: 2 }), (e) => e instanceof OpenAI.AuthenticationError);
    const none = await fetch(`${keyed.url}/v1/models`);
    assert.equal(none.status, 401);
    assert.equal(((await none.json()) as { error: { code: string } }).error.code, "invalid_api_key");
    assert.equal((await as("s3cret").completions.create({ model: EN, prompt: "x", max_tokens: 2 })).choices.length, 1);
    assert.equal((await fetch(`${keyed.url}/health`)).status, 200, "health needs no key");
  } finally {
    await keyed.close();
  }
});

test("a full queue is a 429 with Retry-After", { timeout: 60_000 }, async () => {
  const small = await serve(model, { name: "tiny-run", port: 0, maxBatch: 1, maxQueue: 1 });
  try {
    const c = new OpenAI({ baseURL: `${small.url}/v1`, apiKey: "x", maxRetries: 0 });
    // One decoding, one waiting (a streamed reply's headers go out once it is queued): the third is refused.
    const post = (body: object) => fetch(`${small.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const long = [await post({ prompt: "Hello", max_tokens: 240, temperature: 0, stream: true }), await post({ prompt: "Hello", max_tokens: 240, temperature: 0, stream: true })];
    const r = await post({ prompt: "x", max_tokens: 2 });
    assert.equal(r.status, 429);
    assert.equal(r.headers.get("retry-after"), "1");
    assert.equal(((await r.json()) as { error: { code: string } }).error.code, "rate_limit_exceeded");
    await assert.rejects(c.completions.create({ model: EN, prompt: "x", max_tokens: 2 }), (e) => e instanceof OpenAI.RateLimitError);
    for (const done of long) assert.match(await done.text(), /"finish_reason":"length"[^\n]*\n\ndata: \[DONE\]\n\n$/);
    // Room again.
    assert.equal((await c.completions.create({ model: EN, prompt: "x", max_tokens: 2 })).choices.length, 1);
  } finally {
    await small.close();
  }
});

test("close() cancels open streams and stops listening", { timeout: 60_000 }, async () => {
  const s = await serve(model, { name: "tiny-run", port: 0 });
  const r = await fetch(`${s.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "Hello", max_tokens: 240, temperature: 0, stream: true }) });
  const reader = r.body!.getReader();
  await reader.read(); // streaming now
  await s.close();
  let rest = "";
  for (let c = await reader.read(); !c.done; c = await reader.read()) rest += new TextDecoder().decode(c.value);
  assert.doesNotMatch(rest, /"finish_reason":"length"/, "the stream was cut short");
  assert.equal(s.stats().kvSequences, 0);
  await assert.rejects(fetch(`${s.url}/health`), "nothing listens any more");
});

test("the scheduler ends a cancelled sequence at its next step", { timeout: 60_000 }, async () => {
  const s = new Scheduler(model.network, tok, { maxBatch: 2 });
  try {
    const [stream] = s.submit([{ prompt: encodePrompt(tok, "en", "Hello"), domain: 0, maxTokens: 200, temperature: 1, topK: 0, topP: 1, seed: 1 }]);
    let tokens = 0;
    let finish = "";
    for await (const e of stream!) {
      if (e.kind === "token" && ++tokens === 3) stream!.cancel();
      if (e.kind === "done") finish = e.finish;
    }
    assert.equal(finish, "cancelled");
    assert.equal(tokens, 3, "no token after the cancel");
    assert.equal(s.stats.kvSequences, 0);
  } finally {
    await s.close();
  }
});

test("a long prompt is prefilled in chunks beside a running stream, which keeps getting tokens", { timeout: 60_000 }, async () => {
  const s = new Scheduler(model.network, tok, { maxBatch: 4, prefillChunk: 16 });
  try {
    const sampling = { temperature: 0, topK: 0, topP: 1, seed: 1 };
    const [running] = s.submit([{ prompt: encodePrompt(tok, "en", "Hello"), domain: 0, maxTokens: 100, ...sampling }]);
    const it = running![Symbol.asyncIterator]();
    await it.next(); // decoding now
    const long = encodePrompt(tok, "en", "The quick brown fox jumps over the lazy dog. ".repeat(12)).slice(0, 160);
    const [late] = s.submit([{ prompt: long, domain: 0, maxTokens: 2, ...sampling }]);
    // Count the running stream's tokens until the long prompt's first token arrives.
    let during = 0;
    let first = false;
    void (async () => {
      for await (const e of late!) if (e.kind === "token") first = true;
    })();
    while (!first) {
      const e = await it.next();
      if (e.done || e.value.kind === "done") break;
      during++;
    }
    // 160 prompt tokens in chunks of 16: ten steps, each also decoding the running stream.
    assert.ok(during >= 9, `the running stream got ${during} tokens during the prefill`);
    for (;;) if ((await it.next()).done) break;
  } finally {
    await s.close();
  }
  assert.equal(s.stats.kvSequences, 0);
});

test("load: 256 streamed requests from 32 concurrent clients finish, nothing leaks, memory returns near its baseline", { timeout: 60_000 }, async () => {
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  const one = async (i: number) => {
    const stream = await client.chat.completions.create({ model: EN, messages: [{ role: "user", content: `Question ${i}: how are you?` }], max_tokens: 3 + (i % 5), temperature: 0.8, seed: i, stream: true });
    let finish: string | null = null;
    for await (const chunk of stream) finish = chunk.choices[0]?.finish_reason ?? finish;
    assert.ok(finish === "length" || finish === "stop", `request ${i} finished (${finish})`);
  };
  const run = async (total: number, clients: number) => {
    let next = 0;
    await Promise.all(Array.from({ length: clients }, async () => {
      while (next < total) await one(next++);
    }));
  };
  await run(32, 32); // warm up
  gc();
  const base = process.memoryUsage().heapUsed;
  await run(256, 32);
  assert.equal(server.stats().kvSequences, 0, "no sequence left in the pool");
  assert.equal(server.stats().kvBlocksUsed, 0);
  assert.equal(server.stats().waiting + server.stats().running, 0);
  await new Promise((r) => setTimeout(r, 20));
  gc();
  const grown = process.memoryUsage().heapUsed - base;
  assert.ok(grown < 16 * 2 ** 20, `heap grew by ${(grown / 2 ** 20).toFixed(1)} MiB`);
});
