// The block options (docs/design.md §1.7): RMSNorm, RoPE, grouped-query
// attention, SwiGLU, biases, q/k norms, untied output, shared experts with
// their own width and gate. Each configuration is checked against the plain
// TypeScript reference forward (test/blocks-reference.ts) and by float64
// finite differences through the whole model; then through every path a
// model takes: recompute, the KV cache and its rollback, the server's batched
// step, save/load, stored weights, upcycling and extraction. Configs written
// before the options compute exactly what they did (golden sums below).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseModelConfig, parameterCounts, type ModelConfigInput } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { gradcheck } from "../src/autograd/gradcheck.js";
import { backward, clearTape, noGrad, zeroGrad } from "../src/autograd/tape.js";
import { truncateCache } from "../src/serve/speculative.js";
import { attentionLayers, forwardBatch } from "../src/serve/batch.js";
import type { KVCache } from "../src/nn/attention.js";
import { KVPool } from "../src/serve/kv-pool.js";
import { loadModel, saveModel } from "../src/models/io.js";
import { quantizeModel } from "../src/models/quantize.js";
import { upcycle } from "../src/models/upcycle.js";
import { expertUsage, extractByUsage } from "../src/models/extract.js";
import { SigmaError } from "../src/util/errors.js";
import { referenceLogits } from "./blocks-reference.js";

type Over = Partial<ModelConfigInput>;
const base: ModelConfigInput = { vocabSize: 23, width: 16, heads: 4, denseLayers: 1, sparseLayers: 1, seqLen: 24, ffnWidth: 12, domains: [{ name: "en" }], initStd: 0.25, seed: 5 };

/** Llama/Qwen-style: every option on (top-k without renormalisation and a gated shared expert: Qwen2-MoE's MoE). */
const LLAMA: Over = {
  queryLayer: false, norm: "rmsnorm", position: "rope", ropeTheta: 500, kvHeads: 2, ffn: "swiglu", ffnBias: false, attentionBias: "qkv", qkNorm: true, tiedEmbeddings: false, layerNormEps: 1e-6,
  experts: { count: 4, width: 8, sharedWidth: 10, sharedGate: true, router: { kind: "topk", k: 2, renormalize: false } },
};
const CONFIGS: Record<string, Over> = {
  "llama-like: rmsnorm, rope, GQA, swiglu, no FFN bias, qkv bias, q/k norm, untied, gated shared expert": LLAMA,
  "mixtral-like: renormalised top-2, no biases, multi-query, no shared expert": { ...LLAMA, attentionBias: "none", kvHeads: 1, qkNorm: false, experts: { count: 4, width: 8, router: { kind: "topk", k: 2, renormalize: true } } },
  "pro-moe-like: MoGE with router scale, shared experts from the router, all attention biases": { ...LLAMA, attentionBias: "all", qkNorm: false, tiedEmbeddings: true, experts: { count: 4, width: 6, router: { kind: "moge", groups: 2, sharedExperts: 2 } } },
  "headDim not width/heads (Qwen3), two slots": { ...LLAMA, headDim: 6, embeddingSlots: 2, domains: [{ name: "en" }, { name: "code", slot: 1 }] },
  "rope with the query layer, layernorm, gelu with biases": { position: "rope", kvHeads: 2, experts: { count: 3, router: { kind: "topk", k: 2 } } },
  "rmsnorm and swiglu with learned positions, tied": { norm: "rmsnorm", ffn: "swiglu", attentionBias: "none", experts: { count: 2, router: { kind: "topk", k: 1, renormalize: false } } },
};

function build(over: Over, dtype: "float32" | "float64" = "float64"): PanguSigma {
  const m = new PanguSigma(parseModelConfig({ ...base, ...over }), dtype);
  m.eval();
  return m;
}

const TOKENS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7];

function logitsOf(m: PanguSigma, tokens: number[], domain = 0): Float64Array {
  return Float64Array.from(noGrad(() => m.forward({ tokens: Int32Array.from(tokens), domains: Int32Array.of(domain), B: 1, T: tokens.length })).logits.data);
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
}

for (const [name, over] of Object.entries(CONFIGS)) {
  test(`block options ${name}: the forward equals the plain reference, and the parameter count the config's`, () => {
    const m = build(over);
    const domain = m.config.domains.length - 1;
    const got = logitsOf(m, TOKENS, domain);
    const want = referenceLogits(m, TOKENS, domain);
    assert.ok(maxDiff(got, Float64Array.from(want.flatMap((r) => [...r]))) < 1e-9, `${name}: logits differ from the reference`);
    assert.equal(m.parameterCount(), parameterCounts(m.config).total);
  });
}

test("block options: float64 gradients through the whole model match finite differences", () => {
  const m = build(LLAMA);
  m.train();
  const named = m.namedParameters();
  const pick = ["blocks.0.attn.q.weight", "blocks.0.attn.k.bias", "blocks.0.attn.qNorm.gamma", "blocks.0.attn.kNorm.gamma", "blocks.0.ln1.gamma", "blocks.0.ffn.fc3.weight", "blocks.1.moe.w3", "blocks.1.moe.w1", "blocks.1.moe.sharedGate.weight", "blocks.1.moe.shared.fc3.weight", "blocks.1.moe.router.weight", "finalNorm.gamma", "outputEmbedding", "tokenEmbedding"];
  const inputs = pick.map((n) => named.get(n)!.tensor);
  const tokens = Int32Array.from(TOKENS.slice(0, 12));
  const targets = Int32Array.from(TOKENS.slice(1, 13));
  const res = gradcheck(() => m.loss({ tokens, domains: Int32Array.of(0, 0), B: 2, T: 6 }, targets).loss, inputs, { maxPerInput: 6, rtol: 1e-4, atol: 1e-6 });
  assert.ok(res.checked > 0);
  assert.ok(res.ok, `worst ${res.worst.toExponential(2)} at ${res.where} (inputs: ${pick.join(", ")})`);
});

test("block options: recomputed blocks give the same loss and gradients", () => {
  const grads = (recompute: boolean) => {
    const m = build(LLAMA, "float32");
    m.train();
    m.recompute = recompute;
    const { loss } = m.loss({ tokens: Int32Array.from(TOKENS.slice(0, 12)), domains: Int32Array.of(0, 0), B: 2, T: 6 }, Int32Array.from(TOKENS.slice(1, 13)));
    backward(loss);
    clearTape();
    const out = [loss.data[0]!, ...m.parameters().map((p) => Array.from(p.grad?.data ?? []))];
    zeroGrad(m.parameters());
    return out;
  };
  assert.deepEqual(grads(true), grads(false));
});

test("block options: decoding with the KV cache (rope offset by the cache length) gives the full forward's logits; the cache holds kvHeads", () => {
  for (const over of [LLAMA, CONFIGS["rope with the query layer, layernorm, gelu with biases"]!]) {
    const m = build(over);
    const full = logitsOf(m, TOKENS);
    const V = m.config.vocabSize;
    const cache = m.newCache(1);
    const D = m.blocks[0]!.attn.headDim;
    assert.equal((cache.layers[0] as KVCache).k.dim(2), (m.config.kvHeads ?? m.config.heads) * D);
    const parts: number[] = [];
    const feed = (ids: number[]) => parts.push(...noGrad(() => m.forward({ tokens: Int32Array.from(ids), domains: Int32Array.of(0), B: 1, T: ids.length }, cache)).logits.data);
    feed(TOKENS.slice(0, 5));
    for (let t = 5; t < TOKENS.length; t++) feed([TOKENS[t]!]);
    assert.equal(parts.length, TOKENS.length * V);
    assert.ok(maxDiff(parts, full) < 1e-10, "cached decoding differs from the full forward");
  }
});

test("block options: speculative rollback (truncateCache) then other tokens equals a fresh forward", () => {
  const m = build(LLAMA);
  const cache = m.newCache(1);
  const feed = (ids: number[]) => Float64Array.from(noGrad(() => m.forward({ tokens: Int32Array.from(ids), domains: Int32Array.of(0), B: 1, T: ids.length }, cache)).logits.data);
  feed([3, 1, 4, 1, 5, 9]);
  truncateCache(cache, 3);
  const after = feed([7, 7, 2]);
  const fresh = logitsOf(m, [3, 1, 4, 7, 7, 2]).subarray(3 * 23);
  assert.ok(maxDiff(after, fresh) < 1e-10);
});

test("block options: the server's batched step (paged KV pool of kvHeads) gives each sequence its own forward's logits", () => {
  for (const over of [LLAMA, CONFIGS["headDim not width/heads (Qwen3), two slots"]!]) {
    const m = build(over);
    const attn = m.blocks[0]!.attn;
    const pool = new KVPool(attentionLayers(m), attn.kvWidth, 4, 16, "float64");
    const a = pool.open(TOKENS.length)!, b = pool.open(8)!;
    const V = m.config.vocabSize;
    const got: number[][] = [[], []];
    // Step 1: a's prompt chunk and b's prompt; then one token each per step.
    let out = forwardBatch(m, pool, [{ seq: a, tokens: TOKENS.slice(0, 4), domain: 0, logits: true }, { seq: b, tokens: [2, 7, 1], domain: 0, logits: true }]);
    got[0]!.push(...out[0]!);
    got[1]!.push(...out[1]!);
    for (let t = 4; t < 7; t++) {
      out = forwardBatch(m, pool, [{ seq: a, tokens: [TOKENS[t]!], domain: 0, logits: true }, { seq: b, tokens: [TOKENS[t + 3]!], domain: 0, logits: true }]);
      got[0]!.push(...out[0]!);
      got[1]!.push(...out[1]!);
    }
    const fa = logitsOf(m, TOKENS.slice(0, 7));
    const fb = logitsOf(m, [2, 7, 1, ...TOKENS.slice(7, 10)]);
    assert.ok(maxDiff(got[0]!, fa.subarray(3 * V)) < 1e-10, "sequence a");
    assert.ok(maxDiff(got[1]!, fb.subarray(2 * V)) < 1e-10, "sequence b");
  }
});

test("block options: save and load keep every option and compute the same logits", () => {
  const dir = mkdtempSync(join(tmpdir(), "sigma-blocks-"));
  for (const [i, over] of Object.values(CONFIGS).entries()) {
    const m = build(over, "float32");
    const path = join(dir, `m${i}.safetensors`);
    saveModel(m, path);
    const back = loadModel(path);
    back.eval();
    assert.deepEqual(back.config, m.config);
    assert.deepEqual(logitsOf(back, TOKENS), logitsOf(m, TOKENS));
  }
});

test("block options: stored weights (f32 and bf16 through the decode kernels) include w3, fc3 and the untied output", () => {
  const m = build(LLAMA, "float32");
  const want = logitsOf(m, TOKENS);
  quantizeModel(m, "f32");
  assert.ok(m.blocks[1]!.moe!.stored?.w3, "the experts' w3 is stored");
  assert.ok(m.storedOutput && m.storedOutput.rows === 23, "the output table is stored");
  assert.ok(maxDiff(logitsOf(m, TOKENS), want) < 1e-4);
  const q = build(LLAMA, "float32");
  quantizeModel(q, "bf16");
  assert.ok(maxDiff(logitsOf(q, TOKENS), want) < 0.05);
});

test("block options: upcycling a dense SwiGLU/RoPE/GQA model copies fc3 into w3 and keeps its function; mismatched options are refused", () => {
  const denseOver: Over = { ...LLAMA, sparseLayers: 0, denseLayers: 2, experts: undefined };
  const dense = build(denseOver);
  const sparseCfg = parseModelConfig({ ...base, ...LLAMA, denseLayers: 1, sparseLayers: 1, experts: { count: 3, router: { kind: "topk", k: 2, renormalize: true } } });
  const sparse = upcycle(dense, sparseCfg);
  sparse.eval();
  assert.ok(maxDiff(logitsOf(sparse, TOKENS), logitsOf(dense, TOKENS)) < 1e-9);
  assert.throws(() => upcycle(dense, parseModelConfig({ ...base, ...LLAMA, kvHeads: 4, experts: { count: 3, router: { kind: "topk", k: 2 } } })), (e: unknown) => e instanceof SigmaError && /kvHeads/.test(e.message));
});

test("block options: extraction by usage keeps w3 and the untied output rows", () => {
  const m = build(LLAMA);
  const usage = expertUsage(m, [{ tokens: Int32Array.from(TOKENS), domains: Int32Array.of(0), B: 1, T: TOKENS.length }]);
  const sub = extractByUsage(m, "en", usage, 2);
  assert.equal(sub.blocks[1]!.moe!.w3!.dim(0), 2);
  assert.deepEqual(Array.from(sub.outputEmbedding!.data), Array.from(m.outputEmbedding!.data));
});

test("block options: ECSS refuses SwiGLU or bias-free experts, naming why", () => {
  assert.throws(() => new PanguSigma(parseModelConfig({ ...base, ...LLAMA }), "float32", { externalExperts: {} }), (e: unknown) => e instanceof SigmaError && /SwiGLU/.test(e.message));
});

test("block options: config errors name the field", () => {
  const bad = (over: Over, field: RegExp) => assert.throws(() => parseModelConfig({ ...base, ...over }), (e: unknown) => e instanceof SigmaError && field.test(e.message));
  bad({ kvHeads: 3 }, /kvHeads/);
  bad({ position: "rope", heads: 16, width: 16 }, /even head size/);
  bad({ experts: { count: 2, sharedGate: true, router: { kind: "topk", k: 1, renormalize: false } } }, /sharedGate/);
  bad({ norm: "batchnorm" as "rmsnorm" }, /norm/);
});

// Checksums of logits computed before the block options existed (the commit
// before them, float64, reference backend): default configs must compute
// exactly what they did, parameter for parameter.
test("configs without the block options compute exactly what they did before them", () => {
  const configs: Record<string, { cfg: ModelConfigInput; sum: number; params: number }> = {
    moge: { cfg: { vocabSize: 19, width: 8, heads: 2, denseLayers: 1, sparseLayers: 1, seqLen: 8, ffnWidth: 6, domains: [{ name: "en" }, { name: "zh", slot: 1 }], embeddingSlots: 2, experts: { count: 4, router: { kind: "moge", groups: 2, sharedExperts: 1 } }, initStd: 0.3 }, sum: 119.42982329985014, params: 2214 },
    topk: { cfg: { vocabSize: 19, width: 8, heads: 2, denseLayers: 0, sparseLayers: 2, seqLen: 8, ffnWidth: 6, domains: [{ name: "en" }], experts: { count: 3, width: 5, router: { kind: "topk", k: 2 } }, initStd: 0.3 }, sum: 8.5580109244091673, params: 1972 },
    rre: { cfg: { vocabSize: 19, width: 8, heads: 4, denseLayers: 1, sparseLayers: 1, seqLen: 8, ffnWidth: 6, domains: [{ name: "en", group: 0 }, { name: "zh", group: 1 }], embeddingSlots: 1, experts: { count: 4, router: { kind: "rre", groups: 2, seed: 3 } }, initStd: 0.3, activation: "gelu_tanh" }, sum: 90.156879227974514, params: 1916 },
  };
  for (const [name, { cfg, sum, params }] of Object.entries(configs)) {
    const m = new PanguSigma(parseModelConfig(cfg), "float64");
    m.eval();
    const tokens = Int32Array.from([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]);
    const d = noGrad(() => m.forward({ tokens, domains: Int32Array.from(cfg.domains.length > 1 ? [0, 1] : [0, 0]), B: 2, T: 6 })).logits.data;
    let s = 0;
    for (let i = 0; i < d.length; i++) s += d[i]! * ((i % 7) + 1);
    assert.equal(s, sum, `${name}: logits changed`);
    assert.equal(m.parameterCount(), params, `${name}: parameters changed`);
  }
});
