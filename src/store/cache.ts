/**
 * The resident set: the expert records held in RAM, the memory side of the
 * expert tier (tier.ts), which fills it and empties it.
 *
 * Each resident expert is one record buffer (header + params + m + v, exactly
 * the bytes of its store record) in a SharedArrayBuffer, so the prefetch
 * worker can read from the file straight into it. The set has a byte budget
 * (`--expert-memory`) over these buffers; experts pinned by the running step
 * are never evicted (a step's working set must be in memory, so it may
 * overshoot the budget, counted in `overBudget`). Policy: least recently used.
 * Dirty experts are written back when evicted or flushed.
 */
import { RECORD_HEADER } from "./format.js";

export interface Resident {
  /** Global record number (layer-major). */
  key: number;
  layer: number;
  expert: number;
  rec: Uint8Array;
  /** params [P] | m [P] | v [P] over rec's payload. */
  payload: Float32Array;
  /** The expert's own optimizer step count. */
  step: number;
  dirty: boolean;
  /** >0 while the running step needs it. */
  pins: number;
}

export interface CacheStats {
  /** Lookups of an expert a step needs that found it resident. */
  hits: number;
  /** Lookups that had to read from the store (on the step's critical path). */
  misses: number;
  /** Of the hits, those that were resident only thanks to prefetch. */
  prefetchHits: number;
  evictions: number;
  writeBacks: number;
  /** Largest resident bytes seen. */
  peakBytes: number;
  /** Steps whose pinned working set alone exceeded the budget. */
  overBudget: number;
}

export class ResidentSet {
  /** Map order is recency order: a touched entry is moved to the end. */
  private readonly map = new Map<number, Resident>();
  private readonly free = new Map<number, Uint8Array[]>();
  bytes = 0;
  readonly stats: CacheStats = { hits: 0, misses: 0, prefetchHits: 0, evictions: 0, writeBacks: 0, peakBytes: 0, overBudget: 0 };

  constructor(readonly budget: number) {}

  get size(): number {
    return this.map.size;
  }

  has(key: number): boolean {
    return this.map.has(key);
  }

  /** The entry, marked most recently used, or undefined. */
  touch(key: number): Resident | undefined {
    const r = this.map.get(key);
    if (r) {
      this.map.delete(key);
      this.map.set(key, r);
    }
    return r;
  }

  peek(key: number): Resident | undefined {
    return this.map.get(key);
  }

  /** A record buffer of `bytes` (shared, reused from evicted entries when possible). */
  buffer(bytes: number): Uint8Array {
    return this.free.get(bytes)?.pop() ?? new Uint8Array(new SharedArrayBuffer(bytes));
  }

  /** Returns a buffer that never became an entry. */
  release(buf: Uint8Array): void {
    const list = this.free.get(buf.length) ?? [];
    list.push(buf);
    this.free.set(buf.length, list);
  }

  insert(key: number, layer: number, expert: number, rec: Uint8Array, floats: number, step: number): Resident {
    const r: Resident = { key, layer, expert, rec, payload: new Float32Array(rec.buffer, rec.byteOffset + RECORD_HEADER, floats), step, dirty: false, pins: 0 };
    this.map.set(key, r);
    this.bytes += rec.length;
    this.stats.peakBytes = Math.max(this.stats.peakBytes, this.bytes);
    return r;
  }

  /**
   * Evicts least recently used unpinned entries until `need` more bytes fit
   * in the budget; `writeBack` is called for dirty ones before they go and
   * says whether their buffer is free at once (false: an asynchronous write
   * still reads it, and its owner releases it later).
   * Returns false when pinned entries alone leave no room.
   */
  makeRoom(need: number, writeBack: (r: Resident) => boolean): boolean {
    if (this.bytes + need <= this.budget) return true;
    for (const r of this.map.values()) {
      if (this.bytes + need <= this.budget) break;
      if (r.pins > 0) continue;
      let free = true;
      if (r.dirty) {
        free = writeBack(r);
        this.stats.writeBacks++;
      }
      this.map.delete(r.key);
      this.bytes -= r.rec.length;
      this.stats.evictions++;
      if (free) this.release(r.rec);
    }
    return this.bytes + need <= this.budget;
  }

  entries(): IterableIterator<Resident> {
    return this.map.values();
  }

  /** Drops every entry (after a flush), keeping no buffers. */
  clear(): void {
    this.map.clear();
    this.free.clear();
    this.bytes = 0;
  }
}
