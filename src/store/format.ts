/**
 * The expert store's on-disk format ("SGXS", version 1). One file holds every
 * sparse layer's experts; each expert's parameters AND its Adam moments sit in
 * one page-aligned record, so a single positioned read brings everything a
 * training step needs for that expert (STYLE.md habit 9).
 *
 *   page 0            header: "SGXS", u32 version, u32 json bytes, u32 crc32(json), json
 *                     (storeId, dtype, per-layer expert count E, width C, expert width F,
 *                     record bytes, where each layer's records start)
 *   pages 1…          index: one 16-byte entry per expert (layer-major), see IndexEntry
 *   page-aligned      records: layer l, expert e, slot s at layerStart[l] + (2e + s)·recordBytes[l]
 *
 * A record is a 64-byte record header then the payload (float32):
 *
 *   params [w1 F·C | w2 C·F | b1 F | b2 C]   (P floats: decayed matrices first, then biases)
 *   m      [P]                               Adam first moment, same layout
 *   v      [P]                               Adam second moment
 *
 * Each expert has TWO slots (shadow paging, for crash consistency): a write
 * never touches the slot the last committed index points at, so a crash at
 * any moment leaves the committed version intact. The index (here, and the
 * copy each checkpoint carries) says which slot is live, its generation and
 * its crc32; a read checks all three, so a torn or stale record is an error,
 * never silently wrong weights.
 */
import zlib from "node:zlib";
import { randomUUID } from "node:crypto";
import { z } from "zod";
import { SigmaError } from "../util/errors.js";
import { parseJsonStrict } from "../util/strict-json.js";

export const STORE_MAGIC = "SGXS";
export const STORE_VERSION = 1;
export const RECORD_MAGIC = "SGXR";
export const PAGE = 4096;
/** Bytes before a record's payload. */
export const RECORD_HEADER = 64;
/** Bytes per index entry: u8 slot, 3 pad, u32 generation, u32 crc32, u32 step. */
/** The most steps an expert may have taken (the optimizer counts steps in 32-bit integers). */
export const MAX_EXPERT_STEP = 2_000_000_000;
export const INDEX_ENTRY = 16;

export interface LayerLayout {
  /** Experts E in this layer. */
  experts: number;
  /** Model width C. */
  width: number;
  /** Expert FFN width F. */
  expertWidth: number;
}

export interface StoreHeader {
  storeId: string;
  dtype: "float32";
  layers: LayerLayout[];
  /** Per layer: bytes of one record slot (page multiple). */
  recordBytes: number[];
  /** Per layer: file offset of its first record. */
  layerStart: number[];
  /** File offset of the index. */
  indexStart: number;
  /** Total file size. */
  fileBytes: number;
}

export interface IndexEntry {
  /** Which of the two record slots holds the live version (0 or 1). */
  slot: number;
  /** Write count of this expert; the record header must repeat it. */
  generation: number;
  /** crc32 of the record's header fields and payload. */
  crc: number;
  /** Optimizer steps this expert has taken (its own bias-correction count). */
  step: number;
}

export const roundUp = (n: number, to = PAGE): number => Math.ceil(n / to) * to;

/** Parameters per expert: w1 F·C + w2 C·F + b1 F + b2 C. */
export const paramsPerExpert = (l: LayerLayout): number => 2 * l.expertWidth * l.width + l.expertWidth + l.width;
/** Floats in a record's payload: params, m, v. */
export const payloadFloats = (l: LayerLayout): number => 3 * paramsPerExpert(l);

/** Offsets (in floats) of each tensor inside the params block; m and v repeat them at +P and +2P. */
export function tensorOffsets(l: LayerLayout): { w1: number; w2: number; b1: number; b2: number; decayed: number; P: number } {
  const FC = l.expertWidth * l.width;
  return { w1: 0, w2: FC, b1: 2 * FC, b2: 2 * FC + l.expertWidth, decayed: 2 * FC, P: paramsPerExpert(l) };
}

/** Lays out a new store: header page, index pages, then each layer's record slots. */
export function planLayout(layers: LayerLayout[], storeId = randomUUID()): StoreHeader {
  const total = layers.reduce((s, l) => s + l.experts, 0);
  const indexStart = PAGE;
  let at = indexStart + roundUp(total * INDEX_ENTRY);
  const recordBytes: number[] = [];
  const layerStart: number[] = [];
  for (const l of layers) {
    const rb = roundUp(RECORD_HEADER + 4 * payloadFloats(l));
    recordBytes.push(rb);
    layerStart.push(at);
    at += 2 * l.experts * rb;
  }
  return { storeId, dtype: "float32", layers, recordBytes, layerStart, indexStart, fileBytes: at };
}

/** Global record number of (layer, expert): the index entry position. */
export function recordNumber(h: StoreHeader, layer: number, expert: number): number {
  let n = 0;
  for (let l = 0; l < layer; l++) n += h.layers[l]!.experts;
  return n + expert;
}

export const totalExperts = (h: StoreHeader): number => h.layers.reduce((s, l) => s + l.experts, 0);

export function recordOffset(h: StoreHeader, layer: number, expert: number, slot: number): number {
  return h.layerStart[layer]! + (2 * expert + slot) * h.recordBytes[layer]!;
}

const crc32 = (data: Uint8Array, init = 0): number => (zlib as unknown as { crc32(d: Uint8Array, v?: number): number }).crc32(data, init) >>> 0;

export function encodeHeader(h: StoreHeader): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(h));
  if (16 + json.length > PAGE) throw new SigmaError(`the expert store header needs ${16 + json.length} bytes, more than one page`, "use fewer sparse layers per store");
  const page = new Uint8Array(PAGE);
  const dv = new DataView(page.buffer);
  page.set(new TextEncoder().encode(STORE_MAGIC), 0);
  dv.setUint32(4, STORE_VERSION, true);
  dv.setUint32(8, json.length, true);
  dv.setUint32(12, crc32(json), true);
  page.set(json, 16);
  return page;
}

/** Limits on a layer's sizes: far above any model Sigma trains, low enough that every offset stays an exact integer. */
const MAX_EXPERTS = 1 << 20;
const MAX_WIDTH = 1 << 20;
const MAX_LAYERS = 4096;

const dim = (max: number) => z.number().int().min(1).max(max);
const offset = () => z.number().int().nonnegative().safe();

const HeaderSchema = z
  .object({
    storeId: z.string().min(1).max(128),
    dtype: z.literal("float32"),
    layers: z.array(z.object({ experts: dim(MAX_EXPERTS), width: dim(MAX_WIDTH), expertWidth: dim(MAX_WIDTH) }).strict()).min(1).max(MAX_LAYERS),
    recordBytes: z.array(offset()),
    layerStart: z.array(offset()),
    indexStart: offset(),
    fileBytes: offset(),
  })
  .strict();

/**
 * Reads and checks page 0; `path` names the file in errors. Every field is
 * checked: the magic, the version, the JSON's length and crc32, its schema
 * (strict: no unknown or repeated key; positive layer sizes within limits),
 * and every derived number — record bytes, where each layer starts, where
 * the index starts, the file size — must be exactly what the layer shapes
 * give (planLayout), so no offset read from the file can point outside it or
 * at the wrong record. The file must be exactly as long as the header says.
 */
export function decodeHeader(page: Uint8Array, path: string, fileBytes: number): StoreHeader {
  const hint = "the file is not an intact Sigma expert store; restore it from a checkpoint, or convert a checkpoint into a new store (`sigma store convert`)";
  if (fileBytes < PAGE) throw new SigmaError(`${path} is not a Sigma expert store: ${fileBytes} bytes, shorter than its ${PAGE}-byte header page`, hint);
  if (page.length < 16 || new TextDecoder().decode(page.subarray(0, 4)) !== STORE_MAGIC) {
    throw new SigmaError(`${path} is not a Sigma expert store (no "${STORE_MAGIC}" magic)`, hint);
  }
  const dv = new DataView(page.buffer, page.byteOffset, page.byteLength);
  const version = dv.getUint32(4, true);
  if (version !== STORE_VERSION) throw new SigmaError(`${path} is an expert store of version ${version}; this Sigma reads version ${STORE_VERSION}`, "convert it with the Sigma that wrote it, or start a new store");
  const len = dv.getUint32(8, true);
  if (16 + len > page.length) throw new SigmaError(`${path}: the store header is corrupted (length ${len})`, hint);
  const json = page.subarray(16, 16 + len);
  if (crc32(json) !== dv.getUint32(12, true)) throw new SigmaError(`${path}: the store header is corrupted (checksum mismatch)`, hint);
  let raw: unknown;
  try {
    raw = parseJsonStrict(new TextDecoder("utf-8", { fatal: true }).decode(json));
  } catch (e) {
    throw new SigmaError(`${path}: the store header is not UTF-8 JSON (${(e as Error).message})`, hint);
  }
  const r = HeaderSchema.safeParse(raw);
  if (!r.success) {
    const issues = r.error.issues.slice(0, 3).map((i) => `${i.path.join(".") || "(top level)"}: ${i.message}`);
    throw new SigmaError(`${path}: the store header is invalid: ${issues.join("; ")}`, hint);
  }
  const h = r.data as StoreHeader;
  const plan = planLayout(h.layers, h.storeId as ReturnType<typeof randomUUID>);
  for (const field of ["recordBytes", "layerStart", "indexStart", "fileBytes"] as const) {
    if (JSON.stringify(h[field]) !== JSON.stringify(plan[field])) {
      throw new SigmaError(`${path}: the store header's ${field} is ${JSON.stringify(h[field])}, but its layer shapes give ${JSON.stringify(plan[field])}`, hint);
    }
  }
  if (fileBytes < h.fileBytes) throw new SigmaError(`${path} is truncated: ${fileBytes} bytes, the header says ${h.fileBytes}`, hint);
  if (fileBytes > h.fileBytes) throw new SigmaError(`${path} is longer than its header says: ${fileBytes} bytes, the header says ${h.fileBytes}`, hint);
  return h;
}

export function encodeIndex(entries: IndexEntry[]): Uint8Array {
  const out = new Uint8Array(entries.length * INDEX_ENTRY);
  const dv = new DataView(out.buffer);
  entries.forEach((e, i) => {
    const o = i * INDEX_ENTRY;
    dv.setUint8(o, e.slot);
    dv.setUint32(o + 4, e.generation, true);
    dv.setUint32(o + 8, e.crc, true);
    dv.setUint32(o + 12, e.step, true);
  });
  return out;
}

/**
 * The index entries of `count` experts from `bytes`, which must be exactly
 * count × 16 bytes (the store's own index, or a checkpoint's experts.index).
 * Each entry: slot 0 or 1, zero padding, a generation of at least 1 (records
 * are sealed with generation 1 at creation); `source` names the file.
 */
export function decodeIndex(bytes: Uint8Array, count: number, source: string): IndexEntry[] {
  const hint = "the index is corrupted or does not belong to this store";
  if (bytes.length !== count * INDEX_ENTRY) {
    throw new SigmaError(`${source}: the expert index is ${bytes.length} bytes (${bytes.length / INDEX_ENTRY} entries), the store has ${count} experts (${count * INDEX_ENTRY} bytes)`, hint);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: IndexEntry[] = [];
  for (let i = 0; i < count; i++) {
    const o = i * INDEX_ENTRY;
    const slot = dv.getUint8(o);
    if (slot > 1) throw new SigmaError(`${source}: expert index entry ${i} names slot ${slot} (a store has slots 0 and 1)`, hint);
    if (dv.getUint8(o + 1) | dv.getUint8(o + 2) | dv.getUint8(o + 3)) throw new SigmaError(`${source}: expert index entry ${i} has non-zero padding`, hint);
    const generation = dv.getUint32(o + 4, true);
    if (generation === 0) throw new SigmaError(`${source}: expert index entry ${i} has generation 0 (every record is written at least once)`, hint);
    const step = dv.getUint32(o + 12, true);
    // The optimizer takes step + 1 as a 32-bit count (as does a training run's step: src/checkpoint/folder.ts MAX_STEP).
    if (step > MAX_EXPERT_STEP) throw new SigmaError(`${source}: expert index entry ${i} has taken ${step} steps (at most ${MAX_EXPERT_STEP})`, hint);
    out.push({ slot, generation, crc: dv.getUint32(o + 8, true), step });
  }
  return out;
}

/**
 * Fills a record's 64-byte header (the payload must already be in place after
 * it) and returns the record's crc32, which covers the header fields and the
 * payload: a record torn anywhere, or one from another generation, fails it.
 */
export function sealRecord(rec: Uint8Array, layer: number, expert: number, generation: number, step: number, floats: number): number {
  const dv = new DataView(rec.buffer, rec.byteOffset, RECORD_HEADER);
  rec.set(new TextEncoder().encode(RECORD_MAGIC), 0);
  dv.setUint32(4, layer, true);
  dv.setUint32(8, expert, true);
  dv.setUint32(12, generation, true);
  dv.setUint32(16, step, true);
  dv.setUint32(20, floats, true);
  const crc = recordCrc(rec, floats);
  dv.setUint32(24, crc, true);
  return crc;
}

export function recordCrc(rec: Uint8Array, floats: number): number {
  return crc32(rec.subarray(RECORD_HEADER, RECORD_HEADER + 4 * floats), crc32(rec.subarray(4, 24)));
}

/** Why a record read from disk cannot be used, or null when it is the one the index names. */
export function checkRecord(rec: Uint8Array, layer: number, expert: number, want: IndexEntry, floats: number): string | null {
  const dv = new DataView(rec.buffer, rec.byteOffset, RECORD_HEADER);
  if (new TextDecoder().decode(rec.subarray(0, 4)) !== RECORD_MAGIC) return "no record magic (never written, or overwritten)";
  if (dv.getUint32(4, true) !== layer || dv.getUint32(8, true) !== expert) return `it holds layer ${dv.getUint32(4, true)} expert ${dv.getUint32(8, true)}`;
  if (dv.getUint32(12, true) !== want.generation) return `generation ${dv.getUint32(12, true)}, the index expects ${want.generation} (a newer write replaced the version this index names)`;
  if (dv.getUint32(20, true) !== floats) return `payload of ${dv.getUint32(20, true)} floats, expected ${floats}`;
  const crc = recordCrc(rec, floats);
  if (crc !== want.crc || crc !== dv.getUint32(24, true)) return "checksum mismatch (torn or corrupted record)";
  return null;
}

/** Parses a byte size like "2GiB", "512MiB", "64MB", "1e6" (bytes). */
export function parseBytes(s: string): number {
  const m = /^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*(b|kb|kib|mb|mib|gb|gib|tb|tib)?\s*$/i.exec(s);
  if (!m) throw new SigmaError(`"${s}" is not a byte size`, 'write e.g. 2GiB, 512MiB, 64MB or a number of bytes');
  const unit = (m[2] ?? "b").toLowerCase();
  const mult: Record<string, number> = { b: 1, kb: 1e3, kib: 1024, mb: 1e6, mib: 1024 ** 2, gb: 1e9, gib: 1024 ** 3, tb: 1e12, tib: 1024 ** 4 };
  return Math.floor(Number(m[1]) * mult[unit]!);
}

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
