import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { Rng } from "../src/util/rng.js";
import { SigmaError } from "../src/util/errors.js";
import { Tokenizer } from "../src/tokenizer/codec.js";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import { fromHfJson, sha256Hex, toHfJson } from "../src/tokenizer/hfjson.js";
import { pretokenize, replaceLoneSurrogates } from "../src/tokenizer/pretokenize.js";

const SPEC = { domains: ["zh", "en", "bi", "code"], langs: ["zh", "en"] };

/** Multilingual text: Chinese, English, Japanese, Korean, Russian, Arabic, code, emoji, odd whitespace. */
const SAMPLES = [
  "子曰：“学而时习之，不亦说乎？有朋自远方来，不亦乐乎？”",
  "The quick brown fox doesn't jump over the lazy dog; it's 3.14159 times lazier.",
  "日本語のテキストと한국어 문장, и немного русского текста, وبعض العربية.",
  "export function add(a: number, b: number): number {\n\treturn a + b; // sum\r\n}\n\n    const xs = [1, 22, 333, 4444];",
  "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇨🇳🇬🇧 ❤️ and a flag-less 🏳️‍🌈!",
  "Whitespace:\u00a0nbsp,\u3000ideographic, \u2003em, tabs\t\tand\u2028line sep\n\n\n  trailing   ",
  "Combining: e\u0301 vs é, Ünïcödé café, 𠀀𠀁 (astral Han), 〇々, ＡＢＣ１２３。",
  "mixed中文English混合123数字and符号!@#$%^&*()_+-=[]{}|;':\",./<>?",
];

const require = createRequire(import.meta.url);
const poetryDir = dirname(require.resolve("chinese-poetry/package.json"));
const commanderDir = dirname(require.resolve("commander")); // its exports hide package.json

function trainSmall(vocabSize = 1200): Tokenizer {
  const c = new WordCounter();
  c.add(readFileSync(join(poetryDir, "dist/lunyu/lunyu.json"), "utf8"));
  c.add(readFileSync(join(commanderDir, "Readme.md"), "utf8"));
  c.add(readFileSync(join(commanderDir, "lib/command.js"), "utf8").slice(0, 60000));
  for (const s of SAMPLES) c.add(s);
  return trainBpe(c, { vocabSize, ...SPEC });
}
const tok = trainSmall();

/** A random well-formed string mixing ASCII, CJK, astral code points, whitespace and marks. */
function randomText(rng: Rng, n: number): string {
  const pools = [
    () => String.fromCharCode(32 + rng.int(95)),
    () => String.fromCharCode(0x4e00 + rng.int(0x5000)),
    () => String.fromCodePoint(0x1f300 + rng.int(0x300)),
    () => [" ", "\n", "\t", "\r\n", "\u3000", "\u00a0"][rng.int(6)]!,
    () => String.fromCharCode(0x300 + rng.int(0x70)),
    () => String.fromCodePoint(1 + rng.int(0x10fffe)).replace(/[\ud800-\udfff]/g, "x"),
  ];
  let s = "";
  for (let i = 0; i < n; i++) s += pools[rng.int(pools.length)]!();
  return s;
}

test("round trip: decode(encode(s)) === s on multilingual text, emoji, code and whitespace", () => {
  for (const s of SAMPLES) assert.equal(tok.decode(tok.encode(s)), s);
  const rng = new Rng(7);
  for (let i = 0; i < 300; i++) {
    const s = randomText(rng, 1 + rng.int(80));
    assert.equal(tok.decode(tok.encode(s)), s, JSON.stringify(s));
  }
  assert.deepEqual(tok.encode(""), []);
});

test("pre-tokenization covers every character and keeps scripts apart", () => {
  const rng = new Rng(3);
  for (let i = 0; i < 200; i++) {
    const s = randomText(rng, 60);
    assert.equal(pretokenize(s).join(""), s);
  }
  assert.deepEqual(pretokenize("hello世界 world"), ["hello", "世界", " world"]);
  assert.deepEqual(pretokenize("  return x;"), [" ", " return", " x", ";"]);
  assert.deepEqual(pretokenize("12345"), ["123", "45"]);
  assert.deepEqual(pretokenize("don't"), ["don", "'t"]);
});

test("lone surrogates: encode throws naming the index, or replaces with U+FFFD when asked", () => {
  const bad = "ok\ud800ok";
  assert.throws(() => tok.encode(bad), (e: unknown) => e instanceof SigmaError && /U\+D800 at UTF-16 index 2/.test(e.message));
  assert.throws(() => tok.encode("a\udc00"), /index 1/);
  assert.equal(tok.decode(tok.encode(bad, { invalid: "replace" })), "ok\ufffdok");
  assert.deepEqual(replaceLoneSurrogates("\udc00x\ud83d\ude00\ud83d"), { text: "\ufffdx\ud83d\ude00\ufffd", replaced: 2 });
  // A well-formed pair is not a lone surrogate.
  assert.equal(tok.decode(tok.encode("\ud83d\ude00")), "😀");
});

test("special tokens are recognised by encode and not by encodeOrdinary", () => {
  const ids = tok.encode("a<|endoftext|>b<|lang:zh|>");
  assert.ok(ids.includes(0));
  assert.ok(ids.includes(tok.langTokenId("zh")));
  assert.ok(!tok.encodeOrdinary("a<|endoftext|>b").includes(0));
  assert.equal(tok.decode(tok.encodeOrdinary("a<|endoftext|>b")), "a<|endoftext|>b");
  assert.equal(tok.domainTokenId("code"), 2 + 3);
  assert.throws(() => tok.domainId("zh-tw"), /Unknown domain "zh-tw".*known domains: zh, en, bi, code/);
});

test("our tokenizer.json loaded by @huggingface/tokenizers gives identical ids", () => {
  const hf = new HfTokenizer(JSON.parse(toHfJson(tok)), { clean_up_tokenization_spaces: false });
  const rng = new Rng(11);
  const texts = [...SAMPLES, SAMPLES.join("\n"), "<|endoftext|>hi<|domain:zh|>", ...Array.from({ length: 100 }, () => randomText(rng, 40))];
  for (const s of texts) {
    const ours = tok.encode(s);
    assert.deepEqual(hf.encode(s).ids, ours, JSON.stringify(s));
    if (ours.length > 0) assert.equal(hf.decode(ours, { clean_up_tokenization_spaces: false }), s);
  }
});

test("tokenizer.json round trip: same ids, same bytes, same hash", () => {
  const json = toHfJson(tok);
  const back = fromHfJson(json, "mem");
  assert.equal(toHfJson(back), json);
  assert.equal(sha256Hex(toHfJson(back)), sha256Hex(json));
  for (const s of SAMPLES) assert.deepEqual(back.encode(s), tok.encode(s));
  const j = JSON.parse(json);
  j.pre_tokenizer.pretokenizers[0].pattern.Regex = "\\s+";
  assert.throws(() => fromHfJson(JSON.stringify(j), "x/tokenizer.json"), /x\/tokenizer.json: unsupported tokenizer.json: a pre_tokenizer/);
  assert.throws(() => fromHfJson("{", "y.json"), /y.json: not valid JSON/);
});

test("training is deterministic and learns the expected first merges", () => {
  assert.equal(toHfJson(trainSmall(600)), toHfJson(trainSmall(600)));
  // Word counts: hug 10, pug 5, pun 12, bun 4, hugs 5 → u+g (20), u+n (16), h+ug (15).
  const c = new WordCounter();
  for (const [w, n] of [["hug", 10], ["pug", 5], ["pun", 12], ["bun", 4], ["hugs", 5]] as const) c.counts.set(w, n);
  const t = trainBpe(c, { vocabSize: 8 + 256 + 3, ...SPEC });
  assert.deepEqual(t.merges, [["u", "g"], ["u", "n"], ["h", "ug"]]);
  assert.deepEqual(t.encode("hug").map((id) => t.vocab[id]), ["hug"]);
  assert.throws(() => trainBpe(new WordCounter(), { vocabSize: 500, ...SPEC }), /empty corpus/);
  assert.throws(() => trainBpe(c, { vocabSize: 100, ...SPEC }), /below the 264 specials and bytes/);
});

test("long-piece BPE (heap) equals the short-piece reference", () => {
  const rng = new Rng(5);
  const enc = new TextEncoder();
  for (let i = 0; i < 100; i++) {
    const s = i % 2 === 0 ? randomText(rng, 30 + rng.int(200)) : "ab".repeat(rng.int(100)) + "子曰".repeat(rng.int(50));
    const bytes = enc.encode(s);
    const base = Array.from(bytes, (b) => tok.specials.length + b);
    assert.deepEqual(tok.bpeLong(base.slice()), tok.bpeShort(base.slice()), JSON.stringify(s));
  }
});
