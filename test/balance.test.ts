// Load-balance analysis and the expert-parallel simulator: hand-computed IS,
// capacity drops and step times; MoGE's IS = 0; RRE's table balance; the
// checkpoint path end to end for all three routers; bad input names its field.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { capacityDrops, deviceLoads, distribution, expertLoads, LayerBalance, measureBatch, type RoutedBatch } from "../src/balance/analysis.js";
import { balanceFromCheckpoint } from "../src/balance/checkpoint.js";
import { parseHardware, resolveHardware } from "../src/balance/hardware.js";
import { choosePlacement, contiguousPlacement, parsePlacement } from "../src/balance/placement.js";
import { parseShape, shapeFromConfig, type SimShape } from "../src/balance/shape.js";
import { simulateStep } from "../src/balance/simulator.js";
import { runStudy } from "../src/balance/study.js";
import { INTERCONNECTS, interconnectFromBench, predictScaling, resolveInterconnect } from "../src/balance/scaling.js";
import { mogeRouting, SyntheticRouter, topkRouting } from "../src/balance/synthetic.js";
import { groupedBarsSvg, histogramSvg } from "../src/balance/svg.js";
import { register as registerBalance } from "../src/cli/balance.js";
import { prepareData } from "../src/data/prepare.js";
import { parseModelConfig, type RouterConfig } from "../src/models/config.js";
import { saveModel } from "../src/models/io.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { contiguousDeviceLoads, imbalanceScore } from "../src/moe/routing.js";
import { saveTokenizer } from "../src/tokenizer/hfjson.js";
import { trainBpe, WordCounter } from "../src/tokenizer/trainer.js";
import { SigmaError } from "../src/util/errors.js";
import { runCli } from "./cli-harness.js";

const root = mkdtempSync(join(tmpdir(), "sigma-balance-"));
after(() => rmSync(root, { recursive: true, force: true }));

const sigmaError = (re: RegExp) => (e: unknown) => e instanceof SigmaError && re.test(e.message);
const rb = (experts: number, k: number, ids: number[]): RoutedBatch => ({ experts, k, expertIds: Int32Array.from(ids) });

test("IS of hand-made routings matches hand computation", () => {
  // 3 tokens, top-2 of 4 experts: expert loads [3, 1, 1, 1].
  const r = rb(4, 2, [0, 1, 0, 2, 3, 0]);
  assert.deepEqual(Array.from(expertLoads(r)), [3, 1, 1, 1]);
  // Contiguous on 2 devices: T = [3+1, 1+1] = [4, 2]; IS = (4 − 2) / 3.
  const two = contiguousPlacement(4, 2);
  assert.deepEqual(deviceLoads(expertLoads(r), two), [4, 2]);
  const b = measureBatch(r, two, null);
  assert.equal(b.imbalance, 2 / 3);
  assert.equal(b.maxOverMean, 4 / 3);
  // The routing module's contiguous loads agree.
  assert.deepEqual(contiguousDeviceLoads(expertLoads(r), 2), [4, 2]);
  assert.equal(imbalanceScore(contiguousDeviceLoads(expertLoads(r), 2), 3), 2 / 3);
  // Expert 0 alone on device 0, the rest on device 1: T = [3, 3], IS = 0.
  const p = parsePlacement({ devices: 2, experts: [0, 1, 1, 1] }, 4);
  assert.equal(measureBatch(r, p, null).imbalance, 0);
  // 4 devices: T = [3, 1, 1, 1], IS = 2/3; dropped ids (= E) are not load.
  assert.equal(measureBatch(r, contiguousPlacement(4, 4), null).imbalance, 2 / 3);
  assert.equal(measureBatch(rb(4, 2, [0, 4, 0, 4, 4, 4]), two, null).imbalance, 2 / 3);
  assert.equal(imbalanceScore([0, 0], 0), 0);
});

test("capacity drops follow GShard's priority, by hand", () => {
  // Top-2 of 2 experts, 3 tokens; first choices all expert 0.
  const r = rb(2, 2, [0, 1, 0, 0, 0, 1]);
  // factor 0.5: cap = ceil(0.5·3·2/2) = 2. First choices: e0 takes r0, r1, drops r2.
  // Second choices: r0 → e1 (1), r1 → e0 full, dropped; r2 → e1 (2). Two drops.
  assert.equal(capacityDrops(r, 0.5), 2);
  // factor 1: cap 3: first choices fill e0 (3); r1's second choice to e0 is dropped.
  assert.equal(capacityDrops(r, 1), 1);
  assert.equal(capacityDrops(r, 2), 0);
  const l = new LayerBalance(2, contiguousPlacement(2, 2), 1);
  l.add(r);
  l.add(rb(2, 2, [1, 0, 1, 0, 1, 0]));
  assert.deepEqual(l.perExpert, [7, 5]);
  assert.equal(l.dropped, 1);
  assert.deepEqual(l.imbalance, [2 / 3, 0]);
});

test("distribution: nearest-rank quantiles and the fraction above zero", () => {
  const d = distribution([1, 0, 0.5, 0]);
  assert.deepEqual(d, { count: 4, mean: 0.375, min: 0, p50: 0, p90: 1, p99: 1, max: 1, fractionPositive: 0.5 });
});

test("synthetic router: top-k and MoGE pick the largest scores; MoGE gives IS = 0 for every batch", () => {
  const E = 16;
  const router = new SyntheticRouter(E, 1, 3);
  const scores = router.scores(50);
  const top = topkRouting(scores, E, 4);
  const moge = mogeRouting(scores, E, 4, 1);
  for (let r = 0; r < 50; r++) {
    const row = Array.from(scores.subarray(r * E, (r + 1) * E));
    const oracle = row.map((v, e) => [v, e] as const).sort((a, b) => b[0] - a[0]).slice(0, 4).map(([, e]) => e);
    assert.deepEqual(Array.from(top.expertIds.subarray(r * 4, r * 4 + 4)), oracle);
    for (let g = 0; g < 4; g++) {
      const best = [0, 1, 2, 3].map((i) => g * 4 + i).reduce((a, b) => (row[b]! > row[a]! ? b : a));
      assert.equal(moge.expertIds[r * 4 + g], best);
    }
  }
  // 64 experts, MoGE 8 × top-1 on 8 devices: IS = 0 on every batch, at every skew and size.
  const place = contiguousPlacement(64, 8);
  let topkPositive = 0;
  for (const skew of [0, 1, 3]) {
    const s = new SyntheticRouter(64, skew, 7);
    for (const N of [1, 16, 33, 200]) {
      for (let b = 0; b < 5; b++) {
        const sc = s.scores(N);
        assert.equal(measureBatch(mogeRouting(sc, 64, 8, 1), place, null).imbalance, 0);
        if (measureBatch(topkRouting(sc, 64, 8), place, null).imbalance > 0) topkPositive++;
      }
    }
  }
  assert.ok(topkPositive >= 55, `top-8 had IS > 0 on only ${topkPositive} of 60 batches`);
  // Skew 0 is uniform: each expert gets about 1/16 of 8000 choices (4σ ≈ 60).
  const u = expertLoads(topkRouting(new SyntheticRouter(16, 0, 1).scores(2000), 16, 4));
  for (const c of u) assert.ok(Math.abs(c - 500) < 90, `uniform load ${c}`);
  // Skew concentrates: the most popular expert gets far more than 1/16.
  const z = expertLoads(topkRouting(new SyntheticRouter(16, 2, 1).scores(2000), 16, 1));
  assert.ok(Math.max(...z) > 0.4 * 2000);
});

/** Unit rates, one sparse layer, no attention context, no vocab: every term is easy by hand. */
const unitShape = (over: Partial<SimShape> = {}): SimShape =>
  parseShape({ experts: 2, width: 1, expertWidth: 1, ffnMatrices: 2, sparseLayers: 1, learnedRouter: false, bytesPerValue: 1, ...over });

test("simulator step time equals hand computation on two devices", () => {
  const place = contiguousPlacement(2, 2);
  // Tokens 0, 1 live on device 0 and 2, 3 on device 1; token 2 goes to expert 0 (device 0).
  const routing = [rb(2, 1, [0, 0, 0, 1])];
  const hw = { name: "unit", flops: 4, memoryBandwidth: 1e30, linkBandwidth: 1, linkLatency: 1 };
  const t = simulateStep(unitShape(), hw, place, routing);
  // dense: 2 tokens × f_attn (8C² = 8) / 4 FLOP/s = 4 s on each device.
  // dispatch: one vector (C·b = 1 byte) leaves device 1 for device 0: 1 s latency + 1 s = 2 s; combine the same.
  // experts: device 0 computes 3 × f_expert (2·2·C·F_e = 4) / 4 = 3 s, device 1 1 s.
  assert.equal(t.sparse[0]!.dense, 4);
  assert.equal(t.sparse[0]!.dispatch, 2);
  assert.deepEqual(t.sparse[0]!.expertPerDevice, [3, 1]);
  assert.equal(t.seconds, 4 + 2 + 3 + 2);
  // Balanced: each device sends or receives one vector (max(out, in) = 1 on both), so the
  // all-to-alls stay at 2 s; the expert phase drops to the mean, 2 s.
  assert.equal(t.balancedSeconds, 4 + 2 + 2 + 2);
  assert.equal(t.lostToImbalance, 1);
  assert.equal(t.tokensPerSecond, 4 / 11);
  // Training: compute × 3, all-to-all × 2.
  assert.equal(simulateStep(unitShape(), hw, place, routing, "train").seconds, 3 * 4 + 2 * 2 + 3 * 3 + 2 * 2);

  // Weight-bound: 1 byte/s of memory. Expert weights m·C·F_e·b = 2 bytes per active expert,
  // attention 4C²·b = 4 bytes; compute is now negligible.
  const slowMem = { ...hw, flops: 1e30, memoryBandwidth: 1, linkLatency: 0 };
  const w = simulateStep(unitShape(), slowMem, place, routing);
  // dense 4 s; dispatch 1 s; experts: each device has one active expert, 2 s; combine 1 s.
  assert.equal(w.seconds, 4 + 1 + 2 + 1);
  // A dense layer and the output projection (V = 3): roofline(2·(8 + 2·2·1·1), 4 + 2) = 6 s and roofline(2·2·3, 3) = 3 s.
  assert.equal(simulateStep(unitShape({ denseLayers: 1, vocabSize: 3 }), slowMem, place, routing).denseSeconds, 6 + 3);
  assert.throws(() => simulateStep(unitShape({ sparseLayers: 2 }), hw, place, routing), sigmaError(/1 routings for a shape with 2 sparse layers/));
});

test("the study reproduces the finding: top-k IS > 0 on nearly every batch, MoGE never, and MoGE is faster under skew", () => {
  const shape = parseShape({ experts: 64, width: 256, expertWidth: 64, sparseLayers: 2, context: 64 });
  const rows = runStudy({ shape, hardware: resolveHardware("a100-ib"), devices: 8, k: 8, skew: 1, tokens: [16, 512], batches: 20, steps: 2, mode: "infer", seed: 1 });
  for (const r of rows) {
    assert.equal(r.moge.imbalance.max, 0);
    assert.ok(r.topk.imbalance.fractionPositive >= 0.95);
    assert.ok(r.topk.sortedLoad[0]! > 1.1);
    assert.equal(r.moge.sortedLoad.length, 8);
    assert.ok(r.moge.sortedLoad.every((v) => Math.abs(v - 1) < 1e-12));
  }
  assert.ok(rows[1]!.moge.tokensPerSecond > rows[1]!.topk.tokensPerSecond);
});

test("bad placements, hardware and shapes are SigmaErrors naming the field", () => {
  assert.throws(() => contiguousPlacement(6, 4), sigmaError(/devices = 4 does not divide the 6 experts[\s\S]*1, 2, 3, 6/));
  assert.throws(() => parsePlacement({ devices: 2, experts: [0, 1, 2, 0] }, 4, "p.json"), sigmaError(/p.json: experts\[2\] = 2 is not a device \(allowed: 0..1\)/));
  assert.throws(() => parsePlacement({ devices: 2, experts: [0, 1] }, 4), sigmaError(/lists 2 devices but the model has 4 experts/));
  assert.throws(() => parsePlacement({ devices: 2, groups: [[0, 1], [2]] }, 4), sigmaError(/experts 3 are not placed on any device/));
  assert.throws(() => parsePlacement({ devices: 2, groups: [[0, 1], [1, 2, 3]] }, 4), sigmaError(/expert 1 is placed twice/));
  assert.throws(() => parsePlacement({ devices: 2, groups: [[0, 1, 2, 3]] }, 4), sigmaError(/"groups" has 1 entries but "devices" is 2/));
  assert.throws(() => parsePlacement({ devices: 2, experts: [0, 1, 1, 0], extra: 1 }, 4), sigmaError(/invalid/));
  const pf = join(root, "placement.json");
  writeFileSync(pf, JSON.stringify({ devices: 2, groups: [[3, 0], [1, 2]] }));
  assert.deepEqual(Array.from(choosePlacement(4, undefined, pf).deviceOf), [0, 1, 1, 0]);
  assert.throws(() => choosePlacement(4, 4, pf), sigmaError(/--devices 4 disagrees/));
  assert.throws(() => parseHardware({ flops: -1, memoryBandwidth: 1, linkBandwidth: 1, linkLatency: 0 }), sigmaError(/flops: Number must be greater than 0/));
  assert.throws(() => parseHardware({ flops: 1, memoryBandwidth: 1, linkBandwidth: 1, linkLatency: 0, linkBw: 2 }), sigmaError(/Unrecognized key\(s\) in object: 'linkBw'/));
  assert.throws(() => parseHardware({ flops: 1, memoryBandwidth: 1, linkLatency: 0 }), sigmaError(/linkBandwidth: Required/));
  assert.throws(() => resolveHardware("tpu-v9"), sigmaError(/unknown hardware "tpu-v9"[\s\S]*a100-nvlink/));
  assert.throws(() => parseShape({ experts: 64, width: 1, expertWidth: 1, sparseLayers: 1, ffnMatrices: 4 }), sigmaError(/ffnMatrices/));
});

test("SVG pictures are well-formed and carry their data", () => {
  const svg = groupedBarsSvg({ title: "a < b", xLabel: "device", yLabel: "load", categories: ["0", "1"], series: [{ name: "top-k", values: [3, 1] }], reference: { value: 2, label: "mean" } });
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.match(svg, /a &lt; b/);
  assert.equal((svg.match(/<rect [^>]*><title>/g) ?? []).length, 2);
  assert.match(svg, /<\/svg>\n$/);
  // Zeros get their own bin: 2 of 4 samples are 0.
  // Positive values split [0.5, 1] into 2 bins.
  const h = histogramSvg("IS", "IS", [{ name: "x", values: [0, 0, 0.5, 1] }], 3);
  assert.match(h, /<title>x 0: 0.5<\/title>/);
  assert.match(h, /<title>x 0.5–0.75: 0.25<\/title>/);
  assert.match(h, /<title>x 0.75–1: 0.25<\/title>/);
});

// ---- the checkpoint path: a tiny model of each router, saved with io.ts, on tiny prepared data ----

const DOMAINS = ["en", "code"];
const corpus = join(root, "corpus");
for (const d of DOMAINS) mkdirSync(join(corpus, d), { recursive: true });
const EN = "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times. ";
const CODE = "export function add(a: number, b: number): number {\n  return a + b;\n}\n";
for (let i = 0; i < 4; i++) {
  writeFileSync(join(corpus, "en", `${i}.txt`), EN.repeat(10 + i));
  writeFileSync(join(corpus, "code", `${i}.ts`), CODE.repeat(10 + i));
}
const tokPath = join(root, "tokenizer.json");
const wc = new WordCounter();
wc.add(EN.repeat(3));
wc.add(CODE.repeat(3));
const tokenizer = trainBpe(wc, { vocabSize: 300, domains: DOMAINS, langs: ["en"] });
saveTokenizer(tokenizer, tokPath);
const dataDir = join(root, "data");
await prepareData({ corpus, tokenizer: tokPath, out: dataDir, valFraction: 0.25, seed: 1 });

const ROUTERS: Record<string, RouterConfig> = {
  rre: { kind: "rre", groups: 2, seed: 5 },
  moge: { kind: "moge", groups: 2, perGroup: 1, auxLossCoef: 0.01, sharedExperts: 0 },
  topk: { kind: "topk", k: 2, renormalize: true, auxLossCoef: 0.01, zLossCoef: 0, capacityFactor: null },
};
const tinyConfig = (router: RouterConfig) =>
  parseModelConfig({
    vocabSize: tokenizer.vocabSize, width: 16, heads: 2, denseLayers: 1, sparseLayers: 2, seqLen: 32, ffnWidth: 32,
    domains: DOMAINS.map((name, group) => ({ name, group })),
    experts: { count: 4, router },
  });

test("balance on a saved checkpoint works for all three routers", () => {
  for (const [name, router] of Object.entries(ROUTERS)) {
    const file = join(root, `${name}.safetensors`);
    saveModel(new PanguSigma(tinyConfig(router)), file);
    const rep = balanceFromCheckpoint({ ckpt: file, data: dataDir, devices: 2, batches: 6, batchSize: 2, seqLen: 16, capacityFactor: 1, split: "train", seed: 3 });
    assert.equal(rep.router, name);
    assert.equal(rep.layers.length, 2);
    const k = name === "rre" ? 1 : 2;
    assert.equal(rep.k, k);
    for (const l of rep.layers) {
      assert.equal(l.imbalance.length, 6);
      assert.equal(l.perExpert.reduce((a, b) => a + b, 0), 6 * 32 * k);
      assert.equal(l.perDevice.reduce((a, b) => a + b, 0), 6 * 32 * k);
      if (name === "moge") {
        assert.ok(l.imbalance.every((v) => v === 0), `MoGE IS ${l.imbalance}`);
        assert.deepEqual(l.perDevice, [6 * 32, 6 * 32]);
      }
      // RRE on 2 groups of 2 on 2 devices: a device is a domain's group, so IS = |tokens of en − tokens of code| / |X|.
      if (name === "rre") assert.ok(l.imbalance.every((v) => [0, 1].includes(v)));
    }
    // The simulator replays a checkpoint's routings with the model's own shape.
    const shape = shapeFromConfig(rep.model.config);
    assert.equal(shape.learnedRouter, name !== "rre");
    const again = balanceFromCheckpoint({ ckpt: file, data: dataDir, devices: 2, batches: 2, batchSize: 2, seqLen: 16, capacityFactor: null, split: "train", seed: 3, keepRoutings: true });
    assert.equal(again.routings.length, 2);
    assert.ok(simulateStep(shape, resolveHardware("cpu"), again.placement, again.routings[0]!).tokensPerSecond > 0);
  }
  assert.throws(
    () => balanceFromCheckpoint({ ckpt: join(root, "topk.safetensors"), data: dataDir, devices: 3, batches: 1, batchSize: 1, capacityFactor: null, split: "train", seed: 1 }),
    sigmaError(/devices = 3 does not divide the 4 experts/),
  );
});

test("RRE's per-expert load on uniform token ids stays within the table's balance", () => {
  // Every token id once per domain: each expert of a group owns ⌊V/2⌋ or ⌈V/2⌉ ids, so it gets exactly that many.
  const model = new PanguSigma(tinyConfig(ROUTERS.rre!)).eval();
  const V = model.config.vocabSize;
  const T = 30; // a multiple of nothing in particular: the last row is padded with repeats, removed below
  const rows = Math.ceil(V / T);
  const l = new LayerBalance(4, contiguousPlacement(4, 2), null);
  for (const dom of [0, 1]) {
    const tokens = Int32Array.from({ length: rows * T }, (_, i) => i % V);
    const out = model.forward({ tokens, domains: new Int32Array(rows).fill(dom), B: rows, T });
    // Keep the first V rows: each id exactly once.
    for (const r of out.routings) l.add({ experts: 4, k: 1, expertIds: r.expertIds.slice(0, V) });
  }
  // 2 layers × 1 pass per domain; group g = domain g holds experts 2g, 2g+1.
  for (const c of l.perExpert) assert.ok(c === 2 * Math.floor(V / 2) || c === 2 * Math.ceil(V / 2), `RRE expert load ${c} for V = ${V}`);
  assert.equal(l.perExpert.reduce((a, b) => a + b, 0), 2 * 2 * V);
});

/** Runs `sigma <args>` in-process; returns what it printed. */
const cli = (args: string[]) => runCli([registerBalance], args);

test("the CLI commands run end to end and reject bad input with the field named", async () => {
  const out = join(root, "cli-out");
  const bal = await cli(["balance", "--ckpt", join(root, "moge.safetensors"), "--data", dataDir, "--devices", "2", "--batches", "2", "--batch-size", "2", "--seq-len", "8", "--split", "train", "--out", out]);
  assert.match(bal, /moge router, 4 experts, 2 per token, 2 devices, 2 batches of 16 tokens/);
  assert.match(bal, /layer 1: IS mean 0.000 .* batches with IS > 0: 0.0%/);
  assert.match(bal, /device share: 50.0% 50.0%/);
  assert.match(bal, /device-loads.svg/);
  const shapeFile = join(root, "shape.json");
  writeFileSync(shapeFile, JSON.stringify({ experts: 16, width: 32, expertWidth: 16, sparseLayers: 1 }));
  const sim = await cli(["simulate", "--shape", shapeFile, "--devices", "4", "--k", "4", "--tokens", "8,64", "--batches", "10", "--steps", "1", "--hardware", "cpu", "--out", out]);
  assert.match(sim, /\| 8 \| \d+\.\d% \| 0\.0% \|/);
  assert.match(sim, /\| 64 \| 100\.0% \| 0\.0% \|/);
  await assert.rejects(cli(["simulate", "--shape", shapeFile, "--devices", "3"]), sigmaError(/devices = 3 does not divide the 16 experts/));
  await assert.rejects(cli(["simulate", "--shape", shapeFile, "--devices", "4", "--k", "6"]), sigmaError(/k = 6 is not a multiple of the 4 MoGE groups/));
  await assert.rejects(cli(["balance", "--ckpt", join(root, "topk.safetensors"), "--data", dataDir]), sigmaError(/device count is missing/));
  await assert.rejects(cli(["simulate", "--devices", "8", "--tokens", "16,x"]), sigmaError(/--tokens: "x" is not a positive integer/));
});

test("scaling predictions: bench comm's figures or a named interconnect; MoGE loses nothing where its groups are the ranks, a slower link costs time, RRE routes one expert per token", () => {
  const dir = mkdtempSync(join(tmpdir(), "sigma-scale-"));
  try {
    const file = join(dir, "comm.json");
    writeFileSync(file, JSON.stringify({ comm: { ranks: 2, alltoallv: { fit: { latencyUs: 4, busGBs: 2.5 } } } }));
    const measured = resolveInterconnect(file);
    assert.equal(measured.linkBandwidth, 2.5e9);
    assert.equal(measured.linkLatency, 4e-6);
    assert.throws(() => resolveInterconnect("token-ring"), /unknown interconnect "token-ring"[\s\S]*ib-hdr/);
    assert.throws(() => interconnectFromBench({ comm: { skipped: "no MPI" } }, "x.json"), /x\.json/);
    const hw = resolveHardware("a100-ib");
    const at = (ic: string) => predictScaling({ hardware: hw, interconnect: INTERCONNECTS[ic]!, ranks: [8, 64], tokensPerRank: 256, skew: 1, seed: 3 });
    const fast = at("nvlink"), slow = at("ethernet-25g");
    const row = (rows: typeof fast, D: number, r: string) => rows.find((x) => x.ranks === D && x.router === r)!;
    assert.ok(Math.abs(row(fast, 8, "moge").lostFraction) < 1e-9 && row(fast, 8, "moge").imbalance === 0, "MoGE on as many ranks as groups is balanced");
    assert.ok(row(fast, 8, "topk").lostFraction > 0.05, "skewed top-8 loses time to imbalance");
    assert.equal(row(fast, 64, "rre").k, 1);
    for (const r of fast) assert.ok(row(slow, r.ranks, r.router).stepSeconds > r.stepSeconds, `${r.router} on ${r.ranks} ranks: a slower link takes longer`);
    assert.throws(() => predictScaling({ hardware: hw, interconnect: INTERCONNECTS.nvlink!, ranks: [48], tokensPerRank: 8, skew: 0, seed: 1 }), /48 ranks/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
