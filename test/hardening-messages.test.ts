// What the fuzz suite found in error paths (issue "Hardening"), as regression
// tests: values from a file are quoted in bounded, one-line form (no stack
// overflow on deep nesting, no raw control bytes or line breaks from the
// file), huge arrays are refused at once, and store inspect --verify ends in a
// `sigma:` line when records are unusable.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Trainer } from "../src/train/trainer.js";
import { saveTrainCheckpoint } from "../src/train/checkpoint.js";
import { jsonTooBig, showJson } from "../src/util/strict-json.js";
import { assertRefused, cli } from "./formats-helpers.js";
import { ROUTERS, cleanup, root, tinyConfig, tinyData } from "./train-fixture.js";

after(cleanup);
const data = await tinyData();
const deep = (n: number): string => "[".repeat(n) + "]".repeat(n);

test("showJson and jsonTooBig stay bounded on absurd input", () => {
  const nested = JSON.parse(deep(100_000)) as unknown;
  assert.ok(showJson(nested).length <= 81);
  assert.match(jsonTooBig(nested)!, /nested more than 32 levels/);
  assert.match(jsonTooBig({ a: new Array(200_000).fill(0) })!, /^a has 200000 elements/);
  assert.equal(showJson("a\nb\u001b[31m"), '"a\\nb\\u001b[31m"');
});

test("a deeply nested value in tokenizer.json is a clean error, not a stack overflow", async () => {
  const t = new Trainer(tinyConfig(data, join(root, "deep"), ROUTERS.dense!));
  const ckpt = saveTrainCheckpoint(t, join(root, "deep", "checkpoints"));
  t.close();
  const model = join(root, "deep-model");
  cpSync(ckpt, model, { recursive: true });
  const tok = JSON.parse(readFileSync(join(model, "tokenizer.json"), "utf8")) as { model: { merges: unknown[] }; decoder: unknown };
  for (const edit of [(j: typeof tok) => (j.model.merges[3] = "@@DEEP@@"), (j: typeof tok) => (j.decoder = "@@DEEP@@")]) {
    const j = structuredClone(tok);
    edit(j);
    writeFileSync(join(model, "tokenizer.json"), JSON.stringify(j).replace("\"@@DEEP@@\"", deep(50_000)));
    const r = await cli(["tokenizer", "encode", "--tokenizer", join(model, "tokenizer.json"), "hello"]);
    assertRefused(r, "tokenizer.json", /unsupported tokenizer\.json/);
  }
});

test("a JSON syntax error quotes the file in one printable line", async () => {
  const cfg = join(root, "broken.json");
  writeFileSync(cfg, '{\n  "steps": 3,\n  "model"> \u0010{}\n}');
  const r = await cli(["train", "--config", cfg]);
  assertRefused(r, "broken.json", /is not valid JSON/);
  assert.ok(!/[\u0000-\u0008\u000b-\u001f]/.test(r.err), `raw control bytes reached the terminal: ${JSON.stringify(r.err)}`);
});

test("a manifest with a million-element array is refused at once", async () => {
  const dir = join(root, "bigdata");
  cpSync(data, dir, { recursive: true });
  const m = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")) as Record<string, unknown>;
  m.sources = new Array(1_000_000).fill(0);
  writeFileSync(join(dir, "manifest.json"), JSON.stringify(m));
  const t0 = performance.now();
  const r = await cli(["data", "stats", "--data", dir]);
  const ms = performance.now() - t0;
  assertRefused(r, "manifest.json", /sources has 1000000 elements/);
  assert.ok(ms < 3000, `took ${ms.toFixed(0)} ms`);
});

test("store inspect --verify with an unusable record ends in one sigma: line, exit 1", async () => {
  const cfg = tinyConfig(data, join(root, "verify"), ROUTERS.rre!, { store: { enabled: true, memory: "1MiB", prefetch: false } });
  const t = new Trainer(cfg);
  t.trainStep();
  saveTrainCheckpoint(t, join(cfg.out, "checkpoints"));
  t.close();
  const store = join(cfg.out, "experts.sgxs");
  const bytes = readFileSync(store);
  const h = JSON.parse(new TextDecoder().decode(bytes.subarray(16, 16 + bytes.readUInt32LE(8)))) as { layerStart: number[] };
  bytes[h.layerStart[0]! + 200] ^= 0xff; // a payload byte of layer 0, expert 0, slot 0
  writeFileSync(store, bytes);
  const r = await cli(["store", "inspect", store, "--verify"]);
  assertRefused(r, store, /live records of .* are unusable/);
  assert.match(r.out, /unusable records/);
});

test("step counts read from files stay within the optimizer's 32-bit count", async () => {
  const { decodeIndex, MAX_EXPERT_STEP } = await import("../src/store/format.js");
  const { optimizerStep } = await import("../src/train/checkpoint.js");
  const entry = (step: number): Uint8Array => {
    const b = new Uint8Array(16);
    const dv = new DataView(b.buffer);
    dv.setUint32(4, 1, true);
    dv.setUint32(12, step >>> 0, true);
    return b;
  };
  assert.equal(decodeIndex(entry(MAX_EXPERT_STEP), 1, "x.index")[0]!.step, MAX_EXPERT_STEP);
  assert.throws(() => decodeIndex(entry(2 ** 32 - 1), 1, "x.index"), /x\.index: expert index entry 0 has taken 4294967295 steps/);
  assert.equal(optimizerStep({ step: "2000000000" }, "o"), 2_000_000_000);
  assert.throws(() => optimizerStep({ step: "2147483647" }, "o"), /not an integer in \[0, 2000000000\]/);
});

test("a FIFO, or a folder, where Sigma expects a file inside a folder is an error naming it, never a hang", () => {
  // In a child with a time limit: a regression blocks the thread in a read, where no in-process timeout fires.
  const dir = join(root, "fifodata");
  cpSync(data, dir, { recursive: true });
  const child = spawnSync(process.execPath, ["--import", "tsx", join(import.meta.dirname, "fifo-child.ts"), dir], { encoding: "utf8", timeout: 60_000 });
  assert.equal(child.signal, null, `the child hung (killed by ${child.signal}): ${child.stdout}${child.stderr}`);
  assert.equal(child.status, 0, child.stdout + child.stderr);
  assert.match(child.stdout, /checked 3 files/);
});

test("a config named on the command line is read with a size cap: /dev/zero is an error, not a hang", async () => {
  const t0 = performance.now();
  const r = await cli(["train", "--config", "/dev/zero"]);
  assertRefused(r, "/dev/zero", /the train config \/dev\/zero is more than 16777216 bytes/);
  assert.ok(performance.now() - t0 < 10_000);
  const missing = await cli(["data", "stats", "--data", join(root, "no-data")]);
  assertRefused(missing, "manifest.json", /manifest .*manifest\.json: it does not exist/);
  assert.equal(missing.code, 1);
  assert.equal(missing.err.split("\n").filter((l) => l.includes("hint:")).length, 1, missing.err);
});
