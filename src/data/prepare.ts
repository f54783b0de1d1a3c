/**
 * `sigma data prepare`: corpus folder → token shards + manifest.
 *
 * Each record becomes one document:
 *   [<|domain:d|>]  text tokens  <|endoftext|>
 * and a translation pair
 *   [<|domain:d|>]  <|lang:zh|> zh tokens  <|lang:en|> en tokens  <|endoftext|>
 * (PanGu-Σ inserts control tokens and an end-of-text token, and prefixes
 * translation data with language tags). Record text is encoded with special
 * tokens read as plain text, so a corpus cannot inject control tokens.
 *
 * The train/validation split is a hash of (seed, domain, text): deterministic,
 * independent of file order, and duplicate texts land on the same side.
 * Memory stays bounded: records stream through, and each (domain, split)
 * writer holds one 64K-token buffer.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { z } from "zod";
import { SigmaError } from "../util/errors.js";
import { loadTokenizer, sha256Hex } from "../tokenizer/hfjson.js";
import { fsyncDir, writeFileAtomic } from "../util/fs.js";
import { otherProcessAlive } from "../util/process.js";
import type { Tokenizer } from "../tokenizer/codec.js";
import { readCorpus, recordBytes, SkipReport, type CorpusRecord } from "./ingest.js";
import { MANIFEST_FORMAT, MANIFEST_VERSION, readManifest, Source, windowTokens, writeManifest, type Counts, type Manifest } from "./manifest.js";
import { openShard, ShardWriter, type Split } from "./shards.js";

export interface PrepareOptions {
  corpus: string;
  tokenizer: string;
  out: string;
  /** Fraction of documents held out for validation. Default 0.02: enough to measure, little lost to training. */
  valFraction?: number;
  seed?: number;
  /** Start each document with its domain's control token. Default true (PanGu-Σ does). */
  controlTokens?: boolean;
  lenient?: boolean;
  /** Tokens per shard before a new one starts. Default 2^24 (32 MiB at uint16). */
  shardTokens?: number;
  /**
   * The sequence length the data is for (model.seqLen): each domain's splits
   * are checked to hold one window of it, and warned about when they do not.
   * Default DEFAULT_SEQ_LEN.
   */
  seqLen?: number;
  onProgress?: (docs: number, bytes: number) => void;
}

/** A record's tokens as one document, and how many of them are text. */
export function encodeRecord(tok: Tokenizer, rec: Pick<CorpusRecord, "domain" | "text" | "translation">, controlTokens: boolean): { ids: number[]; textTokens: number } {
  const ids: number[] = [];
  if (controlTokens) ids.push(tok.domainTokenId(rec.domain));
  let textTokens = 0;
  const add = (s: string): void => {
    const t = tok.encodeOrdinary(s);
    textTokens += t.length;
    for (const id of t) ids.push(id);
  };
  if (rec.text !== undefined) add(rec.text);
  else
    for (const [tag, s] of rec.translation!) {
      ids.push(tok.langTokenId(tag));
      add(s);
    }
  ids.push(tok.eotId);
  return { ids, textTokens };
}

/** Deterministic split: FNV-1a over (seed, domain, text) mapped to [0, 1). */
export function splitOf(seed: number, rec: Pick<CorpusRecord, "domain" | "text" | "translation">, valFraction: number): Split {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  const mix = (s: string): void => {
    for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
    h = Math.imul(h ^ 0xff, 0x01000193) >>> 0; // separator, so ("ab","c") ≠ ("a","bc")
  };
  mix(rec.domain);
  if (rec.text !== undefined) mix(rec.text);
  else for (const [tag, s] of rec.translation!) (mix(tag), mix(s));
  // Final avalanche (murmur3 fmix32), kept unsigned.
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = (h ^ (h >>> 13)) >>> 0;
  return h / 4294967296 < valFraction ? "val" : "train";
}

const zero = (): Counts => ({ tokens: 0, textTokens: 0, docs: 0, bytes: 0 });

/** The sequence length splits are checked against when none is given: the demo model's. */
export const DEFAULT_SEQ_LEN = 128;

export interface PrepareResult {
  manifest: Manifest;
  /** What a model trained on this data would silently lose: domains without documents, or too small a split. */
  warnings: string[];
}

/**
 * Warnings for the domains of prepared data that a model of sequence length
 * `seqLen` could not train on or evaluate: a domain with no documents, a
 * training split under one window, and — the quiet case — a validation
 * split under one window, which evaluation leaves out without a word.
 */
export function splitWarnings(m: Manifest, seqLen: number): string[] {
  const need = windowTokens(seqLen);
  const n = (x: number): string => x.toLocaleString("en-US");
  const f = m.split.valFraction;
  const out: string[] = [];
  if (f === 0) out.push(`no validation split (val fraction 0): no domain can be evaluated; prepare again with --val-fraction 0.02 (the default) to measure validation loss`);
  for (const d of m.domains) {
    const total = d.train.tokens + d.val.tokens;
    const docs = d.train.docs + d.val.docs;
    if (docs === 0) {
      out.push(`domain "${d.name}" has no documents: a model trained on this data neither trains on nor evaluates it; add text under <corpus>/${d.name}/, or leave it out of the model's domains`);
      continue;
    }
    if (d.train.tokens < need) {
      out.push(`domain "${d.name}" has ${n(d.train.tokens)} training tokens, fewer than one sequence of ${seqLen} + 1 = ${n(need)}: training on it stops with an error; add text to "${d.name}", give it mixing weight 0, or train with a shorter model.seqLen (--seq-len here)`);
    }
    if (f > 0 && d.val.tokens < need) {
      // The split is by document, so the validation share of a domain is only about the val fraction.
      const frac = (1.5 * need) / total;
      const raise = frac <= 0.5 ? `, raise --val-fraction (to about ${Number(frac.toPrecision(2)) > f ? Number(frac.toPrecision(2)) : f * 2})` : "";
      out.push(
        `domain "${d.name}" has ${n(total)} tokens in ${n(docs)} documents, and its validation split got ${n(d.val.tokens)} (val fraction ${f}); ` +
          `evaluating it needs ${n(need)} (one sequence of ${seqLen} + 1), so it will be left out of evaluation without a word: add text to "${d.name}"${raise}, or train with a shorter model.seqLen (--seq-len here)`,
      );
    }
  }
  return out;
}

export async function prepareData(o: PrepareOptions): Promise<PrepareResult> {
  const valFraction = o.valFraction ?? 0.02;
  const seed = o.seed ?? 1234;
  const controlTokens = o.controlTokens ?? true;
  const shardTokens = o.shardTokens ?? 1 << 24;
  if (!(valFraction >= 0 && valFraction < 1)) throw new SigmaError(`val fraction ${valFraction} must be in [0, 1)`);
  const { tokenizer: tok, sha256 } = loadTokenizer(o.tokenizer);
  const sources = readSources(o.corpus);

  const shardDir = join(o.out, "shards");
  // New shards are written aside: data prepared earlier in this folder stays whole (and usable) until
  // the corpus has been read and encoded without error, and is replaced only then.
  const stage = join(o.out, `.shards-new-${process.pid}`);
  mkdirSync(o.out, { recursive: true });
  // This run's and dead runs' staging folders go (a live prepare into the same folder keeps its own).
  for (const f of readdirSync(o.out)) {
    const m = /^\.shards-new-(\d+)$/.exec(f);
    if (m && !otherProcessAlive(Number(m[1]))) rmSync(join(o.out, f), { recursive: true, force: true });
  }
  mkdirSync(stage, { recursive: true });

  const counts = new Map<string, Record<Split, Counts>>(tok.domains.map((d) => [d, { train: zero(), val: zero() }]));
  const writers = new Map<string, ShardWriter>();
  const shards: Manifest["shards"] = [];
  /** Shards published by this run: removed again if the run fails, since no manifest will list them. */
  const published: string[] = [];
  const serial = new Map<string, number>();
  const closeWriter = (key: string): void => {
    const w = writers.get(key)!;
    writers.delete(key);
    const h = w.close(); // on failure it removes its own temp file
    published.push(w.path);
    shards.push({ file: `shards/${basename(w.path)}`, domain: tok.domains[h.domainId]!, domainId: h.domainId, split: h.split, tokens: h.tokens, docs: h.docs });
  };
  const report = new SkipReport();
  let docs = 0;
  let bytes = 0;
  try {
    for await (const rec of readCorpus(o.corpus, { domains: tok.domains, langs: tok.langs, lenient: o.lenient }, report)) {
      const split = splitOf(seed, rec, valFraction);
      const { ids, textTokens } = encodeRecord(tok, rec, controlTokens);
      const key = `${rec.domain}-${split}`;
      let w = writers.get(key);
      if (w === undefined) {
        const n = serial.get(key) ?? 0;
        serial.set(key, n + 1);
        w = new ShardWriter(join(stage, `${key}-${String(n).padStart(4, "0")}.sgtk`), { domainId: tok.domainId(rec.domain), split, vocabSize: tok.vocabSize, tokenizerSha256: sha256 });
        writers.set(key, w);
      }
      w.addDoc(ids);
      const c = counts.get(rec.domain)![split];
      const nb = recordBytes(rec);
      c.tokens += ids.length;
      c.textTokens += textTokens;
      c.docs++;
      c.bytes += nb;
      docs++;
      bytes += nb;
      if (w.tokens >= shardTokens) closeWriter(key);
      if (o.onProgress && docs % 2000 === 0) o.onProgress(docs, bytes);
    }
    for (const key of [...writers.keys()].sort()) closeWriter(key);
    if (docs === 0) {
      const why = report.total > 0 ? `; all ${report.total} records were skipped (${Object.entries(report.byReason).map(([r, n]) => `${n} ${r}`).join(", ")})` : "";
      throw new SigmaError(`Empty corpus: ${o.corpus} has no usable records${why}`, "add text files under <corpus>/<domain>/ or JSONL records; `sigma data prepare` with no --corpus builds the default corpus");
    }
    shards.sort((a, b) => a.file.localeCompare(b.file));
    // The tokenizer's copy: the very bytes whose sha256 the shards record.
    const tokBytes = readFileSync(o.tokenizer);
    if (sha256Hex(tokBytes) !== sha256) throw new SigmaError(`${o.tokenizer} changed while the data was being prepared`, "run `sigma data prepare` again");
    // Replace the earlier data: from removing its manifest until the new one is written, the folder
    // is plainly not prepared (a crash there leaves no manifest, never one that lists wrong shards).
    rmSync(join(o.out, "manifest.json"), { force: true });
    writeFileAtomic(join(o.out, "tokenizer.json"), tokBytes);
    mkdirSync(shardDir, { recursive: true });
    for (const f of readdirSync(shardDir)) if (f.endsWith(".sgtk") || f.includes(".sgtk.tmp-")) rmSync(join(shardDir, f));
    for (const f of published) renameSync(f, join(shardDir, basename(f)));
    published.length = 0;
    rmSync(stage, { recursive: true, force: true });
    fsyncDir(shardDir);
    const manifest: Manifest = {
      format: MANIFEST_FORMAT,
      version: MANIFEST_VERSION,
      tokenizer: { file: "tokenizer.json", sha256, vocabSize: tok.vocabSize },
      corpus: o.corpus,
      split: { valFraction, seed },
      controlTokens,
      domains: tok.domains.map((name, id) => ({ id, name, ...counts.get(name)! })),
      shards,
      sources,
      skipped: report.toJSON(),
    };
    writeManifest(join(o.out, "manifest.json"), manifest);
    return { manifest, warnings: splitWarnings(manifest, o.seqLen ?? DEFAULT_SEQ_LEN) };
  } catch (e) {
    for (const w of writers.values()) w.abort();
    for (const p of [...published, stage]) {
      try {
        rmSync(p, { recursive: true, force: true });
      } catch {
        /* the error being reported matters more; the next prepare removes leftovers */
      }
    }
    throw e;
  }
}

/**
 * Whether `dir` holds whole prepared data: its manifest reads, its
 * tokenizer.json has the sha256 the manifest records, and every shard it
 * lists opens with the header, size and documents the manifest says.
 * Returns the manifest, or why the folder is not usable.
 */
export function checkPrepared(dir: string): { manifest: Manifest } | { problem: string } {
  if (!existsSync(join(dir, "manifest.json"))) return { problem: `${dir} has no manifest.json` };
  try {
    const manifest = readManifest(join(dir, "manifest.json"));
    const tok = loadTokenizer(join(dir, manifest.tokenizer.file));
    if (tok.sha256 !== manifest.tokenizer.sha256) return { problem: `${join(dir, manifest.tokenizer.file)} is not the tokenizer the manifest records` };
    for (const s of manifest.shards) openShard(dir, manifest, s).close();
    return { manifest };
  } catch (e) {
    if (e instanceof SigmaError) return { problem: e.message };
    throw e;
  }
}

/** What a folder of prepared data may hold; anything else there is not ours to replace. */
const PREPARED_ENTRIES = /^(manifest\.json|tokenizer\.json|shards|\.shards-new-\d+)$/;

/**
 * Prepared data in `o.out`, made only when the folder does not already hold
 * whole prepared data (checkPrepared): then it is prepared in a sibling
 * folder and renamed into place, so `o.out` is at every moment either what
 * it was or the new data, never half of it. A folder that holds anything but
 * prepared data is refused rather than replaced.
 */
export async function ensurePrepared(o: PrepareOptions): Promise<PrepareResult & { reused: boolean }> {
  const before = checkPrepared(o.out);
  const warn = (m: Manifest): string[] => splitWarnings(m, o.seqLen ?? DEFAULT_SEQ_LEN);
  if ("manifest" in before) return { manifest: before.manifest, warnings: warn(before.manifest), reused: true };
  const foreign = existsSync(o.out) ? readdirSync(o.out).filter((f) => !PREPARED_ENTRIES.test(f)) : [];
  if (foreign.length > 0) {
    throw new SigmaError(`${o.out} is not usable prepared data (${before.problem}) and holds other files (${foreign.slice(0, 3).join(", ")}${foreign.length > 3 ? ", …" : ""}), so it is not replaced`, "move those files away, or prepare the data into another folder");
  }
  const parent = dirname(o.out);
  const name = basename(o.out);
  mkdirSync(parent, { recursive: true });
  // Leftovers of runs that died mid-way.
  for (const f of readdirSync(parent)) {
    const m = f.startsWith(name) ? /^\.(?:tmp|old)-(\d+)$/.exec(f.slice(name.length)) : null;
    if (m && !otherProcessAlive(Number(m[1]))) rmSync(join(parent, f), { recursive: true, force: true });
  }
  const tmp = join(parent, `${name}.tmp-${process.pid}`);
  const old = join(parent, `${name}.old-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  try {
    const { manifest, warnings } = await prepareData({ ...o, out: tmp });
    // Another process may have prepared it meanwhile: keep theirs.
    const now = checkPrepared(o.out);
    if ("manifest" in now) return { manifest: now.manifest, warnings: warn(now.manifest), reused: true };
    if (existsSync(o.out)) renameSync(o.out, old);
    renameSync(tmp, o.out);
    fsyncDir(parent);
    rmSync(old, { recursive: true, force: true });
    return { manifest, warnings, reused: false };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** The corpus's sources.json (written by the default-corpus assembly), or none. */
export function readSources(corpus: string): Source[] {
  const p = join(corpus, "sources.json");
  if (!existsSync(p)) return [];
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(p, "utf8"));
  } catch (e) {
    throw new SigmaError(`${p}: not valid JSON (${(e as Error).message})`, "delete it, or rebuild the default corpus");
  }
  const r = z.array(Source).safeParse(raw);
  if (!r.success) throw new SigmaError(`${p}: bad sources list at ${r.error.issues[0]!.path.join(".")}: ${r.error.issues[0]!.message}`, "delete it, or rebuild the default corpus");
  return r.data;
}
