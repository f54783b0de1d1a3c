/**
 * Saving and loading a Tokenizer as a Hugging Face tokenizer.json.
 *
 * The file is a standard byte-level BPE: no normalizer; pre_tokenizer =
 * Sequence[Split(our pattern, Isolated), ByteLevel(add_prefix_space false,
 * use_regex false)]; model BPE with vocab + merges; ByteLevel decoder; the
 * specials as added_tokens (special, not normalized, no strip). Loading
 * with fromHfJson / loadTokenizer is strict: Sigma reads back the tokenizers
 * it writes (with their domain and language tokens), and rejects anything
 * else.
 *
 * Other tokenizer.json files — the Hugging Face tokenizers of imported
 * models — are read by `parseTokenizerJson` / `loadAnyTokenizer` into an
 * HfTokenizer (hf.ts). A file whose pre_tokenizer is exactly Sigma's is
 * taken as Sigma's own and read strictly as above, so a Sigma tokenizer
 * keeps its domains and language tags.
 *
 * The tokenizer's hash is the sha256 of the file's bytes; shards and
 * manifests record it so that data made with one tokenizer is never read
 * with another.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { SigmaError } from "../util/errors.js";
import { readRegularFile } from "../util/read.js";
import { writeFileAtomic } from "../util/fs.js";
import { jsonErrorText, parseJsonStrict, sameJson, showJson } from "../util/strict-json.js";
import { SPLIT_PATTERN } from "./pretokenize.js";
import { parseSpecials } from "./specials.js";
import { Tokenizer, type TextTokenizer } from "./codec.js";
import { HfTokenizer, type HfTokenizerOptions } from "./hf.js";

const PRE_TOKENIZER = {
  type: "Sequence",
  pretokenizers: [
    { type: "Split", pattern: { Regex: SPLIT_PATTERN }, behavior: "Isolated", invert: false },
    { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
  ],
};
const DECODER = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false };

/** The tokenizer.json text for `tok` (deterministic: same tokenizer, same bytes); a Hugging Face tokenizer's is the text it was read from. */
export function toHfJson(tok: TextTokenizer): string {
  if (tok instanceof HfTokenizer) return tok.sourceText;
  if (!(tok instanceof Tokenizer)) throw new TypeError("toHfJson: not a tokenizer Sigma made");
  // A null-prototype object: tokens such as "constructor" or "__proto__" must be plain keys.
  const vocab: Record<string, number> = Object.create(null);
  tok.vocab.forEach((t, id) => {
    vocab[t] = id;
  });
  const json = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: tok.specials.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: PRE_TOKENIZER,
    post_processor: null,
    decoder: DECODER,
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: tok.merges,
    },
  };
  return JSON.stringify(json, null, 1) + "\n";
}

/** Flags an added token must have: HF matches such a token exactly, as Sigma does. */
const ADDED_FLAGS = { single_word: false, lstrip: false, rstrip: false, normalized: false, special: true } as const;

const isObject = (x: unknown): x is Record<string, unknown> => typeof x === "object" && x !== null && !Array.isArray(x);
const show = (x: unknown): string => showJson(x, 60);

/**
 * Parses tokenizer.json text written by `toHfJson`; `where` names the file in
 * errors. Strict, so that Sigma never encodes differently from HF with the
 * same file: no key twice; added_tokens are Sigma's specials with ids 0…S−1
 * and the exact-match flags; vocab maps each token to a distinct id, the
 * non-special ids covering S…V−1 with no hole (specials may be listed with
 * their own ids); every token is spelled in byte-level characters; every
 * merge is a pair of vocab tokens whose concatenation is in the vocab.
 * Linear in the file's size.
 */
export function fromHfJson(text: string, where: string): Tokenizer {
  return fromParsed(parseJson(text, where), where);
}

function parseJson(text: string, where: string): unknown {
  try {
    return parseJsonStrict(text);
  } catch (e) {
    throw new SigmaError(`${where}: not valid JSON (${jsonErrorText(e)})`, "was the file truncated? retrain with `sigma tokenizer train`");
  }
}

/** Whether parsed tokenizer.json `j` is in Sigma's own layout (its pre_tokenizer is Sigma's). */
function isSigmaLayout(j: unknown): boolean {
  return isObject(j) && sameJson(j.pre_tokenizer, PRE_TOKENIZER);
}

/**
 * Any supported tokenizer.json: Sigma's own layout (read strictly, with its
 * domains) or another Hugging Face BPE tokenizer (hf.ts). `opts.eos` names
 * the end-of-text token of a Hugging Face tokenizer.
 */
export function parseTokenizerJson(text: string, where: string, opts: HfTokenizerOptions = {}): TextTokenizer {
  const j = parseJson(text, where);
  return isSigmaLayout(j) ? fromParsed(j, where) : new HfTokenizer(j, where, opts, text);
}

function fromParsed(j: unknown, where: string): Tokenizer {
  const fail = (what: string): never => {
    throw new SigmaError(`${where}: unsupported tokenizer.json: ${what}`, "Sigma loads the byte-level BPE tokenizers that `sigma tokenizer train` writes");
  };
  if (!isObject(j)) return fail("the file is not a JSON object");
  const m = j.model;
  if (!isObject(m) || m.type !== "BPE") return fail(`model type ${show(isObject(m) ? m.type : m)}, expected "BPE"`);
  if (m.byte_fallback || m.continuing_subword_prefix || m.end_of_word_suffix || m.ignore_merges || m.dropout || m.unk_token != null || m.fuse_unk) fail("BPE options other than plain byte-level");
  if (j.normalizer != null) fail("a normalizer");
  if (j.post_processor != null) fail("a post_processor");
  if (j.truncation != null || j.padding != null) fail("truncation or padding settings");
  if (!sameJson(j.pre_tokenizer, PRE_TOKENIZER)) fail("a pre_tokenizer other than Sigma's Split + ByteLevel");
  if (!sameJson(j.decoder, DECODER)) fail("a decoder other than ByteLevel");
  const added = Array.isArray(j.added_tokens) ? j.added_tokens : fail("no added_tokens list");
  const contents = added.map((t: unknown, i: number): string => {
    if (!isObject(t) || typeof t.content !== "string") return fail(`added_tokens[${i}] is not an object with a string "content"`);
    if (t.id !== i) fail(`added token ${show(t.content)} has id ${show(t.id)}, expected ${i}`);
    for (const [k, v] of Object.entries(ADDED_FLAGS)) if (t[k] !== v) fail(`added token ${show(t.content)} has ${k}: ${show(t[k])}, expected ${v}`);
    return t.content;
  });
  const spec = parseSpecials(contents, where);
  const S = added.length;
  if (!isObject(m.vocab)) return fail("model.vocab is not an object of token → id");
  const entries = Object.entries(m.vocab);
  // Ids S…S+n−1 of the n non-special entries: any id outside that range leaves a hole or repeats one.
  const n = entries.filter(([t, id]) => !(typeof id === "number" && id < S && contents[id] === t)).length;
  const tokens: string[] = new Array<string>(n);
  for (const [t, id] of entries) {
    if (typeof id === "number" && id < S && contents[id] === t) continue; // specials are listed in the vocab too, as in GPT-2
    if (!Number.isInteger(id)) fail(`vocab entry ${show(t)} has id ${show(id)}, not an integer`);
    const k = (id as number) - S;
    if (k < 0) fail(`vocab entry ${show(t)} has id ${id} (ids below ${S} are the specials ${contents.join(" ")})`);
    if (k >= n) fail(`vocab entry ${show(t)} has id ${id}, but the ${n} non-special tokens must have ids ${S}…${S + n - 1}`);
    if (tokens[k] !== undefined) fail(`vocab id ${id} is used twice (${show(tokens[k])} and ${show(t)})`);
    tokens[k] = t;
  }
  const raw = Array.isArray(m.merges) ? (m.merges as unknown[]) : fail("model.merges is not a list");
  const merges = raw.map((x, i): [string, string] => {
    if (Array.isArray(x) && x.length === 2 && typeof x[0] === "string" && typeof x[1] === "string" && x[0] && x[1]) return [x[0], x[1]];
    if (typeof x === "string") {
      const parts = x.split(" ");
      if (parts.length === 2 && parts[0] && parts[1]) return parts as [string, string];
    }
    return fail(`merge ${i} (${show(x)}) is neither ["a", "b"] nor "a b" with non-empty a and b`);
  });
  return new Tokenizer({ ...spec, tokens, merges }, where);
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Writes tokenizer.json atomically and returns its sha256. */
export function saveTokenizer(tok: Tokenizer, path: string): string {
  const text = toHfJson(tok);
  writeFileAtomic(path, text);
  return sha256Hex(text);
}

export interface LoadedTokenizer {
  tokenizer: Tokenizer;
  sha256: string;
  path: string;
}

export function loadTokenizer(path: string): LoadedTokenizer {
  const bytes = readTokenizerFile(path);
  return { tokenizer: fromHfJson(bytes.toString("utf8"), path), sha256: sha256Hex(bytes), path };
}

/** loadTokenizer for any supported tokenizer.json (see parseTokenizerJson). */
export function loadAnyTokenizer(path: string, opts: HfTokenizerOptions = {}): { tokenizer: TextTokenizer; sha256: string; path: string } {
  const bytes = readTokenizerFile(path);
  return { tokenizer: parseTokenizerJson(bytes.toString("utf8"), path, opts), sha256: sha256Hex(bytes), path };
}

function readTokenizerFile(path: string): Buffer {
  let bytes: Buffer;
  try {
    bytes = readRegularFile(path, "tokenizer", "train one with `sigma tokenizer train`", 512 * 2 ** 20);
  } catch (e) {
    if (e instanceof SigmaError) throw e;
    throw new SigmaError(`Cannot read tokenizer ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "train one with `sigma tokenizer train`");
  }
  return bytes;
}
