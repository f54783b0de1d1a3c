// Checkpoints: a save killed mid-write leaves the previous checkpoint
// loadable; truncated, corrupted or mismatched checkpoints are clear errors
// naming the file or field.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, truncateSync, writeFileSync, cpSync } from "node:fs";
import { join } from "node:path";
import { listCheckpoints, openCheckpointFolder } from "../src/checkpoint/folder.js";
import { parseTrainConfig } from "../src/train/config.js";
import { resumeTrainer, saveTrainCheckpoint } from "../src/train/checkpoint.js";
import { Trainer } from "../src/train/trainer.js";
import { openModelSource } from "../src/serve/open.js";
import { SigmaError } from "../src/util/errors.js";
import { ROUTERS, cleanup, root, tinyConfig, tinyData } from "./train-fixture.js";

after(cleanup);
const data = await tinyData();
const sigmaError = (re: RegExp) => (e: unknown) => e instanceof SigmaError && re.test(e.message);

/** A run with checkpoints at steps 2 and 3; returns its config and checkpoints folder. */
function twoCheckpoints(name: string) {
  const cfg = tinyConfig(data, join(root, name), ROUTERS.rre!);
  const t = new Trainer(cfg);
  const dir = join(cfg.out, "checkpoints");
  t.trainStep();
  t.trainStep();
  saveTrainCheckpoint(t, dir);
  t.trainStep();
  const last = saveTrainCheckpoint(t, dir);
  t.close();
  return { cfg, dir, last };
}

test("a save killed mid-write leaves the previous checkpoint the newest, and it loads", () => {
  const { cfg, dir, last } = twoCheckpoints("killed");
  const cfgPath = join(root, "killed.json");
  writeFileSync(cfgPath, JSON.stringify(cfg));
  const before = readFileSync(join(last, "model.safetensors"));
  for (const killAfter of ["model.safetensors", "tokenizer.json"]) {
    const child = spawnSync(process.execPath, ["--import", "tsx", join(import.meta.dirname, "train-kill-child.ts"), cfgPath, dir, killAfter], { encoding: "utf8" });
    assert.equal(child.signal, "SIGKILL", `the child should die mid-save: ${child.stderr}`);
    assert.ok(!child.stdout.includes("not killed"));
    // The half-written step 4 is a temporary folder; the newest complete checkpoint is still step 3.
    assert.ok(readdirSync(dir).some((n) => n.startsWith(".tmp-step-00000004")), "the partial save should be a .tmp folder");
    assert.deepEqual(listCheckpoints(dir).map((c) => c.step), [2, 3]);
    const t = resumeTrainer(dir, cfg);
    assert.equal(t.step, 3);
    t.close();
    assert.deepEqual(readFileSync(join(last, "model.safetensors")), before);
  }
  // The next save clears the dead process's leftovers.
  const t = resumeTrainer(dir, cfg);
  t.trainStep();
  saveTrainCheckpoint(t, dir);
  t.close();
  assert.deepEqual(readdirSync(dir).sort(), ["step-00000003", "step-00000004"]);
});

test("truncated, corrupted or unreadable checkpoint files are errors naming the file", () => {
  const { cfg, last } = twoCheckpoints("damaged");
  const copy = (name: string) => {
    const d = join(root, `damaged-${name}`);
    cpSync(last, d, { recursive: true });
    return d;
  };
  const truncated = copy("truncated");
  truncateSync(join(truncated, "optimizer.safetensors"), 100);
  assert.throws(() => resumeTrainer(truncated, cfg), sigmaError(/optimizer\.safetensors is truncated[\s\S]*hint/));

  const flipped = copy("flipped");
  const p = join(flipped, "model.safetensors");
  const bytes = readFileSync(p);
  bytes[bytes.length - 5] ^= 0x40;
  writeFileSync(p, bytes);
  assert.throws(() => resumeTrainer(flipped, cfg), sigmaError(/model\.safetensors is corrupted/));
  assert.throws(() => openModelSource(flipped), sigmaError(/model\.safetensors is corrupted/));

  const badState = copy("state");
  writeFileSync(join(badState, "state.json"), '{"step": 3, "fil');
  assert.throws(() => resumeTrainer(badState, cfg), sigmaError(/state\.json is not readable JSON/));

  assert.throws(() => resumeTrainer(join(root, "nowhere"), cfg), sigmaError(/nowhere does not exist/));
  assert.throws(() => resumeTrainer(data, cfg), sigmaError(/no complete checkpoint/));
});

test("a checkpoint whose model config differs from the run's is refused, naming the fields", () => {
  const { cfg, last } = twoCheckpoints("mismatch");
  const other = parseTrainConfig({ ...cfg, model: { ...cfg.model, width: 48, heads: 2 } });
  assert.throws(() => resumeTrainer(last, other), sigmaError(/different model config[\s\S]*model\.width: 32 vs 48/));
  const otherRouter = parseTrainConfig({ ...cfg, model: { ...cfg.model, experts: { count: 4, router: ROUTERS.topk! } } });
  assert.throws(() => resumeTrainer(last, otherRouter), sigmaError(/model\.experts\.router\.kind: "rre" vs "topk"/));
  // A run trained with one shared embedding slot, resumed with its config file written before per-domain slots were the
  // default (no embeddingSlots, no slots): the hint says what to add, and with it the run resumes.
  const shared = parseTrainConfig({ ...cfg, out: join(root, "mismatch-shared"), model: { ...cfg.model, embeddingSlots: 1, domains: cfg.model.domains.map((d) => ({ ...d, slot: 0 })) } });
  assert.ok(shared.model.domains.length > 1);
  const st = new Trainer(shared);
  st.trainStep();
  const sharedCkpt = saveTrainCheckpoint(st, join(shared.out, "checkpoints"));
  st.close();
  const oldFile = { ...shared, model: { ...shared.model, embeddingSlots: undefined, domains: shared.model.domains.map(({ slot: _, ...d }) => d) } };
  assert.throws(() => resumeTrainer(sharedCkpt, parseTrainConfig(oldFile)), sigmaError(/model\.embeddingSlots: 1 vs \d[\s\S]*hint: .*add "embeddingSlots": 1/));
  resumeTrainer(sharedCkpt, parseTrainConfig({ ...oldFile, model: { ...oldFile.model, embeddingSlots: 1 } })).close();
  // Training longer is allowed: only the model section must match.
  const longer = resumeTrainer(last, parseTrainConfig({ ...cfg, steps: 20 }));
  assert.equal(longer.step, 3);
  longer.close();
});

test("a checkpoint holds weights, moments, tokenizer and state (step, schedule, RNG, tokenizer hash, RRE tables)", () => {
  const { last } = twoCheckpoints("contents");
  const f = openCheckpointFolder(last);
  assert.deepEqual(Object.keys(f.state.files).sort(), ["model.safetensors", "optimizer.safetensors", "tokenizer.json"]);
  const s = f.state as Record<string, any>;
  assert.equal(s.step, 3);
  assert.equal(typeof s.schedule.nextLr, "number");
  assert.equal(s.loaderRng.s.length, 4);
  assert.match(s.tokenizer.sha256, /^[0-9a-f]{64}$/);
  assert.deepEqual(Object.keys(s.rreTables), ["blocks.1.moe.router.table"]);
  assert.ok(existsSync(join(last, "tokenizer.json")));
});
