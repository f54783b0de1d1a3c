/**
 * Saving and loading a model's weights and state buffers (RRE tables) as one
 * safetensors file with the config in its metadata. Loading never re-draws a
 * table: the saved one replaces the one drawn at construction.
 */
import { decodeSafetensors, encodeSafetensors, readSafetensors, writeSafetensors, type StArray, type StTensor } from "../checkpoint/safetensors.js";
import { SigmaError } from "../util/errors.js";
import { parseModelConfig } from "./config.js";
import { PanguSigma } from "./pangu-sigma.js";

/** The model's parameters and buffers by name, and the metadata that rebuilds it. */
function modelTensors(model: PanguSigma): { tensors: Map<string, { shape: number[]; data: StArray }>; metadata: Record<string, string> } {
  const tensors = new Map<string, { shape: number[]; data: StArray }>();
  for (const [name, p] of model.namedParameters()) tensors.set(name, { shape: [...p.tensor.shape], data: p.tensor.data });
  for (const [name, b] of model.namedBuffers()) tensors.set(name, { shape: [b.length], data: b });
  return { tensors, metadata: { format: "sigma-model", config: JSON.stringify(model.config) } };
}

export function saveModel(model: PanguSigma, path: string): void {
  const { tensors, metadata } = modelTensors(model);
  writeSafetensors(path, tensors, metadata);
}

/** The model as safetensors bytes (for checkpoints, which write several files together). */
export function encodeModel(model: PanguSigma): Uint8Array {
  const { tensors, metadata } = modelTensors(model);
  return encodeSafetensors(tensors, metadata);
}

export function loadModel(path: string): PanguSigma {
  const { tensors, metadata } = readSafetensors(path);
  return modelFromTensors(tensors, metadata, path);
}

/**
 * Decodes safetensors bytes written by encodeModel; `source` names the file in
 * errors. `externalExperts`: the file holds a model whose experts live in an
 * expert store (ECSS checkpoints), so it has no expert tensors.
 */
export function decodeModel(bytes: Uint8Array, source: string, opts: { externalExperts?: boolean } = {}): PanguSigma {
  const { tensors, metadata } = decodeSafetensors(bytes, source);
  return modelFromTensors(tensors, metadata, source, opts.externalExperts ?? false);
}

/** A model from decoded safetensors (tensors and metadata of a Sigma model file; `path` names it in errors). */
export function modelFromTensors(tensors: Map<string, StTensor>, metadata: Record<string, string>, path: string, externalExperts = false): PanguSigma {
  if (metadata.format !== "sigma-model" || !metadata.config) {
    throw new SigmaError(`${path} is not a Sigma model file (no sigma-model metadata)`, "pass a file written by Sigma");
  }
  let raw: unknown;
  try {
    raw = JSON.parse(metadata.config);
  } catch (e) {
    throw new SigmaError(`${path}: the embedded config is not JSON (${(e as Error).message})`, "the file is damaged; use another copy");
  }
  const config = parseModelConfig(raw, `${path} (embedded config)`);
  const model = new PanguSigma(config, "float32", externalExperts ? { externalExperts: {} } : {});
  const expected = new Set<string>();
  for (const [name, p] of model.namedParameters()) {
    expected.add(name);
    const t = tensors.get(name);
    if (!t) throw new SigmaError(`${path}: tensor "${name}" is missing`, "the file does not match its config; it may come from another version");
    if (t.dtype !== "F32" || t.data.length !== p.tensor.size) {
      throw new SigmaError(`${path}: tensor "${name}" is ${t.dtype} [${t.shape}], expected F32 [${p.tensor.shape}]`);
    }
    p.tensor.data.set(t.data);
  }
  for (const [name, b] of model.namedBuffers()) {
    expected.add(name);
    const t = tensors.get(name);
    if (!t || t.dtype !== "I32" || t.data.length !== b.length) throw new SigmaError(`${path}: state buffer "${name}" is missing or has the wrong size`);
    b.set(t.data);
  }
  const extra = [...tensors.keys()].filter((n) => !expected.has(n));
  if (extra.length) throw new SigmaError(`${path}: unexpected tensors ${extra.slice(0, 5).join(", ")}${extra.length > 5 ? ", …" : ""}`, "the file does not match its config");
  return model;
}
