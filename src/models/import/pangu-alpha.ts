/**
 * PanGu-α's Hugging Face port in and out: architecture GPTPanguForCausalLM
 * (model_type "gpt_pangu", or "pangu" in the sunzeyeah/pangu-* configs),
 * loaded in transformers through the remote code modeling_gptpangu.py /
 * configuration_gptpangu.py of imone/pangu_2_6B and sunzeyeah/pangu-350M …
 * pangu-13B. It is PanGu-Σ's dense source, and Sigma's default block is its
 * block, so the whole model maps onto Sigma's options as they are
 * (docs/models.md, "The PanGu-α port"): LayerNorm, learned positions,
 * attention with q, k, v, o biases, a two-matrix FFN with biases, the query
 * layer, the output tied to the token embedding.
 *
 * What the port computes (read from its modeling code), for tokens x at
 * positions t, with n = config.json's num_layers:
 *
 *   h = wte[x] + wpe[t]
 *   h = Block_l(h)                        l = 0 … n − 2
 *   h = ln_f(h)
 *   h = Block_{n−1}(h, query = wqe[t])    the top query layer is the LAST of the n blocks
 *   logits = lm_head(h)                   lm_head tied to wte unless tie_word_embeddings is false
 *
 *   Block(h, query):  a = ln_1(h)
 *                     h = h + c_proj(softmax(causal(q·kᵀ / √D)) · v)
 *                         with q = q_proj(query ?? a), k = k_proj(a), v = v_proj(a)
 *                     h = h + mlp.c_proj(act(mlp.c_fc(ln_2(h))))
 *
 * which is Sigma's forward with the query layer (docs/design.md §1.4): the
 * query embedding enters q_proj without a norm, the residual of the query
 * layer is the final norm's output, and nothing follows it but the output
 * projection. So the port's n blocks are Sigma's n − 1 dense blocks plus
 * its query layer:
 *
 *   HF tensor (transformer. prefix)           Sigma parameter
 *   wte.weight [V,C]                          tokenEmbedding (and the tied output)
 *   lm_head.weight [V,C] (untied only)        outputEmbedding
 *   wpe.weight [P,C]                          positionEmbedding (seqLen = P)
 *   wqe.weight [P,C]                          queryEmbedding
 *   h.l.ln_1 / ln_2 .{weight,bias}            blocks.l.ln1 / ln2 .{gamma,beta}        l < n − 1
 *   h.l.attn.{q,k,v,c}_proj.{weight,bias}     blocks.l.attn.{q,k,v,o}.{weight,bias}
 *   h.l.mlp.c_fc / c_proj .{weight,bias}      blocks.l.ffn.fc1 / fc2 .{weight,bias}
 *   h.{n−1}.…                                 queryLayer.… (the same names)
 *   ln_f.{weight,bias}                        finalNorm.{gamma,beta}
 *
 * The port's projections are nn.Linear, [out, in] like Sigma's Linear, so
 * nothing is transposed (GPT-2's Conv1D is [in, out]; src/models/import/gpt2.ts).
 * Its causal mask writes −10⁴ into the masked scores instead of −∞: the
 * masked keys' softmax weights are e^(−10⁴ − max), zero in f32 unless every
 * unmasked score of a row is below about −10⁴, so Sigma's −∞ is the same
 * function. Config fields that would change the function in a way Sigma
 * does not compute (scale_attn_weights false, an activation Sigma lacks) are
 * refused by name; dropout rates, summary_* (a classification head's
 * settings), token ids and use_cache do not change the logits and are
 * ignored. The causal-mask buffers a torch state dict carries
 * (h.l.attn.bias, h.l.attn.masked_bias) are not weights and are skipped.
 */
import { SigmaError } from "../../util/errors.js";
import type { Activation } from "../../nn/activation.js";
import { headDim, kvHeads, parseModelConfig, type ModelConfig } from "../config.js";
import { HF_ACTIVATIONS } from "./gpt2.js";

export const PANGU_ALPHA_ARCHITECTURE = "GPTPanguForCausalLM";
/** config.json's model_type: the port's configuration class says "gpt_pangu"; the sunzeyeah/pangu-* configs say "pangu". */
export const PANGU_ALPHA_MODEL_TYPES: readonly string[] = ["gpt_pangu", "pangu"];

type Json = Record<string, unknown>;

/** The activation_function written for each Sigma activation on export. */
const ACTIVATION_NAME: Record<Activation, string> = { gelu: "gelu", gelu_tanh: "gelu_new", fastgelu: "quick_gelu" };

/** What PanGu-α's tokenizer is, for the import's note: Sigma does not read it, and does not pretend to. */
export const PANGU_ALPHA_TOKENIZER_NOTE =
  "PanGu-α's tokenizer is jieba word segmentation followed by SentencePiece (vocab.model and tokenization_gptpangu.py), not a tokenizer.json; Sigma's loader does not read it, so the weights imported without one — eval, generate and fine-tuning need a tokenizer of the same vocabulary";

/**
 * The Sigma config of a GPTPanguForCausalLM config.json (already parsed
 * and checked to name the architecture). `seqLen` other than
 * max_position_embeddings is refused: the position and query tables import whole.
 */
export function panguAlphaConfig(hf: Json, source: string, opts: { domains?: string[]; seqLen?: number }): { config: ModelConfig; notes: string[] } {
  const notes: string[] = [];
  const int = (key: string, fallback?: number, min = 1): number => {
    const v = hf[key] ?? fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min) throw new SigmaError(`${source}: "${key}" is ${JSON.stringify(hf[key])}, expected an integer ≥ ${min}`, `a ${PANGU_ALPHA_ARCHITECTURE} config.json has it`);
    return v;
  };
  const refuse = (key: string, why: string): never => {
    throw new SigmaError(`${source}: ${key} = ${JSON.stringify(hf[key])} is not supported: ${why}`, `Sigma computes ${PANGU_ALPHA_ARCHITECTURE} without it; only models whose function Sigma computes exactly import`);
  };
  const bool = (key: string, fallback: boolean): boolean => {
    const v = hf[key] ?? fallback;
    if (typeof v !== "boolean") throw new SigmaError(`${source}: "${key}" is ${JSON.stringify(hf[key])}, expected true or false`);
    return v;
  };

  // The port divides the scores by √D only when scale_attn_weights is on (its default); Sigma always does.
  if (!bool("scale_attn_weights", true)) refuse("scale_attn_weights", "Sigma's attention scales the scores by 1/√(head size)");
  const actName = hf.activation_function ?? "gelu";
  const activation = HF_ACTIVATIONS[String(actName)];
  if (!activation) refuse("activation_function", `Sigma computes ${Object.keys(HF_ACTIVATIONS).join(", ")}`);
  const eps = hf.layer_norm_epsilon ?? 1e-5;
  if (typeof eps !== "number" || !(eps > 0)) throw new SigmaError(`${source}: "layer_norm_epsilon" is ${JSON.stringify(hf.layer_norm_epsilon)}, expected a positive number`);

  const width = int("hidden_size");
  const heads = int("num_heads");
  // The top block is the query layer, so a port of n blocks is n − 1 of Sigma's plus the query layer; Sigma needs one block below it.
  const layers = int("num_layers", undefined, 2);
  const maxPos = int("max_position_embeddings", 1024);
  if (opts.seqLen !== undefined && opts.seqLen !== maxPos) {
    throw new SigmaError(`seqLen ${opts.seqLen} differs from max_position_embeddings ${maxPos} of ${source}`, `${PANGU_ALPHA_ARCHITECTURE} imports with its whole position and query tables: leave seqLen (--seq-len) out`);
  }
  const inner = hf.intermediate_size;
  if (inner !== undefined && inner !== null && (typeof inner !== "number" || !Number.isInteger(inner) || inner < 1)) throw new SigmaError(`${source}: "intermediate_size" is ${JSON.stringify(inner)}, expected null (4 × hidden_size) or a positive integer`);
  const domains = opts.domains ?? ["en"];
  const config = parseModelConfig(
    {
      vocabSize: int("vocab_size"),
      width,
      heads,
      denseLayers: layers - 1,
      sparseLayers: 0,
      seqLen: maxPos,
      ffnWidth: (inner as number | null | undefined) ?? 4 * width,
      domains: domains.map((name) => ({ name, slot: 0 })),
      activation,
      queryLayer: true,
      layerNormEps: eps,
      tiedEmbeddings: bool("tie_word_embeddings", true),
    },
    `the Sigma config made from ${source}`,
  );
  return { config, notes };
}

/** One row of the mapping, as src/models/import/hf.ts reads it: HF tensor `hf` of `shape` is the elements offset… of Sigma parameter `sigma`. */
export interface PanguAlphaRow {
  hf: string;
  shape: number[];
  sigma: string;
  offset: number;
}

/** Every tensor of the port for a Sigma model of `c` (dense, with the query layer), with the Sigma parameter it fills. */
export function panguAlphaTensorRows(c: ModelConfig): PanguAlphaRow[] {
  const [C, F, V, P] = [c.width, c.ffnWidth, c.vocabSize, c.seqLen];
  const rows: PanguAlphaRow[] = [];
  const add = (hf: string, shape: number[], sigma: string) => rows.push({ hf: `transformer.${hf}`, shape, sigma, offset: 0 });
  add("wte.weight", [V, C], "tokenEmbedding");
  add("wpe.weight", [P, C], "positionEmbedding");
  add("wqe.weight", [P, C], "queryEmbedding");
  const n = c.denseLayers + 1;
  for (let l = 0; l < n; l++) {
    const [h, s] = [`h.${l}`, l < n - 1 ? `blocks.${l}` : "queryLayer"];
    for (const [hn, sn] of [["ln_1", "ln1"], ["ln_2", "ln2"]]) {
      add(`${h}.${hn}.weight`, [C], `${s}.${sn}.gamma`);
      add(`${h}.${hn}.bias`, [C], `${s}.${sn}.beta`);
    }
    for (const [hn, sn] of [["q_proj", "q"], ["k_proj", "k"], ["v_proj", "v"], ["c_proj", "o"]]) {
      add(`${h}.attn.${hn}.weight`, [C, C], `${s}.attn.${sn}.weight`);
      add(`${h}.attn.${hn}.bias`, [C], `${s}.attn.${sn}.bias`);
    }
    add(`${h}.mlp.c_fc.weight`, [F, C], `${s}.ffn.fc1.weight`);
    add(`${h}.mlp.c_fc.bias`, [F], `${s}.ffn.fc1.bias`);
    add(`${h}.mlp.c_proj.weight`, [C, F], `${s}.ffn.fc2.weight`);
    add(`${h}.mlp.c_proj.bias`, [C], `${s}.ffn.fc2.bias`);
  }
  add("ln_f.weight", [C], "finalNorm.gamma");
  add("ln_f.bias", [C], "finalNorm.beta");
  if (!c.tiedEmbeddings) rows.push({ hf: "lm_head.weight", shape: [V, C], sigma: "outputEmbedding", offset: 0 });
  return rows;
}

/** The causal-mask buffers a torch state dict of the port carries: not weights, skipped. */
export function panguAlphaIgnorable(name: string): boolean {
  return /^transformer\.h\.\d+\.attn\.(masked_)?bias$/.test(name);
}

/**
 * Why a Sigma model with the query layer is not the port, or null when it
 * is: dense, Sigma's default block (LayerNorm, learned positions, GeLU-family
 * FFN with biases, all attention biases, H key/value heads of width/heads), one embedding.
 */
export function panguAlphaMismatch(c: ModelConfig): string | null {
  if (c.sparseLayers > 0) return `it has ${c.sparseLayers} sparse layers and the query layer; the only Hugging Face architecture with the query layer, ${PANGU_ALPHA_ARCHITECTURE}, is dense`;
  if (c.embeddingSlots !== 1) return `it has ${c.embeddingSlots} embedding slots; Hugging Face models have one embedding`;
  if (c.norm !== "layernorm") return `norm is ${c.norm}; ${PANGU_ALPHA_ARCHITECTURE} (the architecture with the query layer) uses LayerNorm`;
  if (c.position !== "learned") return `position is ${c.position}; ${PANGU_ALPHA_ARCHITECTURE} (the architecture with the query layer) uses learned positions`;
  if (c.ffn !== "gelu" || !c.ffnBias) return `the FFN is ${c.ffn}${c.ffnBias ? "" : " without biases"}; ${PANGU_ALPHA_ARCHITECTURE} has a two-matrix FFN with biases`;
  if (c.attentionBias !== "all" || c.qkNorm) return `${c.qkNorm ? "q/k norms" : `attentionBias is ${c.attentionBias}`}; ${PANGU_ALPHA_ARCHITECTURE} has biases on q, k, v and o and no q/k norms`;
  if (kvHeads(c) !== c.heads || headDim(c) * c.heads !== c.width) return `its attention has ${kvHeads(c)} key/value heads of size ${headDim(c)}; ${PANGU_ALPHA_ARCHITECTURE} has ${c.heads} of width / heads`;
  return null;
}

/** config.json of a Sigma model that is the port (panguAlphaMismatch null); `notes` says what has no field. */
export function panguAlphaHfConfig(c: ModelConfig): { config: Json; notes: string[] } {
  const config: Json = {
    architectures: [PANGU_ALPHA_ARCHITECTURE],
    model_type: "gpt_pangu",
    vocab_size: c.vocabSize,
    hidden_size: c.width,
    intermediate_size: c.ffnWidth,
    num_layers: c.denseLayers + 1,
    num_heads: c.heads,
    max_position_embeddings: c.seqLen,
    activation_function: ACTIVATION_NAME[c.activation],
    layer_norm_epsilon: c.layerNormEps,
    scale_attn_weights: true,
    tie_word_embeddings: c.tiedEmbeddings,
    resid_pdrop: 0,
    embd_pdrop: 0,
    attn_pdrop: 0,
    initializer_range: c.initStd,
    torch_dtype: "float32",
    auto_map: { AutoConfig: "configuration_gptpangu.GPTPanguConfig", AutoModelForCausalLM: "modeling_gptpangu.GPTPanguForCausalLM" },
  };
  const notes = [`${PANGU_ALPHA_ARCHITECTURE} is not in transformers itself: loading the folder there needs the port's modeling_gptpangu.py and configuration_gptpangu.py beside config.json (auto_map names them; trust_remote_code=True)`];
  return { config, notes };
}
