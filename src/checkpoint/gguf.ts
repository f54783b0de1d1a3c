/**
 * The GGUF container (llama.cpp's model file), version 3, little-endian:
 *
 *   "GGUF"  u32 version  u64 tensor_count  u64 kv_count
 *   kv_count × (string key, u32 value type, value)
 *   tensor_count × (string name, u32 n_dims, n_dims × u64 ne, u32 ggml type, u64 offset)
 *   zero padding to the alignment, then the data section: each tensor's bytes
 *   at its offset (relative to the section, a multiple of the alignment)
 *
 * A string is a u64 byte length and UTF-8 bytes, no terminator. A value is
 * one of 13 types (GGUF_TYPE below); an array is a u32 item type, a u64
 * count and the items (arrays of arrays allowed). The alignment is the
 * metadata key general.alignment (u32, a power of two), else 32. ne[0] is the
 * innermost dimension: a row-major matrix [rows, cols] is ne = [cols, rows].
 *
 * This file knows the container only: tensors are raw bytes, with the block
 * size and block bytes of each ggml type (GGML_TYPES) to check their length.
 * Element encodings (f16, bf16, q8_0 blocks) are src/models/gguf.ts's.
 *
 * Reading is strict and bounded, for files from anywhere: every count is
 * checked against the bytes left before anything is allocated for it (a
 * lying count is an error, never a huge allocation or a long loop); strings
 * must be UTF-8; keys and tensor names unique; dims 1–4 with a safe element
 * count that whole blocks cover; offsets aligned, inside the file and not
 * overlapping. Each problem is a SigmaError naming the file and the field.
 */
import { SigmaError } from "../util/errors.js";
import { writeFileAtomic } from "../util/fs.js";
import { readRegularFile } from "../util/read.js";

/** Value type ids of the format. */
export const GGUF_TYPE = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
} as const;
export type GgufTypeName = keyof typeof GGUF_TYPE;
export type GgufScalarName = Exclude<GgufTypeName, "array">;
const TYPE_NAME = new Map<number, GgufTypeName>(Object.entries(GGUF_TYPE).map(([k, v]) => [v, k as GgufTypeName]));
/** Bytes of each fixed-size scalar. */
const SCALAR_BYTES: Record<Exclude<GgufScalarName, "string">, number> = { u8: 1, i8: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, bool: 1, u64: 8, i64: 8, f64: 8 };

/**
 * One metadata value. Integers up to 32 bits and floats are numbers; 64-bit
 * integers are bigints; an array names its item type and holds plain items
 * (numbers, bigints, booleans, strings), or for arrays of arrays GgufArray items.
 */
export type GgufValue =
  | { type: "u8" | "i8" | "u16" | "i16" | "u32" | "i32" | "f32" | "f64"; value: number }
  | { type: "u64" | "i64"; value: bigint }
  | { type: "bool"; value: boolean }
  | { type: "string"; value: string }
  | GgufArray;
export interface GgufArray {
  type: "array";
  itemType: GgufTypeName;
  value: (number | bigint | boolean | string | GgufArray)[];
}

/** Shorthands for metadata values. */
export const gv = {
  u32: (value: number): GgufValue => ({ type: "u32", value }),
  i32: (value: number): GgufValue => ({ type: "i32", value }),
  f32: (value: number): GgufValue => ({ type: "f32", value }),
  u64: (value: number | bigint): GgufValue => ({ type: "u64", value: BigInt(value) }),
  bool: (value: boolean): GgufValue => ({ type: "bool", value }),
  str: (value: string): GgufValue => ({ type: "string", value }),
  arr: (itemType: GgufTypeName, value: GgufArray["value"]): GgufArray => ({ type: "array", itemType, value }),
};

/** ggml tensor types the reader can size: id, values per block, bytes per block. */
export const GGML_TYPES = {
  F32: { id: 0, block: 1, bytes: 4 },
  F16: { id: 1, block: 1, bytes: 2 },
  Q4_0: { id: 2, block: 32, bytes: 18 },
  Q4_1: { id: 3, block: 32, bytes: 20 },
  Q5_0: { id: 6, block: 32, bytes: 22 },
  Q5_1: { id: 7, block: 32, bytes: 24 },
  Q8_0: { id: 8, block: 32, bytes: 34 },
  Q8_1: { id: 9, block: 32, bytes: 36 },
  Q2_K: { id: 10, block: 256, bytes: 84 },
  Q3_K: { id: 11, block: 256, bytes: 110 },
  Q4_K: { id: 12, block: 256, bytes: 144 },
  Q5_K: { id: 13, block: 256, bytes: 176 },
  Q6_K: { id: 14, block: 256, bytes: 210 },
  Q8_K: { id: 15, block: 256, bytes: 292 },
  I8: { id: 24, block: 1, bytes: 1 },
  I16: { id: 25, block: 1, bytes: 2 },
  I32: { id: 26, block: 1, bytes: 4 },
  I64: { id: 27, block: 1, bytes: 8 },
  F64: { id: 28, block: 1, bytes: 8 },
  BF16: { id: 30, block: 1, bytes: 2 },
} as const;
export type GgmlType = keyof typeof GGML_TYPES;
const GGML_BY_ID = new Map<number, GgmlType>(Object.entries(GGML_TYPES).map(([k, v]) => [v.id, k as GgmlType]));

/** One tensor: ne in ggml order (ne[0] innermost), its raw bytes. */
export interface GgufTensor {
  name: string;
  type: GgmlType;
  ne: number[];
  data: Uint8Array;
}

export interface GgufFile {
  version: number;
  /** Metadata in file order (a Map keeps it). */
  metadata: Map<string, GgufValue>;
  tensors: GgufTensor[];
  alignment: number;
}

export const DEFAULT_ALIGNMENT = 32;
/** GGML_MAX_DIMS. */
const MAX_DIMS = 4;
/** Longest key or tensor name read (llama.cpp's names are under 64 bytes; GGML_MAX_NAME is 64). */
const MAX_NAME_BYTES = 65_535;
/** Deepest nesting of arrays read. */
const MAX_ARRAY_DEPTH = 8;

/** The bytes of a tensor of this type and shape; a RangeError when ne[0] is not whole blocks. */
export function tensorBytes(type: GgmlType, ne: readonly number[]): number {
  const t = GGML_TYPES[type];
  if (ne[0]! % t.block !== 0) throw new RangeError(`${type} needs rows of whole ${t.block}-value blocks, ne[0] is ${ne[0]}`);
  return (ne.reduce((p, d) => p * d, 1) / t.block) * t.bytes;
}

// ------------------------------------------------------------------ writing

class Sink {
  private parts: Uint8Array[] = [];
  length = 0;
  push(b: Uint8Array): void {
    this.parts.push(b);
    this.length += b.length;
  }
  num(kind: Exclude<GgufScalarName, "string" | "bool">, v: number | bigint): void {
    const b = new Uint8Array(SCALAR_BYTES[kind]);
    const dv = new DataView(b.buffer);
    switch (kind) {
      case "u8": dv.setUint8(0, Number(v)); break;
      case "i8": dv.setInt8(0, Number(v)); break;
      case "u16": dv.setUint16(0, Number(v), true); break;
      case "i16": dv.setInt16(0, Number(v), true); break;
      case "u32": dv.setUint32(0, Number(v), true); break;
      case "i32": dv.setInt32(0, Number(v), true); break;
      case "f32": dv.setFloat32(0, Number(v), true); break;
      case "f64": dv.setFloat64(0, Number(v), true); break;
      case "u64": dv.setBigUint64(0, BigInt(v), true); break;
      case "i64": dv.setBigInt64(0, BigInt(v), true); break;
    }
    this.push(b);
  }
  /** Zeros up to the next multiple of `alignment` after `n` bytes. */
  pad(n: number, alignment: number): void {
    const r = (alignment - (n % alignment)) % alignment;
    if (r) this.push(new Uint8Array(r));
  }
  str(s: string): void {
    const b = Buffer.from(s, "utf8");
    this.num("u64", b.length);
    this.push(b);
  }
  /** The parts written so far (the header's many small ones joined into one). */
  chunks(): Uint8Array[] {
    return this.parts;
  }
}

/** Checks an integer against its type's range (the writer never wraps a value silently). */
function checkInt(kind: string, v: number | bigint, where: string): void {
  const range: Record<string, [bigint, bigint]> = {
    u8: [0n, 255n], i8: [-128n, 127n], u16: [0n, 65535n], i16: [-32768n, 32767n], u32: [0n, 4294967295n], i32: [-2147483648n, 2147483647n],
    u64: [0n, 2n ** 64n - 1n], i64: [-(2n ** 63n), 2n ** 63n - 1n],
  };
  const r = range[kind];
  if (!r) return;
  if (typeof v === "number" && !Number.isInteger(v)) throw new RangeError(`gguf: ${where} is ${v}, not an integer (${kind})`);
  const b = BigInt(v);
  if (b < r[0] || b > r[1]) throw new RangeError(`gguf: ${where} is ${v}, outside ${kind}`);
}

function writeItem(sink: Sink, type: GgufTypeName, v: unknown, where: string): void {
  if (type === "string") {
    if (typeof v !== "string") throw new TypeError(`gguf: ${where} is not a string`);
    sink.str(v);
  } else if (type === "bool") {
    if (typeof v !== "boolean") throw new TypeError(`gguf: ${where} is not a boolean`);
    sink.num("u8", v ? 1 : 0);
  } else if (type === "array") {
    const a = v as GgufArray;
    if (a?.type !== "array" || !Array.isArray(a.value)) throw new TypeError(`gguf: ${where} is not an array value`);
    sink.num("u32", GGUF_TYPE[a.itemType]);
    sink.num("u64", a.value.length);
    a.value.forEach((x, i) => writeItem(sink, a.itemType, x, `${where}[${i}]`));
  } else {
    if (typeof v !== "number" && typeof v !== "bigint") throw new TypeError(`gguf: ${where} is not a number`);
    checkInt(type, v, where);
    sink.num(type, v);
  }
}

/** The file's bytes. Tensors keep their order; each starts at a multiple of the alignment. */
export function encodeGguf(file: { metadata: Map<string, GgufValue>; tensors: GgufTensor[] }): Uint8Array {
  return Buffer.concat(encodeGgufParts(file));
}

/** The file as consecutive parts (the header, then each tensor's bytes and padding), so that no single buffer holds it all. */
export function encodeGgufParts(file: { metadata: Map<string, GgufValue>; tensors: GgufTensor[] }): Uint8Array[] {
  const al = file.metadata.get("general.alignment");
  const alignment = al === undefined ? DEFAULT_ALIGNMENT : al.type === "u32" ? al.value : NaN;
  if (!(Number.isInteger(alignment) && alignment > 0 && (alignment & (alignment - 1)) === 0)) throw new RangeError("gguf: general.alignment must be a u32 power of two");
  const names = new Set<string>();
  const sink = new Sink();
  sink.push(Buffer.from("GGUF", "latin1"));
  sink.num("u32", 3);
  sink.num("u64", file.tensors.length);
  sink.num("u64", file.metadata.size);
  for (const [key, value] of file.metadata) {
    sink.str(key);
    sink.num("u32", GGUF_TYPE[value.type]);
    writeItem(sink, value.type, value.type === "array" ? value : value.value, key);
  }
  let offset = 0;
  const offsets: number[] = [];
  for (const t of file.tensors) {
    if (names.has(t.name)) throw new RangeError(`gguf: tensor "${t.name}" twice`);
    names.add(t.name);
    if (t.ne.length < 1 || t.ne.length > MAX_DIMS) throw new RangeError(`gguf: tensor "${t.name}" has ${t.ne.length} dims`);
    const bytes = tensorBytes(t.type, t.ne);
    if (bytes !== t.data.length) throw new RangeError(`gguf: tensor "${t.name}" has ${t.data.length} bytes, ${t.type} [${t.ne}] needs ${bytes}`);
    sink.str(t.name);
    sink.num("u32", t.ne.length);
    for (const d of t.ne) sink.num("u64", d);
    sink.num("u32", GGML_TYPES[t.type].id);
    sink.num("u64", offset);
    offsets.push(offset);
    offset += Math.ceil(bytes / alignment) * alignment;
  }
  sink.pad(sink.length, alignment);
  const header = Buffer.concat(sink.chunks(), sink.length);
  const out = new Sink();
  out.push(header);
  const start = out.length;
  file.tensors.forEach((t, i) => {
    out.pad(out.length - start, alignment);
    if (out.length - start !== offsets[i]) throw new Error("gguf: internal offset mismatch");
    out.push(t.data);
  });
  // The data section ends padded too (llama.cpp's writer does the same).
  if (file.tensors.length) out.pad(out.length - start, alignment);
  return out.chunks();
}

export function writeGguf(path: string, file: { metadata: Map<string, GgufValue>; tensors: GgufTensor[] }): void {
  writeFileAtomic(path, encodeGgufParts(file));
}

// ------------------------------------------------------------------ reading

class Cursor {
  pos = 0;
  private readonly dv: DataView;
  // ignoreBOM: a string starting with U+FEFF keeps it (Llama-2 has it as a token); by default a TextDecoder drops it.
  private readonly utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  constructor(
    readonly buf: Uint8Array,
    private readonly fail: (what: string) => never,
  ) {
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  get left(): number {
    return this.buf.length - this.pos;
  }
  need(n: number, what: string): void {
    if (n > this.left) this.fail(`${what} needs ${n} bytes at offset ${this.pos} but only ${this.left} are left (truncated?)`);
  }
  u8(what: string): number {
    this.need(1, what);
    return this.dv.getUint8(this.pos++);
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  /** A u64 as a number; over 2^53 is an error (no count or size that large fits a file we can read). */
  u64n(what: string): number {
    this.need(8, what);
    const v = this.dv.getBigUint64(this.pos, true);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`${what} is ${v}, beyond any size this file can have`);
    return Number(v);
  }
  scalar(type: Exclude<GgufScalarName, "string">, what: string): number | bigint | boolean {
    this.need(SCALAR_BYTES[type], what);
    const p = this.pos;
    this.pos += SCALAR_BYTES[type];
    const dv = this.dv;
    switch (type) {
      case "u8": return dv.getUint8(p);
      case "i8": return dv.getInt8(p);
      case "u16": return dv.getUint16(p, true);
      case "i16": return dv.getInt16(p, true);
      case "u32": return dv.getUint32(p, true);
      case "i32": return dv.getInt32(p, true);
      case "f32": return dv.getFloat32(p, true);
      case "f64": return dv.getFloat64(p, true);
      case "u64": return dv.getBigUint64(p, true);
      case "i64": return dv.getBigInt64(p, true);
      case "bool": {
        const b = dv.getUint8(p);
        if (b > 1) this.fail(`${what} is a bool of value ${b} (0 or 1 expected)`);
        return b === 1;
      }
    }
  }
  str(what: string, max = Number.MAX_SAFE_INTEGER): string {
    const n = this.u64n(`the length of ${what}`);
    if (n > max) this.fail(`${what} is ${n} bytes long, more than the ${max} allowed`);
    this.need(n, what);
    const bytes = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    try {
      return this.utf8.decode(bytes);
    } catch {
      return this.fail(`${what} is not valid UTF-8`);
    }
  }
}

/** The smallest encoding of one item of a type: bounds an array's count by the bytes left. */
const MIN_ITEM_BYTES = (t: GgufTypeName): number => (t === "string" ? 8 : t === "array" ? 12 : SCALAR_BYTES[t]);

function readItem(c: Cursor, type: GgufTypeName, what: string, depth: number, fail: (w: string) => never): number | bigint | boolean | string | GgufArray {
  if (type === "string") return c.str(what);
  if (type !== "array") return c.scalar(type, what);
  if (depth >= MAX_ARRAY_DEPTH) fail(`${what} nests arrays deeper than ${MAX_ARRAY_DEPTH}`);
  const id = c.u32(`the item type of ${what}`);
  const itemType = TYPE_NAME.get(id) ?? fail(`${what} has item type ${id}, not a GGUF value type (0–12)`);
  const n = c.u64n(`the length of ${what}`);
  // A lying count: each item takes at least MIN_ITEM_BYTES, so more items than the bytes left allow is an error before any allocation.
  if (n * MIN_ITEM_BYTES(itemType) > c.left) fail(`${what} claims ${n} items of ${itemType} but only ${c.left} bytes are left (truncated or corrupted)`);
  const value: GgufArray["value"] = [];
  for (let i = 0; i < n; i++) value.push(readItem(c, itemType, `${what}[${i}]`, depth + 1, fail));
  return { type: "array", itemType, value };
}

/**
 * Parses GGUF bytes (versions 2 and 3, which share this layout); `source`
 * names the file in every error. Tensor data are views into `buf`.
 */
export function decodeGguf(buf: Uint8Array, source: string): GgufFile {
  const fail = (what: string): never => {
    throw new SigmaError(`${source} is not a valid GGUF file: ${what}`, "the file may be truncated or corrupted; export or download it again");
  };
  const c = new Cursor(buf, fail);
  if (buf.length < 4 || Buffer.from(buf.subarray(0, 4)).toString("latin1") !== "GGUF") fail(`it does not start with the magic "GGUF"`);
  c.pos = 4;
  const version = c.u32("the version");
  if (version === 1) fail("it is GGUF version 1 (32-bit counts), which Sigma does not read; convert it with a current llama.cpp");
  if (version >= 0x01000000) fail(`its version reads ${version}: a big-endian GGUF file, which Sigma does not read`);
  if (version !== 2 && version !== 3) fail(`its version is ${version}; Sigma reads versions 2 and 3`);
  const tensorCount = c.u64n("the tensor count");
  const kvCount = c.u64n("the metadata count");
  // Each kv takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info 8 + 4 + 8 + 4 + 8.
  if (kvCount * 13 > c.left) fail(`its header claims ${kvCount} metadata entries but the file has only ${c.left} bytes after the counts`);
  if (tensorCount * 32 > c.left) fail(`its header claims ${tensorCount} tensors but the file has only ${c.left} bytes after the counts`);
  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = c.str(`metadata key ${i}`, MAX_NAME_BYTES);
    if (key.length === 0) fail(`metadata key ${i} is empty`);
    if (metadata.has(key)) fail(`metadata key "${key}" appears twice`);
    const id = c.u32(`the type of metadata "${key}"`);
    const type = TYPE_NAME.get(id) ?? fail(`metadata "${key}" has type ${id}, not a GGUF value type (0–12)`);
    const v = readItem(c, type, `metadata "${key}"`, 0, fail);
    metadata.set(key, (type === "array" ? v : { type, value: v }) as GgufValue);
  }
  const al = metadata.get("general.alignment");
  let alignment = DEFAULT_ALIGNMENT;
  if (al !== undefined) {
    if (al.type !== "u32" || al.value === 0 || (al.value & (al.value - 1)) !== 0) fail(`metadata "general.alignment" is ${al.type === "array" ? "an array" : `${al.type} ${String(al.value)}`}; it must be a u32 power of two`);
    alignment = al.value as number;
  }
  const infos: { name: string; type: GgmlType; ne: number[]; offset: number; bytes: number }[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const name = c.str(`the name of tensor ${i}`, MAX_NAME_BYTES);
    const tn = `tensor "${name}"`;
    if (name.length === 0) fail(`tensor ${i} has an empty name`);
    if (names.has(name)) fail(`${tn} appears twice`);
    names.add(name);
    const nd = c.u32(`the dims of ${tn}`);
    if (nd < 1 || nd > MAX_DIMS) fail(`${tn} has ${nd} dimensions (1–${MAX_DIMS} allowed)`);
    const ne: number[] = [];
    for (let d = 0; d < nd; d++) ne.push(c.u64n(`ne[${d}] of ${tn}`));
    const id = c.u32(`the type of ${tn}`);
    const type = GGML_BY_ID.get(id) ?? fail(`${tn} has ggml type ${id}, which Sigma does not read (known: ${Object.entries(GGML_TYPES).map(([k, v]) => `${k}=${v.id}`).join(", ")})`);
    const offset = c.u64n(`the offset of ${tn}`);
    // The element count, stopped once past the file's size (no overflow, no long loop).
    let n = 1;
    for (const d of ne) {
      n *= d;
      if (n > buf.length * 8 + 8) fail(`${tn} has shape [${ne.join(", ")}], more values than the file could hold`);
    }
    const t = GGML_TYPES[type];
    if (ne[0]! % t.block !== 0) fail(`${tn} is ${type} with ne[0] = ${ne[0]}, not a multiple of its ${t.block}-value block`);
    if (offset % alignment !== 0) fail(`${tn} starts at offset ${offset}, not a multiple of the alignment ${alignment}`);
    infos.push({ name, type, ne, offset, bytes: (n / t.block) * t.bytes });
  }
  const start = Math.ceil(c.pos / alignment) * alignment;
  if (start > buf.length && tensorCount > 0) fail(`the data section would start at byte ${start}, past the end of the ${buf.length}-byte file`);
  const dataLen = buf.length - start;
  const sorted = [...infos].sort((a, b) => a.offset - b.offset);
  let at = 0;
  for (const t of sorted) {
    if (t.offset < at) fail(`tensor "${t.name}" (bytes ${t.offset}…${t.offset + t.bytes}) overlaps the tensor before it (which ends at ${at})`);
    if (t.offset + t.bytes > dataLen) fail(`tensor "${t.name}" spans bytes ${t.offset}…${t.offset + t.bytes} of a ${dataLen}-byte data section (truncated?)`);
    at = t.offset + t.bytes;
  }
  const tensors = infos.map((t) => ({ name: t.name, type: t.type, ne: t.ne, data: buf.subarray(start + t.offset, start + t.offset + t.bytes) }));
  return { version, metadata, tensors, alignment };
}

/** Reads and parses a GGUF file (whole, so at most 4 GiB: Node's largest Buffer). */
export function readGguf(path: string): GgufFile {
  return decodeGguf(readRegularFile(path, "GGUF file", "pass a .gguf file of at most 4 GiB", 2 ** 32 - 1), path);
}

/** The JS value of each metadata type. */
export interface GgufJsValue {
  u8: number; i8: number; u16: number; i16: number; u32: number; i32: number; f32: number; f64: number;
  u64: bigint; i64: bigint; bool: boolean; string: string; array: GgufArray["value"];
}

/** The metadata value at `key` of `type`, or a SigmaError naming the file and key. */
export function ggufGet<T extends GgufTypeName>(file: GgufFile, key: string, type: T, source: string): GgufJsValue[T] {
  const v = file.metadata.get(key);
  if (v === undefined) throw new SigmaError(`${source}: metadata "${key}" is missing`, "the file was not written for this architecture, or is incomplete");
  if (v.type !== type) throw new SigmaError(`${source}: metadata "${key}" is ${v.type}, expected ${type}`, "the file was not written for this architecture, or is damaged");
  return v.value as GgufJsValue[T];
}
