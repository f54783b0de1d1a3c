/**
 * A new domain for a trained model ("extendable to various domains without
 * retraining", PanGu-Σ; docs/domains.md). `growDomain` returns the grown
 * model and the parameter ranges that are new — the only ones training may
 * touch afterwards (src/train/domain-train.ts).
 *
 * RRE (the exact case): a new expert group of E/G experts is appended to
 * every sparse layer, owned by the new domain alone. Its experts start as
 * copies of a named domain's group (`from`), with that domain's table row
 * (token t reaches the copy of the expert it reached there), or fresh (the
 * constructor's init, a newly drawn row). The old groups' rows of the table
 * keep every token's expert. No old domain's token can reach the new group,
 * so with the old parameters frozen their sub-models stay bit-identical.
 *
 * MoGE / top-k (the measured case): the router has no domain structure.
 * New experts are appended (MoGE: as many per group as there are groups, so
 * its groups stay equal), with new router rows (MoGE: new scales, 1); the
 * old rows are frozen. The softmax is shared, so a new row takes some of
 * the old domains' tokens: their loss moves, by how much is measured in
 * test/domain-add.test.ts and written in docs/domains.md.
 *
 * Embedding: a model with per-domain slots (embeddingSlots > 1) gets a new
 * slot, a copy of the `from` domain's slot (of the first domain's when
 * fresh) [ours]; a model with one shared slot keeps it, and only the new
 * tokens' rows there are new. The vocabulary grows by the new control token
 * (vocab-map.ts: every old token keeps its row, matched by string; a new
 * special starts as the mean of all old rows, in every slot).
 */
import { SigmaError } from "../util/errors.js";
import { modelRouter, parseModelConfig, type ModelConfig } from "./config.js";
import { PanguSigma } from "./pangu-sigma.js";
import { RreRouter } from "../moe/routers/rre.js";
import { extendRows, type VocabMap } from "./vocab-map.js";

export interface GrowDomainOptions {
  /** The new domain's name (not one the model has). */
  name: string;
  /** Copy this domain's experts, table row and embedding slot; null = fresh experts. */
  from: string | null;
  /** Old → new vocabulary: the old one plus the new control token. */
  vocab: VocabMap;
}

/** Elements [start, end) of a parameter that are new: training touches only these. */
export interface NewRange {
  name: string;
  start: number;
  end: number;
}

export interface GrownModel {
  model: PanguSigma;
  /** The new parameters, as ranges of the (stacked) tensors they live in. */
  trainable: NewRange[];
  /** The new domain's index. */
  domain: number;
  /** The embedding slot it uses, and whether that slot is new. */
  slot: { index: number; fresh: boolean };
  /** Experts appended per sparse layer. */
  newExperts: number;
}

/** The stacked expert weights [E, …] of a sparse block. */
const EXPERT_PARAM = /^blocks\.(\d+)\.moe\.(w1|b1|w2|b2)$/;
/** A learned router's per-expert rows (weight [E, C], MoGE's scale [E]). */
const ROUTER_ROWS = /^blocks\.(\d+)\.moe\.router\.(weight|scale)$/;

/** The grown config: one more domain, its experts, its slot and the new vocabulary size. */
function grownConfig(c: ModelConfig, o: GrowDomainOptions): { config: ModelConfig; newExperts: number } {
  const ex = c.experts;
  if (!ex || c.sparseLayers === 0) throw new SigmaError("the model is dense: a new domain needs sparse layers to give it experts", "add a domain to a sparse or mixed model (upcycle a dense one first: sigma upcycle)");
  const r = ex.router;
  const slot = c.embeddingSlots > 1 ? c.embeddingSlots : 0;
  let router = r;
  let newExperts: number;
  let group: number | undefined;
  if (r.kind === "rre") {
    newExperts = ex.count / r.groups;
    router = { ...r, groups: r.groups + 1 };
    group = r.groups;
  } else if (r.kind === "moge") {
    // One more expert in each group keeps MoGE's groups equal (its balance by construction).
    newExperts = r.groups;
  } else {
    // Top-k: k new experts, so that the new domain can route all its choices to new ones [ours].
    newExperts = r.k;
  }
  const config = parseModelConfig(
    {
      ...c,
      vocabSize: o.vocab.newSize,
      embeddingSlots: c.embeddingSlots > 1 ? c.embeddingSlots + 1 : 1,
      domains: [...c.domains, { name: o.name, slot, ...(group === undefined ? {} : { group }), added: true }],
      experts: { ...ex, count: ex.count + newExperts, router },
    } satisfies ModelConfig,
    "the grown model's config",
  );
  return { config, newExperts };
}

/**
 * Where expert e of the grown model comes from in the old one (−1: new).
 * RRE and top-k append the new experts at the end; MoGE appends one at the
 * end of each group (the router's groups are contiguous ranges of ids).
 */
export function oldExpertOf(c: ModelConfig, E: number, newExperts: number): Int32Array {
  const out = new Int32Array(E + newExperts).fill(-1);
  const r = c.experts!.router;
  if (r.kind === "moge") {
    const [per, G] = [E / r.groups, r.groups];
    for (let g = 0; g < G; g++) for (let i = 0; i < per; i++) out[g * (per + 1) + i] = g * per + i;
  } else {
    for (let e = 0; e < E; e++) out[e] = e;
  }
  return out;
}

export function growDomain(model: PanguSigma, o: GrowDomainOptions): GrownModel {
  const c = model.config;
  const names = c.domains.map((d) => d.name);
  if (names.includes(o.name)) throw new SigmaError(`the model already has a domain "${o.name}"`, "pick a new name with --name");
  const fromIndex = o.from === null ? null : names.indexOf(o.from);
  if (fromIndex !== null && fromIndex < 0) throw new SigmaError(`--experts-from: the model has no domain "${o.from}"; it has ${names.join(", ")}`, "name one of them, or pass --fresh");
  if (o.vocab.oldSize !== c.vocabSize) throw new SigmaError(`the vocabulary map starts from ${o.vocab.oldSize} tokens but the model has ${c.vocabSize}`, "pass the tokenizer the model was trained with");
  for (const [name, p] of model.namedParameters()) {
    if (EXPERT_PARAM.test(name) && p.tensor.dim(0) !== c.experts!.count) throw new SigmaError("the model's experts are not all in memory (an ECSS or expert-parallel model)", "open the model whole (a checkpoint saved by sigma train without an expert store)");
  }
  const { config, newExperts } = grownConfig(c, o);
  const grown = new PanguSigma(config, model.tokenEmbedding.dtype);
  const E = c.experts!.count;
  const En = config.experts!.count;
  const oldOf = oldExpertOf(c, E, newExperts);
  const r = c.experts!.router;
  // The experts the new ones copy (−1: keep the fresh init): RRE copies the `from` domain's group.
  const copyOf = new Int32Array(En).fill(-1);
  if (r.kind === "rre" && fromIndex !== null) {
    const g = c.domains[fromIndex]!.group!;
    for (let i = 0; i < newExperts; i++) copyOf[E + i] = g * newExperts + i;
  }
  const [Vo, Vn, C] = [c.vocabSize, config.vocabSize, c.width];
  const slotIndex = config.domains[config.domains.length - 1]!.slot;
  const freshSlot = config.embeddingSlots > c.embeddingSlots;
  const slotSource = (s: number): number => (s < c.embeddingSlots ? s : c.domains[fromIndex ?? 0]!.slot);
  const trainable: NewRange[] = [];
  const src = model.namedParameters();

  for (const [name, p] of grown.namedParameters()) {
    const dst = p.tensor.data;
    const from = src.get(name)?.tensor;
    if (!from) throw new SigmaError(`cannot grow the model: it has no "${name}"`);
    if (name === "tokenEmbedding") {
      for (let s = 0; s < config.embeddingSlots; s++) {
        const ss = slotSource(s);
        extendRows(o.vocab, from.data.subarray(ss * Vo * C, (ss + 1) * Vo * C), dst.subarray(s * Vn * C, (s + 1) * Vn * C), C);
      }
      if (freshSlot) trainable.push({ name, start: slotIndex * Vn * C, end: (slotIndex + 1) * Vn * C });
      else o.vocab.oldId.forEach((old, t) => old < 0 && trainable.push({ name, start: (slotIndex * Vn + t) * C, end: (slotIndex * Vn + t + 1) * C }));
      continue;
    }
    const stacked = EXPERT_PARAM.exec(name) ?? ROUTER_ROWS.exec(name);
    if (!stacked) {
      if (from.size !== p.tensor.size) throw new SigmaError(`cannot grow the model: "${name}" is [${from.shape}] but the grown model's is [${p.tensor.shape}]`);
      dst.set(from.data);
      continue;
    }
    // Stacked along the expert axis: old experts (and router rows) move to their new ids; new ones are fresh or copies.
    const n = from.size / E;
    for (let e = 0; e < En; e++) {
      const old = oldOf[e]!;
      if (old >= 0) dst.set(from.data.subarray(old * n, (old + 1) * n), e * n);
      else {
        if (copyOf[e]! >= 0) dst.set(from.data.subarray(copyOf[e]! * n, (copyOf[e]! + 1) * n), e * n);
        else if (name.endsWith(".scale")) dst.fill(1, e * n, (e + 1) * n);
        trainable.push({ name, start: e * n, end: (e + 1) * n });
      }
    }
  }
  // RRE tables: every old group keeps each token's expert (ids renumbered by the vocabulary map); the new group copies `from`'s row or keeps its drawn one.
  if (r.kind === "rre") {
    const G = r.groups;
    grown.blocks.forEach((b, l) => {
      if (!b.moe) return;
      const [t0, t1] = [(model.blocks[l]!.moe!.router as RreRouter).table, (b.moe.router as RreRouter).table];
      for (let g = 0; g < G; g++) {
        for (let t = 0; t < Vn; t++) {
          const old = o.vocab.oldId[t]!;
          if (old >= 0) t1[g * Vn + t] = t0[g * Vo + old]!;
        }
      }
      if (fromIndex === null) return;
      const gf = c.domains[fromIndex]!.group!;
      for (let t = 0; t < Vn; t++) {
        const old = o.vocab.oldId[t]!;
        if (old >= 0) t1[G * Vn + t] = t0[gf * Vo + old]! - gf * newExperts + G * newExperts;
      }
    });
  }
  const spec = modelRouter(config)!.spec;
  for (const [name, table] of grown.namedBuffers()) {
    const err = spec.checkBuffer?.(modelRouter(config)!.view, name.slice(name.lastIndexOf(".") + 1), table);
    if (err) throw new Error(`growDomain: the grown ${name} ${err}`);
  }
  return { model: grown, trainable, domain: config.domains.length - 1, slot: { index: slotIndex, fresh: freshSlot }, newExperts };
}
