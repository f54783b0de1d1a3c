/**
 * The learned top-k baseline (GShard / Switch / Mixtral, docs/design.md §5):
 * softmax router, top-k, optional renormalisation, Switch balance loss,
 * optional z-loss, optional capacity factor with dropping (else dropless).
 *
 * No domain structure: a domain's sub-model keeps the experts its data used
 * most (at least k of them).
 */
import { z } from "zod";
import { Module } from "../../nn/module.js";
import type { InitOptions } from "../../nn/layers.js";
import * as ops from "../../ops/index.js";
import { Tensor } from "../../tensor/tensor.js";
import { SigmaError } from "../../util/errors.js";
import { finiteField, intField } from "../../util/json.js";
import type { Communicator } from "../../comm/comm.js";
import { countPerExpert, type RouterInput, type Routing } from "../routing.js";
import { balanceLoss, copyRows, gateScores, mostUsed, pick, routerMatrix, softmaxRows, topIndices } from "./learned.js";
import { MAX_EXPERTS, type RouterKind, type RouterModule } from "./router.js";

export const TopkSchema = z
  .object({
    kind: z.literal("topk"),
    k: intField(1, MAX_EXPERTS).default(2),
    /** Renormalise the chosen weights to sum to 1 (Mixtral); off keeps raw softmax weights (GShard). */
    renormalize: z.boolean().default(true),
    auxLossCoef: finiteField().min(0).default(0.01),
    /** Router z-loss coefficient (ST-MoE); 0 turns it off. */
    zLossCoef: finiteField().min(0).default(0),
    /** Tokens per expert = ceil(factor·tokens·k/E), the rest dropped; null = dropless. A factor of E/k already drops nothing. */
    capacityFactor: finiteField().positive().max(MAX_EXPERTS).nullable().default(null),
  })
  .strict();

export type TopkConfig = z.infer<typeof TopkSchema>;

export const topk: RouterKind<typeof TopkSchema> = {
  schema: TopkSchema,
  spec: (c) => ({
    k: c.k,
    sharedExperts: 0,
    learned: true,
    // One device per expert [ours]: top-k has no groups to place.
    devices: (experts) => experts,
    check(model, bad) {
      if (c.k > model.experts) bad(["experts", "router", "k"], `k = ${c.k} is larger than experts.count = ${model.experts}`);
      // Renormalised, a single choice always has weight 1: the weights, the router's only path to the LM loss, would carry no gradient.
      if (c.k === 1 && c.renormalize) {
        bad(["experts", "router", "renormalize"], "with k = 1 the renormalised weight is always 1, so the router gets no gradient from the language-model loss: set renormalize to false, or k to 2 or more");
      }
    },
    tensors: (model) => [routerMatrix(model)],
    build: (l) => new TopkRouter(l.width, l.experts, c, l.init),
    extraction: {
      exact: false,
      keep(usage, budget) {
        if (c.k > budget) throw new SigmaError(`cannot keep ${budget} experts: the router picks k = ${c.k} per token`, `pass --experts ${c.k} or more`);
        return mostUsed(usage, Array.from({ length: usage.length }, (_, e) => e), budget);
      },
    },
    // A new domain: k more experts at the end, so it can route all its choices to new ones [ours].
    growth: {
      exact: false,
      grow: () => ({ experts: c.k, router: c }),
      oldIds: (model, n) => Int32Array.from({ length: model.experts + n }, (_, e) => (e < model.experts ? e : -1)),
    },
    weightsSumToOne: c.renormalize,
    softmaxTopk: { renormalize: c.renormalize },
    drawn: null,
  }),
};

/**
 * Capacity over a batch split between ranks, rank after rank: the loads each
 * expert has already reached when this rank's rows are served, for each
 * choice level j (first choices of all tokens, then second choices, …), as
 * [k·E]. The one-process rule serves level j of rows in order, an expert
 * taking assignments until it holds `cap`; so before this rank's level-j
 * rows, expert e holds min(cap, L + Σ of earlier ranks' level-j choices of
 * e), where L is its load after level j − 1 over the whole batch (itself
 * min(cap, L' + every rank's level-(j−1) choices)). One allgather of every
 * rank's choice counts per level gives all of it.
 */
function sliceLoads(comm: Communicator, expertIds: Int32Array, R: number, k: number, E: number, cap: number): Int32Array {
  const mine = new Int32Array(k * E);
  for (let r = 0; r < R; r++) for (let j = 0; j < k; j++) mine[j * E + expertIds[r * k + j]!]++;
  const all = comm.allgather(mine); // [ranks, k, E]
  const start = new Int32Array(k * E);
  const level = new Float64Array(E); // whole-batch load after the previous level
  for (let j = 0; j < k; j++) {
    for (let e = 0; e < E; e++) {
      let before = level[e]!;
      for (let q = 0; q < comm.size; q++) {
        if (q === comm.rank) start[j * E + e] = Math.min(cap, before);
        before += all[(q * k + j) * E + e]!;
      }
      level[e] = Math.min(cap, before);
    }
  }
  return start;
}

export class TopkRouter extends Module implements RouterModule {
  readonly weight: Tensor;

  constructor(readonly width: number, readonly experts: number, readonly opts: Omit<TopkConfig, "kind">, init: InitOptions) {
    super();
    this.weight = this.param("weight", Tensor.randn([experts, width], init.rng, init.std ?? 0.02, init.dtype ?? "float32"));
  }

  route(input: RouterInput): Routing {
    const R = input.x.dim(0);
    const E = this.experts;
    const { k, renormalize, auxLossCoef, zLossCoef, capacityFactor } = this.opts;
    const { logits, probs } = gateScores(input.x, this.weight); // [R, E]
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
    const weights = renormalize ? softmaxRows(pick(logits, flat), k) : pick(probs, flat);

    // Capacity: first choices of all tokens are served before second choices (GShard's priority).
    // It applies in training only [ours]: at inference the set of tokens in a
    // forward depends on how decoding is chunked, and dropping would make the
    // output depend on it.
    let dropped = 0;
    if (capacityFactor !== null && this.training) {
      const cap = Math.ceil((capacityFactor * (input.slice?.rows ?? R) * k) / E);
      const start = input.slice ? sliceLoads(input.slice.comm, expertIds, R, k, E, cap) : null;
      const load = new Int32Array(E);
      for (let j = 0; j < k; j++) {
        if (start) load.set(start.subarray(j * E, (j + 1) * E));
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
      // Split over ranks, the mean is over the whole batch: this rank's share.
      zLoss = input.slice ? ops.scale(ops.sum(ops.mul(lse, lse)), zLossCoef / input.slice.rows) : ops.scale(ops.mean(ops.mul(lse, lse)), zLossCoef);
    }
    return { k, expertIds, weights, auxLoss: balanceLoss(probs, counts, k, auxLossCoef, input.slice), zLoss, counts, dropped };
  }

  copyKept(from: RouterModule, kept: readonly number[]): void {
    if (!(from instanceof TopkRouter)) throw new TypeError("TopkRouter.copyKept: the full model's router is not a top-k router");
    copyRows(this.weight, from.weight, kept);
  }
}
