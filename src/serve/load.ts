/**
 * Loading a trained model for inference: from a checkpoint folder (written by
 * `sigma train`; every file verified against its hashes) or a bare model
 * .safetensors file with a tokenizer beside it.
 */
import { existsSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { openCheckpointFolder, readProvenance } from "../checkpoint/folder.js";
import { decodeModel, loadModel } from "../models/io.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import { fromHfJson, loadTokenizer, sha256Hex } from "../tokenizer/hfjson.js";
import type { Tokenizer } from "../tokenizer/codec.js";
import { SigmaError } from "../util/errors.js";
import { modelFromStoreCheckpoint } from "./load-store.js";

export interface LoadedModel {
  model: PanguSigma;
  tokenizer: Tokenizer;
  /** Where the model came from (the resolved checkpoint folder or the file). */
  path: string;
  /** Optimizer steps it was trained for, when known. */
  step: number | null;
  /** The data folder it was trained on, when known (for evaluation). */
  dataDir: string | null;
}

export function loadForInference(path: string): LoadedModel {
  if (existsSync(path) && statSync(path).isFile()) {
    const tokPath = join(dirname(path), "tokenizer.json");
    if (!existsSync(tokPath)) throw new SigmaError(`no tokenizer.json beside ${path}`, "pass a checkpoint folder (it carries its tokenizer), or put the tokenizer next to the model file");
    const model = loadModel(path);
    return { model, tokenizer: checkVocab(loadTokenizer(tokPath).tokenizer, model, tokPath), path, step: null, dataDir: null };
  }
  const f = openCheckpointFolder(path);
  const state = readProvenance(f);
  // ECSS checkpoints keep the experts in their store.
  const model = state.store ? modelFromStoreCheckpoint(f, state.store) : decodeModel(f.read("model.safetensors"), join(f.path, "model.safetensors"));
  const tokBytes = f.read("tokenizer.json");
  const tokPath = join(f.path, "tokenizer.json");
  if (state.tokenizerSha256 && sha256Hex(tokBytes) !== state.tokenizerSha256) {
    throw new SigmaError(`${tokPath} is not the tokenizer the model was trained with`, "the checkpoint is damaged; use an earlier one");
  }
  const tokenizer = checkVocab(fromHfJson(tokBytes.toString("utf8"), tokPath), model, tokPath);
  return { model, tokenizer, path: f.path, step: state.step, dataDir: state.dataDir };
}

/** `tok`, checked to have the model's vocabulary size (`where` names the tokenizer file). */
export function checkVocab(tok: Tokenizer, model: PanguSigma, where: string): Tokenizer {
  if (tok.vocabSize !== model.config.vocabSize) throw new SigmaError(`${where} has ${tok.vocabSize} tokens but the model's vocabulary is ${model.config.vocabSize}`, "use the tokenizer the model was trained with");
  return tok;
}

/** Index of a domain name in the model's domains, with a hint listing the known ones. */
export function domainIndexOf(model: PanguSigma, name: string): number {
  const names = model.config.domains.map((d) => d.name);
  const i = names.indexOf(name);
  if (i < 0) throw new SigmaError(`Unknown domain "${name}"; the model knows ${names.join(", ")}`, "pass one of them with --domain");
  return i;
}

/**
 * The prompt as token ids: the domain's control token first (as every
 * training document starts), then the text, where special tokens such as
 * <|lang:en|> are recognised.
 */
export function encodePrompt(tok: Tokenizer, domain: string, text: string): number[] {
  const ids: number[] = [];
  if (tok.domains.includes(domain)) ids.push(tok.domainTokenId(domain));
  ids.push(...tok.encode(text, { allowSpecial: true }));
  return ids;
}
