/**
 * The GGUF container (src/checkpoint/gguf.ts) and Sigma's GGUF export and
 * import (src/models/gguf.ts, `sigma export gguf`, `sigma import gguf`).
 * llama.cpp itself checks the exported files in test/gguf-llama.test.ts.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { gguf as hfGguf } from "@huggingface/gguf";
import { decodeGguf, encodeGguf, gv, readGguf, writeGguf, type GgufTensor, type GgufValue } from "../src/checkpoint/gguf.js";
import { halfValue } from "../src/backend/quant.js";
import { writeModelFolder } from "../src/api/model.js";
import { parseModelConfig, type ModelConfigInput } from "../src/models/config.js";
import { decodeTensor, encodeTensor, GPT2_ARCHITECTURE, ggufOfModel, modelOfGguf, ropePairOrder, type GgufArchitecture } from "../src/models/gguf.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { toHfJson } from "../src/tokenizer/hfjson.js";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import { SigmaError } from "../src/util/errors.js";
import { Rng } from "../src/util/rng.js";
import { sigma } from "./cli-harness.js";

const dir = mkdtempSync(join(tmpdir(), "sigma-gguf-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const f32 = (xs: number[]): Uint8Array => new Uint8Array(Float32Array.from(xs).buffer);

/** A file with every value type, nested arrays, an alignment of 64 and tensors of each type Sigma writes. */
function sampleFile(): { metadata: Map<string, GgufValue>; tensors: GgufTensor[] } {
  const metadata = new Map<string, GgufValue>([
    ["general.alignment", gv.u32(64)],
    ["t.u8", { type: "u8", value: 255 }],
    ["t.i8", { type: "i8", value: -128 }],
    ["t.u16", { type: "u16", value: 65535 }],
    ["t.i16", { type: "i16", value: -32768 }],
    ["t.u32", gv.u32(4294967295)],
    ["t.i32", gv.i32(-2147483648)],
    ["t.f32", gv.f32(Math.fround(0.1))],
    ["t.bool", gv.bool(true)],
    ["t.string", gv.str("héllo, 世界 ✓")],
    ["t.empty", gv.str("")],
    ["t.u64", { type: "u64", value: 2n ** 64n - 1n }],
    ["t.i64", { type: "i64", value: -(2n ** 63n) }],
    ["t.f64", { type: "f64", value: Math.PI }],
    ["t.arr.str", gv.arr("string", ["a", "", "Ġthe"])],
    ["t.arr.i32", gv.arr("i32", [1, -2, 3])],
    ["t.arr.empty", gv.arr("f32", [])],
    ["t.arr.bool", gv.arr("bool", [true, false])],
    ["t.arr.u64", gv.arr("u64", [0n, 2n ** 60n])],
    ["t.arr.nested", gv.arr("array", [gv.arr("u8", [1, 2]), gv.arr("string", ["x"])])],
  ]);
  const rows = 3;
  const cols = 64;
  const w = Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(i) * 2);
  const tensors: GgufTensor[] = [
    { name: "a.f32", type: "F32", ne: [5], data: f32([1, 2, 3, 4, 5]) },
    { name: "b.f16", type: "F16", ne: [cols, rows], data: encodeTensor("F16", w, rows, cols) },
    { name: "c.bf16", type: "BF16", ne: [cols, rows], data: encodeTensor("BF16", w, rows, cols) },
    { name: "d.q8_0", type: "Q8_0", ne: [cols, rows], data: encodeTensor("Q8_0", w, rows, cols) },
    { name: "e.4d", type: "F32", ne: [1, 2, 1, 3], data: f32([1, 2, 3, 4, 5, 6]) },
  ];
  return { metadata, tensors };
}

test("GGUF round trip: every value type (arrays of arrays too), tensors F32/F16/BF16/Q8_0 at the file's alignment", () => {
  const file = sampleFile();
  const bytes = encodeGguf(file);
  const back = decodeGguf(bytes, "sample.gguf");
  assert.equal(back.version, 3);
  assert.equal(back.alignment, 64);
  assert.deepEqual([...back.metadata], [...file.metadata]);
  assert.equal(back.tensors.length, file.tensors.length);
  const start = back.tensors[0]!.data.byteOffset - bytes.byteOffset;
  assert.equal(start % 64, 0, "the data section starts aligned");
  file.tensors.forEach((t, i) => {
    const b = back.tensors[i]!;
    assert.equal(b.name, t.name);
    assert.equal(b.type, t.type);
    assert.deepEqual(b.ne, t.ne);
    assert.deepEqual(Buffer.from(b.data), Buffer.from(t.data), t.name);
    assert.equal((b.data.byteOffset - bytes.byteOffset - start) % 64, 0, `${t.name} starts at a multiple of the alignment`);
  });
  // F16 and BF16 read back to the nearest representable values.
  const w = Float32Array.from({ length: 192 }, (_, i) => Math.sin(i) * 2);
  const half = decodeTensor(back.tensors[1]!, "x");
  const bf = decodeTensor(back.tensors[2]!, "x");
  for (let i = 0; i < w.length; i++) {
    assert.ok(Math.abs(half[i]! - w[i]!) <= Math.abs(w[i]!) * 2 ** -11 + 2 ** -25, `f16 ${i}`);
    assert.ok(Math.abs(bf[i]! - w[i]!) <= Math.abs(w[i]!) * 2 ** -8, `bf16 ${i}`);
  }
});

test("@huggingface/gguf reads what Sigma writes: metadata values and tensor infos", async () => {
  const file = sampleFile();
  file.metadata.delete("t.arr.nested"); // not every reader takes arrays of arrays
  const path = join(dir, "sample.gguf");
  writeGguf(path, file);
  const { metadata, tensorInfos } = await hfGguf(path, { allowLocalFile: true });
  const m = metadata as Record<string, unknown>;
  assert.equal(m["t.string"], "héllo, 世界 ✓");
  assert.equal(m["t.i8"], -128);
  assert.equal(m["t.u32"], 4294967295);
  assert.equal(BigInt(m["t.u64"] as bigint), 2n ** 64n - 1n);
  assert.equal(BigInt(m["t.i64"] as bigint), -(2n ** 63n));
  assert.equal(m["t.f64"], Math.PI);
  assert.deepEqual(m["t.arr.str"], ["a", "", "Ġthe"]);
  assert.deepEqual(m["t.arr.bool"], [true, false]);
  assert.deepEqual(tensorInfos.map((t) => [t.name, t.shape.map(Number), t.dtype]), [["a.f32", [5], 0], ["b.f16", [64, 3], 1], ["c.bf16", [64, 3], 30], ["d.q8_0", [64, 3], 8], ["e.4d", [1, 2, 1, 3], 0]]);
});

test("Q8_0 blocks: an f16 scale d (little-endian) then 32 int8 q, each value within d/2 of d·q", () => {
  const x = Float32Array.from({ length: 64 }, (_, i) => (i === 5 ? -3.3 : Math.cos(i * 1.7) * (i < 32 ? 1 : 0.01)));
  const bytes = encodeTensor("Q8_0", x, 1, 64);
  assert.equal(bytes.length, 2 * 34);
  for (let b = 0; b < 2; b++) {
    const d = halfValue(bytes[34 * b]! | (bytes[34 * b + 1]! << 8));
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[32 * b + j]!));
    assert.ok(Math.abs(d - amax / 127) <= (amax / 127) * 2 ** -10, `block ${b}: scale ${d}, amax/127 ${amax / 127}`);
    for (let j = 0; j < 32; j++) {
      const q = new Int8Array(bytes.buffer, bytes.byteOffset + 34 * b + 2 + j, 1)[0]!;
      assert.ok(Math.abs(d * q - x[32 * b + j]!) <= d / 2 + 1e-7, `block ${b} value ${j}: ${d}·${q} vs ${x[32 * b + j]}`);
    }
  }
  assert.equal(new Int8Array(bytes.buffer, bytes.byteOffset + 2 + 5, 1)[0], -127, "the largest magnitude maps to ±127");
  const back = decodeTensor({ name: "q", type: "Q8_0", ne: [64], data: bytes }, "x");
  for (let i = 0; i < 64; i++) assert.ok(Math.abs(back[i]! - x[i]!) <= 3.3 / 127, `value ${i}`);
});

// ------------------------------------------------------------------ hostile files

/** A small valid file and the byte offsets of its fields, for targeted corruption. */
function smallFile(): Uint8Array {
  return encodeGguf({
    metadata: new Map<string, GgufValue>([["general.architecture", gv.str("gpt2")], ["x.arr", gv.arr("i32", [1, 2, 3])]]),
    tensors: [{ name: "w", type: "F32", ne: [4, 2], data: f32([1, 2, 3, 4, 5, 6, 7, 8]) }, { name: "v", type: "F32", ne: [3], data: f32([1, 2, 3]) }],
  });
}
const le = (bytes: Uint8Array): DataView => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
/** Offset of the first occurrence of `s` (a key or name) in the header. */
const at = (bytes: Uint8Array, s: string): number => Buffer.from(bytes).indexOf(Buffer.from(s, "utf8"));

function rejects(bytes: Uint8Array, pattern: RegExp): void {
  assert.throws(() => decodeGguf(bytes, "bad.gguf"), (e: unknown) => {
    assert.ok(e instanceof SigmaError, `a SigmaError, got ${String(e)}`);
    assert.match(e.message, /^bad\.gguf is not a valid GGUF file: /);
    assert.match(e.message, pattern);
    return true;
  });
}

test("hostile GGUF files: each lie is a SigmaError naming the file and the field, with no large allocation", () => {
  const good = smallFile();
  decodeGguf(good, "good.gguf");
  const edit = (f: (b: Uint8Array, dv: DataView) => void): Uint8Array => {
    const b = Uint8Array.from(good);
    f(b, le(b));
    return b;
  };
  rejects(edit((b) => (b[0] = 0x47 + 1)), /magic "GGUF"/);
  rejects(edit((_, dv) => dv.setUint32(4, 1, true)), /version 1/);
  rejects(edit((_, dv) => dv.setUint32(4, 0x03000000, true)), /big-endian/);
  rejects(edit((_, dv) => dv.setUint32(4, 7, true)), /version is 7/);
  // Counts far beyond the file: refused before anything is allocated for them.
  rejects(edit((_, dv) => dv.setBigUint64(8, 2n ** 40n, true)), /claims 1099511627776 tensors/);
  rejects(edit((_, dv) => dv.setBigUint64(16, 2n ** 52n, true)), /claims 4503599627370496 metadata entries/);
  rejects(edit((_, dv) => dv.setBigUint64(16, 2n ** 63n, true)), /the metadata count is 9223372036854775808/);
  const arr = at(good, "x.arr") + 5; // after the key: u32 type (array), u32 item type, u64 count
  rejects(edit((_, dv) => dv.setBigUint64(arr + 8, 2n ** 50n, true)), /metadata "x\.arr" claims 1125899906842624 items of i32/);
  rejects(edit((_, dv) => dv.setUint32(arr + 4, 99, true)), /metadata "x\.arr" has item type 99/);
  rejects(edit((_, dv) => dv.setUint32(arr, 13, true)), /metadata "x\.arr" has type 13/);
  const strLen = at(good, "gpt2") - 8;
  rejects(edit((_, dv) => dv.setBigUint64(strLen, 2n ** 45n, true)), /metadata "general\.architecture" needs 35184372088832 bytes/);
  rejects(edit((b) => (b[strLen + 8] = 0xff)), /metadata "general\.architecture" is not valid UTF-8/);
  const twice = encodeGguf({ metadata: new Map([["k.a", gv.u32(1)], ["k.b", gv.u32(2)]]), tensors: [] });
  twice[at(twice, "k.b") + 2] = 0x61;
  rejects(twice, /metadata key "k\.a" appears twice/);
  // Tensor infos: "w" then "v"; after each name, u32 n_dims, n_dims × u64, u32 type, u64 offset.
  const w = Buffer.from(good).indexOf(Buffer.from([1, 0, 0, 0, 0, 0, 0, 0, 0x77])) + 9; // the name "w" (length 1)
  rejects(edit((_, dv) => dv.setUint32(w, 5, true)), /tensor "w" has 5 dimensions/);
  rejects(edit((_, dv) => dv.setUint32(w, 0, true)), /tensor "w" has 0 dimensions/);
  rejects(edit((_, dv) => dv.setBigUint64(w + 4, 2n ** 40n, true)), /tensor "w" has shape \[1099511627776, 2\], more values than the file could hold/);
  rejects(edit((_, dv) => dv.setBigUint64(w + 4, 5n, true)), /tensor "v" \(bytes 32…44\) overlaps the tensor before it \(which ends at 40\)/);
  rejects(edit((_, dv) => dv.setUint32(w + 20, 4, true)), /tensor "w" has ggml type 4, which Sigma does not read/);
  rejects(edit((_, dv) => dv.setUint32(w + 20, 8, true)), /tensor "w" is Q8_0 with ne\[0\] = 4, not a multiple of its 32-value block/);
  rejects(edit((_, dv) => dv.setBigUint64(w + 24, 4n, true)), /tensor "w" starts at offset 4, not a multiple of the alignment 32/);
  rejects(edit((_, dv) => dv.setBigUint64(w + 24, 4096n, true)), /tensor "w" spans bytes 4096…4128 of a 64-byte data section/);
  const v = w + 32 + 8; // the next info's name byte ("v")
  rejects(edit((b) => (b[v] = 0x77)), /tensor "w" appears twice/);
  rejects(edit((_, dv) => dv.setBigUint64(v + 17, 0n, true)), /tensor "v" \(bytes 0…12\) overlaps the tensor before it|tensor "w" \(bytes 0…32\) overlaps/);
  // Truncated anywhere: an error, never a crash or a read past the end.
  // (Only the padding after the last tensor may go: the file still holds every byte it describes.)
  const last = decodeGguf(good, "good.gguf").tensors.at(-1)!.data;
  const end = last.byteOffset - good.byteOffset + last.length;
  assert.ok(end < good.length);
  decodeGguf(good.subarray(0, end), "unpadded.gguf");
  for (let n = 0; n < end; n++) {
    assert.throws(() => decodeGguf(good.subarray(0, n), "cut.gguf"), SigmaError, `cut at ${n}`);
  }
});

test("general.alignment must be a u32 power of two; booleans must be 0 or 1; arrays nest at most 8 deep", () => {
  const make = (metadata: Map<string, GgufValue>): Uint8Array => {
    // Written with a valid alignment, then patched: the writer refuses bad ones itself.
    return encodeGguf({ metadata, tensors: [] });
  };
  const bad = make(new Map([["general.alignment", gv.u32(32)]]));
  le(bad).setUint32(at(bad, "general.alignment") + 17 + 4, 48, true);
  rejects(bad, /"general\.alignment" is u32 48; it must be a u32 power of two/);
  const flag = make(new Map([["flag", gv.bool(true)]]));
  flag[at(flag, "flag") + 4 + 4] = 2;
  rejects(flag, /metadata "flag" is a bool of value 2/);
  let deep: GgufValue = gv.arr("u8", [1]);
  for (let i = 0; i < 9; i++) deep = gv.arr("array", [deep as never]);
  rejects(make(new Map([["deep", deep]])), /nests arrays deeper than 8/);
  assert.throws(() => encodeGguf({ metadata: new Map([["general.alignment", gv.u32(48)]]), tensors: [] }), /power of two/);
  assert.throws(() => encodeGguf({ metadata: new Map([["x", { type: "u8", value: 256 }]]), tensors: [] }), /outside u8/);
});

test("random damage to a GGUF file is a SigmaError or a valid parse, never another error", () => {
  const good = smallFile();
  const rng = new Rng(5);
  for (let i = 0; i < 400; i++) {
    const b = Uint8Array.from(good);
    const n = 1 + Math.floor(rng.uniform() * 4);
    for (let k = 0; k < n; k++) b[Math.floor(rng.uniform() * Math.min(b.length, 200))] = Math.floor(rng.uniform() * 256);
    try {
      decodeGguf(b, "fuzz.gguf");
    } catch (e) {
      assert.ok(e instanceof SigmaError, `case ${i}: ${String(e)}`);
    }
  }
});

// ------------------------------------------------------------------ export and import

function tokenizer() {
  const wc = new WordCounter();
  wc.add("the cat sat on the mat. the dog ate the cat's dinner! ".repeat(4));
  return trainBpe(wc, { domains: ["en", "code"], langs: [], vocabSize: 290, minFrequency: 1 });
}
function gpt2Like(vocabSize: number, extra: Partial<ModelConfigInput> = {}): PanguSigma {
  const c = parseModelConfig({ vocabSize, width: 32, heads: 4, denseLayers: 2, sparseLayers: 0, seqLen: 16, ffnWidth: 40, domains: [{ name: "en" }, { name: "code" }], embeddingSlots: 1, queryLayer: false, activation: "gelu_tanh", seed: 3, ...extra });
  const m = new PanguSigma(c);
  const rng = new Rng(9);
  for (const [, p] of m.namedParameters()) for (let i = 0; i < p.tensor.data.length; i++) p.tensor.data[i] = rng.normal() * 0.3;
  return m;
}

test("export refuses, naming the reason, what llama.cpp's gpt2 cannot compute", () => {
  const tok = tokenizer();
  const V = tok.vocabSize;
  const cases: [Partial<ModelConfigInput>, RegExp][] = [
    [{ queryLayer: true }, /gpt2: it has PanGu-α's query layer/],
    [{ activation: "fastgelu" }, /gpt2: its FFN activation is fastgelu; llama\.cpp's gpt2 computes GELU's tanh form/],
    [{ embeddingSlots: 2, domains: [{ name: "en", slot: 0 }, { name: "code", slot: 1 }] }, /gpt2: it has 2 embedding slots/],
    [{ denseLayers: 1, sparseLayers: 1, experts: { count: 4, router: { kind: "topk", k: 2 } } as never }, /gpt2: it has sparse \(MoE\) layers/],
  ];
  for (const [extra, pattern] of cases) {
    assert.throws(() => ggufOfModel(gpt2Like(V, extra), tok), (e: unknown) => e instanceof SigmaError && pattern.test(e.message) && /cannot be written as GGUF/.test(e.message), JSON.stringify(extra));
  }
  assert.throws(() => ggufOfModel(gpt2Like(V + 1), tok), /the tokenizer has \d+ tokens but the model's vocabulary is/);
});

test("GGUF import gives back the exported model: f32 exactly (config, every parameter, tokenizer); f16 and q8_0 within their rounding", () => {
  const tok = tokenizer();
  const model = gpt2Like(tok.vocabSize);
  const path = join(dir, "rt.gguf");
  writeGguf(path, ggufOfModel(model, tok, { type: "f32", name: "round-trip" }));
  const back = modelOfGguf(readGguf(path), path);
  assert.equal(back.architecture, "gpt2");
  assert.deepEqual(back.model.config, model.config);
  const mine = new Map([...model.namedParameters()].map(([n, p]) => [n, p.tensor.data]));
  for (const [n, p] of back.model.namedParameters()) assert.deepEqual(p.tensor.data, mine.get(n), n);
  assert.ok(back.tokenizer);
  assert.deepEqual(back.tokenizer.vocab, tok.vocab);
  assert.deepEqual(back.tokenizer.merges, tok.merges);
  assert.deepEqual(back.tokenizer.domains, ["en", "code"]);
  const text = "the cat's dinner sat on the dog!";
  assert.deepEqual(back.tokenizer.encode(text), tok.encode(text));

  for (const [type, rel] of [["f16", 2 ** -11], ["bf16", 2 ** -8], ["q8_0", 1 / 127]] as const) {
    const p = join(dir, `rt-${type}.gguf`);
    const file = ggufOfModel(model, tok, { type });
    writeGguf(p, file);
    // width 32 and FFN 40: fc2 (rows of 40) is not whole q8_0 blocks, so it falls back to F16.
    if (type === "q8_0") assert.deepEqual(file.fallbacks, ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]);
    const q = modelOfGguf(readGguf(p), p).model;
    for (const [n, t] of q.namedParameters()) {
      const a = mine.get(n)!;
      const matrix = t.tensor.shape.length === 2;
      let amax = 0;
      for (const v of a) amax = Math.max(amax, Math.abs(v));
      for (let i = 0; i < a.length; i++) {
        const bound = matrix ? (type === "q8_0" ? amax * rel : Math.abs(a[i]!) * rel + 1e-7) : 0;
        assert.ok(Math.abs(t.tensor.data[i]! - a[i]!) <= bound, `${type} ${n}[${i}]: ${t.tensor.data[i]} vs ${a[i]}`);
      }
    }
  }
});

test("GGUF import is strict: foreign architecture, edited sigma.config, missing or extra tensors, unsupported tensor types", () => {
  const tok = tokenizer();
  const file = ggufOfModel(gpt2Like(tok.vocabSize), tok);
  const redo = (f: (m: Map<string, GgufValue>, t: GgufTensor[]) => void): ReturnType<typeof decodeGguf> => {
    const metadata = new Map(file.metadata);
    const tensors = [...file.tensors];
    f(metadata, tensors);
    return decodeGguf(encodeGguf({ metadata, tensors }), "m.gguf");
  };
  assert.throws(() => modelOfGguf(redo((m) => m.set("general.architecture", gv.str("mamba"))), "m.gguf"), /m\.gguf: architecture "mamba" is not one Sigma imports/);
  assert.throws(() => modelOfGguf(redo((m) => m.set("gpt2.block_count", gv.u32(3))), "m.gguf"), /"sigma\.config" says denseLayers = 2 but the gpt2 keys say 3/);
  assert.throws(() => modelOfGguf(redo((_, t) => t.splice(t.findIndex((x) => x.name === "blk.1.ffn_up.bias"), 1)), "m.gguf"), /tensor "blk\.1\.ffn_up\.bias" is missing/);
  assert.throws(() => modelOfGguf(redo((_, t) => t.push({ name: "blk.0.attn_q_norm.weight", type: "F32", ne: [8], data: new Uint8Array(32) })), "m.gguf"), /unexpected tensor "blk\.0\.attn_q_norm\.weight"/);
  assert.throws(() => modelOfGguf(redo((_, t) => (t[0] = { ...t[0]!, type: "I32" })), "m.gguf"), /tensor "token_embd\.weight" is I32; Sigma imports F32, F16, BF16 and Q8_0/);
  assert.throws(() => modelOfGguf(redo((_, t) => (t[1] = { ...t[1]!, ne: [16, 32], data: t[1]!.data })), "m.gguf"), /tensor "position_embd\.weight" has ne \[16, 32\], the model's hyperparameters need \[32, 16\]/);
  // Keys describing a model larger than the tensors: refused before the model is allocated.
  const huge = redo((m) => {
    m.delete("sigma.config");
    m.set("gpt2.embedding_length", gv.u32(32768)); // width² within one tensor's bound, so the parameter count is what refuses it
    m.set("gpt2.block_count", gv.u32(4096));
  });
  assert.throws(() => modelOfGguf(huge, "m.gguf"), /m\.gguf: its keys describe a model of \d+ parameters but its tensors hold \d+ values/);
  // Without sigma.config (a file another tool wrote), the gpt2 keys alone give the model; an untied copy of the embedding is accepted as tied.
  const foreign = redo((m, t) => {
    m.delete("sigma.config");
    t.push({ ...t[0]!, name: "output.weight" });
  });
  const r = modelOfGguf(foreign, "m.gguf");
  assert.deepEqual(r.model.config.domains, [{ name: "en", slot: 0 }]);
  assert.throws(() => modelOfGguf(redo((m, t) => t.push({ ...t[0]!, name: "output.weight", data: new Uint8Array(t[0]!.data.length) })), "m.gguf"), /output\.weight differs from token_embd\.weight/);
});

test("random damage to an exported model's file: import gives the model or a SigmaError, never another error", () => {
  const tok = tokenizer();
  const good = encodeGguf(ggufOfModel(gpt2Like(tok.vocabSize), tok, { type: "q8_0" }));
  const header = decodeGguf(good, "m.gguf").tensors[0]!.data.byteOffset - good.byteOffset;
  const rng = new Rng(8);
  let parsed = 0;
  for (let i = 0; i < 300; i++) {
    const b = Uint8Array.from(good);
    const n = 1 + rng.int(3);
    // Mostly the header (metadata, tensor infos), sometimes the data.
    for (let k = 0; k < n; k++) b[rng.uniform() < 0.8 ? rng.int(header) : header + rng.int(b.length - header)] = rng.int(256);
    try {
      modelOfGguf(decodeGguf(b, "fuzz.gguf"), "fuzz.gguf");
      parsed++;
    } catch (e) {
      assert.ok(e instanceof SigmaError, `case ${i}: ${(e as Error).stack}`);
    }
  }
  assert.ok(parsed > 0 && parsed < 300, `${parsed} of 300 damaged files still import`);
});

test("table entries: rowOrder, scale, a 3-D ne, filled tensors and conditional entries are written as declared and undone on import", () => {
  const tok = tokenizer();
  const model = gpt2Like(tok.vocabSize);
  const C = model.config.width;
  const F = model.config.ffnWidth;
  const rotated = (n: number): Int32Array => Int32Array.from({ length: n }, (_, i) => (i + 1) % n); // not its own inverse
  const layer = GPT2_ARCHITECTURE.layer.map((e) =>
    e.gguf === "blk.{L}.attn_qkv.weight" ? { ...e, rowOrder: () => rotated(3 * C) }
    : e.gguf === "blk.{L}.attn_qkv.bias" ? { ...e, rowOrder: () => rotated(3 * C) }
    : e.gguf === "blk.{L}.ffn_down.weight" ? { ...e, scale: 2 }
    : e.gguf === "blk.{L}.ffn_up.weight" ? { ...e, ne: () => [C, F / 2, 2] }
    : e);
  const variant: GgufArchitecture = {
    ...GPT2_ARCHITECTURE,
    layer: [...layer, { gguf: "blk.{L}.zero_gate.weight", sigma: [], fill: { value: 0, ne: () => [C] } }, { gguf: "blk.{L}.never.weight", sigma: [], fill: { value: 1, ne: () => [1] }, when: (c) => c.heads > 100 }],
  };
  const file = ggufOfModel(model, tok, { architectures: [variant] });
  const t = new Map(file.tensors.map((x) => [x.name, x]));
  const value = (name: string): Float32Array => decodeTensor(t.get(name)!, "x");
  const p = new Map([...model.namedParameters()].map(([n, q]) => [n, q.tensor.data]));
  // qkv row 0 is q's row 1, its last row q's row 0; the bias moved element by element.
  assert.deepEqual(value("blk.0.attn_qkv.weight").subarray(0, C), p.get("blocks.0.attn.q.weight")!.subarray(C, 2 * C));
  assert.deepEqual(value("blk.0.attn_qkv.weight").subarray((3 * C - 1) * C), p.get("blocks.0.attn.q.weight")!.subarray(0, C));
  assert.equal(value("blk.0.attn_qkv.bias")[0], p.get("blocks.0.attn.q.bias")![1]);
  assert.deepEqual(value("blk.1.ffn_down.weight"), Float32Array.from(p.get("blocks.1.ffn.fc2.weight")!, (x) => 2 * x));
  assert.deepEqual(t.get("blk.0.ffn_up.weight")!.ne, [C, F / 2, 2]);
  assert.deepEqual(value("blk.1.zero_gate.weight"), new Float32Array(C));
  assert.ok(!t.has("blk.0.never.weight"));
  const back = modelOfGguf(decodeGguf(encodeGguf(file), "v.gguf"), "v.gguf", [variant]).model;
  for (const [n, q] of back.namedParameters()) assert.deepEqual(q.tensor.data, p.get(n), n);
  // A filled tensor that is not its value is another function: refused.
  t.get("blk.0.zero_gate.weight")!.data.set(f32([0.5]));
  assert.throws(() => modelOfGguf(decodeGguf(encodeGguf(file), "v.gguf"), "v.gguf", [variant]), /v\.gguf: tensor "blk\.0\.zero_gate\.weight" holds 0\.5 at element 0; Sigma's model has no such parameter/);
});

test("ropePairOrder: llama's adjacent-pair RoPE on reordered rows = rotate_half RoPE on Sigma's rows, reordered", () => {
  const heads = 3;
  const d = 8;
  const rng = new Rng(2);
  const q = Float64Array.from({ length: heads * d }, () => rng.normal());
  const theta = (i: number): number => 7 * 10000 ** (-(2 * i) / d); // position 7
  // Hugging Face's rotate_half: dimension i pairs with i + d/2.
  const half = new Float64Array(q.length);
  for (let h = 0; h < heads; h++) for (let i = 0; i < d / 2; i++) {
    const [a, b] = [q[h * d + i]!, q[h * d + i + d / 2]!];
    half[h * d + i] = a * Math.cos(theta(i)) - b * Math.sin(theta(i));
    half[h * d + i + d / 2] = b * Math.cos(theta(i)) + a * Math.sin(theta(i));
  }
  // llama.cpp's "normal" RoPE: dimension 2i pairs with 2i + 1.
  const order = ropePairOrder(heads, d);
  const p = Float64Array.from(order, (src) => q[src]!);
  const adj = new Float64Array(q.length);
  for (let h = 0; h < heads; h++) for (let i = 0; i < d / 2; i++) {
    const [a, b] = [p[h * d + 2 * i]!, p[h * d + 2 * i + 1]!];
    adj[h * d + 2 * i] = a * Math.cos(theta(i)) - b * Math.sin(theta(i));
    adj[h * d + 2 * i + 1] = b * Math.cos(theta(i)) + a * Math.sin(theta(i));
  }
  order.forEach((src, r) => assert.ok(Math.abs(adj[r]! - half[src]!) < 1e-12, `row ${r}`));
});

test("sigma export gguf / sigma import gguf end to end, and a refusal as a one-line error", async () => {
  const tok = tokenizer();
  const model = gpt2Like(tok.vocabSize);
  const ckpt = writeModelFolder(join(dir, "ckpt"), 0, model, toHfJson(tok), { format: "test" });
  const out = join(dir, "cli.gguf");
  const e = await sigma("export", "gguf", "--ckpt", ckpt, "--out", out, "--type", "q8_0");
  assert.equal(e.code, 0, e.out);
  assert.match(e.out, /GGUF gpt2, q8_0: 28 tensors/);
  assert.match(e.out, /written f16 instead of q8_0 .*blk\.0\.ffn_down\.weight/);
  assert.equal(readGguf(out).metadata.get("general.file_type")?.value, 7);
  const i = await sigma("import", "gguf", "--from", out, "--out", join(dir, "imported"));
  assert.equal(i.code, 0, i.out);
  assert.match(i.out, /checkpoint: .*step-00000000/);
  const bad = await sigma("export", "gguf", "--ckpt", ckpt, "--out", out, "--type", "q4_k");
  assert.equal(bad.code, 1);
  assert.match(bad.out, /--type q4_k is not a GGUF export type/);
  const pangu = writeModelFolder(join(dir, "pangu"), 0, gpt2Like(tok.vocabSize, { queryLayer: true, activation: "fastgelu" }), toHfJson(tok), { format: "test" });
  const r = await sigma("export", "gguf", "--ckpt", pangu, "--out", join(dir, "no.gguf"));
  assert.equal(r.code, 1);
  assert.match(r.out, /cannot be written as GGUF — gpt2: it has PanGu-α's query layer/);
  assert.doesNotMatch(r.out, /at .*\.ts:\d+/, "no stack trace");
  writeFileSync(join(dir, "junk.gguf"), "GGUF");
  const j = await sigma("import", "gguf", "--from", join(dir, "junk.gguf"), "--out", join(dir, "junk"));
  assert.equal(j.code, 1);
  assert.match(j.out, /junk\.gguf is not a valid GGUF file: the version needs 4 bytes/);
  assert.ok(readFileSync(out).length > 0);
});
