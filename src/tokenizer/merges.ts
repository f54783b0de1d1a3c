/**
 * Applying BPE merges to one pre-token: the rule of the Hugging Face
 * `tokenizers` BPE model, shared by Sigma's own codec (codec.ts) and the
 * loader of other tokenizer.json files (hf.ts).
 *
 * A merge is a pair of ids (a, b) with a rank (its position in the merge
 * list) and a result id. The lowest-rank pair present in the word is merged
 * first; among equal ranks the leftmost goes first. Merging every
 * occurrence of the best pair left to right is the same as merging them one
 * at a time, since a new token only takes part in later (higher-rank)
 * merges.
 *
 * Two ways to find the best pair: short words rescan the word per merge
 * (cheap for the typical pre-token of a few characters); long words — a
 * SentencePiece-style tokenizer sees a whole sentence as one piece — use a
 * linked list and a heap keyed (rank, position), O(n log n), never
 * quadratic.
 */

const SHORT_WORD = 48; // below this, rescanning the word per merge beats a heap
const SHIFT = 2097152; // 2^21: ids are below this, so a pair packs into one number

/** Packs a pair of ids (each < 2^21) into one number key. */
const pairKey = (a: number, b: number): number => a * SHIFT + b;

export const MAX_MERGE_ID = SHIFT;

export class MergeTable {
  /** pairKey(a, b) → rank; resultOf[rank] = merged id. */
  private readonly rank = new Map<number, number>();
  private readonly resultOf: Int32Array;
  private readonly leftOf: Int32Array;
  private readonly rightOf: Int32Array;

  constructor(readonly size: number) {
    this.resultOf = new Int32Array(size);
    this.leftOf = new Int32Array(size);
    this.rightOf = new Int32Array(size);
  }

  /** Records merge number `rank`: a + b → c. A repeated pair keeps its first rank (a repeat never fires). */
  set(rank: number, a: number, b: number, c: number): void {
    const k = pairKey(a, b);
    if (!this.rank.has(k)) this.rank.set(k, rank);
    this.resultOf[rank] = c;
    this.leftOf[rank] = a;
    this.rightOf[rank] = b;
  }

  /** The pair merge number `rank` joins (read-only: for writing the table out, e.g. into GGUF). */
  pair(rank: number): [number, number] {
    return [this.leftOf[rank]!, this.rightOf[rank]!];
  }

  /** The merged ids of word `w` (consumed). */
  apply(w: number[]): number[] {
    return w.length < SHORT_WORD ? this.applyShort(w) : this.applyLong(w);
  }

  /** Rescan for the lowest-rank pair, merge all its occurrences left to right, repeat. */
  applyShort(w: number[]): number[] {
    for (;;) {
      let best = Infinity;
      for (let i = 0; i + 1 < w.length; i++) {
        const r = this.rank.get(pairKey(w[i]!, w[i + 1]!));
        if (r !== undefined && r < best) best = r;
      }
      if (best === Infinity) return w;
      const c = this.resultOf[best]!;
      const a = this.leftOf[best]!;
      const b = this.rightOf[best]!;
      let j = 0;
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === a && w[i + 1] === b) {
          w[j++] = c;
          i++;
        } else w[j++] = w[i]!;
      }
      w.length = j;
    }
  }

  /** The same rule with a linked list and a heap keyed (rank, position): O(n log n) for long words. */
  applyLong(w: number[]): number[] {
    const n = w.length;
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new MinHeap();
    const push = (i: number): void => {
      const j = next[i]!;
      if (j < 0) return;
      const r = this.rank.get(pairKey(w[i]!, w[j]!));
      if (r !== undefined) heap.push(r * 4294967296 + i);
    };
    for (let i = 0; i + 1 < n; i++) push(i);
    while (heap.size > 0) {
      const e = heap.pop();
      const r = Math.floor(e / 4294967296);
      const i = e - r * 4294967296;
      const j = next[i]!;
      // Stale entry: the node was merged away or its pair changed since it was pushed.
      if (w[i]! < 0 || j < 0 || this.rank.get(pairKey(w[i]!, w[j]!)) !== r) continue;
      w[i] = this.resultOf[r]!;
      w[j] = -1;
      next[i] = next[j]!;
      if (next[j]! >= 0) prev[next[j]!] = i;
      if (prev[i]! >= 0) push(prev[i]!);
      push(i);
    }
    return w.filter((x) => x >= 0);
  }
}

/** A binary min-heap of numbers. */
class MinHeap {
  private a: number[] = [];
  get size(): number {
    return this.a.length;
  }
  push(x: number): void {
    const a = this.a;
    let i = a.length;
    a.push(x);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p]! <= x) break;
      a[i] = a[p]!;
      i = p;
    }
    a[i] = x;
  }
  pop(): number {
    const a = this.a;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= a.length) break;
        const c = l + 1 < a.length && a[l + 1]! < a[l]! ? l + 1 : l;
        if (a[c]! >= last) break;
        a[i] = a[c]!;
        i = c;
      }
      a[i] = last;
    }
    return top;
  }
}
