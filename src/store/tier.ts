/**
 * The expert tier: how a run's experts live on disk and in RAM.
 *
 * Every expert (its weights and both Adam moments, one record) lives in the
 * store file (file.ts, format.ts). Only some are in RAM at a time, as
 * resident records (cache.ts) within a byte budget (`--expert-memory`).
 * A record is always in one of these places:
 *
 *   on disk only      the file's current index names its newest version;
 *   being read ahead  the I/O worker (prefetch.ts) is reading it into a
 *                     buffer of its own (`pending`), for the next step;
 *   resident          in the resident set: pinned while the running step
 *                     computes on it, dirty once updated since it was read;
 *   being written     evicted while dirty: the worker seals and writes it
 *                     (`writing`), and its buffer, still the newest version,
 *                     is not free until the write is settled.
 *
 * The tier moves records between these places and knows nothing of models
 * or optimizers: its user asks for a record (acquire, optionally pinning it
 * for the step), changes the payload in place, sets `step` and `dirty` on
 * it, and ends the step (endStep), which unpins everything and evicts the
 * least recently used records down to the budget, writing dirty ones back.
 * A user that knows the next step's experts early hands them to prefetch(),
 * so their reads overlap the current step's compute.
 *
 * A checkpoint calls flush() (every dirty record written, the file fsynced;
 * it returns the index the checkpoint saves) and, once the checkpoint is
 * durable, committed(). Resuming adopts the checkpoint's index (restore)
 * before anything is read. See file.ts for why a crash at any point
 * recovers to the newest checkpoint with no torn record.
 */
import { writeFileAtomic } from "../util/fs.js";
import { ResidentSet, type CacheStats, type Resident } from "./cache.js";
import type { ExpertStoreFile, IoStats } from "./file.js";
import { payloadFloats, recordNumber } from "./format.js";
import { Prefetcher, type Pending } from "./prefetch.js";

/** Where a store's last run statistics go (for `sigma store inspect`). */
export const statsPath = (storePath: string): string => `${storePath}.stats.json`;

export interface TierStats extends CacheStats {
  budget: number;
  residentBytes: number;
  residentExperts: number;
  totalExperts: number;
  prefetchRequested: number;
  io: IoStats;
}

/** An evicted record the worker is still writing. */
interface Writing {
  layer: number;
  expert: number;
  generation: number;
  step: number;
  buf: Uint8Array;
  status: Int32Array;
}

export class ExpertTier {
  readonly cache: ResidentSet;
  /** Per layer: floats of a record's payload (params, m, v). */
  private readonly floats: number[];
  /** The I/O worker (reads ahead, writes back); null when disabled or closed. */
  private prefetcher: Prefetcher | null;
  private readonly pending = new Map<number, Pending>();
  private pendingBytes = 0;
  /** Evicted records the worker is still writing: their buffers are not free yet. */
  private readonly writing = new Map<number, Writing>();
  private writingBytes = 0;
  /** Records pinned by the running step, unpinned by endStep(). */
  private readonly pinned: Resident[] = [];
  private prefetchRequested = 0;
  /** Test seam: the worker SIGKILLs the process halfway through its next record write. */
  killMidWrite = false;

  /**
   * `budget`: bytes of resident records. `worker`: do reads ahead and
   * write-backs in the I/O worker thread (off: every read and write on the
   * calling thread, and prefetch() is not available).
   */
  constructor(readonly store: ExpertStoreFile, budget: number, worker = true) {
    this.floats = store.header.layers.map(payloadFloats);
    this.cache = new ResidentSet(budget);
    this.prefetcher = worker ? new Prefetcher(store.path) : null;
  }

  /** True when an I/O worker can read records ahead (prefetch). */
  get readsAhead(): boolean {
    return this.prefetcher !== null;
  }

  /** The record number of (layer, expert): a key for per-expert maps. */
  key(layer: number, expert: number): number {
    return recordNumber(this.store.header, layer, expert);
  }

  /**
   * The resident record of (layer, expert), read if needed: taken back from
   * a write in flight, collected from a read ahead, or read now (a miss).
   * Pinned until endStep() when `pin`. Counts a hit or a miss the first time
   * a step asks for it pinned.
   */
  acquire(layer: number, expert: number, pin: boolean): Resident {
    const key = this.key(layer, expert);
    let r = this.cache.touch(key);
    const first = !r || r.pins === 0;
    let prefetched = false;
    if (!r && this.writing.has(key)) {
      // Evicted moments ago and still being written: its buffer holds the newest version.
      const buf = this.settle(key);
      r = this.cache.insert(key, layer, expert, buf, this.floats[layer]!, this.store.locate(layer, expert).entry.step);
    }
    if (!r) {
      const p = this.pending.get(key);
      if (p) {
        this.pending.delete(key);
        this.pendingBytes -= p.buf.length;
        if (Prefetcher.wait(p)) {
          r = this.cache.insert(key, layer, expert, p.buf, this.floats[layer]!, p.entry.step);
          prefetched = true;
        } else {
          this.cache.release(p.buf); // the demand read below reports why
        }
      }
    }
    if (!r) {
      const bytes = this.store.recordBytes(layer);
      this.room(bytes);
      const buf = this.cache.buffer(bytes);
      try {
        const entry = this.store.read(layer, expert, buf);
        r = this.cache.insert(key, layer, expert, buf, this.floats[layer]!, entry.step);
      } catch (e) {
        this.cache.release(buf);
        throw e;
      }
      if (pin) this.cache.stats.misses++;
    } else if (pin && first) {
      this.cache.stats.hits++;
      if (prefetched) this.cache.stats.prefetchHits++;
    }
    if (pin && r.pins === 0) {
      r.pins = 1;
      this.pinned.push(r);
    }
    return r;
  }

  /**
   * The step is over (its records updated in place and marked dirty): counts
   * a step whose working set exceeded the budget, unpins the step's records
   * and evicts down to the budget.
   */
  endStep(): void {
    if (this.cache.bytes > this.cache.budget) this.cache.stats.overBudget++;
    for (const r of this.pinned) r.pins = 0;
    this.pinned.length = 0;
    this.room(0);
  }

  /**
   * Room for `bytes` more next to what is being read ahead: evicts least
   * recently used unpinned records. Buffers of write-backs in flight are not
   * counted against the budget (waiting for them would put the writes back
   * on the step's critical path); they are counted in peakBytes, which is
   * what the budget is reported against. False: pinned records leave no room.
   */
  private room(bytes: number): boolean {
    this.settleFinished();
    const ok = this.cache.makeRoom(bytes + this.pendingBytes, this.writeBack);
    const st = this.cache.stats;
    st.peakBytes = Math.max(st.peakBytes, this.cache.bytes + this.pendingBytes + bytes + this.writingBytes);
    return ok;
  }

  /** Eviction's write-back: handed to the worker when there is one (returns false: the buffer is still in use). */
  private writeBack = (r: Resident): boolean => {
    r.dirty = false;
    if (!this.prefetcher) {
      this.store.write(r.layer, r.expert, r.rec, r.step);
      return true;
    }
    const { offset, generation } = this.store.beginWrite(r.layer, r.expert, r.step, r.rec.length);
    const status = this.prefetcher.write({ layer: r.layer, expert: r.expert, offset, generation, step: r.step, floats: this.floats[r.layer]!, buf: r.rec, tear: this.killMidWrite });
    this.writing.set(r.key, { layer: r.layer, expert: r.expert, generation, step: r.step, buf: r.rec, status });
    this.writingBytes += r.rec.length;
    return false;
  };

  /** Finishes a worker write (blocking if needed): records its crc; returns the buffer, still holding the record. */
  private settle(key: number): Uint8Array {
    const w = this.writing.get(key)!;
    this.writing.delete(key);
    this.writingBytes -= w.buf.length;
    const crc = this.prefetcher!.waitWrite(w.status);
    if (crc === null) this.store.write(w.layer, w.expert, w.buf, w.step); // the worker failed or is gone: write here (errors surface)
    else this.store.completeWrite(w.layer, w.expert, w.generation, crc);
    return w.buf;
  }

  /** Frees the buffers of finished writes (without waiting for unfinished ones). */
  private settleFinished(): void {
    for (const [key, w] of this.writing) if (Prefetcher.written(w.status)) this.cache.release(this.settle(key));
  }

  /**
   * Starts reading the next step's records in the worker (per layer, the
   * experts it needs), as far as the budget allows without evicting what the
   * running step pinned; the rest are read on demand. Needs the worker.
   */
  prefetch(next: Set<number>[]): void {
    // Resident records the next step needs become most recent, so room is made from others first.
    next.forEach((es, l) => es.forEach((e) => this.cache.touch(this.key(l, e))));
    const items: Parameters<Prefetcher["request"]>[0] = [];
    next.forEach((es, l) => {
      for (const e of es) {
        const key = this.key(l, e);
        if (this.cache.has(key) || this.pending.has(key)) continue;
        if (this.writing.has(key)) {
          // Still in memory: take it back instead of reading what is being written.
          this.cache.insert(key, l, e, this.settle(key), this.floats[l]!, this.store.locate(l, e).entry.step);
          continue;
        }
        const bytes = this.store.recordBytes(l);
        // No room without evicting what the running step pinned: the rest will be read on demand.
        if (!this.room(bytes)) return;
        const { offset, entry } = this.store.locate(l, e);
        items.push({ layer: l, expert: e, offset, floats: this.floats[l]!, entry: { ...entry }, buf: this.cache.buffer(bytes) });
        this.pendingBytes += bytes;
      }
    });
    if (items.length === 0) return;
    this.prefetchRequested += items.length;
    for (const p of this.prefetcher!.request(items)) this.pending.set(this.key(p.layer, p.expert), p);
  }

  /** Reads records (layer by layer) into the resident set while they fit in the budget: a warm cache. */
  preload(): void {
    this.store.header.layers.forEach((lay, l) => {
      for (let e = 0; e < lay.experts; e++) {
        if (this.cache.bytes + this.store.recordBytes(l) > this.cache.budget) return;
        this.acquire(l, e, false);
      }
    });
  }

  /**
   * Writes every dirty record back and fsyncs the store, writes the run's
   * statistics beside it (statsPath), and returns the index a checkpoint saves.
   */
  flush(): Uint8Array {
    for (const key of [...this.writing.keys()]) this.cache.release(this.settle(key));
    // On this thread: a checkpoint waits for these anyway.
    for (const r of this.cache.entries()) {
      if (!r.dirty) continue;
      this.store.write(r.layer, r.expert, r.rec, r.step);
      r.dirty = false;
    }
    this.store.sync();
    writeFileAtomic(statsPath(this.store.path), JSON.stringify({ writtenAt: new Date().toISOString(), ...this.stats() }, null, 2) + "\n");
    return this.store.currentIndex();
  }

  /**
   * The checkpoint holding flush()'s index is durable. The store's own index
   * then follows it, so the file alone (`sigma store inspect` without --ckpt)
   * reads as of the newest checkpoint. A crash while it is written can leave
   * it torn, which hurts nothing: resuming reads the checkpoint's copy.
   */
  committed(): void {
    this.store.markCommitted();
    this.store.writeOwnIndex();
  }

  /** Adopts a checkpoint's index (resume): nothing may be resident yet. */
  restore(indexBytes: Uint8Array, source: string): void {
    if (this.cache.size || this.pending.size || this.writing.size) throw new Error("ExpertTier.restore: experts are already resident");
    this.store.restore(indexBytes, source);
  }

  stats(): TierStats {
    return {
      ...this.cache.stats,
      budget: this.cache.budget,
      residentBytes: this.cache.bytes,
      residentExperts: this.cache.size,
      totalExperts: this.store.header.layers.reduce((s, l) => s + l.experts, 0),
      prefetchRequested: this.prefetchRequested,
      io: { ...this.store.io },
    };
  }

  /** Clears the hit/miss counters (e.g. after a warm-up step). */
  resetStats(): void {
    Object.assign(this.cache.stats, { hits: 0, misses: 0, prefetchHits: 0, evictions: 0, writeBacks: 0, overBudget: 0 });
    this.prefetchRequested = 0;
  }

  /** Waits for the worker's reads and writes, stops it and closes the file (dirty records not flushed are dropped). */
  close(): void {
    for (const p of this.pending.values()) Prefetcher.wait(p);
    this.pending.clear();
    for (const key of [...this.writing.keys()]) this.settle(key);
    void this.prefetcher?.close();
    this.prefetcher = null;
    this.store.close();
  }
}
