/**
 * A model's weights in a stored format for inference (docs/decode.md):
 * which matrices are converted, converting them at load, and the safetensors
 * layout of a model file that holds them (written by `sigma quantize`).
 *
 * Converted: the weight matrices of every linear layer (attention q, k, v, o;
 * the dense FFNs' fc1, fc2 and SwiGLU's fc3; the shared experts; the query
 * layer's), the experts' w1 and w2 (and SwiGLU's w3), and the output
 * projection's table (the tied tokenEmbedding, whose rows the lookups then
 * read too; or the untied outputEmbedding). Kept f32:
 * biases, LayerNorms, the position and query embeddings, and the routers
 * (their gates decide which experts run; a learned router's product is tiny).
 * The f32 weights stay in the model too (they are what training, saving and
 * the lookups read); forward reads the stored copy.
 *
 * File layout. A model file with stored weights is an ordinary Sigma model
 * file (F32 tensors, the config in its metadata) with metadata "weights" =
 * the format, in which each converted matrix NAME [..., K] is replaced by
 *   bf16:  NAME.bf16         BF16 [..., K]
 *   f16:   NAME.f16          F16  [..., K]
 *   q8:    NAME.q8           I8   [..., Kp]     Kp = K rounded up to 32
 *          NAME.q8.scales    F16  [..., Kp/32]
 *   q4:    NAME.q4           U8   [..., Kp/2]   two 4-bit values per byte
 *          NAME.q4.scales    F16  [..., Kp/32]
 *          NAME.q4.mins      F16  [..., Kp/32]
 * (src/backend/quant.ts defines the values). Loading such a file keeps the
 * stored matrices as they are (no second rounding) and fills the f32 weights
 * with their dequantized values.
 */
import { encodeSafetensors, type StDtype, type StStoredArray, type StWrite } from "../checkpoint/safetensors.js";
import { dequantize, groupsOf, quantize, QuantizeError, rowElements, WEIGHT_FORMATS, type StoredMatrix, type WeightFormat } from "../backend/quant.js";
import type { Linear } from "../nn/layers.js";
import type { Tensor } from "../tensor/tensor.js";
import { SigmaError } from "../util/errors.js";
import type { PanguSigma } from "./pangu-sigma.js";

/** One convertible matrix of a model: its parameter name, its shape as E stacked [N, K], and where its stored form goes. */
export interface StoredSite {
  name: string;
  tensor: Tensor;
  E: number;
  N: number;
  K: number;
  attach(m: StoredMatrix | null): void;
  /** The stored matrix attached now. */
  current(): StoredMatrix | null;
}

/** Every matrix a stored format converts (see the file comment), in the model's parameter order. */
export function storedSites(model: PanguSigma): StoredSite[] {
  const names = new Map<Tensor, string>();
  for (const [name, p] of model.namedParameters()) names.set(p.tensor, name);
  const sites: StoredSite[] = [];
  const linear = (l: Linear | null | undefined) => {
    if (!l) return;
    sites.push({ name: names.get(l.weight)!, tensor: l.weight, E: 1, N: l.outFeatures, K: l.inFeatures, attach: (m) => (l.stored = m), current: () => l.stored });
  };
  const attention = (a: { q: Linear; k: Linear; v: Linear; o: Linear }) => [a.q, a.k, a.v, a.o].forEach(linear);
  for (const b of model.blocks) {
    attention(b.attn);
    linear(b.ffn?.fc1);
    linear(b.ffn?.fc2);
    linear(b.ffn?.fc3);
    const moe = b.moe;
    if (moe) {
      linear(moe.shared?.fc1);
      linear(moe.shared?.fc2);
      linear(moe.shared?.fc3);
      const E = moe.w1.dim(0);
      // Experts kept in a store (ECSS training) or on other ranks have no resident matrices here.
      if (E > 0 && !moe.shard && !moe.bank) {
        // The layer reads all its matrices stored or none: it takes them once the last arrives.
        let pending: { w1?: StoredMatrix; w2?: StoredMatrix; w3?: StoredMatrix } = {};
        const set = (which: "w1" | "w2" | "w3") => (m: StoredMatrix | null) => {
          pending = m ? { ...pending, [which]: m } : {};
          const complete = pending.w1 && pending.w2 && (!moe.w3 || pending.w3);
          moe.stored = complete ? { w1: pending.w1!, w2: pending.w2!, ...(pending.w3 ? { w3: pending.w3 } : {}) } : null;
        };
        sites.push({ name: names.get(moe.w1)!, tensor: moe.w1, E, N: moe.expertWidth, K: moe.width, attach: set("w1"), current: () => moe.stored?.w1 ?? null });
        sites.push({ name: names.get(moe.w2)!, tensor: moe.w2, E, N: moe.width, K: moe.expertWidth, attach: set("w2"), current: () => moe.stored?.w2 ?? null });
        if (moe.w3) sites.push({ name: names.get(moe.w3)!, tensor: moe.w3, E, N: moe.expertWidth, K: moe.width, attach: set("w3"), current: () => moe.stored?.w3 ?? null });
      }
    }
  }
  if (model.queryLayer) {
    attention(model.queryLayer.attn);
    linear(model.queryLayer.ffn.fc1);
    linear(model.queryLayer.ffn.fc2);
    linear(model.queryLayer.ffn.fc3);
  }
  const c = model.config;
  sites.push({ name: names.get(model.outputTable)!, tensor: model.outputTable, E: c.embeddingSlots, N: c.vocabSize, K: c.width, attach: (m) => (model.storedOutput = m), current: () => model.storedOutput });
  return sites;
}

const formats = new WeakMap<PanguSigma, WeightFormat>();

/** The stored format a model's forward reads, or null (f32 through the ordinary products). */
export function storedFormat(model: PanguSigma): WeightFormat | null {
  return formats.get(model) ?? null;
}

/** Checks a user's format name (`where` names the flag or option in the error). */
export function parseWeightFormat(v: string, where: string): WeightFormat {
  if ((WEIGHT_FORMATS as readonly string[]).includes(v)) return v as WeightFormat;
  throw new SigmaError(`${where} "${v}" is not a weight format`, `use one of ${WEIGHT_FORMATS.join(", ")} (docs/decode.md)`);
}

/**
 * Converts the model's matrices (storedSites) to `format` for inference; its
 * forward then reads them through the decode kernels. "f32" uses the f32
 * weights themselves (no copy) through the same kernels. A model already in
 * `format` is left as it is.
 */
export function quantizeModel(model: PanguSigma, format: WeightFormat): void {
  if (storedFormat(model) === format) return;
  for (const s of storedSites(model)) {
    try {
      s.attach(quantize(format, s.tensor.data as Float32Array, s.E * s.N, s.K));
    } catch (e) {
      if (e instanceof QuantizeError) throw new SigmaError(`cannot store ${s.name} in ${format}: ${e.message}`, "keep this model in f32 (or a wider format)");
      throw e;
    }
  }
  formats.set(model, format);
}

/** Back to the ordinary f32 products (the stored copies dropped). */
export function unquantizeModel(model: PanguSigma): void {
  for (const s of storedSites(model)) s.attach(null);
  formats.delete(model);
}

/** The stored tensors of one matrix (names and layout of the file comment). */
function storedTensors(s: StoredSite, m: StoredMatrix): [string, StWrite][] {
  const lead = s.tensor.shape.slice(0, -1);
  const G = groupsOf(s.K);
  const f = m.format;
  switch (f) {
    case "f32":
      return [[s.name, { shape: [...s.tensor.shape], data: m.data as Float32Array }]];
    case "bf16":
    case "f16":
      return [[`${s.name}.${f}`, { shape: [...s.tensor.shape], data: m.data as Uint16Array, dtype: f === "bf16" ? "BF16" : "F16" }]];
    case "q8":
    case "q4": {
      const out: [string, StWrite][] = [
        [`${s.name}.${f}`, { shape: [...lead, rowElements(f, s.K)], data: m.data as Int8Array | Uint8Array }],
        [`${s.name}.${f}.scales`, { shape: [...lead, G], data: m.scales!, dtype: "F16" }],
      ];
      if (f === "q4") out.push([`${s.name}.q4.mins`, { shape: [...lead, G], data: m.mins!, dtype: "F16" }]);
      return out;
    }
  }
}

/**
 * The model's tensors for a file in its stored format (storedFormat must be
 * set): every parameter and buffer, with each converted matrix replaced by
 * its stored tensors; and the metadata ("weights": the format).
 */
export function storedModelTensors(model: PanguSigma): { tensors: Map<string, StWrite>; weights: WeightFormat } {
  const format = storedFormat(model);
  if (!format) throw new Error("storedModelTensors: the model has no stored weights (quantizeModel first)");
  const stored = new Map<Tensor, [string, StWrite][]>();
  for (const s of storedSites(model)) {
    const m = s.current();
    if (!m) throw new Error(`storedModelTensors: ${s.name} has no stored matrix`);
    stored.set(s.tensor, storedTensors(s, m));
  }
  const tensors = new Map<string, StWrite>();
  for (const [name, p] of model.namedParameters()) {
    const parts = stored.get(p.tensor);
    if (parts) for (const [n, t] of parts) tensors.set(n, t);
    else tensors.set(name, { shape: [...p.tensor.shape], data: p.tensor.data });
  }
  for (const [name, b] of model.namedBuffers()) tensors.set(name, { shape: [b.length], data: b });
  return { tensors, weights: format };
}

/** The model as a model file in its stored format (the layout of the file comment); loadable wherever a model file is. */
export function encodeStoredModel(model: PanguSigma): Uint8Array {
  const { tensors, weights } = storedModelTensors(model);
  return encodeSafetensors(tensors, { format: "sigma-model", config: JSON.stringify(model.config), weights });
}

type StoredEntry = { dtype: StDtype; shape: number[]; data: StStoredArray };

/**
 * Reads a model file's stored matrices (format `weights`, from its metadata)
 * into `model`: each is checked against the matrix it replaces (dtype,
 * shape), attached as it is, and its dequantized values fill the f32
 * parameter. Returns the parameter names filled; every entry of `stored` must
 * be used. Errors name `path` and the tensor.
 */
export function readStoredWeights(model: PanguSigma, stored: Map<string, StoredEntry>, weights: string | undefined, path: string): Set<string> {
  const filled = new Set<string>();
  if (weights === undefined) {
    if (stored.size > 0) throw new SigmaError(`${path}: tensor "${[...stored.keys()][0]}" is ${stored.values().next().value!.dtype}, but the file does not say its weights are stored (no "weights" metadata)`, "the file is damaged or was not written by Sigma");
    return filled;
  }
  const format = parseWeightFormat(weights, `${path}: metadata "weights"`);
  if (format === "f32") return filled;
  const used = new Set<string>();
  const take = (name: string, dtype: StDtype, shape: number[]): StoredEntry => {
    const t = stored.get(name);
    if (!t) throw new SigmaError(`${path}: tensor "${name}" is missing (the file's weights are ${format})`, "the file does not match its config; it may come from another version");
    if (t.dtype !== dtype || t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new SigmaError(`${path}: tensor "${name}" is ${t.dtype} [${t.shape.join(", ")}], its config needs ${dtype} [${shape.join(", ")}]`, "the file does not match its config");
    }
    used.add(name);
    return t;
  };
  for (const s of storedSites(model)) {
    const lead = s.tensor.shape.slice(0, -1);
    const G = groupsOf(s.K);
    const rows = s.E * s.N;
    let m: StoredMatrix;
    if (format === "bf16" || format === "f16") {
      m = { format, rows, K: s.K, data: take(`${s.name}.${format}`, format === "bf16" ? "BF16" : "F16", [...s.tensor.shape]).data, scales: null, mins: null };
    } else {
      const data = take(`${s.name}.${format}`, format === "q8" ? "I8" : "U8", [...lead, rowElements(format, s.K)]).data;
      const scales = take(`${s.name}.${format}.scales`, "F16", [...lead, G]).data as Uint16Array;
      const mins = format === "q4" ? (take(`${s.name}.q4.mins`, "F16", [...lead, G]).data as Uint16Array) : null;
      m = { format, rows, K: s.K, data, scales, mins };
    }
    dequantize(m, s.tensor.data as Float32Array);
    if (format !== "bf16" && format !== "f16") checkFinite(s.tensor.data as Float32Array, s.name, path);
    s.attach(m);
    filled.add(s.name);
  }
  const extra = [...stored.keys()].filter((n) => !used.has(n));
  if (extra.length) throw new SigmaError(`${path}: unexpected tensors ${extra.slice(0, 5).join(", ")}`, "the file does not match its config");
  formats.set(model, format);
  return filled;
}

/** A q8/q4 matrix whose scales are infinite or NaN dequantizes to non-finite weights: a damaged file. */
function checkFinite(w: Float32Array, name: string, path: string): void {
  for (let i = 0; i < w.length; i++) {
    if (!Number.isFinite(w[i]!)) throw new SigmaError(`${path}: tensor "${name}" has a non-finite weight at ${i} (a scale or minimum is infinite or NaN)`, "the file is damaged; use another copy");
  }
}
