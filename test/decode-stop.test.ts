// Generated text without special tokens or broken characters, cut at stop strings:
// Tokenizer.decode(ids, { skipSpecial }), its streaming decoder, and the stop-string matcher (src/serve/stop.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Rng } from "../src/util/rng.js";
import { SigmaError } from "../src/util/errors.js";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import { Tokenizer } from "../src/tokenizer/codec.js";
import { BYTE_TO_CHAR } from "../src/tokenizer/pretokenize.js";
import { StopMatcher, type StopResult } from "../src/serve/stop.js";

const TEXTS = ["你好，中文世界。", "Hello, world! The end.", "Emoji: 😀 👍🏽 and 𠀀 (astral Han)", "export const x = 1;\n\n"];
const tok = (() => {
  const c = new WordCounter();
  for (const t of TEXTS) c.add(t.repeat(4));
  return trainBpe(c, { vocabSize: 400, domains: ["zh", "en"], langs: ["zh", "en"] });
})();
const S = tok.specials.length;
/** The token id of one raw byte. */
const byteIds = (s: string): number[] => [...new TextEncoder().encode(s)].map((b) => S + b);
const EOT = tok.eotId;
const EN = tok.domainTokenId("en");
const LANG_ZH = tok.langTokenId("zh");
/** No U+FFFD and no UTF-16 surrogate outside a pair. */
const noBrokenChar = (s: string): boolean => !s.includes("\uFFFD") && !/[\uD800-\uDFFF]/.test(s.replace(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g, ""));

test("decode shows special tokens by default and leaves them out with skipSpecial", () => {
  const ids = [EN, ...tok.encode("Hello, world!"), LANG_ZH, ...tok.encode("你好"), EOT, tok.padId];
  assert.equal(tok.decode(ids), "<|domain:en|>Hello, world!<|lang:zh|>你好<|endoftext|><|pad|>");
  assert.equal(tok.decode(ids, { skipSpecial: true }), "Hello, world!你好");
  assert.equal(new TextDecoder().decode(tok.decodeBytes(ids, { skipSpecial: true })), "Hello, world!你好");
  assert.equal(tok.decode([EOT, EOT], { skipSpecial: true }), "");
  for (let id = 0; id < S; id++) assert.ok(tok.isSpecial(id), `id ${id}`);
  for (const id of [S, S + 255, tok.vocabSize - 1, -1, 1.5, tok.vocabSize]) assert.equal(tok.isSpecial(id), false, `id ${id}`);
  // An id outside the vocabulary is an error, skipped or not.
  assert.throws(() => tok.decode([tok.vocabSize], { skipSpecial: true }), (e: unknown) => e instanceof SigmaError && /outside the vocabulary/.test(e.message));
});

test("the streaming decoder holds back a character split across tokens until it completes", () => {
  const d = tok.streamDecoder();
  // 中 is e4 b8 ad: three byte tokens, one at a time.
  assert.deepEqual(byteIds("中").map((id) => d.push(id)), ["", "", "中"]);
  // 😀 is f0 9f 98 80.
  assert.deepEqual(byteIds("😀").map((id) => d.push(id)), ["", "", "", "😀"]);
  assert.equal(d.end(), "");
  // Tokens that end one character and start the next: a vocabulary whose merges make [e4 b8] [ad e6] [96 87] of 中文.
  const c = (b: number): string => BYTE_TO_CHAR[b]!;
  const merges: [string, string][] = [[c(0xe4), c(0xb8)], [c(0xad), c(0xe6)], [c(0x96), c(0x87)]];
  const odd = new Tokenizer({ domains: ["en"], langs: [], tokens: [...BYTE_TO_CHAR, ...merges.map(([l, r]) => l + r)], merges });
  const ids = odd.encode("中文");
  assert.equal(ids.length, 3, "three tokens, each across a character boundary");
  const od = odd.streamDecoder();
  assert.deepEqual(ids.map((id) => od.push(id)), ["", "中", "文"]);
  assert.equal(od.end(), "");
  // A character that never completes: its bytes come out as U+FFFD at the end, as decode() gives them.
  const cut = tok.streamDecoder();
  assert.equal(cut.push(byteIds("中")[0]!), "");
  assert.equal(cut.end(), "\uFFFD");
  assert.equal(tok.decode(byteIds("中").slice(0, 1)), "\uFFFD");
});

test("the streaming decoder's pieces join to decode(ids), and none holds a broken character (random splits)", () => {
  const rng = new Rng(7);
  const text = TEXTS.join(" ");
  for (let round = 0; round < 50; round++) {
    // Byte tokens and merged tokens mixed: the encoding, with some tokens replaced by their bytes, and specials in between.
    const ids: number[] = [];
    for (const id of tok.encode(text)) {
      if (rng.uniform() < 0.5) ids.push(...[...tok.decodeBytes([id])].map((b) => S + b));
      else ids.push(id);
      if (rng.uniform() < 0.05) ids.push(rng.uniform() < 0.5 ? EOT : EN);
    }
    for (const skipSpecial of [false, true]) {
      const d = tok.streamDecoder({ skipSpecial });
      const pieces = ids.map((id) => d.push(id));
      pieces.push(d.end());
      assert.equal(pieces.join(""), tok.decode(ids, { skipSpecial }));
      for (const p of pieces) assert.ok(noBrokenChar(p), JSON.stringify(p));
      if (skipSpecial) assert.doesNotMatch(pieces.join(""), /<\|/);
    }
  }
});

/** Feeds pieces; returns every result and the text emitted in all (end() included unless stopped). */
function feed(stops: string[], pieces: string[]): { results: StopResult[]; emitted: string; stop?: string } {
  const m = new StopMatcher(stops);
  const results = pieces.map((p) => m.push(p));
  const stop = results.find((r) => r.stopped)?.stop;
  return { results, emitted: results.map((r) => r.text).join("") + m.end(), stop };
}

/** The reference: the stop string that completes first in the whole text (earliest end, then earliest start), by brute force. */
function reference(stops: string[], text: string): { emitted: string; stop?: string } {
  for (let end = 1; end <= text.length; end++) {
    const hits = stops.filter((s) => s.length <= end && text.slice(end - s.length, end) === s).sort((a, b) => b.length - a.length);
    if (hits.length > 0) return { emitted: text.slice(0, end - hits[0]!.length), stop: hits[0] };
  }
  return { emitted: text };
}

test("no stop strings: every piece passes through at once", () => {
  const r = feed([], ["a", "<|", "b", "中"]);
  assert.deepEqual(r.results.map((x) => x.text), ["a", "<|", "b", "中"]);
  assert.ok(r.results.every((x) => !x.stopped));
  assert.equal(r.emitted, "a<|b中");
});

test("a stop string split across three pieces: its start is held back, nothing of it is emitted", () => {
  const r = feed(["<END>"], ["abc<E", "N", "D>rest", "more"]);
  assert.deepEqual(r.results.map((x) => [x.text, x.stopped]), [["abc", false], ["", false], ["", true], ["", true]]);
  assert.equal(r.results[2]!.stop, "<END>");
  assert.equal(r.emitted, "abc");
});

test("a false start is released as soon as it cannot be a stop string, or at the end", () => {
  let r = feed(["abc"], ["xab", "d"]);
  assert.deepEqual(r.results.map((x) => x.text), ["x", "abd"]);
  r = feed(["xyz"], ["ab", "x"]);
  assert.deepEqual(r.results.map((x) => x.text), ["ab", ""]);
  assert.equal(r.emitted, "abx", "end() gives back the held x");
});

test("overlapping prefixes: stop abab in ababab, aab in aaab", () => {
  assert.deepEqual(feed(["abab"], ["ab", "ab", "ab"]).results.map((x) => [x.text, x.stopped]), [["", false], ["", true], ["", true]]);
  assert.equal(feed(["abab"], [..."xababab"]).emitted, "x");
  assert.equal(feed(["abab"], ["xaba", "bab"]).emitted, "x");
  assert.equal(feed(["aab"], [..."aaab"]).emitted, "a");
  assert.equal(feed(["aab"], ["aaa", "b"]).emitted, "a");
});

test("several stop strings: the one that completes first wins, however the text is cut", () => {
  let r = feed(["\n\n", "###"], ["hello\n", "#", "##"]);
  assert.deepEqual(r.results.map((x) => x.text), ["hello", "\n", ""]);
  assert.equal(r.stop, "###");
  assert.equal(r.emitted, "hello\n");
  // "bc" ends before "abcd" does: the same answer whole or a character at a time.
  for (const pieces of [["xabcd"], [..."xabcd"], ["xa", "bcd"]]) {
    r = feed(["abcd", "bc"], pieces);
    assert.equal(r.stop, "bc", pieces.join("|"));
    assert.equal(r.emitted, "xa");
  }
  // Two ending at the same place: the longer (it started first).
  assert.equal(feed(["cd", "bcd"], ["abcde"]).stop, "bcd");
});

test("random texts and random cuts agree with the whole-text reference", () => {
  const rng = new Rng(11);
  const stopSets = [["abab"], ["aab", "ba"], ["abc", "bca", "cc"], ["a"], ["cab", "abcab"]];
  for (let round = 0; round < 400; round++) {
    const stops = stopSets[round % stopSets.length]!;
    const text = Array.from({ length: 1 + Math.floor(rng.uniform() * 12) }, () => "abc"[Math.floor(rng.uniform() * 3)]).join("");
    const pieces: string[] = [];
    for (let i = 0; i < text.length; ) {
      const n = 1 + Math.floor(rng.uniform() * 4);
      pieces.push(text.slice(i, i + n));
      i += n;
    }
    const want = reference(stops, text);
    const got = feed(stops, pieces);
    assert.equal(got.emitted, want.emitted, `${JSON.stringify(stops)} ${pieces.join("|")}`);
    assert.equal(got.stop, want.stop, `${JSON.stringify(stops)} ${pieces.join("|")}`);
    for (const s of stops) assert.ok(!got.emitted.includes(s), "the emitted text never holds a stop string");
  }
});

test("multi-byte characters split across tokens: decoder and matcher together stop at 中文 and at an emoji", () => {
  assert.ok(!noBrokenChar("\uD83D") && !noBrokenChar("a\uFFFD") && noBrokenChar("😀𠀀"), "the check itself");
  for (const [text, stop, before] of [["你好中文世界", "中文", "你好"], ["ok 😀! bye", "😀!", "ok "], ["𠀀𠀀x", "𠀀x", "𠀀"]] as const) {
    const d = tok.streamDecoder();
    const m = new StopMatcher([stop, "never"]);
    let out = "";
    let stopped = false;
    for (const id of byteIds(text)) {
      const piece = d.push(id);
      const r = m.push(piece);
      assert.ok(noBrokenChar(r.text), JSON.stringify(r.text));
      out += r.text;
      if (r.stopped) {
        stopped = true;
        break;
      }
    }
    assert.ok(stopped, text);
    assert.equal(out, before);
  }
});

test("empty stop strings and lone surrogates are refused, naming which", () => {
  assert.throws(() => new StopMatcher(["ok", ""]), (e: unknown) => e instanceof SigmaError && /stop string 2 is empty/.test(e.message));
  assert.throws(() => new StopMatcher(["\uD83D"]), (e: unknown) => e instanceof SigmaError && /stop string 1 .* lone UTF-16 surrogate/.test(e.message));
  assert.doesNotThrow(() => new StopMatcher(["😀"]));
});
