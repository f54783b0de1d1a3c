/**
 * The decode step (docs/decode.md#the-decode-step): PanguSigma.forward with a
 * KV cache over a few new positions, for a model whose matrices are in a
 * stored format, without the general forward's per-op machinery.
 *
 * Generating a token reads every active weight once; on a small model the
 * weight products take a millisecond or two, and the general forward spends
 * a large share beside them: each op allocates a zeroed Tensor, checks
 * shapes, consults the autograd tape, and the MoE layer permutes and gathers
 * through more of them. Here the same computation runs on buffers allocated
 * once per model and row count and reused by every step: kernel calls
 * (layerNorm, attention over the cache, combine) and the decode products
 * (src/backend/decode.ts) straight into those buffers, the experts of an MoE
 * layer in one call per matrix. Each product's epilogue adds its bias,
 * applies the FFN's activation and adds its output into the residual stream
 * where forward has separate ops for these. Only the logits are a new
 * array each step (callers keep them). The routers run as they are (their
 * gates are small and they return the Routing the caller reports).
 *
 * It computes what forward computes, op for op on the same kernels, except
 * that residual adds happen in place: forward's logits and these agree to
 * f32 rounding (test/decode-step.test.ts holds them within 1e-5 on the
 * f32-dequantizing kernels; q8/q4's integer kernels round each input group
 * to int8, and an input one last bit apart can round to the next step).
 *
 * The server's batched step (src/serve/batch.ts) runs through it too
 * (decodeRows): its rows bring their own positions and domains, attention
 * goes through the pool's AttentionCache, and only the wanted rows' logits
 * are computed.
 *
 * It takes only what it knows: every matrix stored (quantizeModel or a
 * stored file), no gradient, a KVCache per layer (forward) or the pool's
 * caches (decodeRows), at most DECODE_ROWS rows, experts resident (no ECSS bank, no expert
 * shard), and a config with no field this file does not know (a block option
 * added later falls back to forward until this step learns it). The block
 * options it computes (docs/design.md §1.7): PanGu's block (LayerNorm,
 * learned positions, the FastGeLU or exact GeLU FFN, biases) and the Llama /
 * Qwen family's (RMSNorm, rotary positions, grouped key/value heads, a head
 * size of its own, q/k norms, SwiGLU FFNs and experts, any biases, an untied
 * output matrix, a gated shared expert). decodeStep returns null for anything
 * else and forward runs as before.
 */
import { isGradEnabled } from "../autograd/tape.js";
import { getBackend } from "../backend/index.js";
import { decodeKernels } from "../backend/decode.js";
import { storedRows, type StoredMatrix } from "../backend/quant.js";
import type { Backend } from "../backend/backend.js";
import { Attention, attendHalf, type AttentionCache, type KVCache, type LayerCache } from "../nn/attention.js";
import { FeedForward, LayerNorm, Linear, RMSNorm, type Norm } from "../nn/layers.js";
import { DECODE_ROWS } from "../ops/stored.js";
import * as ops from "../ops/index.js";
import { ropeInPlace } from "../ops/block.js";
import type { Routing } from "../moe/routing.js";
import { MoeLayer } from "../moe/layer.js";
import { Tensor } from "../tensor/tensor.js";
import { headDim, kvHeads, type ModelConfig } from "./config.js";
import { logitsTensor, storedKey, type DecodeModel } from "./decode-model.js";
import { denseStep } from "./dense-step.js";
import { fused } from "./fuse.js";

/** PanguSigma's ModelInput, ModelCache and ModelOutput, as far as this step uses them. */
interface DecodeInput {
  tokens: Int32Array;
  domains: Int32Array;
  B: number;
  T: number;
  slice?: unknown;
  lastOnly?: boolean;
  logitsInto?: Float32Array;
}
interface DecodeCache {
  layers: LayerCache[];
  query: LayerCache;
  length: number;
}
interface DecodeOutput {
  logits: Tensor;
  routings: Routing[];
  auxLoss: Tensor | null;
}

/**
 * Config fields this step implements, each with the values it handles
 * (undefined: any). A field outside this list — a block option added
 * later — makes decodeStep decline unless its value is absent.
 */
const KNOWN_FIELDS: Record<string, ((v: unknown) => boolean) | undefined> = {
  vocabSize: undefined,
  width: undefined,
  heads: undefined,
  denseLayers: undefined,
  sparseLayers: undefined,
  seqLen: undefined,
  ffnWidth: undefined,
  domains: undefined,
  embeddingSlots: undefined,
  experts: undefined,
  activation: (v) => v === "fastgelu" || v === "gelu",
  // The block options (docs/design.md §1.7), each value of which this step computes.
  norm: (v) => v === "layernorm" || v === "rmsnorm",
  position: (v) => v === "learned" || v === "rope",
  ropeTheta: undefined,
  kvHeads: undefined,
  headDim: undefined,
  ffn: (v) => v === "gelu" || v === "swiglu",
  ffnBias: undefined,
  attentionBias: (v) => v === "all" || v === "qkv" || v === "none",
  qkNorm: undefined,
  tiedEmbeddings: undefined,
  queryLayer: undefined,
  dropout: undefined,
  layerNormEps: undefined,
  initStd: undefined,
  seed: undefined,
};

/** Buffers of one model at one row count R, reused by every step. */
interface Work {
  R: number;
  h: Float32Array; // [R, C] the residual stream
  x: Float32Array; // [R, C] a normed copy
  q: Float32Array; // [R, H·D]
  k: Float32Array; // [R, G·D]
  v: Float32Array; // [R, G·D]
  att: Float32Array; // [R, H·D]
  tmp: Float32Array; // [R, C]
  mo: Float32Array; // [R, C]: an MoE layer's output
  mean: Float32Array; // [R]
  rstd: Float32Array; // [R·H] (the q/k norms' rows are heads)
  lse: Float32Array; // [R·heads]
  f: Float32Array; // [R, max(ffnWidth, shared width)]; also the fused q|k|v product (grown when that is wider)
  g: Float32Array; // [R, max(ffnWidth, shared width)]: SwiGLU's gate projection
  u: Float32Array; // [R, max(ffnWidth, shared width)]: SwiGLU's up projection
  gate: Float32Array; // [R]: a gated shared expert's gates
  iota: Int32Array; // [R]: 0 … R − 1
  // MoE: assignments (R·k of them, grown to the most seen) sorted by expert.
  xs: Float32Array; // [R·k, C]
  hs: Float32Array; // [R·k, expert width]
  us: Float32Array; // [R·k, expert width]: SwiGLU experts' up projection
  ys: Float32Array; // [R·k, C]
  order: Int32Array; // [R·k]
  tokenOf: Int32Array;
  weightOf: Float32Array;
  offsets: Int32Array; // [E + 1]
  rows: Int32Array; // [0, R]
  embedIds: Int32Array;
  slotOf: Int32Array;
  domainOf: Int32Array;
  posIds: Int32Array;
}

const works = new WeakMap<DecodeModel, Map<number, Work>>();

let enabled = true;

let runs = 0;

/** How many forwards (decodeStep) and server steps (decodeRows) this step has run in this process. For tests and benchmarks. */
export const decodeStepRuns = (): number => runs;

/** Turns the decode step on or off (on by default; off, forward always runs its general path). Returns the previous setting. For tests and benchmarks. */
export function useDecodeStep(on: boolean): boolean {
  const was = enabled;
  enabled = on;
  return was;
}

function workFor(model: DecodeModel, R: number): Work {
  let byRows = works.get(model);
  if (!byRows) works.set(model, (byRows = new Map()));
  let w = byRows.get(R);
  if (w) return w;
  const c = model.config;
  const C = c.width;
  const F = Math.max(c.ffnWidth, ...model.blocks.map((b) => b.moe?.shared?.fc1.outFeatures ?? 0));
  const E = c.experts?.count ?? 1;
  const [H, G, D] = [c.heads, kvHeads(c), headDim(c)];
  const f32 = (n: number) => new Float32Array(n);
  w = {
    R, h: f32(R * C), x: f32(R * C), q: f32(R * H * D), k: f32(R * G * D), v: f32(R * G * D), att: f32(R * H * D), tmp: f32(R * C), mo: f32(R * C),
    mean: f32(R), rstd: f32(R * Math.max(H, G)), lse: f32(R * H), f: f32(R * F), g: f32(R * F), u: f32(R * F), gate: f32(R), iota: Int32Array.from({ length: R }, (_, r) => r),
    xs: f32(R * C), hs: f32(0), us: f32(0), ys: f32(0), order: new Int32Array(R), tokenOf: new Int32Array(0), weightOf: f32(0), offsets: new Int32Array(Math.max(E, c.embeddingSlots) + 1),
    rows: Int32Array.of(0, R), embedIds: new Int32Array(R), slotOf: new Int32Array(R), domainOf: new Int32Array(R), posIds: new Int32Array(R),
  };
  byRows.set(R, w);
  return w;
}

const supports = new WeakMap<object, boolean>();

/** supported(model), kept while the model's stored matrices stay (it walks every layer: a few microseconds a step otherwise). */
function supportedNow(model: DecodeModel): boolean {
  const key = storedKey(model);
  let ok = supports.get(key);
  if (ok === undefined) supports.set(key, (ok = supported(model)));
  return ok;
}

/** True when every layer of the model is one this step computes (see the file comment). */
function supported(model: DecodeModel): boolean {
  const c = model.config as unknown as Record<string, unknown>;
  for (const [key, value] of Object.entries(c)) {
    if (value === undefined) continue;
    if (!(key in KNOWN_FIELDS)) return false;
    const ok = KNOWN_FIELDS[key];
    if (ok && !ok(value)) return false;
  }
  if (!model.storedOutput) return false;
  // One format throughout (a conversion that failed part way leaves several: q|k|v could not be stacked).
  const format = model.storedOutput.format;
  const linear = (l: Linear) => l.constructor === Linear && l.stored !== null && l.stored.format === format;
  const attention = (a: Attention) =>
    a.constructor === Attention && linear(a.q) && linear(a.k) && linear(a.v) && linear(a.o) && (a.qNorm === null || norm(a.qNorm)) && (a.kNorm === null || norm(a.kNorm));
  const ffn = (f: FeedForward) =>
    f.constructor === FeedForward && linear(f.fc1) && linear(f.fc2) && (f.fc3 ? f.kind === "swiglu" && linear(f.fc3) : f.kind === "gelu" && (f.activation === "fastgelu" || f.activation === "gelu"));
  const norm = (n: Norm) => n.constructor === LayerNorm || n.constructor === RMSNorm;
  for (const b of model.blocks) {
    if (!norm(b.ln1) || !norm(b.ln2) || !attention(b.attn)) return false;
    if (b.ffn && !ffn(b.ffn)) return false;
    if (b.moe) {
      const m = b.moe;
      if (m.constructor !== MoeLayer || !m.stored || m.bank || m.shard || (m.shared && !ffn(m.shared))) return false;
      if ([m.stored.w1, m.stored.w2, m.stored.w3].some((w) => w && w.format !== format)) return false;
      if (m.ffnKind === "swiglu" ? !m.stored.w3 : m.activation !== "fastgelu" && m.activation !== "gelu") return false;
      // The shared expert's gate stays f32 (quantizeModel keeps it): a Linear of one output, no bias.
      if (m.sharedGate && (m.sharedGate.constructor !== Linear || m.sharedGate.stored !== null || m.sharedGate.bias !== null || m.sharedGate.outFeatures !== 1)) return false;
    }
  }
  const q = model.queryLayer;
  if (q && (!norm(q.ln1) || !norm(q.ln2) || !attention(q.attn) || !ffn(q.ffn))) return false;
  return true;
}

/** The activations the decode products apply in their epilogue (supported() admits only these). */
const activation = (kind: string): "fastgelu" | "gelu" => (kind === "fastgelu" ? "fastgelu" : "gelu");

/**
 * y [R, N] = act(x · Wᵀ + b) with W stored [N, K], and residual += y when
 * given: one decode call, its epilogue doing the bias, the activation and
 * the residual add (the same operations, in the same order, as addBias,
 * the activation and add after it).
 */
function linearInto(y: Float32Array, x: Float32Array, l: Linear, w: Work, act: "fastgelu" | "gelu" | null = null, residual: Float32Array | null = null): void {
  decodeKernels().decodeMatmul(y, x, l.stored!, w.rows, 1, l.outFeatures, l.inFeatures, { bias: l.bias ? (l.bias.data as Float32Array) : null, act, residual });
}

/**
 * out [R, C] = the FFN of x (w.f: its hidden buffer); residual += out when
 * given. SwiGLU: the gate and up projections are one product (as q|k|v),
 * then silu(gate)·up.
 */
function ffnInto(be: Backend, out: Float32Array, x: Float32Array, f: FeedForward, w: Work, residual: Float32Array | null = null): void {
  const n = w.R * f.fc1.outFeatures;
  if (f.fc3) {
    const [g, u] = [w.g.subarray(0, n), w.u.subarray(0, n)];
    fusedInto([g, u], x, [f.fc1, f.fc3], w);
    const hid = w.f.subarray(0, n);
    be.swiglu(hid, g, u, n);
    linearInto(out, hid, f.fc2, w, null, residual);
    return;
  }
  const hid = w.f.subarray(0, n);
  linearInto(hid, x, f.fc1, w, activation(f.activation));
  linearInto(out, hid, f.fc2, w, null, residual);
}

/** outs[i] [R, N_i] = x · W_iᵀ + b_i for the fused parts, in one decode call (w.f holds the side-by-side result). */
function fusedInto(outs: Float32Array[], x: Float32Array, parts: Linear[], w: Work): void {
  const f = fused(parts);
  const R = w.R;
  const N = f.matrix.rows;
  if (w.f.length < R * N) w.f = new Float32Array(R * N);
  const y = w.f.subarray(0, R * N);
  decodeKernels().decodeMatmul(y, x, f.matrix, w.rows, 1, N, f.matrix.K, { bias: f.bias });
  for (let r = 0; r < R; r++) {
    let at = r * N;
    for (const [i, p] of parts.entries()) {
      const n = p.outFeatures;
      outs[i]!.set(y.subarray(at, at + n), r * n);
      at += n;
    }
  }
}

/**
 * residual += the attention output (after o) of queries from xq and keys and
 * values from xkv, appended to `cache` at its length (B sequences of T rows);
 * `out` holds the output itself. q, k and v are one product when they read
 * the same input (k and v one when the queries come from elsewhere: the query layer).
 */
function attentionInto(be: Backend, out: Float32Array, residual: Float32Array, xq: Float32Array, xkv: Float32Array, a: Attention, cache: LayerCache | AttentionCache, B: number, T: number, w: Work): void {
  const [R, H, G, D] = [w.R, a.heads, a.kvHeads, a.headDim];
  const [q, k, v] = [w.q.subarray(0, R * H * D), w.k.subarray(0, R * G * D), w.v.subarray(0, R * G * D)];
  if (xq === xkv) {
    fusedInto([q, k, v], xkv, [a.q, a.k, a.v], w);
  } else {
    linearInto(q, xq, a.q, w);
    fusedInto([k, v], xkv, [a.k, a.v], w);
  }
  // Each head's q and k: the RMSNorm over its D numbers, then the rotation by the row's position (as Attention.position).
  const turn = (y: Float32Array, heads: number, norm: RMSNorm | null) => {
    if (norm) {
      const normed = w.att.subarray(0, R * heads * D);
      be.rmsNorm(normed, w.rstd, y, norm.gamma.data, R * heads, D, norm.eps);
      y.set(normed);
    }
    if (a.ropeTheta !== null) ropeInPlace(y, w.posIds, R, heads, D, a.ropeTheta);
  };
  turn(q, H, a.qNorm);
  turn(k, G, a.kNorm);
  if ("attend" in cache) {
    // The server's paged pool (src/serve/kv-pool.ts): it stores each sequence's keys and values and attends per sequence.
    const o = cache.attend(Tensor.from(q, [1, R, H * D]), Tensor.from(k, [1, R, G * D]), Tensor.from(v, [1, R, G * D]), H);
    w.att.set(o.data as Float32Array);
    linearInto(out, w.att.subarray(0, R * H * D), a.o, w, null, residual);
    return;
  }
  if ("half" in cache) {
    // An f16 cache: the new rows rounded in, attention over the halves (nn/attention.ts).
    attendHalf(cache, w.att, w.lse, q, k, v, B, T, H, D);
    linearInto(out, w.att.subarray(0, R * H * D), a.o, w, null, residual);
    return;
  }
  const W = G * D;
  const cap = cache.k.dim(1);
  if (cache.length + T > cap) throw new RangeError(`KV cache full: ${cache.length} + ${T} positions exceed its capacity ${cap}`);
  const kd = cache.k.data as Float32Array;
  const vd = cache.v.data as Float32Array;
  for (let b = 0; b < B; b++) {
    const src = b * T * W;
    const dst = (b * cap + cache.length) * W;
    kd.set(k.subarray(src, src + T * W), dst);
    vd.set(v.subarray(src, src + T * W), dst);
  }
  cache.length += T;
  be.attention(w.att, w.lse, q, kd, vd, B, T, cache.length, H, D, cap, 1 / Math.sqrt(D), G);
  linearInto(out, w.att.subarray(0, R * H * D), a.o, w, null, residual);
}

/** out [R, C] = the MoE layer's output for x (rows' tokens and domains given), and its routing. */
function moeInto(be: Backend, out: Float32Array, x: Float32Array, m: MoeLayer, tokens: Int32Array, w: Work): Routing {
  const R = w.R;
  const C = m.width;
  const Fe = m.expertWidth;
  const E = m.experts;
  const routing = m.router.route({ x: Tensor.from(x, [R, C]), tokenIds: tokens, domainIds: w.domainOf });
  const k = routing.k;
  const ids = routing.expertIds;
  if (w.tokenOf.length < R * k || w.hs.length < R * k * Fe) {
    const n = R * k;
    [w.xs, w.hs, w.us, w.ys] = [new Float32Array(n * C), new Float32Array(n * Fe), new Float32Array(n * Fe), new Float32Array(n * C)];
    [w.order, w.tokenOf, w.weightOf] = [new Int32Array(n), new Int32Array(n), new Float32Array(n)];
  }
  const weights = routing.weights.data;
  // The kept assignments sorted by expert, stably (as permuteByExpert does); dropped ones (id E) left out.
  const offsets = w.offsets;
  offsets.fill(0, 0, E + 1);
  for (let i = 0; i < R * k; i++) if (ids[i]! < E) offsets[ids[i]! + 1]++;
  for (let e = 0; e < E; e++) offsets[e + 1]! += offsets[e]!;
  const kept = offsets[E]!;
  const next = w.order; // reused as the fill pointers, then as the order
  const fill = offsets.slice(0, E);
  for (let i = 0; i < R * k; i++) {
    const e = ids[i]!;
    if (e >= E) continue;
    const p = fill[e]!++;
    next[p] = i;
  }
  for (let p = 0; p < kept; p++) {
    const a = next[p]!;
    const t = Math.floor(a / k);
    w.tokenOf[p] = t;
    w.weightOf[p] = weights[a]!;
    w.xs.set(x.subarray(t * C, (t + 1) * C), p * C);
  }
  const xs = w.xs.subarray(0, kept * C);
  const hs = w.hs.subarray(0, kept * Fe);
  const ys = w.ys.subarray(0, kept * C);
  const dk = decodeKernels();
  const off = offsets.subarray(0, E + 1);
  // Biases ([E, Fe] and [E, C], when the experts have them) added per expert by the epilogue.
  const bias = (b: Tensor | null) => (b ? (b.data as Float32Array) : null);
  const st = m.stored!;
  if (st.w3) {
    const us = w.us.subarray(0, kept * Fe);
    dk.decodeMatmul(hs, xs, st.w1, off, E, Fe, C, { bias: bias(m.b1) });
    dk.decodeMatmul(us, xs, st.w3, off, E, Fe, C, { bias: bias(m.b3) });
    be.swiglu(hs, hs, us, kept * Fe);
  } else {
    dk.decodeMatmul(hs, xs, st.w1, off, E, Fe, C, { bias: bias(m.b1), act: activation(m.activation) });
  }
  dk.decodeMatmul(ys, hs, st.w2, off, E, C, Fe, { bias: bias(m.b2) });
  out.fill(0, 0, R * C);
  if (kept > 0) be.combine(out, ys, w.tokenOf.subarray(0, kept), w.weightOf.subarray(0, kept), kept, C);
  if (!m.shared) return routing;
  if (!m.sharedGate) {
    ffnInto(be, w.tmp, x, m.shared, w, out);
    return routing;
  }
  // A gated shared expert: out += σ(x·w_gate) · shared(x), row by row (MoeLayer's combine onto the same rows).
  ffnInto(be, w.tmp, x, m.shared, w);
  const gate = w.gate.subarray(0, R);
  be.matmul(gate, x, m.sharedGate.weight.data, R, 1, C, false, true, false);
  for (let r = 0; r < R; r++) gate[r] = 1 / (1 + Math.exp(-gate[r]!)); // as ops.sigmoid
  be.combine(out, w.tmp, w.iota, gate, R, C);
  return routing;
}

/**
 * The forward of `input` through `cache` (see the file comment), or null
 * when this step does not cover the model or the call: forward then runs.
 */
export function decodeStep(model: DecodeModel, input: DecodeInput, cache: DecodeCache): DecodeOutput | null {
  const { tokens, domains, B, T } = input;
  const R = B * T;
  if (!enabled || isGradEnabled() || model.training || R < 1 || R > DECODE_ROWS || input.slice || tokens.length !== R || domains.length !== B) return null;
  const f32OrHalf = (l: LayerCache) => "half" in l || l.k.dtype === "float32";
  if (!cache.layers.every(f32OrHalf) || !f32OrHalf(cache.query)) return null;
  if (!supportedNow(model)) return null;
  const c = model.config;
  const V = c.vocabSize;
  const C = c.width;
  const start = cache.length;
  if (start + T > c.seqLen) return null; // forward says why
  const w = workFor(model, R);
  for (let b = 0; b < B; b++) {
    const slot = model.domainSlot[domains[b]!];
    if (slot === undefined) return null;
    for (let t = 0; t < T; t++) {
      const r = b * T + t;
      const tok = tokens[r]!;
      if (!(tok >= 0 && tok < V)) return null;
      w.embedIds[r] = slot * V + tok;
      w.slotOf[r] = slot;
      w.domainOf[r] = domains[b]!;
      w.posIds[r] = start + t;
    }
  }
  const last = input.lastOnly && T > 1 ? Int32Array.from({ length: B }, (_, b) => b * T + T - 1) : null;
  // A dense model's whole step in one native call (src/models/dense-step.ts), when it runs this one.
  const logits = denseStep(model, w, cache.layers, cache.query, B, T, last ?? w.iota, input.logitsInto);
  if (logits) {
    runs++;
    cache.length += T;
    return { logits, routings: [], auxLoss: null };
  }
  const out = runRows(model, w, tokens, cache.layers, cache.query, B, T, last, input.logitsInto);
  cache.length += T;
  return out;
}

/**
 * The rows already in `w` (embedIds, slotOf, domainOf, posIds; tokens for
 * the routers) through the blocks, attention through `layers` (a KVCache of
 * B sequences × T rows, or the server's pool), then the logits of every row,
 * or of the rows `pick` names (in that order).
 */
function runRows(model: DecodeModel, w: Work, tokens: Int32Array, layers: readonly (LayerCache | AttentionCache)[], query: LayerCache | AttentionCache | null, B: number, T: number, pick: Int32Array | null, into?: Float32Array): DecodeOutput {
  runs++;
  const R = w.R;
  const C = model.config.width;
  const be = getBackend();
  const dk = decodeKernels();
  const table = model.storedOutput!;
  // h = E_slot[token] (+ P[position] with learned positions). Tied, the token rows are the stored output table's.
  const pos = model.positionEmbedding ? (model.positionEmbedding.data as Float32Array) : null;
  const tokenRows = model.outputEmbedding ? (model.tokenEmbedding.data as Float32Array) : null;
  for (let r = 0; r < R; r++) {
    const row = w.h.subarray(r * C, (r + 1) * C);
    if (tokenRows) row.set(tokenRows.subarray(w.embedIds[r]! * C, (w.embedIds[r]! + 1) * C));
    else dk.dequantize(row, storedRows(table, w.embedIds[r]!, 1));
    if (pos) be.add(row, row, pos.subarray(w.posIds[r]! * C, (w.posIds[r]! + 1) * C), C);
  }
  const routings: Routing[] = [];
  let aux: Tensor | null = null;
  // supported() admitted LayerNorms and RMSNorms.
  const norm = (out: Float32Array, x: Float32Array, n: Norm) => {
    if (n instanceof LayerNorm) be.layerNorm(out, w.mean, w.rstd, x, n.gamma.data, n.beta.data, R, C, n.eps);
    else be.rmsNorm(out, w.rstd, x, n.gamma.data, R, C, n.eps);
  };
  model.blocks.forEach((block, l) => {
    norm(w.x, w.h, block.ln1);
    attentionInto(be, w.tmp, w.h, w.x, w.x, block.attn, layers[l]!, B, T, w);
    norm(w.x, w.h, block.ln2);
    if (block.ffn) {
      ffnInto(be, w.tmp, w.x, block.ffn, w, w.h);
      return;
    }
    const routing = moeInto(be, w.mo, w.x, block.moe!, tokens, w);
    be.add(w.h, w.h, w.mo, R * C);
    routings.push(routing);
    for (const extra of [routing.auxLoss, routing.zLoss]) if (extra) aux = aux ? ops.add(aux, extra) : extra;
  });
  norm(w.tmp, w.h, model.finalNorm);
  w.h.set(w.tmp);
  const q = model.queryLayer;
  if (q) {
    // Queries from the position table, keys and values from the normed hidden states.
    const qe = model.queryEmbedding!.data as Float32Array;
    const queries = w.xs.subarray(0, R * C);
    for (let r = 0; r < R; r++) queries.set(qe.subarray(w.posIds[r]! * C, (w.posIds[r]! + 1) * C), r * C);
    norm(w.x, w.h, q.ln1);
    attentionInto(be, w.tmp, w.h, queries, w.x, q.attn, query!, B, T, w);
    norm(w.x, w.h, q.ln2);
    ffnInto(be, w.tmp, w.x, q.ffn, w, w.h);
  }
  if (pick) {
    // The wanted rows first, in pick's order (the product then covers those only).
    const [h, slots] = [w.tmp, w.order];
    pick.forEach((r, i) => {
      h.set(w.h.subarray(r * C, (r + 1) * C), i * C);
      slots[i] = w.slotOf[r]!;
    });
    w.h.set(h.subarray(0, pick.length * C));
    w.slotOf.set(slots.subarray(0, pick.length));
  }
  return { logits: outputLogits(model, table, w, pick ? pick.length : R, into), routings, auxLoss: aux };
}

/** What the server's batched step (src/serve/batch.ts) gives for its rows: tokens, and per row the embedding row, slot, domain and position. */
export interface DecodeRows {
  tokens: Int32Array;
  embedIds: Int32Array;
  slotOf: Int32Array;
  domainOf: Int32Array;
  posIds: Int32Array;
}

/**
 * The server's step through this file's buffers: `rows` (at most
 * DECODE_ROWS) with attention through the pool's caches (one per block, and
 * the query layer's), the logits of the rows `pick` names [pick.length, V].
 * Null when this step does not cover the model or the call (the server then
 * runs the blocks' general forward); the caller commits the pool's lengths.
 */
export function decodeRows(model: DecodeModel, rows: DecodeRows, layers: readonly AttentionCache[], query: AttentionCache | null, pick: Int32Array): DecodeOutput | null {
  const R = rows.tokens.length;
  if (!enabled || isGradEnabled() || model.training || R < 1 || R > DECODE_ROWS || pick.length > R || !supportedNow(model)) return null;
  const w = workFor(model, R);
  w.embedIds.set(rows.embedIds);
  w.slotOf.set(rows.slotOf);
  w.domainOf.set(rows.domainOf);
  w.posIds.set(rows.posIds);
  return runRows(model, w, rows.tokens, layers, query, 1, R, pick);
}

/** logits [R, V] = h · E_slot(r)ᵀ: one decode call over the rows grouped by slot (a new array, or a view of `into`). */
function outputLogits(model: DecodeModel, table: StoredMatrix, w: Work, R: number, into?: Float32Array): Tensor {
  const c = model.config;
  const [C, V, S] = [c.width, c.vocabSize, c.embeddingSlots];
  const logits = logitsTensor(R, V, into);
  const y = logits.data as Float32Array;
  const dk = decodeKernels();
  if (S === 1) {
    dk.decodeMatmul(y, w.h.subarray(0, R * C), table, R === w.R ? w.rows : Int32Array.of(0, R), 1, V, C);
    return logits;
  }
  // Rows sorted by slot (stably), one grouped call, then back in row order.
  const offsets = w.offsets;
  offsets.fill(0, 0, S + 1);
  for (let r = 0; r < R; r++) offsets[w.slotOf[r]! + 1]++;
  for (let s = 0; s < S; s++) offsets[s + 1]! += offsets[s]!;
  // Rows already in slot order (one row; one domain in the batch): straight into the logits.
  let inOrder = true;
  for (let r = 1; r < R && inOrder; r++) inOrder = w.slotOf[r - 1]! <= w.slotOf[r]!;
  if (inOrder) {
    dk.decodeMatmul(y, w.h, table, offsets.subarray(0, S + 1), S, V, C);
    return logits;
  }
  const fill = offsets.slice(0, S);
  const xs = w.xs.subarray(0, R * C);
  const order = w.order;
  for (let r = 0; r < R; r++) {
    const p = fill[w.slotOf[r]!]!++;
    order[p] = r;
    xs.set(w.h.subarray(r * C, (r + 1) * C), p * C);
  }
  const sorted = new Float32Array(R * V);
  dk.decodeMatmul(sorted, xs, table, offsets.subarray(0, S + 1), S, V, C);
  for (let p = 0; p < R; p++) y.set(sorted.subarray(p * V, (p + 1) * V), order[p]! * V);
  return logits;
}
