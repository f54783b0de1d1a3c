/**
 * The server's KV cache: one pool of fixed-size blocks shared by every
 * sequence being decoded, instead of one [seqLen, C] cache per sequence.
 *
 *   - Each attention layer (the blocks' and the query layer's) has a keys and
 *     a values array of `blocks × blockSize × C` numbers. Block b of every
 *     layer holds the same sequence's same positions, so one block table per
 *     sequence serves all layers.
 *   - A sequence is opened with the number of positions it may ever need
 *     (its prompt plus its max_tokens); that many blocks are *reserved* at
 *     once, so a running sequence can never find the pool empty. Blocks are
 *     taken from the free list only as positions are written (`grow`), and
 *     all of them go back when the sequence closes (finished, stopped or
 *     cancelled).
 *   - Attention needs each sequence's keys as one [length, C] array. When
 *     its blocks are consecutive (the free list hands out ascending ids, so
 *     they usually are) the array is a view of the pool; otherwise the blocks
 *     are copied into a scratch buffer, reused from one call to the next.
 *   - An f16 pool (the model's kvFormat, `--kv-cache f16`) keeps the keys and
 *     values as f16 bits: half the bytes per position, so twice the positions
 *     in the same memory; new rows are rounded in, attention reads them back
 *     exactly (attentionHalf).
 *
 * `attention(layer, items)` returns an AttentionCache (src/nn/attention.ts)
 * for one layer of one step: it writes the step's new keys and values at each
 * sequence's next positions and computes each sequence's attention over its
 * own cache — R rows from sequences of any lengths in one call.
 */
import { backendFor } from "../backend/index.js";
import type { AttentionCache, KVFormat } from "../nn/attention.js";
import * as ops from "../ops/index.js";
import type { DType, FloatArray } from "../tensor/dtype.js";
import { Tensor } from "../tensor/tensor.js";

/** One sequence's place in the pool. */
export class KVSeq {
  /** Pool blocks holding positions 0…, in order. */
  readonly table: number[] = [];
  /** Positions whose keys and values are cached (written by completed steps). */
  length = 0;
  closed = false;
  constructor(
    readonly id: number,
    /** Blocks promised to this sequence (held in `table` or still reserved). */
    readonly reserved: number,
  ) {}
}

/** A sequence's rows in one step: `rows` new positions starting at `seq.length`, at rows `start…` of the step's [1, R, C] tensors. */
export interface StepRows {
  seq: KVSeq;
  start: number;
  rows: number;
}

export class KVPool {
  /** Keys and values of each attention layer, [blocks · blockSize · C]: numbers, or f16 bits when the pool is f16. */
  readonly k: (FloatArray | Uint16Array)[];
  readonly v: (FloatArray | Uint16Array)[];
  /** Free block ids, highest first (pop gives the lowest). */
  private readonly free: number[];
  /** Blocks reserved by open sequences but not yet in their tables. */
  private unallocated = 0;
  private open_ = new Set<KVSeq>();
  private nextId = 1;
  private scratch: { k: FloatArray | Uint16Array; v: FloatArray | Uint16Array } | null = null;
  /** The f16 path's log-sum-exp scratch (the attention's by-product, unused here), grow-only. */
  private lse = new Float32Array(0);

  constructor(
    readonly layers: number,
    readonly width: number,
    readonly blockSize: number,
    readonly blocks: number,
    readonly dtype: DType = "float32",
    /** "f16": keys and values kept as f16 bits (half the bytes; float32 models only), attended with attentionHalf. */
    readonly format: KVFormat = "f32",
  ) {
    if (!(Number.isInteger(blockSize) && blockSize >= 1)) throw new RangeError(`KVPool: blockSize ${blockSize} must be a positive integer`);
    if (!(Number.isInteger(blocks) && blocks >= 1)) throw new RangeError(`KVPool: ${blocks} blocks; needs at least 1`);
    if (format === "f16" && dtype !== "float32") throw new RangeError(`KVPool: an f16 pool serves float32 models only (this one is ${dtype})`);
    const n = blocks * blockSize * width;
    this.k = Array.from({ length: layers }, () => this.alloc(n));
    this.v = Array.from({ length: layers }, () => this.alloc(n));
    this.free = Array.from({ length: blocks }, (_, i) => blocks - 1 - i);
  }

  private alloc(n: number): FloatArray | Uint16Array {
    return this.format === "f16" ? new Uint16Array(n) : this.dtype === "float64" ? new Float64Array(n) : new Float32Array(n);
  }

  /** Blocks that a new sequence could reserve now. */
  get available(): number {
    return this.free.length - this.unallocated;
  }

  /** Blocks held in sequences' tables. */
  get used(): number {
    return this.blocks - this.free.length;
  }

  /** Sequences open now. */
  get sequences(): number {
    return this.open_.size;
  }

  /** Blocks needed for `positions` positions. */
  blocksFor(positions: number): number {
    return Math.ceil(positions / this.blockSize);
  }

  /** Opens a sequence that will hold at most `positions` positions, or returns null when the pool cannot promise them now. */
  open(positions: number): KVSeq | null {
    const need = this.blocksFor(positions);
    if (need > this.available) return null;
    this.unallocated += need;
    const seq = new KVSeq(this.nextId++, need);
    this.open_.add(seq);
    return seq;
  }

  /** Makes `seq`'s table cover `positions` positions (within its reservation). */
  grow(seq: KVSeq, positions: number): void {
    const need = this.blocksFor(positions);
    if (seq.closed) throw new Error(`KVPool: sequence ${seq.id} is closed`);
    if (need > seq.reserved) throw new RangeError(`KVPool: sequence ${seq.id} needs ${need} blocks for ${positions} positions but reserved ${seq.reserved}`);
    while (seq.table.length < need) {
      seq.table.push(this.free.pop()!);
      this.unallocated--;
    }
  }

  /** Returns every block of `seq` (held and reserved) to the pool. */
  close(seq: KVSeq): void {
    if (seq.closed) return;
    seq.closed = true;
    this.unallocated -= seq.reserved - seq.table.length;
    // Back in descending order, so that the lowest ids are handed out first again.
    for (const b of seq.table) this.free.push(b);
    this.free.sort((a, b) => b - a);
    seq.table.length = 0;
    this.open_.delete(seq);
  }

  /**
   * The AttentionCache of attention layer `layer` for one step whose rows are
   * `items` (each sequence's table already grown to cover its new rows).
   * Sequence lengths advance only when the step completes (`commit`), since
   * every layer writes the same positions.
   */
  attention(layer: number, items: readonly StepRows[]): AttentionCache {
    return { attend: (q, k, v, heads) => this.attend(layer, items, q, k, v, heads) };
  }

  /** After a step: each sequence has its new positions cached. */
  commit(items: readonly StepRows[]): void {
    for (const it of items) it.seq.length += it.rows;
  }

  private attend(layer: number, items: readonly StepRows[], q: Tensor, k: Tensor, v: Tensor, heads: number): Tensor {
    // Keys and values are `width` wide (G·D: grouped-query attention caches G heads); queries and outputs may be wider (H·D).
    const C = this.width;
    const Cq = q.dim(-1);
    const bs = this.blockSize;
    const [kd, vd, qd] = [k.data, v.data, q.data];
    const out = Tensor.zeros(q.shape, q.dtype);
    const [kl, vl] = [this.k[layer]!, this.v[layer]!];
    const half = kl instanceof Uint16Array && vl instanceof Uint16Array;
    const be = backendFor(qd);
    for (const { seq, start, rows } of items) {
      // Store the new keys and values at positions length…length+rows−1 (rounded to f16 in an f16 pool).
      for (let i = 0; i < rows; i++) {
        const pos = seq.length + i;
        const at = (seq.table[Math.floor(pos / bs)]! * bs + (pos % bs)) * C;
        const from = (start + i) * C;
        if (half) {
          be.toHalf(kl.subarray(at, at + C), kd.subarray(from, from + C), C);
          be.toHalf(vl.subarray(at, at + C), vd.subarray(from, from + C), C);
        } else {
          kl.set(kd.subarray(from, from + C), at);
          vl.set(vd.subarray(from, from + C), at);
        }
      }
      const keys = seq.length + rows;
      const { kc, vc } = this.cached(layer, seq, keys);
      const qi = qd.subarray(start * Cq, (start + rows) * Cq);
      if (half) {
        const D = Cq / heads;
        if (this.lse.length < heads * rows) this.lse = new Float32Array(heads * rows);
        be.attentionHalf(out.data.subarray(start * Cq, (start + rows) * Cq), this.lse, qi, kc as Uint16Array, vc as Uint16Array, 1, rows, keys, heads, D, keys, 1 / Math.sqrt(D), C / D);
        continue;
      }
      const o = ops.attention(Tensor.from(qi, [1, rows, Cq]), Tensor.from(kc as FloatArray, [1, keys, C]), Tensor.from(vc as FloatArray, [1, keys, C]), { heads, keys });
      out.data.set(o.data, start * Cq);
    }
    return out;
  }

  /** `seq`'s first `keys` positions of layer `layer` ([keys, C] each): a view when its blocks are consecutive, else a copy. */
  private cached(layer: number, seq: KVSeq, keys: number): { kc: FloatArray | Uint16Array; vc: FloatArray | Uint16Array } {
    const C = this.width;
    const bs = this.blockSize;
    const nb = this.blocksFor(keys);
    const first = seq.table[0]!;
    let consecutive = true;
    for (let j = 1; j < nb && consecutive; j++) consecutive = seq.table[j] === first + j;
    if (consecutive) {
      const at = first * bs * C;
      return { kc: this.k[layer]!.subarray(at, at + keys * C), vc: this.v[layer]!.subarray(at, at + keys * C) };
    }
    if (!this.scratch || this.scratch.k.length < keys * C) this.scratch = { k: this.alloc(nb * bs * C), v: this.alloc(nb * bs * C) };
    const { k, v } = this.scratch;
    for (let j = 0; j < nb; j++) {
      const n = Math.min(bs, keys - j * bs) * C;
      const at = seq.table[j]! * bs * C;
      k.set(this.k[layer]!.subarray(at, at + n), j * bs * C);
      v.set(this.v[layer]!.subarray(at, at + n), j * bs * C);
    }
    return { kc: k.subarray(0, keys * C), vc: v.subarray(0, keys * C) };
  }
}
