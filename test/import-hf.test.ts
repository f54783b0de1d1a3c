// Hugging Face import and export: tiny random models of each supported
// architecture, written here in the transformers layout (one sharded with an
// index, one in bf16), imported, and run: Sigma's logits match a float64
// forward written below from the HF model definitions (RMSNorm, rotate_half
// RoPE, GQA, SwiGLU, each architecture's routing rule, shared expert and its
// gate). Export then import gives back every weight bit for bit. MoGE's
// routing is pinned on a hand-computed case. Errors name the architecture,
// tensor or config field at fault.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { noGrad } from "../src/autograd/tape.js";
import { encodeSafetensors, type StWrite } from "../src/checkpoint/safetensors.js";
import { exportHfModel, importHfModel } from "../src/models/import/hf.js";
import { parseModelConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { MogeRouter } from "../src/moe/routers/moge.js";
import { presetConfig } from "../src/models/presets.js";
import { Tensor } from "../src/tensor/tensor.js";
import { Rng } from "../src/util/rng.js";
import { exportHf, importHf } from "../src/api/hf.js";
import { Model, openModel } from "../src/api/model.js";
import { bf16Bits, bf16Value, halfBits, halfValue } from "../src/backend/quant.js";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import { toHfJson } from "../src/tokenizer/hfjson.js";
import { BYTE_TO_CHAR } from "../src/tokenizer/pretokenize.js";
import { SigmaError } from "../src/util/errors.js";
import { sigma } from "./cli-harness.js";
import { C, CONFIGS, E, FD, FE, FS, H, L, T, V, counter, hfRoot, hfWeights, headDimOf, int, writeHf, type Cfg, type W } from "./hf-fixture.js";

const root = mkdtempSync(join(tmpdir(), "sigma-hf-"));
after(() => rmSync(root, { recursive: true, force: true }));

hfRoot.dir = root;

// ------------------------------------------------------------------ the HF forward, in float64

function rmsNorm(x: Float64Array, w: Float32Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const r = 1 / Math.sqrt(ss / x.length + eps);
  return Float64Array.from(x, (v, i) => v * r * w[i]!);
}
/** y = W x (+ b), W [out, in] row-major as nn.Linear stores it. */
function linear(x: Float64Array, W: Float32Array, out: number, b?: Float32Array): Float64Array {
  const n = x.length;
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = b ? b[o]! : 0;
    for (let i = 0; i < n; i++) s += W[o * n + i]! * x[i]!;
    y[o] = s;
  }
  return y;
}
const silu = (v: number) => v / (1 + Math.exp(-v));
const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));
function swiglu(x: Float64Array, w: W, p: string, F: number): Float64Array {
  const b = (n: string) => w.get(`${p}.${n}_proj.bias`)?.data;
  const g = linear(x, w.get(`${p}.gate_proj.weight`)?.data ?? w.get(`${p}.w1.weight`)!.data, F, b("gate"));
  const u = linear(x, w.get(`${p}.up_proj.weight`)?.data ?? w.get(`${p}.w3.weight`)!.data, F, b("up"));
  return linear(Float64Array.from(g, (v, i) => silu(v) * u[i]!), w.get(`${p}.down_proj.weight`)?.data ?? w.get(`${p}.w2.weight`)!.data, C, b("down"));
}
/** HF's rotate_half RoPE on one head (in place): pairs (i, i + D/2). */
function rope(v: Float64Array, at: number, D: number, pos: number, theta: number): void {
  for (let i = 0; i < D / 2; i++) {
    const a = pos * theta ** (-(2 * i) / D);
    const [x1, x2] = [v[at + i]!, v[at + i + D / 2]!];
    v[at + i] = x1 * Math.cos(a) - x2 * Math.sin(a);
    v[at + i + D / 2] = x2 * Math.cos(a) + x1 * Math.sin(a);
  }
}

/** Experts chosen and their weights, by each architecture's rule (modeling_*.py). */
function route(kind: string, c: Cfg, logits: Float64Array, scale?: Float32Array): { ids: number[]; weights: number[] } {
  const m = Math.max(...logits);
  const ex = Array.from(logits, (v) => Math.exp(v - m));
  const z = ex.reduce((a, b) => a + b, 0);
  const p = ex.map((v) => v / z); // softmax over all experts
  const K = int(c, "num_experts_per_tok");
  if (kind === "pangu") {
    // K groups of E/K contiguous experts; each group's best, weighted by p × router_scale, not renormalised.
    const per = E / K;
    const ids = Array.from({ length: K }, (_, g) => {
      let best = g * per;
      for (let e = g * per; e < (g + 1) * per; e++) if (p[e]! > p[best]!) best = e;
      return best;
    });
    return { ids, weights: ids.map((e) => p[e]! * scale![e]!) };
  }
  const ids = p.map((v, e) => [v, e] as const).sort((a, b) => b[0] - a[0]).slice(0, K).map(([, e]) => e);
  let weights = ids.map((e) => p[e]!);
  const renorm = kind === "mixtral" ? true : (c.norm_topk_prob as boolean);
  if (renorm) {
    const s = weights.reduce((a, b) => a + b, 0);
    weights = weights.map((v) => v / s);
  }
  return { ids, weights };
}

/** The logits [T, V] of one sequence under the HF definition of `kind`. */
function hfForward(kind: string, c: Cfg, w: W, tokens: number[]): Float64Array[] {
  const g = (n: string) => w.get(n)?.data;
  const D = headDimOf(c);
  const [nH, nG] = [int(c, "num_attention_heads"), int(c, "num_key_value_heads")];
  const eps = c.rms_norm_eps as number;
  const theta = c.rope_theta as number;
  const mlpOnly = (c.mlp_only_layers as number[] | undefined) ?? [];
  let xs = tokens.map((t) => Float64Array.from(g("model.embed_tokens.weight")!.subarray(t * C, (t + 1) * C)));
  for (let l = 0; l < int(c, "num_hidden_layers"); l++) {
    const h = `model.layers.${l}`;
    const a = h + ".self_attn";
    const ks: Float64Array[] = [];
    const vs: Float64Array[] = [];
    const qs: Float64Array[] = [];
    xs.forEach((x, t) => {
      const n = rmsNorm(x, g(`${h}.input_layernorm.weight`)!, eps);
      const q = linear(n, g(`${a}.q_proj.weight`)!, nH * D, g(`${a}.q_proj.bias`));
      const k = linear(n, g(`${a}.k_proj.weight`)!, nG * D, g(`${a}.k_proj.bias`));
      const v = linear(n, g(`${a}.v_proj.weight`)!, nG * D, g(`${a}.v_proj.bias`));
      const qn = g(`${a}.q_norm.weight`);
      for (let i = 0; i < nH; i++) {
        if (qn) q.set(rmsNorm(q.subarray(i * D, (i + 1) * D), qn, eps), i * D);
        rope(q, i * D, D, t, theta);
      }
      for (let i = 0; i < nG; i++) {
        if (qn) k.set(rmsNorm(k.subarray(i * D, (i + 1) * D), g(`${a}.k_norm.weight`)!, eps), i * D);
        rope(k, i * D, D, t, theta);
      }
      qs.push(q);
      ks.push(k);
      vs.push(v);
    });
    xs = xs.map((x, t) => {
      const att = new Float64Array(nH * D);
      for (let i = 0; i < nH; i++) {
        const kv = Math.floor(i / (nH / nG)); // GQA: query head i reads KV head i / (H/G)
        const s = Array.from({ length: t + 1 }, (_, u) => {
          let d = 0;
          for (let j = 0; j < D; j++) d += qs[t]![i * D + j]! * ks[u]![kv * D + j]!;
          return d / Math.sqrt(D);
        });
        const m = Math.max(...s);
        const e = s.map((v) => Math.exp(v - m));
        const z = e.reduce((p, q) => p + q, 0);
        for (let u = 0; u <= t; u++) for (let j = 0; j < D; j++) att[i * D + j] += (e[u]! / z) * vs[u]![kv * D + j]!;
      }
      const o = linear(att, g(`${a}.o_proj.weight`)!, C, g(`${a}.o_proj.bias`));
      const r = Float64Array.from(x, (v, i) => v + o[i]!);
      const n = rmsNorm(r, g(`${h}.post_attention_layernorm.weight`)!, eps);
      let y: Float64Array;
      const moe = kind === "mixtral" ? `${h}.block_sparse_moe` : `${h}.mlp`;
      if (!g(`${moe}.gate.weight`) || mlpOnly.includes(l)) y = swiglu(n, w, `${h}.mlp`, int(c, "intermediate_size"));
      else {
        const { ids, weights } = route(kind, c, linear(n, g(`${moe}.gate.weight`)!, E), g(`${moe}.router_scale`));
        y = new Float64Array(C);
        ids.forEach((e, j) => swiglu(n, w, `${moe}.experts.${e}`, FE).forEach((v, i) => (y[i] += weights[j]! * v)));
        if (g(`${moe}.shared_expert.gate_proj.weight`)) {
          const sh = swiglu(n, w, `${moe}.shared_expert`, FS);
          const gate = g(`${moe}.shared_expert_gate.weight`) ? sigmoid(linear(n, g(`${moe}.shared_expert_gate.weight`)!, 1)[0]!) : 1;
          sh.forEach((v, i) => (y[i] += gate * v));
        }
      }
      return Float64Array.from(r, (v, i) => v + y[i]!);
    });
  }
  const head = g("lm_head.weight") ?? g("model.embed_tokens.weight")!;
  return xs.map((x) => linear(rmsNorm(x, g("model.norm.weight")!, eps), head, V));
}

const SEQS = [[1, 5, 9, 36, 2, 2, 17], [30, 0, 11, 7, 7, 21, 3]];

function worstDiff(kind: string, c: Cfg, w: W, model: PanguSigma): { worst: number; scale: number } {
  const logits = noGrad(() => model.forward({ tokens: Int32Array.from(SEQS.flat()), domains: Int32Array.of(0, 0), B: 2, T }).logits.data);
  let worst = 0;
  let scale = 0;
  SEQS.forEach((seq, b) => hfForward(kind, c, w, seq).forEach((row, t) => row.forEach((v, j) => {
    worst = Math.max(worst, Math.abs(v - logits[(b * T + t) * V + j]!));
    scale = Math.max(scale, Math.abs(v));
  })));
  return { worst, scale };
}

const LAYOUT: Record<string, { shards?: number; bf16?: boolean }> = { mixtral: { shards: 3 }, qwen2moe: { bf16: true } };
for (const [kind, c] of Object.entries(CONFIGS)) {
  test(`${c.architectures} (${LAYOUT[kind]?.shards ? "sharded, with an index" : LAYOUT[kind]?.bf16 ? "bf16 tensors" : "one file, f32"}): Sigma's logits are the HF forward's; export → import gives every weight back`, () => {
    const w = hfWeights(kind, c, 7 + counter.dirs, LAYOUT[kind]?.bf16);
    const dir = writeHf(c, w, LAYOUT[kind]);
    const { model, architecture } = importHfModel(dir);
    assert.equal(architecture, (c.architectures as string[])[0]);
    const { worst, scale } = worstDiff(kind, c, w, model);
    assert.ok(scale > 1, `logits should not be trivially small (max ${scale})`);
    assert.ok(worst < 1e-4 * Math.max(1, scale), `${kind}: max |Δlogit| ${worst} (logits up to ${scale})`);

    // Export and import again: the same config, the same weights bit for bit.
    const out = exportHfModel(model);
    assert.equal(out.architecture, architecture);
    const dir2 = join(root, `x${counter.dirs++}`);
    mkdirSync(dir2);
    writeFileSync(join(dir2, "config.json"), JSON.stringify(out.config));
    writeFileSync(join(dir2, "model.safetensors"), encodeSafetensors(out.tensors));
    const again = importHfModel(dir2).model;
    assert.deepEqual(again.config, model.config);
    const a = model.namedParameters();
    for (const [name, p] of again.namedParameters()) assert.deepEqual(p.tensor.data, a.get(name)!.tensor.data, name);
    // And the exported tensors are the HF ones we wrote.
    for (const [name, t] of w) assert.deepEqual(Float32Array.from(out.tensors.get(name)!.data as Float32Array), t.data, name);
  });
}

test("MoGE routes as Pangu Pro MoE: each group's argmax of the full softmax, weighted by p × router_scale, not renormalised (hand-computed)", () => {
  // Width 1, x = 1: the logits are the router's column: [0, ln 2, ln 3, 0] → softmax [1, 2, 3, 1]/7.
  const r = new MogeRouter(1, 4, 2, 1, 0, { rng: new Rng(1) });
  r.weight.data.set([0, Math.log(2), Math.log(3), 0]);
  r.scale.data.set([1, 0.5, 1.5, 1]);
  const out = noGrad(() => r.route({ x: Tensor.from([1], [1, 1]), tokenIds: Int32Array.of(0), domainIds: Int32Array.of(0) }));
  // Group {0, 1}: expert 1 (2/7); group {2, 3}: expert 2 (3/7). Weights 2/7 · 0.5 and 3/7 · 1.5 (sum 11/14, not 1).
  assert.deepEqual([...out.expertIds], [1, 2]);
  const wts = [...out.weights.data];
  assert.ok(Math.abs(wts[0]! - 1 / 7) < 1e-6 && Math.abs(wts[1]! - 4.5 / 7) < 1e-6, `weights ${wts}`);
});

test("importHf writes a checkpoint that opens; a tokenizer Sigma loads goes in, another is copied beside with a note; exportHf writes the HF folder back", async () => {
  const wc = new WordCounter();
  wc.add("the quick brown fox jumps over the lazy dog ".repeat(3));
  const tok = trainBpe(wc, { vocabSize: 300, domains: ["en"], langs: ["en"] });
  const c = { ...CONFIGS.llama, vocab_size: tok.vocabSize };
  const w = hfWeights("llama", c, 3);
  w.set("model.embed_tokens.weight", { shape: [tok.vocabSize, C], data: Float32Array.from({ length: tok.vocabSize * C }, (_, i) => Math.sin(i)) });
  w.set("lm_head.weight", { shape: [tok.vocabSize, C], data: Float32Array.from({ length: tok.vocabSize * C }, (_, i) => Math.cos(i)) });
  const text = toHfJson(tok);
  const r = importHf(writeHf(c, w, { tokenizer: text }), { out: join(root, "ck1") });
  assert.equal(r.tokenizer, true);
  const m = await openModel(r.checkpoint);
  assert.equal(m.tokenizer?.vocabSize, tok.vocabSize);
  const ex = await exportHf(m, { out: join(root, "hf-out") });
  assert.equal(ex.architecture, "LlamaForCausalLM");
  assert.equal(readFileSync(join(root, "hf-out", "tokenizer.json"), "utf8"), text);
  const back = importHfModel(join(root, "hf-out")).model;
  assert.deepEqual(back.tokenEmbedding.data, m.network.tokenEmbedding.data);
  // bf16 and f16: every tensor rounded (nearest, ties to even), half the bytes, torch_dtype saying so; import gives the rounded values.
  // Tensor bytes: the file less its 8-byte length and JSON header.
  const dataBytes = (dir: string) => {
    const b = readFileSync(join(dir, "model.safetensors"));
    return b.length - 8 - Number(b.readBigUInt64LE(0));
  };
  const f32Bytes = dataBytes(join(root, "hf-out"));
  for (const [dtype, bits, value, torch] of [["bf16", bf16Bits, bf16Value, "bfloat16"], ["f16", halfBits, halfValue, "float16"]] as const) {
    const dir = join(root, `hf-out-${dtype}`);
    await exportHf(m, { out: dir, dtype });
    assert.equal((JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as { torch_dtype: string }).torch_dtype, torch);
    assert.equal(dataBytes(dir), f32Bytes / 2, `${dtype}: half of f32's tensor bytes`);
    const rounded = importHfModel(dir).model;
    for (const [name, p] of m.network.namedParameters()) {
      const want = Float32Array.from(p.tensor.data as Float32Array, (x) => value(bits(x)));
      assert.deepEqual(rounded.namedParameters().get(name)!.tensor.data, want, `${dtype} ${name}`);
    }
  }
  // A value past f16's range is refused by name; bf16 takes it.
  const big = new Model(m.network, m.tokenizer, null, 0, null, null, text);
  (big.network.tokenEmbedding.data as Float32Array)[5] = 1e6;
  await assert.rejects(exportHf(big, { out: join(root, "hf-big"), dtype: "f16" }), (e: unknown) => e instanceof SigmaError && /model\.embed_tokens\.weight in f16: weight 5 .*1000000.*65504/.test(e.message));
  await exportHf(big, { out: join(root, "hf-big"), dtype: "bf16" });

  // A GPT-2-style Hugging Face tokenizer (256 byte tokens, one merge, <|endoftext|>) of fewer tokens than the model's 300 rows: it comes along and the model generates with it.
  const vocab: Record<string, number> = Object.fromEntries([...BYTE_TO_CHAR].map((c, i) => [c, i]));
  vocab["th"] = 256;
  const gpt2Style = JSON.stringify({
    version: "1.0", truncation: null, padding: null, normalizer: null,
    added_tokens: [{ id: 257, content: "<|endoftext|>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: ["t h"] },
  });
  const r3 = importHf(writeHf(c, w, { tokenizer: gpt2Style }), { out: join(root, "ck3") });
  assert.equal(r3.tokenizer, true, r3.tokenizerNote);
  const m3 = await openModel(r3.checkpoint);
  assert.equal(m3.tokenizer?.vocabSize, 258);
  assert.equal(typeof (await m3.complete("the", { maxTokens: 3, temperature: 0 })), "string");

  // A tokenizer the loader refuses (a WordPiece model) is copied beside the checkpoint with a note; the model imports.
  const foreign = JSON.stringify({ version: "1.0", model: { type: "WordPiece", vocab: { a: 0 } } });
  const r2 = importHf(writeHf(CONFIGS.llama!, hfWeights("llama", CONFIGS.llama!, 4), { tokenizer: foreign }), { out: join(root, "ck2") });
  assert.equal(r2.tokenizer, false);
  assert.match(r2.tokenizerNote!, /refuses .*tokenizer\.json.*hf-tokenizer\.json/);
  assert.equal(readFileSync(join(root, "ck2", "hf-tokenizer.json"), "utf8"), foreign);
  assert.ok(!existsSync(join(r2.checkpoint, "tokenizer.json")));
  await openModel(r2.checkpoint);
});

const refuses = (dir: string, re: RegExp) => assert.throws(() => importHfModel(dir), (e: unknown) => e instanceof SigmaError && re.test(e.message), `expected ${re}`);

test("an unknown architecture is refused, listing the supported ones", () => {
  const dir = writeHf({ ...CONFIGS.llama, architectures: ["GemmaForCausalLM"], model_type: "gemma" }, hfWeights("llama", CONFIGS.llama!, 1));
  assert.throws(() => importHfModel(dir), (e: unknown) => e instanceof SigmaError && /GemmaForCausalLM/.test(e.message) && /LlamaForCausalLM.*PanguProMoEForCausalLM/.test(e.hint ?? ""));
});

test("a missing, unexpected or misshapen tensor, a non-float dtype or a broken index is refused by name", () => {
  const c = CONFIGS.qwen2moe!;
  const w = hfWeights("qwen2moe", c, 2);
  const drop = new Map(w);
  drop.delete("model.layers.1.mlp.experts.4.up_proj.weight");
  refuses(writeHf(c, drop), /missing tensor "model\.layers\.1\.mlp\.experts\.4\.up_proj\.weight"/);
  const extra = new Map(w);
  extra.set("model.layers.1.mlp.experts.6.up_proj.weight", w.get("model.layers.1.mlp.experts.4.up_proj.weight")!);
  refuses(writeHf(c, extra), /unexpected tensor "model\.layers\.1\.mlp\.experts\.6\.up_proj\.weight"/);
  const bad = new Map(w);
  bad.set("model.layers.0.self_attn.k_proj.weight", { shape: [2 * 4, C], data: new Float32Array(8 * C) });
  refuses(writeHf(c, bad), /"model\.layers\.0\.self_attn\.k_proj\.weight" is \[8,12\], expected \[4,12\]/);
  // Qwen2 here is tied: a copy of the embedding as lm_head.weight is accepted, another matrix is not.
  const q = CONFIGS.qwen2!;
  const tiedW = hfWeights("qwen2", q, 9);
  tiedW.set("lm_head.weight", tiedW.get("model.embed_tokens.weight")!);
  importHfModel(writeHf(q, tiedW));
  tiedW.set("lm_head.weight", { shape: [V, C], data: tiedW.get("model.embed_tokens.weight")!.data.map((v) => v + 1) });
  refuses(writeHf(q, tiedW), /lm_head\.weight differs from model\.embed_tokens\.weight, but config\.json says tie_word_embeddings/);
  const ints = new Map<string, { shape: number[]; data: Float32Array }>(w);
  const dirI = writeHf(c, ints);
  const enc = new Map<string, StWrite>([...w].map(([k, t]) => [k, k === "model.norm.weight" ? { shape: t.shape, data: new Int32Array(t.data.length) } : t]));
  writeFileSync(join(dirI, "model.safetensors"), encodeSafetensors(enc));
  refuses(dirI, /tensor "model\.norm\.weight" is I32; the importer reads F32, F16, BF16/);
  const dir = writeHf(c, w, { shards: 2 });
  const index = JSON.parse(readFileSync(join(dir, "model.safetensors.index.json"), "utf8"));
  index.weight_map["model.norm.weight"] = "../elsewhere.safetensors";
  writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify(index));
  refuses(dir, /not a \.safetensors file name in the same folder/);
  const dir2 = writeHf(c, w, { shards: 2 });
  const index2 = JSON.parse(readFileSync(join(dir2, "model.safetensors.index.json"), "utf8"));
  index2.weight_map["model.norm.weight"] = index2.weight_map["model.embed_tokens.weight"] === "model-00001-of-00002.safetensors" ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
  writeFileSync(join(dir2, "model.safetensors.index.json"), JSON.stringify(index2));
  refuses(dir2, /model\.norm\.weight/);
  const dir3 = writeHf(c, w, { shards: 2 });
  const index3 = JSON.parse(readFileSync(join(dir3, "model.safetensors.index.json"), "utf8"));
  delete index3.weight_map["model.norm.weight"];
  writeFileSync(join(dir3, "model.safetensors.index.json"), JSON.stringify(index3));
  refuses(dir3, /holds tensor "model\.norm\.weight" that the index does not place in it/);
});

test("config fields Sigma does not compute are refused by name", () => {
  const cases: [string, Cfg, RegExp][] = [
    ["llama", { rope_scaling: { type: "linear", factor: 2 } }, /rope_scaling/],
    ["llama", { hidden_act: "gelu" }, /hidden_act/],
    ["mixtral", { sliding_window: 16 }, /sliding_window/],
    ["qwen2", { use_sliding_window: true, sliding_window: 16 }, /sliding_window/],
    ["qwen2", { sliding_window: 16, layer_types: ["full_attention", "sliding_attention"] }, /layer_types/],
    ["qwen2moe", { decoder_sparse_step: 2 }, /decoder_sparse_step/],
    ["qwen3moe", { mlp_only_layers: [1] }, /mlp_only_layers/],
    ["qwen2", { attention_bias: false }, /attention_bias/],
    ["llama", { vocab_size: "many" }, /vocab_size/],
  ];
  for (const [kind, patch, re] of cases) {
    const c = { ...CONFIGS[kind]!, ...patch };
    refuses(writeHf(c, hfWeights(kind, CONFIGS[kind]!, 1)), re);
  }
  // rope_scaling naming plain RoPE imports; a window at least as long as the context is no window at all: it imports.
  importHfModel(writeHf({ ...CONFIGS.llama!, rope_scaling: { rope_type: "default" } }, hfWeights("llama", CONFIGS.llama!, 1)));
  importHfModel(writeHf({ ...CONFIGS.mixtral!, sliding_window: 64 }, hfWeights("mixtral", CONFIGS.mixtral!, 1)));
});

test("export refuses models no HF architecture has, naming what is in the way", () => {
  const base = { vocabSize: 11, width: 8, heads: 2, denseLayers: 1, sparseLayers: 0, seqLen: 16, ffnWidth: 6, domains: [{ name: "en" }] };
  const no = (cfg: object, re: RegExp) => assert.throws(() => exportHfModel(new PanguSigma(parseModelConfig(cfg))), (e: unknown) => e instanceof SigmaError && re.test(e.message));
  // The query layer exports only as PanGu-α's dense port (test/import-pangu-alpha.test.ts): with sparse layers it is refused.
  no({ ...base, sparseLayers: 1, experts: { count: 4, router: { kind: "topk", k: 2 } } }, /query layer/);
  const block = { ...base, queryLayer: false, norm: "rmsnorm", position: "rope", ffn: "swiglu", ffnBias: false, attentionBias: "none" };
  no({ ...block, norm: "layernorm" }, /norm is layernorm/);
  no({ ...block, embeddingSlots: 2 }, /2 embedding slots/);
  no({ ...block, sparseLayers: 1, experts: { count: 4, router: { kind: "rre", groups: 2 } }, domains: [{ name: "en", group: 0 }] }, /router is rre/);
  no({ ...block, denseLayers: 0, sparseLayers: 1, experts: { count: 4, router: { kind: "topk", k: 2, renormalize: false } } }, /not renormalised/);
  no({ ...block, sparseLayers: 1, experts: { count: 4, router: { kind: "topk", k: 2 } } }, /dense layers below the sparse ones/);
  assert.equal(exportHfModel(new PanguSigma(parseModelConfig(block))).architecture, "LlamaForCausalLM");
});

test("sigma import hf / export hf: the CLI prints the architecture, the notes and the paths; an unknown architecture is one line and a hint", async () => {
  const src = writeHf(CONFIGS.pangu!, hfWeights("pangu", CONFIGS.pangu!, 5));
  const imp = await sigma("import", "hf", "--from", src, "--out", join(root, "cli-ck"), "--seq-len", "32");
  assert.equal(imp.code, 0, imp.out);
  assert.match(imp.out, /PanguProMoEForCausalLM: .* parameters/);
  assert.match(imp.out, /tokenizer: .* has no tokenizer\.json/);
  const exp = await sigma("export", "hf", "--ckpt", join(root, "cli-ck"), "--out", join(root, "cli-hf"));
  assert.equal(exp.code, 0, exp.out);
  assert.match(exp.out, /PanguProMoEForCausalLM: \d+ tensors \(no tokenizer\)/);
  const cfg = JSON.parse(readFileSync(join(root, "cli-hf", "config.json"), "utf8"));
  assert.equal(cfg.max_position_embeddings, 32);
  assert.equal(cfg.num_experts_per_tok, 2);
  const half = await sigma("export", "hf", "--ckpt", join(root, "cli-ck"), "--out", join(root, "cli-hf-bf16"), "--dtype", "bf16");
  assert.equal(half.code, 0, half.out);
  assert.equal(JSON.parse(readFileSync(join(root, "cli-hf-bf16", "config.json"), "utf8")).torch_dtype, "bfloat16");
  const badType = await sigma("export", "hf", "--ckpt", join(root, "cli-ck"), "--out", join(root, "cli-hf-q8"), "--dtype", "q8");
  assert.equal(badType.code, 1);
  assert.match(badType.out, /^sigma: --dtype "q8" is not a type sigma export hf writes\n  hint: use one of f32, bf16, f16/m);
  const bad = await sigma("import", "hf", "--from", writeHf({ ...CONFIGS.llama!, architectures: ["FalconForCausalLM"] }, new Map()), "--out", join(root, "cli-bad"));
  assert.equal(bad.code, 1);
  assert.match(bad.out, /sigma: .*FalconForCausalLM.* is not supported/);
  assert.match(bad.out, /hint: supported: LlamaForCausalLM/);
  assert.doesNotMatch(bad.out, /\n\s+at /);
});

test("the pangu-pro-moe preset exports as PanguProMoEForCausalLM and imports back with the same weights and logits", () => {
  const model = new PanguSigma(parseModelConfig(presetConfig("pangu-pro-moe", "tiny")));
  // Non-trivial router scales and norms, so that a dropped or misplaced one shows in the logits.
  const rng = new Rng(11);
  for (const [name, p] of model.namedParameters()) if (/scale|gamma/.test(name)) p.tensor.data.forEach((_, i, a) => (a[i] = 1 + 0.3 * rng.normal()));
  const out = exportHfModel(model);
  assert.equal(out.architecture, "PanguProMoEForCausalLM");
  const dir = join(root, `x${counter.dirs++}`);
  mkdirSync(dir);
  writeFileSync(join(dir, "config.json"), JSON.stringify(out.config));
  writeFileSync(join(dir, "model.safetensors"), encodeSafetensors(out.tensors));
  const back = importHfModel(dir).model;
  const input = { tokens: Int32Array.from({ length: 2 * 9 }, (_, i) => (i * 37) % 512), domains: Int32Array.of(0, 0), B: 2, T: 9 };
  const a = noGrad(() => model.forward(input).logits.data);
  const b = noGrad(() => back.forward(input).logits.data);
  assert.deepEqual(b, a);
});
