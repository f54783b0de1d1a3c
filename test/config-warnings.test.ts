// configWarnings: a valid train config that does something its author probably did not mean
// (a warm-up as long as the run, …) is named in words, and `sigma train` prints it.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { configWarnings, parseTrainConfig, type TrainConfigInput } from "../src/train/config.js";
import { learningRate, scheduleOf } from "../src/train/schedule.js";
import { demoConfig } from "../src/cli/demo.js";
import { sigma } from "./cli-harness.js";

const root = mkdtempSync(join(tmpdir(), "sigma-config-warnings-"));
after(() => rmSync(root, { recursive: true, force: true }));

const model = { vocabSize: 320, width: 32, heads: 2, denseLayers: 1, sparseLayers: 0, seqLen: 16, ffnWidth: 64, domains: [{ name: "en" }] };
const config = (extra: Partial<TrainConfigInput>, optim: Record<string, unknown> = {}) =>
  parseTrainConfig({ model, steps: 1000, out: join(root, "run"), data: { dir: join(root, "no-data") }, ...extra, optim: { lr: 1e-3, ...optim } });

test("a warm-up longer than the run: names both fields, the rate it reaches, and what to do", () => {
  const c = config({ steps: 100 }, { warmupSteps: 200 });
  const w = configWarnings(c);
  assert.equal(w.length, 1, w.join("\n"));
  assert.match(w[0]!, /^optim\.warmupSteps \(200\) is not below steps \(100\): the whole run is warm-up/);
  assert.match(w[0]!, /only climbs to 0\.0005 \(50% of optim\.lr 0\.001\) and never decays/);
  assert.match(w[0]!, /set optim\.warmupSteps below steps \(a tenth of it, 10, is usual\) or raise steps$/);
  // The rate the warning states is the schedule's rate on the last step.
  assert.equal(learningRate(scheduleOf(c), c.steps - 1), 0.0005);
});

test("a warm-up exactly as long as the run reaches the peak on its last step only; a constant rate does not decay anyway", () => {
  assert.match(configWarnings(config({ steps: 50 }, { warmupSteps: 50 }))[0]!, /reaches optim\.lr 0\.001 on the last step only and never decays;/);
  const flat = configWarnings(config({ steps: 50 }, { warmupSteps: 80, decay: "constant" }));
  assert.equal(flat.length, 1);
  assert.doesNotMatch(flat[0]!, /decays/);
});

test("a decay that ends before the warm-up does, and a floor above the peak", () => {
  const [d] = configWarnings(config({}, { warmupSteps: 10, decaySteps: 10 }));
  assert.match(d!, /^optim\.decaySteps \(10\) is not above optim\.warmupSteps \(10\): right after the warm-up the learning rate drops from optim\.lr 0\.001 to optim\.minLr 0\.00002 in one step/);
  const [m] = configWarnings(config({}, { minLr: 0.01 }));
  assert.match(m!, /^optim\.minLr \(0\.01\) is above optim\.lr \(0\.001\)/);
});

test("sensible configs give no warnings", () => {
  assert.deepEqual(configWarnings(config({}, {})), []);
  assert.deepEqual(configWarnings(config({ steps: 1000 }, { warmupSteps: 100, decaySteps: 800 })), []);
  assert.deepEqual(configWarnings(config({}, { warmupSteps: 10, decaySteps: 5, decay: "constant" })), []);
});

test("sigma demo --steps 10: the demo's warm-up shrinks with the run, so it is not all warm-up", () => {
  for (const steps of [1, 10, 150, 2000]) {
    const c = parseTrainConfig(demoConfig(320, ["zh", "en"], { out: join(root, "demo"), data: join(root, "no-data"), minutes: 1, steps, width: 32, seed: 1 }), "demo config");
    assert.deepEqual(configWarnings(c), [], `--steps ${steps}`);
  }
});

test("sigma train prints the warnings before it starts", async () => {
  const file = join(root, "warm.json");
  writeFileSync(file, JSON.stringify({ model, steps: 5, optim: { warmupSteps: 100 }, out: join(root, "warm-run"), data: { dir: join(root, "no-data") } }));
  // The data folder does not exist, so the run fails after the warnings: nothing is trained here.
  const r = await sigma("train", "--config", file);
  assert.match(r.out, /^warning: optim\.warmupSteps \(100\) is not below steps \(5\): the whole run is warm-up/m);
  // --steps overrides the config's steps; the warning is about the steps that will run.
  const r2 = await sigma("train", "--config", file, "--steps", "500", "--overwrite");
  assert.doesNotMatch(r2.out, /warning: optim\.warmupSteps/);
});
