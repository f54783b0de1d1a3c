// One conformance suite: every kernel of the Backend contract runs on the
// native and the reference backend on the same random inputs (odd sizes
// included), and the results must agree. A kernel missing from the table
// fails the suite. Without the native addon the suite fails, unless
// SIGMA_ALLOW_NO_NATIVE=1 says that is expected (then it is skipped, loudly).
import { test } from "node:test";
import assert from "node:assert/strict";
import { KERNEL_NAMES, type Backend, type Buf, type KernelName } from "../src/backend/backend.js";
import { loadNative } from "../src/backend/native/index.js";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { CASES, clone, type Case } from "./kernel-cases.js";

const load = loadNative();
const allowMissing = process.env.SIGMA_ALLOW_NO_NATIVE === "1";
const skip = !load.backend && allowMissing ? `native backend unavailable: ${load.error}` : false;

function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / Math.max(1, Math.abs(b[i]!)));
  return worst;
}

function runCase(native: Backend, name: KernelName, c: Case): void {
  const nArgs = c.args.map(clone);
  const rArgs = c.args.map(clone);
  const call = (b: Backend, args: unknown[]) => (b[name] as (...a: unknown[]) => unknown)(...args);
  const nr = call(native, nArgs);
  const rr = call(ref, rArgs);
  if (c.result) assert.ok(Math.abs((nr as number) - (rr as number)) <= c.tol * Math.max(1, Math.abs(rr as number)), `${name} ${c.label}: returned ${nr}, reference ${rr}`);
  for (const i of c.outputs) {
    // An output in parts (per-expert buffers) is compared part by part.
    const flat = (x: unknown): number[] => (Array.isArray(x) ? x.flatMap((p: Buf) => Array.from(p)) : Array.from(x as Buf));
    const d = maxRelDiff(flat(nArgs[i]), flat(rArgs[i]));
    assert.ok(d <= c.tol, `${name} ${c.label}: output argument ${i} differs from the reference by ${d.toExponential(2)} (tolerance ${c.tol})`);
  }
}

test("the conformance table covers every kernel of the contract", () => {
  assert.deepEqual(Object.keys(CASES).sort(), [...KERNEL_NAMES].sort());
});

test("the native backend is available", { skip }, () => {
  assert.ok(load.backend, `native backend unavailable: ${load.error} (set SIGMA_ALLOW_NO_NATIVE=1 where that is expected)`);
});

for (const name of KERNEL_NAMES) {
  test(`conformance: ${name} (native vs reference, 1 and 2 threads)`, { skip }, () => {
    const native = load.backend!;
    assert.ok(native, `native backend unavailable: ${load.error}`);
    for (const threads of [1, 2]) {
      native.setThreads(threads);
      for (const c of CASES[name]()) runCase(native, name, c);
    }
  });
}
