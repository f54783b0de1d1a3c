// sigma eval tasks: multiple choice scored by log-likelihood (acc, acc_norm
// per character, acc_bytes per byte) and generation by exact match, checked
// on a fake model whose log-probabilities are set by hand; code tasks run in
// the sandbox, which contains an endless loop and a require('fs'); the real
// model's log-likelihood equals its own loss; the shipped task files parse
// and run through the CLI.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Model } from "../src/api/model.js";
import { taskModel } from "../src/api/eval-tasks.js";
import { parseModelConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { encodePrompt } from "../src/serve/prompt.js";
import { toHfJson } from "../src/tokenizer/hfjson.js";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import { fewShotContext, parseTask, scoreTask, type TaskModel } from "../src/train/tasks.js";
import { SigmaError } from "../src/util/errors.js";
import { runSandboxed } from "../src/util/sandbox.js";
import { sigma } from "./cli-harness.js";

const root = mkdtempSync(join(tmpdir(), "sigma-eval-tasks-"));
after(() => rmSync(root, { recursive: true, force: true }));
const sigmaError = (re: RegExp) => (e: unknown) => e instanceof SigmaError && re.test(e.message);
const jsonl = (items: object[]) => items.map((i) => JSON.stringify(i)).join("\n") + "\n";

/** A model whose answers are a table: log-likelihood by continuation, output by context. */
function fakeModel(ll: Record<string, number>, outputs: Record<string, string> = {}) {
  const calls: { context: string; continuation: string }[] = [];
  const gens: { context: string; stop: string[] }[] = [];
  const m: TaskModel = {
    async loglikelihood(context, continuation) {
      calls.push({ context, continuation });
      if (!(continuation in ll)) throw new Error(`no log-likelihood for ${JSON.stringify(continuation)}`);
      return { logprob: ll[continuation]!, greedy: false };
    },
    async generate(context, o) {
      gens.push({ context, stop: o.stop });
      return outputs[context] ?? "";
    },
  };
  return { m, calls, gens };
}
const noCode = async () => assert.fail("no code should run");

test("multiple choice: acc by log-likelihood, acc_norm per character, acc_bytes per UTF-8 byte (hand-computed)", async () => {
  // Item 1: "a" −1.5, "bbbb" −4.5. acc picks "a" (−1.5 > −4.5); per character −1.5 vs −1.125 picks "bbbb" (the answer).
  //   Counting the delimiter in the length (−0.75 vs −0.9) would pick "a": the harness divides by the choice alone.
  // Item 2: "猫" −3, "ab" −4. acc picks 猫; per character −3 vs −2 picks "ab" (the answer); per byte −1 (3 bytes) vs −2 picks 猫.
  const task = parseTask(jsonl([{ context: "Q1", choices: ["a", "bbbb"], answer: 1 }, { context: "Q2", choices: ["猫", "ab"], answer: 1, delimiter: "" }]), "mc.jsonl");
  const { m, calls } = fakeModel({ " a": -1.5, " bbbb": -4.5, 猫: -3, ab: -4 });
  const r = await scoreTask(m, task, { shots: 0, seed: 1, runCode: noCode });
  assert.deepEqual(calls, [{ context: "Q1", continuation: " a" }, { context: "Q1", continuation: " bbbb" }, { context: "Q2", continuation: "猫" }, { context: "Q2", continuation: "ab" }]);
  assert.deepEqual(r.items.map((i) => [i.prediction, i.correct]), [[0, false], [0, false]]);
  assert.deepEqual(r.metrics.acc, { value: 0, stderr: 0 });
  assert.deepEqual(r.metrics.acc_norm, { value: 1, stderr: 0 });
  // acc_bytes: item 1 right (ASCII: bytes = characters), item 2 wrong: mean 0.5, stderr √(0.5 / 2) = 0.5.
  assert.deepEqual(r.metrics.acc_bytes, { value: 0.5, stderr: 0.5 });
  // Ties go to the first choice, as numpy's argmax does.
  const tie = await scoreTask(fakeModel({ " x": -2, " y": -2 }).m, parseTask(jsonl([{ context: "c", choices: ["x", "y"], answer: 1 }]), "t.jsonl"), { shots: 0, seed: 1, runCode: noCode });
  assert.equal(tie.metrics.acc!.value, 0);
});

test("generation: greedy output until the stop strings, exact match after trimming", async () => {
  const task = parseTask(jsonl([{ context: "2+2=", answer: "4", stop: ["\n"] }, { context: "capital of France:", answers: ["Paris", "paris"], delimiter: " " }, { context: "x", answer: "y" }]), "gen.jsonl");
  const { m, gens } = fakeModel({}, { "2+2=": " 4 ", "capital of France: ": "paris", x: "yy" });
  const r = await scoreTask(m, task, { shots: 0, seed: 1, runCode: noCode });
  assert.deepEqual(gens.map((g) => g.context), ["2+2=", "capital of France: ", "x"]);
  assert.deepEqual(gens[0]!.stop, ["\n"]);
  assert.deepEqual(r.items.map((i) => i.correct), [true, true, false]);
  assert.ok(Math.abs(r.metrics.exact_match!.value - 2 / 3) < 1e-12);
});

test("few-shot contexts: k other items of the task with their answers, blank lines between, seeded", () => {
  const task = parseTask(jsonl([0, 1, 2, 3].map((i) => ({ context: `q${i}`, choices: [`a${i}`, `b${i}`], answer: i % 2 }))), "fs.jsonl");
  const c = fewShotContext(task, 0, 2, 7);
  const parts = c.split("\n\n");
  assert.equal(parts.length, 3);
  assert.equal(parts[2], "q0");
  for (const p of parts.slice(0, 2)) assert.match(p, /^q([123]) (a1|b1|a2|b2|a3|b3)$/);
  for (const p of parts.slice(0, 2)) {
    const i = Number(p[1]);
    assert.equal(p, `q${i} ${i % 2 ? "b" : "a"}${i}`); // the right answer, never another choice
  }
  assert.equal(fewShotContext(task, 0, 2, 7), c);
  assert.throws(() => fewShotContext(task, 0, 4, 7), sigmaError(/task fs has 3 other items to draw 4 examples from/));
});

test("bad task files name the line and the field", () => {
  const cases: [string, RegExp][] = [
    ['{"context": "c", "choices": ["a", "b"], "answer": 2}', /t\.jsonl line 2: "answer" must be the index of the right choice, 0 to 1/],
    ['{"context": "c", "choices": ["a"], "answer": 0}', /t\.jsonl line 2: "choices" must be an array of at least 2 strings/],
    ['{"context": "c", "choices": ["a", "b"], "answer": 0, "label": 1}', /t\.jsonl line 2: unknown field "label"/],
    ['{"context": "c", "answer": "a"}', /t\.jsonl line 2: a generation item in a multiple-choice task \(line 1\)/],
    ['{"context": "c"}', /t\.jsonl line 2: no "choices"/],
    ['{"choices": ["a", "b"], "answer": 0}', /t\.jsonl line 2: "context" must be a string \(it is missing\)/],
  ];
  for (const [line, re] of cases) assert.throws(() => parseTask(`{"context": "c", "choices": ["a", "b"], "answer": 0}\n${line}\n`, "t.jsonl"), sigmaError(re), line);
});

test("code tasks run in the sandbox: a right completion passes; an endless loop and require('fs') are contained", async () => {
  const items = [
    { context: "function add(a, b) {\n", test: "\n}\nconsole.log(add(2, 3));", expected: "5" },
    { context: "function loop() {\n", test: "\n}\nloop(); console.log('done');", expected: "done" },
    { context: "function leak() {\n", test: "\n}\nconsole.log(leak());", expected: "root" },
    { context: "function escape() {\n", test: "\n}\nconsole.log(escape());", expected: "" },
  ];
  const secret = join(root, "secret.txt");
  writeFileSync(secret, "root\n");
  const marker = join(root, "written-by-completion");
  const outputs = {
    "function add(a, b) {\n": "  return a + b;",
    "function loop() {\n": "  while (true) {}",
    "function leak() {\n": `  return require("fs").readFileSync(${JSON.stringify(secret)}, "utf8");`,
    // The classic vm escape, then a write through the host's fs.
    "function escape() {\n": `  const p = this.constructor.constructor("return process")(); p.mainModule.require("fs").writeFileSync(${JSON.stringify(marker)}, "x");`,
  };
  const { m } = fakeModel({}, outputs);
  const t0 = performance.now();
  const r = await scoreTask(m, parseTask(jsonl(items), "code.jsonl"), { shots: 0, seed: 1, runCode: (p) => runSandboxed(p, { timeoutMs: 1500, cpuSeconds: 2 }) });
  const seconds = (performance.now() - t0) / 1000;
  assert.deepEqual(r.items.map((i) => i.correct), [true, false, false, false]);
  assert.match(r.items[1]!.error ?? "", /timed out|timeout/);
  assert.match(r.items[2]!.error ?? "", /require is not defined/);
  assert.match(r.items[3]!.error ?? "", /Code generation from strings disallowed/);
  assert.equal(existsSync(marker), false);
  assert.ok(seconds < 15, `the loop was stopped (${seconds.toFixed(1)} s)`);
  // The process-level walls, should the vm ever be escaped: the permission model refuses the file
  // system and child processes even to the runner itself.
  const direct = await runSandboxed(`console.log(typeof require, typeof process)`);
  assert.equal(direct.stdout.trim(), "undefined undefined");
  const big = await runSandboxed("const a = []; for (;;) a.push(new Array(1e6).fill(1));", { timeoutMs: 5000 });
  assert.equal(big.killed, "memory");
});

// A tiny model over a tokenizer that has every default-corpus domain and the language tags.
const TEXTS = ["学而时习之，不亦说乎？", "The quick brown fox jumps over the lazy dog.", "function add(a, b) {\n  return a + b;\n}\n", "<|lang:zh|>苹果<|lang:en|>apple"];
const wc = new WordCounter();
for (const t of TEXTS) wc.add(t.repeat(3));
const DOMAINS = ["bi", "code", "en", "zh"];
const tok = trainBpe(wc, { vocabSize: 320, domains: DOMAINS, langs: ["zh", "en"] });
function tinyModel(): Model {
  const config = parseModelConfig({ vocabSize: 320, width: 32, heads: 2, denseLayers: 1, sparseLayers: 1, seqLen: 48, ffnWidth: 64, embeddingSlots: 1, domains: DOMAINS.map((name, i) => ({ name, slot: 0, group: i % 2 })), experts: { count: 4, router: { kind: "rre", groups: 2, seed: 5 } }, seed: 3 });
  return new Model(new PanguSigma(config, "float32"), tok, null, 0, null, null, toHfJson(tok));
}

test("a Sigma model's log-likelihood of a continuation is its own loss over those tokens", async () => {
  const model = tinyModel();
  const scorer = taskModel(model);
  const { logprob } = await scorer.loglikelihood("The quick brown", " fox jumps", "en");
  const ctx = encodePrompt(tok, "en", "The quick brown");
  const cont = tok.encode(" fox jumps");
  const all = [...ctx, ...cont];
  const T = all.length - 1;
  const y = Int32Array.from({ length: T }, (_, t) => (t + 1 >= ctx.length ? all[t + 1]! : -1));
  model.network.eval();
  const lm = model.network.loss({ tokens: Int32Array.from(all.slice(0, T)), domains: Int32Array.of(DOMAINS.indexOf("en")), B: 1, T }, y).lm.item();
  assert.ok(Math.abs(logprob + lm * cont.length) < 1e-3, `${logprob} vs ${-lm * cont.length}`);
  // Spaces at the end of the context go with the continuation, as the harness does.
  assert.equal((await scorer.loglikelihood("The quick brown ", "fox jumps", "en")).logprob, logprob);
});

test("the shipped task files parse, and sigma eval tasks scores them (table and --json)", async () => {
  const files = readdirSync("tasks").filter((f) => f.endsWith(".jsonl")).map((f) => join("tasks", f));
  assert.ok(files.length >= 4);
  const kinds = new Set(files.map((f) => parseTask(readFileSync(f, "utf8"), f).kind));
  assert.deepEqual([...kinds].sort(), ["code", "generation", "multiple_choice"]);
  // Every code task's own solution passes its test.
  const code = parseTask(readFileSync("tasks/code-js.jsonl", "utf8"), "code-js.jsonl");
  for (const item of code.items) {
    if (item.kind !== "code") continue;
    const run = await runSandboxed(item.context + item.solution!.replace(/\n}$/, "") + item.test);
    assert.equal(run.stdout.trim(), item.expected, `line ${item.line}: ${run.error}`);
  }
  const ckpt = tinyModel().save(join(root, "model"));
  const mc = files.filter((f) => !f.includes("code"));
  const table = await sigma("eval", "tasks", "--ckpt", ckpt, "--tasks", ...mc, "--shots", "1");
  assert.equal(table.code, 0, table.out);
  assert.match(table.out, /cloze-zh\s+multiple_choice\s+12\s+1\s+acc_norm\s+\d\.\d{4}/);
  assert.match(table.out, /translate-zh-en-gen\s+generation\s+16\s+1\s+exact_match/);
  const json = await sigma("eval", "--ckpt", ckpt, "--json", "tasks", "--tasks", "tasks/cloze-en.jsonl");
  assert.equal(json.code, 0, json.out);
  const r = JSON.parse(json.out.slice(json.out.indexOf("{")));
  assert.equal(r.tasks[0].task, "cloze-en");
  assert.equal(r.tasks[0].items.length, 12);
  assert.ok(r.tasks[0].metrics.acc.value >= 0 && r.tasks[0].metrics.acc.value <= 1);
  const missing = await sigma("eval", "tasks", "--tasks", "tasks/cloze-en.jsonl");
  assert.equal(missing.code, 1);
  assert.match(missing.out, /needs --ckpt/);
});
