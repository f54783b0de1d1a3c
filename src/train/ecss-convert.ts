/**
 * Converting a training checkpoint between the two expert layouts:
 *
 *   in RAM  model.safetensors and optimizer.safetensors hold every expert as
 *           stacked [E, …] tensors with their moments;
 *   store   they hold only the dense part; the experts, their moments and
 *           their step counts are records of an expert store, and
 *           experts.index says which record version the checkpoint means.
 *
 * The result is a new checkpoint folder (written atomically like any other)
 * whose config has store.enabled switched; `resume` continues from it.
 * Per-expert step counts: a store checkpoint carries them in its index; an
 * in-RAM checkpoint carries them as `steps.<layer>` when it was trained with
 * optim.sparseExperts, and otherwise every expert took every step (dense
 * AdamW), so each gets the global step. A store converted back to RAM sets
 * optim.sparseExperts, so training continues under the same rule.
 */
import { existsSync } from "node:fs";
import { decodeSafetensors, encodeSafetensors, type StArray, type StTensor } from "../checkpoint/safetensors.js";
import { openCheckpointFolder, saveCheckpointFolder } from "../checkpoint/folder.js";
import { ExpertStoreFile } from "../store/file.js";
import { tensorOffsets } from "../store/format.js";
import { EXPERT_TENSORS as NAMES, readStackedLayer } from "../store/stacked.js";
import { SigmaError } from "../util/errors.js";
import { optimizerStep, readTrainState } from "./checkpoint.js";
import { storeLayout } from "./ecss.js";

type Tensors = Map<string, { shape: number[]; data: StArray }>;

function need(t: Map<string, StTensor>, name: string, source: string): StTensor {
  const x = t.get(name);
  if (!x || x.dtype !== "F32") throw new SigmaError(`${source}: tensor "${name}" is missing or not F32`, "the checkpoint does not match its config");
  return x;
}

/** Writes a converted checkpoint into `outDir` (a checkpoints folder); returns its path. */
export function convertCheckpoint(src: string, to: "store" | "ram", outDir: string, storePath?: string): string {
  const folder = openCheckpointFolder(src);
  const s = readTrainState(folder);
  if (s.stores) throw new SigmaError(`${folder.path} keeps its experts in per-rank expert stores (ECSS on ${s.stores.ids.length} ranks)`, "resume it on one process for a step (`sigma train --resume` gathers the experts into one store) and convert that run's checkpoint");
  if (s.experts) throw new SigmaError(`${folder.path} is an expert-parallel checkpoint (its experts are in ${s.experts.shards} per-rank shard files)`, "resume it on one process for a step (`sigma train --resume`, it reads every shard) and convert that run's checkpoint");
  const cfg = s.config;
  const c = cfg.model;
  const layout = storeLayout(c);
  const model = decodeSafetensors(folder.read("model.safetensors"), `${folder.path}/model.safetensors`);
  const opt = decodeSafetensors(folder.read("optimizer.safetensors"), `${folder.path}/optimizer.safetensors`);
  const paths = layout.map((_, l) => `blocks.${c.denseLayers + l}.moe`);
  const isExpert = (name: string): boolean => paths.some((p) => name.startsWith(`${p}.`) && NAMES.includes(name.slice(p.length + 1) as (typeof NAMES)[number]));
  const state: Record<string, unknown> = { ...s };
  delete state.files;
  let modelOut: Tensors;
  let optOut: Tensors;
  let index: Uint8Array | null = null;

  if (to === "store") {
    if (s.store) throw new SigmaError(`${folder.path} already keeps its experts in the store ${s.store.path}`, "convert it --to ram instead");
    if (!storePath) throw new SigmaError("converting to the store layout needs the store file to write", "pass --store PATH");
    if (existsSync(storePath)) throw new SigmaError(`the expert store ${storePath} already exists`, "pass a new --store PATH (converting writes a new store; it never replaces one)");
    const globalStep = opt.metadata.step === undefined ? 0 : optimizerStep(opt.metadata, `${folder.path}/optimizer.safetensors`);
    const store = ExpertStoreFile.create(
      storePath,
      layout,
      (l, e, payload) => {
        const lay = layout[l]!;
        const o = tensorOffsets(lay);
        const size = { w1: lay.expertWidth * lay.width, w2: lay.expertWidth * lay.width, b1: lay.expertWidth, b2: lay.width };
        for (const n of NAMES) {
          const name = `${paths[l]}.${n}`;
          const rows = [need(model.tensors, name, "model.safetensors"), need(opt.tensors, `m.${name}`, "optimizer.safetensors"), need(opt.tensors, `v.${name}`, "optimizer.safetensors")];
          rows.forEach((t, part) => payload.set(t.data.subarray(e * size[n], (e + 1) * size[n]), part * o.P + o[n]));
        }
      },
      (l, e) => {
        const steps = opt.tensors.get(`steps.${paths[l]}`);
        return steps ? Number(steps.data[e]) : globalStep;
      },
    );
    index = store.currentIndex();
    state.store = { path: store.path, storeId: store.header.storeId };
    store.close();
    modelOut = new Map([...model.tensors].filter(([n]) => !isExpert(n)));
    optOut = new Map([...opt.tensors].filter(([n]) => !(n.startsWith("m.") || n.startsWith("v.")) || !isExpert(n.slice(2))).filter(([n]) => !n.startsWith("steps.")));
    state.config = { ...cfg, store: { ...cfg.store, enabled: true, path: store.path } };
  } else {
    if (!s.store) throw new SigmaError(`${folder.path} already keeps its experts in RAM`, "convert it --to store instead");
    // Only read: the path may come from state.json, and nothing read from a file steers a write.
    const store = ExpertStoreFile.open(storePath ?? s.store.path, { readOnly: true, layers: layout });
    try {
      if (store.header.storeId !== s.store.storeId) throw new SigmaError(`${store.path} is store ${store.header.storeId}, the checkpoint was written with ${s.store.storeId}`, "pass the store this run wrote (--store PATH)");
      store.restore(folder.read("experts.index"), `${folder.path}/experts.index`);
      modelOut = new Map(model.tensors);
      optOut = new Map(opt.tensors);
      layout.forEach((_, l) => {
        const st = readStackedLayer(store, l);
        for (const n of NAMES) {
          const name = `${paths[l]}.${n}`;
          modelOut.set(name, { shape: st.shapes[n], data: st.params[n] });
          optOut.set(`m.${name}`, { shape: st.shapes[n], data: st.m[n] });
          optOut.set(`v.${name}`, { shape: st.shapes[n], data: st.v[n] });
        }
        optOut.set(`steps.${paths[l]}`, { shape: [st.steps.length], data: st.steps });
      });
    } finally {
      store.close();
    }
    delete state.store;
    state.config = { ...cfg, store: { ...cfg.store, enabled: false }, optim: { ...cfg.optim, sparseExperts: true } };
  }
  const files = new Map<string, Uint8Array | string>([
    ["model.safetensors", encodeSafetensors(modelOut, model.metadata)],
    ["optimizer.safetensors", encodeSafetensors(optOut, opt.metadata)],
    ["tokenizer.json", folder.read("tokenizer.json")],
  ]);
  if (index) files.set("experts.index", index);
  return saveCheckpointFolder(outDir, s.step, files, state);
}
