/**
 * `upcycle(dense, sparseConfig, options)`: inheritance from a dense model
 * (docs/design.md §9) — a sparse model whose experts start as the dense FFNs,
 * with the vocabulary extended when a larger tokenizer is given, checked on
 * the spot against the dense model's logits on the old vocabulary.
 */
import { noGrad } from "../autograd/tape.js";
import { modelRouter, parseModelConfig, type ModelConfig, type ModelConfigInput } from "../models/config.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import { upcycle as growSparse } from "../models/upcycle.js";
import { identityVocab, newIdsOfOld, vocabMapping, type VocabMap } from "../models/vocab-map.js";
import { fromHfJson, loadTokenizer } from "../tokenizer/hfjson.js";
import { Tokenizer } from "../tokenizer/codec.js";
import { readRegularFile } from "../util/read.js";
import { Rng } from "../util/rng.js";
import { SigmaError } from "../util/errors.js";
import { Model } from "./model.js";

export interface UpcycleOptions {
  /** A larger tokenizer.json to extend the vocabulary to (rows matched by token string). */
  tokenizer?: string;
  /** The dense model's tokenizer.json, when the dense model does not carry one. */
  oldTokenizer?: string;
  /** Gaussian noise on each expert copy, as a fraction of the weight's std (default 0: exact copies). */
  noise?: number;
  /** Seed of the noise (default 1). */
  seed?: number;
}

export interface UpcycleResult {
  model: Model;
  /** Largest |Δlogit| between the dense and the sparse model on old-vocabulary tokens. */
  gap: number;
  /** Whether this router and noise preserve the dense function exactly (then gap ≈ 0). */
  exact: boolean;
  /** What the router drew that is now part of the model (e.g. RRE's tables and their seed), or null. */
  drawn: string | null;
  vocabulary: { old: number; new: number; kept: number };
}

/**
 * Largest |Δlogit| between the dense and the sparse model on random tokens
 * of the old vocabulary that both keep, every domain the two share by name.
 */
export function upcycleGap(dense: PanguSigma, sparse: PanguSigma, map: VocabMap, seed = 1): number {
  const toNew = newIdsOfOld(map);
  const shared = Array.from({ length: map.oldSize }, (_, i) => i).filter((i) => toNew[i]! >= 0);
  const T = Math.min(dense.config.seqLen, 32);
  const rng = new Rng(seed);
  const oldIds = Array.from({ length: T }, () => shared[rng.int(shared.length)]!);
  const [Vo, Vn] = [map.oldSize, map.newSize];
  let gap = 0;
  dense.config.domains.forEach((dom, d) => {
    const s = sparse.config.domains.findIndex((x) => x.name === dom.name);
    if (s < 0) return;
    const a = noGrad(() => dense.eval().forward({ tokens: Int32Array.from(oldIds), domains: Int32Array.of(d), B: 1, T }).logits.data);
    const b = noGrad(() => sparse.eval().forward({ tokens: Int32Array.from(oldIds, (i) => toNew[i]!), domains: Int32Array.of(s), B: 1, T }).logits.data);
    for (let t = 0; t < T; t++) for (const o of shared) gap = Math.max(gap, Math.abs(a[t * Vo + o]! - b[t * Vn + toNew[o]!]!));
  });
  return gap;
}

/** Whether upcycling with this router preserves the dense model's function: its weights sum to 1 and no noise (src/models/upcycle.ts). */
function preservesFunction(c: ModelConfig, noise: number): boolean {
  return (modelRouter(c)?.spec.weightsSumToOne ?? false) && noise === 0;
}

export function upcycle(dense: Model, sparseConfig: ModelConfigInput | ModelConfig, o: UpcycleOptions = {}): UpcycleResult {
  const target = parseModelConfig(sparseConfig, "the sparse model config");
  const noise = o.noise ?? 0;
  let vocab = identityVocab(dense.config.vocabSize);
  let tokenizerText = dense.tokenizerText;
  let tokenizer = dense.tokenizer;
  if (o.tokenizer) {
    const oldTok = o.oldTokenizer ? loadTokenizer(o.oldTokenizer).tokenizer : dense.tokenizer;
    if (!oldTok) throw new SigmaError(`${dense.path ?? "the dense model"} carries no tokenizer, so its rows cannot be matched to ${o.tokenizer}`, "pass the dense model's tokenizer with --old-tokenizer");
    if (!(oldTok instanceof Tokenizer)) throw new SigmaError(`${dense.path ?? "the dense model"} carries a Hugging Face tokenizer; extending the vocabulary matches rows between two Sigma tokenizers`, "upcycle without --tokenizer (the vocabulary stays as it is)");
    if (oldTok.vocabSize !== dense.config.vocabSize) throw new SigmaError(`the old tokenizer has ${oldTok.vocabSize} tokens but the dense model's vocabulary is ${dense.config.vocabSize}`, "pass the tokenizer the dense model was trained with");
    // Read once: the text saved with the model is the tokenizer its rows were matched to.
    tokenizerText = readRegularFile(o.tokenizer, "tokenizer", "pass a tokenizer.json file", 512 * 2 ** 20).toString("utf8");
    const newTok = fromHfJson(tokenizerText, o.tokenizer);
    tokenizer = newTok;
    vocab = vocabMapping(oldTok, newTok);
  }
  const sparse = growSparse(dense.network, target, { vocab, noise, noiseSeed: o.seed ?? 1 });
  const kept = vocab.oldId.reduce((n, id) => n + (id >= 0 ? 1 : 0), 0);
  const gap = upcycleGap(dense.network, sparse, vocab);
  const model = new Model(sparse, tokenizer, null, 0, dense.dataDir, null, tokenizerText);
  return { model, gap, exact: preservesFunction(target, noise), drawn: modelRouter(target)?.spec.drawn ?? null, vocabulary: { old: vocab.oldSize, new: vocab.newSize, kept } };
}
