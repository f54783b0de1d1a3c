/**
 * Byte-level BPE training with incremental pair counts.
 *
 * 1. Pre-tokenize the corpus and count each distinct piece ("word") once:
 *    training then works on the word table, not the text.
 * 2. Count adjacent symbol pairs over the table (weighted by word frequency)
 *    and remember which words hold each pair.
 * 3. Repeatedly take the most frequent pair, merge it in the words that hold
 *    it, and apply only the resulting count changes. A max-heap with lazy
 *    deletion finds the best pair: every count change pushes a fresh entry and
 *    entries whose count is no longer current are skipped when popped.
 * Ties go to the smaller (left id, right id) so that training is deterministic.
 */
import { SigmaError } from "../util/errors.js";
import { BYTE_TO_CHAR, pretokenize } from "./pretokenize.js";
import { specialTokens, type SpecialSpec } from "./specials.js";
import { Tokenizer } from "./codec.js";

/** Counts pre-tokens as text streams past; memory grows with distinct pieces only. */
export class WordCounter {
  readonly counts = new Map<string, number>();
  bytes = 0;
  add(text: string): void {
    this.bytes += Buffer.byteLength(text, "utf8");
    for (const p of pretokenize(text)) this.counts.set(p, (this.counts.get(p) ?? 0) + 1);
  }
}

export interface TrainOptions extends SpecialSpec {
  /** Target vocabulary size, specials and the 256 bytes included. */
  vocabSize: number;
  /** Stop early when the best pair occurs fewer times than this. Default 2: a merge seen once teaches nothing. */
  minFrequency?: number;
  onProgress?: (merges: number, target: number) => void;
}

const SHIFT = 2097152; // 2^21: pair key = a * SHIFT + b

export function trainBpe(counter: WordCounter, opts: TrainOptions): Tokenizer {
  const specials = specialTokens(opts);
  const S = specials.length;
  const target = opts.vocabSize - S - 256; // merged tokens to learn
  if (target < 0) throw new SigmaError(`vocab size ${opts.vocabSize} is below the ${S + 256} specials and bytes`, `use --vocab ${S + 256} or more`);
  if (opts.vocabSize > SHIFT) throw new SigmaError(`vocab size ${opts.vocabSize} is over the 2^21 limit`);
  if (counter.counts.size === 0) throw new SigmaError("Cannot train a tokenizer on an empty corpus", "check the corpus folder: it has no text records");
  const minFreq = opts.minFrequency ?? 2;
  const banned = new Set(specials); // a merge must never spell a special token

  // Word table: symbols are local ids (bytes 0–255, merged tokens 256+).
  const utf8 = new TextEncoder();
  const words: number[][] = [];
  const freq: number[] = [];
  for (const [w, f] of counter.counts) {
    words.push(Array.from(utf8.encode(w)));
    freq.push(f);
  }
  const spell: string[] = BYTE_TO_CHAR.slice();
  const idOfSpelling = new Map<string, number>(spell.map((s, i) => [s, i]));
  const merges: [number, number][] = [];

  const count = new Map<number, number>();
  const where = new Map<number, number[]>(); // pair → words holding it (may be stale or repeated)
  const note = (key: number, wi: number): void => {
    let list = where.get(key);
    if (list === undefined) where.set(key, (list = []));
    if (list[list.length - 1] !== wi) list.push(wi);
  };
  words.forEach((w, wi) => {
    for (let i = 0; i + 1 < w.length; i++) {
      const k = w[i]! * SHIFT + w[i + 1]!;
      count.set(k, (count.get(k) ?? 0) + freq[wi]!);
      note(k, wi);
    }
  });
  const heap = new PairHeap();
  for (const [k, c] of count) heap.push(c, k);

  const seen = new Int32Array(words.length).fill(-1);
  while (merges.length < target && heap.size > 0) {
    const [c, key] = heap.pop();
    if (count.get(key) !== c) continue; // stale
    if (c < minFreq) break;
    const a = Math.floor(key / SHIFT);
    const b = key - a * SHIFT;
    const spelling = spell[a]! + spell[b]!;
    if (banned.has(spelling)) {
      count.delete(key);
      continue;
    }
    let m = idOfSpelling.get(spelling);
    if (m === undefined) {
      m = spell.length;
      spell.push(spelling);
      idOfSpelling.set(spelling, m);
    }
    const step = merges.length;
    merges.push([a, b]);
    const delta = new Map<number, number>();
    const add = (k: number, d: number): void => {
      delta.set(k, (delta.get(k) ?? 0) + d);
    };
    for (const wi of where.get(key) ?? []) {
      if (seen[wi] === step) continue;
      seen[wi] = step;
      const w = words[wi]!;
      const f = freq[wi]!;
      let has = false;
      for (let i = 0; i + 1 < w.length; i++) if (w[i] === a && w[i + 1] === b) has = true;
      if (!has) continue;
      for (let i = 0; i + 1 < w.length; i++) add(w[i]! * SHIFT + w[i + 1]!, -f);
      let j = 0;
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === a && w[i + 1] === b) {
          w[j++] = m;
          i++;
        } else w[j++] = w[i]!;
      }
      w.length = j;
      for (let i = 0; i + 1 < w.length; i++) {
        const k = w[i]! * SHIFT + w[i + 1]!;
        add(k, f);
        if (w[i] === m || w[i + 1] === m) note(k, wi);
      }
    }
    where.delete(key);
    for (const [k, d] of delta) {
      if (d === 0) continue;
      const n = (count.get(k) ?? 0) + d;
      if (n > 0) {
        count.set(k, n);
        heap.push(n, k);
      } else count.delete(k);
    }
    count.delete(key);
    if (opts.onProgress && merges.length % 500 === 0) opts.onProgress(merges.length, target);
  }

  return new Tokenizer({
    domains: opts.domains,
    langs: opts.langs,
    tokens: spell,
    merges: merges.map(([a, b]) => [spell[a]!, spell[b]!]),
  });
}

/** Max-heap of (count, pair key): higher count first, then smaller key. */
class PairHeap {
  private c: number[] = [];
  private k: number[] = [];
  get size(): number {
    return this.c.length;
  }
  private above(i: number, j: number): boolean {
    return this.c[i]! > this.c[j]! || (this.c[i] === this.c[j] && this.k[i]! < this.k[j]!);
  }
  private swap(i: number, j: number): void {
    [this.c[i], this.c[j]] = [this.c[j]!, this.c[i]!];
    [this.k[i], this.k[j]] = [this.k[j]!, this.k[i]!];
  }
  push(count: number, key: number): void {
    this.c.push(count);
    this.k.push(key);
    let i = this.c.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.above(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }
  pop(): [number, number] {
    const top: [number, number] = [this.c[0]!, this.k[0]!];
    const lc = this.c.pop()!;
    const lk = this.k.pop()!;
    if (this.c.length > 0) {
      this.c[0] = lc;
      this.k[0] = lk;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < this.c.length && this.above(l, best)) best = l;
        if (r < this.c.length && this.above(r, best)) best = r;
        if (best === i) break;
        this.swap(i, best);
        i = best;
      }
    }
    return top;
  }
}
