/**
 * `sigma tokenizer …`: train a byte-level BPE tokenizer, and encode or decode
 * with one (handy for checking what the model sees).
 */
import type { Command } from "commander";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { SigmaError } from "../util/errors.js";
import { ensureWritableFile } from "../util/fs.js";
import { MODEL_LIMITS } from "../models/config.js";
import { loadAnyTokenizer, saveTokenizer } from "../tokenizer/hfjson.js";
import { DEFAULT_LANGS } from "../tokenizer/specials.js";
import { assembleDefaultCorpus } from "../data/defaultCorpus.js";
import { DEFAULT_VOCAB, trainOnCorpus } from "../data/vocab.js";

export const DEFAULT_TOKENIZER = ".sigma/tokenizer.json";

/** Upper bounds of counts on the command line (generous, but no typo can ask for a hang or a giant allocation). */
export const FLAG_LIMITS = {
  /** Batches to evaluate, route or measure. */
  batches: 1e6,
  /** Sequences per batch. */
  batchSize: 2 ** 16,
  /** Tokens to generate in one call. */
  maxTokens: 1e6,
  /** Experts, devices, groups, k. */
  experts: MODEL_LIMITS.experts,
  seed: Number.MAX_SAFE_INTEGER,
} as const;

const numberOf = (v: string): number => (v.trim() === "" ? NaN : Number(v));

/**
 * An integer flag from `min` to `max`; anything else (a fraction, NaN, an
 * empty string, out of range) is an error naming the flag and the range.
 */
export function parseIntOpt(name: string, min = 0, max: number = Number.MAX_SAFE_INTEGER) {
  return (v: string): number => {
    const n = numberOf(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new SigmaError(`--${name} must be an integer from ${min} to ${max}, got "${v}"`);
    return n;
  };
}

/** A finite number flag from `min` (excluded with `above`) to `max`. */
export function parseNumOpt(name: string, min: number, max: number, opts: { above?: boolean } = {}) {
  return (v: string): number => {
    const n = numberOf(v);
    if (!(Number.isFinite(n) && (opts.above ? n > min : n >= min) && n <= max)) throw new SigmaError(`--${name} must be a number ${opts.above ? "above" : "from"} ${min}${opts.above ? " and at most" : " to"} ${max}, got "${v}"`);
    return n;
  };
}
export const parseList = (v: string): string[] => v.split(",").map((s) => s.trim()).filter(Boolean);

/** One status line on stderr, rewritten in place on a terminal. */
export function status(line: string, done = false): void {
  if (process.stderr.isTTY) process.stderr.write(`\r\x1b[2K${line}${done ? "\n" : ""}`);
  else if (done) process.stderr.write(`${line}\n`);
}

export function register(program: Command): void {
  const tok = program.command("tokenizer").description("train and use the byte-level BPE tokenizer");

  tok
    .command("train")
    .description("train a byte-level BPE tokenizer on a corpus folder (default: the embedded default corpus)")
    .option("--corpus <dir>", "corpus folder: <dir>/<domain>/files or JSONL records (default: assemble the default corpus)")
    .option("--out <file>", "where to write tokenizer.json", DEFAULT_TOKENIZER)
    .option("--vocab <n>", "vocabulary size, specials and bytes included", parseIntOpt("vocab", 1, MODEL_LIMITS.vocabSize), DEFAULT_VOCAB)
    .option("--domains <list>", "domain names in domain-id order (default: zh,en,bi,code)", parseList)
    .option("--langs <list>", "language tags for translation pairs", parseList, [...DEFAULT_LANGS])
    .option("--max-bytes <n>", "train on at most this many bytes of each domain", parseIntOpt("max-bytes", 1))
    .option("--lenient", "skip (and count) bad records instead of stopping")
    .action(async (o: { corpus?: string; out: string; vocab: number; domains?: string[]; langs: string[]; maxBytes?: number; lenient?: boolean }) => {
      ensureWritableFile(o.out, "--out");
      let corpus = o.corpus;
      if (corpus === undefined) {
        const a = assembleDefaultCorpus();
        corpus = a.dir;
        console.error(`default corpus ${a.reused ? "reused" : "assembled"} at ${corpus}: ${(a.bytes / 1e6).toFixed(2)} MB, sha256 ${a.sha256}`);
      }
      const r = await trainOnCorpus(corpus, {
        vocabSize: o.vocab,
        domains: o.domains,
        langs: o.langs,
        maxBytesPerDomain: o.maxBytes,
        lenient: o.lenient,
        onProgress: (stage, done, total) => status(stage === "count" ? `counting words: ${(done / 1e6).toFixed(1)} MB` : `merges: ${done}/${total}`),
      });
      status(`counted ${r.words} distinct words in ${(r.bytes / 1e6).toFixed(2)} MB (${r.countSeconds.toFixed(1)} s); merges ${r.mergeSeconds.toFixed(1)} s`, true);
      if (r.skipped.total > 0) console.error(`skipped ${r.skipped.total} records: ${JSON.stringify(r.skipped.byReason)}; first: ${r.skipped.examples[0]}`);
      mkdirSync(dirname(o.out), { recursive: true });
      const sha = saveTokenizer(r.tokenizer, o.out);
      console.log(`wrote ${o.out}: vocab ${r.tokenizer.vocabSize}, domains ${r.tokenizer.domains.join(",")}, sha256 ${sha.slice(0, 16)}…`);
    });

  tok
    .command("encode <text>")
    .description("print the token ids (and pieces) of a text")
    .option("--tokenizer <file>", "tokenizer.json (Sigma's, or a Hugging Face byte-level or SentencePiece-style BPE)", DEFAULT_TOKENIZER)
    .option("--json", "print only the ids as JSON")
    .action((text: string, o: { tokenizer: string; json?: boolean }) => {
      const { tokenizer } = loadAnyTokenizer(o.tokenizer);
      const ids = tokenizer.encode(text);
      if (o.json) return console.log(JSON.stringify(ids));
      console.log(ids.join(" "));
      console.log(ids.map((id) => JSON.stringify(tokenizer.decode([id]))).join(" "));
      console.log(`${ids.length} tokens, ${Buffer.byteLength(text)} bytes (${(Buffer.byteLength(text) / Math.max(1, ids.length)).toFixed(2)} bytes/token)`);
    });

  tok
    .command("decode <ids...>")
    .description("print the text of token ids")
    .option("--tokenizer <file>", "tokenizer.json (Sigma's, or a Hugging Face byte-level or SentencePiece-style BPE)", DEFAULT_TOKENIZER)
    .action((ids: string[], o: { tokenizer: string }) => {
      const { tokenizer } = loadAnyTokenizer(o.tokenizer);
      process.stdout.write(tokenizer.decode(ids.map(parseIntOpt("ids", 0, MODEL_LIMITS.vocabSize))) + "\n");
    });
}
