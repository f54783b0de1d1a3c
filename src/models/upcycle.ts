/**
 * Inheritance learning (PanGu-Σ from PanGu-α, docs/design.md §9): a sparse model
 * grown from a trained dense one.
 *
 *  - attention, norms, position and query tables and the query layer are copied;
 *  - each expert of a sparse layer starts as that layer's dense FFN (sparse
 *    upcycling), optionally plus small noise so that experts can drift apart
 *    faster (off by default: with it the function is no longer preserved);
 *  - routers start fresh: RRE tables are drawn from the sparse config's seed
 *    (and saved with the model), learned routers get their normal init;
 *  - token embeddings follow the vocabulary map (vocab-map.ts) slot by slot.
 *
 * Why the function is preserved (with RRE): every expert is the same FFN and
 * RRE combines its one expert with weight 1, so the sparse layer is the
 * dense FFN. The same holds for top-k with renormalised weights (they sum to
 * 1) and no capacity drops; MoGE's weights sum to less than 1 and its shared
 * experts start fresh, so a MoGE model starts close to, not equal to, the
 * dense one.
 */
import { Rng } from "../util/rng.js";
import { SigmaError } from "../util/errors.js";
import { modelMode, type ModelConfig } from "./config.js";
import { PanguSigma } from "./pangu-sigma.js";
import { extendRows, identityVocab, type VocabMap } from "./vocab-map.js";

export interface UpcycleOptions {
  /** Old → new vocabulary (default: the identity; required when the sizes differ). */
  vocab?: VocabMap;
  /** Std of Gaussian noise added to each expert copy, as a fraction of that weight's own std; 0 = exact copies. */
  noise?: number;
  /** Seed of the noise. */
  noiseSeed?: number;
}

const EXPERT_PARAM = /^blocks\.(\d+)\.moe\.(w1|b1|w2|b2|w3|b3)$/;
const FRESH_PARAM = /^blocks\.\d+\.moe\.(router|shared|sharedGate)\./;
// SwiGLU experts' w3 (up) comes from the dense FFN's fc3, as w1 (gate) from fc1 and w2 (down) from fc2.
const DENSE_SOURCE: Record<string, string> = { w1: "ffn.fc1.weight", b1: "ffn.fc1.bias", w2: "ffn.fc2.weight", b2: "ffn.fc2.bias", w3: "ffn.fc3.weight", b3: "ffn.fc3.bias" };
/** The fields that shape the blocks: a sparse model grown from a dense one keeps them all. */
const SAME_FIELDS = ["width", "heads", "seqLen", "ffnWidth", "activation", "queryLayer", "layerNormEps", "norm", "position", "ropeTheta", "kvHeads", "headDim", "ffn", "ffnBias", "attentionBias", "qkNorm", "tiedEmbeddings"] as const;

/** Checks that `sparse` can grow from `dense`; names the first field that does not fit. */
function checkShapes(dense: ModelConfig, sparse: ModelConfig, vocab: VocabMap): void {
  const bad = (field: string, why: string, hint: string): never => {
    throw new SigmaError(`cannot upcycle: ${field} ${why}`, hint);
  };
  if (modelMode(dense) !== "dense") bad("the source model", `is ${modelMode(dense)}, not dense`, "upcycle from a dense model (sparseLayers 0)");
  if (!sparse.experts || sparse.sparseLayers === 0) bad("the target config", "has no sparse layers", "set sparseLayers > 0 and an experts section");
  const layers = sparse.denseLayers + sparse.sparseLayers;
  if (layers !== dense.denseLayers) bad("denseLayers + sparseLayers", `is ${layers} but the dense model has ${dense.denseLayers} layers`, `keep the depth: denseLayers + sparseLayers = ${dense.denseLayers}`);
  for (const f of SAME_FIELDS) {
    if (sparse[f] !== dense[f]) bad(f, `is ${JSON.stringify(sparse[f])} but the dense model's is ${JSON.stringify(dense[f])}`, `set ${f} to ${JSON.stringify(dense[f])}: upcycling copies the dense weights as they are`);
  }
  const ew = sparse.experts!.width ?? sparse.ffnWidth;
  if (ew !== dense.ffnWidth) bad("experts.width", `is ${ew} but the dense FFN is ${dense.ffnWidth} wide`, "leave experts.width unset (it defaults to ffnWidth): each expert is a copy of the dense FFN");
  if (vocab.oldSize !== dense.vocabSize) bad("the vocabulary map", `starts from ${vocab.oldSize} tokens but the dense model has ${dense.vocabSize}`, "pass the tokenizer the dense model was trained with");
  if (vocab.newSize !== sparse.vocabSize) {
    bad("vocabSize", `is ${sparse.vocabSize} but the vocabulary map gives ${vocab.newSize} tokens`, vocab.newSize === dense.vocabSize ? "to extend the vocabulary, pass the new tokenizer (sigma upcycle --tokenizer FILE)" : `set vocabSize to ${vocab.newSize}, the new tokenizer's size`);
  }
}

/**
 * The dense embedding slot each sparse slot inherits: the slot of a dense
 * domain with the same name as a sparse domain using it; else the same slot
 * number when the dense model has it; else slot 0 [ours].
 */
export function slotSources(dense: ModelConfig, sparse: ModelConfig): number[] {
  const denseSlot = new Map(dense.domains.map((d) => [d.name, d.slot]));
  return Array.from({ length: sparse.embeddingSlots }, (_, s) => {
    for (const d of sparse.domains) if (d.slot === s && denseSlot.has(d.name)) return denseSlot.get(d.name)!;
    return s < dense.embeddingSlots ? s : 0;
  });
}

function stdOf(a: ArrayLike<number>): number {
  const n = a.length;
  let s = 0, s2 = 0;
  for (let i = 0; i < n; i++) {
    s += a[i]!;
    s2 += a[i]! * a[i]!;
  }
  const m = s / n;
  return Math.sqrt(Math.max(0, s2 / n - m * m));
}

/** A sparse model of config `sparse` grown from the trained dense model. */
export function upcycle(dense: PanguSigma, sparse: ModelConfig, opts: UpcycleOptions = {}): PanguSigma {
  const vocab = opts.vocab ?? identityVocab(dense.config.vocabSize);
  checkShapes(dense.config, sparse, vocab);
  const noise = opts.noise ?? 0;
  if (!(noise >= 0)) throw new SigmaError(`upcycle: noise ${noise} must be 0 or more`, "use 0 (exact copies) or a small fraction such as 0.01");
  const rng = new Rng(opts.noiseSeed ?? 1);
  const model = new PanguSigma(sparse, dense.tokenEmbedding.dtype);
  const src = dense.namedParameters();
  const C = sparse.width;

  for (const [name, p] of model.namedParameters()) {
    const dst = p.tensor.data;
    if (name === "tokenEmbedding" || name === "outputEmbedding") {
      const [Vo, Vn] = [dense.config.vocabSize, sparse.vocabSize];
      const from = src.get(name)!.tensor.data;
      slotSources(dense.config, sparse).forEach((ds, s) => {
        extendRows(vocab, from.subarray(ds * Vo * C, (ds + 1) * Vo * C), dst.subarray(s * Vn * C, (s + 1) * Vn * C), C);
      });
      continue;
    }
    if (FRESH_PARAM.test(name)) continue;
    const m = EXPERT_PARAM.exec(name);
    const srcName = m ? `blocks.${m[1]}.${DENSE_SOURCE[m[2]!]}` : name;
    const s = src.get(srcName)?.tensor;
    if (!s) throw new SigmaError(`cannot upcycle: the dense model has no "${srcName}" for "${name}"`, "the dense model must be a Sigma dense model of the same depth and width");
    if (!m) {
      if (s.size !== p.tensor.size) throw new SigmaError(`cannot upcycle: "${name}" is [${p.tensor.shape}] in the sparse model but [${s.shape}] in the dense one`);
      dst.set(s.data);
      continue;
    }
    // Stacked [E, …]: expert e is a copy of the dense tensor (plus noise).
    const n = s.size;
    const E = p.tensor.dim(0);
    const sigma = noise > 0 ? noise * stdOf(s.data) : 0;
    for (let e = 0; e < E; e++) {
      dst.set(s.data, e * n);
      if (sigma > 0) for (let i = 0; i < n; i++) dst[e * n + i]! += sigma * rng.normal();
    }
  }
  return model;
}
