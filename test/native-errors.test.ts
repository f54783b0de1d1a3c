// Wrong-size or wrong-type arrays passed to the native layer raise a JS error
// naming the kernel and the argument — never a crash. Checked for every kernel.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { KERNEL_NAMES, type Backend } from "../src/backend/backend.js";
import { loadNative } from "../src/backend/native/index.js";
import { referenceBackend } from "../src/backend/reference/index.js";
import { CASES, clone } from "./kernel-cases.js";

const load = loadNative();
const skip = !load.backend && process.env.SIGMA_ALLOW_NO_NATIVE === "1" ? `native backend unavailable: ${load.error}` : false;

function call(b: Backend, name: string, args: unknown[]): unknown {
  return (b[name as keyof Backend] as (...a: unknown[]) => unknown)(...args);
}

for (const name of KERNEL_NAMES) {
  test(`native ${name}: bad arguments are errors that name the argument`, { skip }, () => {
    const native = load.backend;
    assert.ok(native, `native backend unavailable: ${load.error}`);
    const base = CASES[name]()[0]!.args;
    const floatAt = base.findIndex((a) => a instanceof Float32Array);
    // (a) a Float64Array where a Float32Array belongs
    const a = base.map(clone);
    if (floatAt >= 0) {
      a[floatAt] = Float64Array.from(a[floatAt] as Float32Array);
    } else {
      const intAt = a.findIndex((x) => x instanceof Int32Array);
      a[intAt] = Float32Array.from(a[intAt] as Int32Array);
    }
    assert.throws(() => call(native, name, a), (e: Error) => e instanceof TypeError && e.message.startsWith(`${name}: argument "`) && /must be an? (Float32|Int32)Array/.test(e.message));
    // (b) every buffer one element too short, one at a time
    base.forEach((arg, i) => {
      if (!(arg instanceof Float32Array || arg instanceof Int32Array) || arg.length === 0) return;
      const b = base.map(clone);
      b[i] = (arg as Float32Array).subarray(0, arg.length - 1);
      let threw: Error | null = null;
      try {
        call(native, name, b);
      } catch (e) {
        threw = e as Error;
      }
      // Outputs sized by other arguments (e.g. a scatter target) may legitimately be longer than needed;
      // when a shorter buffer is accepted, it must be because the sizes do not need its last element.
      if (threw) assert.match(threw.message, new RegExp(`^${name}: argument "\\w+" (has \\d+ elements but the sizes given need \\d+|\\[\\d+\\] = -?\\d+ is outside|ends at)`));
    });
    // (c) a wrong argument count, and a non-integer size
    assert.throws(() => call(native, name, base.slice(0, -1).map(clone)), (e: Error) => e.message.startsWith(`${name}: expected `));
    const sizeAt = base.findIndex((x) => typeof x === "number" && Number.isInteger(x) && x > 0);
    if (sizeAt >= 0) {
      const c = base.map(clone);
      c[sizeAt] = 1.5;
      assert.throws(() => call(native, name, c), (e: Error) => e.message.startsWith(`${name}: argument "`));
    }
  });
}

test("native index kernels reject out-of-range indices, naming the argument and position", { skip }, () => {
  const native = load.backend!;
  assert.ok(native);
  const cases: [string, number, RegExp][] = [
    ["embedding", 2, /^embedding: argument "ids" \[\d+\] = 1000000 is outside \[0, 13\)/],
    ["embeddingBackward", 2, /^embeddingBackward: argument "ids"/],
    ["gatherRows", 2, /^gatherRows: argument "idx"/],
    ["scatterAddRows", 2, /^scatterAddRows: argument "idx"/],
    ["combine", 2, /^combine: argument "idx"/],
    ["combineBackward", 4, /^combineBackward: argument "idx"/],
    ["permuteByExpert", 2, /^permuteByExpert: argument "expertIds"/],
    ["crossEntropy", 3, /^crossEntropy: argument "targets"/],
    ["crossEntropyBackward", 3, /^crossEntropyBackward: argument "targets"/],
  ];
  for (const [name, at, re] of cases) {
    const args = CASES[name as keyof typeof CASES]()[0]!.args.map(clone);
    (args[at] as Int32Array)[0] = 1000000;
    assert.throws(() => call(native, name, args), (e: Error) => e instanceof RangeError && re.test(e.message), name);
  }
  const off = Int32Array.from([0, 5, 3]);
  assert.throws(() => native.groupedMatmul(new Float32Array(50), new Float32Array(50), new Float32Array(50), off, 2, 1, 1, true, false), /groupedMatmul: argument "offsets" decreases at expert 1/);
});

test("attention: kvHeads that do not divide H are a RangeError naming kvHeads, native and reference alike", { skip }, () => {
  const native = load.backend!;
  const [H, D, cap] = [4, 3, 5];
  const args = (G: number) => [new Float32Array(H * D), new Float32Array(H), new Float32Array(H * D), new Float32Array(cap * H * D), new Float32Array(cap * H * D), 1, 1, 2, H, D, cap, 0.5, G];
  for (const G of [3, 0, 8]) {
    assert.throws(() => call(native, "attention", args(G)), (e: Error) => e instanceof RangeError && /attention: argument "kvHeads"/.test(e.message), `native G=${G}`);
    assert.throws(() => call(referenceBackend, "attention", args(G)), (e: Error) => e instanceof RangeError && /kvHeads/.test(e.message), `reference G=${G}`);
  }
  // A divisor works on both.
  for (const be of [native, referenceBackend]) call(be, "attention", args(2));
});

test("native grouped products with per-expert parts reject a wrong count, a wrong type and a short part, naming it", { skip }, () => {
  const native = load.backend!;
  assert.ok(native);
  const [E, N, K] = [3, 4, 5];
  const off = Int32Array.from([0, 2, 2, 6]);
  const x = new Float32Array(6 * K), y = new Float32Array(6 * N);
  const good = () => Array.from({ length: E }, () => new Float32Array(N * K));
  native.groupedMatmul(y, x, good(), off, E, N, K, true, false); // accepted
  assert.throws(() => native.groupedMatmul(y, x, good().slice(0, 2), off, E, N, K, true, false), /RangeError: groupedMatmul: argument "w" has 2 parts but E = 3/);
  const short = good();
  short[1] = new Float32Array(N * K - 1);
  assert.throws(() => native.groupedMatmul(y, x, short, off, E, N, K, true, false), (e: Error) => e instanceof RangeError && /^groupedMatmul: argument "w" part 1 has 19 elements but N·K = 20/.test(e.message));
  const wrong = good() as unknown[];
  wrong[2] = new Float64Array(N * K);
  assert.throws(() => native.groupedMatmul(y, x, wrong as Float32Array[], off, E, N, K, true, false), (e: Error) => e instanceof TypeError && /argument "w" part 2 must be a Float32Array/.test(e.message));
  assert.throws(() => native.groupedMatmulWeightGrad(good().slice(0, 1), y, x, off, E, N, K, true, false), /RangeError: groupedMatmulWeightGrad: argument "dw" has 1 parts but E = 3/);
});

// SIGMA_KERNEL_PATH caps the kernels' instruction set for the whole process;
// any other value is an error that names the variable (not a silent fallback).
test("SIGMA_KERNEL_PATH: caps the kernel path; a bad value is an error naming the variable", { skip }, () => {
  const run = (value: string) =>
    spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e",
      'const b = await import("./src/backend/index.ts"); const n = await import("./src/backend/native/index.ts"); b.getBackend(); console.log(n.loadNative().backend.cpuFeatures().path);'],
    { cwd: fileURLToPath(new URL("..", import.meta.url)), env: { ...process.env, SIGMA_KERNEL_PATH: value }, encoding: "utf8" });
  const best = load.backend!.cpuFeatures();
  const ok = run("portable");
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(ok.stdout.trim(), "portable");
  const avx2 = run("avx2-fma");
  assert.equal(avx2.status, 0, avx2.stderr);
  assert.equal(avx2.stdout.trim(), best.path === "portable" ? "portable" : "avx2-fma");
  const bad = run("avx9");
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /SIGMA_KERNEL_PATH="avx9" is not a kernel path: use auto, avx2-fma, portable/);
});
