/**
 * Routing real batches through a saved model: load it, map the data's domains
 * onto the model's, run the forward without gradients and keep each sparse
 * layer's routing.
 */
import { noGrad } from "../autograd/tape.js";
import type { Batch } from "../data/loader.js";
import type { Manifest } from "../data/manifest.js";
import { openModelSource } from "../serve/open.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import { SigmaError } from "../util/errors.js";
import type { RoutedBatch } from "./analysis.js";

/** The model of a checkpoint, in inference mode (the routers drop nothing there). */
export function loadForBalance(path: string): PanguSigma {
  const model = openModelSource(path).model.eval();
  if (model.config.sparseLayers === 0 || !model.config.experts) {
    throw new SigmaError(`${path} is a dense model: it has no router to analyse`, "pass a sparse or mixed model");
  }
  return model;
}

/** Model domain index of each data domain id, matched by name (−1: not in the model). */
export function manifestDomainIndices(model: PanguSigma, manifest: Manifest): Int32Array {
  const byName = new Map(model.config.domains.map((d, i) => [d.name, i]));
  const maxId = Math.max(...manifest.domains.map((d) => d.id));
  const map = new Int32Array(maxId + 1).fill(-1);
  for (const d of manifest.domains) map[d.id] = byName.get(d.name) ?? -1;
  return map;
}

/** One RoutedBatch per sparse layer for a loader batch. */
export function routeBatch(model: PanguSigma, batch: Batch, domainOf: Int32Array, manifest: Manifest): RoutedBatch[] {
  const c = model.config;
  const domains = new Int32Array(batch.B);
  for (let b = 0; b < batch.B; b++) {
    const id = batch.domain[b]!;
    const i = domainOf[id] ?? -1;
    if (i < 0) {
      const name = manifest.domains.find((d) => d.id === id)?.name ?? String(id);
      throw new SigmaError(
        `data domain "${name}" is not one of the model's domains (${c.domains.map((d) => d.name).join(", ")})`,
        `give it weight 0 with --domains, or use data prepared for this model`,
      );
    }
    domains[b] = i;
  }
  for (const t of batch.x) {
    if (t >= c.vocabSize) throw new SigmaError(`token id ${t} of the data is outside the model's vocabulary of ${c.vocabSize}`, "the data was tokenized with another tokenizer than the model's: prepare it with the model's tokenizer");
  }
  const out = noGrad(() => model.forward({ tokens: batch.x, domains, B: batch.B, T: batch.T }));
  const E = c.experts!.count;
  return out.routings.map((r) => ({ experts: E, k: r.k, expertIds: r.expertIds }));
}
