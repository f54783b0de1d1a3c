/**
 * RRE: Random Routed Experts (PanGu-Σ, docs/design.md §3). Two levels, nothing learned:
 *  1. domain → expert group (from the config);
 *  2. token id → expert inside the group, by a frozen random table per layer.
 * Top-1, weight 1, no auxiliary loss.
 *
 * Each layer's table is drawn once from (seed, layer) and is part of the model
 * state (a buffer, saved with checkpoints, never re-drawn on load). Balance
 * [ours, after Hash Layers]: each group's table is a shuffled round-robin, so
 * each of its g experts owns ⌊V/g⌋ or ⌈V/g⌉ token ids.
 *
 * A domain's tokens reach only its group, so a domain's sub-model (the
 * group's experts, the table's row of that group) is exact. The experts a
 * batch needs are known from its token ids before the forward pass, which is
 * what lets the expert store read them ahead.
 */
import { z } from "zod";
import { Module } from "../../nn/module.js";
import { Tensor } from "../../tensor/tensor.js";
import { intField, seedField } from "../../util/json.js";
import { Rng } from "../../util/rng.js";
import { countPerExpert, type RouterInput, type Routing } from "../routing.js";
import { checkGroupsDivide, MAX_EXPERTS, type RouterKind, type RouterModule } from "./router.js";

export const RreSchema = z
  .object({
    kind: z.literal("rre"),
    /** Expert groups G; each domain owns one (domains[].group). E must be a multiple of G. */
    groups: intField(1, MAX_EXPERTS),
    /** Seed of the frozen token → expert tables (drawn once; saved with the model). */
    seed: seedField().default(1),
  })
  .strict();

export type RreConfig = z.infer<typeof RreSchema>;

export const rre: RouterKind<typeof RreSchema> = {
  schema: RreSchema,
  spec: (c) => ({
    k: 1,
    sharedExperts: 0,
    learned: false,
    devices: () => c.groups,
    check(model, bad) {
      checkGroupsDivide(c.groups, model, bad);
      model.domains.forEach((d, i) => {
        if (d.group === undefined) bad(["domains", i, "group"], `domain "${d.name}" has no expert group (the ${c.kind} router needs one: 0..${c.groups - 1})`);
        else if (d.group >= c.groups) bad(["domains", i, "group"], `${d.group} is not an expert group (allowed: 0..${c.groups - 1})`);
      });
    },
    tensors: (model) => [
      { name: "table", elements: c.groups * model.vocabSize, buffer: true, what: "the RRE table [groups·vocabSize]", fields: [["experts", "router", "groups"], ["vocabSize"]], fix: "lower the groups or vocabSize" },
    ],
    checkBuffer: (model, name, table) => (name === "table" ? tableError(table, model.experts, c.groups) : null),
    build: (l) => new RreRouter(l.experts, c.groups, l.vocabSize, l.domainGroup, c.seed, l.layer),
    extraction: {
      exact: true,
      experts(model, domain) {
        const per = model.experts / c.groups;
        const g = model.domains[domain]!.group!;
        return Array.from({ length: per }, (_, i) => g * per + i);
      },
      router: { ...c, groups: 1 },
      group: 0,
    },
    // A new domain gets a new group of E/G experts that only it reaches; new experts at the end.
    growth: {
      exact: true,
      grow: (model) => ({ experts: model.experts / c.groups, router: { ...c, groups: c.groups + 1 }, group: c.groups }),
      oldIds: (model, n) => Int32Array.from({ length: model.experts + n }, (_, e) => (e < model.experts ? e : -1)),
      copies(model, from, n) {
        const g = model.domains[from]!.group!;
        return Int32Array.from({ length: model.experts + n }, (_, e) => (e < model.experts ? -1 : g * n + (e - model.experts)));
      },
    },
    weightsSumToOne: true,
    softmaxTopk: null,
    drawn: `RRE tables drawn from seed ${c.seed} and saved with the model`,
  }),
};

export class RreRouter extends Module implements RouterModule {
  /** table[g·V + tokenId] = the global expert id that token reaches in group g. */
  readonly table: Int32Array;
  readonly expertsPerGroup: number;

  constructor(
    readonly experts: number,
    readonly groups: number,
    readonly vocabSize: number,
    /** Group of each domain index. */
    readonly domainGroup: Int32Array,
    seed: number,
    layer: number,
  ) {
    super();
    this.expertsPerGroup = experts / groups;
    this.table = this.buffer("table", buildRreTable(experts, groups, vocabSize, seed, layer));
  }

  route(input: RouterInput): Routing {
    const { tokenIds, domainIds } = input;
    const R = tokenIds.length;
    const V = this.vocabSize;
    const expertIds = new Int32Array(R);
    for (let r = 0; r < R; r++) {
      const tok = tokenIds[r]!;
      const dom = domainIds[r]!;
      if (tok < 0 || tok >= V) throw new RangeError(`RRE: token id ${tok} at row ${r} is outside the vocabulary [0, ${V})`);
      const g = this.domainGroup[dom];
      if (g === undefined) throw new RangeError(`RRE: domain index ${dom} at row ${r} has no expert group`);
      expertIds[r] = this.table[g * V + tok]!;
    }
    return {
      k: 1,
      expertIds,
      weights: Tensor.full([R], 1, input.x.dtype),
      auxLoss: null,
      zLoss: null,
      counts: countPerExpert(expertIds, this.experts),
      dropped: 0,
    };
  }

  /** The experts a batch will use, known before the forward pass (ECSS prefetches exactly these). */
  expertsNeeded(tokenIds: Int32Array, domainIds: Int32Array): Set<number> {
    const need = new Set<number>();
    for (let r = 0; r < tokenIds.length; r++) need.add(this.table[this.domainGroup[domainIds[r]!]! * this.vocabSize + tokenIds[r]!]!);
    return need;
  }

  /**
   * Growing by a domain: every old group keeps each token's expert (token ids
   * renumbered); the new group (the last) copies `copyDomain`'s row, moved to
   * the new experts, or keeps the row drawn for it.
   */
  growFrom(from: RouterModule, oldToken: Int32Array, copyDomain: number | null): void {
    if (!(from instanceof RreRouter)) throw new TypeError("RreRouter.growFrom: the old router is not an RRE router");
    const [V, Vo, per] = [this.vocabSize, from.vocabSize, this.expertsPerGroup];
    const G = from.groups;
    for (let g = 0; g < G; g++) {
      for (let t = 0; t < V; t++) if (oldToken[t]! >= 0) this.table[g * V + t] = from.table[g * Vo + oldToken[t]!]!;
    }
    if (copyDomain === null) return;
    const gf = from.domainGroup[copyDomain]!;
    for (let t = 0; t < V; t++) if (oldToken[t]! >= 0) this.table[G * V + t] = from.table[gf * Vo + oldToken[t]!]! - gf * per + G * per;
  }

  copyKept(from: RouterModule, kept: readonly number[], domain: number, tokens?: Int32Array): void {
    if (!(from instanceof RreRouter)) throw new TypeError("RreRouter.copyKept: the full model's router is not an RRE router");
    const V = this.vocabSize;
    const g = from.domainGroup[domain]!;
    const newId = new Map(kept.map((e, i) => [e, i]));
    for (let t = 0; t < V; t++) this.table[t] = newId.get(from.table[g * from.vocabSize + (tokens ? tokens[t]! : t)]!)!;
  }
}

/** A table must send every token of group g to an expert of that group (g·E/G … (g+1)·E/G − 1); else what it does wrong. */
function tableError(table: Int32Array, experts: number, groups: number): string | null {
  const per = experts / groups;
  const V = table.length / groups;
  for (let i = 0; i < table.length; i++) {
    const g = Math.floor(i / V);
    const e = table[i]!;
    if (!(e >= g * per && e < (g + 1) * per)) return `sends token ${i - g * V} of expert group ${g} to expert ${e}, outside the group (experts ${g * per}…${(g + 1) * per - 1})`;
  }
  return null;
}

/** Draws the balanced tables of one layer: [groups, V] global expert ids. */
export function buildRreTable(experts: number, groups: number, V: number, seed: number, layer: number): Int32Array {
  const per = experts / groups;
  const rng = new Rng((seed * 1000003 + layer * 7919) >>> 0);
  const table = new Int32Array(groups * V);
  const ids = Int32Array.from({ length: V }, (_, i) => i);
  for (let g = 0; g < groups; g++) {
    rng.shuffle(ids);
    for (let i = 0; i < V; i++) table[g * V + ids[i]!] = g * per + (i % per);
  }
  return table;
}
