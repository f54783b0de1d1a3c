// Hostile or damaged safetensors files (models, optimizer state): every one
// is a SigmaError naming the file and what is wrong — through the real
// readers (readSafetensors, decodeModel, loadModel) and through the CLI.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeSafetensors, readSafetensors } from "../src/checkpoint/safetensors.js";
import { decodeModel, encodeModel, loadModel } from "../src/models/io.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { parseModelConfig, type ModelConfigInput } from "../src/models/config.js";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import { saveTokenizer } from "../src/tokenizer/hfjson.js";
import { assertRefused, cli, failures, sigmaError } from "./formats-helpers.js";

const root = mkdtempSync(join(tmpdir(), "sigma-formats-st-"));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

/** A safetensors file from a header given as JSON text (so it can repeat keys) and raw data bytes. */
function stBytes(headerText: string, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const h = Buffer.from(headerText, "utf8");
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}
const write = (bytes: Uint8Array): string => {
  const p = join(root, `f${n++}.safetensors`);
  writeFileSync(p, bytes);
  return p;
};
const f32 = (k: number) => new Uint8Array(new Float32Array(k).fill(1).buffer);

/** Header text of entries `name: [dtype, shape, [begin, end]]`, plus optional metadata. */
function header(entries: Record<string, [string, unknown, unknown]>, metadata?: unknown): string {
  const o: Record<string, unknown> = {};
  if (metadata !== undefined) o.__metadata__ = metadata;
  for (const [k, [dtype, shape, data_offsets]] of Object.entries(entries)) o[k] = { dtype, shape, data_offsets };
  return JSON.stringify(o);
}

test("safetensors: every malformed header is a SigmaError naming the file and the problem", () => {
  const cases: [string, Uint8Array, RegExp][] = [
    ["shorter than the length field", new Uint8Array(5), /only 5 bytes/],
    ["header length past the end of the file", (() => {
      const b = stBytes("{}");
      new DataView(b.buffer).setBigUint64(0, 1000n, true);
      return b;
    })(), /header claims 1000 bytes/],
    ["absurd header length", (() => {
      const b = stBytes("{}");
      new DataView(b.buffer).setBigUint64(0, 1n << 62n, true);
      return b;
    })(), /header length is \d+ bytes, over the 100000000-byte limit/],
    ["header not JSON", stBytes("{nope"), /header is not UTF-8 JSON/],
    ["header not UTF-8", stBytes("{}", new Uint8Array(0)).map((x, i) => (i === 9 ? 0xff : x)), /not UTF-8 JSON/],
    ["header an array", stBytes("[]"), /header is not a JSON object/],
    ["header null", stBytes("null"), /header is not a JSON object/],
    ["tensor entry null", stBytes('{"a":null}'), /tensor "a" is not an object/],
    ["unknown dtype", stBytes(header({ a: ["Q7", [1], [0, 4]] }), f32(1)), /tensor "a" has dtype "Q7"/],
    ["shape not an array", stBytes(header({ a: ["F32", 4, [0, 16]] }), f32(4)), /tensor "a" has shape 4/],
    ["negative dimensions", stBytes(header({ a: ["F32", [-2, -2], [0, 16]] }), f32(4)), /tensor "a" has shape \[-2,-2\]/],
    ["fractional dimension", stBytes(header({ a: ["F32", [2.5, 2], [0, 20]] }), f32(5)), /tensor "a" has shape \[2.5,2\]/],
    ["data_offsets not a pair", stBytes(header({ a: ["F32", [1], [0]] }), f32(1)), /data_offsets \[0\]/],
    ["data_offsets reversed", stBytes(header({ a: ["F32", [0], [8, 4]] }), f32(2)), /data_offsets \[8,4\]/],
    ["data_offsets fractional", stBytes(header({ a: ["F32", [1], [0, 4.5]] }), f32(2)), /data_offsets \[0,4\.5\]/],
    ["bytes do not match the shape", stBytes(header({ a: ["F32", [3], [0, 16]] }), f32(4)), /spans 16 bytes but F32 \[3\] needs 12/],
    ["overflowing shape", stBytes(header({ a: ["F64", [2 ** 40, 2 ** 40, 2 ** 40], [0, 8]] }), f32(2)), /spans 8 bytes but F64 .* needs more/],
    ["tensor past the data", stBytes(header({ a: ["F32", [4], [0, 16]] }), f32(2)), /spans bytes \[0, 16\) of a 8-byte data section/],
    ["overlapping tensors", stBytes(header({ a: ["F32", [4], [0, 16]], b: ["F32", [4], [0, 16]] }), f32(4)), /overlaps/],
    ["a gap between tensors", stBytes(header({ a: ["F32", [2], [0, 8]], b: ["F32", [2], [16, 24]] }), f32(6)), /bytes \[8, 16\) of the data section belong to no tensor/],
    ["bytes after the last tensor", stBytes(header({ a: ["F32", [2], [0, 8]] }), f32(3)), /4 bytes after the last tensor/],
    ["a repeated tensor name", stBytes('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', f32(2)), /the key "a" appears twice/],
    ["a repeated field", stBytes('{"a":{"dtype":"F32","shape":[1],"shape":[2],"data_offsets":[0,8]}}', f32(2)), /the key "shape" appears twice in "a"/],
    ["an unknown field", stBytes('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"offset":9}}', f32(1)), /unknown field "offset"/],
    ["an empty tensor name", stBytes(header({ "": ["F32", [1], [0, 4]] }), f32(1)), /tensor name "" is empty/],
    ["a control character in a name", stBytes(header({ "a\u0000b": ["F32", [1], [0, 4]] }), f32(1)), /control characters/],
    ["metadata not an object", stBytes(header({}, ["x"])), /__metadata__ is not an object of strings/],
    ["a metadata value not a string", stBytes(header({}, { step: 5 })), /__metadata__ key "step" is number, not a string/],
    ["a dtype Sigma does not read", stBytes(header({ a: ["F16", [2], [0, 4]] }), f32(1)), /tensor "a" has dtype F16; Sigma reads F32, F64 and I32/],
  ];
  assert.deepEqual(failures(cases.map(([what, bytes, re]) => {
    const p = write(bytes);
    return [what, () => assert.throws(() => readSafetensors(p), sigmaError(p, re))];
  })), []);
});

test("safetensors: well-formed files still read, empty tensors and no tensors included", () => {
  const t = new Map([
    ["a", { shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) }],
    ["empty", { shape: [0, 5], data: new Float32Array(0) }],
    ["i", { shape: [1], data: new Int32Array([-7]) }],
  ]);
  const r = readSafetensors(write(encodeSafetensors(t, { step: "3" })));
  assert.deepEqual(r.metadata, { step: "3" });
  assert.deepEqual([...r.tensors.keys()].sort(), ["a", "empty", "i"]);
  assert.deepEqual(Array.from(r.tensors.get("a")!.data), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(r.tensors.get("empty")!.shape, [0, 5]);
  assert.equal(readSafetensors(write(encodeSafetensors(new Map()))).tensors.size, 0);
});

test("metadata integers (the optimizer's step): metadataInt accepts only a decimal integer in range", async () => {
  const { metadataInt } = await import("../src/checkpoint/safetensors.js");
  const src = "run/step-00000004/optimizer.safetensors";
  const step = (md: Record<string, string>) => metadataInt(md, "step", src, { min: 0, max: 2 ** 31 - 1 });
  assert.equal(step({ step: "12" }), 12);
  assert.equal(step({ step: "0" }), 0);
  for (const bad of [undefined, "", "-1", "1e3", "12abc", " 12", "0x10", "NaN", "3.5", "99999999999999999999", String(2 ** 31)]) {
    const md: Record<string, string> = bad === undefined ? {} : { step: bad };
    assert.throws(() => step(md), sigmaError(src, /metadata "step" is .*expected an integer in \[0, 2147483647\]/), String(bad));
  }
  assert.equal(metadataInt({ k: "-4" }, "k", src, { min: -10, max: 10 }), -4);
  assert.throws(() => metadataInt({ k: "11" }, "k", src, { min: -10, max: 10 }), sigmaError(src, /"k" is "11"/));
  assert.equal(metadataInt({ k: String(2 ** 53 - 1) }, "k", src), 2 ** 53 - 1);
  // An inherited property is not metadata.
  assert.throws(() => metadataInt({}, "constructor", src), sigmaError(src, /"constructor" is missing/));
});

// A tiny model and its tokenizer, for the model-level checks.
const wc = new WordCounter();
wc.add("hello world, hello sigma. 你好，世界".repeat(4));
const tok = trainBpe(wc, { vocabSize: 280, domains: ["zh", "en"], langs: [] });
const dense: ModelConfigInput = { vocabSize: tok.vocabSize, width: 8, heads: 2, denseLayers: 1, sparseLayers: 0, seqLen: 8, ffnWidth: 16, domains: [{ name: "zh" }, { name: "en" }], embeddingSlots: 1 };
const rre: ModelConfigInput = { ...dense, sparseLayers: 1, domains: [{ name: "zh", group: 0 }, { name: "en", group: 1 }], experts: { count: 4, router: { kind: "rre", groups: 2 } } };
const modelDir = join(root, "model");
mkdirSync(modelDir);
saveTokenizer(tok, join(modelDir, "tokenizer.json"));

/** The tensors and metadata of a model file, to damage and re-encode. */
function parts(cfg: ModelConfigInput) {
  const r = readSafetensors(write(encodeModel(new PanguSigma(parseModelConfig(cfg)))));
  return { tensors: new Map([...r.tensors].map(([k, t]) => [k, { shape: [...t.shape], data: t.data }])), metadata: { ...r.metadata } };
}
const modelFile = (tensors: Map<string, { shape: number[]; data: Float32Array | Int32Array | Float64Array }>, metadata: Record<string, string>): string => {
  const p = join(modelDir, `m${n++}.safetensors`);
  writeFileSync(p, encodeSafetensors(tensors, metadata));
  return p;
};

test("model files: every tensor must have exactly the shape its config implies", () => {
  const { tensors, metadata } = parts(dense);
  assert.ok(loadModel(modelFile(tensors, metadata)) instanceof PanguSigma);
  // Same number of values, transposed: once read silently into the wrong layout.
  const t = new Map(tensors);
  const emb = t.get("tokenEmbedding")!;
  t.set("tokenEmbedding", { shape: [emb.shape[1]!, emb.shape[0]!], data: emb.data });
  const p = modelFile(t, metadata);
  assert.throws(() => loadModel(p), sigmaError(p, /tensor "tokenEmbedding" is F32 \[8, 280\], its config needs F32 \[280, 8\]/));
  const t2 = new Map(tensors);
  t2.delete("finalNorm.beta");
  const p2 = modelFile(t2, metadata);
  assert.throws(() => loadModel(p2), sigmaError(p2, /tensor "finalNorm.beta" is missing/));
});

test("model files: the embedded config is validated, and one that implies a huge model is refused before allocating", () => {
  const { tensors, metadata } = parts(dense);
  const bad = (cfg: unknown) => modelFile(tensors, { ...metadata, config: typeof cfg === "string" ? cfg : JSON.stringify(cfg) });
  const p1 = bad({ ...dense, heads: 3 });
  assert.throws(() => loadModel(p1), sigmaError(p1, /embedded config\) is invalid:\n {2}heads: 3 does not divide width 8/));
  const p2 = bad("{not json");
  assert.throws(() => loadModel(p2), sigmaError(p2, /embedded config is not JSON/));
  const p3 = bad(`{"vocabSize":280,"vocabSize":9,${JSON.stringify(dense).slice(1)}`);
  assert.throws(() => loadModel(p3), sigmaError(p3, /embedded config is not JSON .*"vocabSize" appears twice/));
  // Sizes within the config bounds (src/models/config.ts MODEL_LIMITS) but far past what the file holds.
  const p4 = bad({ ...dense, vocabSize: 2 ** 21 });
  assert.throws(() => loadModel(p4), sigmaError(p4, /describes a model of at least .* values .* but the file holds \d+ values/));
  const p5 = bad({ ...dense, denseLayers: 4096, width: 1, heads: 1 });
  assert.throws(() => loadModel(p5), sigmaError(p5, /in 4096 layers, but the file holds/));
  // Past the bounds, the config itself is refused, naming the field.
  const p6 = bad({ ...dense, vocabSize: 2 ** 31 });
  assert.throws(() => loadModel(p6), sigmaError(p6, /embedded config\) is invalid:\n {2}vocabSize: must be at most 2097152/));
});

test("model files: an RRE table that sends a token outside its expert group is refused", () => {
  const { tensors, metadata } = parts(rre);
  const name = [...tensors.keys()].find((k) => k.endsWith(".router.table"))!;
  const table = Int32Array.from(tensors.get(name)!.data);
  table[5] = 99;
  tensors.set(name, { shape: [table.length], data: table });
  const p = modelFile(tensors, metadata);
  assert.throws(() => decodeModel(encodeSafetensors(tensors, metadata), p), sigmaError(p, /state buffer "blocks\.1\.moe\.router\.table" sends token 5 of expert group 0 to expert 99, outside the group \(experts 0…1\)/));
});

test("CLI: sigma generate on a damaged model file exits 1 with one line naming the file", async () => {
  const { tensors, metadata } = parts(dense);
  const good = modelFile(tensors, metadata);
  const ok = await cli(["generate", "--ckpt", good, "--prompt", "hello", "--max-tokens", "2"]);
  assert.equal(ok.code, 0, ok.err);
  // Two tensors over the same bytes: each tensor still "fits", so this once loaded with aliased weights.
  const raw = encodeSafetensors(tensors, metadata);
  const start = 8 + Number(new DataView(raw.buffer).getBigUint64(0, true));
  const data = raw.subarray(start);
  const h = JSON.parse(Buffer.from(raw.subarray(8, start)).toString("utf8"));
  const [a, b] = ["finalNorm.beta", "finalNorm.gamma"];
  h[b].data_offsets = h[a].data_offsets;
  const p = join(modelDir, "overlap.safetensors");
  let text = JSON.stringify(h);
  text += " ".repeat(start - 8 - text.length);
  writeFileSync(p, stBytes(text, data));
  assertRefused(await cli(["generate", "--ckpt", p, "--prompt", "hello", "--max-tokens", "2"]), p, /overlaps|belong to no tensor/);
  // A transposed tensor.
  const t = new Map(tensors);
  const w = t.get("blocks.0.ffn.fc1.weight")!;
  t.set("blocks.0.ffn.fc1.weight", { shape: [w.shape[1]!, w.shape[0]!], data: w.data });
  const p2 = modelFile(t, metadata);
  assertRefused(await cli(["generate", "--ckpt", p2, "--prompt", "hello", "--max-tokens", "2"]), p2, /its config needs F32 \[16, 8\]/);
});
