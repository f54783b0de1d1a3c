/**
 * What every router returns, and the load statistics computed from it.
 *
 * Assignments are numbered a = r·k + j for token r and its j-th choice.
 * An assignment whose expert id equals E was dropped (capacity exceeded):
 * it is not computed and contributes nothing (the residual carries the token).
 */
import type { Communicator } from "../comm/comm.js";
import type { Tensor } from "../tensor/tensor.js";

/**
 * Data parallel (docs/distributed.md): this rank's rows are one slice of a
 * batch that the ranks of `comm` share, rank after rank. A router computes
 * every batch-level quantity — the balance loss's f and P, the z-loss mean,
 * capacity and drop order — over the whole batch, so that each rank's loss
 * is its exact share of the one-process loss and the shares sum to it.
 */
export interface BatchSlice {
  comm: Communicator;
  /** Token rows of the whole batch (every rank's). */
  rows: number;
  /** Index in the whole batch of this rank's first row. */
  offset: number;
}

export interface RouterInput {
  /** Hidden states [R, C] (R = tokens in the batch). */
  x: Tensor;
  /** Token id of each row [R] (RRE routes on it). */
  tokenIds: Int32Array;
  /** Domain index of each row [R] (RRE picks the expert group from it). */
  domainIds: Int32Array;
  /** Set when the batch is split over several ranks: the losses returned are then this rank's share. */
  slice?: BatchSlice;
}

export interface Routing {
  /** Assignments per token. */
  k: number;
  /** Experts [R·k]; E marks a dropped assignment. */
  expertIds: Int32Array;
  /** Combine weights [R·k]; differentiable for learned routers. */
  weights: Tensor;
  /** Balance loss, already multiplied by its coefficient (null when the router has none). */
  auxLoss: Tensor | null;
  /** Router z-loss, already multiplied by its coefficient. */
  zLoss: Tensor | null;
  /** Kept assignments per expert [E] (this rank's rows only, under a BatchSlice). */
  counts: Int32Array;
  /** Assignments dropped by the capacity limit. */
  dropped: number;
}

/** Counts kept assignments per expert (ids equal to E are dropped ones). */
export function countPerExpert(expertIds: Int32Array, E: number): Int32Array {
  const counts = new Int32Array(E);
  for (let i = 0; i < expertIds.length; i++) {
    const e = expertIds[i]!;
    if (e < E) counts[e]++;
  }
  return counts;
}

/**
 * Token-expert computations per device when E experts are placed on D devices
 * in contiguous blocks (device d holds experts d·E/D … (d+1)·E/D − 1); the
 * balance tools' deviceLoads takes any placement.
 */
export function contiguousDeviceLoads(counts: Int32Array, devices: number): number[] {
  const E = counts.length;
  if (devices < 1 || E % devices !== 0) throw new RangeError(`${devices} devices do not divide ${E} experts evenly`);
  const per = E / devices;
  const loads = new Array<number>(devices).fill(0);
  for (let e = 0; e < E; e++) loads[Math.floor(e / per)] += counts[e]!;
  return loads;
}

/**
 * Imbalance score of a batch (Pangu Pro MoE): IS = (max_d T_d − min_d T_d) / |X|,
 * T_d the token-expert computations on device d (any placement) and |X| the
 * tokens in the batch; 0 for an empty batch.
 */
export function imbalanceScore(loads: number[], tokens: number): number {
  return tokens === 0 ? 0 : (Math.max(...loads) - Math.min(...loads)) / tokens;
}

export interface LayerStats {
  /** Kept assignments per expert. */
  tokensPerExpert: number[];
  /** Token-expert computations per device (contiguous placement). */
  perDevice: number[];
  /** Imbalance score over the given devices. */
  imbalance: number;
  dropped: number;
}

/** One layer's statistics from its kept assignments per expert, over `devices` contiguous devices (they must divide E). */
export function layerStats(counts: Int32Array, devices: number, tokens: number, dropped: number): LayerStats {
  const perDevice = contiguousDeviceLoads(counts, devices);
  return { tokensPerExpert: Array.from(counts), perDevice, imbalance: imbalanceScore(perDevice, tokens), dropped };
}

/**
 * Routing statistics of one forward, one entry per sparse layer. `devices`
 * must divide the expert count; `tokens` is the number of tokens routed.
 */
export function routingStats(routings: Routing[], devices: number, tokens: number): LayerStats[] {
  return routings.map((r) => layerStats(r.counts, devices, tokens, r.dropped));
}
