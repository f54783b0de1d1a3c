/**
 * The safetensors format: an 8-byte little-endian header length, a JSON
 * header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {…}},
 * then the raw little-endian bytes. Sigma writes F32, F64 and I32 tensors.
 */
import { readFileSync } from "node:fs";
import { SigmaError } from "../util/errors.js";
import { writeFileAtomic } from "../util/fs.js";

export type StDtype = "F32" | "F64" | "I32";
export type StArray = Float32Array | Float64Array | Int32Array;

export interface StTensor {
  dtype: StDtype;
  shape: number[];
  data: StArray;
}

const BYTES: Record<StDtype, number> = { F32: 4, F64: 8, I32: 4 };

function dtypeOf(a: StArray): StDtype {
  if (a instanceof Float32Array) return "F32";
  if (a instanceof Float64Array) return "F64";
  return "I32";
}

/** Serialises tensors (sorted by name, 8-byte aligned data) and string metadata. */
export function encodeSafetensors(tensors: Map<string, { shape: number[]; data: StArray }>, metadata: Record<string, string> = {}): Uint8Array {
  const names = [...tensors.keys()].sort();
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const name of names) {
    const t = tensors.get(name)!;
    const dtype = dtypeOf(t.data);
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

export function writeSafetensors(path: string, tensors: Map<string, { shape: number[]; data: StArray }>, metadata: Record<string, string> = {}): void {
  writeFileAtomic(path, encodeSafetensors(tensors, metadata));
}

const invalid = (source: string, what: string): never => {
  throw new SigmaError(`${source} is not a valid safetensors file: ${what}`, "the file may be truncated or corrupted; use another checkpoint");
};

/** The JSON header of a safetensors buffer, read without decoding any tensor, and where the data section starts. */
export function safetensorsHeader(buf: Uint8Array, source: string): { header: Record<string, unknown>; dataStart: number } {
  if (buf.length < 8) invalid(source, `only ${buf.length} bytes`);
  const hlen = Number(new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getBigUint64(0, true));
  if (hlen > buf.length - 8) invalid(source, `its header claims ${hlen} bytes but the file has ${buf.length}`);
  try {
    return { header: JSON.parse(Buffer.from(buf.buffer, buf.byteOffset + 8, hlen).toString("utf8")) as Record<string, unknown>, dataStart: 8 + hlen };
  } catch (e) {
    return invalid(source, `its header is not JSON (${(e as Error).message})`);
  }
}

/** Parses a safetensors buffer; every problem is reported with `source` (the file name). */
export function decodeSafetensors(buf: Uint8Array, source: string): { tensors: Map<string, StTensor>; metadata: Record<string, string> } {
  const fail = (what: string): never => invalid(source, what);
  const { header, dataStart } = safetensorsHeader(buf, source);
  const dataLen = buf.length - dataStart;
  const tensors = new Map<string, StTensor>();
  const metadata = (header.__metadata__ ?? {}) as Record<string, string>;
  for (const [name, v] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const e = v as { dtype?: string; shape?: number[]; data_offsets?: [number, number] };
    if (!e.dtype || !(e.dtype in BYTES)) fail(`tensor "${name}" has unsupported dtype ${e.dtype} (Sigma reads F32, F64, I32)`);
    const dtype = e.dtype as StDtype;
    const shape = e.shape ?? fail(`tensor "${name}" has no shape`);
    const [b, end] = e.data_offsets ?? fail(`tensor "${name}" has no data_offsets`);
    const n = shape.reduce((p, d) => p * d, 1);
    if (end - b !== n * BYTES[dtype]) fail(`tensor "${name}" spans ${end - b} bytes but shape [${shape}] needs ${n * BYTES[dtype]}`);
    if (b < 0 || end > dataLen) fail(`tensor "${name}" lies past the end of the file (truncated?)`);
    // Copy into an aligned buffer (the data section need not be aligned in memory).
    const bytes = new Uint8Array(end - b);
    bytes.set(buf.subarray(dataStart + b, dataStart + end));
    const data = dtype === "F32" ? new Float32Array(bytes.buffer, 0, n) : dtype === "F64" ? new Float64Array(bytes.buffer, 0, n) : new Int32Array(bytes.buffer, 0, n);
    tensors.set(name, { dtype, shape, data });
  }
  return { tensors, metadata };
}

export function readSafetensors(path: string): { tensors: Map<string, StTensor>; metadata: Record<string, string> } {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (e) {
    throw new SigmaError(`cannot read ${path}: ${(e as Error).message}`);
  }
  return decodeSafetensors(buf, path);
}
