// The native addon's fuzz target (issue 19), in CI: test/addon-fuzz-child.ts
// calls every export of the addon with random and hostile arguments, on the
// main thread and on a worker_thread at once, in a child process so that a
// crash is seen instead of killing the runner. Every call must return or
// throw a TypeError/RangeError naming the export, and the child must exit 0.
//
// SIGMA_FUZZ_SEED fixes the seed (else a random one, printed); SIGMA_FUZZ_COUNT
// sets the calls per thread (20000 here, about two seconds). A longer run:
//   node --expose-gc --import tsx test/addon-fuzz-child.ts --count 200000 --seed S [--workers 1]
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { KERNEL_NAMES } from "../src/backend/backend.js";
import { SIGNATURES, type Summary } from "./addon-fuzz-child.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const addonPath = process.env.SIGMA_TEST_ADDON ?? join(root, "build", "Release", "sigma_native.node");
const skip = !existsSync(addonPath) && process.env.SIGMA_ALLOW_NO_NATIVE === "1" ? `native addon not built (${addonPath})` : false;

test("addon fuzz: every export, hostile arguments, two JS threads at once: each call returns or throws a JS error naming it", { skip }, (t) => {
  const count = Number(process.env.SIGMA_FUZZ_COUNT ?? 20000);
  const seed = process.env.SIGMA_FUZZ_SEED ?? String(Math.floor(Math.random() * 2 ** 32));
  t.diagnostic(`seed ${seed}, ${count} calls per thread (SIGMA_FUZZ_SEED=${seed} reproduces this run)`);
  const args = ["--expose-gc", "--import", "tsx", "test/addon-fuzz-child.ts", "--count", String(count), "--seed", seed, "--workers", "1", "--addon", addonPath];
  const r = spawnSync(process.execPath, args, { cwd: root, encoding: "utf8", timeout: 180_000 });
  const how = `reproduce: node ${args.join(" ")} (add --trace, without --workers, to see the last call before a crash)`;
  const why = r.error ? r.error.message : r.signal ? `killed by ${r.signal}` : `exit ${r.status}`;
  assert.ok(r.status === 0 && !r.error, `the fuzz child failed (${why}), seed ${seed}\n${how}\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-3000)}`);
  const s = JSON.parse(r.stdout.trim().split("\n").pop()!) as Summary;
  t.diagnostic(`${s.calls} calls in ${s.seconds} s: ${s.returned} returned, ${s.threw} threw a TypeError/RangeError naming the export, ${s.foreign} ended by the fuzz's own getters`);
  assert.equal(s.bad, 0, `calls that threw something else (seed ${seed}):\n${s.badCalls.join("\n")}`);
  assert.equal(s.calls, 2 * count);
  assert.deepEqual(s.unknownExports, [], "exports the fuzz has no signature for: add them to SIGNATURES in test/addon-fuzz-child.ts");
  const exported = Object.keys(s.byExport);
  for (const name of KERNEL_NAMES) assert.ok(exported.includes(name), `kernel ${name} is not exported`);
  for (const name of exported) {
    const e = s.byExport[name]!;
    assert.ok(e.calls > 0, `${name} was never called`);
    // With arguments, both outcomes: some calls valid enough to run, some rejected.
    if ((SIGNATURES[name]?.length ?? 0) > 0) assert.ok(e.returned > 0 && e.threw > 0, `${name}: ${JSON.stringify(e)}`);
  }
});

// The fuzz found this one (seed 3213729261): adamwExperts read the elements of
// its parts before anything bounded E, so a sparse array of 2^31 − 1 holes with
// E = 2^31 − 1 made one handle per hole until the kernel ran out of memory.
// Every export that takes an array of parts must refuse it from a small
// array's length first. In a child: the bug is a memory bomb, not a throw.
test("addon: a sparse array of 2^31 − 1 parts with E = 2^31 − 1 is refused at once by every export that takes parts", { skip }, () => {
  const script = `
    const { createRequire } = require("node:module");
    const a = createRequire(${JSON.stringify(root + "/")})(${JSON.stringify(addonPath)});
    const E = 2 ** 31 - 1, holes = new Array(E), f = new Float32Array(64), off = new Int32Array(5);
    const calls = {
      groupedMatmul: () => a.groupedMatmul(f, f, holes, off, E, 2, 2, false, false),
      groupedMatmulBf16: () => a.groupedMatmulBf16(f, f, holes, off, E, 2, 2, false, false),
      groupedMatmulWeightGrad: () => a.groupedMatmulWeightGrad(holes, f, f, off, E, 2, 2, false, false),
      groupedMatmulWeightGradSquares: () => a.groupedMatmulWeightGradSquares(holes, f, f, off, E, 2, 2, false, false),
      groupedMatmulWeightGradBf16: () => a.groupedMatmulWeightGradBf16(holes, f, f, off, E, 2, 2, false, false),
      adamwExperts: () => a.adamwExperts(holes, holes, new Int32Array(4).fill(1), 2, E, 0, 1e-3, 0.9, 0.95, 1e-8, 0, 1),
    };
    for (const [name, call] of Object.entries(calls)) {
      try { call(); console.log(name + ": returned"); }
      catch (e) { console.log(name + ": " + e.constructor.name + ": " + e.message); }
    }`;
  const r = spawnSync(process.execPath, ["-e", script], { cwd: root, encoding: "utf8", timeout: 30_000 });
  assert.ok(r.status === 0 && !r.error, `the child failed (${r.error?.message ?? r.signal ?? r.status}):\n${r.stdout}\n${r.stderr}`);
  const lines = r.stdout.trim().split("\n");
  assert.equal(lines.length, 6, r.stdout);
  for (const line of lines) assert.match(line, /^(\w+): RangeError: \1: /, line);
});
