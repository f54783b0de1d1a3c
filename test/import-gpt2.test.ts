// GPT-2 import: a tiny GPT-2-shaped checkpoint written here, imported, and
// run, matches a GPT-2 forward pass computed independently in float64 loops;
// wrong or missing tensor names, shapes, dtypes and config keys are refused
// with errors that name them.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { noGrad } from "../src/autograd/tape.js";
import { encodeSafetensors } from "../src/checkpoint/safetensors.js";
import { importGpt2 } from "../src/models/import/gpt2.js";
import { upcycle } from "../src/models/upcycle.js";
import { parseModelConfig } from "../src/models/config.js";
import { Rng } from "../src/util/rng.js";

const [V, C, H, L, NPOS] = [23, 8, 2, 2, 6];
const F = 4 * C;
const EPS = 1e-5;
const root = mkdtempSync(join(tmpdir(), "sigma-gpt2-"));
after(() => rmSync(root, { recursive: true, force: true }));

type W = Map<string, { shape: number[]; data: Float32Array }>;

function gpt2Weights(seed = 1): W {
  const rng = new Rng(seed);
  const w: W = new Map();
  const add = (name: string, shape: number[], std = 0.3, mean = 0) => w.set(name, { shape, data: Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => mean + std * rng.normal()) });
  add("wte.weight", [V, C]);
  add("wpe.weight", [NPOS, C], 0.1);
  for (let l = 0; l < L; l++) {
    const h = `h.${l}.`;
    add(`${h}ln_1.weight`, [C], 0.1, 1);
    add(`${h}ln_1.bias`, [C], 0.1);
    add(`${h}attn.c_attn.weight`, [C, 3 * C]);
    add(`${h}attn.c_attn.bias`, [3 * C], 0.1);
    add(`${h}attn.c_proj.weight`, [C, C]);
    add(`${h}attn.c_proj.bias`, [C], 0.1);
    add(`${h}ln_2.weight`, [C], 0.1, 1);
    add(`${h}ln_2.bias`, [C], 0.1);
    add(`${h}mlp.c_fc.weight`, [C, F]);
    add(`${h}mlp.c_fc.bias`, [F], 0.1);
    add(`${h}mlp.c_proj.weight`, [F, C]);
    add(`${h}mlp.c_proj.bias`, [C], 0.1);
  }
  add("ln_f.weight", [C], 0.1, 1);
  add("ln_f.bias", [C], 0.1);
  return w;
}

const hfConfig = { model_type: "gpt2", architectures: ["GPT2LMHeadModel"], vocab_size: V, n_embd: C, n_head: H, n_layer: L, n_positions: NPOS, n_inner: null, activation_function: "gelu_new", layer_norm_epsilon: EPS, resid_pdrop: 0.1, embd_pdrop: 0.1, attn_pdrop: 0.1, bos_token_id: 0, eos_token_id: 0 };

let dirs = 0;
function writeGpt2(w: W, config: Record<string, unknown> = hfConfig): string {
  const dir = join(root, `m${dirs++}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  writeFileSync(join(dir, "model.safetensors"), encodeSafetensors(w, { format: "pt" }));
  return dir;
}

/** GPT-2's forward in float64, straight from the Conv1D layouts: logits [T, V] of one sequence. */
function referenceForward(w: W, tokens: number[]): number[][] {
  const g = (n: string) => w.get(n)!.data;
  const T = tokens.length;
  const D = C / H;
  const layerNorm = (x: number[], gamma: Float32Array, beta: Float32Array) => {
    const m = x.reduce((a, b) => a + b, 0) / C;
    const v = x.reduce((a, b) => a + (b - m) ** 2, 0) / C;
    return x.map((xi, i) => ((xi - m) / Math.sqrt(v + EPS)) * gamma[i]! + beta[i]!);
  };
  // Conv1D: y[o] = Σ_i x[i]·W[i, o] + b[o], W stored [in, out].
  const conv = (x: number[], W: Float32Array, b: Float32Array, out: number) => Array.from({ length: out }, (_, o) => x.reduce((a, xi, i) => a + xi * W[i * out + o]!, b[o]!));
  const gelu = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
  let x = tokens.map((tok, t) => Array.from({ length: C }, (_, c) => g("wte.weight")[tok * C + c]! + g("wpe.weight")[t * C + c]!));
  for (let l = 0; l < L; l++) {
    const h = `h.${l}.`;
    const qkv = x.map((xt) => conv(layerNorm(xt, g(`${h}ln_1.weight`), g(`${h}ln_1.bias`)), g(`${h}attn.c_attn.weight`), g(`${h}attn.c_attn.bias`), 3 * C));
    const att = Array.from({ length: T }, () => new Array<number>(C).fill(0));
    for (let hd = 0; hd < H; hd++) {
      for (let i = 0; i < T; i++) {
        const s = Array.from({ length: i + 1 }, (_, j) => {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += qkv[i]![hd * D + d]! * qkv[j]![C + hd * D + d]!;
          return dot / Math.sqrt(D);
        });
        const mx = Math.max(...s);
        const e = s.map((v) => Math.exp(v - mx));
        const z = e.reduce((a, b) => a + b, 0);
        for (let j = 0; j <= i; j++) for (let d = 0; d < D; d++) att[i]![hd * D + d]! += (e[j]! / z) * qkv[j]![2 * C + hd * D + d]!;
      }
    }
    x = x.map((xt, t) => conv(att[t]!, g(`${h}attn.c_proj.weight`), g(`${h}attn.c_proj.bias`), C).map((v, c) => v + xt[c]!));
    x = x.map((xt) => {
      const hid = conv(layerNorm(xt, g(`${h}ln_2.weight`), g(`${h}ln_2.bias`)), g(`${h}mlp.c_fc.weight`), g(`${h}mlp.c_fc.bias`), F).map(gelu);
      return conv(hid, g(`${h}mlp.c_proj.weight`), g(`${h}mlp.c_proj.bias`), C).map((v, c) => v + xt[c]!);
    });
  }
  return x.map((xt) => {
    const n = layerNorm(xt, g("ln_f.weight"), g("ln_f.bias"));
    return Array.from({ length: V }, (_, v) => n.reduce((a, ni, c) => a + ni * g("wte.weight")[v * C + c]!, 0));
  });
}

const SEQS = [[3, 17, 5, 22, 0, 9], [11, 11, 2, 7, 19, 4]];

function checkAgainstReference(dir: string, w: W): void {
  const model = importGpt2(dir).eval();
  assert.equal(model.config.queryLayer, false);
  assert.equal(model.config.activation, "gelu_tanh");
  const logits = noGrad(() => model.forward({ tokens: Int32Array.from(SEQS.flat()), domains: Int32Array.of(0, 0), B: 2, T: NPOS }).logits.data);
  let worst = 0;
  SEQS.forEach((seq, b) => {
    const ref = referenceForward(w, seq);
    ref.forEach((row, t) => row.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - logits[(b * NPOS + t) * V + j]!)))));
  });
  assert.ok(worst < 2e-5, `max |Δlogit| = ${worst}`);
}

test("an imported tiny GPT-2 computes the same logits as an independent float64 GPT-2 forward", () => {
  const w = gpt2Weights();
  checkAgainstReference(writeGpt2(w), w);
});

test("GPT2LMHeadModel naming (transformer. prefix, tied lm_head, mask buffers) imports the same", () => {
  const w = gpt2Weights(2);
  const lm: W = new Map([...w].map(([n, t]) => [`transformer.${n}`, t]));
  lm.set("lm_head.weight", w.get("wte.weight")!);
  lm.set("transformer.h.0.attn.bias", { shape: [1, 1, NPOS, NPOS], data: new Float32Array(NPOS * NPOS) });
  checkAgainstReference(writeGpt2(lm), w);
});

test("an imported GPT-2 upcycles to a sparse model with the same logits", () => {
  const dense = importGpt2(writeGpt2(gpt2Weights(3))).eval();
  const sparse = upcycle(dense, parseModelConfig({ ...dense.config, denseLayers: 1, sparseLayers: 1, domains: [{ name: "en", group: 0 }], experts: { count: 2, router: { kind: "rre", groups: 1 } } })).eval();
  const input = { tokens: Int32Array.from(SEQS.flat()), domains: Int32Array.of(0, 0), B: 2, T: NPOS };
  const a = noGrad(() => dense.forward(input).logits.data);
  const b = noGrad(() => sparse.forward(input).logits.data);
  assert.equal(a.length, b.length);
  assert.ok(a.every((v, i) => Math.abs(v - b[i]!) <= 1e-5));
});

test("wrong, missing and misshapen tensors are refused, naming the tensor", () => {
  const w = gpt2Weights();
  const without = new Map(w);
  without.delete("h.1.mlp.c_fc.bias");
  assert.throws(() => importGpt2(writeGpt2(without)), /missing tensor "h\.1\.mlp\.c_fc\.bias"/);
  const renamed = new Map(w);
  renamed.set("h.0.attn.qkv.weight", renamed.get("h.0.attn.c_attn.weight")!);
  renamed.delete("h.0.attn.c_attn.weight");
  assert.throws(() => importGpt2(writeGpt2(renamed)), /unexpected tensor "h\.0\.attn\.qkv\.weight"/);
  const extraLayer = new Map(w);
  extraLayer.set("h.2.ln_1.weight", w.get("h.0.ln_1.weight")!);
  assert.throws(() => importGpt2(writeGpt2(extraLayer)), /unexpected tensor "h\.2\.ln_1\.weight" \(not part of a 2-layer GPT-2\)/);
  const transposed = new Map(w);
  transposed.set("h.0.mlp.c_fc.weight", { shape: [F, C], data: w.get("h.0.mlp.c_fc.weight")!.data });
  assert.throws(() => importGpt2(writeGpt2(transposed)), /"h\.0\.mlp\.c_fc\.weight" is \[32,8\], expected \[8,32\]/);
  const untied = new Map(w);
  untied.set("lm_head.weight", { shape: [V, C], data: w.get("wte.weight")!.data.map((v) => v + 1) });
  assert.throws(() => importGpt2(writeGpt2(untied)), /untied output layer/);
});

test("unsupported config keys, dtypes and missing files are refused with a hint", () => {
  const w = gpt2Weights();
  assert.throws(() => importGpt2(writeGpt2(w, { ...hfConfig, activation_function: "relu" })), /activation_function "relu" is not supported\n {2}hint: supported: gelu_new/);
  assert.throws(() => importGpt2(writeGpt2(w, { ...hfConfig, model_type: "llama" })), /reads GPT-2 \("gpt2"\) only/);
  assert.throws(() => importGpt2(writeGpt2(w, { ...hfConfig, scale_attn_by_inverse_layer_idx: true })), /scale_attn_by_inverse_layer_idx = true is not supported/);
  assert.throws(() => importGpt2(writeGpt2(w, { ...hfConfig, n_embd: undefined })), /"n_embd" is undefined, expected a positive integer/);
  assert.throws(() => importGpt2(join(root, "nowhere")), /cannot read .*config\.json: ENOENT/);
  // A half-precision file (header written by hand: Sigma's writer has no F16).
  const dir = writeGpt2(w);
  const header = Buffer.from(JSON.stringify({ "wte.weight": { dtype: "F16", shape: [V, C], data_offsets: [0, V * C * 2] } }));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  writeFileSync(join(dir, "model.safetensors"), Buffer.concat([len, header, Buffer.alloc(V * C * 2)]));
  assert.throws(() => importGpt2(dir), /"wte\.weight" is F16; the importer reads F32 and F64\n {2}hint: save the model in float32/);
});
