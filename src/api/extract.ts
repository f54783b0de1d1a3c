/**
 * `extract(model, options)`: a domain's sub-model (docs/design.md §10). An RRE
 * model gives the exact, loss-free sub-model (its domain's expert group),
 * checked on the spot against the full model's logits; MoGE and top-k models
 * keep the experts the domain's training data uses most, up to `experts` per
 * sparse layer, and the result says what that costs in validation loss.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { noGrad } from "../autograd/tape.js";
import { Loader } from "../data/loader.js";
import { modelRouter } from "../models/config.js";
import { domainVocabulary, expertUsage, extractByDomain, extractByUsage, keptByUsage } from "../models/extract.js";
import { Tokenizer } from "../tokenizer/codec.js";
import { toHfJson } from "../tokenizer/hfjson.js";
import type { ModelInput, PanguSigma } from "../models/pangu-sigma.js";
import * as ops from "../ops/index.js";
import { checkBatchFits } from "../train/memory.js";
import { domainIndexOf } from "../serve/prompt.js";
import { Rng } from "../util/rng.js";
import { SigmaError } from "../util/errors.js";
import { Model } from "./model.js";

export interface ExtractOptions {
  /** The domain to keep. */
  domain: string;
  /** MoGE / top-k: experts kept per sparse layer (the most used on the domain's training data). */
  experts?: number;
  /** MoGE / top-k: prepared data to measure usage and validation loss on (default: the data the model was trained on). */
  data?: string;
  /** MoGE / top-k: batches for usage and for validation loss (default 8). */
  batches?: number;
  /** Sequences per batch (default 8). */
  batchSize?: number;
  /** @internal How errors name the options (the CLI passes its flags). */
  names?: { experts: string; data: string; batchSize: string };
}

export interface ExtractResult {
  model: Model;
  /** The router kind of the full model. */
  router: string;
  parameters: { before: number; after: number };
  /** Exact extraction (a router with domain structure, RRE): largest |Δlogit| against the full model on the domain (expected 0). */
  maxLogitGap: number | null;
  /** By usage: validation loss of the full and the sub-model on the domain. */
  valLoss: { full: number; sub: number } | null;
  /** By usage: per sparse layer, the share of the domain's assignments the kept experts carried. */
  carried: number[] | null;
  /** By usage: the data folder used. */
  data: string | null;
}

/** `count` batches of one domain's tokens from a split, with the model's domain index. */
function* domainBatches(dataDir: string, split: "train" | "val", domain: string, d: number, T: number, B: number, count: number): Generator<ModelInput & { targets: Int32Array }> {
  const loader = new Loader(dataDir, { split, seqLen: T, batchSize: B, seed: 1, weights: { [domain]: 1 } });
  try {
    for (let i = 0; i < count; i++) {
      const b = loader.next();
      yield { tokens: b.x, targets: b.y, domains: new Int32Array(b.B).fill(d), B: b.B, T: b.T };
    }
  } finally {
    loader.close();
  }
}

/** Batches with the full model's token ids renumbered into a sub-model's vocabulary (`kept`: full id of each sub id). */
function* toSubIds(batches: Iterable<ModelInput & { targets: Int32Array }>, kept: Int32Array | null): Generator<ModelInput & { targets: Int32Array }> {
  if (!kept) return yield* batches;
  const subId = new Int32Array(kept[kept.length - 1]! + 1).fill(-1);
  kept.forEach((t, i) => (subId[t] = i));
  for (const b of batches) yield { ...b, tokens: b.tokens.map((t) => subId[t]!), targets: b.targets.map((t) => subId[t]!) };
}

function meanLoss(model: PanguSigma, batches: Iterable<ModelInput & { targets: Int32Array }>): number {
  model.eval();
  let sum = 0, n = 0;
  for (const b of batches) {
    sum += noGrad(() => ops.crossEntropy(model.forward(b).logits, b.targets).item()) * b.B * b.T;
    n += b.B * b.T;
  }
  return sum / n;
}

/**
 * Largest |Δlogit| between the full model on `domain` and its sub-model, on
 * random tokens; `kept` (the full model's id of each sub-model token, when
 * the sub-model keeps part of the vocabulary) maps the ids.
 */
function extractionGap(full: PanguSigma, sub: PanguSigma, d: number, kept: Int32Array | null): number {
  const T = Math.min(full.config.seqLen, 32);
  const rng = new Rng(1);
  const [V, Vs] = [full.config.vocabSize, sub.config.vocabSize];
  const subTokens = Int32Array.from({ length: 2 * T }, () => rng.int(Vs));
  const tokens = kept ? subTokens.map((t) => kept[t]!) : subTokens;
  const a = noGrad(() => full.eval().forward({ tokens, domains: Int32Array.of(d, d), B: 2, T }).logits.data);
  const b = noGrad(() => sub.eval().forward({ tokens: subTokens, domains: Int32Array.of(0, 0), B: 2, T }).logits.data);
  let gap = 0;
  for (let r = 0; r < 2 * T; r++) for (let i = 0; i < Vs; i++) gap = Math.max(gap, Math.abs(a[r * V + (kept ? kept[i]! : i)]! - b[r * Vs + i]!));
  return gap;
}

/** The tokenizer of a sub-model that leaves out the control tokens of the domains added after its own. */
function subTokenizer(tok: Tokenizer, model: PanguSigma, d: number): Tokenizer {
  const later = new Set(model.config.domains.filter((x, i) => i > d && x.added).map((x) => x.name));
  return new Tokenizer({ domains: tok.domains.filter((n) => !later.has(n)), langs: tok.langs, tokens: tok.vocab.slice(tok.specials.length), merges: [...tok.merges] }, "the sub-model's tokenizer");
}

export function extract(model: Model, o: ExtractOptions): ExtractResult {
  const names = o.names ?? { experts: "experts", data: "data", batchSize: "batchSize" };
  const full = model.network;
  const c = full.config;
  const where = model.path ?? "the model";
  const router = c.experts?.router.kind;
  if (!router || c.sparseLayers === 0) throw new SigmaError(`${where} is a dense model: it has no experts to extract`, "extract from a sparse or mixed model");
  const d = domainIndexOf(full, o.domain);
  const before = full.parameterCount();
  // Domains added after this one (sigma domain add) appended control tokens this one never knew: leave them out.
  const tok = model.tokenizer;
  const keptTokens = tok ? domainVocabulary(full, o.domain, (name) => tok.domainTokenId(name)) : null;
  const result = { router, maxLogitGap: null, valLoss: null, carried: null, data: null } as Omit<ExtractResult, "model" | "parameters">;
  let sub: PanguSigma;
  if (modelRouter(c)!.spec.extraction.exact) {
    if (o.experts !== undefined) throw new SigmaError(`${names.experts} is for routers without domain structure (MoGE, top-k); a ${router} sub-model keeps its domain's experts whole`, `leave out ${names.experts}`);
    sub = extractByDomain(full, o.domain, keptTokens);
    result.maxLogitGap = extractionGap(full, sub, d, keptTokens);
  } else {
    if (o.experts === undefined) throw new SigmaError(`a ${router} model has no domain structure: say how many experts per layer to keep`, `pass ${names.experts} N (of ${c.experts!.count}); the domain's most used experts are kept`);
    const dataDir = o.data ?? model.dataDir;
    if (!dataDir || !existsSync(join(dataDir, "manifest.json"))) throw new SigmaError(`no prepared data to measure expert usage on (${dataDir ?? "the checkpoint names none"})`, `pass ${names.data} <dir> (a folder written by \`sigma data prepare\`)`);
    const [T, B, n] = [c.seqLen, o.batchSize ?? 8, o.batches ?? 8];
    checkBatchFits(full, B, names.batchSize);
    const usage = expertUsage(full, domainBatches(dataDir, "train", o.domain, d, T, B, n));
    sub = extractByUsage(full, o.domain, usage, o.experts, keptTokens);
    result.valLoss = { full: meanLoss(full, domainBatches(dataDir, "val", o.domain, d, T, B, n)), sub: meanLoss(sub, toSubIds(domainBatches(dataDir, "val", o.domain, 0, T, B, n), keptTokens)) };
    const kept = keptByUsage(full, usage, o.experts);
    result.carried = usage.map((u, l) => kept[l]!.reduce((a, e) => a + u[e]!, 0) / Math.max(u.reduce((a, b) => a + b, 0), 1));
    result.data = dataDir;
  }
  let [subTok, subText] = [model.tokenizer, model.tokenizerText];
  if (keptTokens && tok instanceof Tokenizer) {
    subTok = subTokenizer(tok, full, d);
    subText = toHfJson(subTok);
  }
  const out = new Model(sub, subTok, null, model.step, model.dataDir, null, subText);
  return { model: out, parameters: { before, after: sub.parameterCount() }, ...result };
}
