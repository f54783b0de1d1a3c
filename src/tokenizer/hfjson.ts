/**
 * Saving and loading a Tokenizer as a Hugging Face tokenizer.json.
 *
 * The file is a standard byte-level BPE: no normalizer; pre_tokenizer =
 * Sequence[Split(our pattern, Isolated), ByteLevel(add_prefix_space false,
 * use_regex false)]; model BPE with vocab + merges; ByteLevel decoder; the
 * specials as added_tokens (special, not normalized, no strip). Loading is
 * strict: Sigma reads back the tokenizers it writes, and rejects any other
 * pre-tokenizer or model rather than encode differently from HF.
 *
 * The tokenizer's hash is the sha256 of the file's bytes; shards and
 * manifests record it so that data made with one tokenizer is never read
 * with another.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { SigmaError } from "../util/errors.js";
import { writeFileAtomic } from "../util/fs.js";
import { SPLIT_PATTERN } from "./pretokenize.js";
import { parseSpecials } from "./specials.js";
import { Tokenizer } from "./codec.js";

const PRE_TOKENIZER = {
  type: "Sequence",
  pretokenizers: [
    { type: "Split", pattern: { Regex: SPLIT_PATTERN }, behavior: "Isolated", invert: false },
    { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
  ],
};
const DECODER = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false };

/** The tokenizer.json text for `tok` (deterministic: same tokenizer, same bytes). */
export function toHfJson(tok: Tokenizer): string {
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

interface HfAddedToken {
  id: number;
  content: string;
}

/** Parses tokenizer.json text written by `toHfJson`; `where` names the file in errors. */
export function fromHfJson(text: string, where: string): Tokenizer {
  let j: any;
  try {
    j = JSON.parse(text);
  } catch (e) {
    throw new SigmaError(`${where}: not valid JSON (${(e as Error).message})`, "was the file truncated? retrain with `sigma tokenizer train`");
  }
  const fail = (what: string): never => {
    throw new SigmaError(`${where}: unsupported tokenizer.json: ${what}`, "Sigma loads the byte-level BPE tokenizers that `sigma tokenizer train` writes");
  };
  const m = j?.model;
  if (m?.type !== "BPE") fail(`model type ${JSON.stringify(m?.type)}, expected "BPE"`);
  if (m.byte_fallback || m.continuing_subword_prefix || m.end_of_word_suffix || m.ignore_merges) fail("BPE options other than plain byte-level");
  if (j.normalizer != null) fail("a normalizer");
  if (JSON.stringify(j.pre_tokenizer) !== JSON.stringify(PRE_TOKENIZER)) fail("a pre_tokenizer other than Sigma's Split + ByteLevel");
  const added: HfAddedToken[] = Array.isArray(j.added_tokens) ? j.added_tokens : fail("no added_tokens");
  added.forEach((t, i) => {
    if (t.id !== i) fail(`added token ${JSON.stringify(t.content)} has id ${t.id}, expected ${i}`);
  });
  const spec = parseSpecials(added.map((t) => t.content), where);
  const S = added.length;
  const vocab: Record<string, number> = m.vocab ?? fail("no vocab");
  const tokens: string[] = [];
  for (const [t, id] of Object.entries(vocab)) {
    if (Number.isInteger(id) && id < S && added[id]!.content === t) continue; // specials are listed in the vocab too, as in GPT-2
    if (!Number.isInteger(id) || id < S) fail(`vocab entry ${JSON.stringify(t)} has id ${id} (ids below ${S} are specials)`);
    if (tokens[id - S] !== undefined) fail(`vocab id ${id} is used twice`);
    tokens[id - S] = t;
  }
  for (let i = 0; i < tokens.length; i++) if (tokens[i] === undefined) fail(`vocab has no token with id ${i + S}`);
  const raw: unknown[] = Array.isArray(m.merges) ? m.merges : fail("no merges");
  const merges = raw.map((x, i): [string, string] => {
    if (Array.isArray(x) && x.length === 2) return [String(x[0]), String(x[1])];
    if (typeof x === "string" && x.split(" ").length === 2) return x.split(" ") as [string, string];
    return fail(`merge ${i} is neither ["a", "b"] nor "a b"`);
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
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new SigmaError(`Cannot read tokenizer ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "train one with `sigma tokenizer train`");
  }
  return { tokenizer: fromHfJson(bytes.toString("utf8"), path), sha256: sha256Hex(bytes), path };
}

