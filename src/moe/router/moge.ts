/**
 * MoGE: Mixture of Grouped Experts (Pangu Pro MoE, PAPERS.md §3).
 * S = softmax(W·h) over all E experts (bias-free router); inside each of the G
 * equal groups take the top-K' of S; K = G·K' experts per token; weights are
 * S[e]·routerScale[e] with NO renormalisation. Every group, hence every device,
 * gets exactly K' assignments per token: the imbalance score is 0 by construction.
 */
import { Module } from "../../nn/module.js";
import type { InitOptions } from "../../nn/layers.js";
import * as ops from "../../ops/index.js";
import { Tensor } from "../../tensor/tensor.js";
import { countPerExpert, type RouterInput, type Routing } from "../routing.js";
import { balanceLoss, pick, topIndices } from "./learned.js";

export class MogeRouter extends Module {
  readonly weight: Tensor;
  /** Learnable per-expert output scale, initialised to 1 (official inference code). */
  readonly scale: Tensor;

  constructor(readonly width: number, readonly experts: number, readonly groups: number, readonly perGroup: number, readonly auxLossCoef: number, init: InitOptions) {
    super();
    const dtype = init.dtype ?? "float32";
    this.weight = this.param("weight", Tensor.randn([experts, width], init.rng, init.std ?? 0.02, dtype));
    this.scale = this.param("scale", Tensor.full([experts], 1, dtype), { decay: false });
  }

  route(input: RouterInput): Routing {
    const R = input.x.dim(0);
    const E = this.experts;
    const per = E / this.groups;
    const k = this.groups * this.perGroup;
    const probs = ops.softmax(ops.linear(input.x, this.weight)); // [R, E]
    const p = probs.data;
    const expertIds = new Int32Array(R * k);
    const flat = new Int32Array(R * k);
    const chosen: number[] = [];
    for (let r = 0; r < R; r++) {
      for (let g = 0; g < this.groups; g++) {
        topIndices(p, r * E + g * per, r * E + (g + 1) * per, this.perGroup, chosen);
        chosen.forEach((idx, j) => {
          const a = r * k + g * this.perGroup + j;
          flat[a] = idx;
          expertIds[a] = idx - r * E;
        });
      }
    }
    const weights = ops.mul(pick(probs, flat), ops.reshape(ops.gatherRows(ops.reshape(this.scale, [E, 1]), expertIds), [R * k]));
    const counts = countPerExpert(expertIds, E);
    return { k, expertIds, weights, auxLoss: balanceLoss(probs, counts, R * k, this.auxLossCoef), zLoss: null, counts, dropped: 0 };
  }
}
