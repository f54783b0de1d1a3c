/**
 * Pre-tokenization: how text is cut into pieces before byte-level BPE runs
 * inside each piece, and the byte ↔ character map of GPT-2's byte-level BPE.
 *
 * The split rule is one regular expression, written twice: `SPLIT_PATTERN` in
 * the Oniguruma dialect that tokenizer.json carries (read by the Rust
 * `tokenizers` crate and by @huggingface/tokenizers, which translates it to a
 * JS RegExp), and `SPLIT_REGEX`, the JS RegExp we run. They differ only in how
 * the Han script is named (`\p{Han}` vs `\p{Script=Han}`); the test suite
 * checks that both libraries cut a multilingual sample identically. We avoid
 * `\s`, `\w`, `\d` on purpose: their sets differ between Oniguruma and JS, so
 * we spell out `\p{White_Space}`, `\p{L}`, `\p{N}`.
 *
 * Alternatives, in order:
 *   '(?:[sdmt]|ll|ve|re)   English contractions ("don't" → "don", "'t")
 *    ?[^…Han]+             a run of letters and marks, not Han, with one optional leading space
 *   \p{Han}+               a run of Han characters: Chinese has no spaces, so a run
 *                          between punctuation is the "word" BPE learns merges within
 *   \p{N}{1,3}             digits in groups of at most three (numbers are not memorised whole)
 *    ?[^\s\p{L}\p{N}]+…    punctuation, symbols, emoji (with ZWJ and modifiers) and control characters
 *   \s*[\r\n]+             line breaks with the whitespace before them
 *   \s+(?!\S) | \s+        other whitespace; the last space before a word stays with the word
 *                          (code indentation becomes "   " + " return")
 * Together they match every code point, so no text falls between matches; if
 * some did, it would still become a piece of its own, as in the HF "Isolated"
 * split behaviour.
 */
import { SigmaError } from "../util/errors.js";

const WS = "\\p{White_Space}";
const NOT_WS = "\\P{White_Space}";

function buildPattern(han: string): string {
  return [
    "'(?:[sdmt]|ll|ve|re)",
    ` ?[^${WS}\\p{N}\\p{P}\\p{S}\\p{C}${han}]+`,
    `${han}+`,
    "\\p{N}{1,3}",
    ` ?[^${WS}\\p{L}\\p{N}]+[\\r\\n]*`,
    `${WS}*[\\r\\n]+`,
    `${WS}+(?!${NOT_WS})`,
    `${WS}+`,
  ].join("|");
}

/** The Split pattern as stored in tokenizer.json (Oniguruma dialect). */
export const SPLIT_PATTERN = buildPattern("\\p{Han}");
/** The same pattern for V8. */
export const SPLIT_REGEX = new RegExp(buildPattern("\\p{Script=Han}"), "gu");

/**
 * Cuts `text` into pre-tokens. Matches become pieces; any text between
 * matches (none with our pattern) becomes a piece too.
 */
export function pretokenize(text: string): string[] {
  const out: string[] = [];
  let prev = 0;
  SPLIT_REGEX.lastIndex = 0;
  for (const m of text.matchAll(SPLIT_REGEX)) {
    const at = m.index!;
    if (at > prev) out.push(text.slice(prev, at));
    if (m[0].length > 0) out.push(m[0]);
    prev = at + m[0].length;
  }
  if (prev < text.length) out.push(text.slice(prev));
  return out;
}

/**
 * GPT-2's byte → printable character map: printable Latin-1 bytes map to
 * themselves, the other 68 bytes to U+0100… in order. tokenizer.json spells
 * every token in these characters.
 */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const keep: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) keep.push(b);
  for (let b = 0xa1; b <= 0xac; b++) keep.push(b);
  for (let b = 0xae; b <= 0xff; b++) keep.push(b);
  const map = new Array<string>(256);
  for (const b of keep) map[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (map[b] === undefined) map[b] = String.fromCharCode(256 + n++);
  return map;
})();

export const CHAR_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

/** The byte-level spelling of a UTF-8 byte string. */
export function bytesToChars(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += BYTE_TO_CHAR[bytes[i]!];
  return s;
}

/** The bytes a byte-level spelled token stands for; throws on a character outside the map. */
export function charsToBytes(token: string, where: string): Uint8Array {
  const out = new Uint8Array(token.length);
  for (let i = 0; i < token.length; i++) {
    const b = CHAR_TO_BYTE.get(token[i]!);
    if (b === undefined) {
      throw new SigmaError(
        `${where}: token ${JSON.stringify(token)} has character U+${token.charCodeAt(i).toString(16).toUpperCase()} outside the byte-level alphabet`,
        "Sigma reads byte-level BPE tokenizers only (GPT-2 byte-to-unicode spelling)",
      );
    }
    out[i] = b;
  }
  return out;
}

/** Index of the first lone surrogate in `s`, or -1 when `s` is well-formed UTF-16. */
export function findLoneSurrogate(s: string, from = 0): number {
  for (let i = from; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0xd800 || c > 0xdfff) continue;
    if (c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        i++;
        continue;
      }
    }
    return i;
  }
  return -1;
}

/** `s` with every lone surrogate replaced by U+FFFD, and how many were replaced. */
export function replaceLoneSurrogates(s: string): { text: string; replaced: number } {
  let i = findLoneSurrogate(s);
  if (i < 0) return { text: s, replaced: 0 };
  let out = "";
  let prev = 0;
  let replaced = 0;
  while (i >= 0) {
    out += s.slice(prev, i) + "\uFFFD";
    replaced++;
    prev = i + 1;
    i = findLoneSurrogate(s, prev);
  }
  return { text: out + s.slice(prev), replaced };
}

/**
 * `text` ready to encode: as is when well-formed; with lone surrogates as
 * U+FFFD when `invalid` is "replace"; otherwise a SigmaError naming the first.
 */
export function wellFormed(text: string, invalid: "throw" | "replace" | undefined): string {
  const bad = findLoneSurrogate(text);
  if (bad < 0) return text;
  if (invalid !== "replace") {
    throw new SigmaError(
      `Cannot encode a lone surrogate U+${text.charCodeAt(bad).toString(16).toUpperCase()} at UTF-16 index ${bad}: it is not a character and has no UTF-8 bytes`,
      'pass { invalid: "replace" } to encode it as U+FFFD, or fix the text',
    );
  }
  return replaceLoneSurrogates(text).text;
}
