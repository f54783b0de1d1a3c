// Hostile or damaged tokenizer.json files: each is a SigmaError naming the
// file and what is wrong, through loadTokenizer and the CLI — never a crash,
// a hang, or a tokenizer that encodes differently from Hugging Face's.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import { loadTokenizer, toHfJson } from "../src/tokenizer/hfjson.js";
import { assertRefused, cli, failures, sigmaError } from "./formats-helpers.js";

const root = mkdtempSync(join(tmpdir(), "sigma-formats-tok-"));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

const wc = new WordCounter();
wc.add("hello world, hello sigma, the quick brown fox. 你好，世界".repeat(4));
const tok = trainBpe(wc, { vocabSize: 300, domains: ["zh", "en"], langs: ["zh", "en"] });
const good = toHfJson(tok);
const S = tok.specials.length;

const write = (text: string): string => {
  const p = join(root, `t${n++}.json`);
  writeFileSync(p, text);
  return p;
};
/** The good tokenizer.json, changed by `edit` (which gets the parsed JSON). */
const edited = (edit: (j: any) => void): string => {
  const j = JSON.parse(good);
  edit(j);
  return write(JSON.stringify(j));
};
const firstMerged = tok.vocab[S + 256]!; // the first token a merge made

test("tokenizer.json: every malformed file is a SigmaError naming the file and the problem", () => {
  const cases: [string, string, RegExp][] = [
    ["not JSON", write("{"), /not valid JSON/],
    ["not an object", write("[1,2]"), /not a JSON object/],
    ["model not BPE", edited((j) => (j.model.type = "WordPiece")), /model type "WordPiece"/],
    ["added_tokens entry null", edited((j) => (j.added_tokens[1] = null)), /added_tokens\[1\] is not an object/],
    ["added token with a numeric content", edited((j) => (j.added_tokens[0].content = 7)), /added_tokens\[0\] is not an object with a string "content"/],
    ["added token out of order", edited((j) => (j.added_tokens[1].id = 5)), /added token "<\|pad\|>" has id 5, expected 1/],
    ["added token that strips whitespace", edited((j) => (j.added_tokens[2].lstrip = true)), /added token "<\|domain:zh\|>" has lstrip: true, expected false/],
    ["added token that is not special", edited((j) => (j.added_tokens[0].special = false)), /has special: false, expected true/],
    ["a special that is not Sigma's", edited((j) => (j.added_tokens[2].content = "<|mask|>")), /unexpected special token "<\|mask\|>"/],
    ["vocab not an object", edited((j) => (j.model.vocab = [1, 2])), /model\.vocab is not an object/],
    ["vocab id a string", edited((j) => (j.model.vocab[firstMerged] = "300")), /has id "300", not an integer/],
    ["vocab id far out of range", edited((j) => (j.model.vocab[firstMerged] = 1e9)), /has id 1000000000, but the \d+ non-special tokens must have ids/],
    ["vocab id used twice", edited((j) => (j.model.vocab[firstMerged] = S + 3)), /vocab id \d+ is used twice/],
    ["vocab id of a special", edited((j) => (j.model.vocab[firstMerged] = 1)), /has id 1 \(ids below \d+ are the specials/],
    // Extra tokens at the end of the vocabulary (no merge makes them).
    ["a token spelled with a non-byte character", edited((j) => (j.model.vocab["中文"] = tok.vocabSize)), /token id 300 \("中文"\) has the character "中", which spells no byte/],
    ["an empty token", edited((j) => (j.model.vocab[""] = tok.vocabSize)), /token id 300 is ""; a merged token is at least two byte characters/],
    ["a merge of a token not in the vocab", edited((j) => j.model.merges.push(["Ġzz", "q"])), /merge \d+ \("Ġzz", "q"\) uses or makes a token missing from the vocabulary/],
    ["a merge whose result is not in the vocab", edited((j) => j.model.merges.push(["q", "q"])), /merge \d+ \("q", "q"\) uses or makes a token missing/],
    ["a merge that is not a pair", edited((j) => j.model.merges.push(["a"])), /merge \d+ \(\["a"\]\) is neither/],
    ["a merge of numbers", edited((j) => j.model.merges.push([1, 2])), /merge \d+ \(\[1,2\]\) is neither/],
    ["a merge with an empty side", edited((j) => j.model.merges.push("a ")), /merge \d+ \("a "\) is neither/],
    ["merges not a list", edited((j) => (j.model.merges = {})), /model\.merges is not a list/],
    ["a decoder other than ByteLevel", edited((j) => (j.decoder = { type: "WordPiece" })), /a decoder other than ByteLevel/],
    ["a post-processor", edited((j) => (j.post_processor = { type: "TemplateProcessing" })), /a post_processor/],
    ["truncation", edited((j) => (j.truncation = { max_length: 4 })), /truncation or padding/],
    ["an unk token", edited((j) => (j.model.unk_token = "<unk>")), /BPE options other than plain byte-level/],
    ["a repeated key", write(good.replace('"merges":', '"merges": [],\n  "merges":')), /the key "merges" appears twice in "model"/],
  ];
  assert.deepEqual(failures(cases.map(([what, p, re]) => [what, () => assert.throws(() => loadTokenizer(p), sigmaError(p, re))])), []);
});

test("tokenizer.json: a well-formed file loads, and a 400k-entry merge list loads without blowing up", () => {
  assert.deepEqual(loadTokenizer(write(good)).tokenizer.encode("hello world"), tok.encode("hello world"));
  // 400k repeats of the first merge (legal: a repeat never fires after its first rank).
  const j = JSON.parse(good);
  const first = j.model.merges[0];
  for (let i = 0; i < 400_000; i++) j.model.merges.push(first);
  const p = write(JSON.stringify(j));
  const t0 = performance.now();
  const big = loadTokenizer(p).tokenizer;
  const ms = performance.now() - t0;
  assert.deepEqual(big.encode("hello world"), tok.encode("hello world"));
  assert.ok(ms < 10_000, `400k merges took ${ms.toFixed(0)} ms`);
});

test("CLI: sigma tokenizer encode with a damaged tokenizer exits 1 with one line naming the file", async () => {
  const ok = await cli(["tokenizer", "encode", "hello", "--tokenizer", write(good), "--json"]);
  assert.equal(ok.code, 0, ok.err);
  const p = edited((j) => (j.model.vocab["中文"] = tok.vocabSize));
  assertRefused(await cli(["tokenizer", "encode", "hello", "--tokenizer", p]), p, /spells no byte/);
  const p2 = edited((j) => (j.added_tokens[1] = null));
  assertRefused(await cli(["tokenizer", "decode", "1", "2", "--tokenizer", p2]), p2, /added_tokens\[1\] is not an object/);
});
