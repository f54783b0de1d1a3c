// bf16 mixed precision (issue 21): the bf16-input products against their
// plain-TypeScript twin (src/backend/reference/matmul-bf16.ts) on every path
// — the AVX512_BF16 tile where the CPU has it, the converted-f32 path forced
// with setBf16Path, and the avx2-fma and portable kernel paths (converted
// too) — and a training run in bf16 against the same run in f32.
//
// Tolerances. The products of bf16 values are exact in f32, so a native
// result differs from the reference (float64 sums of the same products) only
// by the rounding of its f32 additions: at most (K + 2)·2⁻²⁴·(Σ|a·b| + |c₀|)
// per element (K − 1 additions, the accumulate and one for vdpbf16ps's pair).
// The f32 product of the unrounded inputs misses that bound by far (each
// input moves by up to 2⁻⁹ of itself when rounded), which each test checks
// too: a kernel that forgot to round fails.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { readFileSync } from "node:fs";
import type { Backend, Buf } from "../src/backend/backend.js";
import { getBackend, setBackend } from "../src/backend/index.js";
import { kernelPathSetting, loadNative, type NativeBackend } from "../src/backend/native/index.js";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { roundBf16, roundedBf16 } from "../src/backend/reference/matmul-bf16.js";
import { backward } from "../src/autograd/tape.js";
import * as ops from "../src/ops/index.js";
import { Tensor } from "../src/tensor/tensor.js";
import { Rng } from "../src/util/rng.js";
import { SigmaError } from "../src/util/errors.js";
import { parseTrainConfig } from "../src/train/config.js";
import { Trainer } from "../src/train/trainer.js";
import { Evaluator, runEvalSettings } from "../src/train/evaluate.js";
import { train } from "../src/api/train.js";
import { ROUTERS, cleanup, root, tinyConfig, tinyData } from "./train-fixture.js";

after(cleanup);
const data = await tinyData();
const load = loadNative();
const skip = !load.backend && process.env.SIGMA_ALLOW_NO_NATIVE === "1" ? `native backend unavailable: ${load.error}` : false;
const native = load.backend as NativeBackend;

const rng = new Rng(21);
const f32 = (n: number) => Float32Array.from({ length: n }, () => rng.uniform() * 2 - 1);
const abs = (x: Buf) => Float32Array.from(roundedBf16(x), Math.abs);
const bitsOf = (x: number) => new Uint32Array(Float32Array.of(x).buffer)[0]!;
const fromBits = (u: number) => new Float32Array(Uint32Array.of(u >>> 0).buffer)[0]!;

/**
 * Each path the bf16 products can take on this machine, set up and described
 * by `body`'s argument; the process's settings are restored after.
 */
function eachPath(body: (where: string) => void): void {
  const paths: [string, () => void][] = [];
  if (native.bf16Path() === "avx512-bf16") paths.push(["avx512-bf16", () => native.setBf16Path("auto")]);
  paths.push(["converted-f32 (forced)", () => native.setBf16Path("converted-f32")]);
  const cap = kernelPathSetting().path;
  if (cap !== "portable") paths.push(["avx2-fma kernel path", () => (native.setBf16Path("auto"), native.setKernelPath("avx2-fma"))]);
  paths.push(["portable kernel path", () => (native.setBf16Path("auto"), native.setKernelPath("portable"))]);
  const threads = native.getThreads();
  try {
    for (const [name, set] of paths) {
      native.setKernelPath(cap);
      set();
      if (name.startsWith("avx512")) assert.equal(native.bf16Path(), "avx512-bf16");
      else assert.equal(native.bf16Path(), "converted-f32", name);
      for (const t of [1, 2]) {
        native.setThreads(t);
        body(`${name}, ${t} thread${t > 1 ? "s" : ""}`);
      }
    }
  } finally {
    native.setBf16Path("auto");
    native.setKernelPath(cap);
    native.setThreads(threads);
  }
}

/** The largest excess of |got − want| over the bound (K + 2)·2⁻²⁴·(Σ|ab| + |c₀|); ≤ 0 passes. */
function excess(got: ArrayLike<number>, want: ArrayLike<number>, sumAbs: ArrayLike<number>, c0: ArrayLike<number> | null, K: number): number {
  let worst = -Infinity;
  const u = (K + 2) * 2 ** -24;
  for (let i = 0; i < got.length; i++) {
    const bound = u * (sumAbs[i]! + (c0 ? Math.abs(c0[i]!) : 0)) + 1e-35;
    worst = Math.max(worst, Math.abs(got[i]! - want[i]!) - bound);
  }
  return worst;
}

test("roundBf16: round to nearest even, NaN quiet, subnormals to zero, overflow to infinity", () => {
  const cases: [number, number][] = [
    [1, 1],
    [1 + 2 ** -8, 1], // a tie: the even neighbour (mantissa …0) is 1
    [1 + 3 * 2 ** -8, 1 + 2 ** -6], // a tie between 1 + 2⁻⁷ and 1 + 2⁻⁶: the even one
    [1 + 2 ** -8 + 2 ** -20, 1 + 2 ** -7], // just above the tie: up
    [1 + 2 ** -8 - 2 ** -20, 1], // just below: down
    [-(1 + 3 * 2 ** -8), -(1 + 2 ** -6)],
    [fromBits(0x7f7fffff), Infinity], // the largest f32 rounds past the largest bf16
    [fromBits(0xff7fffff), -Infinity],
    [Infinity, Infinity],
    [fromBits(0x00800000), fromBits(0x00800000)], // the smallest normal stays
    [fromBits(0x007fffff), 0], // subnormals become zero
    [fromBits(0x80000001), -0],
    [3.140625, 3.140625], // exactly representable
  ];
  for (const [x, want] of cases) assert.ok(Object.is(roundBf16(x), want), `roundBf16(${x}) = ${roundBf16(x)}, expected ${want}`);
  assert.ok(Number.isNaN(roundBf16(NaN)));
  assert.equal(bitsOf(roundBf16(fromBits(0x7f800001))), 0x7fc00000, "a signalling NaN comes back quiet, with its top half");
  assert.equal(bitsOf(roundBf16(fromBits(0x12345678))) & 0xffff, 0, "the low half of a rounded value is zero");
});

test("native bf16 rounding equals roundBf16 bit for bit, each packing layout, on every path", { skip }, () => {
  // Random bit patterns (every exponent, NaNs, infinities, subnormals) and
  // exact ties (low half 0x8000). With K = 1 and the other operand 1, each
  // output is one rounded input: c = bf16(x)·1 exactly.
  const n = 4099;
  const xs = Float32Array.from({ length: n }, (_, i) => fromBits(((rng.uniform() * 2 ** 32) >>> 0) & (i % 3 === 0 ? 0xffff8000 : 0xffffffff) | (i % 3 === 0 ? 0x8000 : 0)));
  const want = Array.from(xs, roundBf16);
  const one = Float32Array.of(1);
  const same = (c: Float32Array, where: string) => {
    for (let i = 0; i < n; i++) {
      const w = want[i]!, g = c[i]!;
      // vdpbf16ps adds to +0, so a -0 comes back as +0: compare as numbers.
      if (!(Number.isNaN(w) ? Number.isNaN(g) : g === w)) assert.fail(`${where}: x = ${xs[i]} (bits ${bitsOf(xs[i]!).toString(16)}) came back ${g}, roundBf16 gives ${w}`);
    }
  };
  eachPath((where) => {
    for (const t of [false, true]) {
      // x as a column of A (M = n, K = 1; stored [M,1] or, transposed, [1,M]) …
      const ca = new Float32Array(n);
      native.matmulBf16(ca, xs, one, n, 1, 1, t, false, false);
      same(ca, `${where}, x in A (transA ${t})`);
      // … and as a row of B (N = n; stored [1,N] or, transposed, [N,1]).
      const cb = new Float32Array(n);
      native.matmulBf16(cb, one, xs, 1, n, 1, false, t, false);
      same(cb, `${where}, x in B (transB ${t})`);
    }
  });
});

const SHAPES: [number, number, number][] = [
  [1, 1, 1], [1, 17, 3], [3, 1, 17], [3, 17, 257], [17, 3, 1], [17, 257, 3], [257, 3, 17], [33, 65, 2], [12, 32, 32],
  // past the bf16 driver's blocks (on Zen 4: KC 512, MC 192, NC 2048), with edges; odd K in the last k block
  [13, 2100, 41], [30, 40, 1101], [400, 33, 18],
];

test("matmulBf16 matches the reference twin on odd shapes, every transpose, accumulate on and off, on every path", { skip }, () => {
  const cases = SHAPES.flatMap(([M, N, K]) =>
    [false, true].flatMap((ta) =>
      [false, true].flatMap((tb) =>
        [false, true].map((acc) => {
          const a = f32(M * K), b = f32(K * N), c0 = f32(M * N);
          const want = c0.slice(), sumAbs = new Float32Array(M * N), plain = c0.slice();
          ref.matmulBf16(want, a, b, M, N, K, ta, tb, acc);
          ref.matmul(sumAbs, abs(a), abs(b), M, N, K, ta, tb, false);
          ref.matmul(plain, a, b, M, N, K, ta, tb, acc);
          // The oracle has teeth: the unrounded f32 product breaks the bound.
          assert.ok(excess(plain, want, sumAbs, acc ? c0 : null, K) > 0, `${M}x${N}x${K}: the f32 product should miss the bf16 bound`);
          return { M, N, K, ta, tb, acc, a, b, c0, want, sumAbs };
        }),
      ),
    ),
  );
  eachPath((where) => {
    for (const { M, N, K, ta, tb, acc, a, b, c0, want, sumAbs } of cases) {
      const c = c0.slice();
      native.matmulBf16(c, a, b, M, N, K, ta, tb, acc);
      const e = excess(c, want, sumAbs, acc ? c0 : null, K);
      assert.ok(e <= 0, `${M}x${N}x${K} transA ${ta} transB ${tb} accumulate ${acc} (${where}): exceeds the bound by ${e.toExponential(2)}`);
    }
  });
});

test("groupedMatmulBf16 and its weight gradient match the reference twin (stacked and in parts) on every path", { skip }, () => {
  const groupings = [[0, 5, 0, 12], [3, 1, 17, 0, 33, 2], [64, 64, 64, 64, 17, 3, 64, 64], [1, 2, 4, 1, 0, 3, 2]];
  const offsetsOf = (counts: number[]) => Int32Array.from([0, ...counts.map((_, e) => counts.slice(0, e + 1).reduce((s, c) => s + c, 0))]);
  const parts = (w: Float32Array, E: number) => Array.from({ length: E }, (_, e) => w.slice((e * w.length) / E, ((e + 1) * w.length) / E));
  const flat = (x: Float32Array | Float32Array[]) => (Array.isArray(x) ? Float32Array.from(x.flatMap((p) => Array.from(p))) : x);
  type Case = { label: string; run: (b: Backend) => Float32Array; want: Float32Array; sumAbs: Float32Array; c0: Float32Array | null; K: number };
  const cases: Case[] = [];
  for (const counts of groupings) {
    for (const [N, K] of [[17, 33], [3, 257], [33, 1]]) {
      const E = counts.length, off = offsetsOf(counts), R = off[E]!;
      for (const tw of [true, false]) {
        for (const acc of [false, true]) {
          for (const inParts of [false, true]) {
            const x = f32(R * K), w = f32(E * N * K), y0 = f32(R * N), dy = f32(R * N), dw0 = f32(E * N * K);
            const wArg = inParts ? parts(w, E) : w;
            const fwd = (b: Backend) => {
              const y = y0.slice();
              b.groupedMatmulBf16(y, x, wArg, off, E, N, K, tw, acc);
              return y;
            };
            const sumY = new Float32Array(R * N);
            ref.groupedMatmul(sumY, abs(x), abs(w), off, E, N, K, tw, false);
            const label = `counts ${counts} N ${N} K ${K} transW ${tw} accumulate ${acc}${inParts ? " (parts)" : ""}`;
            cases.push({ label: `groupedMatmulBf16 ${label}`, run: fwd, want: fwd(ref), sumAbs: sumY, c0: acc ? y0 : null, K });
            const bwd = (b: Backend) => {
              const dw = inParts ? parts(dw0.slice(), E) : dw0.slice();
              b.groupedMatmulWeightGradBf16(dw, dy, x, off, E, N, K, tw, acc);
              return flat(dw);
            };
            const sumW = new Float32Array(E * N * K);
            ref.groupedMatmulWeightGrad(sumW, abs(dy), abs(x), off, E, N, K, tw, false);
            cases.push({ label: `groupedMatmulWeightGradBf16 ${label}`, run: bwd, want: bwd(ref), sumAbs: sumW, c0: acc ? dw0 : null, K: Math.max(...counts) });
          }
        }
      }
    }
  }
  eachPath((where) => {
    for (const c of cases) {
      const e = excess(c.run(native), c.want, c.sumAbs, c.c0, c.K);
      assert.ok(e <= 0, `${c.label} (${where}): exceeds the bound by ${e.toExponential(2)}`);
    }
  });
});

test("the bf16 ops' gradients are the reference twin's bf16 products (linear, matmul, groupedMatmul) on every path", { skip }, () => {
  // bf16 is not for float64 gradient checks (docs/training.md): each
  // gradient of a bf16 op is checked against the bf16 product that defines
  // it, computed by the reference backend. loss = Σ out ⊙ G, so dout = G.
  const before = getBackend();
  const R = 17, K = 33, N = 9, E = 3;
  const offsets = Int32Array.of(0, 6, 6, 17);
  const x0 = f32(R * K), w0 = f32(N * K), b0 = f32(N), ex0 = f32(E * N * K), m0 = f32(K * N), G = f32(R * N);
  const leaf = (d: Float32Array, shape: number[]) => {
    const t = Tensor.from(Array.from(d), shape, "float32");
    t.requiresGrad = true;
    return t;
  };
  // The gradients each op gives, on `backend`.
  const opGrads = (backend: Backend): Float32Array[] => {
    setBackend(backend);
    try {
      const out: Float32Array[] = [];
      const g = Tensor.from(Array.from(G), [R, N], "float32");
      const lossOf = (y: Tensor) => backward(ops.sum(ops.mul(y, g)));
      let x = leaf(x0, [R, K]), w = leaf(w0, [N, K]);
      const bias = leaf(b0, [N]);
      lossOf(ops.linear(x, w, bias, "bf16"));
      out.push(x.grad!.data as Float32Array, w.grad!.data as Float32Array, bias.grad!.data as Float32Array);
      x = leaf(x0, [R, K]);
      const m = leaf(m0, [K, N]);
      lossOf(ops.matmul(x, m, false, false, "bf16"));
      out.push(x.grad!.data as Float32Array, m.grad!.data as Float32Array);
      x = leaf(x0, [R, K]);
      const ex = leaf(ex0, [E, N, K]);
      lossOf(ops.groupedMatmul(x, ex, offsets, true, "bf16"));
      out.push(x.grad!.data as Float32Array, ex.grad!.data as Float32Array);
      return out;
    } finally {
      setBackend(before);
    }
  };
  // What they must be: the bf16 products of the backward rules (or, for the check's teeth, the f32 ones).
  const expected = (bf16: boolean): Float32Array[] => {
    const mm = bf16 ? ref.matmulBf16 : ref.matmul;
    const dx = new Float32Array(R * K), dw = new Float32Array(N * K), dm = new Float32Array(K * N), dx2 = new Float32Array(R * K), dx3 = new Float32Array(R * K), dex = new Float32Array(E * N * K);
    mm(dx, G, w0, R, K, N, false, false, false); // dx = G·W
    mm(dw, G, x0, N, K, R, true, false, false); // dW = Gᵀ·x
    const dbias = new Float32Array(N);
    ref.addBiasBackward(dbias, G, R, N);
    mm(dx2, G, m0, R, K, N, false, true, false); // d x = G·mᵀ
    mm(dm, x0, G, K, N, R, true, false, false); // d m = xᵀ·G
    (bf16 ? ref.groupedMatmulBf16 : ref.groupedMatmul)(dx3, G, ex0, offsets, E, K, N, false, false);
    (bf16 ? ref.groupedMatmulWeightGradBf16 : ref.groupedMatmulWeightGrad)(dex, G, x0, offsets, E, N, K, true, false);
    return [dx, dw, dbias, dx2, dm, dx3, dex] as Float32Array[];
  };
  const want = expected(true), f32want = expected(false);
  const names = ["linear dx", "linear dW", "linear dbias", "matmul da", "matmul db", "groupedMatmul dx", "groupedMatmul dW"];
  const diff = (a: Float32Array, b: Float32Array) => Math.max(...Array.from(a, (v, j) => Math.abs(v - b[j]!) / Math.max(1, Math.abs(b[j]!))));
  const TOL = 1e-5;
  want.forEach((w, i) => i !== 2 && assert.ok(diff(f32want[i]!, w) > 10 * TOL, `${names[i]}: the f32 product should differ from the bf16 one`));
  assert.deepEqual(opGrads(ref).map((g, i) => diff(g, want[i]!) <= TOL), want.map(() => true), "the reference backend's ops");
  eachPath((where) => {
    opGrads(native).forEach((g, i) => {
      const d = diff(g, want[i]!);
      assert.ok(d <= TOL, `${names[i]} (${where}): differs from the bf16 product by ${d.toExponential(2)}`);
    });
  });
});

test("a bf16 training step runs every linear, LM-head and expert product in bf16; only the router's stay f32", { skip }, () => {
  // A backend that records each matrix product (kernel and sizes) and runs it natively.
  const before = getBackend();
  const calls: { kernel: string; dims: number[] }[] = [];
  const spy = { ...native } as Backend;
  for (const name of ["matmul", "groupedMatmul", "groupedMatmulWeightGrad", "matmulBf16", "groupedMatmulBf16", "groupedMatmulWeightGradBf16"] as const) {
    const real = native[name] as (...a: unknown[]) => void;
    (spy as unknown as Record<string, unknown>)[name] = (...a: unknown[]) => {
      calls.push({ kernel: name, dims: a.filter((v): v is number => typeof v === "number") });
      real(...a);
    };
  }
  const step = (precision: "f32" | "bf16") => {
    calls.length = 0;
    const t = new Trainer(tinyConfig(data, join(root, `spy-${precision}`), ROUTERS.topk!, { precision, steps: 1, eval: { every: 0, batches: 1 } }));
    setBackend(spy);
    try {
      t.trainStep();
    } finally {
      setBackend(before);
      t.close();
    }
    return calls.slice();
  };
  const E = 4; // the tiny topk config's experts: the router's logits are [R, E]
  const bf = step("bf16");
  assert.ok(["matmulBf16", "groupedMatmulBf16", "groupedMatmulWeightGradBf16"].every((k) => bf.some((c) => c.kernel === k)), "bf16 kernels run");
  const f32Left = bf.filter((c) => !c.kernel.endsWith("Bf16"));
  assert.ok(f32Left.length > 0, "the router's products stay f32");
  for (const c of f32Left) assert.ok(c.kernel === "matmul" && c.dims.slice(0, 3).includes(E), `an f32 product that is not the router's: ${c.kernel}(${c.dims.join(", ")})`);
  assert.ok(step("f32").every((c) => !c.kernel.endsWith("Bf16")), "an f32 run uses no bf16 kernel");
});

// ---- training ----

const STEPS = 50;
/** Per-step losses may drift apart this much (relative); the final losses this much (absolute). */
const STEP_TOL = 0.03, FINAL_TOL = 0.02;

function losses(router: keyof typeof ROUTERS, precision: "f32" | "bf16"): number[] {
  const cfg = tinyConfig(data, join(root, `bf16-${router}-${precision}`), ROUTERS[router]!, { precision, steps: STEPS, eval: { every: 0, batches: 1 } });
  const t = new Trainer(cfg);
  try {
    return Array.from({ length: STEPS }, () => t.trainStep().loss);
  } finally {
    t.close();
  }
}

for (const router of ["dense", "topk"] as const) {
  test(`a tiny ${router} run in bf16 follows the f32 run over ${STEPS} steps on every bf16 path, and is not f32`, { skip }, () => {
    const f = losses(router, "f32");
    assert.deepEqual(losses(router, "f32"), f, "f32 runs are deterministic");
    const paths: ["auto" | "converted-f32", string][] = native.bf16Path() === "avx512-bf16" ? [["auto", "avx512-bf16"], ["converted-f32", "converted-f32"]] : [["converted-f32", "converted-f32"]];
    try {
      for (const [set, name] of paths) {
        native.setBf16Path(set);
        assert.equal(native.bf16Path(), name);
        const b = losses(router, "bf16");
        const rel = b.map((v, i) => Math.abs(v - f[i]!) / Math.abs(f[i]!));
        const worst = Math.max(...rel);
        assert.ok(worst <= STEP_TOL, `${name}: step ${rel.indexOf(worst) + 1} loss ${b[rel.indexOf(worst)]} vs f32 ${f[rel.indexOf(worst)]} (relative ${worst.toExponential(2)} > ${STEP_TOL})`);
        assert.ok(Math.abs(b[STEPS - 1]! - f[STEPS - 1]!) <= FINAL_TOL, `${name}: final loss ${b[STEPS - 1]} vs f32 ${f[STEPS - 1]}`);
        assert.ok(f[STEPS - 1]! < f[0]! - 1, "the run learns");
        // Not silently f32: the rounding shows in the losses from the first step on.
        assert.ok(worst > 1e-5 && rel[0]! > 0, `${name}: the bf16 run's losses equal the f32 run's (max relative difference ${worst.toExponential(2)}): bf16 is not in effect`);
      }
    } finally {
      native.setBf16Path("auto");
    }
  });
}

test("precision in the train config: default f32, bf16 accepted, anything else names the field", () => {
  const base = tinyConfig(data, join(root, "p"), null);
  assert.equal(base.precision, "f32");
  assert.equal(parseTrainConfig({ ...base, precision: "bf16" }).precision, "bf16");
  for (const bad of ["fp16", "BF16", 16, null]) {
    assert.throws(
      () => parseTrainConfig({ ...base, precision: bad }, "run.json"),
      (e: unknown) => e instanceof SigmaError && /precision/.test(e.message) && /"f32", "bf16"/.test(e.message),
      `precision ${JSON.stringify(bad)}`,
    );
  }
});

test("a bf16 run records its precision in state.json, evaluates in f32, and resumes in f32 (allowed, with a note)", async () => {
  const out = join(root, "bf16-resume");
  const cfg = tinyConfig(data, out, ROUTERS.topk!, { precision: "bf16", steps: 4, eval: { every: 0, batches: 1 }, checkpoint: { every: 2, keep: 2 } });
  const starts: unknown[] = [];
  const first = await train(cfg, { stopAtStep: 2, onProgress: (e) => e.kind === "start" && starts.push(e) });
  const state = JSON.parse(readFileSync(join(first.checkpoint, "state.json"), "utf8")) as { config: { precision: string } };
  assert.equal(state.config.precision, "bf16");
  assert.equal((starts[0] as { precision: string }).precision, "bf16");
  assert.ok(["avx512-bf16", "converted-f32", "reference"].includes((starts[0] as { bf16Path: string }).bf16Path));

  // Evaluation of a bf16 trainer is the f32 evaluation of its weights (what a checkpoint's `sigma eval` gives).
  const t = new Trainer({ ...cfg, out: join(root, "bf16-eval") });
  const evaluator = new Evaluator(cfg.data.dir, t.model, runEvalSettings({ batchSize: cfg.batchSize, seed: cfg.seed, evalBatches: 1 }));
  try {
    for (let s = 0; s < 2; s++) t.trainStep();
    const ev = t.evaluate().map((d) => d.loss);
    assert.equal(t.model.precision, "bf16", "training precision restored after evaluation");
    const inBf16 = evaluator.run(t.model, 1).map((d) => d.loss);
    t.model.setPrecision("f32");
    const inF32 = evaluator.run(t.model, 1).map((d) => d.loss);
    assert.deepEqual(ev, inF32);
    assert.notDeepEqual(ev, inBf16);
  } finally {
    evaluator.close();
    t.close();
  }

  const notes: string[] = [];
  const resumed = await train({ ...cfg, precision: "f32" }, { resume: true, log: (l) => notes.push(l) });
  assert.equal(resumed.steps, 4);
  assert.ok(notes.some((l) => /trained with precision bf16; this run continues in f32/.test(l)), notes.join("\n"));
  const after2 = JSON.parse(readFileSync(join(resumed.checkpoint, "state.json"), "utf8")) as { config: { precision: string } };
  assert.equal(after2.config.precision, "f32");
});
