/**
 * The expert store file, opened for positioned I/O. A training run reaches
 * it through the expert tier (tier.ts), which decides what is read and
 * written when; inspection, conversion and inference open it directly.
 *
 * It tracks two indexes. `committed` is what the last checkpoint (or the
 * store's creation) recorded; its slots are never written. `current` is the
 * newest version of each expert, written by write-back into the other slot.
 * A checkpoint flushes, fsyncs, saves `current` next to the dense weights,
 * and then calls markCommitted(); a crash at any point therefore leaves the
 * newest complete checkpoint's records untouched (see format.ts).
 */
import { mkdirSync, closeSync, fstatSync, fsyncSync, openSync, readdirSync, readSync, renameSync, statSync, writeSync, unlinkSync, existsSync } from "node:fs";
import { dirname, basename, join } from "node:path";
import { SigmaError } from "../util/errors.js";
import { diskFull, fsyncDir } from "../util/fs.js";
import { processAlive } from "./lock.js";
import {
  INDEX_ENTRY, PAGE, RECORD_HEADER, checkRecord, decodeHeader, decodeIndex, encodeHeader, encodeIndex, payloadFloats, planLayout,
  recordNumber, recordOffset, sealRecord, totalExperts, type IndexEntry, type LayerLayout, type StoreHeader,
} from "./format.js";

function preadFull(fd: number, buf: Uint8Array, pos: number): number {
  let off = 0;
  while (off < buf.length) {
    const n = readSync(fd, buf, off, buf.length - off, pos + off);
    if (n === 0) break;
    off += n;
  }
  return off;
}

function pwriteFull(fd: number, buf: Uint8Array, pos: number): void {
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off, pos + off);
}

export interface IoStats {
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
}

export class ExpertStoreFile {
  private current: IndexEntry[];
  private committed: IndexEntry[];
  readonly io: IoStats = { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0 };
  /**
   * Test seam: called between the two halves of every record write, so a
   * test can kill the process with a torn record on disk.
   */
  onHalfWritten: ((layer: number, expert: number) => void) | null = null;

  private constructor(readonly path: string, private fd: number, readonly header: StoreHeader, index: IndexEntry[], readOnly = false) {
    this.readOnly = readOnly;
    this.current = index.map((e) => ({ ...e }));
    this.committed = index.map((e) => ({ ...e }));
  }

  /** Whether the file was opened read-only (then every write throws: a bug in the caller). */
  readonly readOnly: boolean;

  /**
   * Opens an existing store; its own index (written at creation or
   * conversion) is the starting point. `readOnly` opens it O_RDONLY, for
   * commands that only read (`sigma store inspect`, inference), so a store
   * on a read-only disk or without write permission still opens.
   * `layers`: the layer shapes the caller's model needs; a store of other
   * shapes is an error naming the file.
   */
  static open(path: string, opts: { readOnly?: boolean; layers?: LayerLayout[] } = {}): ExpertStoreFile {
    const missing = "start a fresh run (it creates the store), or convert a checkpoint into a store with `sigma store convert`";
    let st;
    try {
      st = statSync(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") throw new SigmaError(`the expert store ${path} does not exist`, missing);
      throw new SigmaError(`cannot open the expert store ${path}: ${(e as Error).message}`, "check the path and its permissions");
    }
    if (st.isDirectory()) throw new SigmaError(`the expert store ${path} is a directory, not a store file`, "pass the store file itself (a run keeps it as <out>/experts.sgxs unless store.path says otherwise)");
    if (!st.isFile()) throw new SigmaError(`the expert store ${path} is not a regular file`, "pass the store file itself");
    let fd: number;
    try {
      fd = openSync(path, opts.readOnly ? "r" : "r+");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const ro = code === "EACCES" || code === "EPERM" || code === "EROFS";
      throw new SigmaError(
        `cannot open the expert store ${path} for ${opts.readOnly ? "reading" : "reading and writing"}: ${(e as Error).message}`,
        ro && !opts.readOnly ? "training writes to the store: make the file writable (or copy it to a writable disk); `sigma store inspect` and inference only read it" : "check the file's permissions",
      );
    }
    try {
      const size = fstatSync(fd).size;
      const page = new Uint8Array(PAGE);
      preadFull(fd, page, 0);
      const h = decodeHeader(page, path, size);
      if (opts.layers && JSON.stringify(opts.layers.map((l) => ({ experts: l.experts, width: l.width, expertWidth: l.expertWidth }))) !== JSON.stringify(h.layers)) {
        throw new SigmaError(`the expert store ${path} holds layers ${JSON.stringify(h.layers)}, the model needs ${JSON.stringify(opts.layers)}`, "point store.path at the store made for this model");
      }
      const idx = new Uint8Array(totalExperts(h) * INDEX_ENTRY);
      if (preadFull(fd, idx, h.indexStart) !== idx.length) throw new SigmaError(`${path} ended inside its expert index`, "the file is truncated; restore it");
      return new ExpertStoreFile(path, fd, h, decodeIndex(idx, totalExperts(h), `${path} (index)`), opts.readOnly ?? false);
    } catch (e) {
      closeSync(fd);
      if (e instanceof SigmaError || !(e as NodeJS.ErrnoException).code) throw e;
      throw new SigmaError(`cannot read the expert store ${path}: ${(e as Error).message}`, "check the disk");
    }
  }

  /**
   * Creates a store: `fill(layer, expert, payload)` writes each expert's
   * initial payload (params; m and v start at zero); `stepOf` gives each
   * expert's optimizer step count (0 for a fresh model).
   */
  static create(path: string, layers: LayerLayout[], fill: (layer: number, expert: number, payload: Float32Array) => void, stepOf: (layer: number, expert: number) => number = () => 0): ExpertStoreFile {
    const b = new StoreBuilder(path, layers);
    layers.forEach((l, li) => {
      const payload = new Float32Array(payloadFloats(l));
      for (let e = 0; e < l.experts; e++) {
        payload.fill(0);
        fill(li, e, payload);
        b.put(li, e, 0, payload);
      }
    });
    return b.finish(stepOf);
  }

  layout(layer: number): LayerLayout {
    return this.header.layers[this.layerIndex(layer)]!;
  }

  recordBytes(layer: number): number {
    return this.header.recordBytes[this.layerIndex(layer)]!;
  }

  /** `layer`, checked: a model with more sparse layers than the store is an error naming the store, not a crash. */
  private layerIndex(layer: number): number {
    const n = this.header.layers.length;
    if (!(Number.isInteger(layer) && layer >= 0 && layer < n)) throw new SigmaError(`the expert store ${this.path} has ${n} sparse layer${n === 1 ? "" : "s"}; sparse layer ${layer} is not in it`, "point store.path at the store made for this model");
    return layer;
  }

  /** Where the live version of (layer, expert) is, and what it must contain. */
  locate(layer: number, expert: number): { offset: number; entry: IndexEntry } {
    const entry = this.current[recordNumber(this.header, layer, expert)]!;
    return { offset: recordOffset(this.header, layer, expert, entry.slot), entry };
  }

  /** Reads the live version of (layer, expert) into `rec` (recordBytes(layer) bytes) and checks it. */
  read(layer: number, expert: number, rec: Uint8Array): IndexEntry {
    const { offset, entry } = this.locate(layer, expert);
    const n = preadFull(this.fd, rec, offset);
    this.io.reads++;
    this.io.bytesRead += n;
    this.verify(layer, expert, rec, entry);
    return entry;
  }

  /** Throws a SigmaError naming the record when `rec` is not the version `entry` names. */
  verify(layer: number, expert: number, rec: Uint8Array, entry: IndexEntry): void {
    const why = checkRecord(rec, layer, expert, entry, payloadFloats(this.layout(layer)));
    if (why) {
      throw new SigmaError(
        `the expert store ${this.path}: record of layer ${layer} expert ${expert} (slot ${entry.slot}, generation ${entry.generation}) is unusable: ${why}`,
        "the store was damaged or does not match this checkpoint. A store holds two versions of each expert, so only the newest checkpoint of a store-backed run is sure to resume (an older one may name versions written over since): resume from the newest, or rebuild the store from an in-RAM checkpoint (`sigma store convert`)",
      );
    }
  }

  /** Writes `rec`'s payload as the next version of (layer, expert), never into the committed slot. */
  write(layer: number, expert: number, rec: Uint8Array, step: number): void {
    const { offset, generation } = this.beginWrite(layer, expert, step, rec.length);
    const crc = sealRecord(rec, layer, expert, generation, step, payloadFloats(this.layout(layer)));
    const half = rec.length >> 1;
    this.guard(`writing layer ${layer} expert ${expert}`, () => {
      pwriteFull(this.fd, rec.subarray(0, half), offset);
      this.onHalfWritten?.(layer, expert);
      pwriteFull(this.fd, rec.subarray(half), offset + half);
    });
    this.completeWrite(layer, expert, generation, crc);
  }

  /**
   * Runs a write or fsync, turning an I/O error (a full disk most often: the
   * file is sparse, so a write-back can be the first to need its blocks)
   * into a SigmaError. No checkpoint is hurt: writes go to slots that the
   * newest checkpoint's index does not name.
   */
  private guard(what: string, fn: () => void): void {
    // A programming error, not bad input: a plain Error, which the CLI reports as an internal error.
    if (this.readOnly) throw new Error(`the expert store ${this.path} was opened read-only: ${what} is not allowed`);
    try {
      fn();
    } catch (e) {
      if (!(e as NodeJS.ErrnoException).code) throw e;
      throw new SigmaError(
        `the expert store ${this.path}: ${what} failed: ${(e as Error).message}`,
        `${diskFull(e) ? "the disk is full: free space" : "check the disk"}, then resume the run from its newest checkpoint (--resume), which this error leaves intact`,
      );
    }
  }

  /**
   * Claims the next version of (layer, expert) for a write done elsewhere
   * (the I/O worker): the slot the committed index does not name, and the
   * next generation. The record is unreadable until completeWrite().
   */
  beginWrite(layer: number, expert: number, step: number, bytes: number): { offset: number; generation: number } {
    if (this.readOnly) throw new Error(`the expert store ${this.path} was opened read-only: writing layer ${layer} expert ${expert} is not allowed`);
    const n = recordNumber(this.header, layer, expert);
    const slot = 1 - this.committed[n]!.slot;
    const generation = this.current[n]!.generation + 1;
    this.current[n] = { slot, generation, crc: 0, step };
    this.io.writes++;
    this.io.bytesWritten += bytes;
    return { offset: recordOffset(this.header, layer, expert, slot), generation };
  }

  /** The write of `generation` is on disk with this crc. */
  completeWrite(layer: number, expert: number, generation: number, crc: number): void {
    const e = this.current[recordNumber(this.header, layer, expert)]!;
    if (e.generation === generation) e.crc = crc;
  }

  sync(): void {
    if (this.readOnly) return; // nothing written
    this.guard("fsync", () => fsyncSync(this.fd));
  }

  /** The current index as bytes (what a checkpoint saves after flushing and sync()). */
  currentIndex(): Uint8Array {
    return encodeIndex(this.current);
  }

  /** The checkpoint holding currentIndex() is durable: its slots become the protected ones. */
  markCommitted(): void {
    this.committed = this.current.map((e) => ({ ...e }));
  }

  /** Adopts a checkpoint's index as both current and committed (resume). */
  restore(indexBytes: Uint8Array, source: string): void {
    const idx = decodeIndex(indexBytes, totalExperts(this.header), source);
    this.current = idx.map((e) => ({ ...e }));
    this.committed = idx.map((e) => ({ ...e }));
  }

  /** Each expert's step count in the current index. */
  stepOf(layer: number, expert: number): number {
    return this.current[recordNumber(this.header, layer, expert)]!.step;
  }

  /** Writes the current index into the file itself (after sync), so the file alone opens at this state. */
  writeOwnIndex(): void {
    this.sync();
    this.guard("writing its index", () => pwriteFull(this.fd, this.currentIndex(), this.header.indexStart));
    this.sync();
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/**
 * Writes a new store piece by piece (e.g. as a model's init draws each
 * expert's w1, then each expert's w2), then seals every record. Everything
 * goes to a temporary file that is fsynced and renamed by finish(), so a
 * crash never leaves a half-built store under the real name.
 */
export class StoreBuilder {
  readonly header: StoreHeader;
  private readonly tmp: string;
  private fd: number;

  constructor(readonly path: string, layers: LayerLayout[]) {
    this.header = planLayout(layers);
    const prefix = `.${basename(path)}.tmp-`;
    this.tmp = join(dirname(path), `${prefix}${process.pid}`);
    this.fd = this.guard(() => {
      mkdirSync(dirname(path), { recursive: true });
      // Half-built stores of builders that died (killed mid-init) before their rename.
      for (const f of readdirSync(dirname(path))) {
        const pid = f.startsWith(prefix) ? Number(f.slice(prefix.length)) : NaN;
        if (Number.isInteger(pid) && pid !== process.pid && !processAlive(pid)) unlinkSync(join(dirname(path), f));
      }
      return openSync(this.tmp, "w+");
    });
    this.guard(() => {
      pwriteFull(this.fd, encodeHeader(this.header), 0);
      // The last byte pins the file size; unwritten ranges (moments, second slots) read as zeros.
      pwriteFull(this.fd, new Uint8Array(1), this.header.fileBytes - 1);
    });
  }

  private guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (this.fd !== undefined && this.fd >= 0) closeSync(this.fd);
      this.fd = -1;
      if (existsSync(this.tmp)) unlinkSync(this.tmp);
      throw new SigmaError(`could not create the expert store ${this.path}: ${(e as Error).message}`, diskFull(e) ? "the disk is full: free space or put the store elsewhere (store.path)" : "check that the folder exists and is writable");
    }
  }

  /** Writes `values` at float offset `at` of (layer, expert)'s payload (slot 0). */
  put(layer: number, expert: number, at: number, values: Float32Array): void {
    const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    this.guard(() => pwriteFull(this.fd, bytes, recordOffset(this.header, layer, expert, 0) + RECORD_HEADER + 4 * at));
  }

  /** Seals every record (generation 1, slot 0), writes the index, fsyncs and renames into place. */
  finish(stepOf: (layer: number, expert: number) => number = () => 0): ExpertStoreFile {
    const h = this.header;
    const index: IndexEntry[] = [];
    this.guard(() => {
      h.layers.forEach((l, li) => {
        const floats = payloadFloats(l);
        const rec = new Uint8Array(h.recordBytes[li]!);
        for (let e = 0; e < l.experts; e++) {
          const at = recordOffset(h, li, e, 0);
          preadFull(this.fd, rec, at);
          const step = stepOf(li, e);
          const crc = sealRecord(rec, li, e, 1, step, floats);
          pwriteFull(this.fd, rec.subarray(0, RECORD_HEADER), at);
          index.push({ slot: 0, generation: 1, crc, step });
        }
      });
      pwriteFull(this.fd, encodeIndex(index), h.indexStart);
      fsyncSync(this.fd);
      closeSync(this.fd);
      this.fd = -1;
      renameSync(this.tmp, this.path);
      fsyncDir(dirname(this.path));
    });
    return ExpertStoreFile.open(this.path);
  }
}
