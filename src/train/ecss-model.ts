/**
 * The model side of ECSS: the store layout a model config implies, a fresh
 * model whose experts are written into a new store as they are drawn, and
 * the experts RRE will need for a batch (known before the forward pass).
 */
import type { ModelConfig } from "../models/config.js";
import { PanguSigma } from "../models/pangu-sigma.js";
import { ExpertStoreFile, StoreBuilder } from "../store/file.js";
import { tensorOffsets, type LayerLayout } from "../store/format.js";
import { SigmaError } from "../util/errors.js";
import type { ExpertShard } from "../moe/expert-parallel.js";

export { statsPath } from "../store/tier.js";

/**
 * The store layout of a model config: one entry per sparse layer. `held`:
 * experts per layer the store holds (expert parallel: a rank's shard of
 * them, as store-local ids 0 … held − 1); default all of them.
 */
export function storeLayout(c: ModelConfig, held?: number): LayerLayout[] {
  const ex = c.experts;
  if (!ex || c.sparseLayers === 0) throw new SigmaError("an expert store needs a model with sparse layers", "set model.sparseLayers > 0 and model.experts, or turn store.enabled off");
  return Array.from({ length: c.sparseLayers }, () => ({ experts: held ?? ex.count, width: c.width, expertWidth: ex.width ?? c.ffnWidth }));
}

/**
 * A fresh model whose experts go straight into a new store at `path` as the
 * init draws them: the full [E, …] tensors never exist in RAM, and the values
 * equal those of `new PanguSigma(config)` (same random stream). Expert
 * parallel (`shard`): the model is this rank's, and the store holds only the
 * shard's experts (expert `first + i` as record i); every expert is still
 * drawn, so each gets the value one process gives it.
 */
export function createModelWithStore(config: ModelConfig, path: string, shard?: ExpertShard): { model: PanguSigma; store: ExpertStoreFile } {
  const layout = storeLayout(config, shard?.count);
  const b = new StoreBuilder(path, layout);
  const [first, count] = shard ? [shard.first, shard.count] : [0, config.experts?.count ?? 0];
  const model = new PanguSigma(config, "float32", {
    externalExperts: {
      onInit: (block, name, e, values) => {
        if (e < first || e >= first + count) return;
        const l = block - config.denseLayers;
        const o = tensorOffsets(layout[l]!);
        b.put(l, e - first, name === "w1" ? o.w1 : o.w2, values);
      },
    },
    ...(shard ? { expertShard: shard } : {}),
  });
  return { model, store: b.finish() };
}

/** Whether every sparse layer's router knows the experts a batch needs before the forward pass (RRE): the store can read them ahead. */
export function knowsExpertsAhead(model: PanguSigma): boolean {
  const routers = model.blocks.flatMap((b) => (b.moe ? [b.moe.router] : []));
  return routers.length > 0 && routers.every((r) => r.expertsNeeded !== undefined);
}

/** Experts needed per sparse layer for these rows (token ids with their domain index), known before the forward; null for routers that cannot tell (learned ones). */
export function expertsNeededAhead(model: PanguSigma, tokens: Int32Array, domainOfRow: Int32Array): Set<number>[] | null {
  const out: Set<number>[] = [];
  for (const b of model.blocks) {
    if (!b.moe) continue;
    const need = b.moe.router.expertsNeeded?.(tokens, domainOfRow);
    if (!need) return null;
    out.push(need);
  }
  return out;
}
