/**
 * How a larger vocabulary inherits a smaller one's embedding rows
 * (inheritance learning, docs/design.md §9.3: PanGu-α's vocabulary was extended and
 * old tokens kept their rows). The rule [ours]:
 *
 *  - a token present in both vocabularies keeps its row, matched by its
 *    string — special tokens by their content among the specials, other
 *    tokens by their byte-level spelling — whatever its id in either;
 *  - a new ordinary token starts as the mean of the old rows of its byte
 *    pieces: its bytes encoded by the old tokenizer's merges (byte-level
 *    BPE covers every byte string, so there is always at least one piece);
 *  - a new special token has no meaningful bytes: it starts as the mean of
 *    all old rows.
 */
import type { Tokenizer } from "../tokenizer/codec.js";

export interface VocabMap {
  oldSize: number;
  newSize: number;
  /** [newSize]: the old id a new id keeps the row of, or −1 for a new token. */
  oldId: Int32Array;
  /** For each new token (oldId −1): the old ids whose rows are averaged; empty = all old rows. */
  pieces: Map<number, number[]>;
}

/** The same vocabulary on both sides: every row kept. */
export function identityVocab(V: number): VocabMap {
  return { oldSize: V, newSize: V, oldId: Int32Array.from({ length: V }, (_, i) => i), pieces: new Map() };
}

export function vocabMapping(oldTok: Tokenizer, newTok: Tokenizer): VocabMap {
  const key = (tok: Tokenizer, id: number): string => (id < tok.specials.length ? "special:" : "token:") + tok.vocab[id];
  const oldIds = new Map<string, number>();
  for (let id = 0; id < oldTok.vocabSize; id++) oldIds.set(key(oldTok, id), id);
  const oldId = new Int32Array(newTok.vocabSize).fill(-1);
  const pieces = new Map<number, number[]>();
  for (let id = 0; id < newTok.vocabSize; id++) {
    const o = oldIds.get(key(newTok, id));
    if (o !== undefined) oldId[id] = o;
    else pieces.set(id, id < newTok.specials.length ? [] : oldTok.bpe(newTok.decodeBytes([id])));
  }
  return { oldSize: oldTok.vocabSize, newSize: newTok.vocabSize, oldId, pieces };
}

/** New ids of the old ids that kept their rows ([oldSize], −1 when an old token was dropped). */
export function newIdsOfOld(map: VocabMap): Int32Array {
  const out = new Int32Array(map.oldSize).fill(-1);
  map.oldId.forEach((o, n) => {
    if (o >= 0) out[o] = n;
  });
  return out;
}

/**
 * Fills `dst` ([newSize, C]) from `src` ([oldSize, C]) by the map's rule.
 * Works on one embedding slot at a time.
 */
export function extendRows(map: VocabMap, src: ArrayLike<number>, dst: Float32Array | Float64Array, C: number): void {
  const sum = new Float64Array(C);
  const meanOf = (ids: number[], out: Float64Array): Float64Array => {
    sum.fill(0);
    for (const i of ids) for (let c = 0; c < C; c++) sum[c]! += src[i * C + c]!;
    for (let c = 0; c < C; c++) out[c] = sum[c]! / ids.length;
    return out;
  };
  let allRows: Float64Array | null = null; // the mean of every old row, computed once for all new specials
  const row = new Float64Array(C);
  for (let n = 0; n < map.newSize; n++) {
    const o = map.oldId[n]!;
    if (o >= 0) {
      for (let c = 0; c < C; c++) dst[n * C + c] = src[o * C + c]!;
      continue;
    }
    const ids = map.pieces.get(n) ?? [];
    const mean = ids.length ? meanOf(ids, row) : (allRows ??= meanOf(Array.from({ length: map.oldSize }, (_, i) => i), new Float64Array(C)));
    dst.set(mean, n * C);
  }
}
