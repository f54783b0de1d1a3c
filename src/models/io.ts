/**
 * Saving and loading a model's weights and state buffers (RRE tables) as one
 * safetensors file with the config in its metadata. Loading never re-draws a
 * table: the saved one replaces the one drawn at construction.
 */
import { readSafetensors, writeSafetensors, type StArray } from "../checkpoint/safetensors.js";
import { SigmaError } from "../util/errors.js";
import { parseModelConfig } from "./config.js";
import { PanguSigma } from "./pangu-sigma.js";

export function saveModel(model: PanguSigma, path: string): void {
  const tensors = new Map<string, { shape: number[]; data: StArray }>();
  for (const [name, p] of model.namedParameters()) tensors.set(name, { shape: [...p.tensor.shape], data: p.tensor.data });
  for (const [name, b] of model.namedBuffers()) tensors.set(name, { shape: [b.length], data: b });
  writeSafetensors(path, tensors, { format: "sigma-model", config: JSON.stringify(model.config) });
}

export function loadModel(path: string): PanguSigma {
  const { tensors, metadata } = readSafetensors(path);
  if (metadata.format !== "sigma-model" || !metadata.config) {
    throw new SigmaError(`${path} is not a Sigma model file (no sigma-model metadata)`, "pass a file written by Sigma");
  }
  const config = parseModelConfig(JSON.parse(metadata.config), `${path} (embedded config)`);
  const model = new PanguSigma(config);
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
