// Hardening of configs (issue "Hardening"): every size and count in the model
// and train configs has a finite upper bound (no tensor past 2^31 elements,
// no count past 2^53), and a run — or a model built for inference — that
// cannot fit in this machine's memory is refused before anything is
// allocated, with an error naming the fields to shrink and the bytes needed
// against the bytes available.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parameterCounts, parseModelConfig, type ModelConfigInput } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { parseTrainConfig, type TrainConfigInput } from "../src/train/config.js";
import { checkBatchFits, checkModelFits, checkRunFits, estimateRunMemory } from "../src/train/memory.js";
import { Trainer } from "../src/train/trainer.js";
import { SigmaError } from "../src/util/errors.js";
import { sigma } from "./cli-harness.js";
import { ROUTERS, cleanup, root, tinyConfig, tinyData } from "./train-fixture.js";

after(cleanup);
const data = await tinyData();

const sigmaError = (re: RegExp) => (e: unknown) => e instanceof SigmaError && re.test(e.message);

/** A train config input over the fixture data, as JSON-able data. */
const base = (): Record<string, any> => JSON.parse(JSON.stringify(tinyConfig(data, join(root, "cfg-run"), ROUTERS.topk!)));

/** Sets a dotted path in a config object. */
function set(obj: Record<string, any>, path: string, value: unknown): Record<string, any> {
  const keys = path.split(".");
  let o = obj;
  for (const k of keys.slice(0, -1)) o = o[k] ??= {};
  o[keys.at(-1)!] = value;
  return obj;
}

test("every size, count and rate has an upper bound; the error names the field", () => {
  const cases: [string, unknown][] = [
    ["model.vocabSize", 2 ** 21 + 1],
    ["model.width", 1e9],
    ["model.heads", 1e9],
    ["model.denseLayers", 1e6],
    ["model.sparseLayers", 1e6],
    ["model.seqLen", 1e9],
    ["model.ffnWidth", 1e9],
    ["model.embeddingSlots", 1e9],
    ["model.experts.count", 1e9],
    ["model.experts.width", 1e9],
    ["model.experts.router.k", 1e9],
    ["model.experts.router.capacityFactor", 1e9],
    ["model.layerNormEps", 1e9],
    ["model.seed", 1e300],
    ["batchSize", 1e9],
    ["accumSteps", 1e9],
    ["steps", 1e12],
    ["maxSeconds", 1e12],
    ["eval.every", 1e12],
    ["eval.batches", 1e9],
    ["checkpoint.every", 1e12],
    ["checkpoint.keep", 1e9],
    ["logEvery", 1e12],
    ["optim.warmupSteps", 1e12],
    ["optim.decaySteps", 1e12],
    ["seed", 1e300],
  ];
  for (const [path, value] of cases) {
    const re = new RegExp(`^  ${path.replaceAll(".", "\\.")}: (must be at most|Number must be less than or equal to)`, "m");
    assert.throws(() => parseTrainConfig(set(base(), path, value), "run.json"), sigmaError(re), `${path} = ${value}`);
  }
  // JSON's 1e999 is Infinity: every float field refuses it by name.
  for (const path of ["optim.lr", "optim.minLr", "optim.denseEps", "optim.weightDecay", "optim.clip", "model.initStd", "model.experts.router.auxLossCoef", "model.experts.router.zLossCoef", "data.weights.en"]) {
    assert.throws(() => parseTrainConfig(set(base(), path, Infinity), "run.json"), sigmaError(new RegExp(`^  ${path.replaceAll(".", "\\.")}: Number must be finite`, "m")), path);
  }
  // The MoGE and RRE routers' own fields.
  const moge = { kind: "moge", groups: 2, perGroup: 1, sharedExperts: 1e6 };
  assert.throws(() => parseModelConfig({ ...base().model, experts: { count: 4, router: moge } }), sigmaError(/^ {2}experts\.router\.sharedExperts: must be at most 256/m));
  assert.throws(() => parseModelConfig({ ...base().model, experts: { count: 4, router: { kind: "rre", groups: 1e9 } } }), sigmaError(/^ {2}experts\.router\.groups: must be at most 65536/m));
  // The defaults and the fixture's config still parse.
  parseTrainConfig(base(), "run.json");
});

test("sigma train names the config field: a huge batchSize, an lr of 1e999 (JSON's Infinity)", async () => {
  const file = join(root, "bounds.json");
  writeFileSync(file, JSON.stringify({ ...base(), batchSize: 1e9 }));
  let r = await sigma("train", "--config", file);
  assert.equal(r.code, 1, r.out);
  assert.match(r.out, /^sigma: .*bounds\.json is invalid:\n {2}batchSize: must be at most 65536$/m);
  writeFileSync(file, JSON.stringify(base()).replace(/"lr":[0-9.e-]+/, '"lr":1e999'));
  r = await sigma("train", "--config", file);
  assert.equal(r.code, 1, r.out);
  assert.match(r.out, /^ {2}optim\.lr: Number must be finite$/m);
  assert.doesNotMatch(r.out, /internal error|\n\s+at /);
});

test("no tensor may pass 2^31 elements: the error names the field that sizes it", () => {
  const m = base().model as ModelConfigInput;
  const bad = (patch: Record<string, unknown>, re: RegExp) => assert.throws(() => parseModelConfig({ ...m, ...patch }), sigmaError(re), JSON.stringify(patch));
  bad({ vocabSize: 2 ** 21, width: 2048, embeddingSlots: 1 }, /^ {2}vocabSize: the token embedding \[embeddingSlots·vocabSize, width\] would have 4,294,967,296 elements, more than one tensor may hold/m);
  bad({ seqLen: 2 ** 20, width: 4096, heads: 2 }, /^ {2}seqLen: the position table/m);
  bad({ ffnWidth: 2 ** 20, width: 4096, heads: 2 }, /^ {2}ffnWidth: a dense FFN matrix/m);
  bad({ experts: { count: 4, width: 2 ** 20, router: ROUTERS.topk }, width: 4096, heads: 2 }, /^ {2}experts\.width: an expert's matrix/m);
  bad({ experts: { count: 65536, router: ROUTERS.topk }, width: 65536, heads: 2, ffnWidth: 1 }, /^ {2}experts\.count: the router \[experts\.count, width\]/m);
  bad({ vocabSize: 2 ** 21, experts: { count: 2048, router: { kind: "rre", groups: 2048 } }, domains: [{ name: "a", group: 0 }] }, /^ {2}experts\.router\.groups: the RRE table/m);
  // The whole model: 4096 sparse layers of 65536 experts of 2·4096·1024 parameters (2.25e15), past 2^48.
  bad({ width: 1024, heads: 2, ffnWidth: 4096, denseLayers: 0, sparseLayers: 4096, experts: { count: 65536, router: ROUTERS.topk } }, /^ {2}experts\.count: the model would have 2\.25e\+15 parameters, more than Sigma's bound of 2\^48 \(2\.81e\+14\); the largest part is the experts/m);
  // A micro-batch's logits [batchSize·seqLen, vocabSize].
  const t = base();
  t.model.vocabSize = 2 ** 20;
  t.model.width = 256;
  t.model.seqLen = 2048;
  t.batchSize = 2048;
  assert.throws(() => parseTrainConfig(t, "run.json"), sigmaError(/^ {2}batchSize: a micro-batch of 2048 × model\.seqLen 2048 rows would make a 4,194,304 × 1,048,576 activation .* lower batchSize \(use accumSteps for larger batches\) or model\.seqLen/m));
});

test("parameterCounts is exactly what the model allocates (dense, RRE, MoGE with shared experts, top-k; with and without the query layer)", () => {
  const m = base().model;
  for (const router of [null, ROUTERS.rre, ROUTERS.moge, ROUTERS.topk]) {
    for (const queryLayer of [true, false]) {
      const c = parseModelConfig({ ...m, queryLayer, sparseLayers: router ? 2 : 0, experts: router ? { count: 4, width: 24, router } : undefined });
      const model = new PanguSigma(c);
      const n = parameterCounts(c);
      assert.equal(n.total, model.parameterCount(), `${router?.kind ?? "dense"} query ${queryLayer}`);
      assert.equal(n.buffers, [...model.namedBuffers()].reduce((s, [, b]) => s + b.length, 0));
      const expertParams = [...model.namedParameters().values()].filter((p) => p.group === "expert").reduce((s, p) => s + p.tensor.size, 0);
      assert.equal(n.experts, expertParams);
    }
  }
});

test("the memory estimate: recompute shrinks activations, the store bounds the experts by store.memory", () => {
  const big = (extra: Record<string, unknown> = {}) =>
    parseTrainConfig({ ...base(), model: { ...base().model, width: 512, heads: 4, ffnWidth: 2048, seqLen: 256, sparseLayers: 2, experts: { count: 64, router: ROUTERS.rre } }, batchSize: 16, ...extra });
  const act = (e: ReturnType<typeof estimateRunMemory>) => e.parts.find((p) => p.what.startsWith("activations"))!.bytes;
  const plain = estimateRunMemory(big());
  const recomputed = estimateRunMemory(big({ recompute: true }));
  assert.ok(act(recomputed) < act(plain) / 1.5, `${act(recomputed)} vs ${act(plain)}`);
  const n = parameterCounts(big().model);
  assert.ok(plain.parts[0]!.bytes === 16 * n.total);
  const stored = estimateRunMemory(big({ store: { enabled: true, memory: "64MiB" } }));
  assert.equal(stored.parts[0]!.bytes, 16 * (n.total - n.experts));
  assert.equal(stored.parts.find((p) => p.fields.includes("store.memory"))!.bytes, (64 * 2 ** 20 * 4) / 3);
  assert.ok(stored.total < plain.total - 12 * n.experts);
  // Doubling the batch doubles the activations.
  assert.equal(act(estimateRunMemory(big({ batchSize: 32 }))), 2 * act(plain));
});

test("a run that cannot fit is refused before allocating, naming the fields and the bytes (Trainer and sigma train)", async () => {
  // ~190 TiB: 4096 layers of width 16384 — within every field's bound, far past any machine.
  const huge: TrainConfigInput = {
    ...(base() as TrainConfigInput),
    model: { vocabSize: 50000, width: 16384, heads: 128, denseLayers: 4096, sparseLayers: 0, seqLen: 2048, ffnWidth: 65536, domains: [{ name: "en" }] },
    data: { dir: join(root, "no-data-needed") },
    out: join(root, "huge-run"),
  };
  const cfg = parseTrainConfig(huge, "huge.json");
  const before = process.memoryUsage().arrayBuffers;
  const t0 = performance.now();
  assert.throws(() => new Trainer(cfg), sigmaError(/^the train config: this run needs about \d+\.\d TiB of memory but the machine has .*B \(1\.32e\+13 parameters with their gradients and Adam moments \d+\.\d TiB/));
  assert.throws(() => new Trainer(cfg), (e: unknown) => e instanceof SigmaError && /hint: shrink model\.denseLayers, model\.sparseLayers, model\.width, model\.ffnWidth/.test(e.message));
  assert.ok(performance.now() - t0 < 2000);
  assert.ok(process.memoryUsage().arrayBuffers - before < 64 * 2 ** 20, "nothing large was allocated");
  const file = join(root, "huge.json");
  writeFileSync(file, JSON.stringify(huge));
  const r = await sigma("train", "--config", file);
  assert.equal(r.code, 1, r.out);
  assert.match(r.out, new RegExp(`^sigma: ${file.replaceAll("/", "\\/")}: this run needs about \\d+\\.\\d TiB of memory but the machine has`, "m"));
  assert.match(r.out, /hint: shrink model\.denseLayers/);
  assert.doesNotMatch(r.out, /internal error|\n\s+at /);
  assert.ok(!existsSync(join(root, "huge-run")), "nothing was written");
});

test("checkRunFits against a given amount of memory: a batch too large names batchSize and recompute; the fixture's run fits", () => {
  // A batch too large for the machine names batchSize (and recompute).
  const acts = parseTrainConfig({ ...base(), model: { ...base().model, vocabSize: 65536, seqLen: 4096, width: 1024, heads: 8 }, batchSize: 7 }, "acts.json");
  assert.throws(() => checkRunFits(acts, "acts.json", 8 * 2 ** 30), sigmaError(/^acts\.json: this run needs about .* of memory but the machine has 8\.0 GiB[\s\S]*hint: shrink batchSize, model\.seqLen, recompute \(set it to true\): activations of a micro-batch of 7 × 4096 tokens is the largest part/));
  // The fixture's own run fits, and warns only when more than what is free would be needed.
  const tiny = tinyConfig(data, join(root, "tiny-run"), ROUTERS.rre!);
  assert.equal(checkRunFits(tiny).warning, null);
  assert.throws(() => checkRunFits(tiny, "tiny.json", 2 ** 20), sigmaError(/^tiny\.json: this run needs about \d+\.\d MiB of memory but the machine has 1\.0 MiB/));
});

test("experts that cannot be stacked in RAM must live in the store", () => {
  const model = { ...base().model, width: 1024, heads: 8, ffnWidth: 4096, sparseLayers: 1, experts: { count: 1024, router: ROUTERS.rre } };
  const inRam = parseTrainConfig({ ...base(), model }, "e.json");
  assert.throws(() => checkRunFits(inRam, "e.json", 2 ** 50), sigmaError(/^e\.json: a sparse layer's experts, stacked in RAM \[experts\.count, expert width, width\], would have 4,294,967,296 elements[\s\S]*hint: .*store\.enabled: true, or --store/));
  const inStore = parseTrainConfig({ ...base(), model, store: { enabled: true, memory: "1GiB" } }, "e.json");
  const { estimate } = checkRunFits(inStore, "e.json", 2 ** 40);
  assert.ok(estimate.total < 4 * 2 ** 30, `${estimate.total}`);
});

test("inference: a model or a batch too large for the machine is refused before allocating (upcycle --config, eval --batch-size)", async () => {
  const m = parseModelConfig({ vocabSize: 50000, width: 16384, heads: 128, denseLayers: 1024, sparseLayers: 1, seqLen: 2048, ffnWidth: 65536, domains: [{ name: "en", group: 0 }], experts: { count: 2, width: 4096, router: { kind: "rre", groups: 1 } } });
  assert.throws(() => checkModelFits(m, "big.json", 2 ** 40), sigmaError(/^big\.json: its config asks for 3\.30e\+12 parameters, about 12\.0 TiB of memory, but the machine has 1\.0 TiB[\s\S]*hint: the largest part is the layers/));
  // Experts that no tensor can hold stacked.
  assert.throws(() => checkModelFits({ ...m, experts: { ...m.experts!, width: 65536 } }, "wide.json", 2 ** 50), sigmaError(/^wide\.json: a sparse layer's experts, stacked in RAM, would have 2,147,483,648 elements/));
  const file = join(root, "big-sparse.json");
  writeFileSync(file, JSON.stringify({ model: m }));
  const r = await sigma("upcycle", "--from", join(root, "no-such-dense"), "--config", file, "--out", join(root, "big-up"));
  assert.equal(r.code, 1, r.out);
  assert.match(r.out, /big-sparse\.json \(model section\): its config asks for 3\.30e\+12 parameters, about 12\.0 TiB of memory, but the machine has/);
  assert.doesNotMatch(r.out, /internal error|\n\s+at /);
  // An eval batch whose logits pass 2^31 elements, or whose activations do not fit beside the model.
  const small = new PanguSigma(parseModelConfig({ ...base().model, vocabSize: 65536, seqLen: 2048 }));
  assert.throws(() => checkBatchFits(small, 65536, "--batch-size"), sigmaError(/^--batch-size 65536: a batch of 65536 × 2048 tokens would make a 134,217,728 × 65,536 activation[\s\S]*hint: lower --batch-size to 15 or less/));
  assert.throws(() => checkBatchFits(small, 8, "--batch-size", 512 * 2 ** 20), sigmaError(/^--batch-size 8: a batch of 8 × 2048 tokens needs about .* of memory beside the model, and the machine has .* left/));
  checkBatchFits(small, 8, "--batch-size");
});
