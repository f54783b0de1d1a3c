/**
 * RRE: Random Routed Experts (PanGu-Σ, PAPERS.md §2). Two levels, nothing learned:
 *  1. domain → expert group (from the config);
 *  2. token id → expert inside the group, by a frozen random table per layer.
 * Top-1, weight 1, no auxiliary loss.
 *
 * Each layer's table is drawn once from (seed, layer) and is part of the model
 * state (a buffer, saved with checkpoints, never re-drawn on load). Balance
 * [ours, after Hash Layers]: each group's table is a shuffled round-robin, so
 * each of its g experts owns ⌊V/g⌋ or ⌈V/g⌉ token ids.
 */
import { Module } from "../../nn/module.js";
import { Tensor } from "../../tensor/tensor.js";
import { Rng } from "../../util/rng.js";
import { countPerExpert, type RouterInput, type Routing } from "../routing.js";

export class RreRouter extends Module {
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
