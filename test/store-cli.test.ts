// The ECSS commands end to end: `sigma train --store --expert-memory`,
// `sigma store inspect` (size, residency, hit rate, verification) and
// `sigma store convert`.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { register as registerTrain } from "../src/cli/train.js";
import { register as registerStore } from "../src/cli/store.js";
import { SigmaError } from "../src/util/errors.js";
import { ROUTERS, cleanup, root, tinyConfig, tinyData } from "./train-fixture.js";
import { runCli } from "./cli-harness.js";

after(cleanup);
const data = await tinyData();
const sigmaError = (re: RegExp) => (e: unknown) => e instanceof SigmaError && re.test(e.message);

/** Runs `sigma <args>` in-process; returns what it printed. */
const cli = (args: string[]) => runCli([registerTrain, registerStore], args);

test("sigma train --store, sigma store inspect and convert", async () => {
  const out = join(root, "cli-run");
  const cfgPath = join(root, "cli.json");
  writeFileSync(cfgPath, JSON.stringify(tinyConfig(data, out, ROUTERS.rre!, { steps: 4, eval: { every: 0, batches: 1 } })));
  const train = await cli(["train", "--config", cfgPath, "--expert-memory", "1MiB"]);
  assert.match(train, /expert store .*experts\.sgxs \(0\.02M expert parameters, 196\.5 KiB with their moments\):/);
  assert.match(train, /cache hit rate: \d+\.\d% of \d+ expert lookups/);
  const store = join(out, "experts.sgxs");
  const inspect = await cli(["store", "inspect", store, "--ckpt", join(out, "checkpoints"), "--verify"]);
  assert.match(inspect, /Sigma expert store [0-9a-f-]{36}/);
  assert.match(inspect, /sparse layer 0: 4 experts, C=32, F=64, 4192 parameters each/);
  assert.match(inspect, /per-expert steps: min \d+, max 4/);
  assert.match(inspect, /verify: all 4 live records intact/);
  assert.match(inspect, /last run .*\n\s+resident: \d\/4 experts/);
  assert.match(inspect, /cache hit rate/);
  // Without --ckpt the store's own index is read: it follows the newest checkpoint.
  const own = await cli(["store", "inspect", store, "--verify"]);
  assert.match(own, /per-expert steps: min \d+, max 4/);
  assert.match(own, /verify: all 4 live records intact/);
  const conv = await cli(["store", "convert", "--from", join(out, "checkpoints"), "--to", "ram", "--out", join(root, "cli-ram")]);
  assert.match(conv, /wrote .*cli-ram\/step-00000004/);
  await assert.rejects(cli(["store", "convert", "--from", join(out, "checkpoints"), "--to", "disk", "--out", join(root, "x")]), sigmaError(/--to must be ram or store/));
  await assert.rejects(cli(["store", "inspect", cfgPath]), sigmaError(/not a Sigma expert store/));
  await assert.rejects(cli(["train", "--config", cfgPath, "--expert-memory", "lots"]), sigmaError(/not a byte size/));
});
