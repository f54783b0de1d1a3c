/**
 * The learned top-k baseline (GShard / Switch / Mixtral, PAPERS.md §4):
 * softmax router, top-k, optional renormalisation, Switch balance loss,
 * optional z-loss, optional capacity factor with dropping (else dropless).
 */
import { Module } from "../../nn/module.js";
import type { InitOptions } from "../../nn/layers.js";
import * as ops from "../../ops/index.js";
import { Tensor } from "../../tensor/tensor.js";
import { countPerExpert, type RouterInput, type Routing } from "../routing.js";
import { balanceLoss, pick, topIndices } from "./learned.js";

export interface TopkOptions {
  k: number;
  renormalize: boolean;
  auxLossCoef: number;
  zLossCoef: number;
  capacityFactor: number | null;
}

export class TopkRouter extends Module {
  readonly weight: Tensor;

  constructor(readonly width: number, readonly experts: number, readonly opts: TopkOptions, init: InitOptions) {
    super();
    this.weight = this.param("weight", Tensor.randn([experts, width], init.rng, init.std ?? 0.02, init.dtype ?? "float32"));
  }

  route(input: RouterInput): Routing {
    const R = input.x.dim(0);
    const E = this.experts;
    const { k, renormalize, auxLossCoef, zLossCoef, capacityFactor } = this.opts;
    const logits = ops.linear(input.x, this.weight); // [R, E]
    const probs = ops.softmax(logits);
    const p = probs.data;
    const expertIds = new Int32Array(R * k);
    const flat = new Int32Array(R * k);
    const chosen: number[] = [];
    for (let r = 0; r < R; r++) {
      topIndices(p, r * E, (r + 1) * E, k, chosen);
      chosen.forEach((idx, j) => {
        flat[r * k + j] = idx;
        expertIds[r * k + j] = idx - r * E;
      });
    }
    // Renormalised weights p_i / Σ_chosen p_j equal a softmax over the chosen logits.
    const weights = renormalize ? ops.reshape(ops.softmax(ops.reshape(pick(logits, flat), [R, k])), [R * k]) : pick(probs, flat);

    // Capacity: first choices of all tokens are served before second choices (GShard's priority).
    // It applies in training only [ours]: at inference the set of tokens in a
    // forward depends on how decoding is chunked, and dropping would make the
    // output depend on it.
    let dropped = 0;
    if (capacityFactor !== null && this.training) {
      const cap = Math.ceil((capacityFactor * R * k) / E);
      const load = new Int32Array(E);
      for (let j = 0; j < k; j++) {
        for (let r = 0; r < R; r++) {
          const a = r * k + j;
          const e = expertIds[a]!;
          if (load[e]! >= cap) {
            expertIds[a] = E;
            dropped++;
          } else load[e]++;
        }
      }
    }
    const counts = countPerExpert(expertIds, E);
    let zLoss: Tensor | null = null;
    if (zLossCoef > 0) {
      const lse = ops.logsumexp(logits);
      zLoss = ops.scale(ops.mean(ops.mul(lse, lse)), zLossCoef);
    }
    return { k, expertIds, weights, auxLoss: balanceLoss(probs, counts, R * k, auxLossCoef), zLoss, counts, dropped };
  }
}
