/**
 * One decoding step over many sequences at once (continuous batching).
 *
 * Each sequence brings its next tokens: one for a sequence that is decoding,
 * a chunk of its prompt for one that is being prefilled. Their rows are laid
 * end to end as one [1, R, C] batch and run through the model's own blocks,
 * so every weight is read once per step for all R rows (one GEMM per weight;
 * a sparse layer groups all R rows by expert, as in training). Only attention
 * is per sequence: the pool's AttentionCache (src/serve/kv-pool.ts) stores
 * each sequence's new keys and values in its blocks and attends over its own
 * cached positions. The tied output projection, the widest product, runs only
 * on the rows whose next token is wanted (the last row of each sequence).
 *
 * Row by row this is the computation of PanguSigma.forward with a KV cache:
 * a sequence's greedy text is the same alone or beside others.
 */
import { noGrad } from "../autograd/tape.js";
import { decodeRows } from "../models/decode-step.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import type { MoeContext } from "../moe/layer.js";
import * as ops from "../ops/index.js";
import type { FloatArray } from "../tensor/dtype.js";
import type { Tensor } from "../tensor/tensor.js";
import type { KVPool, KVSeq, StepRows } from "./kv-pool.js";

/** One sequence's part of a step. */
export interface BatchItem {
  seq: KVSeq;
  /** The new tokens, fed at positions seq.length…. */
  tokens: ArrayLike<number>;
  /** Domain index (into model.config.domains). */
  domain: number;
  /** Whether the logits after the last token are wanted. */
  logits: boolean;
  /** The logits after every one of the item's tokens instead (speculative verification): [tokens, V]. */
  allLogits?: boolean;
}

/** A KV pool sized for `model`: one attention layer per block, plus the query layer's. */
export function attentionLayers(model: PanguSigma): number {
  return model.blocks.length + (model.queryLayer ? 1 : 0);
}

/**
 * Runs one step and returns, for each item, the logits [V] after its last
 * token (null where not wanted; [n, V] after each of its n tokens with allLogits). Each sequence's cache advances by its tokens.
 * `onRouting`, when given, receives each sparse layer's kept assignments per
 * expert over the step's rows (the router's own counts, no extra work).
 * The model must be in eval mode.
 */
export function forwardBatch(model: PanguSigma, pool: KVPool, items: readonly BatchItem[], onRouting?: (layer: number, counts: Int32Array) => void): (FloatArray | null)[] {
  const c = model.config;
  const V = c.vocabSize;
  const C = c.width;
  const R = items.reduce((n, it) => n + it.tokens.length, 0);
  const tokens = new Int32Array(R);
  const embedIds = new Int32Array(R);
  const posIds = new Int32Array(R);
  const domainOf = new Int32Array(R);
  const rows: StepRows[] = [];
  const wanted: number[] = [];
  let r = 0;
  for (const it of items) {
    const slot = model.domainSlot[it.domain];
    if (slot === undefined) throw new RangeError(`forwardBatch: domain index ${it.domain} is not one of the ${c.domains.length} configured domains`);
    const n = it.tokens.length;
    if (n === 0) throw new RangeError(`forwardBatch: sequence ${it.seq.id} brings no tokens`);
    if (it.seq.length + n > c.seqLen) throw new RangeError(`forwardBatch: sequence ${it.seq.id} would reach position ${it.seq.length + n}, past the model's seqLen ${c.seqLen}`);
    pool.grow(it.seq, it.seq.length + n);
    rows.push({ seq: it.seq, start: r, rows: n });
    for (let t = 0; t < n; t++, r++) {
      const tok = it.tokens[t]!;
      if (!(Number.isInteger(tok) && tok >= 0 && tok < V)) throw new RangeError(`forwardBatch: token id ${tok} is outside the vocabulary [0, ${V})`);
      tokens[r] = tok;
      embedIds[r] = slot * V + tok;
      posIds[r] = it.seq.length + t;
      domainOf[r] = it.domain;
    }
    if (it.allLogits) for (let t = n; t >= 1; t--) wanted.push(r - t);
    else if (it.logits) wanted.push(r - 1);
  }
  const ctx: MoeContext = { tokenIds: tokens, domainIds: domainOf, vocabSize: V, domainGroup: model.domainGroup };

  const fast = fastStep(model, pool, rows, { tokens, embedIds, domainOf, posIds }, wanted, onRouting);
  const logits = fast !== undefined ? fast : noGrad(() => {
    // Token rows as forward takes them (a stored tied table: its rows dequantized), learned positions added;
    // rotary ones turn q and k inside attention (from posIds).
    let h = model.embedInput(embedIds, posIds, [1, R]);
    model.blocks.forEach((block, l) => {
      const o = block.forward(h, ctx, pool.attention(l, rows), null, posIds);
      if (o.routing && onRouting) onRouting(l, o.routing.counts);
      h = o.y;
    });
    h = model.finalNorm.forward(h);
    if (model.queryLayer) h = model.queryLayer.forward(h, ops.embedding(model.queryEmbedding!, posIds, [1, R]), pool.attention(model.blocks.length, rows), null, model.blocks.length, posIds);
    // The output projection on the wanted rows only.
    if (wanted.length === 0) return null;
    const pick = Int32Array.from(wanted);
    const slots = pick.map((row) => model.domainSlot[domainOf[row]!]!);
    return model.decode(ops.gatherRows(ops.reshape(h, [R, C]), pick), slots);
  });
  pool.commit(rows);

  let w = 0;
  return items.map((it) => {
    const n = it.allLogits ? it.tokens.length : it.logits ? 1 : 0;
    if (n === 0 || !logits) return null;
    w += n;
    return logits.data.subarray((w - n) * V, w * V);
  });
}

/**
 * A step of at most DECODE_ROWS rows with stored weights, through the decode
 * step's reused buffers (src/models/decode-step.ts: no Tensor per op, one
 * decode call per matrix with its bias, activation and residual add, the
 * same arithmetic as the blocks' forward), attention through the pool.
 * Undefined when the decode step does not cover the model or the step (a
 * prompt chunk past 16 rows, f32 products, …): the blocks' general forward
 * runs. Null when it ran and no row's logits are wanted.
 */
function fastStep(model: PanguSigma, pool: KVPool, rows: StepRows[], r: { tokens: Int32Array; embedIds: Int32Array; domainOf: Int32Array; posIds: Int32Array }, wanted: number[], onRouting?: (layer: number, counts: Int32Array) => void): Tensor | null | undefined {
  const slotOf = r.domainOf.map((d) => model.domainSlot[d]!);
  const layers = model.blocks.map((_, l) => pool.attention(l, rows));
  const query = model.queryLayer ? pool.attention(model.blocks.length, rows) : null;
  const out = noGrad(() => decodeRows(model, { ...r, slotOf }, layers, query, Int32Array.from(wanted)));
  if (!out) return undefined;
  if (onRouting) {
    let i = 0;
    model.blocks.forEach((b, l) => {
      if (b.moe) onRouting(l, out.routings[i++]!.counts);
    });
  }
  return wanted.length === 0 ? null : out.logits;
}
