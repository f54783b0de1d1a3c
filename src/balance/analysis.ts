/**
 * Load-balance analysis of routings: per-expert and per-device token loads,
 * the imbalance score IS of Pangu Pro MoE (docs/design.md §6.1), max/mean device
 * load, and the assignments a capacity factor would drop.
 *
 * Loads and IS are those of the router's choices. The capacity factor is
 * applied afterwards, only to count what it would drop: the model's routers
 * drop in training only (topk.ts), and a balance report should show the
 * imbalance the router creates, not what the capacity limit hides.
 */
import { countPerExpert, imbalanceScore } from "../moe/routing.js";
import type { Placement } from "./placement.js";

/** One layer's routing of one batch: k choices per token, expert ids in [0, E) (E marks an assignment already dropped). */
export interface RoutedBatch {
  experts: number;
  k: number;
  /** [R·k]: token r's j-th choice at r·k + j. */
  expertIds: Int32Array;
}

export const tokensOf = (rb: RoutedBatch): number => rb.expertIds.length / rb.k;

/** Assignments per expert [E]; ids equal to E (dropped) are not counted. */
export const expertLoads = (rb: RoutedBatch): Int32Array => countPerExpert(rb.expertIds, rb.experts);

/** T_d: token-expert computations on each device [D] under any placement (their IS: imbalanceScore, src/moe/routing.ts). */
export function deviceLoads(perExpert: ArrayLike<number>, placement: Placement): number[] {
  const loads = new Array<number>(placement.devices).fill(0);
  for (let e = 0; e < perExpert.length; e++) loads[placement.deviceOf[e]!] += perExpert[e]!;
  return loads;
}

/**
 * Assignments dropped by a capacity of ceil(factor·R·k/E) per expert, first
 * choices of all tokens served before second choices (GShard's priority, as
 * in the top-k router).
 */
export function capacityDrops(rb: RoutedBatch, factor: number): number {
  const { experts: E, k } = rb;
  const R = tokensOf(rb);
  const cap = Math.ceil((factor * R * k) / E);
  const load = new Int32Array(E);
  let dropped = 0;
  for (let j = 0; j < k; j++) {
    for (let r = 0; r < R; r++) {
      const e = rb.expertIds[r * k + j]!;
      if (e >= E) continue;
      if (load[e]! >= cap) dropped++;
      else load[e]++;
    }
  }
  return dropped;
}

export interface BatchBalance {
  tokens: number;
  perExpert: Int32Array;
  perDevice: number[];
  imbalance: number;
  /** max_d T_d / mean_d T_d (1 = perfectly balanced). */
  maxOverMean: number;
  /** Assignments the capacity factor would drop (0 without one). */
  dropped: number;
}

export function measureBatch(rb: RoutedBatch, placement: Placement, capacityFactor: number | null): BatchBalance {
  const perExpert = expertLoads(rb);
  const perDevice = deviceLoads(perExpert, placement);
  const tokens = tokensOf(rb);
  const mean = perDevice.reduce((a, b) => a + b, 0) / perDevice.length;
  return {
    tokens,
    perExpert,
    perDevice,
    imbalance: imbalanceScore(perDevice, tokens),
    maxOverMean: mean === 0 ? 1 : Math.max(...perDevice) / mean,
    dropped: capacityFactor === null ? 0 : capacityDrops(rb, capacityFactor),
  };
}

/** Summary of a sample of values: quantiles (nearest rank), mean, and the fraction above 0. */
export interface Distribution {
  count: number;
  mean: number;
  min: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  fractionPositive: number;
}

export function distribution(values: number[]): Distribution {
  const s = [...values].sort((a, b) => a - b);
  const n = s.length;
  const q = (p: number) => (n === 0 ? 0 : s[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))]!);
  return {
    count: n,
    mean: n === 0 ? 0 : s.reduce((a, b) => a + b, 0) / n,
    min: n === 0 ? 0 : s[0]!,
    p50: q(0.5),
    p90: q(0.9),
    p99: q(0.99),
    max: n === 0 ? 0 : s[n - 1]!,
    fractionPositive: n === 0 ? 0 : s.filter((v) => v > 0).length / n,
  };
}

/** Totals and per-batch values of one layer over many batches. */
export class LayerBalance {
  readonly perExpert: number[];
  readonly perDevice: number[];
  readonly imbalance: number[] = [];
  readonly maxOverMean: number[] = [];
  tokens = 0;
  assignments = 0;
  dropped = 0;

  constructor(readonly experts: number, readonly placement: Placement, readonly capacityFactor: number | null) {
    this.perExpert = new Array<number>(experts).fill(0);
    this.perDevice = new Array<number>(placement.devices).fill(0);
  }

  add(rb: RoutedBatch): BatchBalance {
    const b = measureBatch(rb, this.placement, this.capacityFactor);
    b.perExpert.forEach((c, e) => (this.perExpert[e] += c));
    b.perDevice.forEach((c, d) => (this.perDevice[d] += c));
    this.imbalance.push(b.imbalance);
    this.maxOverMean.push(b.maxOverMean);
    this.tokens += b.tokens;
    this.assignments += rb.expertIds.length;
    this.dropped += b.dropped;
    return b;
  }
}
