/**
 * The adapter from Hugging Face GPT-2 files (`config.json` + `model.safetensors`,
 * GPT-2 tensor names) to a dense Sigma model, so that a model one already
 * has can be upcycled. Strict: every tensor must be expected and have the
 * expected shape, every config key that changes the function must have a
 * value Sigma computes; anything else is an error naming the file and key.
 *
 * How GPT-2 maps onto Sigma's model:
 *   wte [V,C]                 → tokenEmbedding (tied output, as in GPT-2); one slot
 *   wpe [T,C]                 → positionEmbedding
 *   h.i.ln_1 / ln_2           → blocks.i.ln1 / ln2 (weight → gamma, bias → beta)
 *   h.i.attn.c_attn [C,3C]    → blocks.i.attn.{q,k,v}: Conv1D is x·W, Sigma's Linear is
 *                               x·Wᵀ with W [out,in]: split the columns, transpose
 *   h.i.attn.c_proj [C,C]     → blocks.i.attn.o (transposed)
 *   h.i.mlp.c_fc / c_proj     → blocks.i.ffn.fc1 / fc2 (transposed)
 *   ln_f                      → finalNorm
 * GPT-2 has no query layer (config queryLayer: false) and uses GeLU's tanh
 * approximation (activation: gelu_tanh). Ignored: h.i.attn.bias and
 * h.i.attn.masked_bias (the causal-mask buffers older checkpoints carry), and
 * config keys that do not change the forward function (dropout rates, token
 * ids, generation settings).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { decodeSafetensors, safetensorsHeader, type StTensor } from "../../checkpoint/safetensors.js";
import type { Activation } from "../../nn/activation.js";
import { SigmaError } from "../../util/errors.js";
import { parseModelConfig, type ModelConfig } from "../config.js";
import { PanguSigma } from "../pangu-sigma.js";
import type { Tensor } from "../../tensor/tensor.js";

export interface Gpt2ImportOptions {
  /** Sigma domain names the model serves (all share its one embedding). */
  domains?: string[];
}

/** HF activation names → Sigma's (GPT-2 and the PanGu-α port); the rest are refused. */
export const HF_ACTIVATIONS: Readonly<Record<string, Activation>> = {
  gelu_new: "gelu_tanh",
  gelu_pytorch_tanh: "gelu_tanh",
  gelu_fast: "gelu_tanh",
  gelu: "gelu",
  quick_gelu: "fastgelu",
};

/** Config keys whose values must be these for the function to be GPT-2's as Sigma computes it. */
const REQUIRED_VALUES: Record<string, unknown> = {
  tie_word_embeddings: true,
  scale_attn_weights: true,
  scale_attn_by_inverse_layer_idx: false,
  add_cross_attention: false,
};

/** The Sigma config of a GPT-2 config.json (already parsed). */
export function gpt2Config(hf: unknown, source: string, opts: Gpt2ImportOptions = {}): ModelConfig {
  if (typeof hf !== "object" || hf === null || Array.isArray(hf)) throw new SigmaError(`${source} is not a JSON object`, "pass the config.json of a GPT-2 model");
  const c = hf as Record<string, unknown>;
  if (c.model_type !== undefined && c.model_type !== "gpt2") {
    throw new SigmaError(`${source}: model_type is ${JSON.stringify(c.model_type)}; this importer reads GPT-2 ("gpt2") only`, "import a GPT-2-style model, or convert yours to GPT-2's layout first");
  }
  const int = (key: string, fallback?: string): number => {
    const v = c[key] ?? (fallback !== undefined ? c[fallback] : undefined);
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1) throw new SigmaError(`${source}: "${key}" is ${JSON.stringify(v)}, expected a positive integer`, "a GPT-2 config.json has n_embd, n_head, n_layer, n_positions and vocab_size");
    return v;
  };
  for (const [key, want] of Object.entries(REQUIRED_VALUES)) {
    if (c[key] !== undefined && c[key] !== want) throw new SigmaError(`${source}: ${key} = ${JSON.stringify(c[key])} is not supported (Sigma computes GPT-2 with ${key} = ${JSON.stringify(want)})`, "only standard GPT-2 models import");
  }
  const actName = c.activation_function ?? "gelu_new";
  const activation = HF_ACTIVATIONS[String(actName)];
  if (!activation) throw new SigmaError(`${source}: activation_function ${JSON.stringify(actName)} is not supported`, `supported: ${Object.keys(HF_ACTIVATIONS).join(", ")}`);
  const width = int("n_embd");
  const inner = c.n_inner;
  if (inner !== undefined && inner !== null && (typeof inner !== "number" || !Number.isInteger(inner) || inner < 1)) throw new SigmaError(`${source}: n_inner is ${JSON.stringify(inner)}, expected null or a positive integer`);
  const eps = c.layer_norm_epsilon ?? 1e-5;
  if (typeof eps !== "number" || !(eps > 0)) throw new SigmaError(`${source}: layer_norm_epsilon is ${JSON.stringify(eps)}, expected a positive number`);
  const domains = opts.domains ?? ["en"];
  return parseModelConfig(
    {
      vocabSize: int("vocab_size"),
      width,
      heads: int("n_head"),
      denseLayers: int("n_layer"),
      sparseLayers: 0,
      seqLen: int("n_positions", "n_ctx"),
      ffnWidth: (inner as number | null | undefined) ?? 4 * width,
      domains: domains.map((name) => ({ name, slot: 0 })),
      activation,
      queryLayer: false,
      layerNormEps: eps,
    },
    `the Sigma config made from ${source}`,
  );
}

/** Writes a Conv1D weight [in, out] (columns from…from+n of it) into a Linear weight [n, in]. */
function transposeInto(dst: Float32Array, w: StTensor, from: number, n: number): void {
  const [rows, cols] = w.shape as [number, number];
  for (let o = 0; o < n; o++) for (let i = 0; i < rows; i++) dst[o * rows + i] = w.data[i * cols + from + o]!;
}

/** The dense Sigma model of GPT-2 tensors (names with or without the "transformer." prefix). */
export function gpt2Model(config: ModelConfig, raw: Map<string, StTensor>, source: string): PanguSigma {
  const C = config.width;
  const F = config.ffnWidth;
  const L = config.denseLayers;
  const tensors = new Map<string, StTensor>();
  for (const [name, t] of raw) tensors.set(name.startsWith("transformer.") ? name.slice("transformer.".length) : name, t);

  const expected: Record<string, number[]> = { "wte.weight": [config.vocabSize, C], "wpe.weight": [config.seqLen, C], "ln_f.weight": [C], "ln_f.bias": [C] };
  for (let l = 0; l < L; l++) {
    const h = `h.${l}.`;
    Object.assign(expected, {
      [`${h}ln_1.weight`]: [C], [`${h}ln_1.bias`]: [C], [`${h}ln_2.weight`]: [C], [`${h}ln_2.bias`]: [C],
      [`${h}attn.c_attn.weight`]: [C, 3 * C], [`${h}attn.c_attn.bias`]: [3 * C],
      [`${h}attn.c_proj.weight`]: [C, C], [`${h}attn.c_proj.bias`]: [C],
      [`${h}mlp.c_fc.weight`]: [C, F], [`${h}mlp.c_fc.bias`]: [F],
      [`${h}mlp.c_proj.weight`]: [F, C], [`${h}mlp.c_proj.bias`]: [C],
    });
  }
  const ignored = (n: string): boolean => /^h\.\d+\.attn\.(masked_)?bias$/.test(n) || n === "lm_head.weight";
  const unexpected = [...tensors.keys()].filter((n) => !(n in expected) && !ignored(n));
  if (unexpected.length) {
    throw new SigmaError(
      `${source}: unexpected tensor${unexpected.length > 1 ? "s" : ""} ${unexpected.slice(0, 5).map((n) => `"${n}"`).join(", ")}${unexpected.length > 5 ? ", …" : ""} (not part of a ${L}-layer GPT-2)`,
      "the file must hold GPT-2 tensors (wte, wpe, h.N.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj}, ln_f) matching config.json's n_layer",
    );
  }
  const missing = Object.keys(expected).filter((n) => !tensors.has(n));
  if (missing.length) {
    throw new SigmaError(`${source}: missing tensor${missing.length > 1 ? "s" : ""} ${missing.slice(0, 5).map((n) => `"${n}"`).join(", ")}${missing.length > 5 ? ", …" : ""}`, "the file does not hold a complete GPT-2 of the size config.json describes");
  }
  for (const [name, shape] of Object.entries(expected)) {
    const t = tensors.get(name)!;
    if (t.dtype === "I32") throw new SigmaError(`${source}: tensor "${name}" is I32, expected floating point`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new SigmaError(`${source}: tensor "${name}" is [${t.shape}], expected [${shape}] (from config.json)`, "config.json and model.safetensors do not belong together");
    }
  }
  const head = tensors.get("lm_head.weight");
  if (head) {
    const wte = tensors.get("wte.weight")!.data;
    if (head.data.length !== wte.length || head.data.some((v, i) => v !== wte[i])) {
      throw new SigmaError(`${source}: lm_head.weight differs from wte.weight (an untied output layer)`, "Sigma ties the output to the token embedding; only tied GPT-2 models import");
    }
  }

  const model = new PanguSigma(config);
  const get = (n: string): StTensor => tensors.get(n)!;
  const copy = (dst: { data: Float32Array | Float64Array } | null | undefined, n: string): void => dst!.data.set(get(n).data);
  // GPT-2's block is the default one: LayerNorms (gamma and beta), learned positions.
  const beta = (norm: object): Tensor => (norm as { beta: Tensor }).beta;
  copy(model.tokenEmbedding, "wte.weight");
  copy(model.positionEmbedding, "wpe.weight");
  model.blocks.forEach((b, l) => {
    const h = `h.${l}.`;
    copy(b.ln1.gamma, `${h}ln_1.weight`);
    copy(beta(b.ln1), `${h}ln_1.bias`);
    copy(b.ln2.gamma, `${h}ln_2.weight`);
    copy(beta(b.ln2), `${h}ln_2.bias`);
    const qkv = get(`${h}attn.c_attn.weight`);
    const qkvBias = get(`${h}attn.c_attn.bias`).data;
    [b.attn.q, b.attn.k, b.attn.v].forEach((lin, j) => {
      transposeInto(lin.weight.data as Float32Array, qkv, j * C, C);
      lin.bias!.data.set(qkvBias.subarray(j * C, (j + 1) * C));
    });
    transposeInto(b.attn.o.weight.data as Float32Array, get(`${h}attn.c_proj.weight`), 0, C);
    copy(b.attn.o.bias!, `${h}attn.c_proj.bias`);
    transposeInto(b.ffn!.fc1.weight.data as Float32Array, get(`${h}mlp.c_fc.weight`), 0, F);
    copy(b.ffn!.fc1.bias!, `${h}mlp.c_fc.bias`);
    transposeInto(b.ffn!.fc2.weight.data as Float32Array, get(`${h}mlp.c_proj.weight`), 0, C);
    copy(b.ffn!.fc2.bias!, `${h}mlp.c_proj.bias`);
  });
  copy(model.finalNorm.gamma, "ln_f.weight");
  copy(beta(model.finalNorm), "ln_f.bias");
  return model;
}

/** dtypes in a safetensors header, read before decoding so that half precision gets a clear error. */
function checkDtypes(buf: Uint8Array, source: string): void {
  for (const [name, e] of Object.entries(safetensorsHeader(buf, source).header)) {
    const dtype = (e as { dtype?: string } | null)?.dtype;
    if (name !== "__metadata__" && (dtype === "F16" || dtype === "BF16")) {
      throw new SigmaError(`${source}: tensor "${name}" is ${dtype}; the importer reads F32 and F64`, "save the model in float32 first (in transformers: model.float().save_pretrained(dir))");
    }
  }
}

function readJson(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new SigmaError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "pass a folder holding a GPT-2 config.json and model.safetensors");
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new SigmaError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
}

/** A dense Sigma model from a folder with a GPT-2 `config.json` and `model.safetensors`. */
export function importGpt2(dir: string, opts: Gpt2ImportOptions = {}): PanguSigma {
  const configPath = join(dir, "config.json");
  const config = gpt2Config(readJson(configPath), configPath, opts);
  const weightsPath = join(dir, "model.safetensors");
  let buf: Buffer;
  try {
    buf = readFileSync(weightsPath);
  } catch (e) {
    throw new SigmaError(`cannot read ${weightsPath}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "the importer reads model.safetensors (a pytorch_model.bin must be converted to safetensors first)");
  }
  checkDtypes(buf, weightsPath);
  return gpt2Model(config, decodeSafetensors(buf, weightsPath).tensors, weightsPath);
}
