/**
 * `sigma data …`: prepare token shards from a corpus, and report on them.
 */
import type { Command } from "commander";
import { existsSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { SigmaError } from "../util/errors.js";
import { saveTokenizer } from "../tokenizer/hfjson.js";
import { assembleDefaultCorpus } from "../data/defaultCorpus.js";
import { readManifest, type Manifest } from "../data/manifest.js";
import { DEFAULT_SEQ_LEN, prepareData } from "../data/prepare.js";
import { DEFAULT_VOCAB, trainOnCorpus } from "../data/vocab.js";
import { DEFAULT_TOKENIZER, parseIntOpt, status } from "./tokenizer.js";
import { MODEL_LIMITS } from "../models/config.js";
import { ensureWritableDir, ensureWritableFile } from "../util/fs.js";

export const DEFAULT_DATA = ".sigma/data/default";

export interface PrepareOpts {
  corpus?: string;
  tokenizer?: string;
  out: string;
  valFraction: number;
  seed: number;
  controlTokens: boolean;
  lenient?: boolean;
  vocab: number;
  /** The sequence length the data is for; splits too small for it are warned about. */
  seqLen?: number;
}

export function register(program: Command): void {
  const data = program.command("data").description("prepare and inspect token shards");

  data
    .command("prepare")
    .description("tokenize a corpus into shards + manifest (default: the embedded default corpus, training its tokenizer if needed)")
    .option("--corpus <dir>", "corpus folder: <dir>/<domain>/files or JSONL records (default: assemble the default corpus)")
    .option("--tokenizer <file>", `tokenizer.json (default: ${DEFAULT_TOKENIZER}, trained first for the default corpus)`)
    .option("--out <dir>", "output data folder", DEFAULT_DATA)
    .option("--val-fraction <f>", "fraction of documents held out for validation", parseFraction, 0.02)
    .option("--seed <n>", "seed of the train/validation split", parseIntOpt("seed"), 1234)
    .option("--no-control-tokens", "do not start documents with their domain's control token")
    .option("--lenient", "skip (and count) bad records instead of stopping")
    .option("--vocab <n>", "vocabulary size when a tokenizer has to be trained", parseIntOpt("vocab", 1, MODEL_LIMITS.vocabSize), DEFAULT_VOCAB)
    .option("--seq-len <n>", "the model.seqLen you will train with: warns about domains whose splits hold less than one sequence", parseIntOpt("seq-len", 1, MODEL_LIMITS.seqLen), DEFAULT_SEQ_LEN)
    .action(async (o: PrepareOpts) => {
      await prepareCommand(o);
    });

  data
    .command("stats")
    .description("per-domain documents, tokens and compression (bytes/token) of a prepared data folder")
    .option("--data <dir>", "data folder", DEFAULT_DATA)
    .option("--json", "print JSON")
    .action((o: { data: string; json?: boolean }) => {
      const m = readManifest(join(o.data, "manifest.json"));
      if (o.json) return console.log(JSON.stringify(statsOf(m), null, 2));
      console.log(formatStats(m));
      reportSkipped(m);
    });
}

/** `sigma data prepare` with these options (also used by `sigma demo` when the default data is missing). */
export async function prepareCommand(o: PrepareOpts, outFlag = "--out"): Promise<Manifest> {
  const t0 = performance.now();
  ensureWritableDir(o.out, outFlag);
  let corpus = o.corpus;
  let tokPath = o.tokenizer;
  if (corpus === undefined) {
    const a = assembleDefaultCorpus();
    corpus = a.dir;
    console.error(`default corpus ${a.reused ? "reused" : "assembled"} at ${corpus}: ${(a.bytes / 1e6).toFixed(2)} MB, sha256 ${a.sha256}`);
    tokPath ??= DEFAULT_TOKENIZER;
    if (!existsSync(tokPath)) {
      ensureWritableFile(tokPath, o.tokenizer === undefined ? "the default tokenizer" : "--tokenizer");
      const r = await trainOnCorpus(corpus, { vocabSize: o.vocab, onProgress: (s, d, t) => status(s === "count" ? `counting words: ${(d / 1e6).toFixed(1)} MB` : `merges: ${d}/${t}`) });
      mkdirSync(dirname(tokPath), { recursive: true });
      saveTokenizer(r.tokenizer, tokPath);
      status(`trained ${tokPath} (vocab ${r.tokenizer.vocabSize}) in ${(r.countSeconds + r.mergeSeconds).toFixed(1)} s`, true);
    }
  }
  if (tokPath === undefined) throw new SigmaError("`sigma data prepare --corpus` needs --tokenizer", `train one first: sigma tokenizer train --corpus ${corpus} --out ${DEFAULT_TOKENIZER}`);
  const { manifest: m, warnings } = await prepareData({
    corpus,
    tokenizer: tokPath,
    out: o.out,
    valFraction: o.valFraction,
    seed: o.seed,
    controlTokens: o.controlTokens,
    lenient: o.lenient,
    seqLen: o.seqLen,
    onProgress: (docs, bytes) => status(`tokenized ${docs} documents, ${(bytes / 1e6).toFixed(1)} MB`),
  });
  const tokens = m.domains.reduce((n, d) => n + d.train.tokens + d.val.tokens, 0);
  status(`wrote ${m.shards.length} shards, ${tokens} tokens to ${o.out} in ${((performance.now() - t0) / 1000).toFixed(1)} s`, true);
  reportSkipped(m);
  console.log(formatStats(m));
  for (const w of warnings) console.error(`warning: ${w}`);
  return m;
}

function parseFraction(v: string): number {
  const f = v.trim() === "" ? NaN : Number(v);
  if (!(f >= 0 && f < 1)) throw new SigmaError(`--val-fraction must be in [0, 1), got "${v}"`);
  return f;
}

function reportSkipped(m: Manifest): void {
  const s = m.skipped;
  if (s.total === 0) return;
  console.error(`skipped ${s.total} records: ${Object.entries(s.byReason).map(([r, n]) => `${n} ${r}`).join(", ")}`);
  for (const e of s.examples) console.error(`  ${e}`);
}

export function statsOf(m: Manifest) {
  const domains = m.domains.map((d) => {
    const bytes = d.train.bytes + d.val.bytes;
    const text = d.train.textTokens + d.val.textTokens;
    return {
      id: d.id,
      name: d.name,
      docs: d.train.docs + d.val.docs,
      trainTokens: d.train.tokens,
      valTokens: d.val.tokens,
      bytes,
      bytesPerToken: text > 0 ? bytes / text : 0,
    };
  });
  return { tokenizer: m.tokenizer, domains, sources: m.sources, skipped: m.skipped };
}

export function formatStats(m: Manifest): string {
  const s = statsOf(m);
  const rows = [["id", "domain", "docs", "train tokens", "val tokens", "MB", "bytes/token"]];
  const tot = { docs: 0, train: 0, val: 0, bytes: 0, text: 0 };
  for (const d of s.domains) {
    rows.push([String(d.id), d.name, String(d.docs), String(d.trainTokens), String(d.valTokens), (d.bytes / 1e6).toFixed(2), d.bytesPerToken.toFixed(2)]);
    tot.docs += d.docs;
    tot.train += d.trainTokens;
    tot.val += d.valTokens;
    tot.bytes += d.bytes;
  }
  tot.text = m.domains.reduce((n, d) => n + d.train.textTokens + d.val.textTokens, 0);
  rows.push(["", "all", String(tot.docs), String(tot.train), String(tot.val), (tot.bytes / 1e6).toFixed(2), (tot.bytes / Math.max(1, tot.text)).toFixed(2)]);
  const w = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const lines = rows.map((r) => r.map((x, c) => (c <= 1 ? x.padEnd(w[c]!) : x.padStart(w[c]!))).join("  "));
  lines.unshift(`tokenizer ${m.tokenizer.file} (vocab ${m.tokenizer.vocabSize}, sha256 ${m.tokenizer.sha256.slice(0, 16)}…), split seed ${m.split.seed}, val fraction ${m.split.valFraction}`);
  if (m.sources.length > 0) {
    lines.push("", "sources:");
    for (const src of m.sources) lines.push(`  ${src.domain.padEnd(5)} ${`${src.name}@${src.version ?? "?"}`.padEnd(32)} ${src.license.padEnd(12)} ${(src.bytes / 1e6).toFixed(2)} MB, ${src.records} records`);
  }
  return lines.join("\n");
}
