/**
 * JSON input checked with zod: reading a JSON file, validating a parsed value
 * with errors that name every bad field, and the number fields config schemas
 * share.
 */
import { z } from "zod";
import { SigmaError } from "./errors.js";
import { jsonErrorText, jsonTooBig, parseJsonStrict } from "./strict-json.js";
import { readCapped } from "./read.js";

/** The parsed JSON of a file; an unreadable or malformed file is "cannot read <what> <path>: …". */
export function readJsonFile(path: string, what: string, hint: string): unknown {
  try {
    return parseJsonStrict(readCapped(path, what, hint, 64 * 2 ** 20).toString("utf8"));
  } catch (e) {
    if (e instanceof SigmaError) throw e;
    throw new SigmaError(`cannot read ${what} ${path}: ${jsonErrorText(e)}`, hint);
  }
}

/** One JSONL line that must hold a JSON object; otherwise a SigmaError "<at>: not valid JSON (…)" or "<at>: not a JSON object". */
export function parseJsonLineObject(text: string, at: string, hint: string): Record<string, unknown> {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new SigmaError(`${at}: not valid JSON (${(e as Error).message})`, hint);
  }
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) throw new SigmaError(`${at}: not a JSON object`, hint);
  return raw as Record<string, unknown>;
}

/** `json` validated by `schema`; otherwise "<source> is invalid:" and one "  field: message" line per issue. */
export function parseWithSchema<S extends z.ZodTypeAny>(schema: S, json: unknown, source: string, hint: string): z.output<S> {
  // A schema reports one issue per bad element: size the value up first, so a million-element array is refused at once.
  const big = jsonTooBig(json);
  if (big) throw new SigmaError(`${source} is invalid:\n  ${big}`, hint);
  const res = schema.safeParse(json);
  if (res.success) return res.data as z.output<S>;
  const lines = res.error.issues.map((i) => `  ${i.path.length ? i.path.join(".") : "(top level)"}: ${i.message}`);
  throw new SigmaError(`${source} is invalid:\n${lines.join("\n")}`, hint);
}

/** An integer field in [min, max]; past max the message names the bound. */
export const intField = (min = 0, max = Number.MAX_SAFE_INTEGER) => z.number().int().min(min).max(max, { message: `must be at most ${max}` });

/** A finite number field (JSON's 1e999 parses to Infinity). */
export const finiteField = () => z.number().finite();

/** A seed field: any integer a double holds exactly. */
export const seedField = () => z.number().int().safe();
