/**
 * The sparse FFN: route → permute → grouped matmul → unpermute, over stacked
 * expert weights (w1 [E, F, C], w2 [E, C, F]: "[E, out, in]"), each expert a
 * FastGeLU FFN like the dense one (or the model's configured activation).
 * Optional always-on shared experts (MoGE).
 */
import { Module } from "../nn/module.js";
import { FeedForward, type InitOptions } from "../nn/layers.js";
import { activate, type Activation } from "../nn/activation.js";
import * as ops from "../ops/index.js";
import { Tensor } from "../tensor/tensor.js";
import type { RouterConfig } from "../models/config.js";
import type { Routing } from "./routing.js";
import { RreRouter } from "./router/rre.js";
import { MogeRouter } from "./router/moge.js";
import { TopkRouter } from "./router/topk.js";

export type Router = RreRouter | MogeRouter | TopkRouter;

export interface MoeContext {
  /** Token id of each row [R]. */
  tokenIds: Int32Array;
  /** Domain index of each row [R]. */
  domainIds: Int32Array;
  vocabSize: number;
  /** Group of each domain index (RRE). */
  domainGroup: Int32Array;
}

export class MoeLayer extends Module {
  readonly router: Router;
  readonly w1: Tensor;
  readonly b1: Tensor;
  readonly w2: Tensor;
  readonly b2: Tensor;
  readonly shared: FeedForward | null;
  readonly activation: Activation;

  constructor(
    readonly width: number,
    readonly expertWidth: number,
    readonly experts: number,
    routerConfig: RouterConfig,
    extra: { vocabSize: number; domainGroup: Int32Array; layer: number; outStd: number; activation?: Activation },
    init: InitOptions,
  ) {
    super();
    const [C, F, E] = [width, expertWidth, experts];
    const dtype = init.dtype ?? "float32";
    const std = init.std ?? 0.02;
    this.activation = extra.activation ?? "fastgelu";
    switch (routerConfig.kind) {
      case "rre":
        this.router = this.child("router", new RreRouter(E, routerConfig.groups, extra.vocabSize, extra.domainGroup, routerConfig.seed, extra.layer));
        break;
      case "moge":
        this.router = this.child("router", new MogeRouter(C, E, routerConfig.groups, routerConfig.perGroup, routerConfig.auxLossCoef, init));
        break;
      case "topk":
        this.router = this.child("router", new TopkRouter(C, E, routerConfig, init));
        break;
    }
    const expert = { group: "expert" as const };
    this.w1 = this.param("w1", Tensor.randn([E, F, C], init.rng, std, dtype), expert);
    this.b1 = this.param("b1", Tensor.zeros([E, F], dtype), { ...expert, decay: false });
    this.w2 = this.param("w2", Tensor.randn([E, C, F], init.rng, extra.outStd, dtype), expert);
    this.b2 = this.param("b2", Tensor.zeros([E, C], dtype), { ...expert, decay: false });
    const sharedCount = routerConfig.kind === "moge" ? routerConfig.sharedExperts : 0;
    // n shared experts of width F are one FFN of width n·F (the sum of their outputs is the same function).
    this.shared = sharedCount > 0 ? this.child("shared", new FeedForward(C, sharedCount * F, init, extra.outStd, this.activation)) : null;
  }

  /** x: [R, C] → [R, C], with the routing used. */
  forward(x: Tensor, ctx: MoeContext): { y: Tensor; routing: Routing } {
    const R = x.dim(0);
    const E = this.experts;
    const routing = this.router.route({ x, tokenIds: ctx.tokenIds, domainIds: ctx.domainIds });
    const k = routing.k;
    // Dropped assignments (id E) sort into an extra bucket past the last expert and are left out.
    const { order, offsets } = ops.permuteByExpert(routing.expertIds, E + 1);
    const kept = offsets[E]!;
    const rows = order.subarray(0, kept);
    const expertOffsets = offsets.subarray(0, E + 1);
    const tokenOf = new Int32Array(kept);
    const expertOf = new Int32Array(kept);
    for (let e = 0; e < E; e++) expertOf.fill(e, offsets[e]!, offsets[e + 1]!);
    for (let i = 0; i < kept; i++) tokenOf[i] = Math.floor(rows[i]! / k);

    const xs = ops.gatherRows(x, tokenOf); // [kept, C], sorted by expert
    let h = ops.groupedMatmul(xs, this.w1, expertOffsets, true);
    h = activate(ops.add(h, ops.gatherRows(this.b1, expertOf)), this.activation);
    let ys = ops.groupedMatmul(h, this.w2, expertOffsets, true);
    ys = ops.add(ys, ops.gatherRows(this.b2, expertOf));
    const w = ops.reshape(ops.gatherRows(ops.reshape(routing.weights, [R * k, 1]), rows), [kept]);
    let y = ops.combine(ys, tokenOf, w, R);
    if (this.shared) y = ops.add(y, this.shared.forward(x));
    return { y, routing };
  }
}
