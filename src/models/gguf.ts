/**
 * Sigma models as GGUF files for llama.cpp, and back (docs/gguf.md).
 *
 * The container is src/checkpoint/gguf.ts; this file decides what goes in
 * it. Each llama.cpp architecture Sigma can write is one entry of
 * ARCHITECTURES: the reason a model cannot be written as it (or null), its
 * hyperparameter keys, the Sigma config those keys give back, and its
 * tensor table — each GGUF tensor made of one or more Sigma parameters whose
 * rows are stacked (llama.cpp's fused q|k|v), optionally with the rows
 * reordered (the q/k permutation the `llama` architecture needs). Export and
 * import both walk that table, so an entry is all a new architecture needs.
 *
 * Layout: a Sigma parameter [rows, cols] (row-major; a Linear's weight is
 * [out, in]) is the ggml tensor ne = [cols, rows] — llama.cpp's convention,
 * so nothing is transposed. Matrices (2-D) take the chosen type; vectors
 * (norms, biases) stay F32, as llama.cpp's converter keeps them. A Q8_0
 * matrix whose rows are not whole 32-value blocks is written F16 instead.
 *
 * The tokenizer goes in as tokenizer.ggml.* (a byte-level BPE: tokens,
 * types, merges, special ids, the pre-tokenizer name; a SentencePiece-style
 * one as llama.cpp's "llama" model with scores), the chat template (Sigma's,
 * or the Hugging Face model's) as tokenizer.chat_template, and the full
 * Sigma config as sigma.config so
 * that import gives back the same model (domains, seed, …); a GGUF without
 * it (written by another tool) imports from the architecture keys alone.
 */
import { ggufGet, gv, type GgmlType, type GgufFile, type GgufTensor, type GgufValue } from "../checkpoint/gguf.js";
import { bf16Bits, bf16Value, halfBits, halfValue, quantize } from "../backend/quant.js";
import { Tokenizer } from "../tokenizer/codec.js";
import { HfTokenizer } from "../tokenizer/hf.js";
import { checkChatTemplate } from "../tokenizer/chat-template.js";
import { parseSpecials } from "../tokenizer/specials.js";
import { SigmaError } from "../util/errors.js";
import { parseJsonStrict } from "../util/strict-json.js";
import { expertsPerToken, headDim, kvHeads, parameterCounts, parseModelConfig, sharedWidth, type ModelConfig, type ModelConfigInput } from "./config.js";
import { PanguSigma } from "./pangu-sigma.js";
import { routerSpec, softmaxTopkRouter } from "../moe/routers/index.js";

/** What `sigma export gguf --type` offers: the ggml type of the matrices. */
export const GGUF_EXPORT_TYPES = ["f32", "f16", "bf16", "q8_0"] as const;
export type GgufExportType = (typeof GGUF_EXPORT_TYPES)[number];
const MATRIX_TYPE: Record<GgufExportType, GgmlType> = { f32: "F32", f16: "F16", bf16: "BF16", q8_0: "Q8_0" };
/** general.file_type (llama.cpp's llama_ftype): ALL_F32, MOSTLY_F16, MOSTLY_BF16, MOSTLY_Q8_0. */
const FILE_TYPE: Record<GgufExportType, number> = { f32: 0, f16: 1, bf16: 32, q8_0: 7 };

/**
 * One GGUF tensor of the table; `{L}` in names stands for the layer.
 * Export: the `sigma` parameters' rows stacked in this order (llama.cpp's
 * fused q|k|v), reordered by `rowOrder`, times `scale`, shaped `ne`.
 * Import undoes each step. A matrix is [rows, cols] with ne [cols, rows]
 * unless `ne` says otherwise (3-D expert stacks); a vector is one row.
 */
export interface TensorEntry {
  gguf: string;
  sigma: string[];
  /** GGUF row r holds stacked Sigma row order[r] (vectors: element order[r]), for layouts that differ from Sigma's in row order only. */
  rowOrder?: (c: ModelConfig) => Int32Array;
  /** GGUF values = Sigma values × scale (a power of two, so that it is exact both ways). */
  scale?: number;
  /** The ggml shape when it is not the default [cols, rows] / [length] (e.g. [C, Fe, E] for stacked experts). */
  ne?: (c: ModelConfig) => number[];
  /** A tensor llama.cpp needs that no Sigma parameter backs (`sigma` empty): every value is `value`; import requires exactly that. */
  fill?: { value: number; ne: (c: ModelConfig) => number[] };
  /** Only for configs where this holds (biases a model may not have, an untied output…). */
  when?: (c: ModelConfig) => boolean;
}

/** Reads typed keys of the file being imported (errors name the file and key). */
export interface MetaReader {
  u32(key: string): number;
  f32(key: string): number;
  has(key: string): boolean;
  /** Whether the file holds a tensor of this name (optional biases, an untied output). */
  hasTensor(name: string): boolean;
}

export interface GgufArchitecture {
  /** llama.cpp's general.architecture; its keys are "<name>.…". */
  name: string;
  /** Why `c` cannot be written as this architecture, or null. */
  refuse(c: ModelConfig): string | null;
  /** The "<name>.…" hyperparameters. */
  hparams(c: ModelConfig): [string, GgufValue][];
  /** The Sigma config these hyperparameters describe (vocabSize comes from the token list). */
  config(m: MetaReader, vocabSize: number): ModelConfigInput;
  /** Tensors that occur once (embeddings, final norm). */
  globals: TensorEntry[];
  /** Tensors of each layer, names with {L}. */
  layer: TensorEntry[];
  /** llama.cpp requires output.weight even when tied (qwen2moe): a tied model writes the token embedding twice. */
  outputRequired?: boolean;
}

export const GPT2_ARCHITECTURE: GgufArchitecture = {
  name: "gpt2",
  refuse(c) {
    if (c.queryLayer) return "it has PanGu-α's query layer on top, which no llama.cpp architecture has";
    if (c.sparseLayers > 0) return "it has sparse (MoE) layers; llama.cpp's gpt2 is dense";
    if (c.embeddingSlots !== 1) return `it has ${c.embeddingSlots} embedding slots; a GGUF model has one token embedding`;
    if (c.norm !== "layernorm") return "it uses RMSNorm; llama.cpp's gpt2 has LayerNorm";
    if (c.position !== "learned") return "it has rotary positions; llama.cpp's gpt2 has a learned position table";
    if (c.ffn !== "gelu") return "its FFN is SwiGLU; llama.cpp's gpt2 has a two-matrix GELU FFN";
    if (c.activation !== "gelu_tanh") return `its FFN activation is ${c.activation}; llama.cpp's gpt2 computes GELU's tanh form (gelu_tanh)`;
    if (kvHeads(c) !== c.heads || headDim(c) * c.heads !== c.width) return "it has grouped-query attention or a head size other than width/heads; llama.cpp's gpt2 has neither";
    if (c.attentionBias !== "all" || !c.ffnBias || c.qkNorm) return "its biases or q/k norms differ from GPT-2's (biases everywhere, no q/k norms)";
    if (!c.tiedEmbeddings) return "its output layer is untied; Sigma's gpt2 export writes the tied GPT-2 shape";
    return null;
  },
  hparams: (c) => [
    ["gpt2.context_length", gv.u32(c.seqLen)],
    ["gpt2.embedding_length", gv.u32(c.width)],
    ["gpt2.feed_forward_length", gv.u32(c.ffnWidth)],
    ["gpt2.block_count", gv.u32(c.denseLayers)],
    ["gpt2.attention.head_count", gv.u32(c.heads)],
    ["gpt2.attention.layer_norm_epsilon", gv.f32(c.layerNormEps)],
  ],
  config(m, vocabSize) {
    if (m.has("gpt2.attention.head_count_kv") && m.u32("gpt2.attention.head_count_kv") !== m.u32("gpt2.attention.head_count")) {
      throw new SigmaError("gpt2.attention.head_count_kv differs from head_count (grouped-query attention)", "Sigma's GPT-2 blocks have as many key/value heads as query heads");
    }
    return {
      vocabSize,
      width: m.u32("gpt2.embedding_length"),
      heads: m.u32("gpt2.attention.head_count"),
      denseLayers: m.u32("gpt2.block_count"),
      sparseLayers: 0,
      seqLen: m.u32("gpt2.context_length"),
      ffnWidth: m.u32("gpt2.feed_forward_length"),
      domains: [{ name: "en", slot: 0 }],
      activation: "gelu_tanh",
      queryLayer: false,
      layerNormEps: m.f32("gpt2.attention.layer_norm_epsilon"),
    };
  },
  globals: [
    { gguf: "token_embd.weight", sigma: ["tokenEmbedding"] },
    { gguf: "position_embd.weight", sigma: ["positionEmbedding"] },
    { gguf: "output_norm.weight", sigma: ["finalNorm.gamma"] },
    { gguf: "output_norm.bias", sigma: ["finalNorm.beta"] },
  ],
  layer: [
    { gguf: "blk.{L}.attn_norm.weight", sigma: ["blocks.{L}.ln1.gamma"] },
    { gguf: "blk.{L}.attn_norm.bias", sigma: ["blocks.{L}.ln1.beta"] },
    { gguf: "blk.{L}.attn_qkv.weight", sigma: ["blocks.{L}.attn.q.weight", "blocks.{L}.attn.k.weight", "blocks.{L}.attn.v.weight"] },
    { gguf: "blk.{L}.attn_qkv.bias", sigma: ["blocks.{L}.attn.q.bias", "blocks.{L}.attn.k.bias", "blocks.{L}.attn.v.bias"] },
    { gguf: "blk.{L}.attn_output.weight", sigma: ["blocks.{L}.attn.o.weight"] },
    { gguf: "blk.{L}.attn_output.bias", sigma: ["blocks.{L}.attn.o.bias"] },
    { gguf: "blk.{L}.ffn_norm.weight", sigma: ["blocks.{L}.ln2.gamma"] },
    { gguf: "blk.{L}.ffn_norm.bias", sigma: ["blocks.{L}.ln2.beta"] },
    { gguf: "blk.{L}.ffn_up.weight", sigma: ["blocks.{L}.ffn.fc1.weight"] },
    { gguf: "blk.{L}.ffn_up.bias", sigma: ["blocks.{L}.ffn.fc1.bias"] },
    { gguf: "blk.{L}.ffn_down.weight", sigma: ["blocks.{L}.ffn.fc2.weight"] },
    { gguf: "blk.{L}.ffn_down.bias", sigma: ["blocks.{L}.ffn.fc2.bias"] },
  ],
};

// ------------------------------------------------------------------ the Llama family

/**
 * What one of llama.cpp's Llama-family architectures accepts: these four
 * share the block (RMSNorm, rotary positions, grouped-query attention,
 * SwiGLU) and differ in the options below. Each is read from llama.cpp's
 * loader and graph for the architecture (src/models/<name>.cpp).
 */
interface FamilySpec {
  name: "llama" | "qwen2" | "qwen2moe" | "qwen3moe";
  /** Dense layers only, experts only, or either (llama: with experts it is Mixtral). */
  layers: "dense" | "sparse" | "either";
  /** RoPE pairs adjacent dimensions (llama's "normal" rope): q and k rows are reordered. Else NEOX = HF rotate_half. */
  adjacentRope: boolean;
  /** The attention biases its loader reads. */
  attentionBias: readonly ("none" | "qkv" | "all")[];
  /** Biases on the dense FFN (llama's optional ffn_gate/up/down.bias). */
  ffnBias: boolean;
  /** q is heads·headDim wide with key_length; false: llama.cpp sizes q as the width (qwen2, qwen2moe). */
  anyHeadDim: boolean;
  /** The per-head q/k RMSNorms: required (qwen3moe) or absent. */
  qkNorm: boolean;
  /** Top-k weights renormalised to sum to 1 (llama.cpp's norm_w in build_moe_ffn). */
  renormalize: boolean;
  /** A shared expert with a sigmoid gate, required (qwen2moe), or none. */
  sharedExpert: boolean;
  outputRequired: boolean;
}

const FAMILY: readonly FamilySpec[] = [
  // Qwen2 first: a dense model with q/k/v biases is Qwen2's shape (llama would read the biases too).
  { name: "qwen2", layers: "dense", adjacentRope: false, attentionBias: ["qkv"], ffnBias: false, anyHeadDim: false, qkNorm: false, renormalize: true, sharedExpert: false, outputRequired: false },
  { name: "llama", layers: "either", adjacentRope: true, attentionBias: ["none", "qkv", "all"], ffnBias: true, anyHeadDim: true, qkNorm: false, renormalize: true, sharedExpert: false, outputRequired: false },
  { name: "qwen3moe", layers: "sparse", adjacentRope: false, attentionBias: ["none"], ffnBias: false, anyHeadDim: true, qkNorm: true, renormalize: true, sharedExpert: false, outputRequired: false },
  { name: "qwen2moe", layers: "sparse", adjacentRope: false, attentionBias: ["none", "qkv"], ffnBias: false, anyHeadDim: false, qkNorm: false, renormalize: false, sharedExpert: true, outputRequired: true },
];

function familyRefuse(f: FamilySpec, c: ModelConfig): string | null {
  const A = f.name;
  if (c.queryLayer) return "it has PanGu-α's query layer on top, which no llama.cpp architecture has";
  if (c.embeddingSlots !== 1) return `it has ${c.embeddingSlots} embedding slots; a GGUF model has one token embedding`;
  if (c.norm !== "rmsnorm") return `it uses LayerNorm; llama.cpp's ${A} uses RMSNorm (norm: "rmsnorm")`;
  if (c.position !== "rope") return `it has learned positions; llama.cpp's ${A} has rotary positions (position: "rope")`;
  if (c.ffn !== "swiglu") return `its FFN is the two-matrix "${c.ffn}" one; llama.cpp's ${A} has SwiGLU (ffn: "swiglu")`;
  if (c.denseLayers > 0 && c.sparseLayers > 0) return `it mixes dense and sparse layers; llama.cpp's ${A} has the same FFN in every layer`;
  if (c.sparseLayers > 0 && f.layers === "dense") return `it has sparse (MoE) layers; llama.cpp's ${A} is dense`;
  if (c.sparseLayers === 0 && f.layers === "sparse") return `it is dense; llama.cpp's ${A} has experts in every layer`;
  if (!f.attentionBias.includes(c.attentionBias)) return `its attention biases are "${c.attentionBias}"; llama.cpp's ${A} reads ${f.attentionBias.map((b) => `"${b}"`).join(" or ")}`;
  if (c.ffnBias && (!f.ffnBias || c.sparseLayers > 0)) return `its FFN${c.sparseLayers > 0 ? "s and experts" : ""} have biases; llama.cpp's ${A} has none there (ffnBias: false)`;
  if (!f.anyHeadDim && headDim(c) * c.heads !== c.width) return `its q is ${headDim(c) * c.heads} wide (headDim ${headDim(c)}); llama.cpp's ${A} makes q as wide as the model (${c.width})`;
  if (c.qkNorm !== f.qkNorm) return f.qkNorm ? `it has no q/k norms; llama.cpp's ${A} requires them (qkNorm: true)` : `it has q/k norms; llama.cpp's ${A} has none`;
  if (c.sparseLayers > 0) {
    const r = routerSpec(c.experts!.router).softmaxTopk;
    if (!r) return `its router (${c.experts!.router.kind}) does not route by softmax then top-k over all experts, as llama.cpp's ${A} does`;
    if (r.renormalize !== f.renormalize) return `its top-k weights are ${r.renormalize ? "" : "not "}renormalised; llama.cpp's ${A} ${f.renormalize ? "renormalises them (renormalize: true)" : "keeps the softmax weights (renormalize: false)"}`;
    const Fs = sharedWidth(c);
    if (f.sharedExpert && (Fs === 0 || !c.experts!.sharedGate)) return `llama.cpp's ${A} has a shared expert with a sigmoid gate; set experts.sharedWidth and experts.sharedGate`;
    if (!f.sharedExpert && Fs > 0) return `it has a shared expert; llama.cpp's ${A} has none`;
  }
  return null;
}

function familyHparams(f: FamilySpec, c: ModelConfig): [string, GgufValue][] {
  const A = f.name;
  const D = headDim(c);
  const keys: [string, GgufValue][] = [
    [`${A}.context_length`, gv.u32(c.seqLen)],
    [`${A}.embedding_length`, gv.u32(c.width)],
    [`${A}.block_count`, gv.u32(c.denseLayers + c.sparseLayers)],
    // llama's experts are feed_forward_length wide; the qwen MoEs have a key of their own for them.
    [`${A}.feed_forward_length`, gv.u32(c.sparseLayers > 0 && A === "llama" ? (c.experts!.width ?? c.ffnWidth) : c.ffnWidth)],
    [`${A}.attention.head_count`, gv.u32(c.heads)],
    [`${A}.attention.head_count_kv`, gv.u32(kvHeads(c))],
    [`${A}.attention.key_length`, gv.u32(D)],
    [`${A}.attention.value_length`, gv.u32(D)],
    [`${A}.attention.layer_norm_rms_epsilon`, gv.f32(c.layerNormEps)],
    [`${A}.rope.dimension_count`, gv.u32(D)],
    [`${A}.rope.freq_base`, gv.f32(c.ropeTheta)],
  ];
  if (A === "llama") keys.push([`${A}.vocab_size`, gv.u32(c.vocabSize)]);
  if (c.sparseLayers > 0) {
    keys.push([`${A}.expert_count`, gv.u32(c.experts!.count)], [`${A}.expert_used_count`, gv.u32(expertsPerToken(c))]);
    if (A !== "llama") keys.push([`${A}.expert_feed_forward_length`, gv.u32(c.experts!.width ?? c.ffnWidth)]);
    if (f.sharedExpert) keys.push([`${A}.expert_shared_feed_forward_length`, gv.u32(sharedWidth(c))]);
  }
  return keys;
}

function familyConfig(f: FamilySpec, m: MetaReader, vocabSize: number): ModelConfigInput {
  const A = f.name;
  const width = m.u32(`${A}.embedding_length`);
  const heads = m.u32(`${A}.attention.head_count`);
  const layers = m.u32(`${A}.block_count`);
  const D = m.has(`${A}.attention.key_length`) ? m.u32(`${A}.attention.key_length`) : width / heads;
  if (m.has(`${A}.attention.value_length`) && m.u32(`${A}.attention.value_length`) !== D) throw new SigmaError(`${A}.attention.value_length differs from key_length`, "Sigma's attention has one head size for keys and values");
  if (m.has(`${A}.rope.dimension_count`) && m.u32(`${A}.rope.dimension_count`) !== D) throw new SigmaError(`${A}.rope.dimension_count is not the head size ${D} (partial rotary embedding)`, "Sigma rotates every dimension of a head");
  const sparse = m.has(`${A}.expert_count`) && m.u32(`${A}.expert_count`) > 0;
  const ffnWidth = m.u32(`${A}.feed_forward_length`);
  const qkvBias = m.hasTensor("blk.0.attn_q.bias");
  const input: ModelConfigInput = {
    vocabSize,
    width,
    heads,
    ...(m.has(`${A}.attention.head_count_kv`) ? { kvHeads: m.u32(`${A}.attention.head_count_kv`) } : {}),
    ...(D * heads !== width ? { headDim: D } : {}),
    denseLayers: sparse ? 0 : layers,
    sparseLayers: sparse ? layers : 0,
    seqLen: m.u32(`${A}.context_length`),
    ffnWidth,
    domains: [{ name: "en", slot: 0 }],
    queryLayer: false,
    norm: "rmsnorm",
    position: "rope",
    ropeTheta: m.has(`${A}.rope.freq_base`) ? m.f32(`${A}.rope.freq_base`) : 10000,
    ffn: "swiglu",
    ffnBias: m.hasTensor("blk.0.ffn_gate.bias"),
    attentionBias: qkvBias ? (m.hasTensor("blk.0.attn_output.bias") ? "all" : "qkv") : "none",
    qkNorm: f.qkNorm,
    tiedEmbeddings: !m.hasTensor("output.weight"),
    layerNormEps: m.f32(`${A}.attention.layer_norm_rms_epsilon`),
  };
  if (sparse) {
    input.experts = {
      count: m.u32(`${A}.expert_count`),
      width: A === "llama" ? ffnWidth : m.u32(`${A}.expert_feed_forward_length`),
      router: softmaxTopkRouter(m.u32(`${A}.expert_used_count`), f.renormalize),
      ...(f.sharedExpert ? { sharedWidth: m.has(`${A}.expert_shared_feed_forward_length`) ? m.u32(`${A}.expert_shared_feed_forward_length`) : ffnWidth, sharedGate: true } : {}),
    };
  }
  return input;
}

function familyTable(f: FamilySpec): { globals: TensorEntry[]; layer: TensorEntry[] } {
  const dense = (c: ModelConfig) => c.sparseLayers === 0;
  const sparse = (c: ModelConfig) => c.sparseLayers > 0;
  // llama rotates adjacent pairs: q's rows per query head, k's per key/value head (and their biases) reordered.
  const qOrder = f.adjacentRope ? { rowOrder: (c: ModelConfig) => ropePairOrder(c.heads, headDim(c)) } : {};
  const kOrder = f.adjacentRope ? { rowOrder: (c: ModelConfig) => ropePairOrder(kvHeads(c), headDim(c)) } : {};
  const qkvBias = (c: ModelConfig) => c.attentionBias !== "none";
  const experts = (Fe: (c: ModelConfig) => number, down: boolean) => (c: ModelConfig) => (down ? [Fe(c), c.width, c.experts!.count] : [c.width, Fe(c), c.experts!.count]);
  const Fe = (c: ModelConfig) => c.experts!.width ?? c.ffnWidth;
  return {
    globals: [
      { gguf: "token_embd.weight", sigma: ["tokenEmbedding"] },
      { gguf: "output_norm.weight", sigma: ["finalNorm.gamma"] },
      { gguf: "output.weight", sigma: ["outputEmbedding"], when: (c) => !c.tiedEmbeddings },
    ],
    layer: [
      { gguf: "blk.{L}.attn_norm.weight", sigma: ["blocks.{L}.ln1.gamma"] },
      { gguf: "blk.{L}.attn_q.weight", sigma: ["blocks.{L}.attn.q.weight"], ...qOrder },
      { gguf: "blk.{L}.attn_k.weight", sigma: ["blocks.{L}.attn.k.weight"], ...kOrder },
      { gguf: "blk.{L}.attn_v.weight", sigma: ["blocks.{L}.attn.v.weight"] },
      { gguf: "blk.{L}.attn_q.bias", sigma: ["blocks.{L}.attn.q.bias"], ...qOrder, when: qkvBias },
      { gguf: "blk.{L}.attn_k.bias", sigma: ["blocks.{L}.attn.k.bias"], ...kOrder, when: qkvBias },
      { gguf: "blk.{L}.attn_v.bias", sigma: ["blocks.{L}.attn.v.bias"], when: qkvBias },
      { gguf: "blk.{L}.attn_q_norm.weight", sigma: ["blocks.{L}.attn.qNorm.gamma"], when: (c) => c.qkNorm },
      { gguf: "blk.{L}.attn_k_norm.weight", sigma: ["blocks.{L}.attn.kNorm.gamma"], when: (c) => c.qkNorm },
      { gguf: "blk.{L}.attn_output.weight", sigma: ["blocks.{L}.attn.o.weight"] },
      { gguf: "blk.{L}.attn_output.bias", sigma: ["blocks.{L}.attn.o.bias"], when: (c) => c.attentionBias === "all" },
      { gguf: "blk.{L}.ffn_norm.weight", sigma: ["blocks.{L}.ln2.gamma"] },
      // SwiGLU: down(silu(gate·x) ⊙ up·x) is Sigma's fc2(SiLU(fc1 x) ⊙ fc3 x).
      { gguf: "blk.{L}.ffn_gate.weight", sigma: ["blocks.{L}.ffn.fc1.weight"], when: dense },
      { gguf: "blk.{L}.ffn_up.weight", sigma: ["blocks.{L}.ffn.fc3.weight"], when: dense },
      { gguf: "blk.{L}.ffn_down.weight", sigma: ["blocks.{L}.ffn.fc2.weight"], when: dense },
      { gguf: "blk.{L}.ffn_gate.bias", sigma: ["blocks.{L}.ffn.fc1.bias"], when: (c) => dense(c) && c.ffnBias },
      { gguf: "blk.{L}.ffn_up.bias", sigma: ["blocks.{L}.ffn.fc3.bias"], when: (c) => dense(c) && c.ffnBias },
      { gguf: "blk.{L}.ffn_down.bias", sigma: ["blocks.{L}.ffn.fc2.bias"], when: (c) => dense(c) && c.ffnBias },
      // Experts: Sigma's stacked [E, Fe, C] (row-major) is ggml's ne [C, Fe, E]; w1 gates, w3 goes up, w2 [E, C, Fe] comes down.
      { gguf: "blk.{L}.ffn_gate_inp.weight", sigma: ["blocks.{L}.moe.router.weight"], when: sparse },
      { gguf: "blk.{L}.ffn_gate_exps.weight", sigma: ["blocks.{L}.moe.w1"], ne: experts(Fe, false), when: sparse },
      { gguf: "blk.{L}.ffn_up_exps.weight", sigma: ["blocks.{L}.moe.w3"], ne: experts(Fe, false), when: sparse },
      { gguf: "blk.{L}.ffn_down_exps.weight", sigma: ["blocks.{L}.moe.w2"], ne: experts(Fe, true), when: sparse },
      ...(f.sharedExpert
        ? [
            { gguf: "blk.{L}.ffn_gate_inp_shexp.weight", sigma: ["blocks.{L}.moe.sharedGate.weight"], ne: (c: ModelConfig) => [c.width], when: sparse },
            { gguf: "blk.{L}.ffn_gate_shexp.weight", sigma: ["blocks.{L}.moe.shared.fc1.weight"], when: sparse },
            { gguf: "blk.{L}.ffn_up_shexp.weight", sigma: ["blocks.{L}.moe.shared.fc3.weight"], when: sparse },
            { gguf: "blk.{L}.ffn_down_shexp.weight", sigma: ["blocks.{L}.moe.shared.fc2.weight"], when: sparse },
          ]
        : []),
    ],
  };
}

function familyArchitecture(f: FamilySpec): GgufArchitecture {
  return {
    name: f.name,
    refuse: (c) => familyRefuse(f, c),
    hparams: (c) => familyHparams(f, c),
    config: (m, vocabSize) => familyConfig(f, m, vocabSize),
    ...familyTable(f),
    outputRequired: f.outputRequired,
  };
}

export const LLAMA_FAMILY: readonly GgufArchitecture[] = FAMILY.map(familyArchitecture);

/** The architectures Sigma writes, tried in order (docs/gguf.md says which blocks each needs). */
export const ARCHITECTURES: readonly GgufArchitecture[] = [GPT2_ARCHITECTURE, ...LLAMA_FAMILY];

/**
 * The row order llama.cpp's `llama` architecture needs for q and k weights
 * (and biases) of a model whose RoPE rotates dimension pairs (i, i + d/2) of
 * each head (Hugging Face's rotate_half; qwen2/qwen2moe/qwen3moe use that
 * pairing too, as NEOX rope, and need no reordering): `llama` rotates
 * adjacent pairs (2i, 2i + 1), so within each head of d rows, GGUF row
 * 2i + s is Sigma row s·d/2 + i (s = 0, 1). The same reordering as
 * llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute).
 */
export function ropePairOrder(heads: number, headDim: number): Int32Array {
  if (headDim % 2 !== 0) throw new RangeError(`ropePairOrder: head size ${headDim} is odd`);
  const half = headDim / 2;
  const order = new Int32Array(heads * headDim);
  for (let h = 0; h < heads; h++) for (let i = 0; i < half; i++) for (let s = 0; s < 2; s++) order[h * headDim + 2 * i + s] = h * headDim + s * half + i;
  return order;
}

// ------------------------------------------------------------------ tokenizer

/** llama.cpp's token types (llama_token_type). */
const TOKEN_NORMAL = 1;
const TOKEN_CONTROL = 3;

/**
 * The pre-tokenizer llama.cpp applies for tokenizer.ggml.pre. No llama.cpp
 * pre-tokenizer is Sigma's split rule exactly (src/tokenizer/pretokenize.ts);
 * the closest is the llama-3 regex, which "smaug-bpe" selects without
 * llama-3's other settings (whole-word vocabulary lookups, an added BOS). It
 * cuts ordinary text as Sigma does; it differs on runs of Han characters
 * (llama.cpp: letters, so one piece with the space before them), on one
 * punctuation character straight before letters ("(word" is one piece there,
 * two here) and on upper-case contractions ("'S").
 */
export const SIGMA_PRE_TOKENIZER = "smaug-bpe";

/** A Jinja chat template writing Sigma's plain-text chat prompt (src/serve/chat.ts: "User: …\n\n" … "Assistant:"). */
export const SIGMA_CHAT_TEMPLATE =
  "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] | trim }}\n\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}";

function tokenizerMetadata(tok: Tokenizer): [string, GgufValue][] {
  const S = tok.specials.length;
  return [
    ["tokenizer.ggml.model", gv.str("gpt2")],
    ["tokenizer.ggml.pre", gv.str(SIGMA_PRE_TOKENIZER)],
    ["tokenizer.ggml.tokens", gv.arr("string", [...tok.vocab])],
    ["tokenizer.ggml.token_type", gv.arr("i32", tok.vocab.map((_, id) => (id < S ? TOKEN_CONTROL : TOKEN_NORMAL)))],
    ["tokenizer.ggml.merges", gv.arr("string", tok.merges.map(([a, b]) => `${a} ${b}`))],
    ["tokenizer.ggml.bos_token_id", gv.u32(tok.eotId)],
    ["tokenizer.ggml.eos_token_id", gv.u32(tok.eotId)],
    ["tokenizer.ggml.padding_token_id", gv.u32(tok.padId)],
    ["tokenizer.ggml.add_bos_token", gv.bool(false)],
    ["tokenizer.ggml.add_eos_token", gv.bool(false)],
    ["tokenizer.chat_template", gv.str(SIGMA_CHAT_TEMPLATE)],
  ];
}

/** llama.cpp's other token types: an added token that is not special, and an id with no token. */
const TOKEN_USER_DEFINED = 4;
const TOKEN_UNUSED = 5;

/**
 * The byte-level pre-tokenizers of Hugging Face tokenizer.json files that
 * llama.cpp has by name (src/llama-vocab.cpp): the Split regex as the file
 * spells it (null: ByteLevel's own GPT-2 regex, use_regex true), and whether
 * llama.cpp looks whole pieces up in the vocabulary before merging
 * (ignore_merges; it sets that from the name, so the file must agree).
 */
const HF_PRE_TOKENIZERS: { name: string; what: string; regex: string | null; ignoreMerges: boolean }[] = [
  { name: "gpt-2", what: "GPT-2", regex: null, ignoreMerges: false },
  {
    name: "llama-bpe",
    what: "Llama-3",
    regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ignoreMerges: true,
  },
  {
    name: "qwen2",
    what: "Qwen2/Qwen3",
    regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ignoreMerges: false,
  },
];

const isRecord = (x: unknown): x is Record<string, unknown> => typeof x === "object" && x !== null && !Array.isArray(x);

/**
 * llama.cpp's name for a tokenizer.json's pre-tokenizer, or a SigmaError
 * saying why there is none. Only the shapes above are named: a Split of a
 * known regex followed by ByteLevel without its own regex, or ByteLevel alone
 * with GPT-2's regex; no prefix space in either.
 */
function hfPreTokenizerName(tok: HfTokenizer, json: Record<string, unknown>, where: string): string {
  const refuse = (why: string): never => {
    throw new SigmaError(`${where}: the Hugging Face tokenizer ${why}, so llama.cpp would cut text differently`, `GGUF export writes byte-level BPE tokenizers whose pre-tokenizer llama.cpp knows by name: ${HF_PRE_TOKENIZERS.map((p) => `${p.what} ("${p.name}")`).join(", ")}`);
  };
  if (tok.hasByteFallback) throw new SigmaError(`${where}: the Hugging Face tokenizer has a ByteLevel pre-tokenizer and byte fallback both, which no llama.cpp tokenizer model has`, "export a byte-level BPE without byte_fallback, or a SentencePiece-style BPE (Metaspace or a ▁ normalizer) with it");
  const n = json.normalizer;
  if (n != null && !(isRecord(n) && n.type === "NFC")) refuse(`has a normalizer (${JSON.stringify(n).slice(0, 60)}) llama.cpp does not apply`);
  const p = json.pre_tokenizer;
  const steps = isRecord(p) && p.type === "Sequence" && Array.isArray(p.pretokenizers) ? (p.pretokenizers as unknown[]) : [p];
  const last = steps[steps.length - 1];
  if (!isRecord(last) || last.type !== "ByteLevel" || last.add_prefix_space === true) refuse("does not end its pre-tokenizer in ByteLevel without a prefix space");
  const byteRegex = (last as Record<string, unknown>).use_regex !== false;
  let regex: string | null;
  if (steps.length === 1 && byteRegex) regex = null;
  else if (steps.length === 2 && !byteRegex) {
    const split = steps[0];
    const pat = isRecord(split) && isRecord(split.pattern) ? split.pattern.Regex : undefined;
    if (!isRecord(split) || split.type !== "Split" || split.behavior !== "Isolated" || split.invert === true || typeof pat !== "string") refuse("pre-tokenizes with something other than one Split (Isolated, by regex) before ByteLevel");
    regex = pat as string;
  } else return refuse("pre-tokenizes with something other than one Split regex before ByteLevel, or ByteLevel alone");
  const known = HF_PRE_TOKENIZERS.find((k) => k.regex === regex);
  if (!known) return refuse(`pre-tokenizer regex ${JSON.stringify(regex)} is none llama.cpp has by name`);
  if (known.ignoreMerges !== tok.ignoresMerges) refuse(`has model.ignore_merges ${tok.ignoresMerges} but llama.cpp's "${known.name}" pre-tokenizer sets it ${known.ignoreMerges}`);
  return known.name;
}

/**
 * The tokenizer.ggml.* keys of a byte-level BPE Hugging Face tokenizer, for a
 * model of `vocabSize` rows (at least the tokenizer's: Qwen pads its rows).
 * Ids without a token get "[PADn]" of type unused, as llama.cpp's own
 * converter writes them.
 */
function hfTokenizerMetadata(tok: HfTokenizer, vocabSize: number, where: string): [string, GgufValue][] {
  const json = JSON.parse(tok.sourceText) as Record<string, unknown>;
  if (!tok.byteLevel) return hfSpmMetadata(tok, json, vocabSize, where);
  const pre = hfPreTokenizerName(tok, json, where);
  const types = new Array<number>(vocabSize).fill(TOKEN_NORMAL);
  const tokens = new Array<string>(vocabSize);
  for (let id = 0; id < vocabSize; id++) {
    const t = tok.vocab[id];
    if (t === undefined || t === "") {
      tokens[id] = `[PAD${id}]`;
      types[id] = TOKEN_UNUSED;
    } else tokens[id] = t;
  }
  for (const a of tok.addedTokens()) types[a.id] = a.special ? TOKEN_CONTROL : TOKEN_USER_DEFINED;
  if (tok.prefixIds.length > 1 || tok.suffixIds.length > 1) {
    throw new SigmaError(`${where}: the tokenizer's post-processor adds ${tok.prefixIds.length} tokens before and ${tok.suffixIds.length} after a text; GGUF has one BOS and one EOS`, "export a model whose post-processor adds at most one token on each side");
  }
  const bos = tok.prefixIds[0] ?? (tok.eotId >= 0 ? tok.eotId : undefined);
  const eos = tok.suffixIds[0] ?? (tok.eotId >= 0 ? tok.eotId : undefined);
  return [
    ["tokenizer.ggml.model", gv.str("gpt2")],
    ["tokenizer.ggml.pre", gv.str(pre)],
    ["tokenizer.ggml.tokens", gv.arr("string", tokens)],
    ["tokenizer.ggml.token_type", gv.arr("i32", types)],
    ["tokenizer.ggml.merges", gv.arr("string", tok.mergePairs().map(([a, b]) => `${a} ${b}`))],
    ...(bos === undefined ? [] : [["tokenizer.ggml.bos_token_id", gv.u32(bos)] as [string, GgufValue]]),
    ...(eos === undefined ? [] : [["tokenizer.ggml.eos_token_id", gv.u32(eos)] as [string, GgufValue]]),
    ["tokenizer.ggml.add_bos_token", gv.bool(tok.prefixIds.length === 1)],
    ["tokenizer.ggml.add_eos_token", gv.bool(tok.suffixIds.length === 1)],
  ];
}

// ---- SentencePiece-style BPE (Llama-2, Mistral) as llama.cpp's "llama" (SPM) tokenizer model

/** llama.cpp's token types for the unknown token and the <0xXX> byte tokens. */
const TOKEN_UNKNOWN = 2;
const TOKEN_BYTE = 6;
const SPACE_MARK = "\u2581";
const BYTE_TOKEN = /^<0x[0-9A-F]{2}>$/;
const byteToken = (b: number): string => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`;

/**
 * Whether a SentencePiece-style tokenizer.json puts "▁" before each section
 * of text (llama.cpp's add_space_prefix), or a SigmaError saying why
 * llama.cpp would cut text differently. llama.cpp's SPM tokenizer turns
 * every space into "▁", puts a space first (with add_space_prefix) at the
 * start and after every special or user-defined token, and normalizes
 * nothing else. The tokenizer.json shapes that come closest:
 *   - a normalizer Replace(" " → "▁"), with Prepend("▁") or without, and no
 *     pre-tokenizer (Llama-2): the same cut;
 *   - no normalizer and a Metaspace("▁") pre-tokenizer that does not split,
 *     or splits a vocabulary where no token has "▁" after its first
 *     character (then splitting changes nothing). Metaspace puts no "▁"
 *     before a text that already starts with a space, and with
 *     prepend_scheme "first" none after a special token: llama.cpp does
 *     both (docs/gguf.md lists these differences).
 */
function hfSpacePrefix(tok: HfTokenizer, json: Record<string, unknown>, refuse: (why: string) => never): boolean {
  const isSpaceReplace = (n: unknown): boolean => isRecord(n) && n.type === "Replace" && isRecord(n.pattern) && n.pattern.String === " " && n.content === SPACE_MARK;
  const isPrepend = (n: unknown): boolean => isRecord(n) && n.type === "Prepend" && n.prepend === SPACE_MARK;
  const n = json.normalizer;
  const p = json.pre_tokenizer;
  if (n != null) {
    if (p != null) refuse("has both a normalizer and a pre-tokenizer; llama.cpp's SentencePiece tokenizer only turns spaces into ▁");
    const steps = isRecord(n) && n.type === "Sequence" && Array.isArray(n.normalizers) ? (n.normalizers as unknown[]) : [n];
    const replaces = steps.filter(isSpaceReplace).length;
    const prepends = steps.filter(isPrepend).length;
    if (replaces !== 1 || prepends > 1 || replaces + prepends !== steps.length) refuse(`has a normalizer (${JSON.stringify(n).slice(0, 80)}) other than Replace(" " → "▁") with or without Prepend("▁"); llama.cpp applies no other`);
    return prepends === 1;
  }
  if (!isRecord(p) || p.type !== "Metaspace") return refuse("has neither a ▁ normalizer nor a Metaspace pre-tokenizer");
  if ((p.replacement ?? SPACE_MARK) !== SPACE_MARK) refuse(`has Metaspace replacement ${JSON.stringify(p.replacement)}; llama.cpp uses "▁"`);
  const split = p.split === undefined ? true : p.split === true;
  if (split && tok.vocab.some((t) => t.indexOf(SPACE_MARK, 1) > 0)) refuse("splits at ▁ (Metaspace split: true) while tokens have ▁ inside; llama.cpp's SentencePiece tokenizer merges across spaces");
  const scheme = p.prepend_scheme ?? (p.add_prefix_space === false ? "never" : "always");
  return scheme !== "never";
}

/**
 * The tokenizer.ggml.* keys of a SentencePiece-style BPE with byte fallback,
 * as llama.cpp's "llama" model. llama.cpp does not read merges there: it
 * merges, among all neighbouring symbols whose concatenation is a token, the
 * one whose token has the highest score (the leftmost on a tie), and spells
 * a leftover symbol as <0xXX> byte tokens. So each token gets the score
 * −(rank of the first merge that makes it) — the highest-scoring pair is then
 * the BPE's lowest-ranked merge — and every other token (characters,
 * specials, tokens no merge makes) scores below all of those. llama.cpp's own
 * converter writes −1000 for every token of such a file (LlamaHfVocab), so
 * that its merge order is left to right instead. The merges are written too
 * (llama.cpp ignores them for this model) so that import gives back the
 * exact merge list. Where llama.cpp still differs — a pair whose
 * concatenation is a token but which is no merge — is in docs/gguf.md.
 */
function hfSpmMetadata(tok: HfTokenizer, json: Record<string, unknown>, vocabSize: number, where: string): [string, GgufValue][] {
  const refuse = (why: string): never => {
    throw new SigmaError(`${where}: the SentencePiece-style Hugging Face tokenizer ${why}, so llama.cpp would cut text differently`, "GGUF export writes SentencePiece-style BPE tokenizers with byte fallback shaped as Llama-2's or Mistral's (docs/gguf.md)");
  };
  const spacePrefix = hfSpacePrefix(tok, json, refuse);
  if (!tok.hasByteFallback) refuse("has no byte fallback (model.byte_fallback); llama.cpp spells every character outside the vocabulary as <0xXX> tokens");
  if (tok.prefixIds.length > 1 || tok.suffixIds.length > 1) refuse(`post-processor adds ${tok.prefixIds.length} tokens before and ${tok.suffixIds.length} after a text; GGUF has one BOS and one EOS`);
  const tokens = new Array<string>(vocabSize);
  const types = new Array<number>(vocabSize).fill(TOKEN_NORMAL);
  const idOf = new Map<string, number>();
  for (let id = 0; id < vocabSize; id++) {
    const t = tok.vocab[id];
    if (t === undefined || t === "") {
      tokens[id] = `[PAD${id}]`;
      types[id] = TOKEN_UNUSED;
    } else {
      tokens[id] = t;
      if (BYTE_TOKEN.test(t)) types[id] = TOKEN_BYTE;
    }
    const before = idOf.get(tokens[id]!);
    if (before !== undefined) refuse(`has the token ${JSON.stringify(tokens[id])} at ids ${before} and ${id} (llama.cpp needs each token once)`);
    idOf.set(tokens[id]!, id);
  }
  for (const a of tok.addedTokens()) {
    if (a.lstrip || a.rstrip) refuse(`has the added token ${JSON.stringify(a.content)} with lstrip/rstrip, which llama.cpp's token types do not carry`);
    types[a.id] = a.special ? TOKEN_CONTROL : TOKEN_USER_DEFINED;
  }
  if (tok.unknownId >= 0) types[tok.unknownId] = TOKEN_UNKNOWN;
  for (let b = 0; b < 256; b++) if (idOf.get(byteToken(b)) === undefined) refuse(`has no byte token ${byteToken(b)} (llama.cpp needs all 256)`);

  const pairs = tok.mergePairs();
  const floor = -(pairs.length + 1);
  const scores = new Array<number>(vocabSize).fill(floor);
  pairs.forEach(([a, b], rank) => {
    if (BYTE_TOKEN.test(a) || BYTE_TOKEN.test(b)) refuse(`merges byte tokens (model.merges[${rank}]: ${a} ${b}); llama.cpp never merges <0xXX> tokens`);
    const id = idOf.get(a + b)!;
    if (scores[id] === floor) scores[id] = -(rank + 1);
  });
  // "a b" is ambiguous when a token holds a space: then import rebuilds the merges from the scores.
  const mergeable = pairs.every(([a, b]) => !a.includes(" ") && !b.includes(" "));
  const bos = tok.prefixIds[0] ?? (tok.eotId >= 0 ? tok.eotId : undefined);
  const eos = tok.suffixIds[0] ?? (tok.eotId >= 0 ? tok.eotId : undefined);
  const keys: [string, GgufValue][] = [
    ["tokenizer.ggml.model", gv.str("llama")],
    ["tokenizer.ggml.pre", gv.str("default")],
    ["tokenizer.ggml.tokens", gv.arr("string", tokens)],
    ["tokenizer.ggml.scores", gv.arr("f32", scores)],
    ["tokenizer.ggml.token_type", gv.arr("i32", types)],
  ];
  if (mergeable) keys.push(["tokenizer.ggml.merges", gv.arr("string", pairs.map(([a, b]) => `${a} ${b}`))]);
  if (bos !== undefined) keys.push(["tokenizer.ggml.bos_token_id", gv.u32(bos)]);
  if (eos !== undefined) keys.push(["tokenizer.ggml.eos_token_id", gv.u32(eos)]);
  if (tok.unknownId >= 0) keys.push(["tokenizer.ggml.unknown_token_id", gv.u32(tok.unknownId)]);
  keys.push(
    ["tokenizer.ggml.add_bos_token", gv.bool(tok.prefixIds.length === 1)],
    ["tokenizer.ggml.add_eos_token", gv.bool(tok.suffixIds.length === 1)],
    ["tokenizer.ggml.add_space_prefix", gv.bool(spacePrefix)],
  );
  return keys;
}

/**
 * The tokenizer.json of a GGUF "llama" (SentencePiece) vocabulary, shaped
 * as Llama-2's: a Replace(" " → "▁") normalizer (after Prepend("▁") when
 * add_space_prefix, llama.cpp's default), BPE with byte fallback, BOS/EOS
 * put by the post-processor as add_bos_token/add_eos_token say (llama.cpp
 * adds a BOS when the key is missing). The merges are the file's when it
 * has them (Sigma's export writes them); else they are rebuilt from the
 * scores, as SentencePiece's BPE merges: every split of a normal token into
 * two normal tokens, ordered by the token's score (highest first), then by
 * the two ids.
 */
function hfSpmJsonOf(file: GgufFile): { text: string | null; reason?: string } {
  const { tokens, merges, types } = vocabularyArrays(file);
  if (!tokens || !types || types.length !== tokens.length) return { text: null, reason: "its SentencePiece vocabulary has no token types" };
  const sv = file.metadata.get("tokenizer.ggml.scores");
  const scores = sv?.type === "array" && sv.itemType === "f32" && sv.value.length === tokens.length ? (sv.value as number[]) : null;
  if (!merges && !scores) return { text: null, reason: "its SentencePiece vocabulary has neither merges nor scores" };
  const bool = (key: string, dflt: boolean): boolean => {
    const v = file.metadata.get(key);
    return v?.type === "bool" ? v.value : dflt;
  };
  const idKey = (key: string): number | undefined => {
    const v = file.metadata.get(key);
    return v?.type === "u32" && v.value < tokens.length ? v.value : undefined;
  };
  const vocab: Record<string, number> = {};
  const added: Record<string, unknown>[] = [];
  for (let id = 0; id < tokens.length; id++) {
    const t = types[id];
    if (t === TOKEN_NORMAL || t === TOKEN_BYTE || t === TOKEN_CONTROL || t === TOKEN_UNKNOWN) vocab[tokens[id]!] = id;
    if (t === TOKEN_CONTROL || t === TOKEN_UNKNOWN || t === TOKEN_USER_DEFINED) added.push({ id, content: tokens[id], single_word: false, lstrip: false, rstrip: false, normalized: false, special: t !== TOKEN_USER_DEFINED });
    else if (t !== TOKEN_NORMAL && t !== TOKEN_BYTE && t !== TOKEN_UNUSED) return { text: null, reason: `token ${id} has type ${t}, which Sigma does not read back` };
  }
  let pairs: string[];
  if (merges) pairs = merges;
  else {
    const normal = (s: string): number | undefined => (Object.hasOwn(vocab, s) && types[vocab[s]!] === TOKEN_NORMAL ? vocab[s] : undefined);
    const found: { l: number; r: number; score: number; text: string }[] = [];
    for (let id = 0; id < tokens.length; id++) {
      if (types[id] !== TOKEN_NORMAL) continue;
      const chars = [...tokens[id]!];
      for (let i = 1; i < chars.length; i++) {
        const l = normal(chars.slice(0, i).join(""));
        const r = normal(chars.slice(i).join(""));
        if (l !== undefined && r !== undefined) found.push({ l, r, score: scores![id]!, text: `${tokens[l]} ${tokens[r]}` });
      }
    }
    found.sort((a, b) => b.score - a.score || a.l - b.l || a.r - b.r);
    pairs = found.map((f) => f.text);
  }
  const spacePrefix = bool("tokenizer.ggml.add_space_prefix", true);
  const unk = idKey("tokenizer.ggml.unknown_token_id") ?? types.indexOf(TOKEN_UNKNOWN);
  const special = (id: number): Record<string, unknown> => ({ SpecialToken: { id: tokens[id], type_id: 0 } });
  const single: Record<string, unknown>[] = [{ Sequence: { id: "A", type_id: 0 } }];
  const specialTokens: Record<string, unknown> = {};
  const bos = idKey("tokenizer.ggml.bos_token_id");
  const eos = idKey("tokenizer.ggml.eos_token_id");
  if (bool("tokenizer.ggml.add_bos_token", true)) {
    if (bos === undefined) return { text: null, reason: "it adds a BOS token but names none" };
    single.unshift(special(bos));
    specialTokens[tokens[bos]!] = { id: tokens[bos], ids: [bos], tokens: [tokens[bos]] };
  }
  if (bool("tokenizer.ggml.add_eos_token", false)) {
    if (eos === undefined) return { text: null, reason: "it adds an EOS token but names none" };
    single.push(special(eos));
    specialTokens[tokens[eos]!] = { id: tokens[eos], ids: [eos], tokens: [tokens[eos]] };
  }
  const replace = { type: "Replace", pattern: { String: " " }, content: SPACE_MARK };
  const json = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: spacePrefix ? { type: "Sequence", normalizers: [{ type: "Prepend", prepend: SPACE_MARK }, replace] } : replace,
    pre_tokenizer: null,
    post_processor: { type: "TemplateProcessing", single, pair: [], special_tokens: specialTokens },
    decoder: {
      type: "Sequence",
      decoders: [{ type: "Replace", pattern: { String: SPACE_MARK }, content: " " }, { type: "ByteFallback" }, { type: "Fuse" }, ...(spacePrefix ? [{ type: "Strip", content: " ", start: 1, stop: 0 }] : [])],
    },
    model: { type: "BPE", dropout: null, unk_token: unk >= 0 ? tokens[unk] : null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges: pairs },
  };
  return { text: JSON.stringify(json) };
}

/** The GGUF's tokenizer.ggml tokens, merges and token types, each null when missing or of another type. */
function vocabularyArrays(file: GgufFile): { tokens: string[] | null; merges: string[] | null; types: number[] | null } {
  const arr = (key: string, item: string): unknown[] | null => {
    const v = file.metadata.get(key);
    return v?.type === "array" && v.itemType === item ? v.value : null;
  };
  return {
    tokens: arr("tokenizer.ggml.tokens", "string") as string[] | null,
    merges: arr("tokenizer.ggml.merges", "string") as string[] | null,
    types: arr("tokenizer.ggml.token_type", "i32") as number[] | null,
  };
}

/**
 * The tokenizer.json of a GGUF byte-level BPE whose pre-tokenizer is one of
 * HF_PRE_TOKENIZERS (what the export above writes for a Hugging Face
 * tokenizer, or another tool's Qwen2/Llama-3/GPT-2 file), or null with the
 * reason. Control tokens become special added tokens, user-defined ones
 * plain added tokens, unused placeholders are left out; the post-processor
 * puts the BOS first when add_bos_token says so. A normalizer the original
 * had (Qwen's NFC) is not in the file and does not come back.
 */
function hfTokenizerJsonOf(file: GgufFile): { text: string | null; reason?: string } {
  const model = file.metadata.get("tokenizer.ggml.model");
  if (model?.type === "string" && model.value === "llama") return hfSpmJsonOf(file);
  const { tokens, merges, types } = vocabularyArrays(file);
  const pre = file.metadata.get("tokenizer.ggml.pre");
  const known = pre?.type === "string" ? HF_PRE_TOKENIZERS.find((k) => k.name === pre.value) : undefined;
  if (!tokens || !merges || !types || types.length !== tokens.length || !known) return { text: null };
  const vocab: Record<string, number> = {};
  const added: Record<string, unknown>[] = [];
  for (let id = 0; id < tokens.length; id++) {
    const t = types[id];
    if (t === TOKEN_NORMAL) vocab[tokens[id]!] = id;
    else if (t === TOKEN_CONTROL || t === TOKEN_USER_DEFINED) {
      const special = t === TOKEN_CONTROL;
      added.push({ id, content: tokens[id], single_word: false, lstrip: false, rstrip: false, normalized: !special, special });
    } else if (t !== TOKEN_UNUSED) return { text: null, reason: `token ${id} has type ${t}, which Sigma does not read back` };
  }
  const byteLevel = (useRegex: boolean): Record<string, unknown> => ({ type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: useRegex });
  const preTokenizer = known.regex === null ? byteLevel(true) : { type: "Sequence", pretokenizers: [{ type: "Split", pattern: { Regex: known.regex }, behavior: "Isolated", invert: false }, byteLevel(false)] };
  const addBos = file.metadata.get("tokenizer.ggml.add_bos_token");
  const bos = file.metadata.get("tokenizer.ggml.bos_token_id");
  let post: Record<string, unknown> = byteLevel(false);
  if (addBos?.type === "bool" && addBos.value) {
    if (bos?.type !== "u32" || bos.value >= tokens.length) return { text: null, reason: "it adds a BOS token but names none" };
    const b = tokens[bos.value]!;
    post = { type: "TemplateProcessing", single: [{ SpecialToken: { id: b, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }], pair: [], special_tokens: { [b]: { id: b, ids: [bos.value], tokens: [b] } } };
  }
  const json = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: preTokenizer,
    post_processor: post,
    decoder: byteLevel(true),
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: known.ignoreMerges, vocab, merges },
  };
  return { text: JSON.stringify(json) };
}

/** The Sigma tokenizer of a GGUF that Sigma wrote; null (with the reason) for another vocabulary. */
function tokenizerOf(file: GgufFile, source: string): { tokenizer: Tokenizer | null; reason?: string } {
  const { tokens, merges, types } = vocabularyArrays(file);
  const model = file.metadata.get("tokenizer.ggml.model");
  if (!tokens) throw new SigmaError(`${source}: metadata "tokenizer.ggml.tokens" is missing or not an array of strings`, "a GGUF model carries its vocabulary; the file is incomplete");
  if (model?.type !== "string" || model.value !== "gpt2" || !merges || !types || types.length !== tokens.length) return { tokenizer: null, reason: "its vocabulary is not a byte-level BPE with merges and token types" };
  const pre = file.metadata.get("tokenizer.ggml.pre");
  if (pre?.type !== "string" || pre.value !== SIGMA_PRE_TOKENIZER) return { tokenizer: null, reason: `its pre-tokenizer is ${pre?.type === "string" ? JSON.stringify(pre.value) : "not named"}, not Sigma's (${SIGMA_PRE_TOKENIZER})` };
  let S = 0;
  while (S < types.length && types[S] === TOKEN_CONTROL) S++;
  if (types.slice(S).some((t) => t !== TOKEN_NORMAL)) return { tokenizer: null, reason: "its control tokens are not all at the start of the vocabulary" };
  try {
    const spec = parseSpecials(tokens.slice(0, S), source);
    const pairs = merges.map((m, i): [string, string] => {
      const parts = m.split(" ");
      if (parts.length !== 2 || !parts[0] || !parts[1]) throw new SigmaError(`${source}: merge ${i} (${JSON.stringify(m)}) is not "a b"`);
      return [parts[0], parts[1]];
    });
    return { tokenizer: new Tokenizer({ ...spec, tokens: tokens.slice(S), merges: pairs }, source) };
  } catch (e) {
    if (!(e instanceof SigmaError)) throw e;
    return { tokenizer: null, reason: e.message.split("\n")[0]! };
  }
}

// ------------------------------------------------------------------ tensor encodings

const f32Bytes = (a: Float32Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** The bytes of f32 values `x` (a [rows, cols] matrix) in `type`. */
export function encodeTensor(type: GgmlType, x: Float32Array, rows: number, cols: number): Uint8Array {
  switch (type) {
    case "F32":
      return f32Bytes(Float32Array.from(x));
    case "F16":
    case "BF16": {
      const out = new Uint16Array(x.length);
      for (let i = 0; i < x.length; i++) out[i] = type === "F16" ? halfBits(x[i]!) : bf16Bits(x[i]!);
      return new Uint8Array(out.buffer);
    }
    case "Q8_0": {
      // A block: the f16 scale d, then 32 int8 q with x ≈ d·q — Sigma's q8 groups (src/backend/quant.ts), interleaved.
      const q = quantize("q8", x, rows, cols);
      const blocks = (rows * cols) / 32;
      const out = new Uint8Array(blocks * 34);
      const scales = q.scales!;
      const data = q.data as Int8Array;
      for (let b = 0; b < blocks; b++) {
        out[b * 34] = scales[b]! & 0xff;
        out[b * 34 + 1] = scales[b]! >>> 8;
        out.set(new Uint8Array(data.buffer, data.byteOffset + b * 32, 32), b * 34 + 2);
      }
      return out;
    }
    default:
      throw new RangeError(`encodeTensor: ${type} is not written by Sigma`);
  }
}

/** The f32 values of a tensor in F32, F16, BF16 or Q8_0; other types are an error naming the tensor. */
export function decodeTensor(t: GgufTensor, source: string): Float32Array {
  const n = t.ne.reduce((p, d) => p * d, 1);
  const bytes = t.data;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(n);
  switch (t.type) {
    case "F32":
      for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
      return out;
    case "F16":
      for (let i = 0; i < n; i++) out[i] = halfValue(dv.getUint16(2 * i, true));
      return out;
    case "BF16":
      for (let i = 0; i < n; i++) out[i] = bf16Value(dv.getUint16(2 * i, true));
      return out;
    case "Q8_0":
      for (let b = 0; b < n / 32; b++) {
        const d = halfValue(dv.getUint16(34 * b, true));
        for (let j = 0; j < 32; j++) out[32 * b + j] = d * dv.getInt8(34 * b + 2 + j);
      }
      return out;
    default:
      throw new SigmaError(`${source}: tensor "${t.name}" is ${t.type}; Sigma imports F32, F16, BF16 and Q8_0 tensors`, "export the model from llama.cpp in one of those types (llama-quantize … F16 or Q8_0)");
  }
}

// ------------------------------------------------------------------ export

/** The table's entries for a config, {L} filled in. */
function entriesOf(arch: GgufArchitecture, c: ModelConfig): TensorEntry[] {
  const layers = c.denseLayers + c.sparseLayers;
  const out = [...arch.globals];
  for (let l = 0; l < layers; l++) for (const e of arch.layer) out.push({ ...e, gguf: e.gguf.replaceAll("{L}", String(l)), sigma: e.sigma.map((s) => s.replaceAll("{L}", String(l))) });
  return out.filter((e) => !e.when || e.when(c));
}

/**
 * An entry's ggml shape, the length of the rows its rowOrder moves, and its
 * parameters (checked: they exist and stack). `shapeOf` gives a Sigma
 * parameter's shape. A table that does not fit the model is a bug in the
 * table, not the user's: a plain Error.
 */
function layoutOf(e: TensorEntry, c: ModelConfig, shapeOf: (name: string) => readonly number[] | undefined, arch: string): { ne: number[]; rowLen: number; parts: string[] } {
  const shapes = e.sigma.map((s) => shapeOf(s) ?? (() => { throw new Error(`gguf: the ${arch} table names "${s}", which the model does not have`); })());
  if (e.fill) {
    if (e.sigma.length) throw new Error(`gguf: ${e.gguf} is both filled and backed by parameters`);
    const ne = e.fill.ne(c);
    return { ne, rowLen: ne.length >= 2 ? ne[0]! : 1, parts: [] };
  }
  const matrix = shapes[0]!.length >= 2;
  const total = shapes.reduce((n, sh) => n + sh.reduce((p, d) => p * d, 1), 0);
  const cols = matrix ? shapes[0]!.at(-1)! : total;
  if (matrix && shapes.some((sh) => sh.length < 2 || sh.at(-1) !== cols)) throw new Error(`gguf: the parts of ${e.gguf} differ in width`);
  const ne = e.ne ? e.ne(c) : matrix ? [cols, total / cols] : [total];
  if (ne.reduce((p, d) => p * d, 1) !== total) throw new Error(`gguf: ${e.gguf} has ne [${ne}] for ${total} values`);
  return { ne, rowLen: matrix ? cols : 1, parts: e.sigma };
}

/** The architecture a model exports as, or a SigmaError giving every architecture's reason. */
export function ggufArchitectureOf(c: ModelConfig, architectures: readonly GgufArchitecture[] = ARCHITECTURES): GgufArchitecture {
  const reasons: string[] = [];
  for (const a of architectures) {
    const why = a.refuse(c);
    if (why === null) return a;
    reasons.push(`${a.name}: ${why}`);
  }
  throw new SigmaError(`this model cannot be written as GGUF — ${reasons.join("; ")}`, `Sigma writes the llama.cpp architectures ${ARCHITECTURES.map((a) => a.name).join(", ")} (docs/gguf.md says which blocks each needs)`);
}

export interface GgufExportOptions {
  type?: GgufExportType;
  /** The architectures to choose from (default ARCHITECTURES). */
  architectures?: readonly GgufArchitecture[];
  /** general.name. */
  name?: string;
  /** What to call the model in errors (its path). */
  where?: string;
  /** A Hugging Face chat template kept with the model: written as tokenizer.chat_template beside a Hugging Face tokenizer (Sigma's own tokenizer always gets SIGMA_CHAT_TEMPLATE). */
  chatTemplate?: string;
}

/** The GGUF file (metadata and tensors) of a model and its tokenizer. */
export function ggufOfModel(model: PanguSigma, tokenizer: Tokenizer | HfTokenizer, opts: GgufExportOptions = {}): { metadata: Map<string, GgufValue>; tensors: GgufTensor[]; architecture: string; fallbacks: string[] } {
  const c = model.config;
  const arch = ggufArchitectureOf(c, opts.architectures);
  const hf = tokenizer instanceof HfTokenizer;
  if (hf ? tokenizer.vocabSize > c.vocabSize : tokenizer.vocabSize !== c.vocabSize) throw new SigmaError(`the tokenizer has ${tokenizer.vocabSize} tokens but the model's vocabulary is ${c.vocabSize}`, "export a checkpoint whose tokenizer.json belongs to it");
  const type = opts.type ?? "f32";
  const metadata = new Map<string, GgufValue>([
    ["general.architecture", gv.str(arch.name)],
    ["general.name", gv.str(opts.name ?? "sigma")],
    ["general.file_type", gv.u32(FILE_TYPE[type])],
    ["general.quantization_version", gv.u32(2)],
    ["general.alignment", gv.u32(32)],
    ...arch.hparams(c),
    ...(tokenizer instanceof HfTokenizer ? hfTokenizerMetadata(tokenizer, c.vocabSize, opts.where ?? "the model") : tokenizerMetadata(tokenizer)),
    ...(tokenizer instanceof HfTokenizer && opts.chatTemplate !== undefined ? [["tokenizer.chat_template", gv.str(checkChatTemplate(opts.chatTemplate, `${opts.where ?? "the model"}: its chat template`))] as [string, GgufValue]] : []),
    ["sigma.config", gv.str(JSON.stringify(c))],
  ]);
  const params = new Map<string, { shape: readonly number[]; data: ArrayLike<number> }>();
  for (const [name, p] of model.namedParameters()) params.set(name, { shape: p.tensor.shape, data: p.tensor.data });
  const used = new Set<string>();
  const tensors: GgufTensor[] = [];
  const fallbacks: string[] = [];
  for (const e of entriesOf(arch, c)) {
    const { ne, rowLen, parts } = layoutOf(e, c, (s) => params.get(s)?.shape, arch.name);
    const values = new Float32Array(ne.reduce((p, d) => p * d, 1));
    if (e.fill) values.fill(e.fill.value);
    let at = 0;
    for (const name of parts) {
      const d = params.get(name)!.data;
      for (let i = 0; i < d.length; i++) values[at + i] = d[i]! * (e.scale ?? 1);
      at += d.length;
      used.add(name);
    }
    const ordered = e.rowOrder ? reorderRows(values, e.rowOrder(c), rowLen) : values;
    let ggml: GgmlType = ne.length >= 2 ? MATRIX_TYPE[type] : "F32";
    if (ggml === "Q8_0" && ne[0]! % 32 !== 0) {
      ggml = "F16";
      fallbacks.push(e.gguf);
    }
    tensors.push({ name: e.gguf, type: ggml, ne, data: encodeTensor(ggml, ordered, values.length / ne[0]!, ne[0]!) });
  }
  if (arch.outputRequired && c.tiedEmbeddings) {
    // llama.cpp's loader requires output.weight here: the tied output is the token embedding, written again.
    const emb = tensors.find((t) => t.name === "token_embd.weight")!;
    tensors.push({ ...emb, name: "output.weight" });
  }
  const left = [...params.keys()].filter((n) => !used.has(n));
  if (left.length) throw new Error(`gguf export: the ${arch.name} table leaves out ${left.slice(0, 5).join(", ")}`);
  return { metadata, tensors, architecture: arch.name, fallbacks };
}

/**
 * What field `k` of a config contributes to the function the keys describe,
 * for comparing the saved config with the architecture keys: resolved sizes
 * (headDim, kvHeads, the expert section's), f32-rounded floats (the keys are
 * f32). Not compared: domains (no key), the tied output (the tensors decide:
 * import requires output.weight, or accepts it only as the embedding's copy),
 * and ffnWidth where no dense FFN uses it.
 */
function functionOf(c: ModelConfig, k: string): unknown {
  switch (k) {
    case "domains":
    case "tiedEmbeddings":
      return null;
    case "layerNormEps":
    case "ropeTheta":
      return Math.fround(c[k]);
    case "headDim":
      return headDim(c);
    case "kvHeads":
      return kvHeads(c);
    case "ffnWidth":
      return c.denseLayers > 0 || c.queryLayer ? c.ffnWidth : null;
    case "experts": {
      if (!c.experts) return null;
      const r = c.experts.router as { kind: string; k?: number; renormalize?: boolean };
      return { count: c.experts.count, width: c.experts.width ?? c.ffnWidth, kind: r.kind, k: r.k, renormalize: r.renormalize, shared: sharedWidth(c), sharedGate: c.experts.sharedGate };
    }
    default:
      return (c as Record<string, unknown>)[k];
  }
}

function reorderRows(x: Float32Array, order: Int32Array, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < order.length; r++) out.set(x.subarray(order[r]! * cols, (order[r]! + 1) * cols), r * cols);
  return out;
}

// ------------------------------------------------------------------ import

/** A Sigma model (and its tokenizer, when the file carries Sigma's) from a parsed GGUF file; errors name `source`. */
export function modelOfGguf(file: GgufFile, source: string, architectures: readonly GgufArchitecture[] = ARCHITECTURES): { model: PanguSigma; tokenizer: Tokenizer | null; tokenizerText?: string; tokenizerNote?: string; architecture: string; chatTemplate?: string } {
  const archName = ggufGet(file, "general.architecture", "string", source);
  const arch = architectures.find((a) => a.name === archName);
  if (!arch) throw new SigmaError(`${source}: architecture "${archName}" is not one Sigma imports`, `Sigma imports GGUF files of the architectures ${architectures.map((a) => a.name).join(", ")}`);
  const { tokenizer, reason: sigmaReason } = tokenizerOf(file, source);
  // Not Sigma's layout: a Hugging Face-style byte-level BPE that llama.cpp names comes back as a tokenizer.json.
  const hfJson = tokenizer ? { text: null } : hfTokenizerJsonOf(file);
  const reason = hfJson.text !== null ? undefined : (hfJson.reason ?? sigmaReason);
  const tokens = ggufGet(file, "tokenizer.ggml.tokens", "array", source);
  const reader: MetaReader = {
    u32: (k) => ggufGet(file, k, "u32", source),
    f32: (k) => ggufGet(file, k, "f32", source),
    has: (k) => file.metadata.has(k),
    hasTensor: (name) => file.tensors.some((t) => t.name === name),
  };
  let input: ModelConfigInput = arch.config(reader, tokens.length);
  const embedded = file.metadata.get("sigma.config");
  if (embedded?.type === "string") {
    let saved: ModelConfig;
    try {
      saved = parseModelConfig(parseJsonStrict(embedded.value), `${source} (metadata sigma.config)`);
    } catch (e) {
      if (e instanceof SigmaError) throw e;
      throw new SigmaError(`${source}: metadata "sigma.config" is not JSON (${(e as Error).message})`, "the file is damaged; export it again");
    }
    // The architecture keys decide the function; the saved config adds what GGUF has no key for (domains, seed, …) and must agree.
    const keys = parseModelConfig(input, `the Sigma config made from ${source}`);
    for (const k of Object.keys(input)) {
      const [mine, theirs] = [functionOf(saved, k), functionOf(keys, k)];
      if (JSON.stringify(mine) !== JSON.stringify(theirs)) throw new SigmaError(`${source}: metadata "sigma.config" says ${k} = ${JSON.stringify(mine)} but the ${arch.name} keys say ${JSON.stringify(theirs)}`, "the file was edited after export; export it again");
    }
    input = saved;
  }
  const config = parseModelConfig(input, `the Sigma config made from ${source}`);
  const why = arch.refuse(config);
  if (why) throw new SigmaError(`${source}: the model it describes cannot be a ${arch.name}: ${why}`);
  // Before allocating: a model much larger than the values the file holds cannot be in it, so lying keys cannot
  // make a huge model (the tensor checks below then name what exactly is missing or of the wrong shape).
  const need = parameterCounts(config).total;
  const held = file.tensors.reduce((n, t) => n + t.ne.reduce((p, d) => p * d, 1), 0);
  if (need > 2 * held + 1024) throw new SigmaError(`${source}: its keys describe a model of ${need} parameters but its tensors hold ${held} values`, "the file's metadata and tensors do not belong together");
  const model = new PanguSigma(config);
  const params = new Map([...model.namedParameters()].map(([n, p]) => [n, p.tensor]));
  const byName = new Map(file.tensors.map((t) => [t.name, t]));
  const expected = new Set<string>();
  for (const e of entriesOf(arch, config)) {
    expected.add(e.gguf);
    const t = byName.get(e.gguf);
    if (!t) throw new SigmaError(`${source}: tensor "${e.gguf}" is missing`, `a ${arch.name} model of this size has it; the file is incomplete`);
    const { ne: want, rowLen, parts } = layoutOf(e, config, (s) => params.get(s)?.shape, arch.name);
    if (t.ne.length !== want.length || t.ne.some((d, i) => d !== want[i])) throw new SigmaError(`${source}: tensor "${e.gguf}" has ne [${t.ne.join(", ")}], the model's hyperparameters need [${want.join(", ")}]`, "the file's metadata and tensors do not belong together");
    let values = decodeTensor(t, source);
    for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i]!)) throw new SigmaError(`${source}: tensor "${e.gguf}" holds ${values[i]} at element ${i}`, "the file is damaged; export it again");
    if (e.fill) {
      const i = values.findIndex((v) => v !== e.fill!.value);
      if (i >= 0) throw new SigmaError(`${source}: tensor "${e.gguf}" holds ${values[i]} at element ${i}; Sigma's model has no such parameter and computes the function of all ${e.fill.value}`, "only files whose extra tensors are neutral import");
      continue;
    }
    if (e.rowOrder) {
      const order = e.rowOrder(config);
      const back = new Int32Array(order.length);
      order.forEach((src, r) => (back[src] = r));
      values = reorderRows(values, back, rowLen);
    }
    let at = 0;
    for (const name of parts) {
      const p = params.get(name)!;
      for (let i = 0; i < p.data.length; i++) p.data[i] = values[at + i]! / (e.scale ?? 1);
      at += p.data.length;
    }
  }
  const extra = file.tensors.filter((t) => !expected.has(t.name)).map((t) => t.name);
  // llama.cpp's gpt2 accepts an untied output.weight; Sigma ties the output to the token embedding, so it must be that copy.
  const out = byName.get("output.weight");
  if (out && extra.includes("output.weight")) {
    const emb = decodeTensor(byName.get("token_embd.weight")!, source);
    const o = decodeTensor(out, source);
    if (o.length !== emb.length || o.some((v, i) => v !== emb[i])) throw new SigmaError(`${source}: output.weight differs from token_embd.weight (an untied output layer)`, "Sigma ties the output to the token embedding; only tied models import");
    extra.splice(extra.indexOf("output.weight"), 1);
  }
  if (extra.length) throw new SigmaError(`${source}: unexpected tensor${extra.length > 1 ? "s" : ""} ${extra.slice(0, 5).map((n) => `"${n}"`).join(", ")} (not part of a ${arch.name} model)`, "the file holds tensors Sigma would drop; refusing rather than computing a different function");
  if (tokenizer && tokenizer.vocabSize !== config.vocabSize) throw new SigmaError(`${source}: ${tokenizer.vocabSize} tokens but a vocabulary of ${config.vocabSize}`);
  // The chat template comes along, unless it is Sigma's own beside Sigma's tokenizer (implied by it).
  const tv = file.metadata.get("tokenizer.chat_template");
  const template = tv === undefined ? undefined : checkChatTemplate(tv.type === "string" ? tv.value : tv.type === "array" ? [] : tv.value, `${source}: metadata "tokenizer.chat_template"`);
  const chatTemplate = template === undefined || (tokenizer && template === SIGMA_CHAT_TEMPLATE) ? undefined : template;
  return { model, tokenizer, ...(hfJson.text !== null ? { tokenizerText: hfJson.text } : {}), ...(reason ? { tokenizerNote: reason } : {}), architecture: arch.name, ...(chatTemplate !== undefined ? { chatTemplate } : {}) };
}
