/**
 * The manifest of a prepared data folder: which tokenizer made it, the
 * domains with their ids and counts, the deterministic split, every shard,
 * where the text came from (with licences) and what was skipped.
 *
 *   <data>/manifest.json
 *   <data>/tokenizer.json       copy of the tokenizer (its sha256 is in the manifest and every shard)
 *   <data>/shards/<domain>-<split>-<n>.sgtk
 *
 * Read strictly: unknown keys are an error naming the key, since a manifest
 * is only ever written by `sigma data prepare`.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { SigmaError } from "../util/errors.js";
import { readRegularFile } from "../util/read.js";
import { writeFileAtomic } from "../util/fs.js";
import { jsonErrorText, jsonTooBig, parseJsonStrict } from "../util/strict-json.js";

export const MANIFEST_FORMAT = "sigma-data";
export const MANIFEST_VERSION = 1;

/** A count: a non-negative safe integer. */
const count = () => z.number().int().nonnegative().safe();

const Counts = z
  .object({
    /** All tokens, control and end-of-text tokens included. */
    tokens: count(),
    /** Tokens of the text alone (for bytes/token). */
    textTokens: count(),
    docs: count(),
    /** UTF-8 bytes of the text. */
    bytes: count(),
  })
  .strict()
  .superRefine((c, ctx) => {
    // Every document ends with <|endoftext|>, which is not a text token.
    if (c.docs > c.tokens) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ["docs"], message: `${c.docs} documents cannot fit in ${c.tokens} tokens` });
    if (c.textTokens > c.tokens) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ["textTokens"], message: `${c.textTokens} text tokens are more than the ${c.tokens} tokens` });
  });
export type Counts = z.infer<typeof Counts>;

export const Source = z
  .object({
    domain: z.string(),
    name: z.string(),
    version: z.string().optional(),
    license: z.string(),
    /** Where it came from, relative to the project (e.g. node_modules/chinese-poetry). */
    origin: z.string(),
    note: z.string().optional(),
    files: count(),
    records: count(),
    bytes: count(),
  })
  .strict();
export type Source = z.infer<typeof Source>;

export const Skipped = z
  .object({
    total: count(),
    byReason: z.record(count()),
    /** The first few, as "file:line: reason". */
    examples: z.array(z.string()),
  })
  .strict();
export type Skipped = z.infer<typeof Skipped>;

/** A domain name, as the tokenizer allows it (specials.ts). */
const DOMAIN_NAME = /^[a-z0-9][a-z0-9_.-]{0,31}$/;
/**
 * A shard's file, relative to the data folder: `shards/<domain>-<split>-<serial>.sgtk`.
 * The pattern admits no "/" after "shards/", no "..", nothing absolute, so a
 * manifest can never point the loader outside its folder.
 */
export const SHARD_FILE = /^shards\/([a-z0-9][a-z0-9_.-]{0,31})-(train|val)-([0-9]{4,9})\.sgtk$/;
/** The largest vocabulary a tokenizer can have (codec.ts packs ids in 21 bits). */
const MAX_VOCAB = 2097152;

export const Manifest = z
  .object({
    format: z.literal(MANIFEST_FORMAT),
    version: z.literal(MANIFEST_VERSION),
    /** The tokenizer's copy in the data folder: always "tokenizer.json". */
    tokenizer: z.object({ file: z.literal("tokenizer.json"), sha256: z.string().regex(/^[0-9a-f]{64}$/), vocabSize: z.number().int().min(2).max(MAX_VOCAB) }).strict(),
    corpus: z.string(),
    split: z.object({ valFraction: z.number().min(0).max(1), seed: z.number().int().safe() }).strict(),
    /** Whether each document starts with its domain's control token. */
    controlTokens: z.boolean(),
    domains: z.array(z.object({ id: count(), name: z.string().regex(DOMAIN_NAME, "not a domain name (a-z, 0-9, _ . -; up to 32)"), train: Counts, val: Counts }).strict()).min(1),
    shards: z.array(
      z
        .object({
          file: z.string().regex(SHARD_FILE, "not a shard file name (shards/<domain>-<train|val>-<serial>.sgtk)"),
          domain: z.string(),
          domainId: count(),
          split: z.enum(["train", "val"]),
          tokens: count(),
          docs: count(),
        })
        .strict(),
    ),
    sources: z.array(Source),
    skipped: Skipped,
  })
  .strict()
  .superRefine((m, ctx) => {
    const bad = (path: (string | number)[], message: string) => ctx.addIssue({ code: z.ZodIssueCode.custom, path, message });
    const names = new Set<string>();
    m.domains.forEach((d, i) => {
      if (d.id !== i) bad(["domains", i, "id"], `${d.id}; domain ids are their positions (expected ${i})`);
      if (names.has(d.name)) bad(["domains", i, "name"], `duplicate domain "${d.name}"`);
      names.add(d.name);
    });
    const files = new Set<string>();
    const sums = new Map<string, { tokens: number; docs: number }>();
    m.shards.forEach((s, i) => {
      const d = m.domains[s.domainId];
      if (!d) return bad(["shards", i, "domainId"], `${s.domainId} is not a domain id (0…${m.domains.length - 1})`);
      if (d.name !== s.domain) bad(["shards", i, "domain"], `"${s.domain}", but domain id ${s.domainId} is "${d.name}"`);
      const f = SHARD_FILE.exec(s.file);
      if (f && (f[1] !== s.domain || f[2] !== s.split)) bad(["shards", i, "file"], `${s.file} is named for ${f[1]}/${f[2]}, the entry says ${s.domain}/${s.split}`);
      if (files.has(s.file)) bad(["shards", i, "file"], `${s.file} is listed twice`);
      files.add(s.file);
      if (s.docs > s.tokens) bad(["shards", i, "docs"], `${s.docs} documents cannot fit in ${s.tokens} tokens`);
      const key = `${s.domainId}/${s.split}`;
      const sum = sums.get(key) ?? { tokens: 0, docs: 0 };
      sums.set(key, { tokens: sum.tokens + s.tokens, docs: sum.docs + s.docs });
    });
    m.domains.forEach((d, i) => {
      for (const split of ["train", "val"] as const) {
        const sum = sums.get(`${i}/${split}`) ?? { tokens: 0, docs: 0 };
        if (sum.tokens !== d[split].tokens || sum.docs !== d[split].docs) {
          bad(["domains", i, split], `${d[split].tokens} tokens in ${d[split].docs} documents, but its shards hold ${sum.tokens} tokens in ${sum.docs}`);
        }
      }
    });
  });
export type Manifest = z.infer<typeof Manifest>;

export function writeManifest(path: string, m: Manifest): void {
  writeFileAtomic(path, JSON.stringify(Manifest.parse(m), null, 2) + "\n");
}

/**
 * The manifest at `path`, validated: the schema above (strict: unknown keys
 * are errors) and no key twice. Every problem is one SigmaError naming the
 * file and each bad field.
 */
/** Tokens a split of a domain needs for one window of a sequence of `seqLen`: its inputs and the token after the last. */
export const windowTokens = (seqLen: number): number => seqLen + 1;

/**
 * The manifest of data folder `dir`, or null when there is none or it cannot
 * be read — for warnings given before a run, whose own reading of the data
 * reports any problem with it in full.
 */
export function readManifestIfPresent(dir: string): Manifest | null {
  try {
    return readManifest(join(dir, "manifest.json"));
  } catch (e) {
    if (e instanceof SigmaError) return null;
    throw e;
  }
}

export function readManifest(path: string): Manifest {
  let text: string;
  try {
    text = readRegularFile(path, "manifest", "run `sigma data prepare` to make a data folder", 256 * 2 ** 20).toString("utf8");
  } catch (e) {
    if (e instanceof SigmaError) throw e;
    throw new SigmaError(`Cannot read manifest ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "run `sigma data prepare` to make a data folder");
  }
  let raw: unknown;
  try {
    raw = parseJsonStrict(text);
  } catch (e) {
    throw new SigmaError(`${path}: not valid JSON (${jsonErrorText(e)})`, "run `sigma data prepare` again");
  }
  const big = jsonTooBig(raw, { maxItems: 100_000 });
  if (big) throw new SigmaError(`${path}: bad manifest: ${big}`, "manifests are written by `sigma data prepare`; prepare the data again");
  const r = Manifest.safeParse(raw);
  if (!r.success) {
    const issues = r.error.issues.slice(0, 5).map((issue) => {
      const at = issue.path.join(".") || "(top)";
      const keys = issue.code === "unrecognized_keys" ? ` (${issue.keys.join(", ")})` : "";
      return `${at}: ${issue.message}${keys}`;
    });
    const more = r.error.issues.length > 5 ? `; and ${r.error.issues.length - 5} more` : "";
    throw new SigmaError(`${path}: bad manifest at ${issues.join("; ")}${more}`, "manifests are written by `sigma data prepare`; prepare the data again");
  }
  return r.data;
}
