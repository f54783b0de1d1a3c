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
 * exists whole or not at all; on any error the temp file is removed.
 *
 * Reading checks every header field (magic, version, bytes per token against
 * the vocabulary size, split, the zero padding, counts against the file size
 * and against what the manifest says) and scans every token id on open:
 * an id outside [0, V) is an error naming the shard and position, never a
 * NaN baseline or an out-of-range embedding row. The scan reads the file in
 * pieces of 2^19 tokens (1–2 MiB): measured 3–5 ms per million 2-byte tokens and 6–10 ms per
 * million 4-byte tokens (a full 2^24-token shard: 50–170 ms, warm page cache).
 */
import { closeSync, fstatSync, fsyncSync, openSync, readSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { join } from "node:path";
import { SigmaError } from "../util/errors.js";
import { openRegularFile } from "../util/read.js";
import { diskFull } from "../util/fs.js";
import type { Manifest } from "./manifest.js";

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

/** A write error as a SigmaError naming the shard (a full disk says so). */
function writeError(path: string, what: string, e: unknown): SigmaError {
  if (e instanceof SigmaError) return e;
  const hint = diskFull(e)
    ? "the disk is full: free some space (or write --out elsewhere) and run `sigma data prepare` again; no partial shard was left behind"
    : "check that the data folder is writable, then run `sigma data prepare` again; no partial shard was left behind";
  return new SigmaError(`could not ${what} shard ${path}: ${(e as Error).message}`, hint);
}

/** Appends documents to a new shard; `close()` writes the header and publishes the file. On any error the temp file is gone. */
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
    try {
      this.fd = openSync(this.tmp, "w");
    } catch (e) {
      throw writeError(path, "create", e);
    }
    this.buf = bytesPerToken(meta.vocabSize) === 2 ? new Uint16Array(1 << 16) : new Uint32Array(1 << 16);
  }

  /** Adds one document's tokens (already ending in <|endoftext|>). */
  addDoc(ids: ArrayLike<number>): void {
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!(Number.isInteger(id) && id >= 0 && id < this.meta.vocabSize)) {
        this.abort();
        throw new SigmaError(`${this.path}: token id ${id} outside [0, ${this.meta.vocabSize})`);
      }
      if (this.used === this.buf.length) this.flush();
      this.buf[this.used++] = id;
    }
    this.tokens += ids.length;
    this.docs++;
  }

  private flush(): void {
    const bytes = new Uint8Array(this.buf.buffer, 0, this.used * this.buf.BYTES_PER_ELEMENT);
    try {
      for (let at = 0; at < bytes.length; ) at += writeSync(this.fd, bytes, at, bytes.length - at, this.pos + at);
    } catch (e) {
      this.abort();
      throw writeError(this.path, "write", e);
    }
    this.pos += bytes.length;
    this.used = 0;
  }

  close(): ShardHeader {
    this.flush();
    const h: ShardHeader = { ...this.meta, version: SHARD_VERSION, tokens: this.tokens, docs: this.docs, bytesPerToken: bytesPerToken(this.meta.vocabSize) };
    try {
      const head = encodeHeader(h);
      for (let at = 0; at < HEADER_BYTES; ) at += writeSync(this.fd, head, at, HEADER_BYTES - at, at);
      fsyncSync(this.fd);
      closeSync(this.fd);
      this.fd = -1;
      renameSync(this.tmp, this.path);
    } catch (e) {
      this.abort();
      throw writeError(this.path, "write", e);
    }
    return h;
  }

  /** Drops the temp file (on error); safe to call more than once. */
  abort(): void {
    if (this.fd >= 0) {
      try {
        closeSync(this.fd);
      } catch {
        /* already closed */
      }
      this.fd = -1;
    }
    try {
      unlinkSync(this.tmp);
    } catch {
      /* already gone, or renamed into place */
    }
  }
}

/** What the manifest says about a shard; each given field must match its header. */
export interface ShardExpect {
  tokenizerSha256?: string;
  domainId?: number;
  split?: Split;
  vocabSize?: number;
  tokens?: number;
  docs?: number;
}

/** The most tokens read per piece by the open-time scan. */
const SCAN_TOKENS = 1 << 19;
/** The largest vocabulary (codec.ts packs ids in 21 bits). */
const MAX_VOCAB = 2097152;

/**
 * Opens a shard the manifest lists, checking its header against everything
 * the manifest says of it (tokenizer, domain, split, vocabulary size, token
 * and document counts). The manifest was validated by readManifest, so the
 * file name cannot leave the data folder.
 */
export function openShard(dataDir: string, m: Manifest, s: Manifest["shards"][number]): ShardReader {
  return new ShardReader(join(dataDir, s.file), { tokenizerSha256: m.tokenizer.sha256, domainId: s.domainId, split: s.split, vocabSize: m.tokenizer.vocabSize, tokens: s.tokens, docs: s.docs });
}

/** A shard opened for positioned reads. Validates the header and the file size on open. */
export class ShardReader {
  readonly header: ShardHeader;
  private fd: number;

  constructor(readonly path: string, expect: ShardExpect = {}) {
    try {
      this.fd = openRegularFile(path, "shard", "run `sigma data prepare` again");
    } catch (e) {
      if (e instanceof SigmaError) throw e;
      throw new SigmaError(`Cannot open shard ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "run `sigma data prepare` again");
    }
    try {
      this.header = this.readHeader(expect);
      this.scan();
    } catch (e) {
      closeSync(this.fd);
      if (e instanceof SigmaError || !(e as NodeJS.ErrnoException).code) throw e;
      throw new SigmaError(`Cannot read shard ${path}: ${(e as Error).message}`, "check the disk, or run `sigma data prepare` again");
    }
  }

  /** Positioned read of exactly `buf.length` bytes; a short read means the file changed under us. */
  private readExact(buf: Uint8Array, pos: number): void {
    let off = 0;
    while (off < buf.length) {
      const n = readSync(this.fd, buf, off, buf.length - off, pos + off);
      if (n === 0) throw new SigmaError(`Shard ${this.path} ended at byte ${pos + off}, before the ${pos + buf.length} its header promises (was it truncated while open?)`, "run `sigma data prepare` again to rebuild the shards");
      off += n;
    }
  }

  /** Every token id must be in [0, V): one pass over the file at open. */
  private scan(): void {
    const { tokens, bytesPerToken: bpt, vocabSize: V } = this.header;
    const chunk = Math.min(tokens, SCAN_TOKENS);
    if (chunk === 0) return;
    const raw = new Uint8Array(chunk * bpt);
    for (let start = 0; start < tokens; start += chunk) {
      const n = Math.min(chunk, tokens - start);
      this.readExact(raw.subarray(0, n * bpt), HEADER_BYTES + start * bpt);
      const ids = bpt === 2 ? new Uint16Array(raw.buffer, 0, n) : new Uint32Array(raw.buffer, 0, n);
      let max = 0;
      for (let i = 0; i < n; i++) if (ids[i]! > max) max = ids[i]!;
      if (max >= V) {
        const at = ids.findIndex((x) => x >= V);
        throw new SigmaError(`Shard ${this.path}: token ${start + at} has id ${ids[at]}, outside the vocabulary [0, ${V})`, "the shard is damaged or was made with another tokenizer: run `sigma data prepare` again");
      }
    }
  }

  private readHeader(expect: ShardExpect): ShardHeader {
    const size = fstatSync(this.fd).size;
    const redo = "run `sigma data prepare` again to rebuild the shards";
    const bad = (what: string): never => {
      throw new SigmaError(`Shard ${this.path} ${what}`, redo);
    };
    if (size < HEADER_BYTES) bad(`is truncated: ${size} bytes, shorter than the ${HEADER_BYTES}-byte header`);
    const b = Buffer.alloc(HEADER_BYTES);
    this.readExact(b, 0);
    if (b.toString("latin1", 0, 4) !== SHARD_MAGIC) throw new SigmaError(`${this.path} is not a Sigma token shard (magic ${JSON.stringify(b.toString("latin1", 0, 4))}, expected "SGTK")`, redo);
    const version = b.readUInt32LE(4);
    if (version !== SHARD_VERSION) throw new SigmaError(`Shard ${this.path} has format version ${version}; this Sigma reads version ${SHARD_VERSION}`, redo);
    const bpt = b.readUInt32LE(8);
    if (bpt !== 2 && bpt !== 4) bad(`has ${bpt} bytes per token; expected 2 or 4`);
    const vocabSize = b.readUInt32LE(36);
    if (vocabSize < 2 || vocabSize > MAX_VOCAB) bad(`has vocabulary size ${vocabSize}; expected 2…${MAX_VOCAB}`);
    if (bpt !== bytesPerToken(vocabSize)) bad(`stores ${bpt}-byte tokens for a vocabulary of ${vocabSize}; Sigma writes ${bytesPerToken(vocabSize)}-byte tokens for it`);
    const splitCode = b.readUInt32LE(32);
    if (splitCode > 1) bad(`has split code ${splitCode}; expected 0 (train) or 1 (val)`);
    if (b.subarray(40, 64).some((x) => x !== 0)) bad("has non-zero bytes in its reserved header field (bytes 40–63)");
    const tokens64 = b.readBigUInt64LE(16);
    const docs64 = b.readBigUInt64LE(24);
    const want64 = BigInt(HEADER_BYTES) + tokens64 * BigInt(bpt);
    if (want64 !== BigInt(size)) {
      bad(`is ${BigInt(size) < want64 ? "truncated" : "longer than its header says"}: the header says ${tokens64} tokens (${want64} bytes), the file has ${size} bytes`);
    }
    if (docs64 > tokens64) bad(`says it holds ${docs64} documents in ${tokens64} tokens (each document has at least one)`);
    const h: ShardHeader = {
      version,
      bytesPerToken: bpt as 2 | 4,
      domainId: b.readUInt32LE(12),
      tokens: Number(tokens64),
      docs: Number(docs64),
      split: splitCode === 0 ? "train" : "val",
      vocabSize,
      tokenizerSha256: b.toString("hex", 64, 96),
    };
    if (expect.tokenizerSha256 !== undefined && h.tokenizerSha256 !== expect.tokenizerSha256) {
      throw new SigmaError(
        `Shard ${this.path} was made with another tokenizer (sha256 ${h.tokenizerSha256.slice(0, 12)}…, expected ${expect.tokenizerSha256.slice(0, 12)}…)`,
        "prepare the data again with the tokenizer you train with, or point at the matching data folder",
      );
    }
    if (expect.domainId !== undefined && h.domainId !== expect.domainId) bad(`holds domain id ${h.domainId}, the manifest says ${expect.domainId}`);
    if (expect.split !== undefined && h.split !== expect.split) bad(`holds the ${h.split} split, the manifest says ${expect.split}`);
    if (expect.vocabSize !== undefined && h.vocabSize !== expect.vocabSize) bad(`has vocabulary size ${h.vocabSize}, the manifest says ${expect.vocabSize}`);
    if (expect.tokens !== undefined && h.tokens !== expect.tokens) bad(`holds ${h.tokens} tokens, the manifest says ${expect.tokens}`);
    if (expect.docs !== undefined && h.docs !== expect.docs) bad(`holds ${h.docs} documents, the manifest says ${expect.docs}`);
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
    this.readExact(raw, HEADER_BYTES + start * bpt);
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
