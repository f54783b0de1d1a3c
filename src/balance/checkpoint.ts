/**
 * `sigma balance` as a function: route real batches through a checkpoint and
 * gather each sparse layer's loads, IS per batch and capacity drops.
 */
import { join } from "node:path";
import { Loader } from "../data/loader.js";
import { readManifest } from "../data/manifest.js";
import type { Split } from "../data/shards.js";
import { SigmaError } from "../util/errors.js";
import { LayerBalance, type RoutedBatch } from "./analysis.js";
import { loadForBalance, manifestDomainIndices, routeBatch } from "./from-model.js";
import { choosePlacement, type Placement } from "./placement.js";
import { expertsPerToken } from "../models/config.js";
import type { PanguSigma } from "../models/pangu-sigma.js";

export interface CheckpointBalanceOptions {
  ckpt: string;
  data: string;
  devices?: number;
  placementFile?: string;
  batches: number;
  /** Rows per batch B. */
  batchSize: number;
  /** Tokens per row T (default: the model's seqLen). */
  seqLen?: number;
  capacityFactor: number | null;
  split: Split;
  seed: number;
  /** Keep every batch's routings (the simulator replays them). */
  keepRoutings?: boolean;
}

export interface BalanceReport {
  router: string;
  experts: number;
  k: number;
  placement: Placement;
  capacityFactor: number | null;
  /** Tokens per batch. */
  tokensPerBatch: number;
  /** One per sparse layer, bottom to top. */
  layers: LayerBalance[];
  /** routings[batch][layer], when kept. */
  routings: RoutedBatch[][];
  model: PanguSigma;
}

export function balanceFromCheckpoint(o: CheckpointBalanceOptions): BalanceReport {
  if (!Number.isInteger(o.batches) || o.batches < 1) throw new SigmaError(`--batches ${o.batches} must be a positive integer`);
  const model = loadForBalance(o.ckpt);
  const c = model.config;
  const E = c.experts!.count;
  const placement = choosePlacement(E, o.devices, o.placementFile);
  const T = o.seqLen ?? c.seqLen;
  if (T > c.seqLen) throw new SigmaError(`--seq-len ${T} is longer than the model's seqLen ${c.seqLen}`, `use --seq-len ${c.seqLen} or less`);

  // Sample only the data domains the model knows, in proportion to their tokens.
  const manifest = readManifest(join(o.data, "manifest.json"));
  const known = new Set(c.domains.map((d) => d.name));
  const weights = Object.fromEntries(manifest.domains.filter((d) => known.has(d.name)).map((d) => [d.name, d[o.split].tokens]));
  if (Object.keys(weights).length === 0) {
    throw new SigmaError(
      `none of the data's domains (${manifest.domains.map((d) => d.name).join(", ")}) is a domain of the model (${[...known].join(", ")})`,
      "use data prepared for this model",
    );
  }
  const loader = new Loader(o.data, { split: o.split, seqLen: T, batchSize: o.batchSize, seed: o.seed, weights });
  const domainOf = manifestDomainIndices(model, loader.manifest);
  const layers = Array.from({ length: c.sparseLayers }, () => new LayerBalance(E, placement, o.capacityFactor));
  const routings: RoutedBatch[][] = [];
  for (let i = 0; i < o.batches; i++) {
    const rbs = routeBatch(model, loader.next(), domainOf, loader.manifest);
    rbs.forEach((rb, l) => layers[l]!.add(rb));
    if (o.keepRoutings) routings.push(rbs);
  }
  return {
    router: c.experts!.router.kind,
    experts: E,
    k: expertsPerToken(c),
    placement,
    capacityFactor: o.capacityFactor,
    tokensPerBatch: o.batchSize * T,
    layers,
    routings,
    model,
  };
}
