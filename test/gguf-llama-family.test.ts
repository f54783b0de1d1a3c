/**
 * Sigma's GGUF export of the Llama-family blocks checked against llama.cpp
 * (node-llama-cpp's prebuilt build): for each architecture Sigma writes
 * besides gpt2 — `llama` dense and with experts (Mixtral), `qwen2`,
 * `qwen2moe`, `qwen3moe` — a small random Sigma model (odd sizes,
 * grouped-query attention, tied and untied outputs, biases where the
 * architecture has them, several experts with top-2) is exported as f32,
 * parsed by @huggingface/gguf, loaded in llama.cpp, and must give the same
 * greedy tokens for 32 steps and next-token log-probs within 1e-3 relative
 * on several prompts fed as token ids (the tie rule of test/gguf-harness.ts).
 * RMSNorm, SiLU and RoPE are computed in f32 by both, so the gaps are float
 * rounding only.
 *
 * The same files import back into Sigma exactly (config and every
 * parameter), also without the saved Sigma config (from the architecture
 * keys and tensors alone, as a file from another tool would be); and what
 * has no llama.cpp counterpart is refused with the reason.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { writeModelFolder } from "../src/api/model.js";
import { readGguf, writeGguf } from "../src/checkpoint/gguf.js";
import { parseModelConfig, type ModelConfigInput } from "../src/models/config.js";
import { ggufOfModel, modelOfGguf } from "../src/models/gguf.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import type { Tokenizer } from "../src/tokenizer/codec.js";
import { SigmaError } from "../src/util/errors.js";
import { toHfJson } from "../src/tokenizer/hfjson.js";
import { Rng } from "../src/util/rng.js";
import { sigma } from "./cli-harness.js";
import { checkWithHfParser, compareGreedy, llamaFixture, llamaGreedy, relativeGap, sigmaLogProbs, tokenizer } from "./gguf-harness.js";

const env = llamaFixture("sigma-gguf-family-");
const dir = env.dir;

/** The block every one of these architectures shares. */
const BLOCK: Partial<ModelConfigInput> = { queryLayer: false, norm: "rmsnorm", position: "rope", ffn: "swiglu", ffnBias: false, attentionBias: "none", domains: [{ name: "en" }], seqLen: 64, layerNormEps: 1e-5 };

const CASES: { arch: string; what: string; config: Partial<ModelConfigInput> }[] = [
  {
    arch: "llama",
    what: "dense, 6 heads over 2 kv heads (size 6), untied, θ 10,000",
    config: { width: 36, heads: 6, kvHeads: 2, denseLayers: 2, sparseLayers: 0, ffnWidth: 50, tiedEmbeddings: false },
  },
  {
    arch: "llama",
    what: "dense with every bias (q/k biases reordered too), head size 10 ≠ width/heads, tied",
    config: { width: 28, heads: 4, headDim: 10, denseLayers: 1, sparseLayers: 0, ffnWidth: 45, attentionBias: "all", ffnBias: true, ropeTheta: 500000 },
  },
  {
    arch: "llama",
    what: "Mixtral-style: 5 experts of width 22, top-2 renormalised, 4 heads over 2, untied",
    config: { width: 32, heads: 4, kvHeads: 2, denseLayers: 0, sparseLayers: 2, ffnWidth: 40, tiedEmbeddings: false, experts: { count: 5, width: 22, router: { kind: "topk", k: 2, renormalize: true } } },
  },
  {
    arch: "qwen2",
    what: "dense, q/k/v biases, 6 heads over 3, tied, θ 1,000,000",
    config: { width: 48, heads: 6, kvHeads: 3, denseLayers: 2, sparseLayers: 0, ffnWidth: 67, attentionBias: "qkv", ropeTheta: 1e6 },
  },
  {
    arch: "qwen2moe",
    what: "6 experts of width 18, top-2 not renormalised, gated shared expert of width 26, q/k/v biases, tied",
    config: { width: 32, heads: 4, kvHeads: 2, denseLayers: 0, sparseLayers: 2, ffnWidth: 40, attentionBias: "qkv", experts: { count: 6, width: 18, router: { kind: "topk", k: 2, renormalize: false }, sharedWidth: 26, sharedGate: true } },
  },
  {
    arch: "qwen3moe",
    what: "q/k norms, head size 12 ≠ width/heads, 4 heads over 2, 7 experts of width 14, top-2 renormalised, untied",
    config: { width: 40, heads: 4, kvHeads: 2, headDim: 12, qkNorm: true, denseLayers: 0, sparseLayers: 2, ffnWidth: 40, tiedEmbeddings: false, experts: { count: 7, width: 14, router: { kind: "topk", k: 2, renormalize: true } } },
  },
];

/** Every parameter drawn at random (gains around 1), so each tensor's mapping matters; routers wide enough that the routing varies by token. */
function randomModel(tok: Tokenizer, extra: Partial<ModelConfigInput>, seed: number): PanguSigma {
  const model = new PanguSigma(parseModelConfig({ ...BLOCK, vocabSize: tok.vocabSize, seed, ...extra }));
  const rng = new Rng(seed);
  for (const [name, p] of model.namedParameters()) {
    const d = p.tensor.data;
    const gamma = name.endsWith(".gamma");
    const std = gamma ? 0.2 : name.endsWith("Embedding") ? 0.6 : name.endsWith(".bias") ? 0.1 : name.endsWith("router.weight") ? 3 / Math.sqrt(p.tensor.shape.at(-1)!) : 1.2 / Math.sqrt(p.tensor.shape.at(-1)!);
    for (let i = 0; i < d.length; i++) d[i] = (gamma ? 1 : 0) + std * rng.normal();
  }
  return model.eval();
}

const PROMPTS = [[5], [40, 7, 250, 3, 99], [2, 300, 17, 17, 17, 0, 64, 128]];

CASES.forEach(({ arch, what, config }, i) => {
  test(`${arch} (${what}): f32 GGUF in llama.cpp = Sigma (32 greedy tokens, log-probs within 1e-3 relative); imports back exactly`, async () => {
    const tok = tokenizer();
    const model = randomModel(tok, config, 40 + i);
    const path = join(dir, `${arch}-${i}.gguf`);
    const file = ggufOfModel(model, tok, { type: "f32" });
    assert.equal(file.architecture, arch);
    writeGguf(path, file);
    await checkWithHfParser(path, file);
    await compareGreedy(env.llama, path, model, PROMPTS, 32);

    // Back into Sigma: the same config and every parameter bit for bit.
    const mine = new Map([...model.namedParameters()].map(([n, p]) => [n, p.tensor.data]));
    const back = modelOfGguf(readGguf(path), path);
    assert.equal(back.architecture, arch);
    assert.deepEqual(back.model.config, model.config);
    for (const [n, p] of back.model.namedParameters()) assert.deepEqual(p.tensor.data, mine.get(n), n);
    // Without sigma.config (a file another tool wrote): the config from the keys and tensors computes the same function.
    const parsed = readGguf(path);
    parsed.metadata.delete("sigma.config");
    const foreign = modelOfGguf(parsed, path).model.eval();
    const prompt = PROMPTS[2]!;
    assert.deepEqual(sigmaLogProbs(foreign, prompt), sigmaLogProbs(model, prompt));
  });
});

test("export refuses, naming the reason, what no llama.cpp architecture computes", () => {
  const tok = tokenizer();
  const base = CASES[2]!.config; // the Mixtral-style model
  const cases: [Partial<ModelConfigInput>, RegExp][] = [
    [{ experts: { count: 4, width: 22, router: { kind: "moge", groups: 2 } } }, /llama: its router \(moge\) does not route by softmax then top-k over all experts, as llama\.cpp's llama does/],
    [{ experts: { count: 4, width: 22, router: { kind: "rre", groups: 2 } }, domains: [{ name: "en", group: 0 }, { name: "zh", group: 1 }], embeddingSlots: 1 }, /llama: its router \(rre\) does not route by softmax then top-k/],
    [{ queryLayer: true }, /llama: it has PanGu-α's query layer/],
    [{ embeddingSlots: 2, domains: [{ name: "en", slot: 0 }, { name: "zh", slot: 1 }] }, /llama: it has 2 embedding slots/],
    [{ norm: "layernorm" }, /llama: it uses LayerNorm; llama\.cpp's llama uses RMSNorm/],
    [{ position: "learned" }, /llama: it has learned positions/],
    [{ ffn: "gelu" }, /llama: its FFN is the two-matrix "gelu" one/],
    [{ denseLayers: 1 }, /llama: it mixes dense and sparse layers/],
    [{ ffnBias: true }, /llama: its FFNs and experts have biases/],
    [{ experts: { count: 5, width: 22, router: { kind: "topk", k: 2, renormalize: false } } }, /llama: its top-k weights are not renormalised; .*qwen2moe: llama\.cpp's qwen2moe has a shared expert with a sigmoid gate/],
    [{ experts: { count: 5, width: 22, router: { kind: "topk", k: 2, renormalize: false }, sharedWidth: 16 } }, /qwen2moe: llama\.cpp's qwen2moe has a shared expert with a sigmoid gate/],
    [{ experts: { count: 5, width: 22, router: { kind: "topk", k: 2 }, sharedWidth: 16, sharedGate: true } }, /llama: it has a shared expert; llama\.cpp's llama has none/],
    [{ qkNorm: true, denseLayers: 1, sparseLayers: 0 }, /llama: it has q\/k norms; llama\.cpp's llama has none.*qwen3moe: it is dense/],
  ];
  for (const [extra, pattern] of cases) {
    assert.throws(() => ggufOfModel(randomModel(tok, { ...base, ...extra }, 1), tok), (e: unknown) => e instanceof SigmaError && pattern.test(e.message) && /cannot be written as GGUF/.test(e.message), `${JSON.stringify(extra)}: ${(() => { try { ggufOfModel(randomModel(tok, { ...base, ...extra }, 1), tok); return "no error"; } catch (e) { return (e as Error).message; } })()}`);
  }
  // qwen2 and qwen2moe size q as the model's width: a dense model with q/k/v biases and another head size is llama's (which reads those biases too); a qwen2moe-shaped one is refused.
  assert.equal(ggufOfModel(randomModel(tok, { ...CASES[3]!.config, headDim: 10 }, 1), tok).architecture, "llama");
  assert.throws(() => ggufOfModel(randomModel(tok, { ...CASES[4]!.config, headDim: 10 }, 1), tok), /qwen2moe: its q is 40 wide \(headDim 10\); llama\.cpp's qwen2moe makes q as wide as the model \(32\)/);
  // A Mixtral-style model with q/k norms is Qwen3-MoE's shape.
  assert.equal(ggufOfModel(randomModel(tok, { ...base, qkNorm: true }, 1), tok).architecture, "qwen3moe");
});

test("import refuses a file whose sigma.config disagrees with its llama keys", () => {
  const tok = tokenizer();
  const path = join(dir, "edited.gguf");
  writeGguf(path, ggufOfModel(randomModel(tok, CASES[2]!.config, 3), tok));
  const f = readGguf(path);
  const meta = f.metadata.get("llama.expert_used_count")!;
  f.metadata.set("llama.expert_used_count", { ...meta, value: 3 } as typeof meta);
  assert.throws(() => modelOfGguf(f, path), /metadata "sigma\.config" says experts = .*"k":2.* but the llama keys say .*"k":3/);
});

test("sigma export gguf picks the architecture from the config (qwen3moe here), sigma import gguf reads it back; a MoGE model is a one-line refusal", async () => {
  const tok = tokenizer();
  const ckpt = writeModelFolder(join(dir, "q3"), 0, randomModel(tok, CASES[5]!.config, 5), toHfJson(tok), { format: "test" });
  const out = join(dir, "q3.gguf");
  const e = await sigma("export", "gguf", "--ckpt", ckpt, "--out", out);
  assert.equal(e.code, 0, e.out);
  assert.match(e.out, /GGUF qwen3moe, f32: \d+ tensors/);
  const i = await sigma("import", "gguf", "--from", out, "--out", join(dir, "q3-back"));
  assert.equal(i.code, 0, i.out);
  assert.match(i.out, /GGUF qwen3moe: /);
  const moge = writeModelFolder(join(dir, "moge"), 0, randomModel(tok, { ...CASES[2]!.config, experts: { count: 4, width: 22, router: { kind: "moge", groups: 2 } } }, 6), toHfJson(tok), { format: "test" });
  const r = await sigma("export", "gguf", "--ckpt", moge, "--out", join(dir, "no.gguf"));
  assert.equal(r.code, 1);
  assert.match(r.out, /sigma: this model cannot be written as GGUF — .*llama: its router \(moge\) does not route by softmax then top-k/);
  assert.doesNotMatch(r.out, /at .*\.ts:\d+/, "no stack trace");
});

test("q8_0 and f16 expert stacks in llama.cpp ≈ Sigma with the same weights (Mixtral-style llama, qwen2moe; log-probs within 5e-2 / 1e-2 relative)", async () => {
  const tok = tokenizer();
  for (const [c, type, bound] of [[2, "q8_0", 5e-2], [4, "f16", 1e-2]] as const) {
    const model = randomModel(tok, CASES[c]!.config, 60 + c);
    const path = join(dir, `${type}-${c}.gguf`);
    const file = ggufOfModel(model, tok, { type });
    writeGguf(path, file);
    await checkWithHfParser(path, file);
    // Width 32 is whole q8_0 blocks: the gate/up expert stacks are Q8_0; the down stacks (rows of 22) fall back to F16.
    if (type === "q8_0") assert.ok(file.tensors.some((t) => t.name === "blk.0.ffn_gate_exps.weight" && t.type === "Q8_0") && file.fallbacks.includes("blk.0.ffn_down_exps.weight"));
    const same = modelOfGguf(readGguf(path), path).model.eval();
    for (const prompt of PROMPTS) {
      const theirs = await llamaGreedy(env.llama, path, prompt, 1, model.config.vocabSize);
      const gap = relativeGap(sigmaLogProbs(same, prompt).at(-1)!, theirs.logProbs[0]!);
      assert.ok(gap <= bound, `${type}, prompt [${prompt}]: log-probs differ by ${gap.toExponential(2)} relative (bound ${bound})`);
    }
  }
});
