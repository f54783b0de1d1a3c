/**
 * PanGu-Σ (docs/design.md §1): a pre-LayerNorm decoder with M dense layers shared by
 * all domains at the bottom and N sparse (MoE) layers on top, learned
 * positions, PanGu-α's query layer, and tied embeddings with domain slots.
 *
 *   h = E_slot(d)[tokens] + P[positions]
 *   h = DenseBlock^M(h); h = SparseBlock^N(h); h = LayerNorm(h)
 *   h = QueryLayer(h, queries = Q[positions])     (unless config.queryLayer is false)
 *   logits = h · E_slot(d)ᵀ
 *
 * The sparse block's FFN is a MoeLayer whose router (RRE, MoGE or top-k)
 * comes from the config.
 *
 * Block options (docs/design.md §1.7) change the pieces, not the plan: the
 * norms may be RMSNorms; positions may be rotary (no P table: q and k turn
 * by each row's position inside attention, which is why every forward path
 * passes the rows' positions down); attention may share G < H key/value
 * heads (the caches then hold G heads), have other biases and per-head q/k
 * norms; FFNs and experts may be SwiGLU, with or without biases; the output
 * may be a matrix of its own (outputEmbedding) instead of E_slot(d).
 */
import * as ops from "../ops/index.js";
import { storedEmbedding, storedGroupedMatmul, storedLinear } from "../ops/stored.js";
import type { StoredMatrix } from "../backend/quant.js";
import { Attention, newHalfKVCache, newKVCache, type AttentionCache, type AttentionOptions, type KVFormat, type LayerCache } from "../nn/attention.js";
import { FeedForward, makeNorm, type FfnOptions, type InitOptions, type Norm } from "../nn/layers.js";
import { Module } from "../nn/module.js";
import { recompute } from "../nn/recompute.js";
import { isGradEnabled } from "../autograd/tape.js";
import type { Communicator } from "../comm/comm.js";
import { MoeLayer, type ExternalExperts, type MoeContext } from "../moe/layer.js";
import type { ExpertShard } from "../moe/expert-parallel.js";
import type { Routing } from "../moe/routing.js";
import { Tensor } from "../tensor/tensor.js";
import type { DType } from "../tensor/dtype.js";
import { Rng } from "../util/rng.js";
import { SigmaError } from "../util/errors.js";
import { headDim, kvHeads, sharedWidth, type ModelConfig } from "./config.js";
import { decodeStep } from "./decode-step.js";

/** The attention options of a config's blocks (docs/design.md §1.7). */
function attentionOptions(c: ModelConfig): AttentionOptions {
  return {
    kvHeads: kvHeads(c),
    headDim: headDim(c),
    bias: c.attentionBias,
    qkNorm: c.qkNorm ? { eps: c.layerNormEps } : null,
    rope: c.position === "rope" ? { theta: c.ropeTheta } : null,
  };
}

/** The FFN options of a config's dense FFNs, shared experts and experts. */
function ffnOptions(c: ModelConfig): FfnOptions {
  return { activation: c.activation, kind: c.ffn, bias: c.ffnBias };
}

/** A batch of B sequences of T tokens, each sequence with its domain index. */
export interface ModelInput {
  /** [B·T] token ids. */
  tokens: Int32Array;
  /** [B] domain index (into config.domains) of each sequence. */
  domains: Int32Array;
  B: number;
  T: number;
  /**
   * Seed of this forward's dropout masks (config.dropout > 0, training mode,
   * no cache). The trainer passes one per micro-batch so that a resumed run
   * draws the same masks; without it the model counts its own forwards.
   */
  dropoutSeed?: number;
  /**
   * Data parallel (docs/distributed.md): these B sequences are rows
   * first … first + B − 1 of a batch of `sequences` rows split between the
   * ranks of `comm`. The losses returned are then this rank's share of the
   * whole batch's losses (over the ranks they sum to them), and dropout
   * draws this slice of the masks the whole batch would draw.
   */
  slice?: { comm: Communicator; sequences: number; first: number };
  /**
   * Only each sequence's last position's logits ([B, V] instead of [B·T, V]):
   * a prompt's prefill, which samples from its last position only, skips the
   * output product of the others (V·C multiply-adds a position).
   */
  lastOnly?: boolean;
  /**
   * Room for the logits (at least their rows × V floats) that the decode
   * step writes them into, the returned logits then a view of it: a caller
   * that reads them before its next forward (generation, speculative
   * decoding) reuses one buffer instead of allocating V floats a row every
   * step. The general path ignores it (read the returned logits, not this).
   */
  logitsInto?: Float32Array;
}

/** Dropout of one forward: rate and seed; each site mixes in its layer and place. */
interface DropoutSpec {
  p: number;
  seed: number;
  /** Data parallel: this rank's rows start `skipRows` token rows into the batch, of `rows` here. */
  skipRows: number;
  rows: number;
}

/** The residual branch's output after dropout at (layer, site), or as is when dropout is off. */
function drop(t: Tensor, d: DropoutSpec | null, layer: number, site: number): Tensor {
  if (!d) return t;
  const seed = (Math.imul(d.seed, 0x9e3779b1) ^ Math.imul(layer + 1, 0x85ebca6b) ^ Math.imul(site + 1, 0xc2b2ae35)) >>> 0;
  return ops.dropout(t, d.p, seed, d.skipRows * (t.size / d.rows));
}

export interface ModelOutput {
  /** [B·T, V] ([B, V] with lastOnly). */
  logits: Tensor;
  /** One routing per sparse layer, bottom to top. */
  routings: Routing[];
  /** Sum of the routers' balance and z-losses (already weighted), or null. */
  auxLoss: Tensor | null;
}

/** Per-layer KV caches for incremental decoding (f32, or f16: see newCache). */
export interface ModelCache {
  layers: LayerCache[];
  query: LayerCache;
  /** Positions already processed. */
  length: number;
}

class Block extends Module {
  readonly ln1: Norm;
  readonly attn: Attention;
  readonly ln2: Norm;
  readonly ffn: FeedForward | null;
  readonly moe: MoeLayer | null;
  readonly layer: number;
  constructor(c: ModelConfig, layer: number, sparse: boolean, domainGroup: Int32Array, init: InitOptions, outStd: number, external?: ExternalExperts, shard?: ExpertShard) {
    super();
    this.layer = layer;
    this.ln1 = this.child("ln1", makeNorm(c.norm, c.width, c.layerNormEps, init.dtype));
    this.attn = this.child("attn", new Attention(c.width, c.heads, init, outStd, attentionOptions(c)));
    this.ln2 = this.child("ln2", makeNorm(c.norm, c.width, c.layerNormEps, init.dtype));
    if (sparse) {
      const ex = c.experts!;
      const extra = { vocabSize: c.vocabSize, domainGroup, layer, outStd, activation: c.activation, ffn: ffnOptions(c), sharedWidth: sharedWidth(c), sharedGate: ex.sharedGate, external, ...(shard ? { shard } : {}) };
      this.moe = this.child("moe", new MoeLayer(c.width, ex.width ?? c.ffnWidth, ex.count, ex.router, extra, init));
      this.ffn = null;
    } else {
      this.ffn = this.child("ffn", new FeedForward(c.width, c.ffnWidth, init, outStd, ffnOptions(c)));
      this.moe = null;
    }
  }

  /**
   * x: [B, T, C]; positions [B·T]: each row's position (read by rotary
   * positions). Dropout (when on) applies to the attention and FFN outputs
   * before each residual add.
   */
  forward(x: Tensor, ctx: MoeContext, cache?: LayerCache | AttentionCache, dropout: DropoutSpec | null = null, positions?: Int32Array): { y: Tensor; routing: Routing | null } {
    const a = this.ln1.forward(x);
    const h = ops.add(x, drop(this.attn.forward(a, a, cache, positions), dropout, this.layer, 0));
    const n = this.ln2.forward(h);
    if (this.ffn) return { y: ops.add(h, drop(this.ffn.forward(n), dropout, this.layer, 1)), routing: null };
    const [B, T, C] = n.shape as [number, number, number];
    const { y, routing } = this.moe!.forward(ops.reshape(n, [B * T, C]), ctx);
    return { y: ops.add(h, drop(ops.reshape(y, [B, T, C]), dropout, this.layer, 1)), routing };
  }
}

/** A block whose activations are recomputed in backward; its routing (and aux losses) still reach the loss. */
function recomputedBlock(block: Block, x: Tensor, ctx: MoeContext, dropout: DropoutSpec | null, positions: Int32Array): { y: Tensor; routing: Routing | null } {
  let routing: Routing | null = null;
  const [y, aux, z] = recompute(
    (xi) => {
      // The replay draws the same dropout masks: they depend on the seed, layer and site only.
      const o = block.forward(xi, ctx, undefined, dropout, positions);
      routing ??= o.routing; // the first pass's routing is the one reported (the replay's is identical)
      return [o.y, o.routing?.auxLoss ?? null, o.routing?.zLoss ?? null];
    },
    x,
    block.parameters(),
  );
  const r = routing as Routing | null;
  return { y: y!, routing: r ? { ...r, auxLoss: aux ?? null, zLoss: z ?? null } : null };
}

/** PanGu-α's query layer: queries from the position table, keys and values from the hidden states. */
class QueryLayer extends Module {
  readonly ln1: Norm;
  readonly attn: Attention;
  readonly ln2: Norm;
  readonly ffn: FeedForward;
  constructor(c: ModelConfig, init: InitOptions, outStd: number) {
    super();
    this.ln1 = this.child("ln1", makeNorm(c.norm, c.width, c.layerNormEps, init.dtype));
    this.attn = this.child("attn", new Attention(c.width, c.heads, init, outStd, attentionOptions(c)));
    this.ln2 = this.child("ln2", makeNorm(c.norm, c.width, c.layerNormEps, init.dtype));
    this.ffn = this.child("ffn", new FeedForward(c.width, c.ffnWidth, init, outStd, ffnOptions(c)));
  }
  forward(x: Tensor, queries: Tensor, cache?: LayerCache | AttentionCache, dropout: DropoutSpec | null = null, layer = 0, positions?: Int32Array): Tensor {
    const h = ops.add(x, drop(this.attn.forward(queries, this.ln1.forward(x), cache, positions), dropout, layer, 0));
    return ops.add(h, drop(this.ffn.forward(this.ln2.forward(h)), dropout, layer, 1));
  }
}

export class PanguSigma extends Module {
  /** [slots·V, C]: slot s's embedding occupies rows s·V … s·V + V − 1. */
  readonly tokenEmbedding: Tensor;
  /** Learned positions [seqLen, C]; null with rotary positions (config.position "rope"). */
  readonly positionEmbedding: Tensor | null;
  /** The output projection [slots·V, C] when config.tiedEmbeddings is false; null when it is the token embedding. */
  readonly outputEmbedding: Tensor | null;
  /** Null, like queryLayer, when config.queryLayer is false. */
  readonly queryEmbedding: Tensor | null;
  readonly blocks: Block[] = [];
  readonly finalNorm: Norm;
  readonly queryLayer: QueryLayer | null;
  /** Slot and expert group of each domain index. */
  readonly domainSlot: Int32Array;
  readonly domainGroup: Int32Array;
  /** Forwards run in training mode with dropout on: the default dropout seed. */
  private forwards = 0;
  /** Recompute each block's activations during backward instead of keeping them (training only). */
  recompute = false;
  /**
   * Inference only: the output projection's table (tokenEmbedding when tied,
   * else outputEmbedding) in a stored format (src/models/quantize.ts), read
   * by the output projection — and, tied, by the token lookups too.
   */
  storedOutput: StoredMatrix | null = null;
  /** How newCache stores keys and values unless told: "f32", or "f16" (half the cache's bytes; openModel's `kvCache`). */
  kvFormat: KVFormat = "f32";

  /**
   * `opts.externalExperts`: the sparse layers' experts live in an expert store
   * (ECSS) — they are not parameters of this model; see MoeLayer.
   * `opts.expertShard`: expert parallel — each sparse layer holds only this
   * rank's share of its experts (src/moe/expert-parallel.ts).
   */
  constructor(readonly config: ModelConfig, dtype: DType = "float32", opts: { externalExperts?: ExternalExperts; expertShard?: ExpertShard } = {}) {
    super();
    const c = config;
    const rng = new Rng(c.seed);
    const init: InitOptions = { rng, dtype, std: c.initStd };
    // GPT-2's scaled init of the projections that write into the residual stream [ours].
    const outStd = c.initStd / Math.sqrt(2 * (c.denseLayers + c.sparseLayers + 1));
    this.domainSlot = Int32Array.from(c.domains, (d) => d.slot);
    this.domainGroup = Int32Array.from(c.domains, (d) => d.group ?? 0);
    this.tokenEmbedding = this.param("tokenEmbedding", Tensor.randn([c.embeddingSlots * c.vocabSize, c.width], rng, c.initStd, dtype), { decay: false });
    this.positionEmbedding = c.position === "learned" ? this.param("positionEmbedding", Tensor.randn([c.seqLen, c.width], rng, c.initStd, dtype), { decay: false }) : null;
    for (let l = 0; l < c.denseLayers + c.sparseLayers; l++) {
      this.blocks.push(this.child(`blocks.${l}`, new Block(c, l, l >= c.denseLayers, this.domainGroup, init, outStd, opts.externalExperts, opts.expertShard)));
    }
    this.finalNorm = this.child("finalNorm", makeNorm(c.norm, c.width, c.layerNormEps, dtype));
    if (c.queryLayer) {
      this.queryEmbedding = this.param("queryEmbedding", Tensor.randn([c.seqLen, c.width], rng, c.initStd, dtype), { decay: false });
      this.queryLayer = this.child("queryLayer", new QueryLayer(c, init, outStd));
    } else {
      this.queryEmbedding = null;
      this.queryLayer = null;
    }
    // Drawn last, so that every other parameter starts as it does in the tied model [ours].
    this.outputEmbedding = c.tiedEmbeddings ? null : this.param("outputEmbedding", Tensor.randn([c.embeddingSlots * c.vocabSize, c.width], rng, c.initStd, dtype), { decay: false });
  }

  /** The output projection's table [slots·V, C]: the token embedding, or the untied output matrix. */
  get outputTable(): Tensor {
    return this.outputEmbedding ?? this.tokenEmbedding;
  }

  /**
   * The input of the first block: token rows (embedIds = slot·V + token) plus,
   * with learned positions, the position rows (posIds); [...shape, C].
   * @internal Also used by the server's batched step (src/serve/batch.ts).
   */
  embedInput(embedIds: Int32Array, posIds: Int32Array, shape: readonly number[]): Tensor {
    const tied = this.storedOutput && !this.outputEmbedding;
    const tokens = tied ? storedEmbedding(this.storedOutput!, embedIds, shape) : ops.embedding(this.tokenEmbedding, embedIds, shape);
    return this.positionEmbedding ? ops.add(tokens, ops.embedding(this.positionEmbedding, posIds, shape)) : tokens;
  }

  /**
   * KV caches for B sequences of up to `capacity` positions; each holds the G
   * key/value heads of its layer (G·D numbers per position), in `format`
   * (default: the model's kvFormat, set at open with `kvCache`; f16 for float32 models only).
   */
  newCache(B: number, capacity = this.config.seqLen, format: KVFormat = this.kvFormat): ModelCache {
    const W = kvHeads(this.config) * headDim(this.config);
    const dtype = this.tokenEmbedding.dtype;
    if (format === "f16") {
      if (dtype !== "float32") throw new RangeError(`an f16 KV cache serves float32 models only (this one is ${dtype})`);
      return { layers: this.blocks.map(() => newHalfKVCache(B, capacity, W)), query: newHalfKVCache(B, capacity, W), length: 0 };
    }
    return { layers: this.blocks.map(() => newKVCache(B, capacity, W, dtype)), query: newKVCache(B, capacity, W, dtype), length: 0 };
  }

  /**
   * Training forward over all positions, or — with a cache — an incremental
   * forward over T new positions appended after cache.length (inference only).
   */
  forward(input: ModelInput, cache?: ModelCache): ModelOutput {
    // Decoding a few positions with stored weights: the buffer-reusing step (src/models/decode-step.ts), when it covers this model.
    const fast = cache && !isGradEnabled() ? decodeStep(this, input, cache) : null;
    if (fast) return fast;
    const c = this.config;
    const { tokens, domains, B, T } = input;
    const V = c.vocabSize;
    const start = cache?.length ?? 0;
    if (tokens.length !== B * T) throw new RangeError(`forward: ${tokens.length} tokens for B = ${B}, T = ${T}`);
    if (domains.length !== B) throw new RangeError(`forward: ${domains.length} domains for B = ${B} sequences`);
    if (start + T > c.seqLen) throw new SigmaError(`forward: positions up to ${start + T} exceed the model's seqLen ${c.seqLen}`);

    const R = B * T;
    const embedIds = new Int32Array(R);
    const slotOf = new Int32Array(R);
    const domainOf = new Int32Array(R);
    const posIds = new Int32Array(R);
    for (let b = 0; b < B; b++) {
      const d = domains[b]!;
      const slot = this.domainSlot[d];
      if (slot === undefined) throw new SigmaError(`forward: domain index ${d} of sequence ${b} is not one of the ${c.domains.length} configured domains`);
      for (let t = 0; t < T; t++) {
        const r = b * T + t;
        const tok = tokens[r]!;
        if (tok < 0 || tok >= V) throw new RangeError(`forward: token id ${tok} at position ${r} is outside the vocabulary [0, ${V})`);
        embedIds[r] = slot * V + tok;
        slotOf[r] = slot;
        domainOf[r] = d;
        posIds[r] = start + t;
      }
    }
    const slice = input.slice && !cache ? { comm: input.slice.comm, rows: input.slice.sequences * T, offset: input.slice.first * T } : undefined;
    const ctx: MoeContext = { tokenIds: tokens, domainIds: domainOf, vocabSize: V, domainGroup: this.domainGroup, ...(slice ? { slice } : {}) };
    // Dropout in training mode only (evaluation, extraction and generation call eval(); decoding has a cache).
    const dropout: DropoutSpec | null = this.training && c.dropout > 0 && !cache ? { p: c.dropout, seed: input.dropoutSeed ?? this.forwards++, skipRows: slice?.offset ?? 0, rows: R } : null;

    let h = this.embedInput(embedIds, posIds, [B, T]);
    const routings: Routing[] = [];
    let aux: Tensor | null = null;
    this.blocks.forEach((block, l) => {
      const out = this.recompute && !cache && isGradEnabled() ? recomputedBlock(block, h, ctx, dropout, posIds) : block.forward(h, ctx, cache?.layers[l], dropout, posIds);
      h = out.y;
      if (out.routing) {
        routings.push(out.routing);
        for (const extra of [out.routing.auxLoss, out.routing.zLoss]) if (extra) aux = aux ? ops.add(aux, extra) : extra;
      }
    });
    h = this.finalNorm.forward(h);
    if (this.queryLayer) h = this.queryLayer.forward(h, ops.embedding(this.queryEmbedding!, posIds, [B, T]), cache?.query, dropout, this.blocks.length, posIds);
    if (cache) cache.length += T;
    const rows = ops.reshape(h, [R, c.width]);
    if (!input.lastOnly || T === 1) return { logits: this.decode(rows, slotOf), routings, auxLoss: aux };
    const last = Int32Array.from({ length: B }, (_, b) => b * T + T - 1);
    return { logits: this.decode(ops.gatherRows(rows, last), Int32Array.from(last, (r) => slotOf[r]!)), routings, auxLoss: aux };
  }

  /**
   * Output: logits[r] = h[r] · E_slot(r)ᵀ (E the token embedding when tied,
   * else the output matrix), grouping rows by slot when there are several.
   * @internal Also used by the server's batched step (src/serve/batch.ts) on the rows it samples from.
   */
  decode(h: Tensor, slotOf: Int32Array): Tensor {
    const c = this.config;
    if (c.embeddingSlots === 1) return this.storedOutput ? storedLinear(h, this.storedOutput, null) : ops.linear(h, this.outputTable, null, this.precision);
    const { order, offsets } = ops.permuteByExpert(slotOf, c.embeddingSlots);
    const inverse = new Int32Array(order.length);
    order.forEach((r, p) => (inverse[r] = p));
    const tables = ops.reshape(this.outputTable, [c.embeddingSlots, c.vocabSize, c.width]);
    const rows = ops.gatherRows(h, order);
    const sorted = this.storedOutput ? storedGroupedMatmul(rows, this.storedOutput, offsets, c.embeddingSlots, c.vocabSize, c.width) : ops.groupedMatmul(rows, tables, offsets, true, this.precision);
    return ops.gatherRows(sorted, inverse);
  }

  /** Cross-entropy of next-token prediction plus the routers' auxiliary losses. */
  loss(input: ModelInput, targets: Int32Array, ignoreIndex = -1): { loss: Tensor; lm: Tensor; out: ModelOutput } {
    if (input.lastOnly) throw new RangeError("loss: lastOnly computes each sequence's last logits only, and the loss needs every position's (leave lastOnly out)");
    const out = this.forward(input);
    let lm = ops.crossEntropy(out.logits, targets, ignoreIndex);
    if (input.slice) {
      // The mean over this rank's targets, weighted by its share of the whole batch's targets.
      let mine = 0;
      for (let i = 0; i < targets.length; i++) if (targets[i] !== ignoreIndex) mine++;
      const counts = Float64Array.of(mine);
      input.slice.comm.allreduce(counts);
      lm = ops.scale(lm, counts[0]! > 0 ? mine / counts[0]! : 0);
    }
    return { loss: out.auxLoss ? ops.add(lm, out.auxLoss) : lm, lm, out };
  }
}
