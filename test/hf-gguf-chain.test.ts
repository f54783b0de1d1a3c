/**
 * The whole path a user takes with a model from the Hub, checked against an
 * independent implementation: small random models of each architecture in
 * the Hugging Face layout (test/hf-fixture.ts: config.json + safetensors
 * with transformers' tensor names) are imported into Sigma (`importHf`),
 * exported as an f32 GGUF file (`exportGguf`), loaded in llama.cpp
 * (node-llama-cpp's prebuilt build), and llama.cpp must give Sigma's greedy
 * tokens for 32 steps and its next-token log-probs within 1e-3 relative on
 * several prompts fed as token ids (the tie rule of test/gguf-harness.ts).
 * Pangu Pro MoE's MoGE has no llama.cpp counterpart: its export is refused
 * by name, and its routing is pinned on a hand-computed case in
 * test/import-hf.test.ts.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { exportGguf } from "../src/api/gguf.js";
import { importHf } from "../src/api/hf.js";
import { openModel } from "../src/api/model.js";
import { toHfJson } from "../src/tokenizer/hfjson.js";
import { SigmaError } from "../src/util/errors.js";
import { compareGreedy, llamaFixture, tokenizer } from "./gguf-harness.js";
import { CONFIGS, hfRoot, hfWeights, writeHf, type Cfg } from "./hf-fixture.js";

const env = llamaFixture("sigma-hf-gguf-");
const dir = env.dir;
hfRoot.dir = dir;

const tok = tokenizer();
const PROMPTS = [[5], [40, 7, 250, 3, 99], [2, 300, 17, 17, 17, 0, 64, 128]];
/** The fixture's configs with the test tokenizer's vocabulary; llama.cpp has no leading dense blocks in qwen3moe, so every layer is sparse here. */
const config = (kind: string): Cfg => ({ ...CONFIGS[kind], vocab_size: tok.vocabSize, ...(kind === "qwen3moe" ? { mlp_only_layers: [] } : {}) });
const GGUF_ARCH: Record<string, string> = { llama: "llama", qwen2: "qwen2", mixtral: "llama", qwen2moe: "qwen2moe", qwen3moe: "qwen3moe" };

Object.entries(GGUF_ARCH).forEach(([kind, arch], i) => {
  test(`${(CONFIGS[kind]!.architectures as string[])[0]} from the HF layout → Sigma → GGUF (${arch}) → llama.cpp: 32 greedy tokens and log-probs within 1e-3`, async () => {
    const c = config(kind);
    const from = writeHf(c, hfWeights(kind, c, 100 + i), { tokenizer: toHfJson(tok) });
    const out = join(dir, `${kind}-sigma`);
    const imported = importHf(from, { out });
    assert.equal(imported.architecture, (CONFIGS[kind]!.architectures as string[])[0]);
    const model = await openModel(out);
    const path = join(dir, `${kind}.gguf`);
    const r = await exportGguf(model, { out: path, type: "f32" });
    assert.equal(r.architecture, arch);
    await compareGreedy(env.llama, path, model.network, PROMPTS, 32);
  });
});

test("Pangu Pro MoE imports from the HF layout, and its GGUF export is refused by name (MoGE has no llama.cpp counterpart)", async () => {
  const c = config("pangu");
  const from = writeHf(c, hfWeights("pangu", c, 99), { tokenizer: toHfJson(tok) });
  const out = join(dir, "pangu-sigma");
  importHf(from, { out });
  const model = await openModel(out);
  const path = join(dir, "pangu.gguf");
  await assert.rejects(exportGguf(model, { out: path }), (e: unknown) => e instanceof SigmaError && /moge/i.test(e.message));
});
