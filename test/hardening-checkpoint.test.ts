// Hardening of checkpoints and run folders (issue "Hardening"): values read
// from state.json never steer a write outside the run folder, links inside a
// run or checkpoint folder are never followed for writes or deletes, a run
// never mixes with or replaces an earlier one unless asked, and pruning and
// re-saving leave a complete checkpoint at every instant.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import fs, { existsSync, mkdirSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { join, relative } from "node:path";
import { listCheckpoints, openCheckpointFolder, pruneCheckpoints } from "../src/checkpoint/folder.js";
import { saveTrainCheckpoint } from "../src/train/checkpoint.js";
import { Trainer } from "../src/train/trainer.js";
import { prepareRunFolder } from "../src/train/run.js";
import { sigma } from "./cli-harness.js";
import { ROUTERS, cleanup, root, tinyConfig, tinyData } from "./train-fixture.js";

after(cleanup);
const data = await tinyData();

/** Every file under `dir` with its sha256 (links as their target text): a fingerprint to show nothing changed. */
function tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string): void => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      const st = fs.lstatSync(p);
      if (st.isSymbolicLink()) out[relative(dir, p)] = `-> ${fs.readlinkSync(p)}`;
      else if (st.isDirectory()) walk(p);
      else out[relative(dir, p)] = createHash("sha256").update(readFileSync(p)).digest("hex");
    }
  };
  if (existsSync(dir)) walk(dir);
  return out;
}

/** A victim folder beside the runs, with a file in it. */
function victim(name: string): string {
  const v = join(root, name);
  mkdirSync(v, { recursive: true });
  writeFileSync(join(v, "precious.txt"), "do not delete");
  return v;
}

/** Writes a tiny run's config file; returns its path and config. */
function configFile(name: string, extra: Record<string, unknown> = {}) {
  const cfg = tinyConfig(data, join(root, name), ROUTERS.rre!, { steps: 3, eval: { every: 0, batches: 1 }, checkpoint: { every: 0, keep: 2 }, ...extra });
  const path = join(root, `${name}.json`);
  writeFileSync(path, JSON.stringify(cfg));
  return { path, cfg };
}

const editState = (ckpt: string, edit: (s: Record<string, unknown>) => void): void => {
  const p = join(ckpt, "state.json");
  const s = JSON.parse(readFileSync(p, "utf8")) as Record<string, unknown>;
  edit(s);
  writeFileSync(p, JSON.stringify(s));
};

test("a state.json step that is a path never reaches outside the run (the resume repro), nor do bad numbers", async () => {
  const { path } = configFile("repro");
  assert.equal((await sigma("train", "--config", path)).code, 0);
  const ckpt = join(root, "repro", "checkpoints", "step-00000003");
  const v = victim("victim");
  const before = tree(v);
  for (const step of ["../../../../victim", `../../${relative(join(root, "repro", "checkpoints"), v)}`, -1, 1.5, 1e300, "3", null]) {
    editState(ckpt, (s) => (s.step = step));
    const r = await sigma("train", "--config", path, "--resume", "--steps", "4");
    assert.equal(r.code, 1, `step ${JSON.stringify(step)}: ${r.out}`);
    assert.match(r.out, /^sigma: .*state\.json is invalid:\n {2}step: /m);
    assert.deepEqual(tree(v), before, `step ${JSON.stringify(step)} changed the victim folder`);
  }
  editState(ckpt, (s) => (s.step = 3));
  // Other numbers that steer the run are checked too, each named.
  for (const [field, value] of [["tokens", "../x"], ["seconds", -5], ["loaderRng", { s: [0, 0, 0, 0], spare: null }], ["loaderRng", { s: [1, 2, 3], spare: null }], ["tokenizer", { sha256: "x", vocabSize: 320 }]] as const) {
    const saved = JSON.parse(readFileSync(join(ckpt, "state.json"), "utf8"))[field];
    editState(ckpt, (s) => (s[field] = value));
    const r = await sigma("train", "--config", path, "--resume", "--steps", "4");
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, new RegExp(`^ {2}${field}[.:]`, "m"), r.out);
    editState(ckpt, (s) => (s[field] = saved));
  }
  assert.equal((await sigma("train", "--config", path, "--resume", "--steps", "4")).code, 0);
});

test("store convert and extract validate the step and the file table before writing", async () => {
  const { path } = configFile("convert");
  assert.equal((await sigma("train", "--config", path)).code, 0);
  const ckpt = join(root, "convert", "checkpoints", "step-00000003");
  const v = victim("victim2");
  const before = tree(v);
  editState(ckpt, (s) => (s.step = "../../../victim2"));
  const conv = await sigma("store", "convert", "--from", ckpt, "--to", "store", "--store", join(root, "convert", "s.sgxs"), "--out", join(root, "convert", "converted"));
  assert.equal(conv.code, 1, conv.out);
  assert.match(conv.out, /state\.json is invalid:\n {2}step:/);
  const ext = await sigma("extract", "--ckpt", ckpt, "--domain", "en", "--out", join(root, "convert", "extracted"));
  assert.equal(ext.code, 1, ext.out);
  assert.match(ext.out, /step:/);
  editState(ckpt, (s) => {
    s.step = 3;
    const files = s.files as Record<string, unknown>;
    files["../../victim2/precious.txt"] = files["tokenizer.json"];
  });
  const bad = await sigma("eval", "--ckpt", ckpt, "--batches", "1");
  assert.equal(bad.code, 1, bad.out);
  assert.match(bad.out, /files\.\.\.\/\.\.\/victim2\/precious\.txt: is not a plain file name/);
  assert.deepEqual(tree(v), before);
});

test("links inside a run or checkpoint folder are never followed for writes or deletes", async () => {
  const v = victim("victim3");
  const before = tree(v);
  // checkpoints/ is a link to the victim: the run refuses before writing anything.
  const a = configFile("linkrun");
  mkdirSync(a.cfg.out, { recursive: true });
  symlinkSync(v, join(a.cfg.out, "checkpoints"));
  const r1 = await sigma("train", "--config", a.path);
  assert.equal(r1.code, 1, r1.out);
  assert.match(r1.out, /checkpoints is a symbolic link/);
  // metrics.jsonl as a link to a file outside: refused, the file untouched.
  const b = configFile("linkmetrics");
  mkdirSync(b.cfg.out, { recursive: true });
  symlinkSync(join(v, "precious.txt"), join(b.cfg.out, "metrics.jsonl"));
  const r2 = await sigma("train", "--config", b.path);
  assert.equal(r2.code, 1, r2.out);
  assert.match(r2.out, /metrics\.jsonl is a symbolic link/);
  // A step folder that is a link: a save of that step refuses, pruning removes the link only.
  const c = configFile("linkstep");
  assert.equal((await sigma("train", "--config", c.path)).code, 0);
  const dir = join(c.cfg.out, "checkpoints");
  symlinkSync(v, join(dir, "step-00000001"));
  symlinkSync(v, join(dir, ".tmp-step-00000002-999999999"));
  assert.deepEqual(listCheckpoints(dir).map((x) => x.step), [3], "a link is not a checkpoint");
  pruneCheckpoints(dir, 1);
  // The dead save's link goes (the link itself); the step link is not a checkpoint and stays; the victim is whole.
  assert.deepEqual(readdirSync(dir).sort(), ["step-00000001", "step-00000003"]);
  assert.deepEqual(tree(v), before);
  symlinkSync(v, join(dir, "step-00000004"));
  const r3 = await sigma("train", "--config", c.path, "--resume", "--steps", "4");
  assert.equal(r3.code, 1, r3.out);
  assert.match(r3.out, /step-00000004 is a symbolic link/);
  assert.deepEqual(tree(v), before);
  // A checkpoint file that is a link or a FIFO is an error, not a read through it (nor a hang).
  fs.unlinkSync(join(dir, "step-00000004"));
  const ck = join(dir, "step-00000003");
  fs.renameSync(join(ck, "tokenizer.json"), join(root, "tok-aside.json"));
  symlinkSync(join(root, "tok-aside.json"), join(ck, "tokenizer.json"));
  assert.throws(() => openCheckpointFolder(ck).read("tokenizer.json"), /tokenizer\.json is a symbolic link/);
  fs.unlinkSync(join(ck, "tokenizer.json"));
  const fifo = spawnSync("mkfifo", [join(ck, "tokenizer.json")]);
  if (fifo.status === 0) assert.throws(() => openCheckpointFolder(ck).read("tokenizer.json"), /tokenizer\.json is a FIFO/);
  fs.unlinkSync(join(ck, "tokenizer.json"));
  fs.renameSync(join(root, "tok-aside.json"), join(ck, "tokenizer.json"));
});

test("a fresh run into an --out that holds a run is refused, names --resume and --overwrite, and changes nothing", async () => {
  const { path, cfg } = configFile("twice");
  assert.equal((await sigma("train", "--config", path)).code, 0);
  const before = tree(cfg.out);
  const again = await sigma("train", "--config", path, "--steps", "5");
  assert.equal(again.code, 1, again.out);
  assert.match(again.out, /already holds a run \(checkpoints up to step 3\)/);
  assert.match(again.out, /--resume/);
  assert.match(again.out, /--overwrite/);
  assert.deepEqual(tree(cfg.out), before, "the refused run changed the old run's files");
  // --out on the command line is named as such.
  const viaFlag = await sigma("train", "--config", path, "--out", cfg.out);
  assert.match(viaFlag.out, /^sigma: .*twice \(--out\) already holds a run/m);
  // --overwrite replaces it: one run's checkpoints and metrics, starting at step 1.
  const over = await sigma("train", "--config", path, "--steps", "2", "--overwrite");
  assert.equal(over.code, 0, over.out);
  assert.deepEqual(listCheckpoints(join(cfg.out, "checkpoints")).map((c) => c.step), [2]);
  const steps = readFileSync(join(cfg.out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { kind: string; step: number }).filter((r) => r.kind === "train").map((r) => r.step);
  assert.deepEqual(steps, [1, 2]);
  assert.match((await sigma("train", "--config", path, "--resume", "--overwrite")).out, /--resume and --overwrite exclude each other/);
});

test("an expert-store run killed before its first checkpoint can be started again", async () => {
  const { path, cfg } = configFile("storekill", { store: { enabled: true, memory: "1MiB", prefetch: false } });
  // What a kill after a few steps leaves: run.json, metrics, the store it created, no checkpoint.
  prepareRunFolder(cfg, join(cfg.out, "experts.sgxs"));
  const t = new Trainer(cfg);
  t.trainStep();
  t.close();
  writeFileSync(join(cfg.out, "metrics.jsonl"), '{"kind":"train","step":1}\n');
  assert.ok(existsSync(join(cfg.out, "experts.sgxs")));
  assert.equal(listCheckpoints(join(cfg.out, "checkpoints")).length, 0);
  const r = await sigma("train", "--config", path);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /stopped before its first checkpoint: starting it again/);
  assert.deepEqual(listCheckpoints(join(cfg.out, "checkpoints")).map((c) => c.step), [3]);
  // A store that was there before the run (not created by it) is never removed.
  const other = configFile("storeforeign", { store: { enabled: true, memory: "1MiB", prefetch: false, path: join(root, "storekill", "experts.sgxs") } });
  const st = statSync(join(cfg.out, "experts.sgxs")).mtimeMs;
  const r2 = await sigma("train", "--config", other.path);
  assert.equal(r2.code, 1, r2.out);
  assert.match(r2.out, /already exists/);
  assert.equal(statSync(join(cfg.out, "experts.sgxs")).mtimeMs, st);
});

test("pruning removes state.json first, so a half-deleted checkpoint never lists as complete", async () => {
  const { path, cfg } = configFile("prune", { checkpoint: { every: 1, keep: 3 } });
  assert.equal((await sigma("train", "--config", path)).code, 0);
  const dir = join(cfg.out, "checkpoints");
  assert.deepEqual(listCheckpoints(dir).map((c) => c.step), [1, 2, 3]);
  // Die in the middle of removing step 1's folder (after its first unlink).
  const real = fs.rmSync;
  fs.rmSync = () => {
    throw new Error("killed mid-prune");
  };
  syncBuiltinESMExports();
  try {
    assert.throws(() => pruneCheckpoints(dir, 2), /killed mid-prune/);
  } finally {
    fs.rmSync = real;
    syncBuiltinESMExports();
  }
  assert.deepEqual(listCheckpoints(dir).map((c) => c.step), [2, 3], "step 1 still lists as complete");
});

test("keep: 1 with a kill between the two renames of a re-save still leaves one complete checkpoint", () => {
  const { path, cfg } = configFile("rename", { checkpoint: { every: 0, keep: 1 } });
  const t = new Trainer(cfg);
  const dir = join(cfg.out, "checkpoints");
  t.trainStep();
  t.trainStep();
  saveTrainCheckpoint(t, dir, 1);
  t.close();
  const child = spawnSync(process.execPath, ["--import", "tsx", join(import.meta.dirname, "checkpoint-kill-rename-child.ts"), path, dir], { encoding: "utf8" });
  assert.equal(child.signal, "SIGKILL", `the child should die between the renames: ${child.stderr}${child.stdout}`);
  assert.ok(!existsSync(join(dir, "step-00000002")), "the kill should fall between the two renames");
  assert.deepEqual(listCheckpoints(dir).map((c) => c.step), [2], "no complete checkpoint is listed");
  openCheckpointFolder(dir).read("model.safetensors");
  // The next save puts it back under its name and cleans the leftovers.
  pruneCheckpoints(dir, 1);
  assert.deepEqual(readdirSync(dir), ["step-00000002"]);
});

test("the optimizer's step and per-expert step counts are whole numbers in range", async () => {
  const { decodeSafetensors, encodeSafetensors } = await import("../src/checkpoint/safetensors.js");
  const { path, cfg } = configFile("optsteps", { optim: { lr: 3e-3, warmupSteps: 2, sparseExperts: true } });
  assert.equal((await sigma("train", "--config", path)).code, 0);
  const ckpt = join(cfg.out, "checkpoints", "step-00000003");
  const file = join(ckpt, "optimizer.safetensors");
  const original = readFileSync(file);
  /** Rewrites optimizer.safetensors (and its record in state.json, so the real reader sees it). */
  const rewrite = (edit: (t: ReturnType<typeof decodeSafetensors>) => void): void => {
    const st = decodeSafetensors(original, file);
    edit(st);
    const bytes = encodeSafetensors(new Map([...st.tensors].map(([n, t]) => [n, { shape: t.shape, data: t.data }])), st.metadata);
    writeFileSync(file, bytes);
    editState(ckpt, (s) => ((s.files as Record<string, unknown>)["optimizer.safetensors"] = { bytes: bytes.length, sha256: createHash("sha256").update(bytes).digest("hex") }));
  };
  for (const step of ["../3", "-1", "1e3", "3.5", ""]) {
    rewrite((st) => (st.metadata.step = step));
    const r = await sigma("train", "--config", path, "--resume", "--steps", "4");
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /optimizer\.safetensors: the metadata field "step"/);
  }
  for (const bad of [1.5, -2, Number.NaN]) {
    rewrite((st) => {
      const name = [...st.tensors.keys()].find((n) => n.startsWith("steps."))!;
      st.tensors.get(name)!.data[0] = bad;
    });
    const r = await sigma("train", "--config", path, "--resume", "--steps", "4");
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /per-expert step counts .* are not whole numbers of steps \(expert 0/);
  }
  rewrite(() => {});
  assert.equal((await sigma("train", "--config", path, "--resume", "--steps", "4")).code, 0);
});

test("--overwrite never replaces a live run, and removes only the run's own files", async () => {
  const { spawn } = await import("node:child_process");
  const { path, cfg } = configFile("overwrite-live");
  assert.equal((await sigma("train", "--config", path)).code, 0);
  // Files the user put among the run's: they stay.
  const ckdir = join(cfg.out, "checkpoints");
  fs.cpSync(join(ckdir, "step-00000003"), join(ckdir, "my-best"), { recursive: true });
  writeFileSync(join(cfg.out, "plots", "my-notes.txt"), "mine");
  // Another process (alive) is the run's writer: neither --overwrite nor --resume may touch it.
  const live = spawn("sleep", ["30"]);
  try {
    const marker = join(cfg.out, "run.json");
    const saved = readFileSync(marker, "utf8");
    writeFileSync(marker, JSON.stringify({ ...JSON.parse(saved), pid: live.pid }));
    const before = tree(cfg.out);
    for (const extra of [["--overwrite"], ["--resume", "--steps", "4"]]) {
      const r = await sigma("train", "--config", path, ...extra);
      assert.equal(r.code, 1, r.out);
      assert.match(r.out, new RegExp(`another run \\(process ${live.pid}\\) is writing to`));
      assert.doesNotMatch(r.out, /hint: .*--overwrite/);
    }
    assert.deepEqual(tree(cfg.out), before);
    writeFileSync(marker, saved);
    // A complete checkpoint left in a save's temporary folder by a live pid still counts as the run's.
    fs.renameSync(join(ckdir, "step-00000003"), join(ckdir, `.tmp-step-00000003-${live.pid}`));
    const r = await sigma("train", "--config", path);
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /already holds a run \(a complete checkpoint in .*\.tmp-step-00000003-/);
    fs.renameSync(join(ckdir, `.tmp-step-00000003-${live.pid}`), join(ckdir, "step-00000003"));
  } finally {
    live.kill();
  }
  const over = await sigma("train", "--config", path, "--overwrite", "--steps", "2");
  assert.equal(over.code, 0, over.out);
  assert.ok(existsSync(join(ckdir, "my-best", "state.json")), "the user's folder among the checkpoints was removed");
  assert.equal(readFileSync(join(cfg.out, "plots", "my-notes.txt"), "utf8"), "mine");
  assert.deepEqual(listCheckpoints(ckdir).map((c) => c.step), [2]);
});

test("a save's state.json appears whole or not at all; pid 0 is no live process", async () => {
  const { processAlive } = await import("../src/util/process.js");
  assert.equal(processAlive(0), false);
  assert.equal(processAlive(-1), false);
  const { path, cfg } = configFile("torn-state");
  assert.equal((await sigma("train", "--config", path)).code, 0);
  const ckdir = join(cfg.out, "checkpoints");
  // What a kill while writing state.json leaves: a folder with a torn state.json.tmp and no state.json.
  const torn = join(ckdir, ".tmp-step-00000009-0");
  fs.cpSync(join(ckdir, "step-00000003"), torn, { recursive: true });
  fs.renameSync(join(torn, "state.json"), join(torn, "state.json.tmp"));
  fs.truncateSync(join(torn, "state.json.tmp"), 10);
  assert.deepEqual(listCheckpoints(ckdir).map((c) => c.step), [3]);
  pruneCheckpoints(ckdir, 2);
  assert.ok(!existsSync(torn), "a dead save's incomplete folder is cleaned");
});

test("a diverged run stops with an error and no NaN checkpoint; missing --resume/--init paths and bad --expert-memory name the flag", async () => {
  const { path, cfg } = configFile("diverge", { optim: { lr: 1e308, warmupSteps: 1 }, checkpoint: { every: 1, keep: 5 } });
  const r = await sigma("train", "--config", path);
  assert.equal(r.code, 1, r.out);
  assert.match(r.out, /^sigma: training diverged at step \d+: the loss is (NaN|Infinity|-Infinity)/m);
  for (const c of listCheckpoints(join(cfg.out, "checkpoints"))) {
    const st = JSON.parse(readFileSync(join(c.path, "state.json"), "utf8")) as { step: number };
    assert.ok(st.step < 3, "no checkpoint of the diverged step");
  }
  const ok = configFile("flags-named");
  for (const [args, re] of [
    [["--resume", join(root, "nope")], /^sigma: --resume .*nope does not exist/m],
    [["--init", join(root, "nope")], /^sigma: --init .*nope does not exist/m],
    [["--expert-memory", "-5GiB"], /^sigma: --expert-memory: /m],
  ] as const) {
    const out = await sigma("train", "--config", ok.path, ...args);
    assert.equal(out.code, 1, out.out);
    assert.match(out.out, re);
  }
});

test("an evaluation larger than the validation split, a huge accumSteps, and a run.json that is a folder are refused by name", async () => {
  const big = configFile("evalbig", { eval: { every: 0, batches: 65535 } });
  const r1 = await sigma("train", "--config", big.path);
  assert.equal(r1.code, 1, r1.out);
  assert.match(r1.out, /^sigma: eval\.batches 65535 would evaluate .* validation tokens/m);
  const ok = configFile("evalok");
  assert.equal((await sigma("train", "--config", ok.path)).code, 0);
  const r2 = await sigma("eval", "--ckpt", join(ok.cfg.out, "checkpoints"), "--batches", "100000");
  assert.equal(r2.code, 1, r2.out);
  assert.match(r2.out, /^sigma: --batches 100000 would evaluate/m);
  const accumPath = join(root, "accumbig.json");
  writeFileSync(accumPath, JSON.stringify({ ...ok.cfg, out: join(root, "accumbig"), accumSteps: 65536 }));
  const r3 = await sigma("train", "--config", accumPath);
  assert.equal(r3.code, 1, r3.out);
  assert.match(r3.out, /accumSteps: must be at most 4096/);
  const dirMarker = configFile("markerdir");
  mkdirSync(join(dirMarker.cfg.out, "run.json"), { recursive: true });
  const r4 = await sigma("train", "--config", dirMarker.path);
  assert.equal(r4.code, 1, r4.out);
  assert.match(r4.out, /^sigma: .*run\.json is not a file/m);
});
