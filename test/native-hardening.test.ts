// Issue 19: every call into the native addon returns or throws a JS error.
// One regression test per reported hazard, each run in a child process so
// that a crash (the bug coming back) fails the test instead of killing the
// runner: sizes whose products wrap 64 bits, degenerate sizes that left a
// dimension unbounded, buffers detached or resized by JS that runs during the
// call (getters on an array of parts), index arrays rewritten during the call
// (an output sharing their memory, another thread through a
// SharedArrayBuffer), out-of-memory inside a threaded kernel, setThreads
// racing a kernel from a worker_thread, and regions whose workers wake late.
//
// SIGMA_TEST_ADDON=path runs them against another build of the addon (to
// watch them fail on the code before the fix).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const addonPath = process.env.SIGMA_TEST_ADDON ?? join(root, "build", "Release", "sigma_native.node");
const skip = !existsSync(addonPath) && process.env.SIGMA_ALLOW_NO_NATIVE === "1" ? `native addon not built (${addonPath})` : false;

// What every child script starts with: `a` the addon, `f(n)` a Float32Array,
// `attempt(fn)` the outcome of one call, `report(x)` prints it as JSON.
const PRELUDE = `
import { createRequire } from "node:module";
const ADDON = ${JSON.stringify(addonPath)};
const a = createRequire(ADDON)(ADDON);
const f = (n) => new Float32Array(n);
const attempt = (fn) => { try { fn(); return { returned: true }; } catch (e) { return { threw: e?.constructor?.name, message: String(e?.message ?? e) }; } };
const report = (x) => console.log(JSON.stringify(x));
const detach = (buf) => { structuredClone(buf, { transfer: [buf] }); globalThis.gc?.(); };
`;

interface Outcome {
  returned?: boolean;
  threw?: string;
  message?: string;
}

/** Runs `body` after PRELUDE in a child node; fails unless it exits 0; returns what it reported (one JSON line each). */
function run(body: string, opts: { timeoutMs?: number; memoryKiB?: number } = {}): Outcome[] {
  const args = ["--expose-gc", "--input-type=module", "-e", PRELUDE + body];
  // A memory cap keeps the pre-fix behaviour of the out-of-memory cases (a
  // 16 GB allocation, a 3 GB scratch buffer per thread) a quick abort.
  const r = opts.memoryKiB
    ? spawnSync("/bin/sh", ["-c", `ulimit -v ${opts.memoryKiB} && exec "$0" "$@"`, process.execPath, ...args], { encoding: "utf8", timeout: opts.timeoutMs ?? 30_000 })
    : spawnSync(process.execPath, args, { encoding: "utf8", timeout: opts.timeoutMs ?? 30_000 });
  const why = r.error ? `${r.error.message}` : r.signal ? `killed by ${r.signal}` : `exit ${r.status}`;
  assert.ok(r.status === 0 && !r.error, `the child process failed (${why}): a crash or hang is the bug\n${r.stderr.slice(-2000)}`);
  return r.stdout.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as Outcome);
}

function assertThrew(o: Outcome | undefined, type: string, re: RegExp): void {
  assert.ok(o, "the child reported nothing");
  assert.equal(o.returned, undefined, `expected a ${type} matching ${re}, but the call returned`);
  assert.equal(o.threw, type, `expected a ${type}, got ${o.threw}: ${o.message}`);
  assert.match(o.message!, re);
}

test("bmm: sizes whose products wrap 64 bits (the issue's repro, verbatim) are a RangeError, not a segfault", { skip }, () => {
  const [o] = run(`const c = f(16), A = f(16), b = f(16);
report(attempt(() => a.bmm(c, A, b, 2**22, 2**21, 2**21, 2**21, false, false, false)));`);
  assertThrew(o, "RangeError", /^bmm: argument "c" would need 4194304·2097152·2097152 elements: the sizes given are too large \(their product overflows 64 bits\)$/);
});

test("attention and attentionBackward: B·H·Tq and B·Tq·H·D wrapping to 0 are a RangeError, not a segfault", { skip }, () => {
  // B·H·Tq = 2^30·2^30·16 = 2^64: every product the old checks used was 0.
  const [fwd, bwd] = run(`const g = () => f(16);
report(attempt(() => a.attention(g(), g(), g(), g(), g(), 2**30, 16, 16, 2**30, 1, 16, 1)));
report(attempt(() => a.attentionBackward(g(), g(), g(), g(), g(), g(), g(), g(), g(), 2**30, 16, 16, 2**30, 1, 16, 1)));`);
  assertThrew(fwd, "RangeError", /^attention: argument "\w+" would need [\d·]+ elements: .*overflows 64 bits/);
  assertThrew(bwd, "RangeError", /^attentionBackward: argument "\w+" would need [\d·]+ elements: .*overflows 64 bits/);
});

test("groupedMatmul and groupedMatmulWeightGrad: E·N·K wrapping to 0 is a RangeError, not a segfault", { skip }, () => {
  const [fwd, bwd] = run(`
// Forward: one row (expert 0), E = 2^22, N = K = 2^21: x and y hold exactly
// what one row needs, and E·N·K = 2^64 made the stacked w look large enough.
{ const E = 2**22, N = 2**21, K = 2**21;
  const off = new Int32Array(E + 1).fill(1); off[0] = 0;
  report(attempt(() => a.groupedMatmul(f(N), f(K), f(16), off, E, N, K, true, false))); }
// Weight gradient: no rows at all, E = 16, N = K = 2^30: every expert's gradient (2^60 floats) is zeroed.
{ const E = 16, N = 2**30, K = 2**30;
  report(attempt(() => a.groupedMatmulWeightGrad(f(16), f(16), f(16), new Int32Array(E + 1), E, N, K, true, false))); }`);
  assertThrew(fwd, "RangeError", /^groupedMatmul: argument "w" would need 4194304·2097152·2097152 elements: .*overflows 64 bits/);
  assertThrew(bwd, "RangeError", /^groupedMatmulWeightGrad: argument "dw" would need 16·1073741824·1073741824 elements: .*overflows 64 bits/);
});

test("sizes that no array bounds (a zero elsewhere) do no work: every such call returns at once", { skip }, () => {
  // Before: attentionBackward with Tq = 0 looped over B·H = 2^62 pairs (a hang);
  // bmm, softmax and addBias counted up to 2^31 empty products or rows.
  const t0 = Date.now();
  const outs = run(`const big = 2**31 - 1;
report(attempt(() => a.attentionBackward(f(0), f(0), f(0), f(0), f(0), f(0), f(0), f(0), f(0), big, 0, 0, big, 1, 0, 1)));
report(attempt(() => a.attention(f(0), f(0), f(0), f(0), f(0), big, 0, 0, big, 1, 0, 1)));
report(attempt(() => a.bmm(f(0), f(0), f(0), big, big, 0, 0, false, false, false)));
report(attempt(() => a.softmax(f(0), f(0), big, 0)));
report(attempt(() => a.softmaxBackward(f(0), f(0), f(0), big, 0)));
report(attempt(() => a.addBias(f(0), f(0), f(0), big, 0)));`, { timeoutMs: 20_000 });
  assert.equal(outs.length, 6);
  for (const o of outs) assert.deepEqual(o, { returned: true });
  assert.ok(Date.now() - t0 < 15_000, `took ${Date.now() - t0} ms`);
});

test("attention with D = 0 is a RangeError (no array bounded kvCap, and the kernel kept 48·Tk floats of scratch)", { skip }, () => {
  const [fwd, bwd] = run(`const big = 2**31 - 1;
report(attempt(() => a.attention(f(0), f(16), f(0), f(0), f(0), 1, 16, big, 1, 0, big, 1)));
report(attempt(() => a.attentionBackward(f(0), f(0), f(0), f(0), f(0), f(0), f(0), f(0), f(16), 1, 16, big, 1, 0, big, 1)));`, { memoryKiB: 3_000_000 });
  assertThrew(fwd, "RangeError", /^attention: argument "D" must be at least 1$/);
  assertThrew(bwd, "RangeError", /^attentionBackward: argument "D" must be at least 1$/);
});

test("fmaPeak: a thread count above 1024 is a RangeError (it sized a per-thread vector: 16 GB for 2^31 − 1)", { skip }, () => {
  const [o, ok] = run(`report(attempt(() => a.fmaPeak(1, 2**31 - 1)));
report({ returned: typeof a.fmaPeak(10, 2) === "number" });`, { memoryKiB: 3_000_000 });
  assertThrew(o, "RangeError", /^fmaPeak: argument "threads" must be an integer from 1 to 1024$/);
  assert.deepEqual(ok, { returned: true });
});

test("out of memory inside a threaded kernel is a RangeError naming it, and the pool keeps working", { skip }, () => {
  // Two query blocks on two threads, each wanting 48·Tk floats (3.2 GB) of
  // scratch under a 3 GB cap: std::bad_alloc on a pool worker was std::terminate.
  const outs = run(`a.setThreads(2);
const Tk = 2**24, B = 2;
report(attempt(() => a.attention(f(B * 16), f(B * 16), f(B * 16), f(B * Tk), f(B * Tk), B, 16, Tk, 1, 1, Tk, 1)));
const n = 192, x = f(n * n).fill(1), c = f(n * n);
a.matmul(c, x, x, n, n, n, false, false, false);
report({ returned: c.every((v) => v === n) });`, { memoryKiB: 3_000_000, timeoutMs: 60_000 });
  assertThrew(outs[0], "RangeError", /^attention: out of memory for the kernel's scratch buffers/);
  assert.deepEqual(outs[1], { returned: true }, "a threaded matmul after the failed region gave a wrong result");
});

test("detached arrays are a TypeError naming the argument, even where the sizes need no element", { skip }, () => {
  const outs = run(`const d = () => { const x = f(16); detach(x.buffer); return x; };
report(attempt(() => a.add(d(), f(4), f(4), 0)));
report(attempt(() => a.matmul(f(4), d(), f(4), 0, 0, 0, false, false, false)));
report(attempt(() => a.embedding(f(4), f(4), (() => { const i = new Int32Array(4); detach(i.buffer); return i; })(), 0, 1)));
report(attempt(() => a.groupedMatmul(f(4), f(4), [f(4), d()], Int32Array.from([0, 0, 0]), 2, 2, 2, true, false)));
report(attempt(() => a.add(d(), f(4), f(4), 4)));`);
  assertThrew(outs[0], "TypeError", /^add: argument "out" is detached \(its ArrayBuffer was transferred\)/);
  assertThrew(outs[1], "TypeError", /^matmul: argument "a" is detached/);
  assertThrew(outs[2], "TypeError", /^embedding: argument "ids" is detached/);
  assertThrew(outs[3], "TypeError", /^groupedMatmul: argument "w" part 1 is detached/);
  assertThrew(outs[4], "TypeError", /^add: argument "out" is detached/);
});

test("a getter in an array of parts that detaches an earlier part, or the output: a TypeError, not a write into freed memory", { skip }, () => {
  // Before, part 0's pointer was taken, then part 1's getter transferred (and
  // the GC freed) part 0's buffer, and the kernel wrote 4 MB of gradient there.
  // Likewise y's pointer is not taken before the parts' getters have run.
  const [o, fwd] = run(`const E = 2, N = 512, K = 1024;
const off = Int32Array.from([0, 4, 8]);
{ const dw = [f(N * K), null];
  Object.defineProperty(dw, 1, { get() { detach(dw[0].buffer); return f(N * K); } });
  report(attempt(() => a.groupedMatmulWeightGrad(dw, f(8 * N), f(8 * K), off, E, N, K, true, false))); }
{ const y = f(8 * N), w = [f(N * K), null];
  Object.defineProperty(w, 1, { get() { detach(y.buffer); return f(N * K); } });
  report(attempt(() => a.groupedMatmul(y, f(8 * K), w, off, E, N, K, true, false))); }`);
  assertThrew(o, "TypeError", /^groupedMatmulWeightGrad: argument "dw" part 0 is detached/);
  assertThrew(fwd, "TypeError", /^groupedMatmul: argument "y" is detached/);
});

test("a sparse array of parts as long as a huge E: the offsets' length bounds E before the parts are read", { skip }, () => {
  // Reading the parts first (for their getters) must not mean reading 2^31 − 1
  // holes into a 16 GB vector: E + 1 offsets must exist before.
  const [o, w] = run(`const E = 2**31 - 1;
report(attempt(() => a.groupedMatmul(f(1), f(1), new Array(E), new Int32Array(1), E, 1, 1, true, false)));
report(attempt(() => a.groupedMatmulWeightGrad(new Array(E), f(1), f(1), new Int32Array(1), E, 1, 1, true, false)));`, { memoryKiB: 3_000_000 });
  assertThrew(o, "RangeError", /^groupedMatmul: argument "offsets" has 1 elements but the sizes given need 2147483648$/);
  assertThrew(w, "RangeError", /^groupedMatmulWeightGrad: argument "offsets" has 1 elements but the sizes given need 2147483648$/);
});

test("a getter in an array of parts that shrinks an earlier part's resizable buffer: a RangeError", { skip }, () => {
  const [o] = run(`const E = 2, N = 256, K = 1024;
const rb = new ArrayBuffer(4 * N * K, { maxByteLength: 4 * N * K });
const dw = [new Float32Array(rb), null];
Object.defineProperty(dw, 1, { get() { rb.resize(0); return f(N * K); } });
report(attempt(() => a.groupedMatmulWeightGrad(dw, f(8 * N), f(8 * K), Int32Array.from([0, 4, 8]), E, N, K, false, false)));`);
  assertThrew(o, "RangeError", /^groupedMatmulWeightGrad: argument "dw" part 0 has 0 elements but N·K = 262144$/);
});

test("a getter in an array of parts that rewrites offsets: the offsets are checked after it ran", { skip }, () => {
  // Before, offsets were checked first, then the getter set expert 1's rows to 2^30.
  const [o] = run(`const E = 2, N = 8, K = 8;
const off = Int32Array.from([0, 1, 2]);
const w = [f(N * K), null];
Object.defineProperty(w, 1, { get() { off[2] = 2**30; return f(N * K); } });
report(attempt(() => a.groupedMatmul(f(2 * N), f(2 * K), w, off, E, N, K, true, false)));`);
  assertThrew(o, "RangeError", /^groupedMatmul: argument "offsets" ends at 1073741824 but only 2 rows are available$/);
});

test("index arrays that share memory with an output: the kernel reads the indices as checked", { skip }, () => {
  // gatherRows: ids a view of out's own memory (zeros when checked); writing
  // row 0 of out turned ids[1..] into float bits, and row 1 was read from 7 GB away.
  // permuteByExpert: order the same array as expertIds.
  const outs = run(`{ const C = 4, n = 8, buf = new ArrayBuffer(4 * n * C);
  const out = new Float32Array(buf), ids = new Int32Array(buf, 0, n), x = f(2 * C).fill(1e30);
  report(attempt(() => a.gatherRows(out, x, ids, n, C)));
  report({ returned: out.every((v) => v === Math.fround(1e30)) }); }
{ const ids = Int32Array.from([2, 0, 1, 0, 2, 1, 1]), offsets = new Int32Array(4);
  report(attempt(() => a.permuteByExpert(ids, offsets, ids, 7, 3)));
  report({ returned: JSON.stringify([...ids, ...offsets]) === JSON.stringify([1, 3, 2, 5, 6, 0, 4, 0, 2, 5, 7]) }); }`);
  assert.deepEqual(outs, [{ returned: true }, { returned: true }, { returned: true }, { returned: true }]);
});

test("an index array on a SharedArrayBuffer rewritten by another thread during calls: errors or results, never a crash", { skip }, () => {
  // A worker flips the last index between 0 and 2^30 while the main thread
  // gathers: checked good, then read bad, was an out-of-bounds read.
  const [o] = run(`import { Worker } from "node:worker_threads";
const n = 4096, C = 16, sab = new SharedArrayBuffer(4 * n), stop = new Int32Array(new SharedArrayBuffer(4));
const w = new Worker("const { workerData: d } = require('node:worker_threads'); const i = new Int32Array(d.sab), s = d.stop, l = i.length - 1; while (Atomics.load(s, 0) === 0) { i[l] = 1 << 30; i[l] = 0; }", { eval: true, execArgv: [], workerData: { sab, stop } });
await new Promise((r) => w.once("online", r));
const idx = new Int32Array(sab), x = f(8 * C), out = f(n * C);
let threw = 0, returned = 0;
for (const t0 = Date.now(); Date.now() - t0 < 1000; ) {
  try { a.gatherRows(out, x, idx, n, C); returned++; } catch (e) { if (!(e instanceof RangeError) || !/^gatherRows: argument "idx"/.test(e.message)) throw e; threw++; }
}
Atomics.store(stop, 0, 1);
await w.terminate();
report({ returned: returned + threw > 100 });`);
  assert.deepEqual(o, { returned: true });
});

test("setThreads from a worker_thread while the main thread runs kernels: no deadlock, both get right results", { skip }, () => {
  // Before, setThreads stopped the pool's workers under a running region: the
  // caller waited forever for workers that had quit (or raced on the worker list).
  const [o] = run(`import { Worker } from "node:worker_threads";
const body = \`
  const a = require(\${JSON.stringify(ADDON)});
  const { parentPort } = require("node:worker_threads");
  const n = 128, x = new Float32Array(n * n).fill(1), c = new Float32Array(n * n);
  let bad = 0, i = 0;
  for (const t0 = Date.now(); Date.now() - t0 < 1500; i++) {
    a.setThreads(1 + (i % 3));
    a.matmul(c, x, x, n, n, n, false, false, false);
    if (!c.every((v) => v === n)) bad++;
  }
  parentPort.postMessage({ bad, i });\`;
const w = new Worker(body, { eval: true, execArgv: [] });
const done = new Promise((r) => w.once("message", r));
const n = 160, x = f(n * n).fill(1), c = f(n * n);
let bad = 0, i = 0;
for (const t0 = Date.now(); Date.now() - t0 < 1500; i++) {
  a.matmul(c, x, x, n, n, n, false, false, false);
  if (!c.every((v) => v === n)) bad++;
}
const theirs = await done;
report({ returned: bad === 0 && theirs.bad === 0 && i > 0 && theirs.i > 0 });`, { timeoutMs: 30_000 });
  assert.deepEqual(o, { returned: true });
});

test("regions whose workers fall asleep between calls: every task runs exactly once, on whichever thread claims it", { skip }, () => {
  // The pool's tasks are claimed from a shared counter (threadpool.cpp): a
  // worker that wakes late takes only what is still unclaimed. A task run
  // twice would add its rows' residual twice; one never run would leave zeros.
  const [o] = run(`process.env.SIGMA_SPIN_US = "5"; // workers sleep after 5 µs idle: most calls find them asleep
const N = 4096, K = 64, x = f(K).map((_, i) => (i % 7) - 3), w = f(N * K).map((_, i) => ((i * 37) % 11) - 5);
const y = f(N), want = f(N), res = f(N), rows = Int32Array.of(0, 1);
for (let n = 0; n < N; n++) { let s = 0; for (let k = 0; k < K; k++) s += x[k] * w[n * K + k]; want[n] = s; }
let bad = 0, calls = 0;
const busy = (us) => { const end = performance.now() + us / 1000; while (performance.now() < end); };
for (const threads of [2, 3]) {
  a.setThreads(threads);
  for (let i = 0; i < 1500; i++, calls++) {
    res.fill(0);
    a.decodeMatmulF32(y, x, w, rows, 1, N, K, null, 0, res);
    if (!res.every((v, n) => v === want[n])) bad++;
    busy(i % 40);
  }
}
report({ returned: bad === 0 && calls === 3000 });`, { timeoutMs: 60_000 });
  assert.deepEqual(o, { returned: true });
});

test("no JS runs while a wrapper reads numbers, booleans or typed arrays: valueOf, Number objects and Proxies are TypeErrors, untouched", { skip }, () => {
  const outs = run(`let touched = 0;
const sneaky = { valueOf() { touched++; return 2; } };
report(attempt(() => a.matmul(f(4), f(4), f(4), sneaky, 2, 2, false, false, false)));
report(attempt(() => a.matmul(f(4), f(4), f(4), new Number(2), 2, 2, false, false, false)));
report(attempt(() => a.matmul(f(4), f(4), f(4), 2, 2, 2, new Boolean(false), false, false)));
report(attempt(() => a.add(new Proxy(f(4), { get(t, k) { touched++; return Reflect.get(t, k); } }), f(4), f(4), 4)));
const parts = new Proxy([f(4), f(4)], { get(t, k) { touched++; return Reflect.get(t, k); } });
report(attempt(() => a.groupedMatmul(f(4), f(4), parts, Int32Array.from([0, 1, 2]), 2, 2, 2, true, false)));
report({ returned: touched === 0 });`);
  assertThrew(outs[0], "TypeError", /^matmul: argument "M" must be a number$/);
  assertThrew(outs[1], "TypeError", /^matmul: argument "M" must be a number$/);
  assertThrew(outs[2], "TypeError", /^matmul: argument "transA" must be a boolean$/);
  assertThrew(outs[3], "TypeError", /^add: argument "out" must be a Float32Array/);
  assertThrew(outs[4], "TypeError", /^groupedMatmul: argument "w" must be a Float32Array/);
  assert.deepEqual(outs[5], { returned: true }, "a valueOf or Proxy trap ran");
});

test("a getter in an array of parts that calls the same kernel: both calls give the right result", { skip }, () => {
  // The inner call runs while the outer one reads its parts, before it has
  // taken any pointer or copied its offsets: each must see its own offsets.
  const [o] = run(`const N = 2, K = 3;
const ones = (n) => f(n).fill(1);
// Expert 0's weights are ones, expert 1's twos: rows 0–1 of y get K, rows 2–4 get 2K.
const w = [ones(N * K), null];
const inner = { y: f(1 * N), off: Int32Array.from([0, 1]) };
Object.defineProperty(w, 1, { get() { a.groupedMatmul(inner.y, ones(K), [ones(N * K)], inner.off, 1, N, K, true, false); return ones(N * K).fill(2); } });
const y = f(5 * N);
a.groupedMatmul(y, ones(5 * K), w, Int32Array.from([0, 2, 5]), 2, N, K, true, false);
report({ returned: JSON.stringify([...y]) === JSON.stringify([K, K, K, K, 2 * K, 2 * K, 2 * K, 2 * K, 2 * K, 2 * K]) && inner.y.every((v) => v === K) });`);
  assert.deepEqual(o, { returned: true });
});
