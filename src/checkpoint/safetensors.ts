/**
 * The safetensors format: an 8-byte little-endian header length, a JSON
 * header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {…}},
 * then the raw little-endian bytes. Sigma writes F32, F64 and I32 tensors,
 * and for stored inference weights (docs/decode.md) BF16, F16, U8 and I8.
 *
 * Reading is strict (safetensorsHeader lists the rules): a damaged or hostile
 * file is a SigmaError naming the file and what is wrong, never a crash, a
 * huge allocation or tensors read from the wrong bytes.
 */
import { readFileSync } from "node:fs";
import { SigmaError } from "../util/errors.js";
import { writeFileAtomic } from "../util/fs.js";
import { jsonErrorText, parseJsonStrict, showJson } from "../util/strict-json.js";

export type StDtype = "F32" | "F64" | "I32" | "BF16" | "F16" | "U8" | "I8";
export type StArray = Float32Array | Float64Array | Int32Array;
/** The arrays of stored inference weights (BF16 and F16 as their 16-bit patterns). */
export type StStoredArray = Uint16Array | Uint8Array | Int8Array;

export interface StTensor {
  dtype: StDtype;
  shape: number[];
  data: StArray;
}

const BYTES: Record<StDtype, number> = { F32: 4, F64: 8, I32: 4, BF16: 2, F16: 2, U8: 1, I8: 1 };
/** The dtypes decodeSafetensors reads: Sigma's three, and with `stored` the stored-weight ones too. */
const PLAIN: ReadonlySet<string> = new Set(["F32", "F64", "I32"]);

function dtypeOf(a: StArray | StStoredArray): StDtype {
  if (a instanceof Float32Array) return "F32";
  if (a instanceof Float64Array) return "F64";
  if (a instanceof Uint8Array) return "U8";
  if (a instanceof Int8Array) return "I8";
  if (a instanceof Uint16Array) throw new RangeError("safetensors: a Uint16Array needs its dtype (BF16 or F16)");
  return "I32";
}

/** A tensor to write: `dtype` is needed for 16-bit patterns (BF16 or F16), else it follows from the array. */
export interface StWrite {
  shape: number[];
  data: StArray | StStoredArray;
  dtype?: StDtype;
}

/** Serialises tensors (sorted by name, 8-byte aligned data) and string metadata. */
export function encodeSafetensors(tensors: Map<string, StWrite>, metadata: Record<string, string> = {}): Uint8Array {
  const names = [...tensors.keys()].sort();
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const name of names) {
    const t = tensors.get(name)!;
    const dtype = t.dtype ?? dtypeOf(t.data);
    if (BYTES[dtype] !== t.data.BYTES_PER_ELEMENT) throw new RangeError(`safetensors: "${name}" is ${dtype} but its array has ${t.data.BYTES_PER_ELEMENT}-byte elements`);
    const n = t.shape.reduce((p, d) => p * d, 1);
    if (n !== t.data.length) throw new RangeError(`safetensors: "${name}" has ${t.data.length} values for shape [${t.shape}]`);
    const bytes = n * BYTES[dtype];
    header[name] = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8); // align the data to 8 bytes
  const hbytes = Buffer.from(json, "utf8");
  const out = new Uint8Array(8 + hbytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(hbytes.length), true);
  out.set(hbytes, 8);
  let pos = 8 + hbytes.length;
  for (const name of names) {
    const d = tensors.get(name)!.data;
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), pos);
    pos += d.byteLength;
  }
  return out;
}

export function writeSafetensors(path: string, tensors: Map<string, StWrite>, metadata: Record<string, string> = {}): void {
  writeFileAtomic(path, encodeSafetensors(tensors, metadata));
}

const invalid = (source: string, what: string): never => {
  throw new SigmaError(`${source} is not a valid safetensors file: ${what}`, "the file may be truncated or corrupted; use another checkpoint");
};

/**
 * Bytes per element of every dtype the safetensors format defines. The
 * header check knows them all (so that a file of half-precision tensors is
 * described as such); decodeSafetensors reads only Sigma's three.
 */
export const DTYPE_BYTES: Readonly<Record<string, number>> = {
  BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1, I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4, F32: 4, I64: 8, U64: 8, F64: 8,
};

/** The largest header read: the safetensors reference implementation's limit (100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;
/** Longest tensor name (UTF-16 units) and most dimensions accepted. */
const MAX_NAME = 1024;
const MAX_DIMS = 64;

/** One tensor's entry in a header, checked. */
export interface StEntry {
  name: string;
  dtype: string;
  shape: number[];
  /** Byte range inside the data section. */
  begin: number;
  end: number;
}

/**
 * The checked header of a safetensors buffer (no tensor decoded). Rules, each
 * an error naming `source` and the tensor:
 * - an 8-byte little-endian header length of at most MAX_HEADER_BYTES that
 *   fits in the file; the header is UTF-8 JSON, an object, no key repeated;
 * - `__metadata__`, when present, maps strings to strings;
 * - every other key is a tensor name (1–1024 characters, no control
 *   characters) whose value has exactly dtype (one of DTYPE_BYTES), shape
 *   (at most 64 non-negative safe integers) and data_offsets [begin, end]
 *   (safe integers, begin ≤ end), with end − begin = product(shape) × dtype size;
 * - the tensors tile the data section exactly: sorted by offset, each starts
 *   where the previous ended, the first at 0 and the last at the end of the
 *   file — no overlap, no gap, no trailing bytes (the reference implementation's rule too).
 * `header` is the parsed JSON, for callers that look at it themselves.
 */
export function safetensorsHeader(
  buf: Uint8Array,
  source: string,
): { header: Record<string, unknown>; dataStart: number; entries: StEntry[]; metadata: Record<string, string> } {
  const fail = (what: string): never => invalid(source, what);
  if (buf.length < 8) fail(`only ${buf.length} bytes, shorter than the 8-byte header length`);
  const hlen64 = new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getBigUint64(0, true);
  if (hlen64 > BigInt(MAX_HEADER_BYTES)) fail(`its header length is ${hlen64} bytes, over the ${MAX_HEADER_BYTES}-byte limit`);
  const hlen = Number(hlen64);
  if (hlen > buf.length - 8) fail(`its header claims ${hlen} bytes but the file has only ${buf.length - 8} after the length (truncated?)`);
  let header: unknown;
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(buf.subarray(8, 8 + hlen));
    header = parseJsonStrict(text);
  } catch (e) {
    return fail(`its header is not UTF-8 JSON (${jsonErrorText(e)})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) return fail("its header is not a JSON object");
  const dataStart = 8 + hlen;
  const dataLen = buf.length - dataStart;
  const metadata: Record<string, string> = {};
  const entries: StEntry[] = [];
  const safeInt = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0;
  for (const [name, v] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (typeof v !== "object" || v === null || Array.isArray(v)) fail("__metadata__ is not an object of strings");
      for (const [k, s] of Object.entries(v as object)) {
        if (typeof s !== "string") fail(`__metadata__ key ${JSON.stringify(k)} is ${s === null ? "null" : typeof s}, not a string`);
        if (k === "__proto__") fail('__metadata__ has the key "__proto__"');
        metadata[k] = s as string;
      }
      continue;
    }
    const tn = JSON.stringify(name.length > 80 ? `${name.slice(0, 80)}…` : name);
    if (name.length === 0 || name.length > MAX_NAME || /[\u0000-\u001f\u007f]/.test(name)) fail(`tensor name ${tn} is empty, longer than ${MAX_NAME} characters, or has control characters`);
    if (typeof v !== "object" || v === null || Array.isArray(v)) return fail(`tensor ${tn} is not an object`);
    const e = v as Record<string, unknown>;
    const extra = Object.keys(e).filter((k) => k !== "dtype" && k !== "shape" && k !== "data_offsets");
    if (extra.length) fail(`tensor ${tn} has unknown field ${JSON.stringify(extra[0])} (allowed: dtype, shape, data_offsets)`);
    const dtype = e.dtype;
    if (typeof dtype !== "string" || !Object.hasOwn(DTYPE_BYTES, dtype)) fail(`tensor ${tn} has dtype ${JSON.stringify(dtype)}, not a safetensors dtype`);
    const shape = e.shape;
    if (!Array.isArray(shape) || shape.length > MAX_DIMS || !shape.every(safeInt)) fail(`tensor ${tn} has shape ${showJson(shape)}; a shape is an array of at most ${MAX_DIMS} non-negative integers`);
    const offs = e.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !safeInt(offs[0]) || !safeInt(offs[1]) || offs[0] > offs[1]) {
      fail(`tensor ${tn} has data_offsets ${showJson(offs)}; expected [begin, end], integers with 0 ≤ begin ≤ end`);
    }
    const [begin, end] = offs as [number, number];
    if (end > dataLen) fail(`tensor ${tn} spans bytes [${begin}, ${end}) of a ${dataLen}-byte data section (truncated?)`);
    // The element count; once past the range's size it only grows, so stop there (no overflow, no long loop).
    const size = DTYPE_BYTES[dtype as string]!;
    const bytes = end - begin;
    let n = (shape as number[]).includes(0) ? 0 : 1;
    for (const d of shape as number[]) {
      if (n === 0 || n * size > bytes) break;
      n *= d;
    }
    if (n * size !== bytes) fail(`tensor ${tn} spans ${bytes} bytes but ${dtype} [${(shape as number[]).join(", ")}] needs ${n * size > bytes ? "more" : n * size}`);
    entries.push({ name, dtype: dtype as string, shape: shape as number[], begin, end });
  }
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const t of sorted) {
    if (t.begin < at) fail(`tensor ${JSON.stringify(t.name)} (bytes [${t.begin}, ${t.end})) overlaps the tensor before it (which ends at ${at})`);
    if (t.begin > at) fail(`bytes [${at}, ${t.begin}) of the data section belong to no tensor (the next is ${JSON.stringify(t.name)})`);
    at = t.end;
  }
  if (at !== dataLen) fail(`the data section has ${dataLen - at} bytes after the last tensor (which ends at ${at} of ${dataLen})`);
  return { header: header as Record<string, unknown>, dataStart, entries, metadata };
}

/**
 * Parses a safetensors buffer; every problem is reported with `source` (the
 * file name). Sigma's F32, F64 and I32; with `opts.stored` (a model file
 * that may hold stored inference weights) also BF16, F16 (as Uint16Array),
 * U8 and I8, returned in `stored` apart from the others.
 */
export function decodeSafetensors(
  buf: Uint8Array,
  source: string,
  opts: { stored?: boolean } = {},
): { tensors: Map<string, StTensor>; metadata: Record<string, string>; stored: Map<string, { dtype: StDtype; shape: number[]; data: StStoredArray }> } {
  const { dataStart, entries, metadata } = safetensorsHeader(buf, source);
  const tensors = new Map<string, StTensor>();
  const stored = new Map<string, { dtype: StDtype; shape: number[]; data: StStoredArray }>();
  for (const { name, dtype, shape, begin, end } of entries) {
    if (!Object.hasOwn(BYTES, dtype) || (!opts.stored && !PLAIN.has(dtype))) invalid(source, `tensor ${JSON.stringify(name)} has dtype ${dtype}; Sigma reads F32, F64 and I32${opts.stored ? " (and BF16, F16, U8, I8 for stored weights)" : ""}`);
    const n = (end - begin) / BYTES[dtype as StDtype];
    // Copy into an aligned buffer (the data section need not be aligned in memory).
    const bytes = new Uint8Array(end - begin);
    bytes.set(buf.subarray(dataStart + begin, dataStart + end));
    if (!PLAIN.has(dtype)) {
      const data = dtype === "U8" ? bytes : dtype === "I8" ? new Int8Array(bytes.buffer, 0, n) : new Uint16Array(bytes.buffer, 0, n);
      stored.set(name, { dtype: dtype as StDtype, shape, data });
      continue;
    }
    const data = dtype === "F32" ? new Float32Array(bytes.buffer, 0, n) : dtype === "F64" ? new Float64Array(bytes.buffer, 0, n) : new Int32Array(bytes.buffer, 0, n);
    tensors.set(name, { dtype: dtype as StDtype, shape, data });
  }
  return { tensors, metadata, stored };
}

/**
 * An integer stored as a metadata string (e.g. the optimizer's `step`):
 * decimal digits with an optional leading "-", within [min, max] (default
 * [0, 2^53 − 1]). Missing (own keys only), or anything else, is a SigmaError
 * naming `source` and the key.
 */
export function metadataInt(metadata: Record<string, string>, key: string, source: string, range: { min?: number; max?: number } = {}): number {
  const min = range.min ?? 0;
  const max = range.max ?? Number.MAX_SAFE_INTEGER;
  const raw = Object.hasOwn(metadata, key) ? metadata[key] : undefined;
  const value = raw !== undefined && /^-?[0-9]{1,16}$/.test(raw) ? Number(raw) : NaN;
  if (!(Number.isSafeInteger(value) && value >= min && value <= max)) {
    throw new SigmaError(
      `${source}: metadata "${key}" is ${raw === undefined ? "missing" : JSON.stringify(raw.length > 40 ? `${raw.slice(0, 40)}…` : raw)}; expected an integer in [${min}, ${max}]`,
      "the file is damaged or was not written by Sigma; use another checkpoint",
    );
  }
  return value;
}

export function readSafetensors(path: string, opts: { stored?: boolean } = {}): ReturnType<typeof decodeSafetensors> {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (e) {
    throw new SigmaError(`cannot read ${path}: ${(e as Error).message}`);
  }
  return decodeSafetensors(buf, path, opts);
}
