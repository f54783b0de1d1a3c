/**
 * Token shards: one domain's tokens for one split, as a flat little-endian
 * array after a fixed 96-byte header, so that the file can be memory-mapped
 * and any window read with one positioned read.
 *
 *   offset size  field
 *   0      4     magic "SGTK"
 *   4      4     u32 format version (1)
 *   8      4     u32 bytes per token: 2 (uint16, when V ≤ 65536) or 4 (uint32)
 *   12     4     u32 domain id
 *   16     8     u64 token count N
 *   24     8     u64 document count
 *   32     4     u32 split: 0 train, 1 validation
 *   36     4     u32 vocabulary size V
 *   40     24    zero
 *   64     32    sha256 of the tokenizer.json that made the tokens
 *   96     N×b   tokens
 *
 * Documents are stored back to back, each ending with <|endoftext|>, so the
 * loader packs across document boundaries without extra bookkeeping.
 * Files are written to a temp name, fsynced and renamed: a shard either
 * exists whole or not at all.
 */
import { closeSync, fstatSync, fsyncSync, openSync, readSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { SigmaError } from "../util/errors.js";

export const SHARD_MAGIC = "SGTK";
export const SHARD_VERSION = 1;
export const HEADER_BYTES = 96;

export type Split = "train" | "val";

export interface ShardHeader {
  version: number;
  bytesPerToken: 2 | 4;
  domainId: number;
  tokens: number;
  docs: number;
  split: Split;
  vocabSize: number;
  tokenizerSha256: string;
}

export function bytesPerToken(vocabSize: number): 2 | 4 {
  return vocabSize <= 65536 ? 2 : 4;
}

function encodeHeader(h: ShardHeader): Buffer {
  const b = Buffer.alloc(HEADER_BYTES);
  b.write(SHARD_MAGIC, 0, "latin1");
  b.writeUInt32LE(h.version, 4);
  b.writeUInt32LE(h.bytesPerToken, 8);
  b.writeUInt32LE(h.domainId, 12);
  b.writeBigUInt64LE(BigInt(h.tokens), 16);
  b.writeBigUInt64LE(BigInt(h.docs), 24);
  b.writeUInt32LE(h.split === "train" ? 0 : 1, 32);
  b.writeUInt32LE(h.vocabSize, 36);
  Buffer.from(h.tokenizerSha256, "hex").copy(b, 64);
  return b;
}

/** Appends documents to a new shard; `close()` writes the header and publishes the file. */
export class ShardWriter {
  readonly path: string;
  private readonly tmp: string;
  private fd: number;
  private buf: Uint16Array | Uint32Array;
  private used = 0;
  private pos = HEADER_BYTES;
  tokens = 0;
  docs = 0;

  constructor(path: string, private readonly meta: Omit<ShardHeader, "version" | "tokens" | "docs" | "bytesPerToken">) {
    this.path = path;
    this.tmp = `${path}.tmp-${process.pid}`;
    this.fd = openSync(this.tmp, "w");
    this.buf = bytesPerToken(meta.vocabSize) === 2 ? new Uint16Array(1 << 16) : new Uint32Array(1 << 16);
  }

  /** Adds one document's tokens (already ending in <|endoftext|>). */
  addDoc(ids: ArrayLike<number>): void {
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!(id >= 0 && id < this.meta.vocabSize)) throw new SigmaError(`${this.path}: token id ${id} outside [0, ${this.meta.vocabSize})`);
      if (this.used === this.buf.length) this.flush();
      this.buf[this.used++] = id;
    }
    this.tokens += ids.length;
    this.docs++;
  }

  private flush(): void {
    const bytes = new Uint8Array(this.buf.buffer, 0, this.used * this.buf.BYTES_PER_ELEMENT);
    for (let at = 0; at < bytes.length; ) at += writeSync(this.fd, bytes, at, bytes.length - at, this.pos + at);
    this.pos += bytes.length;
    this.used = 0;
  }

  close(): ShardHeader {
    this.flush();
    const h: ShardHeader = { ...this.meta, version: SHARD_VERSION, tokens: this.tokens, docs: this.docs, bytesPerToken: bytesPerToken(this.meta.vocabSize) };
    writeSync(this.fd, encodeHeader(h), 0, HEADER_BYTES, 0);
    fsyncSync(this.fd);
    closeSync(this.fd);
    renameSync(this.tmp, this.path);
    return h;
  }

  /** Drops the temp file (on error). */
  abort(): void {
    try {
      closeSync(this.fd);
      unlinkSync(this.tmp);
    } catch {
      /* already gone */
    }
  }
}

export interface ShardExpect {
  tokenizerSha256?: string;
  domainId?: number;
  split?: Split;
}

/** A shard opened for positioned reads. Validates the header and the file size on open. */
export class ShardReader {
  readonly header: ShardHeader;
  private fd: number;

  constructor(readonly path: string, expect: ShardExpect = {}) {
    try {
      this.fd = openSync(path, "r");
    } catch (e) {
      throw new SigmaError(`Cannot open shard ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "run `sigma data prepare` again");
    }
    try {
      this.header = this.readHeader(expect);
    } catch (e) {
      closeSync(this.fd);
      throw e;
    }
  }

  private readHeader(expect: ShardExpect): ShardHeader {
    const size = fstatSync(this.fd).size;
    const redo = "run `sigma data prepare` again to rebuild the shards";
    if (size < HEADER_BYTES) throw new SigmaError(`Shard ${this.path} is truncated: ${size} bytes, shorter than the ${HEADER_BYTES}-byte header`, redo);
    const b = Buffer.alloc(HEADER_BYTES);
    readSync(this.fd, b, 0, HEADER_BYTES, 0);
    if (b.toString("latin1", 0, 4) !== SHARD_MAGIC) throw new SigmaError(`${this.path} is not a Sigma token shard (magic ${JSON.stringify(b.toString("latin1", 0, 4))}, expected "SGTK")`, redo);
    const version = b.readUInt32LE(4);
    if (version !== SHARD_VERSION) throw new SigmaError(`Shard ${this.path} has format version ${version}; this Sigma reads version ${SHARD_VERSION}`, redo);
    const bpt = b.readUInt32LE(8);
    if (bpt !== 2 && bpt !== 4) throw new SigmaError(`Shard ${this.path} has ${bpt} bytes per token; expected 2 or 4`, redo);
    const h: ShardHeader = {
      version,
      bytesPerToken: bpt,
      domainId: b.readUInt32LE(12),
      tokens: Number(b.readBigUInt64LE(16)),
      docs: Number(b.readBigUInt64LE(24)),
      split: b.readUInt32LE(32) === 0 ? "train" : "val",
      vocabSize: b.readUInt32LE(36),
      tokenizerSha256: b.toString("hex", 64, 96),
    };
    const want = HEADER_BYTES + h.tokens * bpt;
    if (size !== want) {
      throw new SigmaError(`Shard ${this.path} is ${size < want ? "truncated" : "longer than its header says"}: the header says ${h.tokens} tokens (${want} bytes), the file has ${size} bytes`, redo);
    }
    if (expect.tokenizerSha256 !== undefined && h.tokenizerSha256 !== expect.tokenizerSha256) {
      throw new SigmaError(
        `Shard ${this.path} was made with another tokenizer (sha256 ${h.tokenizerSha256.slice(0, 12)}…, expected ${expect.tokenizerSha256.slice(0, 12)}…)`,
        "prepare the data again with the tokenizer you train with, or point at the matching data folder",
      );
    }
    if (expect.domainId !== undefined && h.domainId !== expect.domainId) throw new SigmaError(`Shard ${this.path} holds domain id ${h.domainId}, the manifest says ${expect.domainId}`, redo);
    if (expect.split !== undefined && h.split !== expect.split) throw new SigmaError(`Shard ${this.path} holds the ${h.split} split, the manifest says ${expect.split}`, redo);
    return h;
  }

  get tokens(): number {
    return this.header.tokens;
  }

  /** Copies tokens [start, start + out.length) into `out`. */
  read(start: number, out: Int32Array | Uint32Array): void {
    const n = out.length;
    if (start < 0 || start + n > this.header.tokens) throw new SigmaError(`${this.path}: read of [${start}, ${start + n}) is outside its ${this.header.tokens} tokens`);
    const bpt = this.header.bytesPerToken;
    const raw = Buffer.alloc(n * bpt);
    readSync(this.fd, raw, 0, raw.length, HEADER_BYTES + start * bpt);
    const view = bpt === 2 ? new Uint16Array(raw.buffer, raw.byteOffset, n) : new Uint32Array(raw.buffer, raw.byteOffset, n);
    out.set(view);
  }

  readAll(): Int32Array {
    const out = new Int32Array(this.header.tokens);
    if (out.length > 0) this.read(0, out);
    return out;
  }

  close(): void {
    closeSync(this.fd);
  }
}
