/**
 * Domain sub-models cut out of a sparse model (PAPERS.md §2, §7).
 *
 * RRE (`extractRre`): a domain's tokens only ever reach its own expert group,
 * so its sub-model — the group's experts re-indexed from 0, its embedding
 * slot, its slice of each routing table, and every dense part — computes
 * exactly the full model's logits on that domain (loss-free extraction).
 *
 * MoGE and top-k have no domain structure: `extractByUsage` keeps, per
 * sparse layer, the experts the domain's data used most, up to a budget.
 * The router's rows (and MoGE's scales) of the dropped experts go with them,
 * so the softmax runs over the kept experts only: the sub-model is an
 * approximation, and the caller measures what it costs in validation loss.
 */
import { noGrad } from "../autograd/tape.js";
import { SigmaError } from "../util/errors.js";
import { parseModelConfig, type ModelConfig, type RouterConfig } from "./config.js";
import { PanguSigma, type ModelInput } from "./pangu-sigma.js";

const MOE_PARAM = /^blocks\.(\d+)\.moe\.(w1|b1|w2|b2|router\.weight|router\.scale)$/;
const RRE_TABLE = /^blocks\.(\d+)\.moe\.router\.table$/;

function domainOf(model: PanguSigma, name: string): number {
  const names = model.config.domains.map((d) => d.name);
  const i = names.indexOf(name);
  if (i < 0) throw new SigmaError(`Unknown domain "${name}"; the model knows ${names.join(", ")}`, "pass one of them with --domain");
  return i;
}

function sparseConfig(model: PanguSigma): NonNullable<ModelConfig["experts"]> {
  const ex = model.config.experts;
  if (!ex || model.config.sparseLayers === 0) throw new SigmaError("the model is dense: it has no experts to extract", "extract from a sparse or mixed model");
  return ex;
}

/**
 * The sub-model of domain `d` keeping experts `kept[j]` (old ids, ascending)
 * in sparse layer j, with the router config `router`.
 */
function subModel(model: PanguSigma, d: number, kept: number[][], router: RouterConfig): PanguSigma {
  const c = model.config;
  const dom = c.domains[d]!;
  const ex = sparseConfig(model);
  const sub = parseModelConfig({
    ...c,
    domains: [{ name: dom.name, slot: 0, ...(router.kind === "rre" ? { group: 0 } : {}) }],
    embeddingSlots: 1,
    experts: { ...ex, count: kept[0]!.length, router },
  } satisfies ModelConfig, "the extracted model's config");
  const out = new PanguSigma(sub, model.tokenEmbedding.dtype);
  const src = model.namedParameters();
  const V = c.vocabSize;
  for (const [name, p] of out.namedParameters()) {
    const from = src.get(name)!.tensor;
    if (name === "tokenEmbedding") {
      p.tensor.data.set(from.data.subarray(dom.slot * V * c.width, (dom.slot + 1) * V * c.width));
      continue;
    }
    const m = MOE_PARAM.exec(name);
    if (!m) {
      p.tensor.data.set(from.data);
      continue;
    }
    // Stacked along the expert axis: copy the kept experts' slices in order.
    const ids = kept[Number(m[1]) - c.denseLayers]!;
    const n = from.size / from.dim(0);
    ids.forEach((e, i) => p.tensor.data.set(from.data.subarray(e * n, (e + 1) * n), i * n));
  }
  const buffers = model.namedBuffers();
  for (const [name, b] of out.namedBuffers()) {
    const m = RRE_TABLE.exec(name);
    if (!m) throw new Error(`extract: no rule for the state buffer "${name}"`);
    const table = buffers.get(name)!;
    const ids = kept[Number(m[1]) - c.denseLayers]!;
    const g = dom.group ?? 0;
    const newId = new Map(ids.map((e, i) => [e, i]));
    for (let t = 0; t < V; t++) b[t] = newId.get(table[g * V + t]!)!;
  }
  return out;
}

/** The loss-free RRE sub-model of one domain. */
export function extractRre(model: PanguSigma, domain: string): PanguSigma {
  const ex = sparseConfig(model);
  const r = ex.router;
  if (r.kind !== "rre") throw new SigmaError(`extractRre: the model routes with ${r.kind}, not rre`, "use extraction by usage (extractByUsage; `sigma extract --experts N`)");
  const d = domainOf(model, domain);
  const per = ex.count / r.groups;
  const g = model.config.domains[d]!.group!;
  const group = Array.from({ length: per }, (_, i) => g * per + i);
  return subModel(model, d, Array.from({ length: model.config.sparseLayers }, () => group), { ...r, groups: 1 });
}

/** Assignments per expert [E] of each sparse layer over `batches` (a forward without gradients, in eval mode). */
export function expertUsage(model: PanguSigma, batches: Iterable<ModelInput>): Float64Array[] {
  const E = sparseConfig(model).count;
  const usage = Array.from({ length: model.config.sparseLayers }, () => new Float64Array(E));
  const wasTraining = model.training;
  model.eval();
  try {
    for (const b of batches) {
      const out = noGrad(() => model.forward(b));
      out.routings.forEach((r, l) => r.counts.forEach((n, e) => (usage[l]![e]! += n)));
    }
  } finally {
    model.train(wasTraining);
  }
  return usage;
}

/** The `n` most used of ids (ties to the lower id), ascending. */
function mostUsed(use: Float64Array, ids: number[], n: number): number[] {
  return [...ids].sort((a, b) => use[b]! - use[a]! || a - b).slice(0, n).sort((a, b) => a - b);
}

/**
 * The experts a domain's sub-model keeps in each sparse layer (old ids,
 * ascending): the `experts` most used according to `usage` (from expertUsage
 * on the domain's data). MoGE keeps the same number from each group (experts
 * must be a multiple of the groups), so its balance by construction survives.
 */
export function keptByUsage(model: PanguSigma, usage: Float64Array[], experts: number): number[][] {
  const ex = sparseConfig(model);
  const r = ex.router;
  const E = ex.count;
  if (usage.length !== model.config.sparseLayers || usage.some((u) => u.length !== E)) throw new RangeError(`extractByUsage: usage must be ${model.config.sparseLayers} arrays of ${E} counts`);
  if (!Number.isInteger(experts) || experts < 1 || experts > E) throw new SigmaError(`cannot keep ${experts} experts of ${E}`, `pass --experts between 1 and ${E}`);
  const all = Array.from({ length: E }, (_, e) => e);
  switch (r.kind) {
    case "rre":
      throw new SigmaError("the model routes with rre: its domain sub-model is exact, no budget needed", "use extractRre (`sigma extract` without --experts)");
    case "topk": {
      if (r.k > experts) throw new SigmaError(`cannot keep ${experts} experts: the router picks k = ${r.k} per token`, `pass --experts ${r.k} or more`);
      return usage.map((u) => mostUsed(u, all, experts));
    }
    case "moge": {
      const per = E / r.groups;
      if (experts % r.groups !== 0) throw new SigmaError(`cannot keep ${experts} experts: MoGE keeps the same number from each of its ${r.groups} groups`, `pass a multiple of ${r.groups}`);
      const keep = experts / r.groups;
      if (keep < r.perGroup) throw new SigmaError(`cannot keep ${keep} experts per group: the router picks ${r.perGroup} per group`, `pass --experts ${r.perGroup * r.groups} or more`);
      return usage.map((u) => Array.from({ length: r.groups }, (_, g) => mostUsed(u, all.slice(g * per, (g + 1) * per), keep)).flat());
    }
  }
}

/** A domain's sub-model keeping, in every sparse layer, the experts keptByUsage chooses. */
export function extractByUsage(model: PanguSigma, domain: string, usage: Float64Array[], experts: number): PanguSigma {
  const r = sparseConfig(model).router;
  const d = domainOf(model, domain);
  return subModel(model, d, keptByUsage(model, usage, experts), r);
}
