// Tiny random models in the Hugging Face transformers layout (config.json +
// safetensors, sharded with an index or not, F32 or BF16), for the import
// tests and the HF → Sigma → GGUF → llama.cpp chain. The config field and
// tensor names are written here, not taken from the importer.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { bf16Bits, bf16Value } from "../src/backend/quant.js";
import { encodeSafetensors, type StWrite } from "../src/checkpoint/safetensors.js";
import { Rng } from "../src/util/rng.js";

// Odd sizes: 3 heads of 4 (Qwen3: of 6), 1 or 3 KV heads, 6 experts of width 5, shared 7, dense 9.
export const [V, C, H, L, T] = [37, 12, 3, 3, 7];
export const [E, FE, FS, FD] = [6, 5, 7, 9];

export type W = Map<string, { shape: number[]; data: Float32Array }>;
export type Cfg = Record<string, unknown>;

/** Each architecture's config.json (odd sizes) — the HF field names, written here, not taken from the importer. */
export const CONFIGS: Record<string, Cfg> = {
  llama: { architectures: ["LlamaForCausalLM"], model_type: "llama", vocab_size: V, hidden_size: C, intermediate_size: FD, num_hidden_layers: 2, num_attention_heads: H, num_key_value_heads: 1, max_position_embeddings: 64, rms_norm_eps: 0.1, rope_theta: 10000, hidden_act: "silu", tie_word_embeddings: false, attention_bias: true, mlp_bias: true, rope_scaling: null, bos_token_id: 1 },
  qwen2: { architectures: ["Qwen2ForCausalLM"], model_type: "qwen2", vocab_size: V, hidden_size: C, intermediate_size: FD, num_hidden_layers: 2, num_attention_heads: H, num_key_value_heads: 3, max_position_embeddings: 64, rms_norm_eps: 1e-6, rope_theta: 1000000, hidden_act: "silu", tie_word_embeddings: true, use_sliding_window: false, sliding_window: 4, max_window_layers: 2 },
  mixtral: { architectures: ["MixtralForCausalLM"], model_type: "mixtral", vocab_size: V, hidden_size: C, intermediate_size: FE, num_hidden_layers: 2, num_attention_heads: H, num_key_value_heads: 1, num_local_experts: E, num_experts_per_tok: 2, max_position_embeddings: 64, rms_norm_eps: 1e-5, rope_theta: 1e6, hidden_act: "silu", tie_word_embeddings: false, sliding_window: null, router_aux_loss_coef: 0.02 },
  qwen2moe: { architectures: ["Qwen2MoeForCausalLM"], model_type: "qwen2_moe", vocab_size: V, hidden_size: C, intermediate_size: FD, moe_intermediate_size: FE, shared_expert_intermediate_size: FS, num_experts: E, num_experts_per_tok: 3, norm_topk_prob: false, decoder_sparse_step: 1, mlp_only_layers: [], num_hidden_layers: 2, num_attention_heads: H, num_key_value_heads: 1, max_position_embeddings: 64, rms_norm_eps: 1e-6, rope_theta: 1e6, hidden_act: "silu", tie_word_embeddings: false, use_sliding_window: false, router_aux_loss_coef: 0.001 },
  qwen3moe: { architectures: ["Qwen3MoeForCausalLM"], model_type: "qwen3_moe", vocab_size: V, hidden_size: C, intermediate_size: FD, moe_intermediate_size: FE, head_dim: 6, num_experts: E, num_experts_per_tok: 2, norm_topk_prob: true, decoder_sparse_step: 1, mlp_only_layers: [0], num_hidden_layers: L, num_attention_heads: H, num_key_value_heads: 1, max_position_embeddings: 64, rms_norm_eps: 1e-6, rope_theta: 1e6, hidden_act: "silu", tie_word_embeddings: false, attention_bias: false, use_sliding_window: false },
  pangu: { architectures: ["PanguProMoEForCausalLM"], model_type: "PanguProMoE", vocab_size: V, hidden_size: C, intermediate_size: FD, moe_intermediate_size: FE, shared_expert_intermediate_size: FS, num_experts: E, num_experts_per_tok: 2, num_hidden_layers: 2, num_attention_heads: H, num_key_value_heads: 1, max_position_embeddings: 64, rms_norm_eps: 0.05, rope_theta: 16000000, hidden_act: "silu", tie_word_embeddings: false, router_aux_loss_coef: 0.001 },
};

export const int = (c: Cfg, k: string) => c[k] as number;
export const headDimOf = (c: Cfg) => (c.head_dim as number | undefined) ?? int(c, "hidden_size") / int(c, "num_attention_heads");

/** Random HF weights of a config: the tensor names as transformers writes them. */
export function hfWeights(kind: string, c: Cfg, seed: number, bf16 = false): W {
  // Sizes from the config (the CONFIGS above use V, C, E, FE, FS).
  const [V, C] = [int(c, "vocab_size"), int(c, "hidden_size")];
  const E = (c.num_local_experts ?? c.num_experts ?? 0) as number;
  const FE = kind === "mixtral" ? int(c, "intermediate_size") : ((c.moe_intermediate_size ?? 0) as number);
  const FS = (c.shared_expert_intermediate_size ?? 0) as number;
  const rng = new Rng(seed);
  const w: W = new Map();
  const round = (x: number) => (bf16 ? bf16Value(bf16Bits(x)) : Math.fround(x));
  const add = (name: string, shape: number[], std = 0.3, mean = 0) => w.set(name, { shape, data: Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => round(mean + std * rng.normal())) });
  const D = headDimOf(c);
  const [nH, nG] = [int(c, "num_attention_heads"), int(c, "num_key_value_heads")];
  add("model.embed_tokens.weight", [V, C], 0.5);
  if (!c.tie_word_embeddings) add("lm_head.weight", [V, C], 0.5);
  add("model.norm.weight", [C], 0.1, 1);
  const mlp = (p: string, F: number) => {
    add(`${p}.gate_proj.weight`, [F, C]);
    add(`${p}.up_proj.weight`, [F, C]);
    add(`${p}.down_proj.weight`, [C, F]);
    if (c.mlp_bias) {
      add(`${p}.gate_proj.bias`, [F], 0.2);
      add(`${p}.up_proj.bias`, [F], 0.2);
      add(`${p}.down_proj.bias`, [C], 0.2);
    }
  };
  const mlpOnly = (c.mlp_only_layers as number[] | undefined) ?? [];
  for (let l = 0; l < int(c, "num_hidden_layers"); l++) {
    const h = `model.layers.${l}`;
    add(`${h}.input_layernorm.weight`, [C], 0.1, 1);
    add(`${h}.post_attention_layernorm.weight`, [C], 0.1, 1);
    add(`${h}.self_attn.q_proj.weight`, [nH * D, C]);
    add(`${h}.self_attn.k_proj.weight`, [nG * D, C]);
    add(`${h}.self_attn.v_proj.weight`, [nG * D, C]);
    add(`${h}.self_attn.o_proj.weight`, [C, nH * D]);
    if (kind === "qwen2" || kind === "qwen2moe" || kind === "pangu" || c.attention_bias) {
      add(`${h}.self_attn.q_proj.bias`, [nH * D], 0.2);
      add(`${h}.self_attn.k_proj.bias`, [nG * D], 0.2);
      add(`${h}.self_attn.v_proj.bias`, [nG * D], 0.2);
    }
    if (kind === "pangu" || c.attention_bias) add(`${h}.self_attn.o_proj.bias`, [C], 0.2);
    if (kind === "qwen3moe") {
      add(`${h}.self_attn.q_norm.weight`, [D], 0.1, 1);
      add(`${h}.self_attn.k_norm.weight`, [D], 0.1, 1);
    }
    const sparse = kind === "mixtral" || ((kind === "qwen2moe" || kind === "qwen3moe" || kind === "pangu") && !mlpOnly.includes(l));
    if (!sparse) {
      mlp(`${h}.mlp`, int(c, "intermediate_size"));
      continue;
    }
    if (kind === "mixtral") {
      add(`${h}.block_sparse_moe.gate.weight`, [E, C], 1);
      for (let e = 0; e < E; e++) {
        add(`${h}.block_sparse_moe.experts.${e}.w1.weight`, [FE, C]);
        add(`${h}.block_sparse_moe.experts.${e}.w2.weight`, [C, FE]);
        add(`${h}.block_sparse_moe.experts.${e}.w3.weight`, [FE, C]);
      }
      continue;
    }
    add(`${h}.mlp.gate.weight`, [E, C], 1);
    for (let e = 0; e < E; e++) mlp(`${h}.mlp.experts.${e}`, FE);
    if (kind === "qwen2moe") {
      mlp(`${h}.mlp.shared_expert`, FS);
      add(`${h}.mlp.shared_expert_gate.weight`, [1, C]);
    }
    if (kind === "pangu") {
      mlp(`${h}.mlp.shared_expert`, FS);
      add(`${h}.mlp.router_scale`, [1, E], 0.3, 1);
    }
  }
  return w;
}

/** Folders written so far (the import test also seeds its weights from it). */
export const counter = { dirs: 0 };
/** Where writeHf puts its folders (a test sets it to its own temporary folder). */
export const hfRoot = { dir: "" };
/** Writes an HF folder: config.json and model.safetensors, or `shards` files with model.safetensors.index.json; bf16 stores BF16 tensors. */
export function writeHf(c: Cfg, w: W, o: { shards?: number; bf16?: boolean; tokenizer?: string } = {}): string {
  const dir = join(hfRoot.dir, `m${counter.dirs++}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify(c));
  const toWrite = (names: string[]) =>
    new Map<string, StWrite>(names.map((n) => {
      const t = w.get(n)!;
      return [n, o.bf16 ? { shape: t.shape, data: Uint16Array.from(t.data, (x) => bf16Bits(x)), dtype: "BF16" } : { shape: t.shape, data: t.data }];
    }));
  const names = [...w.keys()];
  if (!o.shards) writeFileSync(join(dir, "model.safetensors"), encodeSafetensors(toWrite(names), { format: "pt" }));
  else {
    const map: Record<string, string> = {};
    for (let s = 0; s < o.shards; s++) {
      const file = `model-0000${s + 1}-of-0000${o.shards}.safetensors`;
      const mine = names.filter((_, i) => i % o.shards! === s);
      for (const n of mine) map[n] = file;
      writeFileSync(join(dir, file), encodeSafetensors(toWrite(mine), { format: "pt" }));
    }
    writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: 0 }, weight_map: map }));
  }
  if (o.tokenizer !== undefined) writeFileSync(join(dir, "tokenizer.json"), o.tokenizer);
  return dir;
}

