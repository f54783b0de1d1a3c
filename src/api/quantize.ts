/**
 * `quantize(path, {to, out})`: a model's checkpoint with its matrices stored
 * in bf16, f16, q8 or q4 (docs/decode.md): model.safetensors in the stored
 * layout (src/models/quantize.ts), the tokenizer copied byte for byte, and
 * state.json with every file's sha256, written all or nothing like every
 * checkpoint. openModel and every command open it; it loads in its own format.
 */
import { saveCheckpointFolder } from "../checkpoint/folder.js";
import { encodeModel } from "../models/io.js";
import { encodeStoredModel, quantizeModel, unquantizeModel } from "../models/quantize.js";
import { storedBytes, type WeightFormat } from "../backend/quant.js";
import { storedSites } from "../models/quantize.js";
import { sha256Hex, toHfJson } from "../tokenizer/hfjson.js";
import { Model, openModel } from "./model.js";

export interface QuantizeOptions {
  /** The stored format: "bf16", "f16", "q8", "q4" (or "f32": a plain model file). */
  to: WeightFormat;
  /** Folder the checkpoint `step-NNNNNNNN/` goes into. */
  out: string;
}

export interface QuantizeResult {
  /** The checkpoint folder written. */
  checkpoint: string;
  weights: WeightFormat;
  /** Bytes of the converted matrices before (f32) and after (stored, with scales), and of the whole model file. */
  matrices: { f32Bytes: number; storedBytes: number };
  fileBytes: number;
}

export async function quantize(model: Model | string, o: QuantizeOptions): Promise<QuantizeResult> {
  const m = typeof model === "string" ? await openModel(model) : model;
  const net = m.network;
  quantizeModel(net, o.to);
  let f32Bytes = 0;
  let stored = 0;
  for (const s of storedSites(net)) {
    f32Bytes += s.tensor.size * 4;
    stored += storedBytes(s.current()!);
  }
  const bytes = o.to === "f32" ? encodeModel(net) : encodeStoredModel(net);
  if (o.to === "f32") unquantizeModel(net);
  const tokenizerText = m.tokenizerText ?? (m.tokenizer ? toHfJson(m.tokenizer) : null);
  const files = new Map<string, Uint8Array | string>([["model.safetensors", bytes]]);
  if (tokenizerText !== null) files.set("tokenizer.json", tokenizerText);
  const tok = tokenizerText !== null ? { tokenizer: { sha256: sha256Hex(tokenizerText), vocabSize: net.config.vocabSize } } : {};
  const state = { format: "sigma-model", weights: o.to, ...(m.path ? { from: m.path } : {}), ...(m.dataDir ? { dataDir: m.dataDir } : {}), fromStep: m.step, ...tok };
  const checkpoint = saveCheckpointFolder(o.out, m.step, files, { ...state, step: m.step });
  return { checkpoint, weights: o.to, matrices: { f32Bytes, storedBytes: stored }, fileBytes: bytes.length };
}
