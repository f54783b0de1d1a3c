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
import { FeedForward, type InitOptions } from "../nn/layers.js";
import { activate, type Activation } from "../nn/activation.js";
import * as ops from "../ops/index.js";
import { Tensor } from "../tensor/tensor.js";
import type { BatchSlice, Routing } from "./routing.js";
import { routerSpec, type RouterConfig } from "./routers/index.js";
import type { RouterModule } from "./routers/router.js";

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

/** An expert layer's weights: stacked tensors [E, …], or (matrices) per-expert parts. */
export interface ExpertWeights {
  w1: Tensor | ops.ExpertParts;
  b1: Tensor;
  w2: Tensor | ops.ExpertParts;
  b2: Tensor;
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
  readonly b1: Tensor;
  readonly w2: Tensor;
  readonly b2: Tensor;
  readonly shared: FeedForward | null;
  readonly activation: Activation;
  /** Sparse layer number in the model (RRE table seed, store records). */
  readonly layer: number;
  /** Set by ECSS: the experts come from this bank instead of w1…b2. */
  bank: ExpertBank | null = null;

  constructor(
    readonly width: number,
    readonly expertWidth: number,
    readonly experts: number,
    routerConfig: RouterConfig,
    extra: { vocabSize: number; domainGroup: Int32Array; layer: number; outStd: number; activation?: Activation; external?: ExternalExperts },
    init: InitOptions,
  ) {
    super();
    const [C, F, E] = [width, expertWidth, experts];
    const dtype = init.dtype ?? "float32";
    const std = init.std ?? 0.02;
    this.activation = extra.activation ?? "fastgelu";
    const spec = routerSpec(routerConfig);
    this.router = this.child("router", spec.build({ width: C, experts: E, vocabSize: extra.vocabSize, domainGroup: extra.domainGroup, layer: extra.layer, init }));
    const expert = { group: "expert" as const };
    this.layer = extra.layer;
    if (extra.external) {
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
      this.b1 = this.param("b1", Tensor.zeros([E, F], dtype), { ...expert, decay: false });
      this.w2 = this.param("w2", Tensor.randn([E, C, F], init.rng, extra.outStd, dtype), expert);
      this.b2 = this.param("b2", Tensor.zeros([E, C], dtype), { ...expert, decay: false });
    }
    const sharedCount = spec.sharedExperts;
    // n shared experts of width F are one FFN of width n·F (the sum of their outputs is the same function).
    this.shared = sharedCount > 0 ? this.child("shared", new FeedForward(C, sharedCount * F, init, extra.outStd, this.activation)) : null;
  }

  /** x: [R, C] → [R, C], with the routing used. */
  forward(x: Tensor, ctx: MoeContext): { y: Tensor; routing: Routing } {
    const E = this.experts;
    const routing = this.router.route({ x, tokenIds: ctx.tokenIds, domainIds: ctx.domainIds, ...(ctx.slice ? { slice: ctx.slice } : {}) });
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
    const R = x.dim(0);
    const k = routing.k;
    // Dropped assignments (id E) sort into an extra bucket past the last expert and are left out.
    const { order, offsets } = ops.permuteByExpert(expertIds, E + 1);
    const kept = offsets[E]!;
    const rows = order.subarray(0, kept);
    const expertOffsets = offsets.subarray(0, E + 1);
    const tokenOf = new Int32Array(kept);
    const expertOf = new Int32Array(kept);
    for (let e = 0; e < E; e++) expertOf.fill(e, offsets[e]!, offsets[e + 1]!);
    for (let i = 0; i < kept; i++) tokenOf[i] = Math.floor(rows[i]! / k);

    const xs = ops.gatherRows(x, tokenOf); // [kept, C], sorted by expert
    let h = ops.groupedMatmul(xs, wt.w1, expertOffsets, true, this.precision);
    h = activate(ops.add(h, ops.gatherRows(wt.b1, expertOf)), this.activation);
    let ys = ops.groupedMatmul(h, wt.w2, expertOffsets, true, this.precision);
    ys = ops.add(ys, ops.gatherRows(wt.b2, expertOf));
    const w = ops.reshape(ops.gatherRows(ops.reshape(routing.weights, [R * k, 1]), rows), [kept]);
    let y = ops.combine(ys, tokenOf, w, R);
    if (this.shared) y = ops.add(y, this.shared.forward(x));
    return { y, routing };
  }
}
