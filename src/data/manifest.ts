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
import { z } from "zod";
import { SigmaError } from "../util/errors.js";
import { writeFileAtomic } from "../util/fs.js";

export const MANIFEST_FORMAT = "sigma-data";
export const MANIFEST_VERSION = 1;

const Counts = z
  .object({
    /** All tokens, control and end-of-text tokens included. */
    tokens: z.number().int().nonnegative(),
    /** Tokens of the text alone (for bytes/token). */
    textTokens: z.number().int().nonnegative(),
    docs: z.number().int().nonnegative(),
    /** UTF-8 bytes of the text. */
    bytes: z.number().int().nonnegative(),
  })
  .strict();
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
    files: z.number().int().nonnegative(),
    records: z.number().int().nonnegative(),
    bytes: z.number().int().nonnegative(),
  })
  .strict();
export type Source = z.infer<typeof Source>;

export const Skipped = z
  .object({
    total: z.number().int().nonnegative(),
    byReason: z.record(z.number().int().nonnegative()),
    /** The first few, as "file:line: reason". */
    examples: z.array(z.string()),
  })
  .strict();
export type Skipped = z.infer<typeof Skipped>;

export const Manifest = z
  .object({
    format: z.literal(MANIFEST_FORMAT),
    version: z.literal(MANIFEST_VERSION),
    tokenizer: z.object({ file: z.string(), sha256: z.string().regex(/^[0-9a-f]{64}$/), vocabSize: z.number().int().positive() }).strict(),
    corpus: z.string(),
    split: z.object({ valFraction: z.number().min(0).max(1), seed: z.number().int() }).strict(),
    /** Whether each document starts with its domain's control token. */
    controlTokens: z.boolean(),
    domains: z.array(z.object({ id: z.number().int().nonnegative(), name: z.string(), train: Counts, val: Counts }).strict()),
    shards: z.array(
      z
        .object({
          file: z.string(),
          domain: z.string(),
          domainId: z.number().int().nonnegative(),
          split: z.enum(["train", "val"]),
          tokens: z.number().int().nonnegative(),
          docs: z.number().int().nonnegative(),
        })
        .strict(),
    ),
    sources: z.array(Source),
    skipped: Skipped,
  })
  .strict();
export type Manifest = z.infer<typeof Manifest>;

export function writeManifest(path: string, m: Manifest): void {
  writeFileAtomic(path, JSON.stringify(Manifest.parse(m), null, 2) + "\n");
}

export function readManifest(path: string): Manifest {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new SigmaError(`Cannot read manifest ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "run `sigma data prepare` to make a data folder");
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new SigmaError(`${path}: not valid JSON (${(e as Error).message})`, "run `sigma data prepare` again");
  }
  const r = Manifest.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const at = issue.path.join(".") || "(top)";
    const keys = issue.code === "unrecognized_keys" ? ` (${issue.keys.join(", ")})` : "";
    throw new SigmaError(`${path}: bad manifest at ${at}: ${issue.message}${keys}`, "manifests are written by `sigma data prepare`; prepare the data again");
  }
  return r.data;
}
