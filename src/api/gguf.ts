/**
 * GGUF in and out (docs/gguf.md): `exportGguf` writes a model (a checkpoint,
 * run folder or opened Model) as one llama.cpp file; `importGguf` turns a
 * GGUF file of an architecture Sigma knows into a Sigma checkpoint.
 */
import { readGguf, writeGguf } from "../checkpoint/gguf.js";
import { ggufOfModel, modelOfGguf, type GgufExportType } from "../models/gguf.js";
import { Tokenizer } from "../tokenizer/codec.js";
import { HfTokenizer } from "../tokenizer/hf.js";
import { toHfJson } from "../tokenizer/hfjson.js";
import { SigmaError } from "../util/errors.js";
import { Model, openModel, writeModelFolder } from "./model.js";

export interface GgufExportResult {
  /** The file written. */
  path: string;
  /** llama.cpp's architecture name ("gpt2", "llama", "qwen2", "qwen2moe", "qwen3moe"). */
  architecture: string;
  type: GgufExportType;
  tensors: number;
  bytes: number;
  /** Matrices written F16 instead of Q8_0 (rows not whole 32-value blocks). */
  fallbacks: string[];
}

export async function exportGguf(model: Model | string, o: { out: string; type?: GgufExportType; name?: string }): Promise<GgufExportResult> {
  const m = typeof model === "string" ? await openModel(model) : model;
  if (!m.tokenizer) throw new SigmaError(`${m.path ?? "the model"} has no tokenizer; a GGUF file carries its vocabulary`, "export a checkpoint with a tokenizer.json (sigma import gpt2 --tokenizer carries one)");
  if (!(m.tokenizer instanceof Tokenizer) && !(m.tokenizer instanceof HfTokenizer)) throw new SigmaError(`${m.path ?? "the model"} carries a tokenizer GGUF export does not know`, "export a model with a Sigma or Hugging Face byte-level BPE tokenizer");
  const type = o.type ?? "f32";
  const file = ggufOfModel(m.network, m.tokenizer, { type, ...(o.name ? { name: o.name } : {}), ...(m.path ? { where: m.path } : {}), ...(m.chatTemplate !== null ? { chatTemplate: m.chatTemplate } : {}) });
  writeGguf(o.out, file);
  const bytes = file.tensors.reduce((n, t) => n + t.data.length, 0);
  return { path: o.out, architecture: file.architecture, type, tensors: file.tensors.length, bytes, fallbacks: file.fallbacks };
}

export interface GgufImportResult {
  checkpoint: string;
  architecture: string;
  /** Whether the file's vocabulary came along as tokenizer.json (Sigma's, or a byte-level BPE llama.cpp names: gpt-2, llama-bpe, qwen2); else why not. */
  tokenizer: boolean;
  tokenizerNote?: string;
  /** Whether the file's tokenizer.chat_template was kept (Sigma's own built-in template is not: it is implied). */
  chatTemplate: boolean;
  parameters: number;
}

export function importGguf(from: string, o: { out: string }): GgufImportResult {
  const { model, tokenizer, tokenizerText, tokenizerNote, architecture, chatTemplate } = modelOfGguf(readGguf(from), from);
  const text = tokenizer ? toHfJson(tokenizer) : (tokenizerText ?? null);
  const checkpoint = writeModelFolder(o.out, 0, model, text, { format: "sigma-import", from, source: "gguf" }, chatTemplate ?? null);
  return { checkpoint, architecture, tokenizer: text !== null, ...(tokenizerNote ? { tokenizerNote } : {}), chatTemplate: chatTemplate !== undefined, parameters: model.parameterCount() };
}
