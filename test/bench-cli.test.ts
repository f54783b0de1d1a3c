// `npm run bench` with no name lists the benchmarks and runs none (all of them take most of an hour).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const bench = (...args: string[]) => spawnSync(process.execPath, ["--import", "tsx", "bench/main.ts", ...args], { cwd: root, encoding: "utf8", timeout: 60_000 });

/** Every benchmark module: the files of bench/ that export a run() (the others are shared helpers). */
const dir = new URL("../bench/", import.meta.url);
const modules = readdirSync(dir).filter((f) => f.endsWith(".ts") && /^export async function run\(/m.test(readFileSync(new URL(f, dir), "utf8"))).map((f) => f.slice(0, -3));

test("the listing finds the benchmark modules", () => assert.ok(modules.length >= 8 && modules.includes("train"), modules.join()));

test("bench with no name lists every benchmark with a description and a duration, runs none, exits 0", () => {
  const p = bench();
  assert.equal(p.status, 0, p.stderr);
  assert.doesNotMatch(p.stdout, /=== bench/, "nothing may run");
  assert.match(p.stdout, /npm run bench -- all/, "the listing says how to run them all");
  for (const name of modules) assert.match(p.stdout, new RegExp(`^  ${name} +\\S.* \\[rough: \\d+–\\d+ min\\]$`, "m"), `a line for ${name}`);
});

test("bench with an unknown name exits 2 and names the known ones, all included", () => {
  const p = bench("nope");
  assert.equal(p.status, 2);
  assert.match(p.stderr, /unknown benchmark "nope"; known: gemm, .*, or all/);
  assert.doesNotMatch(p.stdout, /=== bench/);
});

// bench/native/*.cpp are built only when a benchmark runs (blas needs OpenBLAS, which CI lacks), so a
// change to the kernels' headers could break them unseen: each must at least compile against them.
test("the benchmarks' native programs compile against the kernels' current headers", () => {
  const gyp = JSON.parse(readFileSync(join(root, "binding.gyp"), "utf8")) as { targets: { cflags_cc: string[] }[] };
  const src = join(root, "bench/native");
  for (const f of readdirSync(src).filter((n) => n.endsWith(".cpp"))) {
    const r = spawnSync(process.env.CXX ?? "g++", [...gyp.targets[0]!.cflags_cc, "-fsyntax-only", `-I${join(root, "native/include")}`, `-I${join(root, "native/src/kernels")}`, join(src, f)], { encoding: "utf8" });
    assert.equal(r.status, 0, `${f}: ${r.stderr}`);
  }
});

test("bench comm without MPI says so in one line (and in its --json object) and measures nothing", () => {
  const p = spawnSync(process.execPath, ["--import", "tsx", "bench/main.ts", "comm", "--json"], { cwd: root, encoding: "utf8", timeout: 60_000, env: { ...process.env, SIGMA_NO_MPI: "1" } });
  assert.equal(p.status, 0, p.stderr);
  assert.match(p.stderr, /^bench comm: skipped: MPI is not available: SIGMA_NO_MPI=1 is set$/m);
  assert.deepEqual(JSON.parse(p.stdout), { comm: { skipped: "MPI is not available: SIGMA_NO_MPI=1 is set" } });
});
