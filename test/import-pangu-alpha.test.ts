// PanGu-α's Hugging Face port (GPTPanguForCausalLM, remote code
// modeling_gptpangu.py) in and out: tiny random models written here in the
// port's layout (transformer.wte / wpe / wqe, h.N.{ln_1, attn.{q,k,v,c}_proj,
// ln_2, mlp.{c_fc,c_proj}}, ln_f, nn.Linear [out, in]; the causal-mask
// buffers a torch state dict carries), imported, and run: Sigma's logits —
// whole sequences and token by token through the KV caches — match a float64
// forward written below from the port's code (the last of num_layers blocks
// is the query layer, after ln_f; masked scores −10⁴; lm_head tied). Export
// then import gives every weight back; errors name the field or tensor.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { noGrad } from "../src/autograd/tape.js";
import { encodeSafetensors, type StWrite } from "../src/checkpoint/safetensors.js";
import { exportHfModel, importHfModel } from "../src/models/import/hf.js";
import { parseModelConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { exportHf, importHf } from "../src/api/hf.js";
import { openModel } from "../src/api/model.js";
import { SigmaError } from "../src/util/errors.js";
import { Rng } from "../src/util/rng.js";
import { bf16Bits, bf16Value } from "../src/backend/quant.js";
import { sigma } from "./cli-harness.js";
import { hfRoot, writeHf, type Cfg, type W } from "./hf-fixture.js";

const root = mkdtempSync(join(tmpdir(), "sigma-pangu-alpha-"));
after(() => rmSync(root, { recursive: true, force: true }));
hfRoot.dir = root;

// Odd sizes: vocabulary 37, width 12 in 3 heads of 4, 3 blocks (2 + the query layer), 16 positions.
const [V, C, NH, P] = [37, 12, 3, 16];

/** The port's config.json, as sunzeyeah/pangu-350M writes it (sizes shrunk); field names written here, not taken from the importer. */
const BASE: Cfg = {
  architectures: ["GPTPanguForCausalLM"], model_type: "gpt_pangu", activation_function: "gelu", attn_pdrop: 0.1, embd_pdrop: 0.1,
  hidden_size: C, initializer_range: 0.02, intermediate_size: null, layer_norm_epsilon: 1e-5, max_position_embeddings: P,
  num_heads: NH, num_layers: 3, resid_pdrop: 0.1, scale_attn_weights: true, summary_activation: null, summary_first_dropout: 0.1,
  summary_proj_to_labels: true, summary_type: "cls_index", summary_use_proj: true, torch_dtype: "float32", use_cache: true,
  vocab_size: V, tokenizer_class: "GPTPanguTokenizer", pad_token_id: 6,
  auto_map: { AutoConfig: "configuration_gptpangu.GPTPanguConfig", AutoModelForCausalLM: "modeling_gptpangu.GPTPanguForCausalLM" },
};

/** Random weights under the port's tensor names (nn.Linear: [out, in]). */
function portWeights(c: Cfg, seed: number, bf16 = false): W {
  const rng = new Rng(seed);
  const F = (c.intermediate_size as number | null) ?? 4 * C;
  const w: W = new Map();
  const round = (x: number) => (bf16 ? bf16Value(bf16Bits(x)) : Math.fround(x));
  const add = (name: string, shape: number[], std = 0.3, mean = 0) => w.set(name, { shape, data: Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => round(mean + std * rng.normal())) });
  add("transformer.wte.weight", [V, C], 0.5);
  add("transformer.wpe.weight", [P, C], 0.5);
  add("transformer.wqe.weight", [P, C], 0.5);
  for (let l = 0; l < (c.num_layers as number); l++) {
    const h = `transformer.h.${l}`;
    for (const n of ["ln_1", "ln_2"]) {
      add(`${h}.${n}.weight`, [C], 0.1, 1);
      add(`${h}.${n}.bias`, [C], 0.1);
    }
    for (const n of ["q_proj", "k_proj", "v_proj", "c_proj"]) {
      add(`${h}.attn.${n}.weight`, [C, C]);
      add(`${h}.attn.${n}.bias`, [C], 0.2);
    }
    add(`${h}.mlp.c_fc.weight`, [F, C]);
    add(`${h}.mlp.c_fc.bias`, [F], 0.2);
    add(`${h}.mlp.c_proj.weight`, [C, F]);
    add(`${h}.mlp.c_proj.bias`, [C], 0.2);
  }
  add("transformer.ln_f.weight", [C], 0.1, 1);
  add("transformer.ln_f.bias", [C], 0.1);
  if (c.tie_word_embeddings === false) add("lm_head.weight", [V, C], 0.5);
  return w;
}

// ------------------------------------------------------------------ the port's forward, in float64

function layerNorm(x: Float64Array, w: Float32Array, b: Float32Array, eps: number): Float64Array {
  const mean = x.reduce((s, v) => s + v, 0) / x.length;
  const variance = x.reduce((s, v) => s + (v - mean) ** 2, 0) / x.length;
  const r = 1 / Math.sqrt(variance + eps);
  return Float64Array.from(x, (v, i) => (v - mean) * r * w[i]! + b[i]!);
}
/** nn.Linear: y = W x + b, W [out, in] row-major. */
function linear(x: Float64Array, W: Float32Array, b: Float32Array | undefined, out: number): Float64Array {
  const n = x.length;
  return Float64Array.from({ length: out }, (_, o) => {
    let s = b ? b[o]! : 0;
    for (let i = 0; i < n; i++) s += W[o * n + i]! * x[i]!;
    return s;
  });
}
/** erf in float64: its Taylor series below 3, the continued fraction of erfc above. */
function erf(x: number): number {
  const a = Math.abs(x);
  if (a < 3) {
    let term = a;
    let sum = a;
    for (let n = 1; Math.abs(term) > 1e-17 * Math.abs(sum); n++) {
      term *= (-a * a) / n;
      sum += term / (2 * n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  let k = a;
  for (let n = 60; n >= 1; n--) k = a + n / 2 / k;
  return Math.sign(x) * (1 - Math.exp(-a * a) / (Math.sqrt(Math.PI) * k));
}
/** transformers' ACT2FN entries the port's configs name. */
const ACT: Record<string, (v: number) => number> = {
  gelu: (v) => 0.5 * v * (1 + erf(v / Math.SQRT2)),
  gelu_new: (v) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3))),
  quick_gelu: (v) => v / (1 + Math.exp(-1.702 * v)),
};

/** GPTPanguForCausalLM's logits for one sequence (no cache, position ids 0 … T−1), as its modeling code computes them. */
function portForward(c: Cfg, w: W, tokens: number[]): Float64Array[] {
  const g = (n: string) => w.get(n)!.data;
  const opt = (n: string) => w.get(n)?.data;
  const eps = c.layer_norm_epsilon as number;
  const F = (c.intermediate_size as number | null) ?? 4 * C;
  const D = C / NH;
  const act = ACT[c.activation_function as string]!;
  const T = tokens.length;
  const row = (name: string, i: number) => Float64Array.from(g(name).subarray(i * C, (i + 1) * C));
  let h: Float64Array[] = tokens.map((x, t) => Float64Array.from(row("transformer.wte.weight", x), (v, i) => v + g("transformer.wpe.weight")[t * C + i]!));
  const queryEmbeds = tokens.map((_, t) => row("transformer.wqe.weight", t));
  const block = (hs: Float64Array[], l: number, customQuery: Float64Array[] | null): Float64Array[] => {
    const p = `transformer.h.${l}`;
    const a = hs.map((x) => layerNorm(x, g(`${p}.ln_1.weight`), g(`${p}.ln_1.bias`), eps));
    const proj = (xs: Float64Array[], n: string) => xs.map((x) => linear(x, g(`${p}.attn.${n}.weight`), opt(`${p}.attn.${n}.bias`), C));
    const [q, k, v] = [proj(customQuery ?? a, "q_proj"), proj(a, "k_proj"), proj(a, "v_proj")];
    return hs.map((x, t) => {
      const merged = new Float64Array(C);
      for (let hd = 0; hd < NH; hd++) {
        // Scores over every key; the causal mask writes −10⁴ (masked_bias) where s > t, then softmax over all T.
        const scores = Array.from({ length: T }, (_, s) => {
          if (s > t) return -1e4;
          let d = 0;
          for (let i = 0; i < D; i++) d += q[t]![hd * D + i]! * k[s]![hd * D + i]!;
          return d / Math.sqrt(D);
        });
        const max = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - max));
        const z = e.reduce((s, v) => s + v, 0);
        for (let s = 0; s < T; s++) for (let i = 0; i < D; i++) merged[hd * D + i]! += (e[s]! / z) * v[s]![hd * D + i]!;
      }
      const attn = linear(merged, g(`${p}.attn.c_proj.weight`), g(`${p}.attn.c_proj.bias`), C);
      const y = Float64Array.from(x, (u, i) => u + attn[i]!);
      const m = layerNorm(y, g(`${p}.ln_2.weight`), g(`${p}.ln_2.bias`), eps);
      const f = linear(linear(m, g(`${p}.mlp.c_fc.weight`), g(`${p}.mlp.c_fc.bias`), F).map(act), g(`${p}.mlp.c_proj.weight`), g(`${p}.mlp.c_proj.bias`), C);
      return Float64Array.from(y, (u, i) => u + f[i]!);
    });
  };
  const last = (c.num_layers as number) - 1;
  for (let l = 0; l < last; l++) h = block(h, l, null);
  // "Final LayerNorm before last query layer": ln_f, then the top block with queries from wqe.
  h = h.map((x) => layerNorm(x, g("transformer.ln_f.weight"), g("transformer.ln_f.bias"), eps));
  h = block(h, last, queryEmbeds);
  const head = c.tie_word_embeddings === false ? g("lm_head.weight") : g("transformer.wte.weight");
  return h.map((x) => linear(x, head, undefined, V));
}

const SEQS = [[1, 5, 9, 36, 2, 2, 17], [30, 0, 11, 7, 7, 21, 3]];
const T = SEQS[0]!.length;

/** Sigma's logits against the port's: whole sequences (B = 2), and the first sequence token by token through the KV caches. */
function compare(c: Cfg, w: W, model: PanguSigma): void {
  const ref = SEQS.map((s) => portForward(c, w, s));
  let worst = 0;
  let scale = 0;
  const check = (got: ArrayLike<number>, at: number, want: Float64Array) => {
    want.forEach((v, j) => {
      worst = Math.max(worst, Math.abs(v - got[at + j]!));
      scale = Math.max(scale, Math.abs(v));
    });
  };
  const whole = noGrad(() => model.forward({ tokens: Int32Array.from(SEQS.flat()), domains: Int32Array.of(0, 0), B: 2, T }).logits.data);
  ref.forEach((rows, b) => rows.forEach((want, t) => check(whole, (b * T + t) * V, want)));
  assert.ok(scale > 1, `logits should not be trivially small (max ${scale})`);
  assert.ok(worst < 1e-4 * scale, `whole sequences: max |Δlogit| ${worst} (logits up to ${scale})`);
  // Prefill 4 tokens, then one at a time: the query layer's cache holds the final hidden states' keys and values.
  const cache = model.newCache(1);
  const steps = [SEQS[0]!.slice(0, 4), ...SEQS[0]!.slice(4).map((x) => [x])];
  let t0 = 0;
  worst = 0;
  for (const part of steps) {
    const out = noGrad(() => model.forward({ tokens: Int32Array.from(part), domains: Int32Array.of(0), B: 1, T: part.length }, cache).logits.data);
    part.forEach((_, i) => check(out, i * V, ref[0]![t0 + i]!));
    t0 += part.length;
  }
  assert.ok(worst < 1e-4 * scale, `token by token: max |Δlogit| ${worst} (logits up to ${scale})`);
}

/** Writes the port's folder; `buffers` adds the causal-mask buffers (U8 tril, F32 −10⁴) a converted torch state dict holds. */
function writePort(c: Cfg, w: W, o: { bf16?: boolean; shards?: number; buffers?: boolean } = {}): string {
  const dir = writeHf(c, w, o);
  if (o.buffers) {
    const tensors = new Map<string, StWrite>([...w].map(([n, t]) => [n, { shape: t.shape, data: t.data }]));
    for (let l = 0; l < (c.num_layers as number); l++) {
      tensors.set(`transformer.h.${l}.attn.bias`, { shape: [1, 1, P, P], data: Uint8Array.from({ length: P * P }, (_, i) => (i % P <= Math.floor(i / P) ? 1 : 0)) });
      tensors.set(`transformer.h.${l}.attn.masked_bias`, { shape: [], data: Float32Array.of(-1e4) });
    }
    writeFileSync(join(dir, "model.safetensors"), encodeSafetensors(tensors, { format: "pt" }));
  }
  return dir;
}

/** Export, write, import again: the same config and every weight bit for bit; the exported tensors are the port's. */
function roundTrip(model: PanguSigma, w: W): void {
  const out = exportHfModel(model);
  assert.equal(out.architecture, "GPTPanguForCausalLM");
  const dir = join(root, `x${Math.random().toString(36).slice(2)}`);
  mkdirSync(dir);
  writeFileSync(join(dir, "config.json"), JSON.stringify(out.config));
  writeFileSync(join(dir, "model.safetensors"), encodeSafetensors(out.tensors));
  const again = importHfModel(dir).model;
  assert.deepEqual(again.config, model.config);
  const a = model.namedParameters();
  for (const [name, p] of again.namedParameters()) assert.deepEqual(p.tensor.data, a.get(name)!.tensor.data, name);
  assert.deepEqual([...out.tensors.keys()].sort(), [...w.keys()].sort());
  for (const [name, t] of w) assert.deepEqual(Float32Array.from(out.tensors.get(name)!.data as Float32Array), t.data, name);
}

test("GPTPanguForCausalLM (tied, f32, model_type \"pangu\", with lm_head's copy and the mask buffers): Sigma's logits are the port's, whole and token by token; export → import gives every weight back", () => {
  const c = { ...BASE, model_type: "pangu" };
  const w = portWeights(c, 11);
  // transformers saves the tied lm_head too (a copy of wte): it must equal wte and is not read.
  const dir = writePort(c, new Map([...w, ["lm_head.weight", w.get("transformer.wte.weight")!]]), { buffers: true });
  const { model, architecture } = importHfModel(dir);
  assert.equal(architecture, "GPTPanguForCausalLM");
  const mc = model.config;
  assert.deepEqual([mc.denseLayers, mc.sparseLayers, mc.queryLayer, mc.ffnWidth, mc.seqLen, mc.activation, mc.tiedEmbeddings, mc.norm, mc.position], [2, 0, true, 4 * C, P, "gelu", true, "layernorm", "learned"]);
  compare(c, w, model);
  roundTrip(model, w);
});

test("GPTPanguForCausalLM (untied lm_head, gelu_new, intermediate_size 9, bf16 in two shards with an index): Sigma's logits are the port's; export → import gives every weight back", () => {
  const c = { ...BASE, tie_word_embeddings: false, activation_function: "gelu_new", intermediate_size: 9, num_layers: 4 };
  const w = portWeights(c, 12, true);
  const { model } = importHfModel(writePort(c, w, { bf16: true, shards: 2 }));
  assert.deepEqual([model.config.denseLayers, model.config.tiedEmbeddings, model.config.activation, model.config.ffnWidth], [3, false, "gelu_tanh", 9]);
  compare(c, w, model);
  roundTrip(model, w);
});

test("a Sigma model with the query layer (dense, one slot, fastgelu) exports as GPTPanguForCausalLM and imports back with the same logits; sparse ones are refused by name", () => {
  const cfg = parseModelConfig({ vocabSize: V, width: C, heads: NH, denseLayers: 2, sparseLayers: 0, seqLen: P, ffnWidth: 10, domains: [{ name: "en" }], initStd: 0.4 });
  const model = new PanguSigma(cfg);
  const out = exportHfModel(model);
  assert.equal(out.config.activation_function, "quick_gelu");
  assert.equal(out.config.num_layers, 3);
  assert.match(out.notes.join("\n"), /modeling_gptpangu\.py/);
  const dir = join(root, "sigma-out");
  mkdirSync(dir);
  writeFileSync(join(dir, "config.json"), JSON.stringify(out.config));
  writeFileSync(join(dir, "model.safetensors"), encodeSafetensors(out.tensors));
  // The exported folder, run by the port's forward, gives Sigma's logits.
  const w: W = new Map([...out.tensors].map(([n, t]) => [n, { shape: t.shape, data: t.data as Float32Array }]));
  compare(out.config, w, importHfModel(dir).model);
  compare(out.config, w, model);
  const sparse = parseModelConfig({ ...cfg, sparseLayers: 1, experts: { count: 4, router: { kind: "topk", k: 2 } } });
  assert.throws(() => exportHfModel(new PanguSigma(sparse)), (e: unknown) => e instanceof SigmaError && /sparse layers and the query layer/.test(e.message));
  const rope = parseModelConfig({ ...cfg, position: "rope" });
  assert.throws(() => exportHfModel(new PanguSigma(rope)), (e: unknown) => e instanceof SigmaError && /position is rope.*GPTPanguForCausalLM/.test(e.message));
});

const refuses = (dir: string, re: RegExp, opts = {}) => assert.throws(() => importHfModel(dir, opts), (e: unknown) => e instanceof SigmaError && re.test(e.message), `expected ${re}`);

test("GPTPanguForCausalLM: config fields Sigma does not compute, missing, unexpected or misshapen tensors and an untied lm_head under a tied config are refused by name", () => {
  const w = portWeights(BASE, 3);
  for (const [patch, re] of [
    [{ scale_attn_weights: false }, /scale_attn_weights = false is not supported/],
    [{ activation_function: "relu" }, /activation_function = "relu" is not supported/],
    [{ num_layers: 1 }, /"num_layers" is 1, expected an integer ≥ 2/],
    [{ num_heads: 5 }, /heads/],
    [{ intermediate_size: "wide" }, /"intermediate_size" is "wide"/],
    [{ model_type: "gpt2" }, /model_type "gpt2" does not match GPTPanguForCausalLM/],
  ] as [Cfg, RegExp][]) refuses(writePort({ ...BASE, ...patch }, w), re);
  refuses(writePort(BASE, w), /seqLen 8 differs from max_position_embeddings 16/, { seqLen: 8 });
  const drop = new Map(w);
  drop.delete("transformer.wqe.weight");
  refuses(writePort(BASE, drop), /missing tensor "transformer\.wqe\.weight"/);
  const extra = new Map(w);
  extra.set("transformer.h.3.ln_1.weight", w.get("transformer.h.0.ln_1.weight")!);
  refuses(writePort(BASE, extra), /unexpected tensor "transformer\.h\.3\.ln_1\.weight"/);
  const bad = new Map(w);
  bad.set("transformer.h.1.mlp.c_fc.weight", { shape: [C, 4 * C], data: w.get("transformer.h.1.mlp.c_fc.weight")!.data });
  refuses(writePort(BASE, bad), /"transformer\.h\.1\.mlp\.c_fc\.weight" is \[12,48\], expected \[48,12\]/);
  const head = new Map(w);
  head.set("lm_head.weight", { shape: [V, C], data: w.get("transformer.wte.weight")!.data.map((v) => v + 1) });
  refuses(writePort(BASE, head), /lm_head\.weight differs from transformer\.wte\.weight, but config\.json says tie_word_embeddings/);
});

test("importHf of the port: the checkpoint opens and exports back, the note says the jieba + SentencePiece tokenizer must come separately; sigma import hf / export hf print it", async () => {
  const w = portWeights(BASE, 5);
  const src = writePort(BASE, w);
  const r = importHf(src, { out: join(root, "ck") });
  assert.equal(r.architecture, "GPTPanguForCausalLM");
  assert.equal(r.tokenizer, false);
  assert.match(r.tokenizerNote!, /no tokenizer\.json: PanGu-α's tokenizer is jieba word segmentation followed by SentencePiece \(vocab\.model/);
  const m = await openModel(r.checkpoint);
  assert.equal(m.network.config.queryLayer, true);
  const ex = await exportHf(m, { out: join(root, "hf-out") });
  assert.equal(ex.architecture, "GPTPanguForCausalLM");
  assert.equal(JSON.parse(readFileSync(join(root, "hf-out", "config.json"), "utf8")).model_type, "gpt_pangu");

  const imp = await sigma("import", "hf", "--from", src, "--out", join(root, "cli-ck"));
  assert.equal(imp.code, 0, imp.out);
  assert.match(imp.out, /GPTPanguForCausalLM: .* parameters/);
  assert.match(imp.out, /tokenizer: .*jieba.*SentencePiece/);
  const exp = await sigma("export", "hf", "--ckpt", join(root, "cli-ck"), "--out", join(root, "cli-hf"));
  assert.equal(exp.code, 0, exp.out);
  assert.match(exp.out, /GPTPanguForCausalLM: \d+ tensors \(no tokenizer\)/);
  assert.match(exp.out, /note: .*trust_remote_code/);
});
