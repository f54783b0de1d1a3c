// One conformance suite: every kernel of the Backend contract runs on the
// native and the reference backend on the same random inputs (odd sizes
// included), and the results must agree. A kernel missing from the table
// fails the suite. Without the native addon the suite fails, unless
// SIGMA_ALLOW_NO_NATIVE=1 says that is expected (then it is skipped, loudly).
import { test } from "node:test";
import assert from "node:assert/strict";
import { KERNEL_NAMES, type Backend, type Buf, type KernelName } from "../src/backend/backend.js";
import { kernelPathSetting, loadNative } from "../src/backend/native/index.js";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { CASES, clone, type Case } from "./kernel-cases.js";
import { Rng } from "../src/util/rng.js";

const load = loadNative();
const allowMissing = process.env.SIGMA_ALLOW_NO_NATIVE === "1";
const skip = !load.backend && allowMissing ? `native backend unavailable: ${load.error}` : false;

function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / Math.max(1, Math.abs(b[i]!)));
  return worst;
}

type Call = (b: Backend, args: unknown[]) => unknown;
const callOf = (name: KernelName): Call => (b, args) => (b[name] as (...a: unknown[]) => unknown)(...args);
// An output in parts (per-expert buffers) is compared part by part.
const flat = (x: unknown): number[] => (Array.isArray(x) ? x.flatMap((p: Buf) => Array.from(p)) : Array.from(x as Buf));

/** The reference's result and outputs for a case, computed once and compared against every native run. */
function referenceRun(name: KernelName, c: Case): { result: unknown; outputs: number[][] } {
  const args = c.args.map(clone);
  const result = callOf(name)(ref, args);
  return { result, outputs: c.outputs.map((i) => flat(args[i])) };
}

function runCase(native: Backend, name: KernelName, c: Case, expected: ReturnType<typeof referenceRun>, where: string): void {
  const nArgs = c.args.map(clone);
  const nr = callOf(name)(native, nArgs);
  const rr = expected.result;
  if (c.result) assert.ok(Math.abs((nr as number) - (rr as number)) <= c.tol * Math.max(1, Math.abs(rr as number)), `${name} ${c.label} (${where}): returned ${nr}, reference ${rr}`);
  c.outputs.forEach((i, j) => {
    const d = maxRelDiff(flat(nArgs[i]), expected.outputs[j]!);
    assert.ok(d <= c.tol, `${name} ${c.label} (${where}): output argument ${i} differs from the reference by ${d.toExponential(2)} (tolerance ${c.tol})`);
  });
}

test("the conformance table covers every kernel of the contract", () => {
  assert.deepEqual(Object.keys(CASES).sort(), [...KERNEL_NAMES].sort());
});

test("the native backend is available", { skip }, () => {
  assert.ok(load.backend, `native backend unavailable: ${load.error} (set SIGMA_ALLOW_NO_NATIVE=1 where that is expected)`);
});

// Every kernel path this CPU can run: the run-time choice, then each one below
// it held as the ceiling (on a CPU without AVX-512 the first two coincide);
// none above a cap set with SIGMA_KERNEL_PATH.
const ALL_PATHS = ["auto", "avx2-fma", "portable"] as const;
const PATHS = ALL_PATHS.slice(ALL_PATHS.indexOf(kernelPathSetting().path));

/** Runs body once per kernel path and thread count, restoring the process's setting after. */
function eachPath(native: NonNullable<typeof load.backend>, body: (where: string) => void): void {
  try {
    for (const path of PATHS) {
      native.setKernelPath(path);
      for (const threads of [1, 2]) {
        native.setThreads(threads);
        body(`${native.cpuFeatures().path} path, ${threads} thread${threads > 1 ? "s" : ""}`);
      }
    }
  } finally {
    native.setKernelPath(kernelPathSetting().path);
  }
}

for (const name of KERNEL_NAMES) {
  test(`conformance: ${name} (native vs reference, each kernel path, 1 and 2 threads)`, { skip }, () => {
    const native = load.backend!;
    assert.ok(native, `native backend unavailable: ${load.error}`);
    const cases = CASES[name]().map((c) => ({ c, expected: referenceRun(name, c) }));
    eachPath(native, (where) => {
      for (const { c, expected } of cases) runCase(native, name, c, expected, where);
    });
  });
}

// The small-M product with B stored [K,N] starts its column strips on B's
// 64-byte boundaries when N is a multiple of 16, and gathers the columns
// before the first boundary and after the last into one split strip. Views of
// one buffer at float offsets 0–15 put B at every position in a cache line.
test("conformance: matmul with B at each float offset of a 64-byte line (native vs reference, each kernel path, 1 and 2 threads)", { skip }, () => {
  const native = load.backend!;
  const rng = new Rng(77);
  const f32 = (n: number) => Float32Array.from({ length: n }, () => rng.uniform() * 2 - 1);
  eachPath(native, (where) => {
    for (const [M, N, K] of [[64, 48, 33], [5, 32, 13], [96, 160, 20], [17, 64, 9], [33, 80, 7], [8, 16, 40]]) {
      const big = f32(K! * N! + 16), a = f32(M! * K!);
      for (let off = 0; off < 16; off++) {
        const b = big.subarray(off, off + K! * N!);
        for (const acc of [false, true]) {
          const c0 = f32(M! * N!), cn = c0.slice(), cr = c0.slice();
          native.matmul(cn, a, b, M!, N!, K!, false, false, acc);
          ref.matmul(cr, a, b, M!, N!, K!, false, false, acc);
          const d = maxRelDiff(cn, cr);
          assert.ok(d <= 1e-5 * Math.sqrt(K!), `${M}x${N}x${K} B at float offset ${off} acc=${acc} (${where}): differs from the reference by ${d.toExponential(2)}`);
        }
      }
    }
  });
});

// ECSS's sparse step calls adamwExperts where it called adamw per expert (two spans each): every value
// must come out bit for bit the same, whatever the split over threads.
test("conformance: adamwExperts equals adamw per expert bit for bit (each kernel path, 1 and 2 threads)", { skip }, () => {
  const native = load.backend!;
  const rng = new Rng(5);
  const f32 = (n: number, s: number) => Float32Array.from({ length: n }, () => (rng.uniform() * 2 - 1) * s);
  eachPath(native, (where) => {
    for (const [E, P, decayed] of [[3, 40001, 39000], [9, 70001, 70001], [1, 1, 0]]) {
      const records = Array.from({ length: E! }, () => {
        const r = f32(3 * P!, 1e-3);
        for (let i = 2 * P!; i < 3 * P!; i++) r[i] = Math.abs(r[i]!);
        return r;
      });
      const grads = Array.from({ length: E! }, () => f32(P!, 1e-3));
      const steps = Int32Array.from({ length: E! }, (_, e) => 1 + 3 * e);
      const many = records.map((r) => r.slice()), one = records.map((r) => r.slice());
      native.adamwExperts(many, grads, steps, P!, E!, decayed!, 1e-3, 0.9, 0.95, 1e-8, 0.1, 0.7);
      one.forEach((r, e) => {
        for (const [o, n, wd] of [[0, decayed!, 0.1], [decayed!, P! - decayed!, 0]] as const) {
          if (n > 0) native.adamw(r.subarray(o, o + n), grads[e]!.subarray(o, o + n), r.subarray(P! + o, P! + o + n), r.subarray(2 * P! + o, 2 * P! + o + n), n, 1e-3, 0.9, 0.95, 1e-8, wd, steps[e]!, 0.7);
        }
      });
      many.forEach((r, e) => assert.deepEqual(r, one[e], `E ${E} P ${P} decayed ${decayed}, expert ${e} (${where})`));
    }
  });
});
