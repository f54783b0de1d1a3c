/**
 * The sparse FFN: route → permute → grouped matmul → unpermute, over stacked
 * expert weights (w1 [E, F, C], w2 [E, C, F]: "[E, out, in]"), each expert a
 * FastGeLU FFN like the dense one (or the model's configured activation).
 * The router comes from the config (src/moe/routers); so may always-on
 * shared experts (MoGE).
 *
 * With ECSS (src/store, src/train/ecss.ts) the experts are not resident
 * stacked parameters: an ExpertBank hands the layer, after routing, the
 * weights of only the experts this batch uses — the matrices as views of
 * their store records (no copy; their gradients go to the bank's buffers),
 * the biases stacked — and the layer computes over them with remapped
 * expert ids. Compute memory then scales with the experts touched, not with E.
 */
import { Module } from "../nn/module.js";
import { FeedForward, Linear, type FfnOptions, type InitOptions } from "../nn/layers.js";
import { activate, type Activation } from "../nn/activation.js";
import * as ops from "../ops/index.js";
import { storedGroupedMatmul } from "../ops/stored.js";
import type { StoredMatrix } from "../backend/quant.js";
import { Tensor } from "../tensor/tensor.js";
import type { BatchSlice, Routing } from "./routing.js";
import { expertParallelOutputs, usedLocalExperts, type ExpertShard } from "./expert-parallel.js";
import { routerSpec, type RouterConfig } from "./routers/index.js";
import type { RouterModule } from "./routers/router.js";
import { SigmaError } from "../util/errors.js";

export interface MoeContext {
  /** Token id of each row [R]. */
  tokenIds: Int32Array;
  /** Domain index of each row [R]. */
  domainIds: Int32Array;
  vocabSize: number;
  /** Group of each domain index (RRE). */
  domainGroup: Int32Array;
  /** Data parallel: the rows are this rank's slice of a shared batch. */
  slice?: BatchSlice;
}

/**
 * An expert layer's weights: stacked tensors [E, …], or (matrices) per-expert
 * parts. w3/b3: SwiGLU experts' up projection (w1 is then the gate); biases
 * are null in bias-free experts (ffnBias false).
 */
export interface ExpertWeights {
  w1: Tensor | ops.ExpertParts;
  b1: Tensor | null;
  w2: Tensor | ops.ExpertParts;
  b2: Tensor | null;
  w3?: Tensor | ops.ExpertParts | null;
  b3?: Tensor | null;
}

/**
 * Where a layer's expert weights come from when they live in an expert store.
 * `weights` gets the sorted global ids of the experts a batch uses and returns
 * their weights (matrices as parts, biases as stacked leaf tensors); the bank
 * reads their gradients back after backward.
 */
export interface ExpertBank {
  weights(layer: number, experts: Int32Array): ExpertWeights;
}

/**
 * Experts kept outside the model (ECSS): the layer registers no expert
 * parameters and draws their initial values only to keep the random stream
 * (and so every other parameter's init) identical to a resident model; `onInit`
 * receives them, expert by expert, e.g. to write a new store.
 */
export interface ExternalExperts {
  onInit?(layer: number, name: "w1" | "w2", expert: number, values: Float32Array): void;
}

export class MoeLayer extends Module {
  readonly router: RouterModule;
  readonly w1: Tensor;
  readonly b1: Tensor | null;
  readonly w2: Tensor;
  readonly b2: Tensor | null;
  /** SwiGLU experts: the up projection [E, F, C] (w1 is the gate); null otherwise. */
  readonly w3: Tensor | null = null;
  readonly b3: Tensor | null = null;
  readonly shared: FeedForward | null;
  /** σ(x·w) on the shared expert's output (Qwen2-MoE), w [1, C]; null = ungated. */
  readonly sharedGate: Linear | null;
  readonly activation: Activation;
  /** "gelu" (the activation above) or "swiglu" experts. */
  readonly ffnKind: "gelu" | "swiglu";
  /** Sparse layer number in the model (RRE table seed, store records). */
  readonly layer: number;
  /** Set by ECSS: the experts come from this bank instead of w1…b2. */
  bank: ExpertBank | null = null;
  /** Expert parallel (src/moe/expert-parallel.ts): w1…b2 hold only this rank's experts; the others are on the group's other ranks. */
  readonly shard: ExpertShard | null;
  /** Inference only: w1 and w2 in a stored format (src/models/quantize.ts), read instead of the f32 ones. */
  stored: { w1: StoredMatrix; w2: StoredMatrix; w3?: StoredMatrix } | null = null;

  constructor(
    readonly width: number,
    readonly expertWidth: number,
    readonly experts: number,
    routerConfig: RouterConfig,
    extra: {
      vocabSize: number;
      domainGroup: Int32Array;
      layer: number;
      outStd: number;
      activation?: Activation;
      /** The experts' and shared expert's FFN kind and biases (default: GeLU-style with biases). */
      ffn?: FfnOptions;
      /** Hidden width of the shared expert FFN; default the router's sharedExperts × F. */
      sharedWidth?: number;
      sharedGate?: boolean;
      external?: ExternalExperts;
      shard?: ExpertShard;
    },
    init: InitOptions,
  ) {
    super();
    const [C, F, E] = [width, expertWidth, experts];
    const dtype = init.dtype ?? "float32";
    const std = init.std ?? 0.02;
    this.activation = extra.ffn?.activation ?? extra.activation ?? "fastgelu";
    this.ffnKind = extra.ffn?.kind ?? "gelu";
    const swiglu = this.ffnKind === "swiglu";
    const bias = extra.ffn?.bias ?? true;
    const spec = routerSpec(routerConfig);
    this.router = this.child("router", spec.build({ width: C, experts: E, vocabSize: extra.vocabSize, domainGroup: extra.domainGroup, layer: extra.layer, init }));
    const expert = { group: "expert" as const };
    this.layer = extra.layer;
    this.shard = extra.shard ?? null;
    if (this.shard && !extra.external) {
      // This rank's experts only; every expert is still drawn, in order, so each gets the values a one-process model gives it.
      const { first, count } = this.shard;
      const draw = (shape: [number, number, number], s: number) => {
        const t = Tensor.zeros([count, shape[1], shape[2]], dtype);
        const n = shape[1] * shape[2];
        for (let e = 0; e < E; e++) {
          const keep = e >= first && e < first + count;
          for (let i = 0; i < n; i++) {
            const v = init.rng.normal() * s;
            if (keep) t.data[(e - first) * n + i] = v;
          }
        }
        return t;
      };
      this.w1 = this.param("w1", draw([E, F, C], std), expert);
      this.b1 = bias ? this.param("b1", Tensor.zeros([count, F], dtype), { ...expert, decay: false }) : null;
      this.w2 = this.param("w2", draw([E, C, F], extra.outStd), expert);
      this.b2 = bias ? this.param("b2", Tensor.zeros([count, C], dtype), { ...expert, decay: false }) : null;
      if (swiglu) {
        this.w3 = this.param("w3", draw([E, F, C], std), expert);
        this.b3 = bias ? this.param("b3", Tensor.zeros([count, F], dtype), { ...expert, decay: false }) : null;
      }
    } else if (extra.external) {
      if (swiglu || !bias) throw new SigmaError("ECSS expert stores hold two-matrix experts with biases only; this model's experts are " + (swiglu ? "SwiGLU" : "bias-free"), "train this model with its experts in RAM (no ecss section)");
      // Empty placeholders: the weights live in the store; draws as Tensor.randn would make them.
      const draw = (name: "w1" | "w2", n: number, s: number) => {
        const buf = new Float32Array(n);
        for (let e = 0; e < E; e++) {
          for (let i = 0; i < n; i++) buf[i] = init.rng.normal() * s;
          extra.external!.onInit?.(extra.layer, name, e, buf);
        }
      };
      draw("w1", F * C, std);
      draw("w2", C * F, extra.outStd);
      [this.w1, this.b1, this.w2, this.b2] = [Tensor.zeros([0, F, C], dtype), Tensor.zeros([0, F], dtype), Tensor.zeros([0, C, F], dtype), Tensor.zeros([0, C], dtype)];
    } else {
      this.w1 = this.param("w1", Tensor.randn([E, F, C], init.rng, std, dtype), expert);
      this.b1 = bias ? this.param("b1", Tensor.zeros([E, F], dtype), { ...expert, decay: false }) : null;
      this.w2 = this.param("w2", Tensor.randn([E, C, F], init.rng, extra.outStd, dtype), expert);
      this.b2 = bias ? this.param("b2", Tensor.zeros([E, C], dtype), { ...expert, decay: false }) : null;
      if (swiglu) {
        this.w3 = this.param("w3", Tensor.randn([E, F, C], init.rng, std, dtype), expert);
        this.b3 = bias ? this.param("b3", Tensor.zeros([E, F], dtype), { ...expert, decay: false }) : null;
      }
    }
    // n shared experts of width F are one FFN of width n·F (the sum of their outputs is the same function); sharedWidth sets that width directly.
    const Fs = extra.sharedWidth ?? spec.sharedExperts * F;
    this.shared = Fs > 0 ? this.child("shared", new FeedForward(C, Fs, init, extra.outStd, { activation: this.activation, kind: this.ffnKind, bias })) : null;
    this.sharedGate = this.shared && extra.sharedGate ? this.child("sharedGate", new Linear(C, 1, init, false)) : null;
  }

  /** x: [R, C] → [R, C], with the routing used. */
  forward(x: Tensor, ctx: MoeContext): { y: Tensor; routing: Routing } {
    const E = this.experts;
    const routing = this.router.route({ x, tokenIds: ctx.tokenIds, domainIds: ctx.domainIds, ...(ctx.slice ? { slice: ctx.slice } : {}) });
    if (this.shard) return this.computeSharded(x, routing);
    if (!this.bank) return this.compute(x, routing, routing.expertIds, E, this);
    // Compact to the U experts in use: global id → position among them (dropped ids E map past the end).
    const used = Int32Array.from(routing.counts.keys()).filter((e) => routing.counts[e]! > 0);
    const pos = new Int32Array(E + 1).fill(used.length);
    used.forEach((e, i) => (pos[e] = i));
    const compact = routing.expertIds.map((e) => pos[e]!);
    return this.compute(x, routing, compact, used.length, this.bank.weights(this.layer, used));
  }

  /** Permute → grouped matmul → unpermute over E stacked experts (E may be a compacted count). */
  private compute(x: Tensor, routing: Routing, expertIds: Int32Array, E: number, wt: ExpertWeights): { y: Tensor; routing: Routing } {
    const { rows, tokenOf, expertOffsets } = this.sorted(routing, expertIds, E);
    const expertOf = new Int32Array(rows.length);
    for (let e = 0; e < E; e++) expertOf.fill(e, expertOffsets[e]!, expertOffsets[e + 1]!);
    const ys = this.ffn(ops.gatherRows(x, tokenOf), expertOffsets, expertOf, wt);
    return { y: this.combine(x, ys, routing, rows, tokenOf), routing };
  }

  /** Expert parallel: the same, with each assignment computed on the rank that holds its expert. */
  private computeSharded(x: Tensor, routing: Routing): { y: Tensor; routing: Routing } {
    const { rows, tokenOf, expertOffsets } = this.sorted(routing, routing.expertIds, this.experts);
    // With ECSS the owner's experts come from its store (store-local ids), only those that received rows.
    const bank = this.bank;
    const local = bank ? usedLocalExperts((used) => bank.weights(this.layer, used), (xs, offsets, expertOf, wt) => this.ffn(xs, offsets, expertOf, wt)) : (xs: Tensor, offsets: Int32Array, expertOf: Int32Array) => this.ffn(xs, offsets, expertOf, this);
    const ys = expertParallelOutputs(x, this.shard!, this.experts, expertOffsets, tokenOf, local);
    return { y: this.combine(x, ys, routing, rows, tokenOf), routing };
  }

  /** The kept assignments sorted by expert (dropped ones, id E, sort past the last expert and are left out) and their tokens. */
  private sorted(routing: Routing, expertIds: Int32Array, E: number): { rows: Int32Array; tokenOf: Int32Array; expertOffsets: Int32Array } {
    const { order, offsets } = ops.permuteByExpert(expertIds, E + 1);
    const kept = offsets[E]!;
    const rows = order.subarray(0, kept);
    const tokenOf = new Int32Array(kept);
    for (let i = 0; i < kept; i++) tokenOf[i] = Math.floor(rows[i]! / routing.k);
    return { rows, tokenOf, expertOffsets: offsets.subarray(0, E + 1) };
  }

  /** The experts' FFNs over rows xs [n, C] sorted by expert (expertOf: each row's expert in wt). */
  private ffn(xs: Tensor, offsets: Int32Array, expertOf: Int32Array, wt: ExpertWeights): Tensor {
    if (this.stored && wt === this) return this.storedFfn(xs, offsets, expertOf);
    const product = (x: Tensor, w: Tensor | ops.ExpertParts, b: Tensor | null | undefined) => {
      const y = ops.groupedMatmul(x, w, offsets, true, this.precision);
      return b ? ops.add(y, ops.gatherRows(b, expertOf)) : y;
    };
    const h = this.ffnKind === "swiglu" ? ops.swiglu(product(xs, wt.w1, wt.b1), product(xs, wt.w3!, wt.b3)) : activate(product(xs, wt.w1, wt.b1), this.activation);
    return product(h, wt.w2, wt.b2);
  }

  /** ffn over the stored experts: all experts of the step in one decode call per matrix. */
  private storedFfn(xs: Tensor, offsets: Int32Array, expertOf: Int32Array): Tensor {
    const [C, F, E] = [this.width, this.expertWidth, this.experts];
    const product = (x: Tensor, w: StoredMatrix, N: number, K: number, b: Tensor | null) => {
      const y = storedGroupedMatmul(x, w, offsets, E, N, K);
      return b ? ops.add(y, ops.gatherRows(b, expertOf)) : y;
    };
    const st = this.stored!;
    const h = this.ffnKind === "swiglu" ? ops.swiglu(product(xs, st.w1, F, C, this.b1), product(xs, st.w3!, F, C, this.b3)) : activate(product(xs, st.w1, F, C, this.b1), this.activation);
    return product(h, st.w2, C, F, this.b2);
  }

  /** Weighs the expert outputs ys (the kept assignments `rows`, in order) and adds them to their tokens; plus the shared experts. */
  private combine(x: Tensor, ys: Tensor, routing: Routing, rows: Int32Array, tokenOf: Int32Array): Tensor {
    const R = x.dim(0);
    const w = ops.reshape(ops.gatherRows(ops.reshape(routing.weights, [R * routing.k, 1]), rows), [rows.length]);
    let y = ops.combine(ys, tokenOf, w, R);
    if (this.shared) {
      const s = this.shared.forward(x);
      if (!this.sharedGate) return ops.add(y, s);
      // Each row of the shared output scaled by its gate σ(x·w): a combine onto the same rows.
      const gate = ops.reshape(ops.sigmoid(this.sharedGate.forward(x)), [R]);
      y = ops.add(y, ops.combine(s, Int32Array.from({ length: R }, (_, r) => r), gate, R));
    }
    return y;
  }
}
