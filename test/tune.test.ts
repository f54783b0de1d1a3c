// The GEMM autotuner and its cache file (issue 21): a corrupt or foreign file
// is ignored with one warning line, a valid one is applied (visible in
// gemmConfig), entries are kept per CPU, build and thread count; the tuner
// on a tiny budget sets and saves a winner for every class; `sigma tune
// --json`; and first use: `sigma train` tunes once, says so, and a second
// run reuses the file. Nothing here times anything beyond what the tuner
// does with its tiny budget.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadNative } from "../src/backend/native/index.js";
import { applyCachedTuning, readTuneFile, saveTuneEntry, tuneFilePath, tuneKey, type GemmTuning, type TuneEntry } from "../src/backend/native/tune-cache.js";
import { tune } from "../src/backend/native/tune.js";
import { sigma } from "./cli-harness.js";
import { ROUTERS, tinyConfig, tinyData, cleanup as cleanupFixture } from "./train-fixture.js";

const dir = mkdtempSync(join(tmpdir(), "sigma-tune-"));
after(() => {
  rmSync(dir, { recursive: true, force: true });
  cleanupFixture();
});
// This file reads and writes only its own cache files.
delete process.env.SIGMA_TUNE;
process.env.SIGMA_TUNE_FILE = join(dir, "unused.json");

const load = loadNative();
const skip = !load.backend && process.env.SIGMA_ALLOW_NO_NATIVE === "1" ? `native backend unavailable: ${load.error}` : false;
const native = () => {
  assert.ok(load.backend && load.path, `native backend unavailable: ${load.error}`);
  return { n: load.backend, path: load.path };
};

/** A tuning whose tile is not the rule's, so that applying it shows in gemmConfig. */
function someTuning(): GemmTuning {
  const { n } = native();
  n.setGemmTuning(null);
  const path = n.cpuFeatures().path as GemmTuning["path"];
  const rank: Record<string, number> = { portable: 0, "avx2-fma": 1, avx512: 2 };
  const rule = n.gemmConfig().tile;
  const tile = n.gemmTiles().find((t) => t.runnable && rank[t.isa]! <= rank[path]! && t.name !== rule)?.name ?? rule;
  const c = { tile, mc: 48, kc: 128, nc: 256 };
  const b = { large: c, shortK: c, smallMRowsNT: 96, smallMRowsNN: 32 };
  return { path, one: b, many: b };
}

function entryFor(key: Partial<TuneEntry["key"]> = {}): TuneEntry {
  const { n, path } = native();
  return { key: { ...tuneKey(n, path), ...key }, tunedAt: "2026-12-03T00:00:00.000Z", seconds: 1, budgetSeconds: 1, tuning: someTuning(), table: [] };
}

/** Applies the cache file `file` holding `text`; returns the status and the warning lines printed. */
function applyWith(file: string, text: string | null, env: Record<string, string | undefined> = {}) {
  const { n, path } = native();
  if (text !== null) writeFileSync(file, text);
  n.setGemmTuning(null);
  const saved = { ...process.env };
  Object.assign(process.env, { SIGMA_TUNE_FILE: file }, env);
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete process.env[k];
  const lines: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((chunk: string | Uint8Array) => (lines.push(...String(chunk).split("\n").filter(Boolean)), true)) as typeof process.stderr.write;
  try {
    const status = applyCachedTuning(n, path);
    return { status, lines, config: n.gemmConfig(), tuning: n.gemmTuning() };
  } finally {
    process.stderr.write = write;
    process.env = saved;
  }
}

test("the cache file's path: SIGMA_TUNE_FILE, else $XDG_CACHE_HOME/sigma, else ~/.cache/sigma", () => {
  assert.equal(tuneFilePath({ SIGMA_TUNE_FILE: "/x/t.json", XDG_CACHE_HOME: "/c" }), "/x/t.json");
  assert.equal(tuneFilePath({ XDG_CACHE_HOME: "/c" }), "/c/sigma/tune.json");
  assert.match(tuneFilePath({ XDG_CACHE_HOME: "relative" }), /\/\.cache\/sigma\/tune\.json$/);
  assert.match(tuneFilePath({}), /\/\.cache\/sigma\/tune\.json$/);
});

test("a valid cache file is applied (gemmConfig shows the tuned tile); SIGMA_TUNE=off skips it", { skip }, () => {
  const file = join(dir, "valid.json");
  const e = entryFor();
  const r = applyWith(file, JSON.stringify({ sigmaTune: 1, entries: [entryFor({ threads: 99 }), e] }));
  assert.deepEqual(r.lines, []);
  assert.equal(r.status.state, "applied");
  assert.deepEqual(r.tuning, e.tuning);
  assert.deepEqual([r.config.tuned, r.config.tile, r.config.mc, r.config.kc, r.config.nc], [true, e.tuning.one.large.tile, 48, 128, 256]);
  assert.equal(native().n.gemmConfig(64, 1).smallMRowsNN, 32);
  const off = applyWith(file, null, { SIGMA_TUNE: "off" });
  assert.deepEqual([off.status.state, off.tuning, off.config.tuned, off.lines], ["off", null, false, []]);
  native().n.setGemmTuning(null);
});

test("a corrupt or foreign cache file is ignored with one warning line naming it and what happens next", { skip }, () => {
  const cases: [string, string, RegExp][] = [
    ["not-json.json", "{ not json", /it is not JSON/],
    ["schema.json", JSON.stringify({ sigmaTune: 1, entries: [{ key: {} }] }), /it is not a tuning file \(entries\.0\.key\.cpu: Required\)/],
    ["version.json", JSON.stringify({ sigmaTune: 2, entries: [] }), /it is not a tuning file \(sigmaTune: /],
    ["bad-tile.json", JSON.stringify({ sigmaTune: 1, entries: [{ ...entryFor(), tuning: { ...someTuning(), one: { ...someTuning().one, large: { tile: "nope", mc: 1, kc: 1, nc: 1 } } } }] }), /the addon refused its tuning .*no tile "nope"/],
    ["cpu.json", JSON.stringify({ sigmaTune: 1, entries: [entryFor({ cpu: "GenuineIntel family 6 model 143: Intel(R) Xeon(R) Platinum 8488C" })] }), /holds tunings for other CPUs or builds of the addon only/],
    ["build.json", JSON.stringify({ sigmaTune: 1, entries: [entryFor({ build: "0".repeat(64) })] }), /holds tunings for other CPUs or builds of the addon only/],
  ];
  for (const [name, text, re] of cases) {
    const file = join(dir, name);
    const r = applyWith(file, text);
    assert.equal(r.lines.length, 1, `${name}: one warning line, got ${JSON.stringify(r.lines)}`);
    assert.ok(r.lines[0]!.startsWith(`sigma: warning: ignoring the GEMM tuning file ${file}: `), r.lines[0]);
    assert.match(r.lines[0]!, re);
    assert.match(r.lines[0]!, /cache-size rule until it is tuned again \(`sigma tune`/);
    assert.deepEqual([r.tuning, r.config.tuned], [null, false], `${name} is not applied`);
    // The same problem warns once per process.
    assert.deepEqual(applyWith(file, null).lines, []);
  }
  // Tunings of this CPU and build for another thread count: nothing is wrong, nothing is applied.
  const other = applyWith(join(dir, "threads.json"), JSON.stringify({ sigmaTune: 1, entries: [entryFor({ threads: 99 })] }));
  assert.deepEqual([other.status.state, other.lines, other.tuning], ["untuned", [], null]);
});

test("saveTuneEntry keeps other keys' entries, replaces its own and a corrupt file", { skip }, () => {
  const file = join(dir, "save.json");
  writeFileSync(file, "garbage");
  const a = entryFor({ threads: 2 }), b = entryFor({ threads: 3 }), a2 = { ...entryFor({ threads: 2 }), seconds: 7 };
  saveTuneEntry(a, file);
  saveTuneEntry(b, file);
  saveTuneEntry(a2, file);
  const read = readTuneFile(file);
  assert.equal(read.state, "ok");
  if (read.state === "ok") assert.deepEqual(read.entries.map((e) => [e.key.threads, e.seconds]), [[2, 7], [3, 1]]);
  assert.ok(readFileSync(file, "utf8").endsWith("}\n"));
});

test("tune() on a tiny budget picks a winner per class and thread count, sets it and saves it", { skip }, async () => {
  const { n } = native();
  const file = join(dir, "tuned.json");
  try {
    const r = await tune({ budgetSeconds: 1, file });
    assert.equal(r.file, file);
    assert.deepEqual(n.gemmTuning(), r.tuning);
    assert.equal(n.gemmConfig().tuned, true);
    const counts = r.key.threads > 1 ? [1, r.key.threads] : [1];
    for (const threads of counts) {
      for (const cls of ["large", "short-k", "small-m-nt", "small-m-nn"]) {
        const winners = r.table.filter((m) => m.threads === threads && m.shapeClass === cls && m.winner);
        assert.equal(winners.length, 1, `one winner for ${cls} at ${threads} thread(s)`);
        assert.ok(winners[0]!.gflops > 0);
      }
    }
    // Every runnable tile was timed (stage 1) at each thread count.
    const path = n.cpuFeatures().path;
    const rank: Record<string, number> = { portable: 0, "avx2-fma": 1, avx512: 2 };
    for (const t of n.gemmTiles().filter((t) => t.runnable && rank[t.isa]! <= rank[path]!)) {
      assert.ok(r.table.some((m) => m.shapeClass === "large" && m.candidate.startsWith(`${t.name} `)), `${t.name} was timed`);
    }
    const read = readTuneFile(file);
    assert.ok(read.state === "ok" && read.entries.length === 1 && JSON.stringify(read.entries[0]!.tuning) === JSON.stringify(r.tuning));
  } finally {
    n.setGemmTuning(null);
  }
});

test("CLI: sigma tune --json on a tiny budget writes the file that SIGMA_TUNE_FILE names; sigma info shows the tuned kernels", { skip }, async () => {
  const file = join(dir, "cli.json");
  process.env.SIGMA_TUNE_FILE = file;
  try {
    const r = await sigma("tune", "--json", "--budget", "1");
    assert.equal(r.code, 0, r.out);
    const json = JSON.parse(r.out) as { file: string; tuning: GemmTuning; table: unknown[] };
    assert.equal(json.file, file);
    assert.ok(existsSync(file) && json.table.length > 0);
    const info = await sigma("info");
    assert.match(info.out, /^gemm: tile \S+ .*\(tuned\)/m);
    assert.ok(info.out.includes(`gemm tuning file: ${file} (tuned `), info.out);
    // The bf16 path the products take, and whether distributed runs can start.
    assert.match(info.out, native().n.bf16Path() === "avx512-bf16" ? /^bf16 products .*: AVX512_BF16/m : /^bf16 products .*: converted to f32/m);
    assert.match(info.out, /^mpi: (\/\S+sigma_mpi\.node|unavailable \(.*apt-get install openmpi-bin libopenmpi-dev)/m);
    const bad = await sigma("tune", "--budget", "0");
    assert.equal(bad.code, 1);
    assert.match(bad.out, /--budget must be a number above 0/);
  } finally {
    native().n.setGemmTuning(null);
    process.env.SIGMA_TUNE_FILE = join(dir, "unused.json");
  }
});

test("first use: sigma train tunes once, saying so, and the next run reuses the file", { skip }, async () => {
  const data = await tinyData();
  const file = join(dir, "first-use", "tune.json");
  const run = (out: string) => {
    const cfg = join(dir, `${out}.json`);
    writeFileSync(cfg, JSON.stringify(tinyConfig(data, join(dir, out), ROUTERS.rre!, { steps: 2, eval: { every: 0, batches: 1 }, checkpoint: { every: 0, keep: 1 } })));
    const env: NodeJS.ProcessEnv = { ...process.env, SIGMA_TUNE_FILE: file, SIGMA_TUNE_BUDGET: "1" };
    delete env.SIGMA_TUNE;
    return spawnSync(process.execPath, ["--import", "tsx", join(import.meta.dirname, "..", "src", "cli", "main.ts"), "train", "--config", cfg], { encoding: "utf8", env, timeout: 120_000 });
  };
  const first = run("first");
  assert.equal(first.status, 0, first.stderr);
  assert.match(first.stderr, /^tuning the GEMM for this CPU once \(up to 1 s\); `sigma tune` redoes it, SIGMA_TUNE=off skips it$/m);
  assert.ok(existsSync(file), "the first run saved its tuning");
  const second = run("second");
  assert.equal(second.status, 0, second.stderr);
  assert.doesNotMatch(second.stderr, /tuning the GEMM/);
  assert.doesNotMatch(second.stderr, /sigma: warning/);
});
