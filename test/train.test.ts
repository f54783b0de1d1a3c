// Training: a tiny model overfits one batch for every router; the schedule;
// the config is strict; recomputation gives the same gradients; a resumed run
// reproduces the uninterrupted one; metrics and plots are written.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { backward, noGrad, zeroGrad } from "../src/autograd/tape.js";
import { parseModelConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { AdamW, clipScale, gradSquares } from "../src/optim/adamw.js";
import { loadTrainConfig, parseTrainConfig } from "../src/train/config.js";
import { learningRate, scheduleOf } from "../src/train/schedule.js";
import { routingDevicesFor, Trainer } from "../src/train/trainer.js";
import { resumeTrainer } from "../src/train/checkpoint.js";
import { runTraining } from "../src/train/run.js";
import { readMetrics } from "../src/train/metrics.js";
import { unigramBaselines } from "../src/train/baseline.js";
import { SigmaError } from "../src/util/errors.js";
import { Rng } from "../src/util/rng.js";
import { ROUTERS, cleanup, root, tinyConfig, tinyData } from "./train-fixture.js";

after(cleanup);
const data = await tinyData();
const sigmaError = (re: RegExp) => (e: unknown) => e instanceof SigmaError && re.test(e.message);

for (const [name, router] of Object.entries(ROUTERS)) {
  test(`a tiny ${name} model overfits one batch (loss → near 0)`, () => {
    const cfg = tinyConfig(data, join(root, `overfit-${name}`), router).model;
    const model = new PanguSigma(cfg);
    // Random tokens: nothing to learn but the batch itself.
    const rng = new Rng(3);
    const B = 2, T = 16;
    const tokens = Int32Array.from({ length: B * T }, () => rng.int(cfg.vocabSize));
    const targets = Int32Array.from({ length: B * T }, () => rng.int(cfg.vocabSize));
    const input = { tokens, domains: Int32Array.of(0, 3), B, T };
    const opt = new AdamW(model.namedParameters(), { dense: { weightDecay: 0 }, expert: { weightDecay: 0 } });
    let first = 0, last = 0;
    for (let s = 0; s < 150; s++) {
      zeroGrad(model.parameters());
      const r = model.loss(input, targets);
      backward(r.loss);
      opt.update(1e-2);
      if (s === 0) first = r.lm.item();
      last = r.lm.item();
    }
    assert.ok(first > 5, `initial loss ${first} should be near ln(320) ≈ 5.8`);
    assert.ok(last < 0.05, `${name}: loss after 150 steps on one batch is ${last}, expected < 0.05`);
  });
}

test("clipping: clipScale caps the global norm, and the optimizer's gradScale equals rescaling the gradients first", () => {
  assert.equal(clipScale(10, 1), 0.1);
  assert.equal(clipScale(0.5, 1), 1);
  assert.equal(clipScale(0, 1), 1);
  assert.equal(clipScale(3, Infinity), 1);
  const cfg = tinyConfig(data, join(root, "clip"), ROUTERS.topk!).model;
  const rng = new Rng(5);
  const B = 2, T = 8;
  const input = { tokens: Int32Array.from({ length: B * T }, () => rng.int(cfg.vocabSize)), domains: Int32Array.of(0, 2), B, T };
  const targets = Int32Array.from({ length: B * T }, () => rng.int(cfg.vocabSize));
  // Two steps each, so that the second step's moments carry the first's scaled gradients (Adam's first step hardly sees a scale).
  const run = (folded: boolean) => {
    const model = new PanguSigma(cfg);
    const opt = new AdamW(model.namedParameters(), { dense: { eps: 1e-3 }, expert: { eps: 1e-3 } });
    for (let s = 0; s < 2; s++) {
      zeroGrad(model.parameters());
      backward(model.loss(input, targets).loss);
      const params = model.parameters();
      const f = clipScale(Math.sqrt(gradSquares(params)), 0.05 * (s + 1));
      assert.ok(f < 1, "the test needs the clip to bite");
      if (folded) opt.update(1e-2, undefined, f);
      else {
        for (const p of params) if (p.grad) p.grad.data.forEach((g, i, a) => (a[i] = Math.fround(g * f)));
        opt.update(1e-2);
      }
    }
    return model.parameters().map((p) => Array.from(p.data));
  };
  const [a, b] = [run(true), run(false)];
  let worst = 0;
  a.forEach((xs, i) => xs.forEach((x, j) => (worst = Math.max(worst, Math.abs(x - b[i]![j]!)))));
  assert.ok(worst < 1e-6, `folded clipping differs from rescaled gradients by ${worst}`);
  // And the scale matters: without it the parameters move elsewhere.
  const model = new PanguSigma(cfg);
  const opt = new AdamW(model.namedParameters(), { dense: { eps: 1e-3 }, expert: { eps: 1e-3 } });
  for (let s = 0; s < 2; s++) {
    zeroGrad(model.parameters());
    backward(model.loss(input, targets).loss);
    opt.update(1e-2);
  }
  let moved = 0;
  model.parameters().forEach((p, i) => p.data.forEach((x, j) => (moved = Math.max(moved, Math.abs(x - a[i]![j]!)))));
  assert.ok(moved > 1e-5, `unclipped and clipped runs agree to ${moved}: the check cannot see the scale`);
});

test("schedule: linear warm-up to the peak, cosine decay to minLr, then flat", () => {
  const cfg = tinyConfig(data, join(root, "sched"), null, { steps: 100, optim: { lr: 1e-3, minLr: 1e-4, warmupSteps: 10 } });
  const s = scheduleOf(cfg);
  assert.equal(learningRate(s, 0), 1e-4);
  assert.ok(Math.abs(learningRate(s, 9) - 1e-3) < 1e-15);
  assert.ok(Math.abs(learningRate(s, 10) - 1e-3) < 1e-15);
  assert.ok(Math.abs(learningRate(s, 55) - 5.5e-4) < 1e-12, "half-way through the decay is the mid-point");
  assert.ok(Math.abs(learningRate(s, 100) - 1e-4) < 1e-15);
  assert.ok(Math.abs(learningRate(s, 500) - 1e-4) < 1e-15);
  for (let i = 11; i < 100; i++) assert.ok(learningRate(s, i) < learningRate(s, i - 1));
});

test("train config: hybrid Adam defaults; unknown keys, bad values, bad bytes and bad JSON name the field or file", () => {
  const cfg = tinyConfig(data, join(root, "cfg"), ROUTERS.rre!);
  assert.deepEqual([cfg.optim.beta1, cfg.optim.beta2, cfg.optim.denseEps, cfg.optim.expertEps], [0.8, 0.95, 1e-8, 1e-20]);
  const raw = JSON.parse(JSON.stringify(cfg));
  assert.throws(() => parseTrainConfig({ ...raw, learningRate: 1 }, "run.json"), sigmaError(/run\.json[\s\S]*learningRate/));
  assert.throws(() => parseTrainConfig({ ...raw, optim: { ...raw.optim, warmup: 5 } }), sigmaError(/optim[\s\S]*warmup/));
  assert.throws(() => parseTrainConfig({ ...raw, batchSize: 0 }), sigmaError(/batchSize/));
  assert.throws(() => parseTrainConfig({ ...raw, model: { ...raw.model, heads: 5 } }), sigmaError(/model\.heads/));
  const bad = join(root, "bad.json");
  writeFileSync(bad, Buffer.from([0x7b, 0xff, 0xfe, 0x7d]));
  assert.throws(() => loadTrainConfig(bad), sigmaError(/bad\.json is not UTF-8/));
  writeFileSync(bad, '{"steps": 3,}');
  assert.throws(() => loadTrainConfig(bad), sigmaError(/bad\.json is not valid JSON/));
  assert.throws(() => loadTrainConfig(join(root, "missing.json")), sigmaError(/missing\.json/));
  // A model whose vocabulary differs from the data's is refused before training.
  assert.throws(() => new Trainer(parseTrainConfig({ ...raw, model: { ...raw.model, vocabSize: 400 } })), sigmaError(/vocabSize is 400[\s\S]*320/));
});

test("recomputation gives the same loss and gradients as keeping activations (aux losses included)", () => {
  for (const router of [ROUTERS.topk!, ROUTERS.rre!]) {
    const cfg = parseModelConfig({ ...tinyConfig(data, join(root, "rc"), router).model, denseLayers: 1, sparseLayers: 2 });
    const rng = new Rng(9);
    const B = 2, T = 16;
    const input = { tokens: Int32Array.from({ length: B * T }, () => rng.int(320)), domains: Int32Array.of(1, 3), B, T };
    const targets = Int32Array.from({ length: B * T }, () => rng.int(320));
    const grads = (recompute: boolean) => {
      const m = new PanguSigma(cfg);
      m.recompute = recompute;
      const r = m.loss(input, targets);
      backward(r.loss);
      return { loss: r.loss.item(), g: [...m.namedParameters()].map(([n, p]) => [n, Float32Array.from(p.tensor.grad?.data ?? [])] as const) };
    };
    const a = grads(false);
    const b = grads(true);
    assert.equal(a.loss, b.loss);
    a.g.forEach(([n, ga], i) => {
      const gb = b.g[i]![1];
      assert.equal(gb.length, ga.length, `${n}: gradient missing with recomputation`);
      let d = 0;
      for (let j = 0; j < ga.length; j++) d = Math.max(d, Math.abs(ga[j]! - gb[j]!));
      assert.ok(d <= 1e-6, `${router.kind} ${n}: gradients differ by ${d}`);
    });
  }
});

test("resume is exact: stopped at step 4 and resumed gives the losses of an uninterrupted run", async () => {
  // top-k (learned router, aux losses) with gradient accumulation: moments, loader RNG and step must all carry over.
  const extra = { accumSteps: 2, eval: { every: 4, batches: 1 }, checkpoint: { every: 0, keep: 2 } };
  const losses = async (t: Trainer, stopAtStep?: number, resumed = false) => {
    const seen: number[] = [];
    const r = await runTraining(t, { onStep: (s) => seen.push(s.loss) }, { stopAtStep, resumed });
    return { seen, r };
  };
  const full = new Trainer(tinyConfig(data, join(root, "full"), ROUTERS.topk!, extra));
  const a = await losses(full);
  full.close();
  assert.equal(a.seen.length, 8);

  const cfgB = tinyConfig(data, join(root, "stopped"), ROUTERS.topk!, extra);
  const first = new Trainer(cfgB);
  const b1 = await losses(first, 4);
  first.close();
  assert.equal(b1.r.stopped, "stopAtStep");
  assert.match(b1.r.checkpoint, /step-00000004$/);
  const resumed = resumeTrainer(b1.r.checkpoint, cfgB);
  assert.equal(resumed.step, 4);
  const b2 = await losses(resumed, undefined, true);
  resumed.close();
  assert.deepEqual([...b1.seen, ...b2.seen], a.seen, "losses of the resumed run differ from the uninterrupted one");
  assert.deepEqual(b2.r.finalEval, a.r.finalEval);
  // The resumed run's metrics read as one run: one train line per step, no duplicates.
  const steps = readMetrics(join(root, "stopped", "metrics.jsonl")).filter((m) => m.kind === "train").map((m) => m.step);
  assert.deepEqual(steps, [1, 2, 3, 4, 5, 6, 7, 8]);
});

test("a run writes metrics (train, aux losses, routing, eval), keeps the last K checkpoints and draws its plots", async () => {
  const out = join(root, "metrics-run");
  const t = new Trainer(tinyConfig(data, out, ROUTERS.moge!, { steps: 6, eval: { every: 3, batches: 1 }, checkpoint: { every: 2, keep: 2 }, routingDevices: 2 }));
  const r = await runTraining(t, {}, { baselines: { zh: 5, en: 5 } });
  t.close();
  const ms = readMetrics(r.metrics);
  const train = ms.filter((m) => m.kind === "train");
  assert.equal(train.length, 6);
  // Each line is the step's result as trainStep returned it (what the numbers mean: the test below).
  for (const m of train) {
    assert.ok((m.balanceLoss as number) > 0 && m.zLoss === 0, `step ${m.step}: MoGE has a balance loss and no z-loss`);
    assert.ok(Math.abs((m.loss as number) - (m.lm as number) - (m.balanceLoss as number)) < 1e-5, `step ${m.step}: loss is not lm + balance`);
  }
  const routing = ms.filter((m) => m.kind === "routing") as unknown as { layers: { tokensPerExpert: number[]; imbalance: number }[] }[];
  assert.equal(routing.length, 6);
  // MoGE: one expert per group per token, so the two groups (on two devices, routingDevices 2) get equal loads: IS = 0.
  for (const rt of routing) assert.equal(rt.layers[0]!.imbalance, 0);
  const evals = ms.filter((m) => m.kind === "eval") as unknown as { step: number; domains: Record<string, { loss: number; perplexity: number }> }[];
  assert.deepEqual(evals.map((e) => e.step), [3, 6]);
  assert.deepEqual(Object.keys(evals[0]!.domains).sort(), ["code", "en", "zh"]);
  for (const d of Object.values(evals[1]!.domains)) assert.ok(Math.abs(Math.exp(d.loss) - d.perplexity) < 1e-9 * d.perplexity);
  const { listCheckpoints } = await import("../src/checkpoint/folder.js");
  assert.deepEqual(listCheckpoints(join(out, "checkpoints")).map((c) => c.step), [4, 6]);
  for (const p of r.plots) {
    const svg = readFileSync(p, "utf8");
    assert.match(svg, /^<svg[\s\S]*<path d="M/);
  }
  assert.match(readFileSync(r.plots[0]!, "utf8"), /unigram zh/);
  assert.match(readFileSync(r.plots[1]!, "utf8"), /expert 3/);
});

test("the logged balance loss is MoGE's weighted one, apart from lm: lm does not depend on its coefficient, the balance loss is proportional to it, loss = lm + balance", () => {
  // The first step sees the same weights and batch whatever the coefficient: only the balance term may change.
  const first = (coef: number) => {
    const t = new Trainer(tinyConfig(data, join(root, `balance-${coef}`), { ...ROUTERS.moge!, auxLossCoef: coef } as typeof ROUTERS.moge));
    const r = t.trainStep();
    t.close();
    return r;
  };
  const [none, one, three] = [first(0), first(0.01), first(0.03)];
  for (const r of [none, one, three]) {
    assert.equal(r.lm, none.lm, "lm (the next-token cross-entropy) changed with the balance coefficient");
    assert.equal(r.zLoss, 0);
    assert.ok(Math.abs(r.loss - r.lm - r.balanceLoss) <= 1e-6 * r.loss, `loss ${r.loss} is not lm ${r.lm} + balance ${r.balanceLoss}`);
  }
  assert.equal(none.balanceLoss, 0);
  assert.equal(none.loss, none.lm);
  assert.ok(one.balanceLoss > 0);
  assert.ok(Math.abs(three.balanceLoss / one.balanceLoss - 3) < 1e-5, `balance ${three.balanceLoss} at coefficient 0.03, ${one.balanceLoss} at 0.01`);
  // α·E·Σ f·P with Σ f = 1: at init the router's probabilities are nearly uniform (P ≈ 1/E), so it is about α.
  assert.ok(Math.abs(one.balanceLoss - 0.01) < 1e-3, `balance loss ${one.balanceLoss} at coefficient 0.01, expected about 0.01`);
});

test("unigram baseline: cross-entropy of validation tokens under smoothed training frequencies", () => {
  const b = unigramBaselines(data);
  assert.deepEqual(b.map((x) => x.domain).sort(), ["code", "en", "zh"]);
  for (const x of b) {
    assert.ok(x.crossEntropy > 0 && x.crossEntropy < Math.log(320), `${x.domain}: ${x.crossEntropy} should be below the uniform ln V`);
    assert.ok(x.valTokens > 0 && x.trainTokens > x.valTokens);
  }
});

test("the imbalance score places every router's experts on the same devices (routingDevices, default the largest divisor of E up to 8)", async () => {
  const perDevice = (router: string, extra: Record<string, unknown> = {}) => {
    const t = new Trainer(tinyConfig(data, join(root, `devices-${router}`), ROUTERS[router]!, { steps: 1, ...extra }));
    try {
      return t.trainStep().routing[0]!.perDevice.length;
    } finally {
      t.close();
    }
  };
  // 4 experts: RRE and MoGE have 2 groups, top-k none; all are scored on 4 devices by default, on 2 when asked.
  for (const r of ["rre", "moge", "topk"]) {
    assert.equal(perDevice(r), 4, `${r}: default devices`);
    assert.equal(perDevice(r, { routingDevices: 2 }), 2, `${r}: routingDevices 2`);
  }
  const cfg = (count: number) => ({ routingDevices: null, model: { experts: { count } } }) as unknown as Parameters<typeof routingDevicesFor>[0];
  assert.deepEqual([1, 2, 8, 12, 16, 128, 7].map((E) => routingDevicesFor(cfg(E))), [1, 2, 8, 6, 8, 8, 7]);
  assert.throws(() => tinyConfig(data, join(root, "devices-bad"), ROUTERS.topk!, { routingDevices: 3 }), /routingDevices.*3 devices do not divide experts.count 4/s);
  assert.throws(() => tinyConfig(data, join(root, "devices-dense"), null, { routingDevices: 2 }), /routingDevices.*no experts/s);
});

test("the balance loss is taken per micro-batch: a step's balanceLoss is the mean of its micro-batches' own losses, not the loss of their union", async () => {
  const t = new Trainer(tinyConfig(data, join(root, "balance-micro"), ROUTERS.moge!, { steps: 1, accumSteps: 2 }));
  try {
    const seen: { tokens: Int32Array; domains: Int32Array; B: number; T: number; aux: number }[] = [];
    let union = NaN;
    const model = t.model;
    const loss = model.loss.bind(model);
    model.loss = (input, y) => {
      const r = loss(input, y);
      seen.push({ tokens: input.tokens, domains: input.domains, B: input.B, T: input.T, aux: r.out.routings[0]!.auxLoss!.item() });
      if (seen.length === 2) {
        // Both micro-batches as one batch, with the same (not yet updated) weights.
        const [a, b] = seen as [(typeof seen)[0], (typeof seen)[0]];
        union = noGrad(() => {
          const out = model.forward({ tokens: Int32Array.from([...a.tokens, ...b.tokens]), domains: Int32Array.from([...a.domains, ...b.domains]), B: a.B + b.B, T: a.T });
          return out.routings[0]!.auxLoss!.item();
        });
      }
      return r;
    };
    const step = t.trainStep();
    assert.equal(seen.length, 2);
    const perMicro = (seen[0]!.aux + seen[1]!.aux) / 2;
    assert.ok(Math.abs(step.balanceLoss - perMicro) < 1e-6 * Math.max(1, perMicro), `balanceLoss ${step.balanceLoss} is not the micro-batches' mean ${perMicro}`);
    assert.ok(Math.abs(union - perMicro) > 1e-7, `the union's loss ${union} equals the micro-batch mean: the test cannot tell them apart`);
  } finally {
    t.close();
  }
});
