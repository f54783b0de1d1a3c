/**
 * Reading a corpus folder as a stream of records, with bounded memory.
 *
 * Layout (files are visited in sorted path order, so runs are repeatable):
 *   <root>/<domain>/…/*.jsonl   one JSON record per line; "domain" may be left out
 *   <root>/<domain>/…/<other>   any other file is one plain-text document (≤ 32 MiB)
 *   <root>/*.jsonl              records that must each name their "domain"
 *   <root>/sources.json         provenance (see defaultCorpus.ts), not a record
 * Names starting with "." are ignored.
 *
 * A JSONL record is {"text": "…", "domain": "en"} or, for translation pairs,
 * {"translation": {"zh": "苹果", "en": "apple"}, "domain": "bi"} (sides in key
 * order); "id" and "meta" are allowed and ignored, other keys are an error.
 *
 * Bad input: text that is not UTF-8, a line that is not JSON, an unknown
 * domain, language tag or key is an error naming the file and line. With
 * `lenient`, such records are skipped instead. Records with empty text or
 * lone surrogates (possible through JSON \u escapes) are always skipped.
 * Every skip is counted by reason in the SkipReport, never dropped silently.
 */
import { createReadStream, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { SigmaError } from "../util/errors.js";
import { findLoneSurrogate } from "../tokenizer/pretokenize.js";

export interface CorpusRecord {
  domain: string;
  /** Plain text, or… */
  text?: string;
  /** …a translation: (language tag, text) pairs in order. */
  translation?: [string, string][];
  file: string;
  /** 1-based line for JSONL records, 0 for whole-file documents. */
  line: number;
}

export interface IngestOptions {
  /** Known domain names; a record naming another is an error. */
  domains: readonly string[];
  /** Known language tags for translation records. */
  langs: readonly string[];
  /** Skip (and count) bad records instead of stopping at the first. */
  lenient?: boolean;
}

const MAX_DOC_BYTES = 32 << 20;
const MAX_LINE_BYTES = 64 << 20;
const RECORD_KEYS = new Set(["text", "domain", "translation", "id", "meta"]);

/** Counts skipped records by reason and keeps the first few locations. */
export class SkipReport {
  total = 0;
  readonly byReason: Record<string, number> = {};
  readonly examples: string[] = [];
  skip(reason: string, where: string, detail = reason): void {
    this.total++;
    this.byReason[reason] = (this.byReason[reason] ?? 0) + 1;
    if (this.examples.length < 10) this.examples.push(`${where}: ${detail}`);
  }
  toJSON(): { total: number; byReason: Record<string, number>; examples: string[] } {
    return { total: this.total, byReason: { ...this.byReason }, examples: [...this.examples] };
  }
}

/** Byte offset of the first byte that does not belong to valid UTF-8, or -1. */
export function firstInvalidUtf8(b: Uint8Array): number {
  for (let i = 0; i < b.length; ) {
    const c = b[i]!;
    let n: number;
    let min: number;
    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) [n, min] = [1, 0x80];
    else if (c >= 0xe0 && c <= 0xef) [n, min] = [2, 0x800];
    else if (c >= 0xf0 && c <= 0xf4) [n, min] = [3, 0x10000];
    else return i;
    let cp = c & (0x3f >> n);
    for (let k = 1; k <= n; k++) {
      const d = b[i + k];
      if (d === undefined || (d & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (d & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += n + 1;
  }
  return -1;
}

const fatal = new TextDecoder("utf-8", { fatal: true });

/** Decodes UTF-8 or returns the byte offset of the first invalid byte. */
function decodeStrict(b: Uint8Array): string | number {
  try {
    return fatal.decode(b);
  } catch {
    return Math.max(0, firstInvalidUtf8(b));
  }
}

/** Lines of a file as raw bytes, streamed, with 1-based numbers; a trailing "\r" is dropped. */
async function* readLines(file: string): AsyncGenerator<{ line: number; bytes: Buffer }> {
  let carry: Buffer[] = [];
  let carryLen = 0;
  let line = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
    let start = 0;
    for (let nl = chunk.indexOf(10, start); nl >= 0; nl = chunk.indexOf(10, start)) {
      const part = chunk.subarray(start, nl);
      const bytes = carryLen > 0 ? Buffer.concat([...carry, part]) : part;
      carry = [];
      carryLen = 0;
      line++;
      yield { line, bytes: bytes.length > 0 && bytes[bytes.length - 1] === 13 ? bytes.subarray(0, bytes.length - 1) : bytes };
      start = nl + 1;
    }
    if (start < chunk.length) {
      carry.push(chunk.subarray(start));
      carryLen += chunk.length - start;
      if (carryLen > MAX_LINE_BYTES) throw new SigmaError(`${file} line ${line + 1} is longer than ${MAX_LINE_BYTES >> 20} MiB`, "split the record, or store the text as a plain file");
    }
  }
  if (carryLen > 0) yield { line: line + 1, bytes: Buffer.concat(carry) };
}

/** Files under `dir` in sorted order, hidden names skipped. */
function walk(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    if (name.startsWith(".")) continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else out.push(p);
  }
  return out;
}

/** Streams the records of a corpus folder. Throws (or skips, when lenient) on bad input; see the file comment. */
export async function* readCorpus(root: string, opts: IngestOptions, report: SkipReport): AsyncGenerator<CorpusRecord> {
  let st;
  try {
    st = statSync(root);
  } catch {
    throw new SigmaError(`Corpus folder ${root} does not exist`, "pass --corpus <folder> with one sub-folder per domain, or JSONL files");
  }
  if (!st.isDirectory()) throw new SigmaError(`Corpus ${root} is not a folder`, "pass a folder with one sub-folder per domain, or JSONL files");
  const known = new Set(opts.domains);
  const langs = new Set(opts.langs);
  const fail = (reason: string, where: string, message: string, hint: string): void => {
    if (opts.lenient) report.skip(reason, where, message);
    else throw new SigmaError(`${where}: ${message}`, hint);
  };
  const domainHint = `known domains: ${opts.domains.join(", ")} (the tokenizer's; retrain it with --domains to add one, or pass --lenient to skip)`;

  for (const name of readdirSync(root).sort()) {
    if (name.startsWith(".") || name === "sources.json") continue;
    const path = join(root, name);
    const isDir = statSync(path).isDirectory();
    if (isDir && !known.has(name)) {
      fail("unknown domain", path, `folder names unknown domain "${name}"`, domainHint);
      continue;
    }
    const files = isDir ? walk(path) : [path];
    const folderDomain = isDir ? name : undefined;
    for (const file of files) {
      if (file.endsWith(".jsonl")) {
        for await (const { line, bytes } of readLines(file)) {
          const where = `${file} line ${line}`;
          const text = decodeStrict(bytes);
          if (typeof text === "number") {
            fail("not UTF-8", where, `invalid UTF-8 at byte ${text + 1} of the line`, "convert the file to UTF-8 (e.g. iconv -f GB18030 -t UTF-8)");
            continue;
          }
          if (text.trim() === "") continue; // a blank line is not a record
          const rec = parseRecord(text, where, folderDomain, known, langs, fail, domainHint);
          if (rec === undefined) continue;
          if (checkContent(rec, where, report)) yield { ...rec, file, line };
        }
      } else if (folderDomain === undefined) {
        fail("unknown file", path, "a plain file at the corpus root has no domain", "put plain-text files in a folder named after their domain, or use JSONL with a \"domain\" field");
      } else {
        const size = statSync(file).size;
        if (size > MAX_DOC_BYTES) {
          fail("file too large", file, `${size} bytes is over the ${MAX_DOC_BYTES >> 20} MiB limit for one document`, "split it, or store it as JSONL records");
          continue;
        }
        const bytes = readFileSync(file);
        const text = decodeStrict(bytes);
        if (typeof text === "number") {
          const lineNo = 1 + countNewlines(bytes, text);
          fail("not UTF-8", `${file} line ${lineNo}`, `invalid UTF-8 at byte ${text + 1} of the file`, "convert the file to UTF-8 (e.g. iconv -f GB18030 -t UTF-8), or remove it from the corpus");
          continue;
        }
        const rec = { domain: folderDomain, text };
        if (checkContent(rec, file, report)) yield { ...rec, file, line: 0 };
      }
    }
  }
}

function countNewlines(b: Uint8Array, end: number): number {
  let n = 0;
  for (let i = 0; i < end; i++) if (b[i] === 10) n++;
  return n;
}

type Fail = (reason: string, where: string, message: string, hint: string) => void;
type Parsed = Omit<CorpusRecord, "file" | "line">;

function parseRecord(line: string, where: string, folderDomain: string | undefined, known: Set<string>, langs: Set<string>, fail: Fail, domainHint: string): Parsed | undefined {
  let j: unknown;
  try {
    j = JSON.parse(line);
  } catch (e) {
    fail("not JSON", where, `not a JSON record (${(e as Error).message})`, 'each line must be one JSON object like {"text": "…", "domain": "en"}');
    return undefined;
  }
  if (typeof j !== "object" || j === null || Array.isArray(j)) {
    fail("not an object", where, "a record must be a JSON object", 'write {"text": "…", "domain": "en"}');
    return undefined;
  }
  const o = j as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (!RECORD_KEYS.has(k)) {
      fail("unknown key", where, `unknown key "${k}"`, "record keys are text, translation, domain, id, meta");
      return undefined;
    }
  }
  const domain = o.domain ?? folderDomain;
  if (typeof domain !== "string") {
    fail("no domain", where, 'record has no "domain"', "add a \"domain\" field, or put the file in a folder named after its domain");
    return undefined;
  }
  if (folderDomain !== undefined && domain !== folderDomain) {
    fail("domain mismatch", where, `record says domain "${domain}" inside folder "${folderDomain}"`, "move the record or fix its domain");
    return undefined;
  }
  if (!known.has(domain)) {
    fail("unknown domain", where, `unknown domain "${domain}"`, domainHint);
    return undefined;
  }
  if (typeof o.text === "string" && o.translation === undefined) return { domain, text: o.text };
  const t = o.translation;
  if (o.text === undefined && typeof t === "object" && t !== null && !Array.isArray(t)) {
    const sides = Object.entries(t as Record<string, unknown>);
    if (sides.length >= 2 && sides.every(([, v]) => typeof v === "string")) {
      for (const [tag] of sides) {
        if (!langs.has(tag)) {
          fail("unknown language", where, `unknown language tag "${tag}"; known tags: ${[...langs].join(", ")}`, "retrain the tokenizer with --langs to add one");
          return undefined;
        }
      }
      return { domain, translation: sides as [string, string][] };
    }
  }
  fail("bad record", where, 'a record needs a string "text" or a "translation" object with two or more string sides', 'write {"text": "…"} or {"translation": {"zh": "…", "en": "…"}}');
  return undefined;
}

/** Skips (and counts) records that cannot be tokenized as they are. */
function checkContent(rec: Parsed, where: string, report: SkipReport): boolean {
  const parts = rec.text !== undefined ? [rec.text] : rec.translation!.map(([, s]) => s);
  if (parts.every((s) => s.trim() === "")) {
    report.skip("empty text", where);
    return false;
  }
  for (const s of parts) {
    const i = findLoneSurrogate(s);
    if (i >= 0) {
      report.skip("lone surrogate", where, `lone surrogate U+${s.charCodeAt(i).toString(16).toUpperCase()} at index ${i} (not a character; the record is skipped)`);
      return false;
    }
  }
  return true;
}

/** UTF-8 bytes of a record's text. */
export function recordBytes(r: CorpusRecord): number {
  if (r.text !== undefined) return Buffer.byteLength(r.text, "utf8");
  return r.translation!.reduce((n, [, s]) => n + Buffer.byteLength(s, "utf8"), 0);
}
