/**
 * Domain sub-models cut out of a sparse model (docs/design.md §10). How is the
 * router's to say (src/moe/routers, `extraction`):
 *
 * Exact (`extractByDomain`; RRE): a domain's tokens only ever reach its own
 * experts, so its sub-model — those experts re-indexed from 0, its embedding
 * slot, the router's state for them, and every dense part — computes exactly
 * the full model's logits on that domain (loss-free extraction).
 *
 * Added domains (`sigma domain add`): a domain's sub-model leaves out the
 * control tokens of the domains added after it (domainVocabulary), so an old
 * domain's sub-model is, byte for byte, the one it had before they came; its
 * logits are the full model's on every token it keeps.
 *
 * By usage (`extractByUsage`; MoGE, top-k): routers without domain structure
 * keep, per sparse layer, the experts the domain's data used most, up to a
 * budget. The router's rows (and MoGE's scales) of the dropped experts go
 * with them, so the softmax runs over the kept experts only: the sub-model is
 * an approximation, and the caller measures what it costs in validation loss.
 */
import { noGrad } from "../autograd/tape.js";
import { SigmaError } from "../util/errors.js";
import { modelRouter, parseModelConfig, type ModelConfig, type RouterConfig } from "./config.js";
import { PanguSigma, type ModelInput } from "./pangu-sigma.js";

/** The stacked expert weights [E, …] of a sparse block. */
const EXPERT_PARAM = /^blocks\.(\d+)\.moe\.(w1|b1|w2|b2|w3|b3)$/;
/** A router's own state: the router copies it (RouterModule.copyKept). */
const ROUTER_STATE = /^blocks\.\d+\.moe\.router\./;

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
 * in sparse layer j, with the router config `router` and, when the router
 * routes by domain, the expert group `group` for its one domain.
 */
function subModel(model: PanguSigma, d: number, kept: number[][], router: RouterConfig, group?: number, tokens?: Int32Array): PanguSigma {
  const c = model.config;
  const dom = c.domains[d]!;
  const ex = sparseConfig(model);
  const sub = parseModelConfig({
    ...c,
    ...(tokens ? { vocabSize: tokens.length } : {}),
    domains: [{ name: dom.name, slot: 0, ...(group === undefined ? {} : { group }), ...(dom.added ? { added: true } : {}) }],
    embeddingSlots: 1,
    experts: { ...ex, count: kept[0]!.length, router },
  } satisfies ModelConfig, "the extracted model's config");
  const out = new PanguSigma(sub, model.tokenEmbedding.dtype);
  const src = model.namedParameters();
  const V = c.vocabSize;
  for (const [name, p] of out.namedParameters()) {
    const from = src.get(name)!.tensor;
    if (name === "tokenEmbedding" || name === "outputEmbedding") {
      const C = c.width;
      if (!tokens) p.tensor.data.set(from.data.subarray(dom.slot * V * C, (dom.slot + 1) * V * C));
      else tokens.forEach((t, i) => p.tensor.data.set(from.data.subarray((dom.slot * V + t) * C, (dom.slot * V + t + 1) * C), i * C));
      continue;
    }
    if (ROUTER_STATE.test(name)) continue;
    const m = EXPERT_PARAM.exec(name);
    if (!m) {
      p.tensor.data.set(from.data);
      continue;
    }
    // Stacked along the expert axis: copy the kept experts' slices in order.
    const ids = kept[Number(m[1]) - c.denseLayers]!;
    const n = from.size / from.dim(0);
    ids.forEach((e, i) => p.tensor.data.set(from.data.subarray(e * n, (e + 1) * n), i * n));
  }
  out.blocks.forEach((b, l) => b.moe?.router.copyKept(model.blocks[l]!.moe!.router, kept[l - c.denseLayers]!, d, tokens));
  return out;
}

/**
 * The token ids (ascending) of the vocabulary domain `domain` knows: every id
 * but the control tokens of domains added after it (`sigma domain add`
 * appends one per domain, src/models/domain-add.ts); null when that is the
 * whole vocabulary. `controlToken` gives a domain's control-token id.
 */
export function domainVocabulary(model: PanguSigma, domain: string, controlToken: (name: string) => number): Int32Array | null {
  const c = model.config;
  const d = domainOf(model, domain);
  const drop = new Set(c.domains.filter((x, i) => i > d && x.added).map((x) => controlToken(x.name)));
  if (drop.size === 0) return null;
  return Int32Array.from({ length: c.vocabSize }, (_, i) => i).filter((i) => !drop.has(i));
}

/** The loss-free sub-model of one domain, for a router that confines each domain to its own experts (RRE). */
export function extractByDomain(model: PanguSigma, domain: string, tokens?: Int32Array | null): PanguSigma {
  sparseConfig(model);
  const { spec, view } = modelRouter(model.config)!;
  const r = model.config.experts!.router;
  const how = spec.extraction;
  if (!how.exact) throw new SigmaError(`the model routes with ${r.kind}, which has no domain structure to extract by`, "use extraction by usage (extractByUsage; `sigma extract --experts N`)");
  const d = domainOf(model, domain);
  const experts = how.experts(view, d);
  return subModel(model, d, Array.from({ length: model.config.sparseLayers }, () => experts), how.router, how.group, tokens ?? undefined);
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

/**
 * The experts a domain's sub-model keeps in each sparse layer (old ids,
 * ascending): the `experts` most used according to `usage` (from expertUsage
 * on the domain's data), as the router chooses them (MoGE keeps the same
 * number from each group, so its balance by construction survives).
 */
export function keptByUsage(model: PanguSigma, usage: Float64Array[], experts: number): number[][] {
  const ex = sparseConfig(model);
  const E = ex.count;
  if (usage.length !== model.config.sparseLayers || usage.some((u) => u.length !== E)) throw new RangeError(`extractByUsage: usage must be ${model.config.sparseLayers} arrays of ${E} counts`);
  if (!Number.isInteger(experts) || experts < 1 || experts > E) throw new SigmaError(`cannot keep ${experts} experts of ${E}`, `pass --experts between 1 and ${E}`);
  const how = modelRouter(model.config)!.spec.extraction;
  if (how.exact) throw new SigmaError(`the model routes with ${ex.router.kind}: its domain sub-model is exact, no budget needed`, "use extractByDomain (`sigma extract` without --experts)");
  return usage.map((u) => how.keep(u, experts));
}

/** A domain's sub-model keeping, in every sparse layer, the experts keptByUsage chooses. */
export function extractByUsage(model: PanguSigma, domain: string, usage: Float64Array[], experts: number, tokens?: Int32Array | null): PanguSigma {
  const r = sparseConfig(model).router;
  const d = domainOf(model, domain);
  return subModel(model, d, keptByUsage(model, usage, experts), r, undefined, tokens ?? undefined);
}
