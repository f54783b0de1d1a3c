/**
 * Sigma's GGUF export checked against an independent implementation:
 * llama.cpp (prebuilt, through node-llama-cpp). Small random GPT-2-shaped
 * Sigma models (several shapes, odd sizes among them, every parameter drawn
 * at random so that a mis-mapped norm or bias shows) are exported, loaded in
 * llama.cpp, and must give the same greedy tokens for 32 steps and the same
 * next-token log-probabilities on several prompts. Token ids are fed
 * directly, so the comparison does not depend on pre-tokenization; a plain
 * ASCII prompt is also tokenized by both. Every written file is parsed by
 * @huggingface/gguf too.
 *
 * Greedy tokens must be the same at every step, except where Sigma's two
 * best tokens are within twice the log-prob bound of each other (a tie that
 * rounding may break either way; at most 2 per model, and both continue with
 * llama.cpp's token).
 *
 * llama.cpp returns probabilities (softmax of its logits), so logits are
 * compared as log-probabilities — logits up to the constant that softmax
 * ignores. Bound for f32 files: |Δ log p| ≤ 1e-3 · max|log p| over the
 * vocabulary. llama.cpp computes GELU through a table of f16 inputs
 * (ggml's GGML_GELU_FP16), so it is not exact even in f32. f16 and q8_0
 * files are compared with the Sigma model that reads the same file back
 * (same weights); llama.cpp then also rounds activations (to f16, or to
 * q8_0 blocks for its q8_0 dot products), hence looser bounds: 1e-2 (f16)
 * and 5e-2 (q8_0) relative.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { type Token } from "node-llama-cpp";
import { readGguf, writeGguf } from "../src/checkpoint/gguf.js";
import { parseModelConfig } from "../src/models/config.js";
import { ggufOfModel, modelOfGguf, SIGMA_CHAT_TEMPLATE, type GgufExportType } from "../src/models/gguf.js";
import { chatPrompt, type ChatMessage } from "../src/serve/chat.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import type { Tokenizer } from "../src/tokenizer/codec.js";
import { Rng } from "../src/util/rng.js";
import { checkWithHfParser, compareGreedy, llamaFixture, llamaGreedy, relativeGap, sigmaLogProbs, tokenizer } from "./gguf-harness.js";

const env = llamaFixture("sigma-gguf-llama-");
const dir = env.dir;

/** A model with every parameter drawn from N(0, std²) (gammas around 1), so each tensor's mapping matters. */
function randomModel(tok: Tokenizer, shape: { width: number; heads: number; layers: number; ffn: number; seqLen: number }, seed: number): PanguSigma {
  const config = parseModelConfig({
    vocabSize: tok.vocabSize, width: shape.width, heads: shape.heads, denseLayers: shape.layers, sparseLayers: 0, seqLen: shape.seqLen, ffnWidth: shape.ffn,
    domains: [{ name: "en" }], queryLayer: false, activation: "gelu_tanh", layerNormEps: 1e-5, seed,
  });
  const model = new PanguSigma(config);
  const rng = new Rng(seed);
  for (const [name, p] of model.namedParameters()) {
    const d = p.tensor.data;
    const gamma = name.endsWith(".gamma");
    const std = gamma ? 0.2 : name.endsWith("Embedding") ? 0.6 : name.endsWith(".bias") || name.endsWith(".beta") ? 0.1 : 1.2 / Math.sqrt(p.tensor.shape[1] ?? 1);
    for (let i = 0; i < d.length; i++) d[i] = (gamma ? 1 : 0) + std * rng.normal();
  }
  return model.eval();
}

const SHAPES = [
  { width: 48, heads: 3, layers: 2, ffn: 100, seqLen: 64, seed: 11 },
  { width: 36, heads: 4, layers: 1, ffn: 37, seqLen: 48, seed: 12 }, // head size 9, odd FFN width
  { width: 64, heads: 8, layers: 3, ffn: 160, seqLen: 64, seed: 13 },
];
const PROMPTS = [[5], [40, 7, 250, 3, 99], [2, 300, 17, 17, 17, 0, 64, 128]];
const STEPS = 32;

for (const shape of SHAPES) {
  test(`f32 GGUF in llama.cpp = Sigma: width ${shape.width}, ${shape.heads} heads, ${shape.layers} layers, FFN ${shape.ffn}: same 32 greedy tokens, log-probs within 1e-3 relative`, async () => {
    const tok = tokenizer();
    const model = randomModel(tok, shape, shape.seed);
    const path = join(dir, `f32-${shape.seed}.gguf`);
    const file = ggufOfModel(model, tok, { type: "f32" });
    writeGguf(path, file);
    await checkWithHfParser(path, file);
    await compareGreedy(env.llama, path, model, PROMPTS, STEPS);
  });
}

test("llama.cpp tokenizes a plain ASCII prompt as Sigma does (the exported vocabulary, merges and pre-tokenizer)", async () => {
  const tok = tokenizer();
  const model = randomModel(tok, SHAPES[0]!, 21);
  const path = join(dir, "tok.gguf");
  writeGguf(path, ggufOfModel(model, tok));
  const lm = await env.llama.loadModel({ modelPath: path, gpuLayers: 0 });
  try {
    for (const text of ["the cat sat on the mat", "The quick brown fox jumps over the lazy dog.", "dinner at 1234 and 56, then: the dog's cat!\nnew line  two spaces"]) {
      assert.deepEqual(lm.tokenize(text), tok.encode(text), text);
    }
    assert.equal(lm.detokenize(tok.encode("the lazy dog") as Token[]), "the lazy dog");
  } finally {
    await lm.dispose();
  }
});

test("llama.cpp's own Jinja engine renders the exported chat template to Sigma's chat prompt", () => {
  // node-llama-cpp 3.21.1 (pinned) binds llama.cpp's Jinja renderer; it has no public entry point, so the binding is used directly.
  const Renderer = (env.llama as unknown as { _bindings: { AddonJinjaRenderer: new (t: string) => { render(v: object): string } } })._bindings.AddonJinjaRenderer;
  const render = new Renderer(SIGMA_CHAT_TEMPLATE);
  const conversations: ChatMessage[][] = [
    [{ role: "user", content: "Hi" }],
    [{ role: "system", content: " Be brief. " }, { role: "user", content: "Name a fox.\n" }, { role: "assistant", content: "Reynard." }, { role: "user", content: "Another?" }],
  ];
  for (const messages of conversations) assert.equal(render.render({ messages, add_generation_prompt: true }), chatPrompt(messages));
});

for (const [type, bound] of [["f16", 1e-2], ["q8_0", 5e-2]] as [GgufExportType, number][]) {
  test(`${type} GGUF in llama.cpp ≈ Sigma with the same weights (log-probs within ${bound} relative)`, async () => {
    const tok = tokenizer();
    const model = randomModel(tok, { width: 64, heads: 4, layers: 2, ffn: 96, seqLen: 64 }, 31);
    const path = join(dir, `${type}.gguf`);
    const file = ggufOfModel(model, tok, { type });
    writeGguf(path, file);
    await checkWithHfParser(path, file);
    assert.ok(file.tensors.some((t) => t.type === (type === "f16" ? "F16" : "Q8_0")));
    // Sigma with exactly the stored weights: the file read back.
    const same = modelOfGguf(readGguf(path), path).model.eval();
    for (const prompt of PROMPTS) {
      const theirs = await llamaGreedy(env.llama, path, prompt, 4, model.config.vocabSize);
      const mine = sigmaLogProbs(same, prompt).at(-1)!;
      const gap = relativeGap(mine, theirs.logProbs[0]!);
      assert.ok(gap <= bound, `${type}, prompt [${prompt}]: log-probs differ by ${gap.toExponential(2)} relative (bound ${bound})`);
    }
  });
}
