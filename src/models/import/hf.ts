/**
 * Hugging Face causal LMs in and out: the adapter between a folder in the
 * `transformers` layout (config.json + model.safetensors, or shards named by
 * model.safetensors.index.json) and a Sigma model, for the architectures in
 * ARCHITECTURES — one table entry each, naming every config field it reads
 * and every tensor it expects.
 *
 * All of them share one block, which Sigma's block options express
 * (docs/models.md): RMSNorm before attention and before the FFN, rotary
 * positions (HF rotate_half), grouped-query attention, SwiGLU FFNs and experts
 * without biases, no query layer, one embedding. The entries differ in the
 * attention biases, q/k norms, the sparse layer's tensor names, its router
 * and its shared expert. (GPTPanguForCausalLM, PanGu-α's port, is the one
 * entry with PanGu's block and the query layer; its mapping is its own,
 * src/models/import/pangu-alpha.ts.)
 *
 *   HF tensor                                   Sigma parameter
 *   model.embed_tokens.weight [V,C]             tokenEmbedding
 *   lm_head.weight [V,C] (untied)               outputEmbedding
 *   model.layers.l.input_layernorm.weight       blocks.l.ln1.gamma
 *   …self_attn.{q,k,v,o}_proj.{weight,bias}     blocks.l.attn.{q,k,v,o}.{weight,bias}
 *   …self_attn.{q,k}_norm.weight (Qwen3)        blocks.l.attn.{q,k}Norm.gamma
 *   …post_attention_layernorm.weight            blocks.l.ln2.gamma
 *   …mlp.{gate,up,down}_proj (dense)            blocks.l.ffn.{fc1,fc3,fc2}
 *   router (gate) [E,C]                         blocks.l.moe.router.weight
 *   expert e gate / up / down                   blocks.l.moe.w1[e] / w3[e] / w2[e]
 *   shared expert gate / up / down              blocks.l.moe.shared.{fc1,fc3,fc2}
 *   mlp.shared_expert_gate.weight [1,C]         blocks.l.moe.sharedGate.weight
 *   mlp.router_scale [1,E] (Pangu)              blocks.l.moe.router.scale
 *   model.norm.weight                           finalNorm.gamma
 *
 * Routers: Mixtral and the Qwen MoEs take the softmax over all experts, then
 * the top k (Sigma's top-k router; `renormalize` = norm_topk_prob, always on
 * for Mixtral). Pangu Pro MoE splits the experts into num_experts_per_tok
 * contiguous groups and takes each group's best expert of the same softmax,
 * weighted by its probability × router_scale (Sigma's MoGE, one per group).
 *
 * The mapping is one list of (HF name, shape, Sigma parameter, offset) rows,
 * read one way by the import and the other by the export, so
 * import(export(m)) gives m's weights back bit for bit.
 *
 * Strict: a config field that changes the function in a way Sigma does not
 * compute (rope_scaling, a sliding window inside the context, another
 * activation, sparse layers not all on top, …) is refused by name; every
 * tensor must be expected and have the expected shape; F32, F16 and BF16
 * tensors are read (converted to f32), anything else is refused.
 */
import { closeSync, existsSync, fstatSync, openSync, readSync } from "node:fs";
import { basename, join } from "node:path";
import { halfValue, bf16Value } from "../../backend/quant.js";
import { safetensorsHeader, type StWrite } from "../../checkpoint/safetensors.js";
import { SigmaError } from "../../util/errors.js";
import { headDim, kvHeads, parseModelConfig, sharedWidth, type ModelConfig } from "../config.js";
import { PanguSigma } from "../pangu-sigma.js";
import { PANGU_ALPHA_ARCHITECTURE, PANGU_ALPHA_MODEL_TYPES, panguAlphaConfig, panguAlphaHfConfig, panguAlphaIgnorable, panguAlphaMismatch, panguAlphaTensorRows } from "./pangu-alpha.js";

/** The longest context an import gives the model unless asked for more (max_position_embeddings is often 32k–128k). */
export const HF_DEFAULT_MAX_SEQ_LEN = 8192;
/** The most shards an index may name, and the largest shard read (Node reads a file into one buffer). */
const MAX_SHARDS = 4096;
const MAX_SHARD_BYTES = 2 ** 32 - 1;

type Json = Record<string, unknown>;

/** How the sparse layers of an architecture look. */
type SparseKind = "mixtral" | "qwen2moe" | "qwen3moe" | "pangu";

interface Arch {
  /** config.json's architectures[0]. */
  name: string;
  /** config.json's model_type (checked when present). */
  modelType: string;
  sparse: SparseKind | null;
  /** Attention biases when config.json does not set attention_bias. */
  attentionBias: "none" | "qkv" | "all";
  /** Whether config.json's attention_bias (true → q, k, v, o) is read. */
  attentionBiasField: boolean;
  qkNorm: boolean;
  /** PanGu-α's port: its own block and mapping (src/models/import/pangu-alpha.ts); the fields above are unused. */
  family?: "pangu-alpha";
}

/** The supported architectures, by config.json's architectures[0]. */
export const ARCHITECTURES: readonly Arch[] = [
  { name: "LlamaForCausalLM", modelType: "llama", sparse: null, attentionBias: "none", attentionBiasField: true, qkNorm: false },
  { name: "Qwen2ForCausalLM", modelType: "qwen2", sparse: null, attentionBias: "qkv", attentionBiasField: false, qkNorm: false },
  { name: "MixtralForCausalLM", modelType: "mixtral", sparse: "mixtral", attentionBias: "none", attentionBiasField: false, qkNorm: false },
  { name: "Qwen2MoeForCausalLM", modelType: "qwen2_moe", sparse: "qwen2moe", attentionBias: "qkv", attentionBiasField: false, qkNorm: false },
  { name: "Qwen3MoeForCausalLM", modelType: "qwen3_moe", sparse: "qwen3moe", attentionBias: "none", attentionBiasField: true, qkNorm: true },
  { name: "PanguProMoEForCausalLM", modelType: "PanguProMoE", sparse: "pangu", attentionBias: "all", attentionBiasField: false, qkNorm: false },
  { name: PANGU_ALPHA_ARCHITECTURE, modelType: "gpt_pangu", sparse: null, attentionBias: "all", attentionBiasField: false, qkNorm: false, family: "pangu-alpha" },
];

export const HF_ARCHITECTURES: readonly string[] = ARCHITECTURES.map((a) => a.name);

export interface HfImportOptions {
  /** Sigma domain names the model serves (all share its one embedding). Default ["en"]. */
  domains?: string[];
  /** The model's context (seqLen); default max_position_embeddings capped at HF_DEFAULT_MAX_SEQ_LEN. At most max_position_embeddings. */
  seqLen?: number;
}

/** A Sigma config from an HF config.json, with notes on what was capped or ignored. */
export interface HfConfigResult {
  arch: Arch;
  config: ModelConfig;
  notes: string[];
}

function archOf(hf: Json, source: string): Arch {
  const archs = hf.architectures;
  const name = Array.isArray(archs) && typeof archs[0] === "string" ? archs[0] : undefined;
  const supported = `supported: ${HF_ARCHITECTURES.join(", ")}`;
  if (name === undefined) throw new SigmaError(`${source}: no "architectures" list naming the model class`, `config.json must name the architecture (${supported})`);
  const arch = ARCHITECTURES.find((a) => a.name === name);
  if (!arch) throw new SigmaError(`${source}: architecture ${JSON.stringify(name)} is not supported`, supported);
  if (arch.family === "pangu-alpha" && typeof hf.model_type === "string" && PANGU_ALPHA_MODEL_TYPES.includes(hf.model_type)) return arch;
  if (hf.model_type !== undefined && hf.model_type !== arch.modelType && !(arch.sparse === "pangu" && typeof hf.model_type === "string" && hf.model_type.toLowerCase().startsWith("pangu"))) {
    throw new SigmaError(`${source}: model_type ${JSON.stringify(hf.model_type)} does not match ${name} (expected "${arch.modelType}")`, "config.json's architectures and model_type disagree");
  }
  return arch;
}

/** The Sigma config of an HF config.json (already parsed). */
export function hfConfig(hfRaw: unknown, source: string, opts: HfImportOptions = {}): HfConfigResult {
  if (typeof hfRaw !== "object" || hfRaw === null || Array.isArray(hfRaw)) throw new SigmaError(`${source} is not a JSON object`, "pass the config.json of a Hugging Face model");
  const hf = hfRaw as Json;
  const arch = archOf(hf, source);
  if (arch.family === "pangu-alpha") return { arch, ...panguAlphaConfig(hf, source, opts) };
  const notes: string[] = [];
  const has = (key: string) => hf[key] !== undefined && hf[key] !== null;
  const refuse = (key: string, why: string): never => {
    throw new SigmaError(`${source}: ${key} = ${JSON.stringify(hf[key])} is not supported: ${why}`, `Sigma computes ${arch.name} without it; only models whose function Sigma computes exactly import`);
  };
  const int = (key: string, fallback?: number, min = 1): number => {
    const v = hf[key] ?? fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min) throw new SigmaError(`${source}: "${key}" is ${JSON.stringify(hf[key])}, expected an integer ≥ ${min}`, `a ${arch.name} config.json has it`);
    return v;
  };
  const num = (key: string, fallback: number): number => {
    const v = hf[key] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v) || v < 0) throw new SigmaError(`${source}: "${key}" is ${JSON.stringify(hf[key])}, expected a non-negative number`);
    return v;
  };
  const bool = (key: string, fallback: boolean): boolean => {
    const v = hf[key] ?? fallback;
    if (typeof v !== "boolean") throw new SigmaError(`${source}: "${key}" is ${JSON.stringify(hf[key])}, expected true or false`);
    return v;
  };

  // Fields that change the function in ways Sigma does not compute.
  // rope_scaling {rope_type: "default"} (some configs spell plain RoPE so) is no scaling.
  const scaling = hf.rope_scaling as Json | null | undefined;
  const plainRope = scaling != null && typeof scaling === "object" && Object.keys(scaling).every((k) => k === "rope_type" || k === "type") && (scaling.rope_type ?? scaling.type) === "default";
  if (has("rope_scaling") && !plainRope) refuse("rope_scaling", "Sigma's rotary positions are plain RoPE (no scaling)");
  const act = hf.hidden_act ?? "silu";
  if (act !== "silu") refuse("hidden_act", "Sigma's SwiGLU uses SiLU");
  if (has("pretraining_tp") && hf.pretraining_tp !== 1) notes.push("pretraining_tp only splits the same matmuls; ignored");
  if (has("partial_rotary_factor") && hf.partial_rotary_factor !== 1) refuse("partial_rotary_factor", "Sigma rotates the whole head");
  for (const key of ["attn_logit_softcapping", "final_logit_softcapping", "logit_scale", "embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"]) {
    if (has(key)) refuse(key, "Sigma does not scale or cap logits or residuals");
  }
  if (!arch.attentionBiasField && has("attention_bias") && hf.attention_bias !== (arch.attentionBias !== "none")) refuse("attention_bias", `${arch.name} has ${arch.attentionBias} attention biases`);

  const width = int("hidden_size");
  const heads = int("num_attention_heads");
  const layers = int("num_hidden_layers");
  const maxPos = int("max_position_embeddings", 4096);
  let seqLen = Math.min(maxPos, HF_DEFAULT_MAX_SEQ_LEN);
  if (opts.seqLen !== undefined) {
    if (!Number.isInteger(opts.seqLen) || opts.seqLen < 1 || opts.seqLen > maxPos) throw new SigmaError(`seqLen ${opts.seqLen} is outside 1…${maxPos} (max_position_embeddings of ${source})`, "pick a context the model was trained for");
    seqLen = opts.seqLen;
  } else if (seqLen < maxPos) notes.push(`context capped at ${seqLen} positions (max_position_embeddings is ${maxPos}; ask for more with seqLen / --seq-len)`);
  // Sliding windows: exact as long as the context fits in the window.
  const window = hf.sliding_window;
  const windowOn = arch.name === "MixtralForCausalLM" || arch.name === "LlamaForCausalLM" ? window !== undefined && window !== null : bool("use_sliding_window", false);
  const layerTypes = hf.layer_types;
  if (Array.isArray(layerTypes) && layerTypes.some((t) => t !== "full_attention") && typeof window === "number" && window < seqLen) refuse("layer_types", `some layers attend through a sliding window of ${window} positions, smaller than the context (${seqLen})`);
  if (windowOn && typeof window === "number" && window < seqLen) refuse("sliding_window", `a window of ${window} positions is smaller than the context (${seqLen}); Sigma attends to the whole context (import with seqLen ≤ ${window} to use it within the window)`);

  // Pangu Pro MoE's head size is always hidden_size / heads (its code ignores a head_dim field).
  const D = arch.sparse !== "pangu" && hf.head_dim !== undefined && hf.head_dim !== null ? int("head_dim") : undefined;
  let attentionBias = arch.attentionBias;
  if (arch.attentionBiasField && bool("attention_bias", false)) attentionBias = "all";
  const ffnBias = arch.name === "LlamaForCausalLM" ? bool("mlp_bias", false) : false;
  if (arch.name !== "LlamaForCausalLM" && has("mlp_bias") && hf.mlp_bias !== false) refuse("mlp_bias", `${arch.name} has bias-free FFNs`);

  let dense = arch.sparse ? 0 : layers;
  let experts: Json | undefined;
  let ffnWidth = int("intermediate_size", arch.sparse === "pangu" || arch.sparse === "qwen3moe" ? 1 : undefined);
  if (arch.sparse) {
    const aux = num("router_aux_loss_coef", 0.001);
    if (arch.sparse === "mixtral") {
      const E = int("num_local_experts");
      experts = { count: E, width: int("intermediate_size"), router: { kind: "topk", k: int("num_experts_per_tok"), renormalize: true, auxLossCoef: aux } };
    } else {
      const E = int("num_experts");
      const K = int("num_experts_per_tok");
      // Sparse layers: those not in mlp_only_layers and with (l + 1) % decoder_sparse_step = 0. Sigma's are all on top.
      if (int("decoder_sparse_step", 1) !== 1) refuse("decoder_sparse_step", "Sigma's sparse layers are every layer above the dense ones (step 1)");
      const mlpOnly = hf.mlp_only_layers ?? [];
      if (!Array.isArray(mlpOnly) || mlpOnly.some((l) => typeof l !== "number" || !Number.isInteger(l) || l < 0 || l >= layers)) refuse("mlp_only_layers", `expected a list of layer indices 0…${layers - 1}`);
      const set = new Set(mlpOnly as number[]);
      for (let l = 0; l < set.size; l++) if (!set.has(l)) refuse("mlp_only_layers", "Sigma's dense layers are the bottom ones: the list must be 0, 1, …, m − 1");
      dense = set.size;
      const width = int("moe_intermediate_size");
      if (arch.sparse === "pangu") {
        experts = { count: E, width, router: { kind: "moge", groups: K, perGroup: 1, auxLossCoef: aux }, sharedWidth: int("shared_expert_intermediate_size", 0, 0) };
      } else {
        const router = { kind: "topk", k: K, renormalize: bool("norm_topk_prob", false), auxLossCoef: aux };
        experts = { count: E, width, router };
        if (arch.sparse === "qwen2moe") Object.assign(experts, { sharedWidth: int("shared_expert_intermediate_size"), sharedGate: true });
      }
    }
    if (dense === 0 && !has("intermediate_size")) ffnWidth = (experts.width as number) ?? 1;
  }
  const domains = opts.domains ?? ["en"];
  const config = parseModelConfig(
    {
      vocabSize: int("vocab_size"),
      width,
      heads,
      denseLayers: dense,
      sparseLayers: layers - dense,
      seqLen,
      ffnWidth,
      domains: domains.map((name) => ({ name, slot: 0 })),
      ...(experts ? { experts } : {}),
      queryLayer: false,
      layerNormEps: num("rms_norm_eps", 1e-6),
      norm: "rmsnorm",
      position: "rope",
      ropeTheta: num("rope_theta", 10000),
      kvHeads: int("num_key_value_heads", heads),
      ...(D !== undefined && D !== width / heads ? { headDim: D } : {}),
      ffn: "swiglu",
      ffnBias,
      attentionBias,
      qkNorm: arch.qkNorm,
      tiedEmbeddings: bool("tie_word_embeddings", false),
    },
    `the Sigma config made from ${source}`,
  );
  return { arch, config, notes };
}

/** One row of the mapping: HF tensor `hf` of `shape` is the elements offset… of Sigma parameter `sigma`. */
export interface HfTensorRow {
  hf: string;
  shape: number[];
  sigma: string;
  offset: number;
}

/** Every HF tensor of `arch` for a model of `c`, with the Sigma parameter it fills. */
export function hfTensorRows(arch: Arch, c: ModelConfig): HfTensorRow[] {
  if (arch.family === "pangu-alpha") return panguAlphaTensorRows(c);
  const C = c.width;
  const D = headDim(c);
  const [Wq, Wkv] = [c.heads * D, kvHeads(c) * D];
  const rows: HfTensorRow[] = [];
  const add = (hf: string, shape: number[], sigma: string, offset = 0) => rows.push({ hf, shape, sigma, offset });
  add("model.embed_tokens.weight", [c.vocabSize, C], "tokenEmbedding");
  if (!c.tiedEmbeddings) add("lm_head.weight", [c.vocabSize, C], "outputEmbedding");
  add("model.norm.weight", [C], "finalNorm.gamma");
  const mlp = (hf: string, sigma: string, F: number) => {
    add(`${hf}.gate_proj.weight`, [F, C], `${sigma}.fc1.weight`);
    add(`${hf}.up_proj.weight`, [F, C], `${sigma}.fc3.weight`);
    add(`${hf}.down_proj.weight`, [C, F], `${sigma}.fc2.weight`);
    if (c.ffnBias) {
      add(`${hf}.gate_proj.bias`, [F], `${sigma}.fc1.bias`);
      add(`${hf}.up_proj.bias`, [F], `${sigma}.fc3.bias`);
      add(`${hf}.down_proj.bias`, [C], `${sigma}.fc2.bias`);
    }
  };
  for (let l = 0; l < c.denseLayers + c.sparseLayers; l++) {
    const [h, s] = [`model.layers.${l}`, `blocks.${l}`];
    add(`${h}.input_layernorm.weight`, [C], `${s}.ln1.gamma`);
    add(`${h}.post_attention_layernorm.weight`, [C], `${s}.ln2.gamma`);
    const out: Record<string, number> = { q: Wq, k: Wkv, v: Wkv };
    for (const p of ["q", "k", "v"]) {
      add(`${h}.self_attn.${p}_proj.weight`, [out[p]!, C], `${s}.attn.${p}.weight`);
      if (c.attentionBias !== "none") add(`${h}.self_attn.${p}_proj.bias`, [out[p]!], `${s}.attn.${p}.bias`);
    }
    add(`${h}.self_attn.o_proj.weight`, [C, Wq], `${s}.attn.o.weight`);
    if (c.attentionBias === "all") add(`${h}.self_attn.o_proj.bias`, [C], `${s}.attn.o.bias`);
    if (arch.qkNorm) {
      add(`${h}.self_attn.q_norm.weight`, [D], `${s}.attn.qNorm.gamma`);
      add(`${h}.self_attn.k_norm.weight`, [D], `${s}.attn.kNorm.gamma`);
    }
    if (l < c.denseLayers) {
      mlp(`${h}.mlp`, `${s}.ffn`, c.ffnWidth);
      continue;
    }
    const E = c.experts!.count;
    const F = c.experts!.width ?? c.ffnWidth;
    const m = `${s}.moe`;
    const moe = arch.sparse === "mixtral" ? `${h}.block_sparse_moe` : `${h}.mlp`;
    add(`${moe}.gate.weight`, [E, C], `${m}.router.weight`);
    if (arch.sparse === "pangu") add(`${moe}.router_scale`, [1, E], `${m}.router.scale`);
    for (let e = 0; e < E; e++) {
      const [gate, up, down] = arch.sparse === "mixtral" ? ["w1", "w3", "w2"] : ["gate_proj", "up_proj", "down_proj"];
      add(`${moe}.experts.${e}.${gate}.weight`, [F, C], `${m}.w1`, e * F * C);
      add(`${moe}.experts.${e}.${up}.weight`, [F, C], `${m}.w3`, e * F * C);
      add(`${moe}.experts.${e}.${down}.weight`, [C, F], `${m}.w2`, e * C * F);
    }
    const Fs = sharedWidth(c);
    if (Fs > 0) mlp(`${moe}.shared_expert`, `${m}.shared`, Fs);
    if (c.experts!.sharedGate) add(`${moe}.shared_expert_gate.weight`, [1, C], `${m}.sharedGate.weight`);
  }
  return rows;
}

// ------------------------------------------------------------------ reading the weights

/** Converts one tensor's bytes (F32, F16, BF16; F64 rounded) into `out` (f32). */
function toF32(bytes: Uint8Array, dtype: string, out: Float32Array, name: string, source: string): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = out.length;
  if (dtype === "F32") for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
  else if (dtype === "BF16") for (let i = 0; i < n; i++) out[i] = bf16Value(view.getUint16(2 * i, true));
  else if (dtype === "F16") for (let i = 0; i < n; i++) out[i] = halfValue(view.getUint16(2 * i, true));
  else if (dtype === "F64") for (let i = 0; i < n; i++) out[i] = view.getFloat64(8 * i, true);
  else throw new SigmaError(`${source}: tensor "${name}" is ${dtype}; the importer reads F32, F16, BF16 (and F64)`, "save the model in a floating-point dtype (quantized checkpoints do not import)");
}

/** A whole file, refused past `limit` bytes (Node reads a file into one buffer). */
function readBounded(path: string, what: string, limit = MAX_SHARD_BYTES): Buffer {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw new SigmaError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, what);
  }
  try {
    const size = fstatSync(fd).size;
    if (size > limit) throw new SigmaError(`${path} is ${size} bytes, more than Sigma reads from one such file (${limit})`, "re-shard the model into smaller files (save_pretrained(max_shard_size=\"2GB\"))");
    const buf = Buffer.alloc(size);
    let at = 0;
    while (at < size) {
      const n = readSync(fd, buf, at, size - at, at);
      if (n === 0) break;
      at += n;
    }
    return buf;
  } finally {
    closeSync(fd);
  }
}

/** The largest config.json or index read. */
const MAX_JSON_BYTES = 100_000_000;

function readJson(path: string, what: string): unknown {
  const text = readBounded(path, what, MAX_JSON_BYTES).toString("utf8");
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new SigmaError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
}

/** The weight files of a folder: model.safetensors, or the shards of model.safetensors.index.json, each with the tensor names it must hold (null: whatever it holds). */
function weightFiles(dir: string): { path: string; names: Set<string> | null }[] {
  const indexPath = join(dir, "model.safetensors.index.json");
  if (!existsSync(indexPath)) return [{ path: join(dir, "model.safetensors"), names: null }];
  const map = (readJson(indexPath, "the index of a sharded checkpoint") as Json | null)?.weight_map;
  if (typeof map !== "object" || map === null || Array.isArray(map)) throw new SigmaError(`${indexPath}: no "weight_map" object of tensor → file`, "the index of a sharded checkpoint maps each tensor name to its shard");
  const shards = new Map<string, Set<string>>();
  for (const [name, file] of Object.entries(map as Json)) {
    if (typeof file !== "string" || file !== basename(file) || file.startsWith(".") || !file.endsWith(".safetensors")) {
      throw new SigmaError(`${indexPath}: tensor "${name}" maps to ${JSON.stringify(file)}, not a .safetensors file name in the same folder`, "shard names are plain file names beside the index");
    }
    if (!shards.has(file)) shards.set(file, new Set());
    shards.get(file)!.add(name);
  }
  if (shards.size === 0) throw new SigmaError(`${indexPath}: the weight_map is empty`);
  if (shards.size > MAX_SHARDS) throw new SigmaError(`${indexPath} names ${shards.size} shards, more than ${MAX_SHARDS}`);
  return [...shards].sort(([a], [b]) => (a < b ? -1 : 1)).map(([file, names]) => ({ path: join(dir, file), names }));
}

/**
 * Reads the folder's weights shard by shard, converting each tensor named in
 * `wanted` (name → shape) straight into `into(name)` (its f32 destination),
 * and checks that the files hold exactly the wanted tensors (plus those
 * `ignorable` accepts, handed to `into` too when it wants them). Each shard
 * is checked whole before any of it is converted; a tensor no shard holds is
 * reported after the last one.
 */
function readHfTensors(dir: string, wanted: Map<string, number[]>, archName: string, ignorable: (name: string) => boolean, into: (name: string) => Float32Array | null): void {
  const got = new Set<string>();
  for (const { path, names } of weightFiles(dir)) {
    const buf = readBounded(path, "the folder must hold model.safetensors, or model.safetensors.index.json and its shards (pytorch_model.bin must be converted to safetensors)");
    const { dataStart, entries } = safetensorsHeader(buf, path);
    if (names) {
      const here = new Set(entries.map((e) => e.name));
      const absent = [...names].filter((n) => !here.has(n));
      if (absent.length) throw new SigmaError(`${path}: the index places tensor${absent.length > 1 ? "s" : ""} ${list(absent)} here, but the file does not hold ${absent.length > 1 ? "them" : "it"}`, "the shards and model.safetensors.index.json do not belong together");
      const stray = [...here].filter((n) => !names.has(n));
      if (stray.length) throw new SigmaError(`${path} holds tensor${stray.length > 1 ? "s" : ""} ${list(stray)} that the index does not place in it`, "the shards and model.safetensors.index.json do not belong together");
    }
    const unexpected = entries.filter((e) => !wanted.has(e.name) && !ignorable(e.name)).map((e) => e.name);
    if (unexpected.length) throw new SigmaError(`${path}: unexpected tensor${unexpected.length > 1 ? "s" : ""} ${list(unexpected)} (not part of this ${archName})`, "the weights hold tensors config.json does not describe (another architecture, or other layer/expert counts)");
    for (const e of entries) {
      const shape = wanted.get(e.name);
      if (!shape) continue;
      if (got.has(e.name)) throw new SigmaError(`${path}: tensor "${e.name}" appears in two files`);
      got.add(e.name);
      if (e.shape.length !== shape.length || e.shape.some((d, i) => d !== shape[i])) {
        throw new SigmaError(`${path}: tensor "${e.name}" is [${e.shape}], expected [${shape}] (from config.json)`, "config.json and the weights do not belong together");
      }
    }
    for (const e of entries) {
      const out = into(e.name);
      if (out) toF32(buf.subarray(dataStart + e.begin, dataStart + e.end), e.dtype, out, e.name, path);
    }
  }
  const missing = [...wanted.keys()].filter((n) => !got.has(n));
  if (missing.length) throw new SigmaError(`${dir}: missing tensor${missing.length > 1 ? "s" : ""} ${list(missing)}`, `the weights do not hold a complete ${archName} of the size config.json describes`);
}

function list(names: string[]): string {
  return `${names.slice(0, 5).map((n) => `"${n}"`).join(", ")}${names.length > 5 ? `, … (${names.length} in all)` : ""}`;
}

/** A Sigma model from a Hugging Face folder (config.json + weights); `notes` says what was capped or ignored. */
export function importHfModel(dir: string, opts: HfImportOptions = {}): { model: PanguSigma; architecture: string; notes: string[] } {
  const configPath = join(dir, "config.json");
  const { arch, config, notes } = hfConfig(readJson(configPath, "pass a folder holding a Hugging Face config.json and its safetensors weights"), configPath, opts);
  const rows = hfTensorRows(arch, config);
  const wanted = new Map(rows.map((r) => [r.hf, r.shape]));
  // Tied models may still carry lm_head.weight (a copy of the embedding); rotary caches of old checkpoints are buffers, not weights.
  const ignorable = (n: string) => (config.tiedEmbeddings && n === "lm_head.weight") || /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/.test(n) || (arch.family === "pangu-alpha" && panguAlphaIgnorable(n));
  const model = new PanguSigma(config);
  const params = model.namedParameters();
  const dest = new Map<string, Float32Array>();
  for (const r of rows) {
    const p = params.get(r.sigma);
    if (!p) throw new Error(`hf import: Sigma has no parameter ${r.sigma}`);
    const n = r.shape.reduce((a, b) => a * b, 1);
    dest.set(r.hf, (p.tensor.data as Float32Array).subarray(r.offset, r.offset + n));
  }
  let head: Float32Array | null = null;
  readHfTensors(dir, wanted, arch.name, ignorable, (name) => {
    if (name === "lm_head.weight" && config.tiedEmbeddings) return (head = new Float32Array(config.vocabSize * config.width));
    return dest.get(name) ?? null;
  });
  const tied = head as Float32Array | null;
  if (tied) {
    const emb = model.tokenEmbedding.data;
    if (tied.length !== emb.length || tied.some((v, i) => v !== emb[i])) throw new SigmaError(`${dir}: lm_head.weight differs from ${rows.find((r) => r.sigma === "tokenEmbedding")!.hf}, but config.json says tie_word_embeddings`, "set tie_word_embeddings to false in config.json if the output layer is its own matrix");
  }
  return { model, architecture: arch.name, notes };
}

// ------------------------------------------------------------------ export

/**
 * The HF architecture of a Sigma model, or a SigmaError naming the first
 * thing no supported architecture has.
 */
export function hfArchitectureOf(c: ModelConfig): Arch {
  const no = (what: string, hint = "only models built from the block options these architectures share export (docs/models.md)"): never => {
    throw new SigmaError(`this model cannot be written as a Hugging Face model: ${what}`, hint);
  };
  if (c.queryLayer) {
    const why = panguAlphaMismatch(c);
    if (why) no(why, "the query layer exports only as PanGu-α's dense port; other models need queryLayer: false (imported ones, the pangu-pro-moe preset)");
    return ARCHITECTURES.find((a) => a.family === "pangu-alpha")!;
  }
  if (c.embeddingSlots !== 1) no(`it has ${c.embeddingSlots} embedding slots; Hugging Face models have one embedding`);
  if (c.norm !== "rmsnorm") no(`norm is ${c.norm}; the supported architectures use RMSNorm`);
  if (c.position !== "rope") no(`position is ${c.position}; the supported architectures use rotary positions`);
  if (c.ffn !== "swiglu") no(`ffn is ${c.ffn}; the supported architectures use SwiGLU`);
  const pick = (name: string) => ARCHITECTURES.find((a) => a.name === name)!;
  if (c.sparseLayers === 0) {
    if (c.qkNorm) no("a dense model with q/k norms is Qwen3ForCausalLM, which is not supported yet");
    if (c.attentionBias === "qkv" && !c.ffnBias) return pick("Qwen2ForCausalLM");
    if (c.attentionBias === "qkv") no("q, k, v biases with FFN biases: no supported architecture has both");
    return pick("LlamaForCausalLM");
  }
  if (c.ffnBias) no("its experts have biases; the supported MoE architectures have none");
  const ex = c.experts!;
  const r = ex.router;
  const Fs = sharedWidth(c);
  if (r.kind === "moge") {
    if (r.perGroup !== 1) no(`MoGE picks ${r.perGroup} experts per group; Pangu Pro MoE picks one`);
    if (c.attentionBias !== "all") no(`attentionBias is ${c.attentionBias}; Pangu Pro MoE has biases on q, k, v and o`);
    if (headDim(c) * c.heads !== c.width) no(`headDim ${headDim(c)} × heads ${c.heads} is not width ${c.width}; Pangu Pro MoE's head size is width / heads`);
    if (c.qkNorm || ex.sharedGate) no(`${c.qkNorm ? "q/k norms" : "a shared expert gate"}: Pangu Pro MoE has none`);
    return pick("PanguProMoEForCausalLM");
  }
  if (r.kind !== "topk") return no(`its router is ${r.kind}; Hugging Face MoEs route by top-k (or MoGE for Pangu Pro MoE)`, "RRE routes by token id and domain, which no Hugging Face architecture does");
  if (c.qkNorm) {
    if (c.attentionBias === "qkv") no("q/k norms with q, k, v biases: Qwen3-MoE has biases on all four or none");
    if (Fs > 0) no("a shared expert with q/k norms: Qwen3-MoE has no shared expert");
    return pick("Qwen3MoeForCausalLM");
  }
  if (Fs > 0 || c.attentionBias === "qkv") {
    if (c.attentionBias !== "qkv") no(`attentionBias is ${c.attentionBias}; Qwen2-MoE (the architecture with a shared expert) has biases on q, k, v only`);
    if (Fs === 0 || !ex.sharedGate) no("Qwen2-MoE has a shared expert with a sigmoid gate (experts.sharedWidth > 0, experts.sharedGate true)");
    return pick("Qwen2MoeForCausalLM");
  }
  if (c.attentionBias !== "none") no(`attentionBias is ${c.attentionBias}; Mixtral has no attention biases`);
  if (c.denseLayers > 0) no("dense layers below the sparse ones: Mixtral's layers are all sparse", "Qwen3-MoE has dense layers (mlp_only_layers) but also q/k norms");
  if (!r.renormalize) no("the top-k weights are not renormalised; Mixtral renormalises them (Qwen3-MoE's norm_topk_prob false needs q/k norms)");
  return pick("MixtralForCausalLM");
}

/** config.json and the tensors of a Sigma model in its HF architecture; `notes` says what Sigma settings have no HF field. */
export function exportHfModel(model: PanguSigma): { architecture: string; config: Json; tensors: Map<string, StWrite>; notes: string[] } {
  const c = model.config;
  const arch = hfArchitectureOf(c);
  const notes: string[] = [];
  if (arch.family === "pangu-alpha") {
    const { config, notes: more } = panguAlphaHfConfig(c);
    notes.push(...more);
    if (c.domains.length > 1) notes.push(`the domains (${c.domains.map((d) => d.name).join(", ")}) all share one embedding; Hugging Face models have no domains`);
    return { architecture: arch.name, config, tensors: exportTensors(model, arch), notes };
  }
  const hf: Json = {
    architectures: [arch.name],
    model_type: arch.modelType,
    vocab_size: c.vocabSize,
    hidden_size: c.width,
    num_hidden_layers: c.denseLayers + c.sparseLayers,
    num_attention_heads: c.heads,
    num_key_value_heads: kvHeads(c),
    head_dim: headDim(c),
    max_position_embeddings: c.seqLen,
    rms_norm_eps: c.layerNormEps,
    rope_theta: c.ropeTheta,
    rope_scaling: null,
    hidden_act: "silu",
    tie_word_embeddings: c.tiedEmbeddings,
    intermediate_size: c.ffnWidth,
    torch_dtype: "float32",
  };
  if (arch.attentionBiasField) hf.attention_bias = c.attentionBias === "all";
  if (arch.name === "LlamaForCausalLM") hf.mlp_bias = c.ffnBias;
  if (arch.name === "Qwen2ForCausalLM" || arch.sparse === "qwen2moe" || arch.sparse === "qwen3moe") hf.use_sliding_window = false;
  if (arch.sparse) {
    const ex = c.experts!;
    const r = ex.router;
    const F = ex.width ?? c.ffnWidth;
    if (r.kind !== "rre") hf.router_aux_loss_coef = r.auxLossCoef;
    if (r.kind === "topk" && (r.zLossCoef > 0 || r.capacityFactor !== null)) notes.push("the top-k router's zLossCoef and capacityFactor (training settings) have no field in config.json and were left out");
    if (arch.sparse === "mixtral") Object.assign(hf, { num_local_experts: ex.count, num_experts_per_tok: r.kind === "topk" ? r.k : 0, intermediate_size: F, sliding_window: null });
    else {
      Object.assign(hf, { num_experts: ex.count, moe_intermediate_size: F, decoder_sparse_step: 1, mlp_only_layers: Array.from({ length: c.denseLayers }, (_, l) => l) });
      if (r.kind === "topk") Object.assign(hf, { num_experts_per_tok: r.k, norm_topk_prob: r.renormalize });
      if (r.kind === "moge") Object.assign(hf, { num_experts_per_tok: r.groups });
      if (arch.sparse === "qwen2moe" || arch.sparse === "pangu") hf.shared_expert_intermediate_size = sharedWidth(c);
    }
  }
  if (c.domains.length > 1) notes.push(`the domains (${c.domains.map((d) => d.name).join(", ")}) all share one embedding and router; Hugging Face models have no domains`);
  return { architecture: arch.name, config: hf, tensors: exportTensors(model, arch), notes };
}

/** The model's weights under their HF names (f32). */
function exportTensors(model: PanguSigma, arch: Arch): Map<string, StWrite> {
  const params = model.namedParameters();
  const tensors = new Map<string, StWrite>();
  for (const r of hfTensorRows(arch, model.config)) {
    const n = r.shape.reduce((p, d) => p * d, 1);
    const src = params.get(r.sigma)!.tensor.data;
    tensors.set(r.hf, { shape: r.shape, data: Float32Array.from(src.subarray(r.offset, r.offset + n)) });
  }
  return tensors;
}
