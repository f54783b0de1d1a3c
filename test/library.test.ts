// The package as a user imports it: by its name ("sigma-moe" resolves through
// package.json "exports" to the built dist/, with its .d.ts types), a tiny
// train → open → generate → evaluate → extract, and the run's own evaluation
// reproduced by `evaluate`.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import * as sigma from "sigma-moe";
import { openModel, train, evaluate, extract, SigmaError, type TrainEvent, type TrainConfigInput } from "sigma-moe";
import { root, cleanup, tinyData } from "./train-fixture.js";

after(cleanup);

const dataDir = await tinyData();

function config(out: string, extra: Partial<TrainConfigInput> = {}): TrainConfigInput {
  return {
    name: "library",
    model: {
      vocabSize: 320, width: 32, heads: 2, denseLayers: 1, sparseLayers: 1, seqLen: 16, ffnWidth: 64,
      domains: ["zh", "en", "bi", "code"].map((name, i) => ({ name, group: i % 2 })),
      experts: { count: 4, router: { kind: "rre", groups: 2, seed: 3 } },
      seed: 7,
    },
    data: { dir: dataDir },
    batchSize: 4,
    steps: 6,
    optim: { lr: 3e-3, warmupSteps: 2 },
    eval: { every: 3, batches: 2 },
    checkpoint: { every: 3, keep: 2 },
    out,
    ...extra,
  };
}

test("the package resolves by its name to the built dist/ and exports the documented API", () => {
  const resolved = import.meta.resolve("sigma-moe");
  assert.match(resolved, /\/dist\/index\.js$/);
  const pkg = JSON.parse(readFileSync(join(import.meta.dirname, "..", "package.json"), "utf8"));
  assert.equal(pkg.exports["."].types, "./dist/index.d.ts");
  assert.ok(existsSync(join(import.meta.dirname, "..", "dist", "index.d.ts")), "types are built");
  for (const name of ["openModel", "Model", "train", "evaluate", "finetune", "evalTasks", "upcycle", "extract", "prepareData", "Tokenizer", "TrainConfigSchema", "ModelConfigSchema", "RouterSchema", "parseTrainConfig", "parseModelConfig", "SigmaError"]) {
    assert.ok(name in sigma, `sigma-moe exports ${name}`);
  }
  // Internals stay internal: the package exports only its entry point.
  assert.throws(() => import.meta.resolve("sigma-moe/dist/train/trainer.js"), { code: "ERR_PACKAGE_PATH_NOT_EXPORTED" });
});

test("train → openModel → generate → evaluate: the run's final evaluation is what evaluate() reproduces", async () => {
  const out = join(root, "lib-run");
  const events: TrainEvent[] = [];
  const r = await train(config(out), { onProgress: (e) => events.push(e) });
  assert.equal(r.stopped, "done");
  assert.equal(r.steps, 6);
  const start = events[0];
  assert.ok(start && start.kind === "start");
  assert.equal(start.step, 0);
  // RRE sends each token to 1 of 4 experts: the active count is below the total by 3 experts' FFNs per sparse layer.
  const ffn = 2 * 32 * 64 + 64 + 32;
  assert.equal(start.parameters.total - start.parameters.active, 3 * ffn);
  assert.deepEqual(events.filter((e) => e.kind === "step").map((e) => (e as { step: number }).step), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(events.filter((e) => e.kind === "eval").map((e) => (e as { step: number }).step), [3, 6]);
  assert.deepEqual(events.filter((e) => e.kind === "checkpoint").map((e) => (e as { step: number }).step), [3, 6]);
  assert.ok(r.all && r.finalEval.length >= 2);
  const tokens = r.finalEval.reduce((n, e) => n + e.tokens, 0);
  assert.ok(Math.abs(r.all.loss - r.finalEval.reduce((s, e) => s + e.loss * e.tokens, 0) / tokens) < 1e-12);

  // A run folder opens to its newest checkpoint.
  const model = await openModel(out);
  assert.equal(model.step, 6);
  assert.equal(model.path, r.checkpoint);
  assert.deepEqual(model.domains, ["zh", "en", "bi", "code"]);
  assert.deepEqual(model.parameters, start.parameters);

  // evaluate() with the run's own settings gives the numbers the run logged, to the bit.
  const ev = await evaluate(model);
  // The trainer evaluates with seed = config.seed + 1 (the config's default seed is 1).
  assert.deepEqual(ev.settings, { batches: 2, batchSize: 4, seed: 2 });
  assert.deepEqual(ev.domains, r.finalEval);
  assert.deepEqual(ev.all, r.all);
  // Other settings give other windows, hence other numbers.
  const other = await evaluate(model, { seed: 99 });
  assert.notDeepEqual(other.domains.map((d) => d.loss), r.finalEval.map((d) => d.loss));

  // Streaming generation: pieces concatenate to complete(); a seed fixes the text.
  const opts = { domain: "en", maxTokens: 24, temperature: 0.9, seed: 5 };
  let streamed = "";
  let n = 0;
  for await (const piece of model.generate("The quick", opts)) {
    assert.equal(typeof piece.id, "number");
    streamed += piece.text;
    n++;
  }
  assert.ok(n >= 1);
  assert.equal(await model.complete("The quick", opts), streamed);
  assert.notEqual(await model.complete("The quick", { ...opts, seed: 6 }), streamed);

  // A stop string ends the text just before it (and is not part of it).
  const greedy = { domain: "en", maxTokens: 40, temperature: 0 };
  const full = await model.complete("The", greedy);
  assert.ok(full.length >= 4, `greedy text long enough to cut: ${JSON.stringify(full)}`);
  const cut = Math.floor(full.length / 2);
  const stop = full.slice(cut, cut + 2);
  const stopped = await model.complete("The", { ...greedy, stop: [stop] });
  assert.equal(stopped, full.slice(0, full.indexOf(stop)));

  // An aborted signal stops after the current token.
  const ac = new AbortController();
  let got = 0;
  for await (const _ of model.generate("The", { ...greedy, signal: ac.signal })) {
    got++;
    ac.abort();
  }
  assert.equal(got, 1);

  // Bad input is a SigmaError naming the problem.
  await assert.rejects(async () => {
    for await (const _ of model.generate("x", { domain: "nope" })) void _;
  }, (e: unknown) => e instanceof SigmaError && /Unknown domain "nope"/.test(e.message));
  await assert.rejects(openModel(join(root, "no-such-run")), (e: unknown) => e instanceof SigmaError && /does not exist/.test(e.message));

  // extract() an RRE domain: exact, and saved so openModel reads it back.
  const sub = extract(model, { domain: "en" });
  assert.equal(sub.maxLogitGap, 0);
  assert.ok(sub.parameters.after < sub.parameters.before);
  const saved = sub.model.save(join(root, "lib-extract"), { format: "sigma-extract" });
  const reopened = await openModel(saved);
  assert.deepEqual(reopened.domains, ["en"]);
  assert.equal(await reopened.complete("The", greedy), full);
});

test("train(): an aborted signal stops after the current step with a checkpoint; resume finishes the run", async () => {
  const out = join(root, "lib-abort");
  const ac = new AbortController();
  const r = await train(config(out), { signal: ac.signal, onProgress: (e) => e.kind === "step" && e.step === 2 && ac.abort() });
  assert.equal(r.stopped, "aborted");
  assert.equal(r.steps, 2);
  assert.equal((await openModel(r.checkpoint)).step, 2);
  // A fresh run into the same folder is refused; resume continues it.
  await assert.rejects(train(config(out)), (e: unknown) => e instanceof SigmaError && /already holds a run/.test(e.message));
  const done = await train(config(out), { resume: true });
  assert.equal(done.stopped, "done");
  assert.equal(done.steps, 6);
});
