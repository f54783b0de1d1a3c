/**
 * Inference from a checkpoint whose experts live in an expert store (ECSS):
 * generation and evaluation route tokens to any expert, so the store's
 * experts are read into the model's stacked `[E, …]` tensors (weights only;
 * the Adam moments stay on disk).
 */
import { join } from "node:path";
import type { LoadedFolder } from "../checkpoint/folder.js";
import { decodeSafetensors, type StTensor } from "../checkpoint/safetensors.js";
import { embeddedConfig, modelFromTensors } from "../models/io.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import { ExpertStoreFile } from "../store/file.js";
import { EXPERT_TENSORS, readStackedLayer } from "../store/stacked.js";
import { SigmaError } from "../util/errors.js";

export function modelFromStoreCheckpoint(f: LoadedFolder, ref: { path: string; storeId: string }): PanguSigma {
  const source = join(f.path, "model.safetensors");
  const { tensors, metadata } = decodeSafetensors(f.read("model.safetensors"), source);
  const config = embeddedConfig(metadata, source);
  const store = ExpertStoreFile.open(ref.path, { readOnly: true });
  const all = new Map<string, StTensor>(tensors);
  try {
    if (store.header.storeId !== ref.storeId) throw new SigmaError(`${ref.path} is store ${store.header.storeId}, but ${f.path} was written with store ${ref.storeId}`, "run from the folder the run was started in, or convert the checkpoint with `sigma store convert --to ram --store PATH`");
    store.restore(f.read("experts.index"), join(f.path, "experts.index"));
    for (let l = 0; l < config.sparseLayers; l++) {
      const st = readStackedLayer(store, l, false);
      for (const n of EXPERT_TENSORS) all.set(`blocks.${config.denseLayers + l}.moe.${n}`, { dtype: "F32", shape: st.shapes[n], data: st.params[n] });
    }
  } finally {
    store.close();
  }
  return modelFromTensors(all, metadata, source);
}
