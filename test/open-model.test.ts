// The one model resolver (src/serve/open.ts): every kind of path a command or
// openModel accepts, and the errors for the ones it cannot.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Model } from "../src/api/model.js";
import { parseModelConfig } from "../src/models/config.js";
import { saveModel } from "../src/models/io.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { openModelSource, requireTokenizer } from "../src/serve/open.js";
import { generateIds } from "../src/serve/generate.js";
import { noGrad } from "../src/autograd/tape.js";
import { decodeStep } from "../src/models/decode-step.js";
import { storedFormat, storedSites } from "../src/models/quantize.js";
import { trainBpe, WordCounter } from "../src/tokenizer/trainer.js";
import { toHfJson } from "../src/tokenizer/hfjson.js";
import { SigmaError } from "../src/util/errors.js";

const root = mkdtempSync(join(tmpdir(), "sigma-open-"));
after(() => rmSync(root, { recursive: true, force: true }));

const wc = new WordCounter();
wc.add("open the model, any model. ".repeat(8));
const tok = trainBpe(wc, { vocabSize: 300, domains: ["en"], langs: [] });
const config = parseModelConfig({ vocabSize: tok.vocabSize, width: 16, heads: 2, denseLayers: 1, sparseLayers: 1, seqLen: 8, ffnWidth: 32, domains: [{ name: "en", group: 0 }], experts: { count: 2, router: { kind: "rre", groups: 1 } } });
const net = new PanguSigma(config);
const model = (step: number) => new Model(net, tok, null, step, null, null, toHfJson(tok));
const sigmaError = (re: RegExp) => (e: unknown) => e instanceof SigmaError && re.test(e.message);

test("checkpoint folders: a step folder, a folder of them and a run folder each give the newest complete one", () => {
  const run = join(root, "run");
  const ckpts = join(run, "checkpoints");
  for (const step of [2, 10, 100_000_000]) model(step).save(ckpts);
  mkdirSync(join(ckpts, "step-900000000")); // no state.json: incomplete, never chosen
  assert.equal(openModelSource(run).step, 100_000_000);
  assert.equal(openModelSource(ckpts).path, join(ckpts, "step-100000000"));
  const two = openModelSource(join(ckpts, "step-00000002"));
  assert.equal(two.step, 2);
  assert.equal(two.path, join(ckpts, "step-00000002"));
  assert.equal(requireTokenizer(two).vocabSize, tok.vocabSize);
  assert.deepEqual([...two.model.namedParameters().keys()], [...net.namedParameters().keys()]);
});

test("bare files: a model .safetensors with or without tokenizer.json beside it, or a folder holding one", () => {
  const dir = join(root, "bare");
  mkdirSync(dir);
  const file = join(dir, "weights.safetensors");
  saveModel(net, file);
  const noTok = openModelSource(file);
  assert.equal(noTok.tokenizer, null);
  assert.equal(noTok.step, 0);
  assert.throws(() => requireTokenizer(noTok), sigmaError(/has no tokenizer/));
  // A folder without state.json that holds exactly one model file is that file.
  assert.equal(openModelSource(dir).path, file);
  writeFileSync(join(dir, "tokenizer.json"), toHfJson(tok));
  assert.equal(openModelSource(file).tokenizer?.tokenizer.vocabSize, tok.vocabSize);
  copyFileSync(file, join(dir, "other.safetensors"));
  assert.throws(() => openModelSource(dir), sigmaError(/several \.safetensors files/));
});

test("what cannot be opened is a SigmaError naming the path", () => {
  assert.throws(() => openModelSource(join(root, "nope")), sigmaError(/nope does not exist/));
  const empty = join(root, "empty");
  mkdirSync(empty);
  assert.throws(() => openModelSource(empty), sigmaError(/holds no complete checkpoint/));
  // A tokenizer of another vocabulary beside the model is refused, not used.
  const dir = join(root, "mismatch");
  mkdirSync(dir);
  saveModel(net, join(dir, "model.safetensors"));
  const small = new WordCounter();
  small.add("x");
  writeFileSync(join(dir, "tokenizer.json"), toHfJson(trainBpe(small, { vocabSize: 280, domains: ["en"], langs: [] })));
  assert.throws(() => openModelSource(join(dir, "model.safetensors")), sigmaError(/tokens but the model's vocabulary is/));
});

test("decodeStep (generate, chat and serve without --weights): an f32 model decodes through the decode step, as forward would", () => {
  const dir = join(root, "decode-step");
  model(3).save(dir);
  const plain = openModelSource(dir).model.eval();
  const fast = openModelSource(dir, { decodeStep: true }).model.eval();
  assert.equal(storedFormat(plain), null);
  assert.equal(storedFormat(fast), "f32");
  // The step runs (it declines with null where it does not cover a model), and its logits are forward's.
  const input = { tokens: Int32Array.of(5, 9, 2), domains: Int32Array.of(0), B: 1, T: 3 };
  const viaStep = noGrad(() => decodeStep(fast, input, fast.newCache(1)));
  assert.ok(viaStep, "the decode step covers the opened model");
  const general = noGrad(() => plain.forward(input, plain.newCache(1))).logits.data;
  viaStep.logits.data.forEach((v, i) => assert.ok(Math.abs(v - general[i]!) <= 1e-5, `logit ${i}: ${v} vs ${general[i]}`));
  const o = { temperature: 0, topK: 0, topP: 1, seed: 1, maxTokens: 12, stopId: null };
  assert.deepEqual([...generateIds(fast, [1, 2, 3], 0, o)], [...generateIds(plain, [1, 2, 3], 0, o)]);
  // A format asked for wins; a weight that cannot be stored leaves the model to forward's general path.
  assert.equal(storedFormat(openModelSource(dir, { decodeStep: true, weights: "q8" }).model), "q8");
  const broken = new PanguSigma(config);
  (broken.outputTable.data as Float32Array)[7] = NaN; // the last matrix converted: the others were attached by then
  const brokenDir = join(root, "decode-step-nan");
  new Model(broken, tok, null, 1, null, null, toHfJson(tok)).save(brokenDir);
  const opened = openModelSource(brokenDir, { decodeStep: true }).model;
  assert.equal(storedFormat(opened), null);
  assert.ok(storedSites(opened).every((s) => s.current() === null), "no matrix left half converted");
});
