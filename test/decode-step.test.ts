// The decode step (src/models/decode-step.ts): PanguSigma.forward through a KV
// cache with stored weights, on reused buffers. Its logits, routings and cache
// contents equal the general forward's (to f32 rounding) for every router,
// every weight format, one and several sequences, one and several new
// positions, two embedding slots, PanGu's block and the Llama / Qwen family's;
// it declines what it does not cover.
import { test } from "node:test";
import assert from "node:assert/strict";
import { noGrad } from "../src/autograd/tape.js";
import { WEIGHT_FORMATS } from "../src/backend/quant.js";
import { kernelPathSetting, loadNative } from "../src/backend/native/index.js";
import type { RouterConfig } from "../src/models/config.js";
import { decodeStep, useDecodeStep } from "../src/models/decode-step.js";
import { PanguSigma, type ModelCache } from "../src/models/pangu-sigma.js";
import { encodeStoredModel, quantizeModel } from "../src/models/quantize.js";
import { Rng } from "../src/util/rng.js";
import { decodeTestModel, V } from "./decode-fixture.js";
import type { KVCache, LayerCache } from "../src/nn/attention.js";

const ROUTERS: Record<string, RouterConfig | null> = {
  dense: null,
  rre: { kind: "rre", groups: 2, seed: 4 },
  moge: { kind: "moge", groups: 2, perGroup: 2, auxLossCoef: 0.01, sharedExperts: 1 },
  topk: { kind: "topk", k: 2, renormalize: true, auxLossCoef: 0.01, zLossCoef: 0, capacityFactor: null },
};

/** A model with random biases and norm parameters too (they start at 0 and 1: a missing add would go unseen). */
const build = (router: RouterConfig | null, extra: Record<string, unknown> = {}): PanguSigma =>
  decodeTestModel({ router, denseLayers: 1, sparseLayers: 2, seqLen: 32, jitter: 0.2 }, extra);

/** Logits and routing counts of `steps` forwards of T positions per sequence after a prompt, with the decode step on or off. */
function run(model: PanguSigma, on: boolean, B: number, T: number, steps: number): { logits: Float32Array[]; counts: number[][]; cache: ModelCache } {
  const was = useDecodeStep(on);
  try {
    const rng = new Rng(9);
    const domains = Int32Array.from({ length: B }, (_, b) => b % 2);
    const cache = model.newCache(B);
    noGrad(() => model.forward({ tokens: Int32Array.from({ length: B * 5 }, () => rng.int(V)), domains, B, T: 5 }, cache));
    const logits: Float32Array[] = [];
    const counts: number[][] = [];
    for (let s = 0; s < steps; s++) {
      const out = noGrad(() => model.forward({ tokens: Int32Array.from({ length: B * T }, () => rng.int(V)), domains, B, T }, cache));
      logits.push(Float32Array.from(out.logits.data));
      counts.push(out.routings.flatMap((r) => Array.from(r.counts)));
    }
    return { logits, counts, cache };
  } finally {
    useDecodeStep(was);
  }
}

/** An f32 cache's keys (these tests run f32 caches). */
const f32Keys = (l: LayerCache): Float32Array => (l as KVCache).k.data as Float32Array;

function close(where: string, a: Float32Array, b: Float32Array, tol = 1e-5): void {
  assert.equal(a.length, b.length, where);
  let scale = 0;
  for (const v of b) scale = Math.max(scale, Math.abs(v));
  for (let i = 0; i < a.length; i++) {
    if (!(Math.abs(a[i]! - b[i]!) <= tol * (1 + scale))) assert.fail(`${where}: [${i}] ${a[i]} vs ${b[i]}`);
  }
}

/**
 * Runs fn with q8 and q4 on the f32-dequantizing decode kernels. The integer
 * kernels quantize each group of a product's inputs to int8; forward and the
 * step differ in the last bits of some inputs (the step fuses bias and
 * residual adds), and a last-bit difference can move an input across an int8
 * rounding boundary: a jump of a whole quantization step, which the next
 * layers carry (a top-k router's weights, then the logits, by ~1%), not a
 * rounding error. So forward and the step are compared where both compute in
 * f32 throughout; the integer kernels are held to their twin in
 * decode-kernels.test.ts, and the k + 1 rows test below runs them (there the
 * rows' inputs are the same bits). Without the addon the TypeScript twin has
 * only the integer products, and the comparison holds there for these seeds
 * alone.
 */
function onF32Kernels(fn: () => void): void {
  const addon = loadNative().backend as unknown as { setDecodeIntRows(rows: number): void } | null;
  addon?.setDecodeIntRows(0);
  try {
    fn();
  } finally {
    addon?.setDecodeIntRows(-1);
  }
}

test("decode step: the general forward's logits, routings and cache, every router and format, B 1 and 3, T 1 and 4", () => onF32Kernels(() => {
  for (const [name, router] of Object.entries(ROUTERS)) {
    for (const format of WEIGHT_FORMATS) {
      const model = build(router);
      quantizeModel(model, format);
      for (const [B, T] of [[1, 1], [3, 1], [1, 4], [2, 3]] as const) {
        const where = `${name} ${format} B=${B} T=${T}`;
        const fast = run(model, true, B, T, 4);
        const slow = run(model, false, B, T, 4);
        fast.logits.forEach((l, s) => close(`${where} step ${s}`, l, slow.logits[s]!));
        assert.deepEqual(fast.counts, slow.counts, `${where}: routings`);
        assert.equal(fast.cache.length, slow.cache.length);
        fast.cache.layers.forEach((l, i) => {
          assert.equal(l.length, slow.cache.layers[i]!.length, `${where}: layer ${i} cache length`);
          close(`${where} layer ${i} keys`, f32Keys(l), f32Keys(slow.cache.layers[i]!));
        });
        close(`${where} query layer values`, (fast.cache.query as KVCache).v.data as Float32Array, (slow.cache.query as KVCache).v.data as Float32Array);
      }
    }
  }
}));

test("decode step: Llama / Qwen blocks — RMSNorm, rotary positions, grouped heads, q/k norms, SwiGLU, untied output, a gated shared expert — match forward", () => onF32Kernels(() => {
  const variants: [string, RouterConfig | null, Record<string, unknown>][] = [
    // Llama: RMSNorm, rope, GQA (3 query heads on 1 key/value head), SwiGLU, no biases, untied output, no query layer.
    ["llama", ROUTERS.topk!, { norm: "rmsnorm", position: "rope", kvHeads: 1, ffn: "swiglu", ffnBias: false, attentionBias: "none", tiedEmbeddings: false, queryLayer: false }],
    // Qwen3-like: a head size of its own (4 heads of 10 on width 48), q/k norms, q/k/v biases only, 2 key/value heads.
    ["qwen3", ROUTERS.topk!, { norm: "rmsnorm", position: "rope", heads: 4, headDim: 10, kvHeads: 2, qkNorm: true, ffn: "swiglu", attentionBias: "qkv", ropeTheta: 500 }],
    // Qwen2-MoE-like: a shared expert behind a sigmoid gate; and the MoGE router with SwiGLU experts.
    ["shared gate", ROUTERS.topk!, { norm: "rmsnorm", position: "rope", ffn: "swiglu", ffnBias: false, experts: { count: 4, width: 24, sharedWidth: 32, sharedGate: true, router: ROUTERS.topk! } }],
    ["moge swiglu", ROUTERS.moge!, { ffn: "swiglu", position: "rope" }],
    ["dense rmsnorm", null, { norm: "rmsnorm", ffn: "swiglu" }],
  ];
  for (const [name, router, extra] of variants) {
    for (const format of ["q8", "bf16", "f32"] as const) {
      const model = build(router, extra);
      quantizeModel(model, format);
      // It is this step that runs (not forward behind a decline).
      const probe = model.newCache(1);
      noGrad(() => model.forward({ tokens: Int32Array.of(1, 2), domains: Int32Array.of(0), B: 1, T: 2 }, probe));
      assert.ok(noGrad(() => decodeStep(model, { tokens: Int32Array.of(3), domains: Int32Array.of(0), B: 1, T: 1 }, probe)), `${name} ${format}: the decode step covers it`);
      for (const [B, T] of [[1, 1], [3, 1], [2, 3]] as const) {
        const where = `${name} ${format} B=${B} T=${T}`;
        const fast = run(model, true, B, T, 4);
        const slow = run(model, false, B, T, 4);
        fast.logits.forEach((l, s) => close(`${where} step ${s}`, l, slow.logits[s]!));
        assert.deepEqual(fast.counts, slow.counts, `${where}: routings`);
        fast.cache.layers.forEach((l, i) => close(`${where} layer ${i} keys`, f32Keys(l), f32Keys(slow.cache.layers[i]!)));
      }
    }
  }
}));

/** The vector kernel paths this CPU runs, within the SIGMA_KERNEL_PATH cap (the portable path sums in other orders). */
function vectorPaths(addon: NonNullable<ReturnType<typeof loadNative>["backend"]>): ("auto" | "avx2-fma")[] {
  const features = addon.cpuFeatures();
  const cap = kernelPathSetting().path;
  return [...(cap === "auto" && features.avx512f ? ["auto" as const] : []), ...(cap !== "portable" && features.avx2 && features.fma ? ["avx2-fma" as const] : [])];
}

test("decode step: a step of k + 1 positions gives each position the bits k + 1 one-position steps give (a speculative verification is plain decoding), every router and format, AVX-512 and AVX2", () => {
  const addon = loadNative().backend;
  if (!addon) return; // the TypeScript backend: no kernel paths to visit (its products are plain loops)
  const cap = kernelPathSetting().path;
  try {
    for (const path of vectorPaths(addon)) {
      addon.setKernelPath(path);
      for (const [name, router, extra] of [
        ["topk", ROUTERS.topk!, {}],
        ["moge", ROUTERS.moge!, {}],
        ["rre", ROUTERS.rre!, {}],
        ["llama", ROUTERS.topk!, { norm: "rmsnorm", position: "rope", kvHeads: 1, ffn: "swiglu", ffnBias: false, attentionBias: "none", tiedEmbeddings: false, queryLayer: false }],
      ] as [string, RouterConfig, Record<string, unknown>][]) {
        for (const format of WEIGHT_FORMATS) {
          const model = build(router, extra);
          quantizeModel(model, format);
          const prompt = { tokens: Int32Array.of(3, 9, 27, 4), domains: Int32Array.of(1), B: 1, T: 4 };
          const next = Int32Array.of(11, 30, 2, 8, 19);
          const [one, all] = [model.newCache(1), model.newCache(1)];
          noGrad(() => [one, all].forEach((c) => model.forward(prompt, c)));
          const V = model.config.vocabSize;
          const together = noGrad(() => model.forward({ tokens: next, domains: Int32Array.of(1), B: 1, T: next.length }, all)).logits.data;
          next.forEach((tok, t) => {
            const alone = noGrad(() => model.forward({ tokens: Int32Array.of(tok), domains: Int32Array.of(1), B: 1, T: 1 }, one)).logits.data;
            assert.deepEqual(alone, together.subarray(t * V, (t + 1) * V), `${path} ${name} ${format}: position ${t}`);
          });
        }
      }
    }
  } finally {
    addon.setKernelPath(cap);
  }
});

test("router gates on a wide model: x·Wᵀ of one row and of 9–16 rows give each row the same bits (a verification of 9+ positions routes as its one-position steps)", () => {
  const addon = loadNative().backend;
  if (!addon) return;
  const rng = new Rng(5);
  const rand = (n: number) => Float32Array.from({ length: n }, () => rng.uniform() - 0.5);
  const cap = kernelPathSetting().path;
  try {
    for (const path of vectorPaths(addon)) {
      addon.setKernelPath(path);
      for (const [E, K, M] of [[8, 1024, 12], [64, 2048, 16], [4, 4096, 9]] as const) {
        const w = rand(E * K);
        const x = rand(M * K);
        const all = new Float32Array(M * E);
        addon.matmul(all, x, w, M, E, K, false, true, false);
        for (let r = 0; r < M; r++) {
          const one = new Float32Array(E);
          addon.matmul(one, x.subarray(r * K, (r + 1) * K), w, 1, E, K, false, true, false);
          assert.deepEqual(one, all.subarray(r * E, (r + 1) * E), `${path} E=${E} K=${K}: row ${r} of ${M}`);
        }
      }
    }
  } finally {
    addon.setKernelPath(cap);
  }
});

test("decode step: two embedding slots (rows grouped by slot for the output product)", () => {
  const model = build(ROUTERS.topk!, { embeddingSlots: 2 });
  quantizeModel(model, "q8");
  const fast = run(model, true, 3, 2, 3);
  const slow = run(model, false, 3, 2, 3);
  fast.logits.forEach((l, s) => close(`slots step ${s}`, l, slow.logits[s]!));
  // Rows already in slot order (domains 0, 1 for B = 2; one sequence): the product writes the logits directly.
  for (const B of [1, 2]) {
    const inOrder = run(model, true, B, 2, 2);
    run(model, false, B, 2, 2).logits.forEach((l, s) => close(`B=${B} slots in order, step ${s}`, inOrder.logits[s]!, l));
  }
});

test("decode step: it runs where it should and declines the rest (f32 products, gradients, prefill past 16 rows)", () => {
  const model = build(ROUTERS.topk!);
  const cache = model.newCache(1);
  const input = { tokens: Int32Array.of(1), domains: Int32Array.of(0), B: 1, T: 1 };
  assert.equal(noGrad(() => decodeStep(model, input, cache)), null, "no stored weights: the ordinary f32 products");
  quantizeModel(model, "q8");
  assert.ok(noGrad(() => decodeStep(model, input, cache)), "stored weights, one position");
  assert.equal(cache.length, 1);
  assert.equal(decodeStep(model, input, cache), null, "gradients on");
  assert.equal(noGrad(() => decodeStep(model, { tokens: new Int32Array(17), domains: Int32Array.of(0), B: 1, T: 17 }, cache)), null, "17 rows: prefill");
  assert.equal(noGrad(() => decodeStep(model, { tokens: Int32Array.of(V), domains: Int32Array.of(0), B: 1, T: 1 }, cache)), null, "a bad token: forward names it");
  assert.equal(cache.length, 1, "a declined call leaves the cache alone");
});

test("decode step: q, k, v as one product — the stored file is unchanged, and a model converted again is fused again", () => {
  const model = build(ROUTERS.moge!);
  quantizeModel(model, "q8");
  const before = encodeStoredModel(model);
  run(model, true, 1, 1, 2);
  assert.deepEqual(encodeStoredModel(model), before, "the layers' stored matrices are views of the fused one, same bytes");
  quantizeModel(model, "q4");
  const fast = run(model, true, 2, 1, 3);
  const slow = run(model, false, 2, 1, 3);
  fast.logits.forEach((l, s) => close(`q8 then q4, step ${s}`, l, slow.logits[s]!));
});

test("lastOnly: each sequence's last position's logits, as the full forward gives them, on the decode step and on forward's general path", () => {
  for (const stored of [true, false]) {
    const model = build(ROUTERS.rre!, { embeddingSlots: 2 });
    if (stored) quantizeModel(model, "q8");
    const [B, T] = [2, 5];
    const tokens = Int32Array.from({ length: B * T }, (_, i) => (i * 7 + 3) % V);
    const domains = Int32Array.of(0, 1);
    const prompt = (c: ModelCache) => noGrad(() => model.forward({ tokens: Int32Array.from({ length: B * 3 }, (_, i) => (i * 5 + 1) % V), domains, B, T: 3 }, c));
    const [full, last] = [model.newCache(B), model.newCache(B)];
    prompt(full);
    prompt(last);
    const runs = stored ? null : useDecodeStep(false);
    const a = noGrad(() => model.forward({ tokens, domains, B, T }, full)).logits;
    const b = noGrad(() => model.forward({ tokens, domains, B, T, lastOnly: true }, last)).logits;
    if (runs !== null) useDecodeStep(runs);
    assert.deepEqual(b.shape, [B, V]);
    if (!stored) assert.throws(() => model.loss({ tokens, domains, B, T, lastOnly: true }, tokens), /loss: lastOnly computes each sequence's last logits only/);
    assert.equal(last.length, full.length, "every position still enters the cache");
    for (let s = 0; s < B; s++) {
      const want = a.data.subarray((s * T + T - 1) * V, (s * T + T) * V);
      const got = b.data.subarray(s * V, (s + 1) * V);
      for (let v = 0; v < V; v++) assert.ok(Math.abs(got[v]! - want[v]!) <= 1e-5 * (1 + Math.abs(want[v]!)), `${stored ? "decode step" : "forward"}, sequence ${s}, id ${v}: ${got[v]} vs ${want[v]}`);
    }
  }
});
