/**
 * Hugging Face folders in and out (docs/models.md, "Importing Hugging Face
 * models"): `importHf` turns a folder of a supported architecture
 * (config.json, model.safetensors or its shards, tokenizer.json) into a Sigma
 * checkpoint; `exportHf` writes a Sigma model whose blocks an HF architecture
 * has as such a folder. The adapter itself is src/models/import/hf.ts.
 */
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { encodeSafetensors } from "../checkpoint/safetensors.js";
import { quantize, QuantizeError } from "../backend/quant.js";
import { exportHfModel, importHfModel, type HfImportOptions } from "../models/import/hf.js";
import { parseTokenizerJson, toHfJson } from "../tokenizer/hfjson.js";
import { PANGU_ALPHA_ARCHITECTURE, PANGU_ALPHA_TOKENIZER_NOTE } from "../models/import/pangu-alpha.js";
import { chatTemplateConfig, readChatTemplate, TOKENIZER_CONFIG_FILE } from "../tokenizer/chat-template.js";
import { checkVocab } from "../serve/open.js";
import { SigmaError } from "../util/errors.js";
import { writeFileAtomic } from "../util/fs.js";
import { Model, openModel, writeModelFolder } from "./model.js";

export interface HfImportResult {
  /** The checkpoint folder written (<out>/step-00000000). */
  checkpoint: string;
  /** config.json's architectures[0]. */
  architecture: string;
  parameters: number;
  /** Whether the folder's tokenizer.json came along inside the checkpoint (Sigma loads it). */
  tokenizer: boolean;
  /** Why not, and where the file was copied instead. */
  tokenizerNote?: string;
  /** Whether a chat template (tokenizer_config.json's chat_template, or chat_template.jinja) was kept with the model. */
  chatTemplate: boolean;
  /** What was capped or ignored on the way. */
  notes: string[];
}

/**
 * Imports a Hugging Face model folder as `<out>/step-00000000/`. The folder's
 * tokenizer.json goes into the checkpoint when Sigma's loader reads it
 * (parseTokenizerJson: Sigma's own layout or a Hugging Face BPE tokenizer);
 * when it does not (a kind the loader does not know, more tokens than the
 * model's vocabulary), it is copied to `<out>/hf-tokenizer.json` with a note
 * saying why, and the model imports anyway.
 */
export function importHf(from: string, o: HfImportOptions & { out: string }): HfImportResult {
  const { model, architecture, notes } = importHfModel(from, o);
  const chatTemplate = readChatTemplate(from);
  const tokPath = join(from, "tokenizer.json");
  let tokenizerText: string | null = null;
  let tokenizerNote: string | undefined;
  let refused: string | null = null;
  if (existsSync(tokPath)) {
    const text = readFileSync(tokPath, "utf8");
    try {
      checkVocab(parseTokenizerJson(text, tokPath), model, tokPath);
      tokenizerText = text;
    } catch (e) {
      if (!(e instanceof SigmaError)) throw e;
      refused = text;
      tokenizerNote = `Sigma's tokenizer loader refuses ${tokPath} (${e.message.split("\n")[0]!.replace(`${tokPath}: `, "")}); copied to ${join(o.out, "hf-tokenizer.json")} and left out of the checkpoint — eval and generate need a tokenizer of the model's vocabulary`;
    }
  } else tokenizerNote = `${from} has no tokenizer.json${architecture === PANGU_ALPHA_ARCHITECTURE ? `: ${PANGU_ALPHA_TOKENIZER_NOTE}` : ""}`;
  const checkpoint = writeModelFolder(o.out, 0, model, tokenizerText, { format: "sigma-import", from, source: "hf", architecture }, chatTemplate);
  if (refused !== null) writeFileAtomic(join(o.out, "hf-tokenizer.json"), refused);
  return { checkpoint, architecture, parameters: model.parameterCount(), tokenizer: tokenizerText !== null, ...(tokenizerNote ? { tokenizerNote } : {}), chatTemplate: chatTemplate !== null, notes };
}

export interface HfExportResult {
  /** The folder written. */
  path: string;
  architecture: string;
  tensors: number;
  /** Whether tokenizer.json was written. */
  tokenizer: boolean;
  /** Whether tokenizer_config.json was written with the model's chat template. */
  chatTemplate: boolean;
  /** Sigma settings with no field in config.json (left out). */
  notes: string[];
}

/** The tensor types `exportHf` writes: HF's torch_dtype for each. */
export const HF_EXPORT_DTYPES = { f32: "float32", bf16: "bfloat16", f16: "float16" } as const;
export type HfExportDtype = keyof typeof HF_EXPORT_DTYPES;

/**
 * Writes a model (a checkpoint, run folder or opened Model) as a Hugging
 * Face folder: config.json, model.safetensors (float32, or every tensor
 * rounded to `dtype` bf16 or f16: nearest, ties to even, config.json's
 * torch_dtype saying so) and, when the model has one, tokenizer.json. A
 * model no supported architecture has is a SigmaError naming the first thing
 * in the way; so is a value beyond f16's range in an f16 export.
 */
export async function exportHf(model: Model | string, o: { out: string; dtype?: HfExportDtype }): Promise<HfExportResult> {
  const dtype = o.dtype ?? "f32";
  if (!Object.hasOwn(HF_EXPORT_DTYPES, dtype)) throw new SigmaError(`dtype "${String(dtype)}" is not one Hugging Face export writes`, `use one of ${Object.keys(HF_EXPORT_DTYPES).join(", ")}`);
  const m = typeof model === "string" ? await openModel(model) : model;
  if (m.network.storedOutput || m.network.blocks.some((b) => b.moe?.stored)) throw new SigmaError(`${m.path ?? "the model"} was opened with stored (quantized) weights`, "open it in f32 to export");
  const { architecture, config, tensors, notes } = exportHfModel(m.network);
  if (dtype !== "f32") {
    config.torch_dtype = HF_EXPORT_DTYPES[dtype];
    for (const [name, t] of tensors) {
      const data = t.data as Float32Array;
      try {
        tensors.set(name, { shape: t.shape, data: quantize(dtype, data, 1, data.length).data as Uint16Array, dtype: dtype === "bf16" ? "BF16" : "F16" });
      } catch (e) {
        if (e instanceof QuantizeError) throw new SigmaError(`cannot write ${name} in ${dtype}: ${e.message}`, dtype === "f16" ? "export bf16 (f32's range) or f32" : "export f32");
        throw e;
      }
    }
  }
  try {
    mkdirSync(o.out, { recursive: true });
  } catch (e) {
    throw new SigmaError(`cannot create ${o.out}: ${(e as Error).message}`, "pass a writable --out folder");
  }
  writeFileAtomic(join(o.out, "model.safetensors"), encodeSafetensors(tensors, { format: "pt" }));
  writeFileAtomic(join(o.out, "config.json"), `${JSON.stringify(config, null, 2)}\n`);
  const tok = m.tokenizerText ?? (m.tokenizer ? toHfJson(m.tokenizer) : null);
  if (tok !== null) writeFileAtomic(join(o.out, "tokenizer.json"), tok);
  if (m.chatTemplate !== null) writeFileAtomic(join(o.out, TOKENIZER_CONFIG_FILE), chatTemplateConfig(m.chatTemplate));
  return { path: o.out, architecture, tensors: tensors.size, tokenizer: tok !== null, chatTemplate: m.chatTemplate !== null, notes };
}
