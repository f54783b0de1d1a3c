// Generation: sampling rules, greedy decoding is deterministic, a saved and
// reloaded model generates the same text, decoding past seqLen, and the
// train / eval / generate commands end to end.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { saveModel } from "../src/models/io.js";
import { copyFileSync } from "node:fs";
import { argmax, checkSampling, sampleToken } from "../src/serve/sampling.js";
import { generateIds } from "../src/serve/generate.js";
import { noGrad } from "../src/autograd/tape.js";
import { encodePrompt } from "../src/serve/prompt.js";
import { openModelSource } from "../src/serve/open.js";
import { Trainer } from "../src/train/trainer.js";
import { runTraining } from "../src/train/run.js";
import { SigmaError } from "../src/util/errors.js";
import { Rng } from "../src/util/rng.js";
import { ROUTERS, cleanup, root, tinyConfig, tinyData } from "./train-fixture.js";

after(cleanup);
const data = await tinyData();
const cfg = tinyConfig(data, join(root, "gen-run"), ROUTERS.topk!, { steps: 12, eval: { every: 0, batches: 1 }, checkpoint: { every: 0, keep: 1 } });
const trainer = new Trainer(cfg);
const run = await runTraining(trainer);
trainer.close();
const model = trainer.model;
const greedy = { temperature: 0, topK: 0, topP: 1, maxTokens: 12, seed: 1, stopId: null };

test("sampling: temperature 0 and top-k 1 are argmax; top-k and top-p cut the tail; draws follow softmax", () => {
  const logits = Float32Array.of(0.5, 2.0, -1.0, 1.0);
  const rng = new Rng(1);
  assert.equal(argmax(logits), 1);
  assert.equal(sampleToken(logits, { temperature: 0, topK: 0, topP: 1 }, rng), 1);
  for (let i = 0; i < 50; i++) {
    assert.equal(sampleToken(logits, { temperature: 5, topK: 1, topP: 1 }, rng), 1);
    assert.equal(sampleToken(logits, { temperature: 1, topK: 0, topP: 0.01 }, rng), 1);
    assert.ok([1, 3].includes(sampleToken(logits, { temperature: 3, topK: 2, topP: 1 }, rng)));
  }
  const counts = [0, 0, 0, 0];
  const N = 20000;
  for (let i = 0; i < N; i++) counts[sampleToken(logits, { temperature: 1, topK: 0, topP: 1 }, rng)]++;
  const z = [...logits].reduce((a, l) => a + Math.exp(l), 0);
  counts.forEach((c, i) => assert.ok(Math.abs(c / N - Math.exp(logits[i]!) / z) < 0.015, `token ${i}: ${c / N}`));
  // Bad options are refused where they enter (checkSampling, called by generateIds), each on its own: sampleToken
  // is the per-token path and does not check them (the earlier `sampleToken(…) && generateIds(…)` tested neither alone).
  for (const bad of [{ temperature: -1 }, { temperature: Number.NaN }, { topK: 1.5 }, { topP: 0 }]) {
    assert.throws(() => checkSampling({ temperature: 1, topK: 0, topP: 1, ...bad }), SigmaError, JSON.stringify(bad));
    assert.throws(() => [...generateIds(model, [1], 0, { ...greedy, ...bad })], SigmaError, JSON.stringify(bad));
  }
});

test("greedy generation (temperature 0) is deterministic and ignores the seed", () => {
  const prompt = [5, 17, 42];
  const a = [...generateIds(model, prompt, 1, greedy)];
  const b = [...generateIds(model, prompt, 1, { ...greedy, seed: 99 })];
  assert.equal(a.length, 12);
  assert.deepEqual(a, b);
  // The same seed gives the same sample; another seed another one.
  const s = { ...greedy, temperature: 1, maxTokens: 30 };
  assert.deepEqual([...generateIds(model, prompt, 1, s)], [...generateIds(model, prompt, 1, s)]);
  assert.notDeepEqual([...generateIds(model, prompt, 1, s)], [...generateIds(model, prompt, 1, { ...s, seed: 2 })]);
});

test("decoding runs past seqLen by re-reading the last half of the context", () => {
  const [T, V] = [cfg.model.seqLen, cfg.model.vocabSize];
  const opts = { ...greedy, temperature: 0.9, maxTokens: 3 * T };
  const ids = [...generateIds(model, [3, 4], 0, opts)];
  assert.equal(ids.length, 3 * T);
  // The same decoding without a KV cache: each token is drawn (same seed, same draws) from a full forward over
  // the window the cache should hold — the whole context until seqLen positions are filled, then only the last
  // seqLen/2 tokens (the newest included), growing again from there.
  const context = [3, 4];
  let start = 0;
  const rng = new Rng(opts.seed);
  const want: number[] = [];
  let refills = 0;
  const wasTraining = model.training;
  model.eval();
  for (let i = 0; i < opts.maxTokens; i++) {
    const window = context.slice(start);
    const logits = noGrad(() => model.forward({ tokens: Int32Array.from(window), domains: Int32Array.of(0), B: 1, T: window.length })).logits.data;
    const id = sampleToken(logits.subarray((window.length - 1) * V, window.length * V), opts, rng);
    want.push(id);
    context.push(id);
    if (window.length === T) {
      start = context.length - T / 2;
      refills++;
    }
  }
  model.train(wasTraining);
  assert.ok(refills >= 4, `the run re-read the context only ${refills} times`);
  assert.ok(new Set(want).size > 3, "the sampled tokens should vary (else any window gives the same text)");
  assert.deepEqual(ids, want);
});

test("a model saved and loaded generates the same text (checkpoint folder and bare safetensors)", () => {
  const loaded = openModelSource(run.checkpoint);
  assert.equal(loaded.step, 12);
  const tok = loaded.tokenizer!.tokenizer;
  const prompt = encodePrompt(tok, "en", "The quick");
  const opts = { ...greedy, temperature: 0.8, topK: 20, topP: 0.9, maxTokens: 20, seed: 7 };
  const before = [...generateIds(model, prompt, 1, opts)];
  const after = [...generateIds(loaded.model, prompt, 1, opts)];
  assert.deepEqual(after, before);
  assert.equal(tok.decode(after), tok.decode(before));
  const file = join(root, "bare", "model.safetensors");
  (() => {
    spawnSync("mkdir", ["-p", join(root, "bare")]);
    saveModel(model, file);
    copyFileSync(join(run.checkpoint, "tokenizer.json"), join(root, "bare", "tokenizer.json"));
  })();
  assert.deepEqual([...generateIds(openModelSource(file).model, prompt, 1, opts)], before);
});

const cli = (...args: string[]) => spawnSync(process.execPath, ["--import", "tsx", join(import.meta.dirname, "..", "src", "cli", "main.ts"), ...args], { encoding: "utf8" });

test("CLI: generate streams the same greedy text twice; eval prints each domain; a bad config names the field", () => {
  const g = ["generate", "--ckpt", join(cfg.out, "checkpoints"), "--domain", "en", "--prompt", "The", "--temperature", "0", "--max-tokens", "8"];
  const a = cli(...g);
  const b = cli(...g);
  assert.equal(a.status, 0, a.stderr);
  assert.ok(a.stdout.startsWith("The"));
  assert.equal(a.stdout, b.stdout);
  assert.match(a.stderr, /tokens\/s/);
  // A refused option prints its one error line and nothing on stdout (not even the prompt).
  for (const [flag, value, re] of [["--stop", "", /stop string 1 is empty/], ["--domain", "nope", /Unknown domain "nope"/]] as const) {
    const r = cli(...g.filter((x, i) => x !== "--domain" && g[i - 1] !== "--domain"), flag, value);
    assert.equal(r.status, 1, r.stderr);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, re);
  }
  const e = cli("eval", "--ckpt", run.checkpoint, "--batches", "1");
  assert.equal(e.status, 0, e.stderr);
  for (const d of ["zh", "en", "code"]) assert.match(e.stdout, new RegExp(`^${d}\\s+\\d+\\.\\d+\\s+\\d`, "m"));
  const bad = join(root, "bad-run.json");
  writeFileSync(bad, JSON.stringify({ ...cfg, batchSize: -1, extra: true }));
  const t = cli("train", "--config", bad);
  assert.equal(t.status, 1);
  assert.match(t.stderr, /bad-run\.json is invalid[\s\S]*batchSize[\s\S]*extra/);
  const u = cli("generate", "--ckpt", run.checkpoint, "--domain", "fr");
  assert.equal(u.status, 1);
  assert.match(u.stderr, /Unknown domain "fr"; the model knows zh, en, bi, code/);
});

test("CLI: demo (tiny budget) trains, prints per-domain loss against the unigram baseline, samples each domain, writes plots", () => {
  const out = join(root, "demo-out");
  const d = cli("demo", "--data", data, "--out", out, "--minutes", "0.2", "--steps", "6", "--width", "32");
  assert.equal(d.status, 0, d.stderr);
  for (const dom of ["zh", "en", "code"]) {
    // domain, val loss, perplexity, baseline, difference
    assert.match(d.stdout, new RegExp(`^${dom}\\s+\\d+\\.\\d{3}\\s+\\d+\\.\\d\\s+\\d+\\.\\d{3}\\s+-?\\d+\\.\\d{3} nats$`, "m"));
    assert.match(d.stdout, new RegExp(`^  \\[${dom}\\] .+`, "m"));
  }
  assert.match(d.stdout, /unigram baseline/);
  for (const f of ["metrics.jsonl", "plots/loss.svg", "plots/experts.svg"]) assert.ok(existsSync(join(out, f)), f);
  assert.match(d.stdout, /checkpoint: .*step-0000000\d/);
  // PanGu-Σ's layout, the default: each domain embeds with its own slot.
  const c = openModelSource(join(out, "checkpoints")).model.config;
  assert.deepEqual([c.embeddingSlots, c.domains.map((x) => x.slot)], [4, [0, 1, 2, 3]]);
  // Again into the same folder: refused (the demo cannot resume, so the hint names only --overwrite).
  const again = cli("demo", "--data", data, "--out", out, "--minutes", "0.2", "--steps", "6", "--width", "32");
  assert.equal(again.status, 1, again.stderr);
  assert.match(again.stderr, /^sigma: .*demo-out \(--out\) already holds a run/m);
  assert.match(again.stderr, /hint: pass --overwrite to replace it, or choose another --out/);
});
