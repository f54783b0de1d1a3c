/**
 * Model presets: a named architecture at a named size, as a model config
 * (`sigma preset`, `presetConfig`), and what a config costs in memory.
 *
 * `pangu-pro-moe` is Pangu Pro MoE's block (arXiv 2505.21411; the released
 * PanguProMoE config and its vLLM code): RMSNorm (eps 1e-5), rotary positions
 * (θ = 16,000,000), grouped-query attention (40 heads, 8 key/value heads at
 * full size), biases on q, k, v and o, bias-free SwiGLU experts and shared
 * expert, an untied output matrix, and MoGE routing (§4: 64 experts in 8
 * groups, one per group, router scale, no renormalisation) with 4 shared
 * experts of the expert width. Every layer is sparse. Its full size ("72b")
 * is the paper's: 48 layers, width 5120, experts 1344 wide, 153,376 tokens.
 * The smaller sizes keep the block and the proportions (expert width ≈ 0.26
 * of the width, 4 shared experts, G = 8 or fewer groups) [ours].
 */
import { SigmaError } from "../util/errors.js";
import { activeParameters, headDim, kvHeads, parameterCounts, parseModelConfig, sharedWidth, type ModelConfig, type ModelConfigInput } from "./config.js";
import { WEIGHT_FORMATS, groupsOf, rowElements, type WeightFormat } from "../backend/quant.js";

/** The sizes of one preset: width, depth, heads and experts; vocabSize and seqLen are defaults the caller may change. */
interface Size {
  width: number;
  layers: number;
  heads: number;
  kvHeads: number;
  experts: number;
  groups: number;
  expertWidth: number;
  vocabSize: number;
  seqLen: number;
}

const PRO_MOE_SIZES: Record<string, Size> = {
  tiny: { width: 64, layers: 2, heads: 4, kvHeads: 2, experts: 8, groups: 4, expertWidth: 16, vocabSize: 512, seqLen: 128 },
  small: { width: 512, layers: 8, heads: 8, kvHeads: 2, experts: 16, groups: 8, expertWidth: 128, vocabSize: 32000, seqLen: 1024 },
  medium: { width: 1024, layers: 16, heads: 16, kvHeads: 4, experts: 32, groups: 8, expertWidth: 256, vocabSize: 64000, seqLen: 2048 },
  large: { width: 2560, layers: 32, heads: 20, kvHeads: 4, experts: 64, groups: 8, expertWidth: 672, vocabSize: 153376, seqLen: 4096 },
  "72b": { width: 5120, layers: 48, heads: 40, kvHeads: 8, experts: 64, groups: 8, expertWidth: 1344, vocabSize: 153376, seqLen: 4096 },
};

export interface PresetOptions {
  /** Overrides the size's vocabulary (the tokenizer's size). */
  vocabSize?: number;
  /** Overrides the size's longest sequence. */
  seqLen?: number;
  /** Domain names (default ["en"]); all share one embedding slot. */
  domains?: string[];
  seed?: number;
}

interface Preset {
  description: string;
  sizes: Record<string, Size>;
  config(s: Size, o: PresetOptions): ModelConfigInput;
}

export const PRESETS: Record<string, Preset> = {
  "pangu-pro-moe": {
    description: "Pangu Pro MoE's block: RMSNorm, RoPE, GQA, SwiGLU experts and shared experts, MoGE with router scale, untied output",
    sizes: PRO_MOE_SIZES,
    config: (s, o) => ({
      vocabSize: o.vocabSize ?? s.vocabSize,
      width: s.width,
      heads: s.heads,
      kvHeads: s.kvHeads,
      denseLayers: 0,
      sparseLayers: s.layers,
      seqLen: o.seqLen ?? s.seqLen,
      // Unused by a model without dense layers, but every config has one: the width a dense FFN would have (HF intermediate_size is not given for Pro MoE).
      ffnWidth: 4 * s.expertWidth,
      domains: (o.domains ?? ["en"]).map((name) => ({ name })),
      experts: { count: s.experts, width: s.expertWidth, router: { kind: "moge", groups: s.groups, perGroup: 1, auxLossCoef: 0.001, sharedExperts: 4 } },
      queryLayer: false,
      norm: "rmsnorm",
      layerNormEps: 1e-5,
      position: "rope",
      ropeTheta: 16_000_000,
      ffn: "swiglu",
      ffnBias: false,
      attentionBias: "all",
      tiedEmbeddings: false,
      ...(o.seed !== undefined ? { seed: o.seed } : {}),
    }),
  },
};

/** The model config of preset `name` at `size`. */
export function presetConfig(name: string, size: string, opts: PresetOptions = {}): ModelConfig {
  const p = PRESETS[name];
  if (!p) throw new SigmaError(`no preset "${name}"`, `presets: ${Object.keys(PRESETS).join(", ")}`);
  const s = p.sizes[size];
  if (!s) throw new SigmaError(`preset ${name} has no size "${size}"`, `sizes: ${Object.keys(p.sizes).join(", ")}`);
  return parseModelConfig(p.config(s, opts), `preset ${name} (${size})`);
}

/** What a model of this config needs in memory, in bytes. */
export interface ModelMemory {
  parameters: number;
  /** Parameters one token uses (the k routed experts of each sparse layer, not all E). */
  active: number;
  /** Training in f32 with AdamW: weights, gradients and the two moments (16 bytes a parameter), before activations. */
  train: number;
  /** Serving: the weights with the matrices in each stored format (src/backend/quant.ts; norms, biases and routers stay f32). */
  serve: Record<WeightFormat, number>;
  /** The KV cache of one position over all layers (f32 keys and values of the kvHeads). */
  kvPerPosition: number;
}

/** Bytes of one stored row of K inputs. */
function rowBytes(format: WeightFormat, K: number): number {
  switch (format) {
    case "f32":
      return 4 * K;
    case "bf16":
    case "f16":
      return 2 * K;
    case "q8":
      return rowElements("q8", K) + 2 * groupsOf(K);
    case "q4":
      return rowElements("q4", K) + 4 * groupsOf(K);
  }
}

/** The memory a model of config c needs to train and to serve (computed from the config alone: no weights are allocated). */
export function modelMemory(c: ModelConfig): ModelMemory {
  const n = parameterCounts(c);
  const C = c.width, D = headDim(c), H = c.heads, G = kvHeads(c);
  const layers = c.denseLayers + c.sparseLayers + (c.queryLayer ? 1 : 0);
  // The stored matrices as [rows, K]: what quantize converts (src/models/quantize.ts).
  const mats: [number, number][] = [];
  const attention = (count: number) => mats.push([count * H * D, C], [count * 2 * G * D, C], [count * C, H * D]);
  const ffn = (count: number, F: number) => {
    mats.push([count * F * (c.ffn === "swiglu" ? 2 : 1), C], [count * C, F]);
  };
  attention(layers);
  ffn(c.denseLayers + (c.queryLayer ? 1 : 0), c.ffnWidth);
  if (c.experts && c.sparseLayers > 0) {
    ffn(c.sparseLayers * c.experts.count, c.experts.width ?? c.ffnWidth);
    const Fs = sharedWidth(c);
    if (Fs > 0) ffn(c.sparseLayers, Fs);
  }
  mats.push([c.embeddingSlots * c.vocabSize, C]);
  const stored = mats.reduce((s, [r, k]) => s + r * k, 0);
  const serve = Object.fromEntries(WEIGHT_FORMATS.map((f) => [f, 4 * (n.total - stored) + mats.reduce((s, [r, k]) => s + r * rowBytes(f, k), 0)])) as Record<WeightFormat, number>;
  return { parameters: n.total, active: activeParameters(c), train: 16 * n.total, serve, kvPerPosition: layers * 2 * G * D * 4 };
}

/** The rows of docs/models.md's size table: one per size of each preset. */
export function sizeTable(): { preset: string; size: string; config: ModelConfig; memory: ModelMemory }[] {
  return Object.entries(PRESETS).flatMap(([preset, p]) => Object.keys(p.sizes).map((size) => {
    const config = presetConfig(preset, size);
    return { preset, size, config, memory: modelMemory(config) };
  }));
}

const bytes = (b: number): string => (b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(1)} GiB` : `${(b / 2 ** 20).toFixed(1)} MiB`);
const count = (n: number): string => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} B` : `${(n / 1e6).toFixed(2)} M`);

/** docs/models.md's size table, as the code computes it (test/presets.test.ts checks that the page holds exactly this). */
export function sizeTableMarkdown(): string {
  const head = "| preset | size | width | layers | heads (kv) | experts × width (+ shared) | vocab | parameters | active | train (f32 + AdamW) | serve f32 | bf16 / f16 | q8 | q4 | KV cache per position |";
  const rule = "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |";
  const rows = sizeTable().map(({ preset, size, config: c, memory: m }) => {
    const ex = c.experts!;
    const experts = `${ex.count} × ${ex.width ?? c.ffnWidth} (+ ${sharedWidth(c)})`;
    const kv = `${(m.kvPerPosition / 1024).toFixed(1)} KiB`;
    return `| ${preset} | ${size} | ${c.width} | ${c.denseLayers + c.sparseLayers} | ${c.heads} (${kvHeads(c)}) | ${experts} | ${c.vocabSize.toLocaleString("en-US")} | ${count(m.parameters)} | ${count(m.active)} | ${bytes(m.train)} | ${bytes(m.serve.f32)} | ${bytes(m.serve.bf16)} | ${bytes(m.serve.q8)} | ${bytes(m.serve.q4)} | ${kv} |`;
  });
  return [head, rule, ...rows].join("\n");
}
