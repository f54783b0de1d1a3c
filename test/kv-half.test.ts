// The f16 KV cache (docs/decode.md): the f16 conversions on every kernel
// path against the TypeScript definition, bit for bit; attention over f16
// keys and values equal to attention over their f32 values, bit for bit (a
// decode row across the 8-key chunks, grouped heads, runs of heads, a prompt's blocks);
// a model decoding through f16 caches (forward's general path, the decode
// step, speculative decoding) and the server's f16 pool.
import { test } from "node:test";
import assert from "node:assert/strict";
import { kernelPathSetting, loadNative } from "../src/backend/native/index.js";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { halfBits, halfValue } from "../src/backend/quant.js";
import { noGrad } from "../src/autograd/tape.js";
import { parseModelConfig, type ModelConfigInput } from "../src/models/config.js";
import { decodeStepRuns, useDecodeStep } from "../src/models/decode-step.js";
import { PanguSigma, type ModelCache } from "../src/models/pangu-sigma.js";
import { quantizeModel } from "../src/models/quantize.js";
import type { HalfKVCache, KVCache } from "../src/nn/attention.js";
import { generateIds } from "../src/serve/generate.js";
import { KVPool } from "../src/serve/kv-pool.js";
import { openModelSource } from "../src/serve/open.js";
import { argmax } from "../src/serve/sampling.js";
import { speculativeIds } from "../src/serve/speculative.js";
import { Rng } from "../src/util/rng.js";
import { SigmaError } from "../src/util/errors.js";
import { decodeAll, type Job } from "./serve-fixture.js";

const load = loadNative();
const native = load.backend!;
const skip = !load.backend && process.env.SIGMA_ALLOW_NO_NATIVE === "1" ? `native backend unavailable: ${load.error}` : false;
const rng = new Rng(77);
const f32 = (n: number, s = 1) => Float32Array.from({ length: n }, () => (rng.uniform() * 2 - 1) * s);

/** Runs body on each kernel path this CPU has (AVX-512, AVX2, portable), 1 and 2 threads; restores the setting. */
function eachPath(body: (where: string) => void): void {
  const cap = kernelPathSetting().path;
  const f = native.cpuFeatures();
  const paths: ("auto" | "avx2-fma" | "portable")[] = [];
  if (cap === "auto") paths.push("auto");
  if (cap !== "portable" && f.avx2 && f.fma) paths.push("avx2-fma");
  paths.push("portable");
  const threads = native.getThreads();
  try {
    for (const p of paths) {
      native.setKernelPath(p);
      for (const t of [1, 2]) {
        native.setThreads(t);
        body(`${native.cpuFeatures().path}, ${t} thread${t > 1 ? "s" : ""}`);
      }
    }
  } finally {
    native.setKernelPath(cap);
    native.setThreads(threads);
  }
}

test("toHalf and fromHalf: every path gives the TypeScript definition's bits (all 65536 halves back, the rounding edges there)", { skip }, () => {
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const back = Float32Array.from(all, halfValue);
  // Ties to even at 1 + 2⁻¹¹ and past, the largest finite half and the first value that rounds to infinity,
  // subnormal ties (2⁻²⁵ rounds to zero), signed zeros, infinities, quiet and signalling NaNs with payloads; then random values.
  const edges = [1 + 2 ** -11, 1 + 3 * 2 ** -11, 65504, 65519.99, 65520, 2 ** -25, 1.0001 * 2 ** -25, 3 * 2 ** -25, 2 ** -14, 0, -0, Infinity, -Infinity, NaN];
  const src = new Float32Array(edges.length + 1000 + 4);
  src.set(edges);
  src.set(f32(1000, 70000), edges.length);
  const u = new Uint32Array(src.buffer);
  u[src.length - 4] = 0x7f800001; // a signalling NaN
  u[src.length - 3] = 0xffc12345; // a negative quiet NaN with a payload
  u[src.length - 2] = 0x33000001; // just above half of the smallest subnormal
  u[src.length - 1] = 0x387fc000; // rounds up into the normals
  const want = Uint16Array.from(src, halfBits);
  eachPath((where) => {
    const got = new Uint16Array(src.length);
    native.toHalf(got, src, src.length);
    assert.deepEqual(got, want, `toHalf, ${where}`);
    const vals = new Float32Array(65536);
    native.fromHalf(vals, all, 65536);
    for (let i = 0; i < 65536; i++) {
      if (!Object.is(vals[i], back[i]) && !(Number.isNaN(vals[i]!) && Number.isNaN(back[i]!))) assert.fail(`fromHalf(0x${i.toString(16)}), ${where}: ${vals[i]} against ${back[i]}`);
    }
    // NaN payloads survive the way back (the quiet bit set).
    const nan = new Float32Array(1);
    native.fromHalf(nan, Uint16Array.of(0x7e01), 1);
    assert.equal(new Uint32Array(nan.buffer)[0], 0x7fc02000, where);
  });
});

test("attentionHalf on every path is attention over the halves' f32 values, bit for bit: decode rows across 8-key chunks, grouped heads, prompt blocks", { skip }, () => {
  // [B, Tq, Tk, H, D, cap, G]
  const shapes = [[1, 1, 1, 1, 1, 1, 1], [1, 1, 300, 8, 64, 300, 1], [1, 1, 99, 6, 32, 99, 2], [2, 1, 64, 4, 16, 70, 2], [1, 1, 65, 2, 33, 65, 2], [2, 3, 129, 8, 64, 200, 8], [1, 5, 200, 6, 64, 256, 2], [2, 15, 40, 2, 17, 48, 1], [2, 16, 40, 4, 17, 48, 2], [1, 40, 100, 3, 64, 128, 3]];
  for (const [B, Tq, Tk, H, D, cap, G] of shapes as [number, number, number, number, number, number, number][]) {
    const q = f32(B * Tq * H * D, 2);
    const k16 = Uint16Array.from(f32(B * cap * G * D, 3), halfBits);
    const v16 = Uint16Array.from(f32(B * cap * G * D), halfBits);
    const kf = Float32Array.from(k16, halfValue), vf = Float32Array.from(v16, halfValue);
    const scale = 1 / Math.sqrt(D);
    const label = `B${B} Tq${Tq} Tk${Tk} H${H} D${D} cap${cap} G${G}`;
    // The TypeScript definition (f64 sums) within the conformance tolerance.
    const [ro, rl] = [new Float32Array(B * Tq * H * D), new Float32Array(B * H * Tq)];
    ref.attentionHalf(ro, rl, q, k16, v16, B, Tq, Tk, H, D, cap, scale, G);
    eachPath((where) => {
      const [o32, l32, o16, l16] = [new Float32Array(B * Tq * H * D), new Float32Array(B * H * Tq), new Float32Array(B * Tq * H * D).fill(NaN), new Float32Array(B * H * Tq).fill(NaN)];
      native.attention(o32, l32, q, kf, vf, B, Tq, Tk, H, D, cap, scale, G);
      native.attentionHalf(o16, l16, q, k16, v16, B, Tq, Tk, H, D, cap, scale, G);
      assert.deepEqual(o16, o32, `${label}, ${where}: outputs`);
      assert.deepEqual(l16, l32, `${label}, ${where}: log-sum-exps`);
      for (let i = 0; i < o16.length; i++) assert.ok(Math.abs(o16[i]! - ro[i]!) <= 1e-5 * Math.max(1, Math.abs(ro[i]!)), `${label}, ${where}: output ${i} ${o16[i]} against the reference ${ro[i]}`);
    });
  }
});

type RouterInput = NonNullable<ModelConfigInput["experts"]>["router"];
function tinyModel(extra: Partial<ModelConfigInput> = {}): PanguSigma {
  const m = new PanguSigma(parseModelConfig({
    vocabSize: 97, width: 32, heads: 4, denseLayers: 1, sparseLayers: 1, seqLen: 48, ffnWidth: 48, embeddingSlots: 2,
    domains: ["en", "code"].map((name, i) => ({ name, slot: i, group: i })), experts: { count: 4, router: { kind: "topk", k: 2 } as RouterInput }, initStd: 0.15, seed: 3, ...extra,
  }));
  m.eval();
  return m;
}
const LLAMA: Partial<ModelConfigInput> = { norm: "rmsnorm", position: "rope", kvHeads: 2, ffn: "swiglu", ffnBias: false, attentionBias: "none", tiedEmbeddings: false, queryLayer: false };

/** Logits of each step: a prompt of 20 tokens (the block path), then `steps` one-token steps of fixed tokens through `cache`. */
function decode(model: PanguSigma, cache: ModelCache, steps: number): Float32Array[] {
  const ids = Array.from({ length: 20 + steps }, (_, i) => 3 + ((i * 37) % 90));
  const V = model.config.vocabSize;
  const out: Float32Array[] = [];
  const prompt = noGrad(() => model.forward({ tokens: Int32Array.from(ids.slice(0, 20)), domains: Int32Array.of(1), B: 1, T: 20 }, cache)).logits.data as Float32Array;
  out.push(prompt.slice(19 * V));
  for (let s = 0; s < steps; s++) out.push((noGrad(() => model.forward({ tokens: Int32Array.of(ids[20 + s]!), domains: Int32Array.of(1), B: 1, T: 1 }, cache)).logits.data as Float32Array).slice());
  return out;
}

test("a model with f16 KV caches: the decode step and forward's general path agree, the logits stay near an f32 cache's, the cache holds half the bytes", { skip }, () => {
  for (const [name, extra] of [["pangu", {}], ["llama", LLAMA]] as const) {
    for (const weights of [null, "q8"] as const) {
      const model = tinyModel(extra);
      if (weights) quantizeModel(model, weights);
      const where = `${name}, ${weights ?? "f32 weights"}`;
      const half = model.newCache(1, 48, "f16");
      assert.ok("half" in half.layers[0]!, where);
      const l0 = half.layers[0] as HalfKVCache;
      const f = model.newCache(1, 48, "f32").layers[0] as KVCache;
      assert.equal(l0.k.byteLength * 2, (f.k.data as Float32Array).byteLength, `${where}: half the bytes`);
      const before = decodeStepRuns();
      const fast = decode(model, half, 12);
      if (weights) assert.ok(decodeStepRuns() >= before + 12, `${where}: the decode step ran with the f16 cache`);
      const was = useDecodeStep(false);
      let slow: Float32Array[];
      try {
        slow = decode(model, model.newCache(1, 48, "f16"), 12);
      } finally {
        useDecodeStep(was);
      }
      const f32Logits = decode(model, model.newCache(1, 48, "f32"), 12);
      let farthest = 0;
      fast.forEach((l, s) => {
        for (let i = 0; i < l.length; i++) {
          assert.ok(Math.abs(l[i]! - slow[s]![i]!) <= 1e-4 * (1 + Math.abs(slow[s]![i]!)), `${where} step ${s}: decode step ${l[i]} against the general path ${slow[s]![i]}`);
          farthest = Math.max(farthest, Math.abs(l[i]! - f32Logits[s]![i]!) / (1 + Math.abs(f32Logits[s]![i]!)));
        }
      });
      // f16 keys and values move the logits (they are not the f32 cache's) but little: 11 bits of mantissa. With q8
      // weights x is quantized to 8 bits per product, which turns small differences into roundings (docs/decode.md's 0.05·(1 + |logit|)).
      assert.ok(farthest > 0 && farthest < (weights ? 0.05 : 2e-3), `${where}: logits from the f16 cache are ${farthest} (relative to 1 + |logit|) from the f32 cache's`);
    }
  }
});

test("f16 KV caches: greedy speculative decoding (n-gram and model drafts) is plain greedy decoding token for token", { skip }, () => {
  const model = tinyModel();
  quantizeModel(model, "q8");
  model.kvFormat = "f16";
  const draft = tinyModel({ width: 16, seed: 9 });
  quantizeModel(draft, "q8");
  draft.kvFormat = "f16";
  const o = { temperature: 0, topK: 0, topP: 1, seed: 1, maxTokens: 24, stopId: null, draftTokens: 4 };
  for (const prompt of [[5, 6, 7, 5, 6, 7, 5, 6], [3, 40, 41, 42, 3, 40], [9]]) {
    const plain = [...generateIds(model, prompt, 1, o)];
    assert.deepEqual([...speculativeIds(model, prompt, 1, o, { kind: "ngram" })], plain, `n-gram, prompt ${prompt}`);
    assert.deepEqual([...speculativeIds(model, prompt, 1, o, { kind: "model", model: draft, domain: 1 })], plain, `model draft, prompt ${prompt}`);
  }
});

test("the server's f16 pool: greedy text alone, beside others (scattered blocks) and through generateIds with an f16 cache agree", { skip }, () => {
  const model = tinyModel(LLAMA);
  quantizeModel(model, "q8");
  model.kvFormat = "f16";
  const W = model.blocks[0]!.attn.kvWidth;
  const run = (js: Job[]) => {
    const r = decodeAll(model, js, 64, 4, W, "f16");
    assert.ok(r.pool.k[0] instanceof Uint16Array, "the pool keeps f16 bits");
    return r;
  };
  const ids = (n: number, k: number) => Array.from({ length: n }, (_, i) => 3 + ((i * k) % 90));
  const jobs = [{ prompt: ids(6, 7), domain: 1, joins: 0, steps: 14 }, { prompt: ids(3, 11), domain: 1, joins: 2, steps: 12 }, { prompt: ids(9, 5), domain: 1, joins: 3, steps: 10 }];
  const together = run(jobs);
  assert.ok(together.scattered, "some sequence's blocks were not consecutive (the pool's copying path ran)");
  jobs.forEach((job, j) => {
    const alone = run([{ ...job, joins: 0 }]).out[0]!;
    assert.deepEqual(together.out[j], alone, `sequence ${j} in the batch`);
    const reference = [...generateIds(model, job.prompt, 1, { temperature: 0, topK: 0, topP: 1, seed: 1, maxTokens: job.steps, stopId: null })];
    assert.deepEqual(alone, reference, `sequence ${j} against generateIds`);
  });
});

test("kvCache is checked: a name that is not a format, and f16 for a float64 model, are errors naming it", { skip }, () => {
  assert.throws(() => openModelSource("/nonexistent", { kvCache: "f8" as never }), (e: unknown) => e instanceof SigmaError && /kvCache "f8" is not a KV cache format/.test(e.message));
  const m64 = new PanguSigma(parseModelConfig({ vocabSize: 11, width: 8, heads: 2, denseLayers: 1, sparseLayers: 0, seqLen: 8, ffnWidth: 8, domains: [{ name: "en", slot: 0, group: 0 }] }), "float64");
  assert.equal(m64.tokenEmbedding.dtype, "float64");
  assert.throws(() => m64.newCache(1, 8, "f16"), /f16 KV cache serves float32 models only/);
  assert.throws(() => new KVPool(1, 8, 4, 4, "float64", "f16"), /f16 pool serves float32 models only/);
});
