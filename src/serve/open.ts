/**
 * The one way to open a saved model. Every command and the library's
 * `openModel` come through here, so a new checkpoint layout changes one file.
 *
 * A path may be:
 *   - a checkpoint folder `step-NNNNNNNN/` (state.json lists every file with
 *     its sha256; each is verified as it is read) — written by `sigma train`,
 *     `upcycle`, `extract`, `import` or the library's `model.save`;
 *   - a folder of checkpoints, or a run folder with `checkpoints/`: its newest
 *     complete checkpoint;
 *   - an ECSS checkpoint: the dense weights in the folder, the experts read
 *     from the expert store it names (docs/store.md);
 *   - an expert-parallel checkpoint: the dense weights and the per-rank
 *     expert shards in the folder, assembled into the whole model
 *     (src/models/shards.ts);
 *   - a bare model `.safetensors` (the config is in its metadata), with the
 *     `tokenizer.json` beside it when there is one; or a folder holding just
 *     such a file (no state.json).
 */
import { existsSync, readdirSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { openCheckpointFolder, readProvenance, STATE_FILE, type Provenance } from "../checkpoint/folder.js";
import { decodeCheckpointModel, loadModel } from "../models/io.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import { parseTokenizerJson, sha256Hex } from "../tokenizer/hfjson.js";
import { chatTemplateOf, TOKENIZER_CONFIG_FILE } from "../tokenizer/chat-template.js";
import type { TextTokenizer } from "../tokenizer/codec.js";
import { SigmaError } from "../util/errors.js";
import { readRegularFile } from "../util/read.js";
import { modelFromStoreCheckpoint } from "./load-store.js";
import { quantizeModel, storedFormat, unquantizeModel } from "../models/quantize.js";
import type { WeightFormat } from "../backend/quant.js";
import { KV_FORMATS, type KVFormat } from "../nn/attention.js";

const MODEL_FILE = "model.safetensors";
const TOKENIZER_FILE = "tokenizer.json";
const MAX_TOKENIZER_BYTES = 512 * 2 ** 20;

/** A training run's batch size, seed and evaluation batches (from a train checkpoint's config), so that `sigma eval` can measure as the run did. */
export type RunSettings = NonNullable<Provenance["run"]>;

export interface ModelSource {
  model: PanguSigma;
  /** tokenizer.json's text and the tokenizer, or null when the source has none. */
  tokenizer: { text: string; tokenizer: TextTokenizer } | null;
  /** The resolved checkpoint folder, or the model file. */
  path: string;
  /** Training step of a checkpoint (0 for a bare file). */
  step: number;
  /** The data folder it was trained on, when recorded. */
  dataDir: string | null;
  /** The training run's settings, when the checkpoint is a train checkpoint. */
  run: RunSettings | null;
  /** A Hugging Face chat template kept with the model (the checkpoint's tokenizer_config.json), or null. */
  chatTemplate: string | null;
}

/** `tok`, checked to have the model's vocabulary size (`where` names the tokenizer file). */
export function checkVocab(tok: TextTokenizer, model: PanguSigma, where: string): TextTokenizer {
  // A Hugging Face model's embedding may have more rows than its tokenizer has tokens (padded to a round size).
  if (tok.kind === "hf" ? tok.vocabSize > model.config.vocabSize : tok.vocabSize !== model.config.vocabSize) throw new SigmaError(`${where} has ${tok.vocabSize} tokens but the model's vocabulary is ${model.config.vocabSize}`, "use the tokenizer the model was trained with");
  return tok;
}

function parseTokenizer(text: string, where: string, model: PanguSigma): { text: string; tokenizer: TextTokenizer } {
  return { text, tokenizer: checkVocab(parseTokenizerJson(text, where), model, where) };
}

/** A bare model file: the path itself, or a folder without state.json that holds one model file. */
function bareModelFile(path: string): string | null {
  if (statSync(path).isFile()) return path;
  if (existsSync(join(path, STATE_FILE)) || existsSync(join(path, "checkpoints"))) return null;
  if (readdirSync(path).some((n) => /^step-\d+$/.test(n))) return null;
  if (existsSync(join(path, MODEL_FILE))) return join(path, MODEL_FILE);
  const found = readdirSync(path).filter((n) => n.endsWith(".safetensors"));
  if (found.length === 1) return join(path, found[0]!);
  if (found.length > 1) throw new SigmaError(`${path} holds several .safetensors files (${found.join(", ")}) and no state.json`, "pass the model's file itself");
  return null;
}

export interface OpenOptions {
  /**
   * Weights for inference (docs/decode.md): the matrices converted to this
   * format at load, read by the decode kernels. A file written by `sigma
   * quantize` opens in its own format unless another is asked for.
   */
  weights?: WeightFormat;
  /**
   * How decoding caches keys and values: "f32" (the default) or "f16" (half
   * the bytes per position, so long contexts and many sequences read and hold
   * half as much; attention then sees keys and values rounded to f16; docs/decode.md).
   */
  kvCache?: KVFormat;
  /**
   * Without `weights`: a float32 model's matrices are taken as f32 stored
   * views of its own weights (no copy but q/k/v stacked), so decoding runs
   * through the decode step (docs/decode.md#the-decode-step) — the same
   * products, without forward's per-op machinery. A model so opened cannot be
   * trained. The decoding commands (generate, chat, serve) set it.
   */
  decodeStep?: boolean;
}

/** Checks a user's KV cache format (`where` names the flag or option in the error). */
export function parseKVFormat(v: string, where: string): KVFormat {
  if ((KV_FORMATS as readonly string[]).includes(v)) return v as KVFormat;
  throw new SigmaError(`${where} "${v}" is not a KV cache format`, `use one of ${KV_FORMATS.join(", ")} (docs/decode.md)`);
}

/** Opens whatever `path` names (see the file comment), its weights converted when `opts.weights` says so. */
export function openModelSource(path: string, opts: OpenOptions = {}): ModelSource {
  const kv = opts.kvCache === undefined ? null : parseKVFormat(String(opts.kvCache), "kvCache");
  const src = openSource(path);
  // Before any conversion: a float64 model cannot take an f16 cache.
  if (kv === "f16" && src.model.tokenEmbedding.dtype !== "float32") throw new SigmaError(`${src.path} is a ${src.model.tokenEmbedding.dtype} model; an f16 KV cache serves float32 models only`, "use --kv-cache f32 (kvCache: \"f32\")");
  if (opts.weights) quantizeModel(src.model, opts.weights);
  else if (opts.decodeStep && storedFormat(src.model) === null && src.model.tokenEmbedding.dtype === "float32") {
    try {
      quantizeModel(src.model, "f32");
    } catch (e) {
      // A weight that is not finite cannot be stored: forward's general path takes the model as it is.
      if (!(e instanceof SigmaError)) throw e;
      unquantizeModel(src.model);
    }
  }
  if (kv) src.model.kvFormat = kv;
  return src;
}

function openSource(path: string): ModelSource {
  if (!existsSync(path)) throw new SigmaError(`${path} does not exist`, "pass a checkpoint folder (a run folder gives its newest checkpoint) or a model .safetensors file");
  const file = bareModelFile(path);
  if (file !== null) {
    const model = loadModel(file);
    const tokPath = join(dirname(file), TOKENIZER_FILE);
    const tokenizer = existsSync(tokPath) ? parseTokenizer(readRegularFile(tokPath, "tokenizer", "put the model's tokenizer.json beside it, or remove what is there", MAX_TOKENIZER_BYTES).toString("utf8"), tokPath, model) : null;
    return { model, tokenizer, path: file, step: 0, dataDir: null, run: null, chatTemplate: null };
  }
  const f = openCheckpointFolder(path);
  const state = readProvenance(f);
  // ECSS checkpoints keep the experts in their store; expert-parallel ones in per-rank shard files, assembled here.
  if ((f.state as Record<string, unknown>).stores !== undefined) {
    throw new SigmaError(`${f.path} keeps its experts in per-rank expert stores (ECSS on several ranks), which are not opened as one model`, "resume it on one process for a step (`sigma train --resume`: it gathers the experts into one store) and open that run's checkpoint, or convert that one with `sigma store convert --to ram`");
  }
  const model = state.store ? modelFromStoreCheckpoint(f, state.store) : decodeCheckpointModel(f);
  let tokenizer: ModelSource["tokenizer"] = null;
  if (Object.hasOwn(f.state.files, TOKENIZER_FILE)) {
    const bytes = f.read(TOKENIZER_FILE);
    const tokPath = join(f.path, TOKENIZER_FILE);
    if (state.tokenizerSha256 && sha256Hex(bytes) !== state.tokenizerSha256) {
      throw new SigmaError(`${tokPath} is not the tokenizer the model was trained with`, "the checkpoint is damaged; use an earlier one");
    }
    tokenizer = parseTokenizer(bytes.toString("utf8"), tokPath, model);
  }
  let chatTemplate: string | null = null;
  if (Object.hasOwn(f.state.files, TOKENIZER_CONFIG_FILE)) {
    const where = join(f.path, TOKENIZER_CONFIG_FILE);
    let config: unknown;
    try {
      config = JSON.parse(f.read(TOKENIZER_CONFIG_FILE).toString("utf8"));
    } catch (e) {
      if (e instanceof SigmaError) throw e;
      throw new SigmaError(`${where} is not valid JSON (${(e as Error).message})`, "the checkpoint is damaged; use an earlier one");
    }
    chatTemplate = chatTemplateOf(config, where);
  }
  return { model, tokenizer, path: f.path, step: state.step, dataDir: state.dataDir, run: state.run, chatTemplate };
}

/** A source with its tokenizer, for commands that read or write text (generate, evaluate on text). */
export function requireTokenizer(src: ModelSource): TextTokenizer {
  if (src.tokenizer) return src.tokenizer.tokenizer;
  throw new SigmaError(
    `${src.path} has no tokenizer`,
    src.path.endsWith(".safetensors") ? `put the model's tokenizer.json beside ${basename(src.path)}` : "pass a checkpoint that carries its tokenizer.json",
  );
}
