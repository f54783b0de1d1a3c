/**
 * Models that commands read and write whole (upcycle, extract, import): a
 * source is a checkpoint folder (a run's checkpoints/ gives its newest) or a
 * bare model .safetensors, with its tokenizer when it has one; the output is
 * a checkpoint folder `<out>/step-NNNNNNNN/` written all-or-nothing by
 * src/checkpoint/folder.ts — model.safetensors, tokenizer.json when known,
 * state.json saying where the model came from — so that `sigma eval`,
 * `generate`, `balance` and these commands read it back.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { openCheckpointFolder, readProvenance, saveCheckpointFolder } from "../checkpoint/folder.js";
import { decodeModel, encodeModel, loadModel } from "../models/io.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import type { ModelConfig } from "../models/config.js";
import { readManifest } from "../data/manifest.js";
import { diffFields } from "../train/checkpoint.js";
import { fromHfJson, sha256Hex } from "../tokenizer/hfjson.js";
import type { Tokenizer } from "../tokenizer/codec.js";
import { SigmaError } from "../util/errors.js";
import { readRegularFile } from "../util/read.js";
import { checkVocab } from "../serve/load.js";

export interface ModelSource {
  model: PanguSigma;
  /** tokenizer.json's text and the tokenizer, or null when the source has none. */
  tokenizer: { text: string; tokenizer: Tokenizer } | null;
  /** The resolved folder or file. */
  path: string;
  /** Training step of a checkpoint (0 for a bare file). */
  step: number;
  /** The data folder it was trained on, when recorded. */
  dataDir: string | null;
}

function parseTokenizer(text: string, where: string, model: PanguSigma): { text: string; tokenizer: Tokenizer } {
  return { text, tokenizer: checkVocab(fromHfJson(text, where), model, where) };
}

export function readModelSource(path: string): ModelSource {
  if (existsSync(path) && statSync(path).isFile()) {
    const model = loadModel(path);
    const tokPath = join(dirname(path), "tokenizer.json");
    const tokenizer = existsSync(tokPath) ? parseTokenizer(readRegularFile(tokPath, "tokenizer", "put the model's tokenizer.json beside it, or remove what is there", 512 * 2 ** 20).toString("utf8"), tokPath, model) : null;
    return { model, tokenizer, path, step: 0, dataDir: null };
  }
  const f = openCheckpointFolder(path);
  const model = decodeModel(f.read("model.safetensors"), join(f.path, "model.safetensors"));
  const tokenizer = f.state.files["tokenizer.json"] ? parseTokenizer(f.read("tokenizer.json").toString("utf8"), join(f.path, "tokenizer.json"), model) : null;
  const state = readProvenance(f);
  return { model, tokenizer, path: f.path, step: state.step, dataDir: state.dataDir };
}

/** Writes `<out>/step-NNNNNNNN/` and returns it. `state` records the provenance. */
export function writeModelFolder(out: string, step: number, model: PanguSigma, tokenizerText: string | null, state: Record<string, unknown>): string {
  const files = new Map<string, Uint8Array | string>([["model.safetensors", encodeModel(model)]]);
  if (tokenizerText !== null) files.set("tokenizer.json", tokenizerText);
  const tok = tokenizerText !== null ? { tokenizer: { sha256: sha256Hex(tokenizerText), vocabSize: model.config.vocabSize } } : {};
  return saveCheckpointFolder(out, step, files, { ...state, step, ...tok });
}

/** "1.23M" style parameter counts. */
export const millions = (n: number): string => `${(n / 1e6).toFixed(n < 1e6 ? 3 : 2)}M`;

/**
 * The starting weights of a new training run (`sigma train --init`): a
 * model whose config equals the run's model section, made with the data's
 * tokenizer when it records one.
 */
export function readInitModel(path: string, model: ModelConfig, dataDir: string): PanguSigma {
  const src = readModelSource(path);
  const diff = diffFields(src.model.config, model);
  if (diff.length) throw new SigmaError(`--init ${src.path} does not match the run's model section:\n  ${diff.join("\n  ")}`, "copy the config the model was made with (e.g. the one given to `sigma upcycle --config`) into the run's model section");
  const manifest = join(dataDir, "manifest.json");
  if (src.tokenizer && existsSync(manifest) && sha256Hex(src.tokenizer.text) !== readManifest(manifest).tokenizer.sha256) {
    throw new SigmaError(`--init ${src.path} was made with another tokenizer than the data in ${dataDir}`, "prepare the data with the model's tokenizer (sigma data prepare --tokenizer), or upcycle with the data's tokenizer");
  }
  return src.model;
}
