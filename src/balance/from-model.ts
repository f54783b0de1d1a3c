/**
 * Routing real batches through a saved model: load it, map the data's domains
 * onto the model's, run the forward without gradients and keep each sparse
 * layer's routing.
 */
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { noGrad } from "../autograd/tape.js";
import type { Batch } from "../data/loader.js";
import type { Manifest } from "../data/manifest.js";
import { loadModel } from "../models/io.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import { SigmaError } from "../util/errors.js";
import type { RoutedBatch } from "./analysis.js";

const MODEL_FILE = "model.safetensors";

/**
 * The model file of `path`: the file itself; or, for a folder, its
 * model.safetensors, or that of its newest `step-NNNNNNNN` checkpoint folder
 * (the layout src/checkpoint/folder.ts writes). Kept in one place so that a
 * new checkpoint layout changes only this function.
 */
export function resolveModelFile(path: string): string {
  if (!existsSync(path)) throw new SigmaError(`checkpoint ${path} does not exist`, "pass a model .safetensors file or a checkpoint folder");
  if (statSync(path).isFile()) return path;
  if (existsSync(join(path, MODEL_FILE))) return join(path, MODEL_FILE);
  const stepOf = (n: string) => Number(n.slice(5));
  const steps = readdirSync(path)
    .filter((n) => /^step-\d+$/.test(n) && existsSync(join(path, n, MODEL_FILE)))
    .sort((a, b) => stepOf(a) - stepOf(b));
  if (steps.length) return join(path, steps[steps.length - 1]!, MODEL_FILE);
  const found = readdirSync(path).filter((n) => n.endsWith(".safetensors"));
  if (found.length === 1) return join(path, found[0]!);
  throw new SigmaError(
    `no model file in ${path} (looked for ${MODEL_FILE}, step-*/${MODEL_FILE}, or a single *.safetensors)`,
    found.length ? `several .safetensors files are there (${found.join(", ")}): pass the model's file itself` : "pass the model file itself with --ckpt",
  );
}

/** The model of a checkpoint, in inference mode (the routers drop nothing there). */
export function loadForBalance(path: string): PanguSigma {
  const model = loadModel(resolveModelFile(path)).eval();
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
