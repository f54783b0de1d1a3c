// Speculative decoding (src/serve/speculative.ts): identical to plain decoding at temperature 0 for
// every router and both drafts, the target's distribution kept at temperature > 0, and the cache
// rollback leaving no trace of a rejected token.
import { test } from "node:test";
import assert from "node:assert/strict";
import { noGrad } from "../src/autograd/tape.js";
import { parseModelConfig, type RouterConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { quantizeModel } from "../src/models/quantize.js";
import { generateIds } from "../src/serve/generate.js";
import { sampleToken } from "../src/serve/sampling.js";
import { acceptOrResample, ngramProposal, newSpeculativeStats, samplingDistribution, speculativeIds, truncateCache, type Draft } from "../src/serve/speculative.js";
import { SigmaError } from "../src/util/errors.js";
import { Rng } from "../src/util/rng.js";

const V = 29;
const ROUTERS: Record<string, RouterConfig | null> = {
  dense: null,
  rre: { kind: "rre", groups: 2, seed: 4 },
  moge: { kind: "moge", groups: 2, perGroup: 2, auxLossCoef: 0.01, sharedExperts: 1 },
  topk: { kind: "topk", k: 2, renormalize: true, auxLossCoef: 0.01, zLossCoef: 0, capacityFactor: null },
};

function build(router: RouterConfig | null, o: { seed?: number; seqLen?: number; vocabSize?: number; layers?: number; initStd?: number } = {}): PanguSigma {
  const sparse = router ? 2 : 0;
  return new PanguSigma(
    parseModelConfig({
      vocabSize: o.vocabSize ?? V,
      width: 16,
      heads: 2,
      denseLayers: o.layers ?? 1,
      sparseLayers: sparse,
      seqLen: o.seqLen ?? 24,
      ffnWidth: 24,
      seed: o.seed ?? 3,
      // A larger init spreads the logits: random models then have clear argmaxes and varied samples.
      initStd: o.initStd ?? 0.5,
      domains: [{ name: "a", group: 0 }, { name: "b", group: 1 }],
      embeddingSlots: 1, // the models these tests were written against
      ...(router ? { experts: { count: 4, width: 8, router } } : {}),
    }),
  ).eval();
}

const PROMPTS = [[1, 2, 3], [5], [7, 8, 9, 7, 8, 9, 7, 8], [3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3]];
const greedy = { temperature: 0, topK: 40, topP: 0.95, seed: 1, stopId: null };

test("at temperature 0 speculative decoding is token for token plain decoding, for every router and both drafts", () => {
  for (const [name, router] of Object.entries(ROUTERS)) {
    const target = build(router);
    const drafts: [string, Draft][] = [
      ["ngram", { kind: "ngram" }],
      ["itself", { kind: "model", model: target, domain: 1 }],
      ["other", { kind: "model", model: build(null, { seed: 11, seqLen: 10 }), domain: 0 }],
    ];
    for (const [i, prompt] of PROMPTS.entries()) {
      const domain = i % 2;
      // 40 tokens pass seqLen 24: both decoders restart from the context's last half on the way.
      const plain = [...generateIds(target, prompt, domain, { ...greedy, maxTokens: 40 })];
      for (const [dn, draft] of drafts) {
        for (const k of [1, 4]) {
          const stats = newSpeculativeStats();
          const spec = [...speculativeIds(target, prompt, domain, { ...greedy, maxTokens: 40, draftTokens: k, adaptive: false }, draft, stats)];
          assert.deepEqual(spec, plain, `${name}, prompt ${i}, draft ${dn}, k ${k}`);
          assert.equal(stats.emitted, 40);
          if (dn === "itself" && domain === 1) assert.equal(stats.accepted, stats.proposed, "the target drafting for itself is always right");
        }
        // k chosen step by step (`adaptive`): the same text.
        const adaptive = [...speculativeIds(target, prompt, domain, { ...greedy, maxTokens: 40, draftTokens: 4, adaptive: true }, draft)];
        assert.deepEqual(adaptive, plain, `${name}, prompt ${i}, draft ${dn}, adaptive k`);
      }
    }
  }
});

test("at temperature 0 with stored weights, prompts longer than DECODE_ROWS and restarts: speculative decoding is plain decoding token for token", () => {
  // Stored weights take the decode kernels for a few rows and other kernels for a prompt's many (q8: integer dots
  // against dequantized GEMMs), so the first token and each restart's come from the prompt's forward, as in plain
  // decoding. A small init leaves the logits close: a token computed another way would often come out different.
  const vocabSize = 512;
  const prompts = Array.from({ length: 6 }, (_, i) => Array.from({ length: 18 + i }, (_, t) => (t * (i + 3) + i) % vocabSize));
  for (const f of ["q8", "f32"] as const) {
    for (const router of [ROUTERS.rre!, ROUTERS.topk!]) {
      const target = build(router, { initStd: 0.02, vocabSize });
      quantizeModel(target, f);
      const drafts: [string, Draft][] = [["ngram", { kind: "ngram" }], ["itself", { kind: "model", model: target, domain: 1 }]];
      for (const [i, prompt] of prompts.entries()) {
        const plain = [...generateIds(target, prompt, i % 2, { ...greedy, maxTokens: 30 })];
        for (const [dn, draft] of drafts) {
          for (const adaptive of [false, true]) {
            const spec = [...speculativeIds(target, prompt, i % 2, { ...greedy, maxTokens: 30, draftTokens: 4, adaptive }, draft)];
            assert.deepEqual(spec, plain, `${f}, ${router.kind}, prompt ${i}, draft ${dn}, adaptive ${adaptive}`);
          }
        }
      }
    }
  }
});

test("the prompt's forward and each restart's are plain decoding's: the same tokens in one forward, the next token from its last position", () => {
  // The mechanism the test above relies on, seen directly: the forwards over more than one position that each
  // decoder runs (prompt, restarts) are the same calls, so their tokens come from the same numbers whatever the
  // kernels (on the tiny models above an int8 rounding seldom flips a token; on a trained model's close logits it did).
  const target = build(ROUTERS.rre!);
  quantizeModel(target, "q8");
  const prompt = Array.from({ length: 20 }, (_, t) => (t * 5 + 1) % V);
  const record = (run: () => void): string[] => {
    const calls: string[] = [];
    const forward = target.forward.bind(target);
    target.forward = (input, cache) => {
      if (input.T > 1 && !(cache && cache.length > 0)) calls.push(`${input.T}:${Array.from(input.tokens).join(",")}:${input.lastOnly === true}`);
      return forward(input, cache);
    };
    try {
      run();
    } finally {
      target.forward = forward;
    }
    return calls;
  };
  const plain = record(() => void [...generateIds(target, prompt, 0, { ...greedy, maxTokens: 30 })]);
  const spec = record(() => void [...speculativeIds(target, prompt, 0, { ...greedy, maxTokens: 30, draftTokens: 4, adaptive: false }, { kind: "ngram" })]);
  assert.ok(plain.length >= 2, "a prompt and at least one restart");
  assert.deepEqual(spec, plain);
});

test("at temperature 0 the drafts are used: the n-gram draft on a repetitive prompt, the model draft always", () => {
  const target = build(ROUTERS.rre!);
  const stats = newSpeculativeStats();
  [...speculativeIds(target, PROMPTS[3]!, 0, { ...greedy, maxTokens: 20, draftTokens: 4, adaptive: false }, { kind: "ngram" }, stats)];
  assert.ok(stats.proposed > 0 && stats.steps < 20, `ngram: ${JSON.stringify(stats)}`);
  const self = newSpeculativeStats();
  [...speculativeIds(target, PROMPTS[0]!, 0, { ...greedy, maxTokens: 20, draftTokens: 4, adaptive: false }, { kind: "model", model: target, domain: 0 }, self)];
  // Each step keeps 4 drafts and adds one: 20 tokens in 4 steps (the last drafts only to the 20th).
  assert.equal(self.steps, 4);
  assert.equal(self.accepted, self.proposed);
});

test("stop id and maxTokens end speculative decoding where plain decoding ends", () => {
  const target = build(ROUTERS.moge!);
  const plain = [...generateIds(target, PROMPTS[2]!, 0, { ...greedy, maxTokens: 30 })];
  const stopId = plain[6]!;
  const cut = plain.slice(0, plain.indexOf(stopId));
  assert.deepEqual([...speculativeIds(target, PROMPTS[2]!, 0, { ...greedy, stopId, maxTokens: 30, draftTokens: 4 }, { kind: "model", model: target, domain: 0 })], cut);
  for (const n of [1, 2, 5, 7]) assert.deepEqual([...speculativeIds(target, PROMPTS[2]!, 0, { ...greedy, maxTokens: n, draftTokens: 4 }, { kind: "ngram" })], plain.slice(0, n));
});

test("the cache rollback leaves no trace: logits after a rejected token equal a fresh run over the kept context", () => {
  for (const router of [null, ROUTERS.topk!]) {
    const m = build(router);
    const run = (ids: number[], cache = m.newCache(1)) => noGrad(() => m.forward({ tokens: Int32Array.from(ids), domains: Int32Array.of(0), B: 1, T: ids.length }, cache));
    const cache = m.newCache(1);
    run([1, 2, 3, 4], cache);
    run([5, 6, 7, 8], cache); // 5 kept, 6 7 8 rejected
    truncateCache(cache, 5);
    assert.equal(cache.length, 5);
    const after = run([9, 10], cache).logits.data;
    const fresh = run([1, 2, 3, 4, 5, 9, 10]).logits.data;
    const last = fresh.subarray(5 * V);
    assert.equal(after.length, last.length);
    for (let i = 0; i < after.length; i++) assert.ok(Math.abs(after[i]! - last[i]!) < 1e-4, `${i}: ${after[i]} vs ${last[i]}`);
  }
  assert.throws(() => truncateCache(build(null).newCache(1), 1), RangeError);
});

/** Pearson's chi-square of counts against probabilities. */
function chiSquare(counts: number[], p: ArrayLike<number>, n: number): number {
  let x = 0;
  for (let i = 0; i < counts.length; i++) if (p[i]! > 0) x += (counts[i]! - n * p[i]!) ** 2 / (n * p[i]!);
  else assert.equal(counts[i], 0, `token ${i} has probability 0 but was drawn`);
  return x;
}

test("the accept/reject rule gives the target's distribution for a model draft and a point-mass draft", () => {
  const rng = new Rng(7);
  const norm = (w: number[]) => Float64Array.from(w, (x) => x / w.reduce((a, b) => a + b, 0));
  // p and q disagree a lot; q puts mass where p has none.
  const p = norm([0.4, 0.3, 0.15, 0.1, 0.05, 0]);
  const q = norm([0.05, 0.1, 0.2, 0.3, 0.05, 0.3]);
  const n = 40000;
  const counts = new Array(6).fill(0);
  const qCounts = new Array(6).fill(0);
  for (let t = 0; t < n; t++) {
    // x ~ q
    let u = rng.uniform();
    let x = 0;
    while (x < 5 && (u -= q[x]!) >= 0) x++;
    counts[acceptOrResample(p, q, x, rng).token]++;
    qCounts[x]++;
  }
  // df 4 (one impossible token): 18.5 is the 0.1% point. Draws without the rule (x itself) are far off.
  assert.ok(chiSquare(counts, p, n) < 18.5, `model draft: chi-square ${chiSquare(counts, p, n)}`);
  assert.ok(chiSquare(qCounts.slice(0, 5), p, n) > 1000);
  for (const x of [0, 3, 5]) {
    const c = new Array(6).fill(0);
    for (let t = 0; t < n; t++) c[acceptOrResample(p, null, x, rng).token]++;
    assert.ok(chiSquare(c, p, n) < 18.5, `point mass on ${x}: chi-square ${chiSquare(c, p, n)}`);
  }
});

test("samplingDistribution is what sampleToken draws from (temperature, top-k, top-p)", () => {
  const logits = Float32Array.from([1.5, -0.2, 0.7, 2.1, 0.7, -3, 0.1]);
  for (const o of [{ temperature: 1, topK: 0, topP: 1 }, { temperature: 0.7, topK: 4, topP: 1 }, { temperature: 1.3, topK: 0, topP: 0.8 }, { temperature: 1, topK: 5, topP: 0.9 }]) {
    const p = samplingDistribution(logits, o);
    assert.ok(Math.abs(p.reduce((a, b) => a + b, 0) - 1) < 1e-12);
    const rng = new Rng(3);
    const n = 30000;
    const c = new Array(logits.length).fill(0);
    for (let t = 0; t < n; t++) c[sampleToken(logits, o, rng)]++;
    assert.ok(chiSquare(c, p, n) < 22.5, `${JSON.stringify(o)}: chi-square ${chiSquare(c, p, n)}`);
  }
  assert.deepEqual([...samplingDistribution(logits, { temperature: 0, topK: 0, topP: 1 })], [0, 0, 0, 1, 0, 0, 0]);
});

test("at temperature > 0 the first speculated token follows the target's distribution (model and n-gram drafts)", () => {
  const Vs = 7;
  const target = build(ROUTERS.topk!, { vocabSize: Vs });
  // The same seed: the same embeddings and first block, so the draft is near the target but not equal.
  const draftModel = build(null, { vocabSize: Vs });
  const o = { temperature: 1.2, topK: 5, topP: 0.97, stopId: null, maxTokens: 3, draftTokens: 1 };
  const next = (ids: number[]) => samplingDistribution(noGrad(() => target.forward({ tokens: Int32Array.from(ids), domains: Int32Array.of(0), B: 1, T: ids.length })).logits.data.subarray((ids.length - 1) * Vs), o);
  // The first token comes from the prompt's forward, as in plain decoding; the first speculated one is the second:
  // its frequencies where the first was x0, against p(· | prompt, x0) — x0 likely enough to condition on, after
  // which the prompt lookup's proposal is neither sure nor hopeless (the first such prompt of a few repetitive ones).
  const usable = (prompt: number[], x: number, p0: Float64Array) => {
    const y = ngramProposal([...prompt, x], 1)[0];
    return p0[x]! >= 0.1 && y !== undefined && next([...prompt, x])[y]! > 0.05 && next([...prompt, x])[y]! < 0.95;
  };
  let prompt: number[] = [];
  let x0 = -1;
  for (const candidate of [[1, 2, 1, 2, 1], [0, 2, 0, 2, 0], [2, 0, 2, 0, 2], [0, 1, 2, 0, 1, 2], [3, 0, 3, 0, 3], [0, 2, 1, 0, 2, 1, 0]]) {
    const p0 = next(candidate);
    const x = [...p0.keys()].find((t) => usable(candidate, t, p0));
    if (x !== undefined) [prompt, x0] = [candidate, x];
    if (x !== undefined) break;
  }
  assert.ok(x0 >= 0, "a prompt and a first token to condition on");
  const p = next([...prompt, x0]);
  for (const draft of [{ kind: "model", model: draftModel, domain: 0 }, { kind: "ngram" }] as Draft[]) {
    const counts = new Array(Vs).fill(0);
    const stats = newSpeculativeStats();
    let n = 0;
    for (let seed = 1; n < 1000 && seed <= 20000; seed++) {
      const gen = speculativeIds(target, prompt, 0, { ...o, seed }, draft, stats);
      if (gen.next().value !== x0) continue;
      counts[gen.next().value as number]++;
      n++;
    }
    assert.equal(n, 1000);
    // df ≤ 4: 18.5 is the 0.1% point.
    assert.ok(chiSquare(counts, p, n) < 18.5, `${draft.kind}: chi-square ${chiSquare(counts, p, n)}, counts ${counts}, p ${[...p].map((x) => x.toFixed(3))}`);
    assert.ok(stats.accepted > 0 && stats.accepted < stats.proposed, `${draft.kind}: some drafts kept, some rejected: ${JSON.stringify(stats)}`);
  }
});

test("n-gram proposals: the tokens after the most recent earlier occurrence of the longest suffix", () => {
  assert.deepEqual(ngramProposal([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3], 3), [7, 5, 1]);
  // Past the context's end the copy repeats itself: the period-5 pattern 7 5 1 2 3 goes on.
  assert.deepEqual(ngramProposal([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3], 10), [7, 5, 1, 2, 3, 7, 5, 1, 2, 3]);
  assert.deepEqual(ngramProposal([8, 4, 6, 4, 6, 4, 6], 5), [4, 6, 4, 6, 4]);
  assert.deepEqual(ngramProposal([4, 2, 3, 8, 5, 3], 2), [8, 5], "a 1-token suffix when no longer one occurred");
  assert.deepEqual(ngramProposal([4, 2, 3, 3], 3), [3, 3, 3]);
  assert.deepEqual(ngramProposal([1, 2, 3], 4), []);
  assert.deepEqual(ngramProposal([6], 4), []);
});

test("a draft model with another vocabulary and bad draft settings are refused", () => {
  const target = build(null);
  const other = build(null, { vocabSize: V + 1 });
  assert.throws(() => [...speculativeIds(target, [1, 2], 0, { ...greedy, maxTokens: 3, draftTokens: 2 }, { kind: "model", model: other, domain: 0 })], (e: unknown) => e instanceof SigmaError && /vocabulary \(30 tokens\) is not the target's \(29/.test(e.message));
  assert.throws(() => [...speculativeIds(target, [1, 2], 0, { ...greedy, maxTokens: 3, draftTokens: 0 }, { kind: "ngram" })], (e: unknown) => e instanceof SigmaError && /draft tokens/.test(e.message));
});

test("Model.generate and sigma generate take a draft: the same greedy text, the acceptance reported, another tokenizer refused", async () => {
  const { mkdtempSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const { spawnSync } = await import("node:child_process");
  const { WordCounter, trainBpe } = await import("../src/tokenizer/trainer.js");
  const { Model, openModel } = await import("../src/api/model.js");
  const dir = mkdtempSync(join(tmpdir(), "sigma-spec-"));
  try {
    const wc = new WordCounter();
    wc.add("the cat sat on the mat and the dog sat on the log. ".repeat(5));
    const tok = trainBpe(wc, { vocabSize: 280, domains: ["en"], langs: [] });
    const make = (vocabSize: number, seed: number, sparse: boolean) =>
      new PanguSigma(parseModelConfig({ vocabSize, width: 16, heads: 2, denseLayers: 1, sparseLayers: sparse ? 1 : 0, seqLen: 64, ffnWidth: 24, seed, initStd: 0.5, domains: [{ name: "en", group: 0 }], ...(sparse ? { experts: { count: 4, width: 8, router: ROUTERS.topk! } } : {}) }));
    const target = new Model(make(tok.vocabSize, 3, true), tok, null, 0, null);
    const small = new Model(make(tok.vocabSize, 5, false), tok, null, 0, null);
    const targetPath = target.save(join(dir, "target"));
    const draftPath = small.save(join(dir, "draft"));
    const prompt = "the cat sat on the mat and the dog sat on the";
    const o = { temperature: 0, maxTokens: 16 };
    const plain = await target.complete(prompt, o);
    const stats = newSpeculativeStats();
    assert.equal(await target.complete(prompt, { ...o, draft: "ngram", draftTokens: 3, draftStats: stats }), plain);
    assert.ok(stats.proposed > 0);
    assert.equal(await target.complete(prompt, { ...o, draft: small }), plain);
    const wc2 = new WordCounter();
    wc2.add("quick brown foxes jump over lazy dogs; quick brown foxes. ".repeat(5));
    const bigTok = trainBpe(wc2, { vocabSize: 300, domains: ["en"], langs: [] });
    assert.notEqual(bigTok.vocabSize, tok.vocabSize);
    const alien = new Model(make(bigTok.vocabSize, 5, false), bigTok, null, 0, null);
    await assert.rejects(target.complete(prompt, { ...o, draft: alien }), (e: unknown) => e instanceof SigmaError && /vocabulary/.test(e.message));
    const alienPath = alien.save(join(dir, "alien"));
    assert.equal((await openModel(targetPath)).config.vocabSize, tok.vocabSize);

    const cli = (...args: string[]) => spawnSync(process.execPath, ["--import", "tsx", join(import.meta.dirname, "..", "src", "cli", "main.ts"), "generate", "--ckpt", targetPath, "--prompt", prompt, "--temperature", "0", "--max-tokens", "16", ...args], { encoding: "utf8", env: { ...process.env, SIGMA_TUNE: "off" } });
    for (const args of [["--draft", "ngram"], ["--draft", draftPath, "--draft-tokens", "2"]]) {
      const r = cli(...args);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, `${prompt}${plain}\n`, args.join(" "));
      assert.match(r.stderr, /draft: \d+ of \d+ proposed tokens accepted/);
    }
    const bad = cli("--draft", alienPath);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /^sigma: the draft model's vocabulary \(\d+ tokens\) is not the target's/);
    assert.doesNotMatch(bad.stderr, /\n\s+at /, "no stack trace");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
