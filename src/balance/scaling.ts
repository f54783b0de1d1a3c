/**
 * Scaling predictions for expert parallelism: step time and the time lost to
 * imbalance of one sparse layer (forward + backward) on 8 … 512 ranks, for
 * RRE, MoGE and top-k, from the step-time model of simulator.ts — its link
 * taken from an interconnect profile below or from the figures `npm run
 * bench -- comm --json` measured (its all-to-all-v fit: latency and bus
 * bandwidth per rank).
 *
 * The workload, weak scaling [ours]: every rank holds `tokensPerRank` tokens
 * of the step and E = max(64, ranks) experts are placed in contiguous blocks
 * (E / ranks per rank), Pangu Pro MoE's layer sizes (C 5120, F_e 1344, SwiGLU,
 * bf16). The routers:
 *   - top-k: global top-8 of synthetic scores (synthetic.ts, Zipf skew `skew`
 *     of expert popularity: 0 uniform);
 *   - MoGE: 8 groups × top-1 on the same scores — balanced per group, so per
 *     rank exactly at 8 ranks, and within a group of E/8 experts beyond;
 *   - RRE: top-1 by a balanced random table inside one of 8 domain groups
 *     (uniform over tokens) — RRE's rule: each group's table a shuffled
 *     round-robin, so each expert owns ⌊V/g⌋ or ⌈V/g⌉ token ids — with token
 *     ids drawn from a Zipf(1) law over a 32 000-token vocabulary, as in text.
 * The all-to-all moves 2 bytes per value (bf16) per assignment that leaves
 * its rank; the rest of the model (attention, dense layers) is left out, so
 * the step time is that of one sparse layer.
 */
import { existsSync } from "node:fs";
import { z } from "zod";
import { SigmaError } from "../util/errors.js";
import { parseWithSchema, readJsonFile } from "../util/json.js";
import { Rng } from "../util/rng.js";
import { measureBatch, type RoutedBatch } from "./analysis.js";
import type { Hardware } from "./hardware.js";
import { contiguousPlacement } from "./placement.js";
import { SimShapeSchema } from "./shape.js";
import { simulateStep } from "./simulator.js";
import { mogeRouting, SyntheticRouter, topkRouting } from "./synthetic.js";

/** A rank's link into the all-to-all. */
export interface Interconnect {
  name: string;
  /** Bytes/s a rank sends (and receives at the same time). */
  linkBandwidth: number;
  /** Seconds of fixed cost per all-to-all. */
  linkLatency: number;
  note: string;
}

/** Assumed, per rank and direction; latencies are typical small-message MPI/NCCL figures, not measured here. */
export const INTERCONNECTS: Record<string, Interconnect> = {
  nvlink: { name: "nvlink", linkBandwidth: 450e9, linkLatency: 3e-6, note: "NVLink 4 (H100 SXM): 900 GB/s both ways = 450 GB/s each way per GPU, 3 µs" },
  "ib-ndr": { name: "ib-ndr", linkBandwidth: 50e9, linkLatency: 5e-6, note: "NDR InfiniBand, 400 Gb/s = 50 GB/s per rank, 5 µs" },
  "ib-hdr": { name: "ib-hdr", linkBandwidth: 25e9, linkLatency: 5e-6, note: "HDR InfiniBand, 200 Gb/s = 25 GB/s per rank, 5 µs" },
  "ethernet-100g": { name: "ethernet-100g", linkBandwidth: 12.5e9, linkLatency: 15e-6, note: "100 GbE, 12.5 GB/s per rank, 15 µs (TCP)" },
  "ethernet-25g": { name: "ethernet-25g", linkBandwidth: 3.125e9, linkLatency: 25e-6, note: "25 GbE, 3.125 GB/s per rank, 25 µs (TCP)" },
};

const Fit = z.object({ latencyUs: z.number().min(0), busGBs: z.number().positive() }).passthrough();
const BenchCommSchema = z.object({ comm: z.object({ ranks: z.number().int().min(2), alltoallv: z.object({ fit: Fit }).passthrough() }).passthrough() }).passthrough();

/** The link `bench comm --json` measured: its all-to-all-v latency and bus bandwidth per rank. */
export function interconnectFromBench(json: unknown, source: string): Interconnect {
  const c = parseWithSchema(BenchCommSchema, json, source, "pass the JSON that `npm run bench -- comm --json` prints").comm;
  const f = c.alltoallv.fit;
  return { name: `measured (${source})`, linkBandwidth: f.busGBs * 1e9, linkLatency: f.latencyUs * 1e-6, note: `bench comm on ${c.ranks} ranks: all-to-all-v ${f.busGBs.toFixed(2)} GB/s per rank, ${f.latencyUs.toFixed(1)} µs` };
}

/** A profile name or a bench comm JSON file. */
export function resolveInterconnect(nameOrPath: string): Interconnect {
  const known = INTERCONNECTS[nameOrPath];
  if (known) return known;
  const hint = `use a profile (${Object.keys(INTERCONNECTS).join(", ")}) or the file \`npm run bench -- comm --json > comm.json\` writes`;
  if (!existsSync(nameOrPath)) throw new SigmaError(`unknown interconnect "${nameOrPath}": not a profile and not a file`, hint);
  return interconnectFromBench(readJsonFile(nameOrPath, "bench comm result", hint), nameOrPath);
}

export interface ScalingRow {
  ranks: number;
  experts: number;
  router: "rre" | "moge" | "topk";
  /** Assignments per token. */
  k: number;
  stepSeconds: number;
  /** Tokens per second over all ranks. */
  tokensPerSecond: number;
  /** Share of the step lost to imbalance (step − balanced step) / step. */
  lostFraction: number;
  /** Pangu Pro MoE's imbalance score of the batch over the ranks. */
  imbalance: number;
}

export interface ScalingOptions {
  /** Compute rates of one rank (flops, memoryBandwidth); its link fields are replaced by `interconnect`. */
  hardware: Hardware;
  interconnect: Interconnect;
  ranks: number[];
  tokensPerRank: number;
  skew: number;
  seed: number;
}

const V = 32000;
const GROUPS = 8;

/** Zipf(1) token ids over V, by inverse transform on the harmonic cumulative sums. */
function zipfTokens(n: number, rng: Rng): Int32Array {
  const cum = new Float64Array(V);
  let s = 0;
  for (let i = 0; i < V; i++) cum[i] = s += 1 / (i + 1);
  const ids = new Int32Array(n);
  for (let r = 0; r < n; r++) {
    const u = rng.uniform() * s;
    let lo = 0, hi = V - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cum[mid]! < u) lo = mid + 1;
      else hi = mid;
    }
    ids[r] = lo;
  }
  return ids;
}

/** RRE's tables for E experts in GROUPS groups: [GROUPS, V], each group's ids dealt round-robin to its experts in a random order. */
function randomTables(E: number, rng: Rng): Int32Array {
  const per = E / GROUPS;
  const table = new Int32Array(GROUPS * V);
  const ids = Int32Array.from({ length: V }, (_, i) => i);
  for (let g = 0; g < GROUPS; g++) {
    rng.shuffle(ids);
    for (let i = 0; i < V; i++) table[g * V + ids[i]!] = g * per + (i % per);
  }
  return table;
}

/** Routes N tokens each way, scores drawn in chunks (N·E scores at 512 ranks would not fit in memory at once). */
function routeAll(N: number, E: number, skew: number, seed: number): Record<ScalingRow["router"], RoutedBatch> {
  const synth = new SyntheticRouter(E, skew, seed);
  const topk = new Int32Array(N * 8);
  const moge = new Int32Array(N * GROUPS);
  for (let at = 0; at < N; at += 1024) {
    const n = Math.min(1024, N - at);
    const s = synth.scores(n);
    topk.set(topkRouting(s, E, 8).expertIds, at * 8);
    moge.set(mogeRouting(s, E, GROUPS, 1).expertIds, at * GROUPS);
  }
  const rng = new Rng(seed + 17);
  const table = randomTables(E, rng);
  const tokens = zipfTokens(N, rng);
  const rre = Int32Array.from(tokens, (t) => table[Math.floor(rng.uniform() * GROUPS) * V + t]!);
  return { topk: { experts: E, k: 8, expertIds: topk }, moge: { experts: E, k: GROUPS, expertIds: moge }, rre: { experts: E, k: 1, expertIds: rre } };
}

/** Step time and imbalance loss per rank count and router (see the file comment). */
export function predictScaling(o: ScalingOptions): ScalingRow[] {
  const hw: Hardware = { ...o.hardware, linkBandwidth: o.interconnect.linkBandwidth, linkLatency: o.interconnect.linkLatency };
  const rows: ScalingRow[] = [];
  for (const D of o.ranks) {
    if (!Number.isInteger(D) || D < 1 || (D > 64 && D % 64 !== 0) || (D <= 64 && 64 % D !== 0)) throw new SigmaError(`${D} ranks: the prediction places max(64, ranks) experts evenly`, "use ranks that divide 64 or are multiples of it (8, 16, …, 512)");
    const E = Math.max(64, D);
    const shape = SimShapeSchema.parse({ name: "pangu-pro-moe layer", experts: E, width: 5120, expertWidth: 1344, ffnMatrices: 3, sparseLayers: 1, context: 0, vocabSize: 0, bytesPerValue: 2 });
    const N = D * o.tokensPerRank;
    const placement = contiguousPlacement(E, D);
    const routed = routeAll(N, E, o.skew, o.seed + D);
    for (const router of ["rre", "moge", "topk"] as const) {
      const rb = routed[router];
      const t = simulateStep({ ...shape, learnedRouter: router !== "rre" }, hw, placement, [rb], "train");
      rows.push({ ranks: D, experts: E, router, k: rb.k, stepSeconds: t.seconds, tokensPerSecond: t.tokensPerSecond, lostFraction: t.lostToImbalance / t.seconds, imbalance: measureBatch(rb, placement, null).imbalance });
    }
  }
  return rows;
}

/** A markdown table of the predictions, one row per rank count, a column group per router. */
export function formatScaling(rows: ScalingRow[]): string {
  const ranks = [...new Set(rows.map((r) => r.ranks))];
  const cell = (r: ScalingRow | undefined) => (r ? `${(r.stepSeconds * 1e3).toPrecision(3)} ms, ${(100 * Math.max(0, r.lostFraction)).toFixed(0)}%` : "");
  const lines = ["| ranks | experts | RRE (top-1): step, lost | MoGE (8×top-1): step, lost | top-8: step, lost |", "|---|---|---|---|---|"];
  for (const D of ranks) {
    const at = (router: ScalingRow["router"]) => rows.find((r) => r.ranks === D && r.router === router);
    lines.push(`| ${D} | ${at("rre")?.experts ?? ""} | ${cell(at("rre"))} | ${cell(at("moge"))} | ${cell(at("topk"))} |`);
  }
  return lines.join("\n");
}
