// The step profiler (src/backend/profile.ts): off by default, it times each
// backend kernel call and the trainer's sections while on, counts a kernel
// called inside a section once (exclusiveKernelMs), and puts the plain
// backend back when stopped.
import { test } from "node:test";
import assert from "node:assert/strict";
import { getBackend } from "../src/backend/index.js";
import { exclusiveKernelMs, profiling, section, startProfile, stopProfile } from "../src/backend/profile.js";

test("the profiler times kernels and sections, and restores the backend", () => {
  const plain = getBackend();
  assert.equal(profiling(), false);
  assert.equal(section("off", () => 7), 7, "off: section only runs its function");
  const p = startProfile();
  try {
    assert.notEqual(getBackend(), plain, "profiling wraps the backend");
    assert.throws(() => startProfile(), /already running/);
    const be = getBackend();
    const x = Float32Array.from({ length: 1000 }, (_, i) => i / 1000);
    const y = new Float32Array(1000);
    be.add(y, x, x, 1000);
    be.add(y, y, x, 1000);
    assert.equal(y[999], Math.fround(Math.fround(2 * x[999]!) + x[999]!), "the wrapper forwards arguments and results");
    be.mul(new Float32Array(1000), x, x, 1000);
    const sq = section("norm", () => be.sumSquares(x, 1000));
    assert.ok(Math.abs(sq - x.reduce((s, v) => s + v * v, 0)) < 1e-3);
    assert.throws(() => section("bad", () => be.add(y, x, x, 2000)), /./, "a kernel's error still reaches the caller");
  } finally {
    stopProfile();
  }
  assert.equal(getBackend(), plain, "stopping puts the plain backend back");
  // Two calls outside any section, and the refused one inside "bad".
  const add = p.kernels.get("add")!;
  assert.equal(add.calls, 3);
  assert.ok(add.inSectionMs <= add.ms);
  assert.equal(exclusiveKernelMs(add), add.ms - add.inSectionMs);
  const ss = p.kernels.get("sumSquares")!;
  assert.equal(ss.calls, 1);
  assert.equal(ss.inSectionMs, ss.ms, "a kernel inside a section is counted as in it");
  assert.equal(exclusiveKernelMs(ss), 0);
  assert.equal(p.sections.get("norm")!.calls, 1);
  assert.ok(p.sections.get("norm")!.ms >= ss.ms);
  assert.equal(p.sections.get("bad")!.calls, 1, "a section that throws is still timed");
  const mul = p.kernels.get("mul")!;
  assert.equal(mul.calls, 1);
  assert.equal(mul.inSectionMs, 0, "a kernel called outside every section is not counted as in one");
  assert.equal(p.kernels.get("matmul")!.calls, 0);
});
