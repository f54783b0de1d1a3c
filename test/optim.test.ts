// The optimizer against numbers worked out by hand (reference AdamW in float64,
// the native fused kernel in float32 on every kernel path), and PanGu-Σ's two
// epsilons reaching the right parameters from the train config, through the
// trainer, into every update path (dense AdamW, the sparse rule in RAM, the
// expert store).
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { kernelPathSetting, loadNative } from "../src/backend/native/index.js";
import { referenceBackend } from "../src/backend/reference/index.js";
import type { Backend } from "../src/backend/backend.js";
import type { ParamInfo } from "../src/nn/module.js";
import { AdamW, HYBRID_DEFAULTS } from "../src/optim/adamw.js";
import { readStackedLayer } from "../src/store/stacked.js";
import { Tensor } from "../src/tensor/tensor.js";
import { Trainer } from "../src/train/trainer.js";
import { ROUTERS, cleanup, root, tinyConfig, tinyData } from "./train-fixture.js";

after(cleanup);
const data = await tinyData();

// ------------------------------------------------------------ AdamW by hand
//
// β1 = 0.8, β2 = 0.95, lr = 0.1, weight decay 0.1; every parameter starts at
// [1, −2]. Step 1 has gradient [0.5, −0.1] (gradScale 1); step 2 has gradient
// [2, −0.4] at gradScale 0.5, so g = [1, −0.2].
//
// Step 1 (t = 1): bias corrections 1 − 0.8 = 0.2 and 1 − 0.95 = 0.05.
//   element 0: m = 0.2·0.5 = 0.1,        v = 0.05·0.5² = 0.0125;  m̂ = 0.1/0.2 = 0.5,     v̂ = 0.0125/0.05 = 0.25, √v̂ = 0.5
//   element 1: m = 0.2·(−0.1) = −0.02,   v = 0.05·0.1² = 0.0005;  m̂ = −0.02/0.2 = −0.1, v̂ = 0.0005/0.05 = 0.01, √v̂ = 0.1
// Step 2 (t = 2): bias corrections 1 − 0.8² = 0.36 and 1 − 0.95² = 0.0975.
//   element 0: m = 0.8·0.1 + 0.2·1 = 0.28,             v = 0.95·0.0125 + 0.05·1² = 0.061875
//   element 1: m = 0.8·(−0.02) + 0.2·(−0.2) = −0.056,  v = 0.95·0.0005 + 0.05·0.2² = 0.002475
// Update, weight decay decoupled (on p, not added to the gradient):
//   p ← p − lr·(m̂/(√v̂ + ε) + wd·p)
const M2 = [0.28, -0.056];
const V2 = [0.061875, 0.002475];
const mh2 = [0.28 / 0.36, -0.056 / 0.36];
const sv2 = [Math.sqrt(0.061875 / 0.0975), Math.sqrt(0.002475 / 0.0975)];

// w: dense, ε = 0.5, decays.
const w1 = [1 - 0.1 * (0.5 / (0.5 + 0.5) + 0.1 * 1), -2 - 0.1 * (-0.1 / (0.1 + 0.5) + 0.1 * -2)]; // [0.94, −1.96333…]
const w2 = [w1[0]! - 0.1 * (mh2[0]! / (sv2[0]! + 0.5) + 0.1 * w1[0]!), w1[1]! - 0.1 * (mh2[1]! / (sv2[1]! + 0.5) + 0.1 * w1[1]!)];
// b: dense, ε = 0.5, no decay (a bias).
const b1 = [1 - 0.1 * (0.5 / (0.5 + 0.5)), -2 - 0.1 * (-0.1 / (0.1 + 0.5))]; // [0.95, −1.98333…]
const b2 = [b1[0]! - 0.1 * (mh2[0]! / (sv2[0]! + 0.5)), b1[1]! - 0.1 * (mh2[1]! / (sv2[1]! + 0.5))];
// e: expert, ε = 0.25, decays.
const e1 = [1 - 0.1 * (0.5 / (0.5 + 0.25) + 0.1 * 1), -2 - 0.1 * (-0.1 / (0.1 + 0.25) + 0.1 * -2)]; // [0.92333…, −1.95142…]
const e2 = [e1[0]! - 0.1 * (mh2[0]! / (sv2[0]! + 0.25) + 0.1 * e1[0]!), e1[1]! - 0.1 * (mh2[1]! / (sv2[1]! + 0.25) + 0.1 * e1[1]!)];

const GRAD1 = [0.5, -0.1];
const GRAD2 = [2, -0.4];
const SCALE2 = 0.5;
const hyper = { beta1: 0.8, beta2: 0.95, weightDecay: 0.1 };

const close = (got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string) => {
  assert.equal(got.length, want.length, what);
  let [worst, at] = [-1, 0];
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i]! - want[i]!) / Math.max(1, Math.abs(want[i]!));
    if (!Number.isNaN(worst) && !(d <= worst)) [worst, at] = [d, i]; // a NaN is the worst and stays
  }
  assert.ok(worst <= tol, `${what}[${at}]: ${got[at]} but by hand ${want[at]} (relative difference ${worst})`);
};

for (const dtype of ["float64", "float32"] as const) {
  const tol = dtype === "float64" ? 1e-12 : 1e-6;
  test(`AdamW (${dtype}) matches two steps worked out by hand: bias correction, ε per group, decoupled decay, gradScale`, () => {
    const param = (group: "dense" | "expert", decay: boolean): ParamInfo => ({ tensor: Tensor.from([1, -2], [2], dtype), group, decay });
    const params = new Map([["w", param("dense", true)], ["b", param("dense", false)], ["e", param("expert", true)]]);
    const opt = new AdamW(params, { dense: { ...hyper, eps: 0.5 }, expert: { ...hyper, eps: 0.25 } });
    const setGrad = (g: number[]) => {
      for (const p of params.values()) p.tensor.grad = Tensor.from(g, [2], dtype);
    };
    const values = (name: string) => params.get(name)!.tensor.data;
    setGrad(GRAD1);
    opt.update(0.1);
    close(values("w"), w1, tol, "w after step 1");
    close(values("b"), b1, tol, "b after step 1");
    close(values("e"), e1, tol, "e after step 1");
    setGrad(GRAD2);
    opt.update(0.1, undefined, SCALE2);
    close(values("w"), w2, tol, "w after step 2");
    close(values("b"), b2, tol, "b after step 2");
    close(values("e"), e2, tol, "e after step 2");
    for (const [name, { m, v }] of opt.moments()) {
      close(m.data, M2, tol, `${name}: m after step 2`);
      close(v.data, V2, tol, `${name}: v after step 2`);
    }
  });
}

// The fused kernel itself, on both backends: the hand values repeated over
// lengths that reach the SIMD body, its tail, and two threads' chunks (2^15
// each); the native one on every kernel path this CPU runs, 1 and 2 threads.
function kernelMatchesHand(be: Backend, where: string): void {
  for (const n of [2, 37, 70_001]) {
    for (const [eps, wd, want1, want2] of [[0.5, 0.1, w1, w2], [0.5, 0, b1, b2], [0.25, 0.1, e1, e2]] as const) {
      const rep = (v: readonly number[]) => Float32Array.from({ length: n }, (_, i) => v[i % 2]!);
      const [p, m, v] = [rep([1, -2]), new Float32Array(n), new Float32Array(n)];
      const at = `${where}, n ${n}, eps ${eps}, wd ${wd}`;
      be.adamw(p, rep(GRAD1), m, v, n, 0.1, 0.8, 0.95, eps, wd, 1, 1);
      close(p, rep(want1), 1e-6, `${at}: p after step 1`);
      be.adamw(p, rep(GRAD2), m, v, n, 0.1, 0.8, 0.95, eps, wd, 2, SCALE2);
      close(p, rep(want2), 1e-6, `${at}: p after step 2`);
      close(m, rep(M2), 1e-6, `${at}: m after step 2`);
      close(v, rep(V2), 1e-6, `${at}: v after step 2`);
    }
  }
}

test("the reference adamw kernel (float32) matches the hand-worked steps for ε = 0.5 and 0.25, with and without decay", () => {
  kernelMatchesHand(referenceBackend, "reference");
});

const load = loadNative();
const skipNative = !load.backend && process.env.SIGMA_ALLOW_NO_NATIVE === "1" ? `native backend unavailable: ${load.error}` : false;
test("the native adamw kernel (float32) matches the hand-worked steps on every kernel path, 1 and 2 threads", { skip: skipNative }, () => {
  const native = load.backend;
  assert.ok(native, `native backend unavailable: ${load.error} (set SIGMA_ALLOW_NO_NATIVE=1 where that is expected)`);
  const PATHS = ["auto", "avx2-fma", "portable"] as const;
  const threads = native.getThreads();
  try {
    for (const path of PATHS.slice(PATHS.indexOf(kernelPathSetting().path))) {
      native.setKernelPath(path);
      for (const t of [1, 2]) {
        native.setThreads(t);
        kernelMatchesHand(native, `native ${native.cpuFeatures().path} path, ${t} thread${t > 1 ? "s" : ""}`);
      }
    }
  } finally {
    native.setKernelPath(kernelPathSetting().path);
    native.setThreads(threads);
  }
});

// ------------------------------------------------------------ ε per group, config → trainer → optimizer

test("PanGu-Σ's defaults in the optimizer: ε 1e-8 for dense parameters, 1e-20 for experts (the train config's: train.test.ts)", () => {
  assert.equal(HYBRID_DEFAULTS.dense.eps, 1e-8);
  assert.equal(HYBRID_DEFAULTS.expert.eps, 1e-20);
  const o = new AdamW(new Map());
  assert.equal(o.hyper.dense.eps, 1e-8);
  assert.equal(o.hyper.expert.eps, 1e-20);
});

// An ε of 1e-20 makes one Adam step move a weight by lr·g/(|g| + 1e-20) = ±lr;
// an ε of 1e3 moves it by lr·g/(|g| + 1e3), a hundredth of lr at most. Each
// path runs one step both ways round (dense huge and experts tiny, then the
// reverse): epsilons swapped anywhere on the way, or one group's ε ignored for
// a fixed value, move the wrong group by the wrong amount.
const TINY = 1e-20, HUGE = 1e3;
const epsRun = (name: string, extra: Record<string, unknown>, denseEps: number, expertEps: number) => {
  const t = new Trainer(tinyConfig(data, join(root, `eps-${name}-${denseEps}`), ROUTERS.topk!, { ...extra, optim: { lr: 1e-2, warmupSteps: 0, denseEps, expertEps, weightDecay: 0, clip: null, ...(extra.optim as object) } }));
  const named = t.model.namedParameters();
  const pick = (group: "dense" | "expert") => [...named].filter(([, p]) => p.group === group).map(([n, p]) => [n, Float32Array.from(p.tensor.data)] as const);
  const experts = () => (t.ecss ? (t.ecss.flush(), Object.entries(readStackedLayer(t.ecss.store, 0, false).params)) : pick("expert"));
  const before = { dense: pick("dense"), experts: experts() };
  const r = t.trainStep();
  const after = { dense: pick("dense"), experts: experts() };
  t.close();
  const moved = (a: (readonly [string, Float32Array])[], b: (readonly [string, Float32Array])[]) => {
    assert.deepEqual(a.map(([n]) => n), b.map(([n]) => n));
    let most = 0;
    a.forEach(([, x], i) => x.forEach((v, j) => (most = Math.max(most, Math.abs(v - b[i]![1][j]!)))));
    return most;
  };
  assert.ok(before.dense.length > 0 && before.experts.length > 0);
  return { lr: r.lr, dense: moved(before.dense, after.dense), expert: moved(before.experts, after.experts) };
};

const checkMove = (what: string, most: number, eps: number, lr: number) => {
  if (eps === TINY) assert.ok(most > 0.99 * lr && most < 1.01 * lr, `the ${what} moved by up to ${most}, not lr = ${lr}: they did not get their ε ${eps}`);
  else assert.ok(most > 0 && most < lr / 100, `the ${what} moved by up to ${most}, expected under lr/100 = ${lr / 100}: they did not get their ε ${eps}`);
};

for (const [name, extra] of [
  ["dense AdamW", {}],
  ["sparse rule in RAM", { optim: { sparseExperts: true } }],
  ["expert store", { store: { enabled: true, memory: "1MiB" } }],
] as const) {
  test(`optim.denseEps reaches the dense parameters and optim.expertEps the experts (${name})`, () => {
    for (const [denseEps, expertEps] of [[HUGE, TINY], [TINY, HUGE]]) {
      const { lr, dense, expert } = epsRun(name.replace(/ /g, "-"), extra, denseEps!, expertEps!);
      assert.equal(lr, 1e-2);
      checkMove("dense parameters", dense, denseEps!, lr);
      checkMove("experts", expert, expertEps!, lr);
    }
  });
}
