/**
 * Saving and loading a model's weights and state buffers (such as RRE tables)
 * as one safetensors file with the config in its metadata. Loading never
 * re-draws a buffer: the saved one, checked by its router, replaces the one
 * drawn at construction.
 */
import { decodeSafetensors, encodeSafetensors, readSafetensors, writeSafetensors, type StArray, type StTensor } from "../checkpoint/safetensors.js";
import { SigmaError } from "../util/errors.js";
import { parseJsonStrict } from "../util/strict-json.js";
import { headDim, kvHeads, modelRouter, parseModelConfig, type ModelConfig } from "./config.js";
import { PanguSigma } from "./pangu-sigma.js";
import type { ExpertShard } from "../moe/expert-parallel.js";
import { EXPERT_TENSOR, ShardManifestSchema, withExperts, type ShardManifest } from "./shards.js";
import { readStoredWeights } from "./quantize.js";
import type { LoadedFolder } from "../checkpoint/folder.js";
import { parseWithSchema } from "../util/json.js";

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

/**
 * The model as safetensors bytes (for checkpoints, which write several files
 * together). `denseOnly`: without the expert tensors (an expert-sharded
 * checkpoint writes them per rank, src/models/shards.ts); the metadata then
 * says so, and loading the file alone is refused with a pointer to the folder.
 */
export function encodeModel(model: PanguSigma, opts: { denseOnly?: boolean } = {}): Uint8Array {
  const { tensors, metadata } = modelTensors(model);
  if (!opts.denseOnly) return encodeSafetensors(tensors, metadata);
  for (const n of [...tensors.keys()]) if (EXPERT_TENSOR.test(n)) tensors.delete(n);
  return encodeSafetensors(tensors, { ...metadata, experts: "sharded" });
}

export function loadModel(path: string): PanguSigma {
  const { tensors, metadata, stored } = readSafetensors(path, { stored: true });
  return modelFromTensors(tensors, metadata, path, false, undefined, stored);
}

/**
 * Decodes safetensors bytes written by encodeModel; `source` names the file in
 * errors. `externalExperts`: the file holds a model whose experts live in an
 * expert store (ECSS checkpoints), so it has no expert tensors.
 */
export function decodeModel(bytes: Uint8Array, source: string, opts: { externalExperts?: boolean } = {}): PanguSigma {
  const { tensors, metadata, stored } = decodeSafetensors(bytes, source, { stored: true });
  return modelFromTensors(tensors, metadata, source, opts.externalExperts ?? false, undefined, stored);
}

/** state.json's expert-shard manifest (src/models/shards.ts), or undefined for a checkpoint that holds its experts whole. */
export function shardManifest(folder: LoadedFolder): ShardManifest | undefined {
  const raw = (folder.state as Record<string, unknown>).experts;
  if (raw === undefined) return undefined;
  return parseWithSchema(ShardManifestSchema, raw, `${folder.path}/state.json (experts)`, "the checkpoint is damaged or was edited; use an earlier one");
}

/**
 * The model of a checkpoint folder (model.safetensors). With an expert-shard
 * manifest its experts are assembled from the shard files: all of them, or
 * with `expertShard` just that rank's range (an expert-parallel resume, in
 * any layout); a checkpoint holding its experts whole is cut to the range.
 */
export function decodeCheckpointModel(folder: LoadedFolder, opts: { externalExperts?: boolean; expertShard?: ExpertShard } = {}): PanguSigma {
  const source = `${folder.path}/model.safetensors`;
  const { tensors, metadata, stored } = decodeSafetensors(folder.read("model.safetensors"), source, { stored: true });
  const manifest = shardManifest(folder);
  if (!manifest && !opts.expertShard) return modelFromTensors(tensors, metadata, source, opts.externalExperts ?? false, undefined, stored);
  const config = embeddedConfig(metadata, source);
  const range = opts.expertShard ?? { first: 0, count: config.experts?.count ?? 0 };
  if (manifest && manifest.experts !== config.experts?.count) throw new SigmaError(`${folder.path}/state.json says ${manifest.experts} experts per layer, the model config ${config.experts?.count ?? 0}`, "the checkpoint is damaged; use an earlier one");
  const all = withExperts(tensors, folder, manifest, range, (n) => !/^(?:m|v|steps)\./.test(n));
  return modelFromTensors(all, metadata, source, opts.externalExperts ?? false, opts.expertShard);
}

/** The model config in a Sigma model file's metadata, validated by ModelConfigSchema; errors name `path`. */
export function embeddedConfig(metadata: Record<string, string>, path: string): ModelConfig {
  if (metadata.format !== "sigma-model" || typeof metadata.config !== "string") {
    throw new SigmaError(`${path} is not a Sigma model file (no sigma-model metadata)`, "pass a file written by Sigma");
  }
  let raw: unknown;
  try {
    raw = parseJsonStrict(metadata.config);
  } catch (e) {
    throw new SigmaError(`${path}: the embedded config is not JSON (${(e as Error).message})`, "the file is damaged; use another copy");
  }
  return parseModelConfig(raw, `${path} (embedded config)`);
}

/**
 * A lower bound on the values (parameters and state buffers) a model of this
 * config holds: embeddings, attention and FFN matrices, experts. The terms
 * left out (biases, norms, routers, the query layer) add at most a small
 * multiple, so a file that holds fewer values than this cannot belong to the
 * config — and a config with absurd sizes is refused before any allocation.
 */
function minModelValues(c: ModelConfig, externalExperts: boolean, held = c.experts?.count ?? 0): number {
  const C = c.width;
  const layers = c.denseLayers + c.sparseLayers;
  const experts = externalExperts || !c.experts ? 0 : c.sparseLayers * held * 2 * C * (c.experts.width ?? c.ffnWidth);
  // Rotary positions have no table; grouped-query attention and headDim size q, k, v, o (each at least C·heads·D or C·kvHeads·D).
  const attention = 2 * C * c.heads * headDim(c) + 2 * C * kvHeads(c) * headDim(c);
  return c.embeddingSlots * c.vocabSize * C + (c.position === "learned" ? c.seqLen * C : 0) + layers * attention + c.denseLayers * 2 * C * c.ffnWidth + experts;
}

/** A router's own state buffer: blocks.N.moe.router.<name>, checked by the router (RRE: its table stays inside each group). */
const ROUTER_STATE = /^blocks\.\d+\.moe\.router\.(\w+)$/;

const sameShape = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((d, i) => d === b[i]);

/**
 * A model from decoded safetensors (tensors and metadata of a Sigma model
 * file; `path` names it in errors). The embedded config is checked with
 * ModelConfigSchema; every tensor the config implies must be there with
 * exactly its dtype and shape, and nothing else may be.
 */
export function modelFromTensors(
  tensors: Map<string, StTensor>,
  metadata: Record<string, string>,
  path: string,
  externalExperts = false,
  expertShard?: ExpertShard,
  /** Stored inference weights (BF16, F16, U8, I8 tensors; src/models/quantize.ts), when the file has them. */
  stored: Parameters<typeof readStoredWeights>[1] = new Map(),
): PanguSigma {
  const config = embeddedConfig(metadata, path);
  if (metadata.experts === "sharded" && ![...tensors.keys()].some((n) => EXPERT_TENSOR.test(n))) {
    throw new SigmaError(`${path} holds the dense part of an expert-parallel checkpoint: its experts are in the experts-rank-*.safetensors files beside it`, "open the checkpoint folder instead (it assembles the shards)");
  }
  let held = 0;
  for (const t of tensors.values()) held += t.data.length;
  for (const [n, t] of stored) held += t.data.length * (n.endsWith(".q4") ? 2 : 1); // a q4 byte holds two values
  const need = minModelValues(config, externalExperts, expertShard?.count);
  if (need > held || config.denseLayers + config.sparseLayers > tensors.size + stored.size) {
    throw new SigmaError(
      `${path}: its embedded config describes a model of at least ${need.toExponential(2)} values in ${config.denseLayers + config.sparseLayers} layers, but the file holds ${held} values in ${tensors.size} tensors`,
      "the file is damaged or its config was edited; use another copy",
    );
  }
  const model = new PanguSigma(config, "float32", { ...(externalExperts ? { externalExperts: {} } : {}), ...(expertShard ? { expertShard } : {}) });
  const router = modelRouter(config);
  const expected = new Set<string>();
  // Matrices stored in bf16/f16/q8/q4 (metadata "weights"): attached as they are, their f32 parameters dequantized.
  const fromStored = readStoredWeights(model, stored, metadata.weights, path);
  for (const [name, p] of model.namedParameters()) {
    expected.add(name);
    if (fromStored.has(name)) continue;
    const t = tensors.get(name);
    if (!t) throw new SigmaError(`${path}: tensor "${name}" is missing`, "the file does not match its config; it may come from another version");
    if (t.dtype !== "F32" || !sameShape(t.shape, p.tensor.shape)) {
      throw new SigmaError(`${path}: tensor "${name}" is ${t.dtype} [${t.shape.join(", ")}], its config needs F32 [${p.tensor.shape.join(", ")}]`, "the file does not match its config");
    }
    p.tensor.data.set(t.data);
  }
  for (const [name, b] of model.namedBuffers()) {
    expected.add(name);
    const t = tensors.get(name);
    if (!t) throw new SigmaError(`${path}: state buffer "${name}" is missing`, "the file does not match its config");
    if (t.dtype !== "I32" || !sameShape(t.shape, [b.length])) {
      throw new SigmaError(`${path}: state buffer "${name}" is ${t.dtype} [${t.shape.join(", ")}], its config needs I32 [${b.length}]`, "the file does not match its config");
    }
    const own = ROUTER_STATE.exec(name);
    const wrong = own && router?.spec.checkBuffer?.(router.view, own[1]!, t.data as Int32Array);
    if (wrong) throw new SigmaError(`${path}: state buffer "${name}" ${wrong}`, "the file is damaged; use another copy");
    b.set(t.data);
  }
  const extra = [...tensors.keys()].filter((n) => !expected.has(n));
  if (extra.length) throw new SigmaError(`${path}: unexpected tensors ${extra.slice(0, 5).join(", ")}${extra.length > 5 ? ", …" : ""}`, "the file does not match its config");
  return model;
}
