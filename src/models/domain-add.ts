/**
 * A new domain for a trained model ("extendable to various domains without
 * retraining", PanGu-Σ; docs/domains.md). `growDomain` returns the grown
 * model and the parameter ranges that are new — the only ones training may
 * touch afterwards (src/train/domain-train.ts).
 *
 * The router says how its layers grow (its `growth`, src/moe/routers):
 *
 * By domain (RRE, the exact case): a new expert group of E/G experts in
 * every sparse layer, owned by the new domain alone. Its experts start as
 * copies of a named domain's group (`from`), with that domain's table row
 * (token t reaches the copy of the expert it reached there), or fresh (the
 * constructor's init, a newly drawn row). The old groups' rows keep every
 * token's expert. No old domain's token can reach the new group, so with
 * the old parameters frozen their sub-models stay bit-identical.
 *
 * Shared routing (MoGE, top-k, the measured case): new experts are appended
 * (MoGE: one per group, so its groups stay equal) with new router rows, at
 * their init (MoGE's scales: 1); the old rows are frozen. The softmax is
 * shared, so a new row takes some of the old domains' tokens: their loss
 * moves, by how much test/domain-add.test.ts measures and docs/domains.md
 * records.
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
import { extendRows, type VocabMap } from "./vocab-map.js";

export interface GrowDomainOptions {
  /** The new domain's name (not one the model has). */
  name: string;
  /** Routers by domain: start from this domain's experts, routing and embedding slot; null = fresh experts. */
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
  /** Whether the old domains' sub-models stay bit-identical (the router routes by domain). */
  exact: boolean;
}

/** The stacked expert weights [E, …] of a sparse block. */
const EXPERT_PARAM = /^blocks\.(\d+)\.moe\.(w1|b1|w2|b2)$/;
/** A router's own parameters; those with E rows are per-expert rows. */
const ROUTER_PARAM = /^blocks\.\d+\.moe\.router\./;

export function growDomain(model: PanguSigma, o: GrowDomainOptions): GrownModel {
  const c = model.config;
  const ex = c.experts;
  if (!ex || c.sparseLayers === 0) throw new SigmaError("the model is dense: a new domain needs sparse layers to give it experts", "add a domain to a sparse or mixed model (upcycle a dense one first: sigma upcycle)");
  const names = c.domains.map((d) => d.name);
  if (names.includes(o.name)) throw new SigmaError(`the model already has a domain "${o.name}"`, "pick a new name with --name");
  const { spec, view } = modelRouter(c)!;
  const growth = spec.growth;
  if (!growth) throw new SigmaError(`the ${ex.router.kind} router cannot grow by a domain`, "add domains to an RRE, MoGE or top-k model");
  const fromIndex = o.from === null ? null : names.indexOf(o.from);
  if (fromIndex !== null && fromIndex < 0) throw new SigmaError(`--experts-from: the model has no domain "${o.from}"; it has ${names.join(", ")}`, "name one of them, or pass --fresh");
  if (fromIndex !== null && !growth.copies) throw new SigmaError(`the ${ex.router.kind} router's experts belong to no domain: there are none to copy`, "leave out --experts-from: new experts start fresh");
  if (o.vocab.oldSize !== c.vocabSize) throw new SigmaError(`the vocabulary map starts from ${o.vocab.oldSize} tokens but the model has ${c.vocabSize}`, "pass the tokenizer the model was trained with");
  const params = model.namedParameters();
  const inMemory = model.blocks.every((b) => !b.moe || params.has(`blocks.${b.layer}.moe.w1`));
  for (const [name, p] of params) {
    if (!inMemory || (EXPERT_PARAM.test(name) && p.tensor.dim(0) !== ex.count)) throw new SigmaError("the model's experts are not all in memory (an ECSS or expert-parallel model)", "open the model whole (a checkpoint saved by sigma train without an expert store)");
  }

  // The grown config: one more domain, its experts, its slot, the new vocabulary size.
  const g = growth.grow(view);
  const slot = c.embeddingSlots > 1 ? c.embeddingSlots : 0;
  const config = parseModelConfig(
    {
      ...c,
      vocabSize: o.vocab.newSize,
      embeddingSlots: c.embeddingSlots > 1 ? c.embeddingSlots + 1 : 1,
      domains: [...c.domains, { name: o.name, slot, ...(g.group === undefined ? {} : { group: g.group }), added: true }],
      experts: { ...ex, count: ex.count + g.experts, router: g.router },
    } satisfies ModelConfig,
    "the grown model's config",
  );
  const grown = new PanguSigma(config, model.tokenEmbedding.dtype);
  const [E, En] = [ex.count, config.experts!.count];
  const oldIds = growth.oldIds(view, g.experts);
  const copies = fromIndex !== null ? growth.copies!(view, fromIndex, g.experts) : new Int32Array(En).fill(-1);
  const [Vo, Vn, C] = [c.vocabSize, config.vocabSize, c.width];
  const freshSlot = config.embeddingSlots > c.embeddingSlots;
  // A new slot starts as the `from` domain's (the first domain's when fresh) [ours].
  const slotSource = (s: number): number => (s < c.embeddingSlots ? s : c.domains[fromIndex ?? 0]!.slot);
  const trainable: NewRange[] = [];

  for (const [name, p] of grown.namedParameters()) {
    const dst = p.tensor.data;
    const from = params.get(name)?.tensor;
    if (!from) throw new SigmaError(`cannot grow the model: it has no "${name}"`);
    if (name === "tokenEmbedding") {
      for (let s = 0; s < config.embeddingSlots; s++) {
        const ss = slotSource(s);
        extendRows(o.vocab, from.data.subarray(ss * Vo * C, (ss + 1) * Vo * C), dst.subarray(s * Vn * C, (s + 1) * Vn * C), C);
      }
      if (freshSlot) trainable.push({ name, start: slot * Vn * C, end: (slot + 1) * Vn * C });
      else o.vocab.oldId.forEach((old, t) => old < 0 && trainable.push({ name, start: (slot * Vn + t) * C, end: (slot * Vn + t + 1) * C }));
      continue;
    }
    const perExpert = EXPERT_PARAM.test(name) || (ROUTER_PARAM.test(name) && from.dim(0) === E && p.tensor.dim(0) === En);
    if (!perExpert) {
      if (from.size !== p.tensor.size) throw new SigmaError(`cannot grow the model: "${name}" is [${from.shape}] but the grown model's is [${p.tensor.shape}]`);
      dst.set(from.data);
      continue;
    }
    // Stacked along the expert axis: old experts (and router rows) move to their new ids; new ones are copies or keep their init.
    const n = from.size / E;
    for (let e = 0; e < En; e++) {
      const old = oldIds[e]! >= 0 ? oldIds[e]! : copies[e]!;
      if (old >= 0) dst.set(from.data.subarray(old * n, (old + 1) * n), e * n);
      if (oldIds[e]! < 0) trainable.push({ name, start: e * n, end: (e + 1) * n });
    }
  }
  // The routers' buffers (RRE's tables) follow the vocabulary and the copy.
  grown.blocks.forEach((b, l) => b.moe?.router.growFrom?.(model.blocks[l]!.moe!.router, o.vocab.oldId, fromIndex));
  const grownView = modelRouter(config)!;
  for (const [name, table] of grown.namedBuffers()) {
    const err = grownView.spec.checkBuffer?.(grownView.view, name.slice(name.lastIndexOf(".") + 1), table);
    if (err) throw new Error(`growDomain: the grown ${name} ${err}`);
  }
  return { model: grown, trainable, domain: config.domains.length - 1, slot: { index: slot, fresh: freshSlot }, newExperts: g.experts, exact: growth.exact };
}
