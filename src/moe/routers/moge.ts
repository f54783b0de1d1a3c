/**
 * MoGE: Mixture of Grouped Experts (Pangu Pro MoE, docs/design.md §4).
 * S = softmax(W·h) over all E experts (bias-free router); inside each of the G
 * equal groups take the top-K' of S; K = G·K' experts per token; weights are
 * S[e]·routerScale[e] with NO renormalisation. Every group, hence every device,
 * gets exactly K' assignments per token: the imbalance score is 0 by construction.
 * Optional always-on shared experts (the model builds them).
 *
 * No domain structure: a domain's sub-model keeps the experts its data used
 * most, the same number from each group, so the balance survives extraction.
 */
import { z } from "zod";
import { Module } from "../../nn/module.js";
import type { InitOptions } from "../../nn/layers.js";
import * as ops from "../../ops/index.js";
import { Tensor } from "../../tensor/tensor.js";
import { SigmaError } from "../../util/errors.js";
import { finiteField, intField } from "../../util/json.js";
import { countPerExpert, type RouterInput, type Routing } from "../routing.js";
import { balanceLoss, copyRows, gateScores, mostUsed, pick, routerMatrix, topIndices } from "./learned.js";
import { checkGroupsDivide, MAX_EXPERTS, type RouterKind, type RouterModule } from "./router.js";

/** The most shared experts a MoGE layer may have. */
const MAX_SHARED_EXPERTS = 2 ** 8;

export const MogeSchema = z
  .object({
    kind: z.literal("moge"),
    /** Expert groups M (one per device in deployment). E must be a multiple of it. */
    groups: intField(1, MAX_EXPERTS),
    /** K': experts chosen inside each group (Pangu Pro MoE: 1). */
    perGroup: intField(1, MAX_EXPERTS).default(1),
    /** α of the batch-level balance loss α·E·Σ f_i·P_i. Small, as in Switch/GShard. */
    auxLossCoef: finiteField().min(0).default(0.01),
    /** Always-on shared experts, each of the expert width (Pangu Pro MoE: 4). */
    sharedExperts: intField(0, MAX_SHARED_EXPERTS).default(0),
  })
  .strict();

export type MogeConfig = z.infer<typeof MogeSchema>;

export const moge: RouterKind<typeof MogeSchema> = {
  schema: MogeSchema,
  spec: (c) => ({
    k: c.groups * c.perGroup,
    sharedExperts: c.sharedExperts,
    learned: true,
    devices: () => c.groups,
    check(model, bad) {
      checkGroupsDivide(c.groups, model, bad);
      const per = model.experts / c.groups;
      if (Number.isInteger(per) && c.perGroup > per) bad(["experts", "router", "perGroup"], `K' = ${c.perGroup} is larger than a group (${per} experts)`);
    },
    tensors: (model) => [
      routerMatrix(model),
      { name: "scale", elements: model.experts, buffer: false, what: "the router scale [experts.count]", fields: [["experts", "count"]], fix: "lower experts.count" },
    ],
    build: (l) => new MogeRouter(l.width, l.experts, c.groups, c.perGroup, c.auxLossCoef, l.init),
    extraction: {
      exact: false,
      keep(usage, budget) {
        const per = usage.length / c.groups;
        if (budget % c.groups !== 0) throw new SigmaError(`cannot keep ${budget} experts: MoGE keeps the same number from each of its ${c.groups} groups`, `pass a multiple of ${c.groups}`);
        const keep = budget / c.groups;
        if (keep < c.perGroup) throw new SigmaError(`cannot keep ${keep} experts per group: the router picks ${c.perGroup} per group`, `pass --experts ${c.perGroup * c.groups} or more`);
        const ids = Array.from({ length: usage.length }, (_, e) => e);
        return Array.from({ length: c.groups }, (_, g) => mostUsed(usage, ids.slice(g * per, (g + 1) * per), keep)).flat();
      },
    },
    // A new domain: one more expert in each group (at the group's end), so the groups stay equal.
    growth: {
      exact: false,
      grow: () => ({ experts: c.groups, router: c }),
      oldIds(model) {
        const per = model.experts / c.groups;
        return Int32Array.from({ length: model.experts + c.groups }, (_, e) => (e % (per + 1) < per ? Math.floor(e / (per + 1)) * per + (e % (per + 1)) : -1));
      },
    },
    // The chosen probabilities sum to less than 1 (no renormalisation).
    weightsSumToOne: false,
    softmaxTopk: null,
    drawn: null,
  }),
};

export class MogeRouter extends Module implements RouterModule {
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
    const { probs } = gateScores(input.x, this.weight); // [R, E]
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
    const weights = ops.mul(pick(probs, flat), pick(this.scale, expertIds));
    const counts = countPerExpert(expertIds, E);
    return { k, expertIds, weights, auxLoss: balanceLoss(probs, counts, k, this.auxLossCoef, input.slice), zLoss: null, counts, dropped: 0 };
  }

  copyKept(from: RouterModule, kept: readonly number[]): void {
    if (!(from instanceof MogeRouter)) throw new TypeError("MogeRouter.copyKept: the full model's router is not a MoGE router");
    copyRows(this.weight, from.weight, kept);
    copyRows(this.scale, from.scale, kept);
  }
}
