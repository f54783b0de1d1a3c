// The native dense step (src/models/dense-step.ts, native/src/kernels/dense_step.cpp):
// a dense model's decode step in one addon call. It runs the TypeScript decode
// step's kernels in the same order, so its logits and KV caches are that
// step's bits, for PanGu's block (with and without the query layer) and the
// Llama / Qwen family's, every weight format, one and several sequences and
// positions, two embedding slots, lastOnly; it declines what it does not run,
// makes its plan again when the model is converted anew, and its addon
// functions refuse bad arguments with errors that name them. And the addon's
// argmax (src/serve/sampling.ts) gives the scan's index on every kernel path.
import { test } from "node:test";
import assert from "node:assert/strict";
import { noGrad } from "../src/autograd/tape.js";
import { WEIGHT_FORMATS } from "../src/backend/quant.js";
import { kernelPathSetting, loadNative } from "../src/backend/native/index.js";
import type { RouterConfig } from "../src/models/config.js";
import { denseStepRuns, useDenseStep } from "../src/models/dense-step.js";
import { decodeStepRuns } from "../src/models/decode-step.js";
import { PanguSigma, type ModelCache } from "../src/models/pangu-sigma.js";
import { quantizeModel } from "../src/models/quantize.js";
import * as quantizeFns from "../src/backend/quant.js";
import { argmax, argmaxScan } from "../src/serve/sampling.js";
import type { KVCache } from "../src/nn/attention.js";
import { Rng } from "../src/util/rng.js";
import { decodeTestModel, V } from "./decode-fixture.js";

const addon = loadNative().backend as unknown as Record<string, (...a: unknown[]) => unknown> | null;
const skip = addon === null ? "the native addon is not built" : false;

/** A dense model (an MoE one with a router) with random biases and norm parameters (they start at 0 and 1: a missing add would go unseen). */
const build = (extra: Record<string, unknown> = {}, router: RouterConfig | null = null): PanguSigma =>
  decodeTestModel({ router, denseLayers: 2, sparseLayers: 1, seqLen: 64, jitter: 0.4 }, extra);

/** Logits of `steps` forwards of T positions per sequence after a 5-token prompt, on the native dense step or the TypeScript one. */
function run(model: PanguSigma, native: boolean, B: number, T: number, steps: number, lastOnly = false): { logits: Float32Array[]; cache: ModelCache; runs: number } {
  const was = useDenseStep(native);
  const before = denseStepRuns();
  try {
    const rng = new Rng(9);
    const domains = Int32Array.from({ length: B }, (_, b) => b % 2);
    const cache = model.newCache(B);
    const logits: Float32Array[] = [];
    for (let s = 0; s <= steps; s++) {
      const t = s === 0 ? 5 : T;
      const out = noGrad(() => model.forward({ tokens: Int32Array.from({ length: B * t }, () => rng.int(V)), domains, B, T: t, lastOnly }, cache));
      logits.push(Float32Array.from(out.logits.data));
    }
    return { logits, cache, runs: denseStepRuns() - before };
  } finally {
    useDenseStep(was);
  }
}

const keysOf = (c: ModelCache) => [...c.layers, c.query].map((l) => Float32Array.from((l as KVCache).k.data));
const valuesOf = (c: ModelCache) => [...c.layers, c.query].map((l) => Float32Array.from((l as KVCache).v.data));

/** Equal bits, NaN apart (rotary angles come from C++'s cos/sin there and JavaScript's here: `tol` allows their last bits). */
function same(where: string, a: Float32Array, b: Float32Array, tol = 0): void {
  assert.equal(a.length, b.length, `${where}: lengths`);
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i] || Math.abs(a[i]! - b[i]!) <= tol * (1 + Math.abs(b[i]!))) continue;
    assert.fail(`${where}: [${i}] ${a[i]} (native) vs ${b[i]} (TypeScript)`);
  }
}

function compare(name: string, model: PanguSigma, B: number, T: number, tol: number, lastOnly = false): void {
  const native = run(model, true, B, T, 3, lastOnly);
  const ts = run(model, false, B, T, 3, lastOnly);
  const where = `${name} B=${B} T=${T}${lastOnly ? " lastOnly" : ""}`;
  assert.ok(native.runs > 0, `${where}: the native dense step ran`);
  assert.equal(ts.runs, 0, `${where}: turned off, it does not run`);
  native.logits.forEach((l, s) => same(`${where} logits of step ${s}`, l, ts.logits[s]!, tol));
  assert.equal(native.cache.length, ts.cache.length, `${where}: cache length`);
  [...native.cache.layers, native.cache.query].forEach((l, i) => assert.equal(l.length, [...ts.cache.layers, ts.cache.query][i]!.length, `${where}: layer ${i}'s cache length`));
  keysOf(native.cache).forEach((k, i) => same(`${where} keys of layer ${i}`, k, keysOf(ts.cache)[i]!, tol));
  valuesOf(native.cache).forEach((v, i) => same(`${where} values of layer ${i}`, v, valuesOf(ts.cache)[i]!, tol));
}

test("native dense step: the TypeScript step's logits and caches — PanGu's block with and without the query layer, every format, B 1 and 3, T 1, 4 and 16, lastOnly, two slots", { skip }, () => {
  for (const format of WEIGHT_FORMATS) {
    for (const [name, extra] of [["pangu", {}], ["no query layer, exact gelu", { queryLayer: false, activation: "gelu" }], ["two slots", { embeddingSlots: 2 }]] as const) {
      const model = build(extra);
      quantizeModel(model, format);
      for (const [B, T] of [[1, 1], [3, 1], [1, 4], [2, 3], [1, 16]] as const) compare(`${name} ${format}`, model, B, T, 0);
      compare(`${name} ${format}`, model, 2, 3, 0, true);
    }
  }
});

test("native dense step: Llama / Qwen blocks — RMSNorm, rotary positions, grouped heads, a head size of its own, q/k norms, SwiGLU, untied output, no biases", { skip }, () => {
  const variants: [string, Record<string, unknown>][] = [
    ["llama", { norm: "rmsnorm", position: "rope", kvHeads: 1, ffn: "swiglu", ffnBias: false, attentionBias: "none", tiedEmbeddings: false, queryLayer: false }],
    ["qwen3", { norm: "rmsnorm", position: "rope", heads: 4, headDim: 10, kvHeads: 2, qkNorm: true, ffn: "swiglu", attentionBias: "qkv", ropeTheta: 500, queryLayer: false }],
    ["rope with the query layer", { position: "rope", ffn: "swiglu" }],
  ];
  for (const [name, extra] of variants) {
    for (const format of ["f32", "bf16", "q8", "q4"] as const) {
      const model = build(extra);
      quantizeModel(model, format);
      // Rotary angles: C++'s cos and sin against JavaScript's may differ in a last bit of an angle.
      for (const [B, T] of [[1, 1], [3, 1], [2, 3]] as const) compare(`${name} ${format}`, model, B, T, 1e-6);
    }
  }
});

test("native dense step: it declines MoE layers, f16 caches and the switch, and makes its plan again for a model converted anew", { skip }, () => {
  const moe = build({}, { kind: "rre", groups: 2, seed: 4 });
  quantizeModel(moe, "q8");
  assert.equal(run(moe, true, 1, 1, 2).runs, 0, "an MoE model takes the TypeScript step");
  const model = build();
  quantizeModel(model, "q8");
  model.kvFormat = "f16";
  assert.equal(run(model, true, 1, 1, 2).runs, 0, "an f16 cache takes the TypeScript step");
  model.kvFormat = "f32";
  compare("q8", model, 1, 1, 0);
  // Converted anew: the plan held q8's arrays; the next step must read q4's.
  quantizeModel(model, "q4");
  compare("q8 then q4", model, 2, 1, 0);
});

/** A plan of a one-block dense f32 model of width C (the addon's argument layout, dense_napi.cpp), and its arrays. */
function tinyPlan(C = 4, V = 3, seqLen = 8) {
  const f = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i + n));
  const dims = Int32Array.of(V, C, 1, 1, 1, C, C, 1, 0, 0, 0, 1, 0, seqLen, 0, 1);
  const block = [f(C), f(C), f(3 * C * C), null, null, null, null, null, null, null, null, null, f(C * C), null, null, null, f(C), f(C), f(C * C), null, null, null, f(C * C), null, null, null];
  const globals = [f(C), f(C), f(V * C), null, null, null, f(seqLen * C), null];
  const arrays = [...block, ...globals];
  return { dims, nums: Float64Array.of(1e-5, 10000), arrays };
}

test("native dense step: densePlan and denseStep refuse bad arguments with errors that name them, a weight detached since the plan included", { skip }, () => {
  const a = addon!;
  const { dims, nums, arrays } = tinyPlan();
  const plan = a.densePlan!(dims, nums, arrays);
  const caches = () => [new Float32Array(8 * 4), new Float32Array(8 * 4)];
  const step = (over: Partial<Record<string, unknown>> = {}) => {
    const o = { plan, embed: Int32Array.of(1), slot: Int32Array.of(0), pos: Int32Array.of(0), caches: caches(), length: 0, B: 1, T: 1, cap: 8, pick: Int32Array.of(0), logits: new Float32Array(3), ...over };
    return a.denseStep!(o.plan, o.embed, o.slot, o.pos, o.caches, o.length, o.B, o.T, o.cap, o.pick, o.logits);
  };
  step();
  const logits = new Float32Array(3);
  step({ logits });
  assert.ok(logits.some((v) => v !== 0) && logits.every(Number.isFinite), "a valid call writes finite logits");
  const refuses = (what: RegExp, fn: () => unknown) => assert.throws(fn, (e: Error) => (e instanceof TypeError || e instanceof RangeError) && what.test(e.message), String(what));
  refuses(/^denseStep: argument "plan"/, () => step({ plan: {} }));
  refuses(/^denseStep: argument "embed".*outside \[0, 3\)/, () => step({ embed: Int32Array.of(3) }));
  refuses(/^denseStep: argument "pos".*outside \[0, 8\)/, () => step({ pos: Int32Array.of(8) }));
  refuses(/^denseStep: argument "pick".*outside \[0, 1\)/, () => step({ pick: Int32Array.of(1) }));
  refuses(/^denseStep: argument "caches" has 1 arrays/, () => step({ caches: [new Float32Array(32)] }));
  refuses(/^denseStep: argument "caches" element 1 has 4 elements/, () => step({ caches: [new Float32Array(32), new Float32Array(4)] }));
  refuses(/^denseStep: argument "length".*exceed the caches' capacity 8/, () => step({ length: 8 }));
  refuses(/^denseStep: argument "logits"/, () => step({ logits: new Float32Array(2) }));
  refuses(/^densePlan: argument "arrays" block 0 qkv has 44 elements but the sizes given need 48/, () => a.densePlan!(dims, nums, arrays.map((x, i) => (i === 2 ? new Float32Array(44) : x))));
  refuses(/^densePlan: argument "arrays" block 0 ln1.beta is missing/, () => a.densePlan!(dims, nums, arrays.map((x, i) => (i === 1 ? null : x))));
  refuses(/^densePlan: argument "arrays" block 0 qNorm.gamma/, () => a.densePlan!(dims, nums, arrays.map((x, i) => (i === 10 ? new Float64Array(4) : x))));
  refuses(/^densePlan: argument "dims" G must divide H/, () => a.densePlan!(Int32Array.from(dims, (v, i) => (i === 3 ? 3 : i === 4 ? 2 : v)), nums, arrays));
  refuses(/^densePlan: argument "arrays" has 33 elements but dims need 34/, () => a.densePlan!(dims, nums, arrays.slice(1)));
  // Sizes whose product wraps 64 bits (S·V·C = 2^16·2^24·2^24) are refused, not taken as 0 (a 1-element table then passed).
  refuses(/^densePlan: argument "dims" make a size of .*too large/, () => a.densePlan!(Int32Array.from(dims, (v, i) => (i === 0 ? 2 ** 24 : i === 1 ? 2 ** 24 : i === 2 ? 2 ** 16 : v)), nums, arrays));
  // The plan holds the caller's arrays: one transferred since is refused at the next step, not read.
  const fc2 = arrays[22] as Float32Array;
  structuredClone(fc2.buffer, { transfer: [fc2.buffer] });
  refuses(/^denseStep: argument "arrays" block 0 fc2/, () => step());
});

test("argmax: the addon's index is the scan's — ties (the first), NaNs (passed over; first: 0), ±inf, odd lengths — on every kernel path", { skip }, () => {
  const a = addon!;
  const rng = new Rng(5);
  const paths = ["auto", "avx2-fma", "portable"].filter((p) => {
    try {
      a.setKernelPath!(p);
      return true;
    } catch {
      return false;
    }
  });
  try {
    for (const path of paths) {
      a.setKernelPath!(path);
      for (const n of [1, 3, 16, 17, 255, 256, 257, 1000, 8192]) {
        for (let trial = 0; trial < 12; trial++) {
          const x = Float32Array.from({ length: n }, () => Math.round(rng.uniform() * 20) / 4 - 2); // ties are common
          if (trial % 4 === 1) x[rng.int(n)] = NaN;
          if (trial % 4 === 2) x[0] = NaN;
          if (trial % 6 === 3) x.fill(-Infinity);
          if (trial % 6 === 4) x[rng.int(n)] = Infinity;
          const out = new Int32Array(1);
          a.argmaxRows!(x, 1, n, out);
          assert.equal(out[0], argmaxScan(x), `${path} n=${n} trial ${trial}`);
          assert.equal(argmax(x), argmaxScan(x), `argmax() ${path} n=${n} trial ${trial}`);
        }
      }
      // Several rows in one call.
      const x = Float32Array.from({ length: 3 * 300 }, () => rng.uniform());
      const out = new Int32Array(3);
      a.argmaxRows!(x, 3, 300, out);
      assert.deepEqual(Array.from(out), [0, 1, 2].map((r) => argmaxScan(x.subarray(r * 300, (r + 1) * 300))));
    }
  } finally {
    a.setKernelPath!(kernelPathSetting().path);
  }
});

test("logitsInto: the decode steps (TypeScript and native) write the logits into the caller's buffer, the same values; a short buffer or the general path leave it alone", () => {
  for (const [name, router] of [["dense", null], ["rre", { kind: "rre", groups: 2, seed: 4 } as RouterConfig]] as const) {
    const model = build({}, router);
    quantizeModel(model, "q8");
    const step = (into?: Float32Array, T = 3) => {
      const cache = model.newCache(1);
      return noGrad(() => model.forward({ tokens: Int32Array.from({ length: T }, (_, i) => (i * 7) % V), domains: Int32Array.of(0), B: 1, T, ...(into ? { logitsInto: into } : {}) }, cache)).logits;
    };
    const plain = step();
    const into = new Float32Array(5 * V).fill(NaN);
    const got = step(into);
    assert.equal(got.data.buffer, into.buffer, `${name}: the logits are a view of the buffer`);
    assert.deepEqual(Array.from(into.subarray(0, 3 * V)), Array.from(plain.data), `${name}: the same logits`);
    assert.ok(Number.isNaN(into[3 * V]!), `${name}: nothing written past them`);
    const short = new Float32Array(2 * V);
    assert.notEqual(step(short).data.buffer, short.buffer, `${name}: a short buffer is not used`);
    // Past 16 positions: forward's general path, which ignores it.
    const long = new Float32Array(20 * V);
    assert.notEqual(step(long, 20).data.buffer, long.buffer, `${name}: the general path makes its own`);
  }
});

test("native dense step: a full cache and a model converted part way are said and declined as the TypeScript step does", { skip }, () => {
  const model = build();
  quantizeModel(model, "q8");
  const full = (native: boolean) => {
    const was = useDenseStep(native);
    try {
      const cache = model.newCache(1, 4);
      noGrad(() => model.forward({ tokens: Int32Array.of(1, 2, 3, 4), domains: Int32Array.of(0), B: 1, T: 4 }, cache));
      assert.throws(() => noGrad(() => model.forward({ tokens: Int32Array.of(1), domains: Int32Array.of(0), B: 1, T: 1 }, cache)), /^RangeError: KV cache full: 4 \+ 1 positions exceed its capacity 4/);
    } finally {
      useDenseStep(was);
    }
  };
  full(true);
  full(false);
  // One matrix in another format (a conversion that failed part way): neither decode step takes it (q|k|v cannot be stacked).
  const mixed = build();
  quantizeModel(mixed, "q8");
  const attn = mixed.blocks[0]!.attn;
  const { quantize } = quantizeFns;
  attn.k.stored = quantize("bf16", attn.k.weight.data as Float32Array, attn.k.outFeatures, attn.k.inFeatures);
  const [before, stepsBefore] = [denseStepRuns(), decodeStepRuns()];
  const out = noGrad(() => mixed.forward({ tokens: Int32Array.of(1, 2), domains: Int32Array.of(0), B: 1, T: 2 }, mixed.newCache(1)));
  assert.equal(denseStepRuns(), before, "the native step declined");
  assert.equal(decodeStepRuns(), stepsBefore, "the TypeScript step declined");
  assert.ok(Array.from(out.logits.data).every(Number.isFinite), "the general path ran");
});
