// ECSS: the expert store's format and errors, training with the store against
// training in RAM under the same sparse rule (RRE, top-k, MoGE), resume, and
// crash recovery (a process killed mid-write recovers to the last checkpoint).
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { openSync, writeSync, closeSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Trainer } from "../src/train/trainer.js";
import { resumeTrainer, saveTrainCheckpoint } from "../src/train/checkpoint.js";
import { ExpertStoreFile } from "../src/store/file.js";
import { RECORD_HEADER, parseBytes, payloadFloats, recordOffset, tensorOffsets } from "../src/store/format.js";
import { AdamW } from "../src/optim/adamw.js";
import { Tensor } from "../src/tensor/tensor.js";
import { SigmaError } from "../src/util/errors.js";
import { convertCheckpoint } from "../src/train/ecss-convert.js";
import { parseTrainConfig } from "../src/train/config.js";
import { openModelSource } from "../src/serve/open.js";
import type { ModelConfig } from "../src/models/config.js";
import { ROUTERS, cleanup, root, tinyConfig, tinyData } from "./train-fixture.js";

after(cleanup);
const data = await tinyData();
const sigmaError = (re: RegExp) => (e: unknown) => e instanceof SigmaError && re.test(e.message);

/** One record's worth of the tiny model: params, m, v of each expert, from either kind of trainer. */
function expertPayloads(t: Trainer): Float32Array[] {
  const c = t.config.model as ModelConfig;
  const E = c.experts!.count;
  const lay = { experts: E, width: c.width, expertWidth: c.experts!.width ?? c.ffnWidth };
  const o = tensorOffsets(lay);
  const out: Float32Array[] = [];
  if (t.ecss) {
    t.ecss.flush();
    const s = t.ecss.store;
    for (let l = 0; l < c.sparseLayers; l++) {
      for (let e = 0; e < E; e++) {
        const rec = new Uint8Array(s.recordBytes(l));
        s.read(l, e, rec);
        out.push(new Float32Array(rec.buffer, RECORD_HEADER, payloadFloats(lay)).slice());
      }
    }
    return out;
  }
  const moments = t.optimizer.moments();
  const FC = lay.expertWidth * lay.width;
  for (let l = 0; l < c.sparseLayers; l++) {
    const path = `blocks.${c.denseLayers + l}.moe`;
    for (let e = 0; e < E; e++) {
      const rec = new Float32Array(payloadFloats(lay));
      const put = (base: number, pick: (name: string) => Tensor) => {
        rec.set(pick("w1").data.subarray(e * FC, (e + 1) * FC), base + o.w1);
        rec.set(pick("w2").data.subarray(e * FC, (e + 1) * FC), base + o.w2);
        rec.set(pick("b1").data.subarray(e * lay.expertWidth, (e + 1) * lay.expertWidth), base + o.b1);
        rec.set(pick("b2").data.subarray(e * lay.width, (e + 1) * lay.width), base + o.b2);
      };
      const params = t.model.namedParameters();
      put(0, (n) => params.get(`${path}.${n}`)!.tensor);
      put(o.P, (n) => moments.get(`${path}.${n}`)!.m);
      put(2 * o.P, (n) => moments.get(`${path}.${n}`)!.v);
      out.push(rec);
    }
  }
  return out;
}

const denseParams = (t: Trainer): Map<string, Float32Array> => new Map([...t.model.namedParameters()].filter(([, p]) => p.group === "dense").map(([n, p]) => [n, p.tensor.data.slice() as Float32Array]));

function relErr(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let d = 0, m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(a[i]!));
  }
  return m === 0 ? d : d / m;
}

/**
 * ‖a − b‖ / ‖a‖ over all of the vectors together. Per tensor would be
 * ill-posed: e.g. the attention key bias has an exactly zero gradient
 * (softmax ignores a shift shared by a row's logits), so Adam turns its
 * rounding noise into ±lr steps whatever path computed it.
 */
function globalRelErr(a: Float32Array[], b: Float32Array[]): number {
  let d = 0, n = 0;
  a.forEach((x, i) => {
    const y = b[i]!;
    assert.equal(x.length, y.length);
    for (let j = 0; j < x.length; j++) {
      d += (x[j]! - y[j]!) ** 2;
      n += x[j]! ** 2;
    }
  });
  return Math.sqrt(d / n);
}

function assertSameState(a: Trainer, b: Trainer, tol: number, what: string): void {
  const da = denseParams(a), db = denseParams(b);
  assert.deepEqual([...da.keys()], [...db.keys()]);
  const dense = globalRelErr([...da.values()], [...db.values()]);
  assert.ok(dense <= tol, `${what}: dense parameters differ by ${dense} (relative L2)`);
  const ea = expertPayloads(a), eb = expertPayloads(b);
  const P = ea[0]!.length / 3;
  for (const [part, lo] of [["weights", 0], ["m", P], ["v", 2 * P]] as const) {
    const err = globalRelErr(ea.map((x) => x.subarray(lo, lo + P)), eb.map((x) => x.subarray(lo, lo + P)));
    assert.ok(err <= tol, `${what}: expert ${part} differ by ${err} (relative L2)`);
  }
}

const sparseInRam = { optim: { lr: 3e-3, warmupSteps: 2, sparseExperts: true } };
// About one tiny record (53 KiB): nearly every step evicts and writes back.
const storeOpts = (memory = "64KiB") => ({ store: { enabled: true, memory } });

for (const router of ["rre", "topk", "moge"]) {
  test(`${router}: training with the expert store gives the parameters and moments of in-RAM training under the sparse rule`, () => {
    const b = new Trainer(tinyConfig(data, join(root, `eq-store-${router}`), ROUTERS[router]!, { ...sparseInRam, ...storeOpts(), accumSteps: 2 }));
    const a2 = new Trainer(tinyConfig(data, join(root, `eq-ram2-${router}`), ROUTERS[router]!, { ...sparseInRam, accumSteps: 2 }));
    // Both accumulation settings: micro-batches add gradients into the same expert buffers.
    for (let i = 0; i < 5; i++) {
      const ra = a2.trainStep();
      const rb = b.trainStep();
      assert.ok(Math.abs(ra.loss - rb.loss) <= 1e-6 * Math.abs(ra.loss), `step ${i}: loss ${ra.loss} vs ${rb.loss}`);
    }
    assertSameState(a2, b, 1e-6, router);
    const st = b.ecss!.stats();
    assert.ok(st.evictions > 0 && st.writeBacks > 0, "the small budget should force write-backs");
    a2.close();
    b.close();
  });
}

// One micro-batch: every expert's gradient buffer is written once, by fresh products, so clipping takes
// Σ g² from the weight-gradient kernels (summed as they wrote) instead of reading the buffers again.
// Batch 1 (a few tokens per expert) takes the thin kernel, which sums from its registers; batch 4
// (~16 rows each) the paths that read each block back right after writing it.
for (const batchSize of [1, 4]) {
  test(`ECSS, one micro-batch of ${batchSize}: the clipping norm comes from the gradient kernels, equals the buffers' and in-RAM training's`, () => {
    const extra = { ...sparseInRam, batchSize, optim: { ...sparseInRam.optim, clip: 0.05 } };
    const ram = new Trainer(tinyConfig(data, join(root, `sq-ram-${batchSize}`), ROUTERS.rre!, extra));
    const st = new Trainer(tinyConfig(data, join(root, `sq-store-${batchSize}`), ROUTERS.rre!, { ...extra, ...storeOpts("1MiB") }));
    const ecss = st.ecss!;
    const inside = ecss as unknown as { written: number | null; grads: Map<number, { g: Float32Array }> };
    const own = ecss.gradSquares.bind(ecss);
    let checked = 0;
    ecss.gradSquares = () => {
      assert.notEqual(inside.written, null, "one micro-batch on one rank: the kernels' sum of squares is used");
      let read = 0;
      for (const { g } of inside.grads.values()) for (const x of g) read += x * x;
      const got = own();
      assert.ok(Math.abs(got - read) <= 1e-6 * read, `Σ g² from the kernels ${got}, read from the buffers ${read}`);
      checked++;
      return got;
    };
    for (let i = 0; i < 4; i++) {
      const a = ram.trainStep(), b = st.trainStep();
      assert.ok(b.gradNorm > 0.05, `clipping is active (norm ${b.gradNorm})`);
      assert.ok(Math.abs(a.gradNorm - b.gradNorm) <= 1e-6 * a.gradNorm, `step ${i}: gradient norm ${b.gradNorm} with the store, ${a.gradNorm} in RAM`);
    }
    assert.equal(checked, 4);
    assertSameState(ram, st, 1e-6, `batch ${batchSize}`);
    ram.close();
    st.close();
  });
}

test("RRE prefetch: with room for two steps' experts, every expert a step needs is already resident or read ahead", () => {
  const b = new Trainer(tinyConfig(data, join(root, "prefetch"), ROUTERS.rre!, storeOpts("1MiB")));
  // The first step has no step before it to overlap with: its reads are on demand.
  b.trainStep();
  b.ecss!.resetStats();
  for (let i = 0; i < 5; i++) b.trainStep();
  const st = b.ecss!.stats();
  assert.equal(st.misses, 0, JSON.stringify(st));
  assert.ok(st.hits > 0);
  b.close();
});

test("the sparse rule leaves untouched experts frozen (weights, moments, step count); dense AdamW moves them", () => {
  const mk = (sparse: boolean) => {
    const w = Tensor.from([1, 2, 3, 4, 5, 6], [3, 2]);
    w.grad = Tensor.from([0.5, 0.5, 0, 0, 0, 0], [3, 2]);
    const opt = new AdamW(new Map([["blocks.1.moe.w1", { tensor: w, group: "expert" as const, decay: true }]]), { sparseExperts: sparse });
    return { w, opt };
  };
  const s = mk(true);
  s.opt.update(0.1, new Map([["blocks.1.moe", Uint8Array.of(1, 0, 0)]]));
  s.opt.update(0.1, new Map([["blocks.1.moe", Uint8Array.of(1, 0, 1)]]));
  assert.deepEqual(Array.from(s.opt.expertSteps.get("blocks.1.moe")!), [2, 0, 1]);
  assert.deepEqual(Array.from(s.w.data.subarray(2, 4)), [3, 4], "expert 1 never touched: unchanged");
  assert.notEqual(s.w.data[4], 5, "expert 2 took one step (weight decay with a zero gradient)");
  const d = mk(false);
  d.opt.update(0.1);
  assert.notEqual(d.w.data[2], 3, "dense AdamW decays an untouched expert");
});

/** A store-backed run with checkpoints at steps 2 and 3; returns the config (written to a file) and the checkpoints folder. */
function storeRun(name: string, router = ROUTERS.rre!) {
  const cfg = tinyConfig(data, join(root, name), router, storeOpts());
  const cfgPath = join(root, `${name}.json`);
  writeFileSync(cfgPath, JSON.stringify(cfg));
  const t = new Trainer(cfg);
  const dir = join(cfg.out, "checkpoints");
  t.trainStep();
  t.trainStep();
  saveTrainCheckpoint(t, dir);
  t.trainStep();
  saveTrainCheckpoint(t, dir);
  return { cfg, cfgPath, dir, t };
}

test("resume from a store checkpoint continues exactly", () => {
  const { cfg, dir, t } = storeRun("resume");
  for (let i = 0; i < 3; i++) t.trainStep();
  const want = { dense: denseParams(t), experts: expertPayloads(t) };
  t.close();
  const r = resumeTrainer(dir, cfg);
  assert.equal(r.step, 3);
  for (let i = 0; i < 3; i++) r.trainStep();
  for (const [n, x] of denseParams(r)) assert.equal(relErr(x, want.dense.get(n)!), 0, n);
  expertPayloads(r).forEach((x, i) => assert.equal(relErr(x, want.experts[i]!), 0, `expert ${i}`));
  r.close();
});

for (const mode of ["step", "checkpoint"] as const) {
  test(`a process killed mid-record-write during a ${mode === "step" ? "training step's write-back" : "checkpoint's flush"} recovers to the last checkpoint, nothing torn`, () => {
    const { cfg, cfgPath, dir, t } = storeRun(`kill-${mode}`);
    for (let i = 0; i < 3; i++) t.trainStep();
    const want = { dense: denseParams(t), experts: expertPayloads(t) };
    t.close();
    const child = spawnSync(process.execPath, ["--import", "tsx", join(import.meta.dirname, "store-kill-child.ts"), cfgPath, dir, mode], { encoding: "utf8" });
    assert.equal(child.signal, "SIGKILL", `the child should die mid-write: ${child.stderr}`);
    assert.ok(!child.stdout.includes("not killed"));
    const r = resumeTrainer(dir, cfg);
    assert.equal(r.step, 3);
    for (let i = 0; i < 3; i++) r.trainStep();
    for (const [n, x] of denseParams(r)) assert.equal(relErr(x, want.dense.get(n)!), 0, n);
    expertPayloads(r).forEach((x, i) => assert.equal(relErr(x, want.experts[i]!), 0, `expert ${i}`));
    r.close();
  });
}

test("a corrupt store is a clear error naming the file, layer and expert", () => {
  const { cfg, dir, t } = storeRun("corrupt");
  const path = t.ecss!.store.path;
  const h = t.ecss!.store.header;
  const { entry } = t.ecss!.store.locate(0, 1);
  t.close();
  // Flip a byte inside expert 1's live record.
  const fd = openSync(path, "r+");
  const at = recordOffset(h, 0, 1, entry.slot) + RECORD_HEADER + 100;
  writeSync(fd, Buffer.from([readFileSync(path)[at]! ^ 0x55]), 0, 1, at);
  closeSync(fd);
  const r = resumeTrainer(dir, cfg);
  assert.throws(() => {
    for (let i = 0; i < 5; i++) r.trainStep();
  }, sigmaError(/experts\.sgxs: record of layer 0 expert 1 .*checksum mismatch[\s\S]*hint/));
  r.close();
  // A header that is not a store at all.
  const bytes = readFileSync(path);
  bytes.write("NOPE", 0);
  writeFileSync(path, bytes);
  assert.throws(() => ExpertStoreFile.open(path), sigmaError(/not a Sigma expert store/));
  bytes.write("SGXS", 0);
  bytes[20] ^= 1; // inside the header JSON
  writeFileSync(path, bytes);
  assert.throws(() => ExpertStoreFile.open(path), sigmaError(/header is corrupted/));
  writeFileSync(path, bytes.subarray(0, 5000));
  assert.throws(() => resumeTrainer(dir, cfg), sigmaError(/corrupted|truncated/));
});

test("a store checkpoint refuses a config without the store, and the reverse", () => {
  const { cfg, dir, t } = storeRun("layouts");
  t.close();
  const inRam = { ...cfg, store: { ...cfg.store, enabled: false } };
  assert.throws(() => resumeTrainer(dir, inRam), sigmaError(/keeps its experts in the store[\s\S]*sigma store convert/));
});

test("byte sizes parse with units", () => {
  assert.equal(parseBytes("2GiB"), 2 * 1024 ** 3);
  assert.equal(parseBytes("64 MB"), 64e6);
  assert.equal(parseBytes("4096"), 4096);
  assert.throws(() => parseBytes("lots"), sigmaError(/not a byte size/));
});

test("a checkpoint converts between the store and in-RAM layouts, and training continues the same", () => {
  const { cfg, dir, t } = storeRun("convert");
  for (let i = 0; i < 3; i++) t.trainStep();
  const want = { dense: denseParams(t), experts: expertPayloads(t) };
  t.close();
  // store → RAM: the in-RAM run continues under the same sparse rule.
  const ramDir = join(root, "convert-ram", "checkpoints");
  const ramCkpt = convertCheckpoint(dir, "ram", ramDir);
  const ramCfg = parseTrainConfig({ ...cfg, out: join(root, "convert-ram"), store: { ...cfg.store, enabled: false }, optim: { ...cfg.optim, sparseExperts: true } });
  const r = resumeTrainer(ramCkpt, ramCfg);
  assert.equal(r.ecss, null);
  for (let i = 0; i < 3; i++) r.trainStep();
  const gotDense = denseParams(r);
  const dense = globalRelErr([...want.dense.values()], [...gotDense.values()]);
  assert.ok(dense <= 1e-6, `dense parameters after store → RAM differ by ${dense}`);
  const ex = globalRelErr(want.experts, expertPayloads(r));
  assert.ok(ex <= 1e-6, `experts after store → RAM differ by ${ex}`);
  r.close();
  // RAM → store again: the records equal the in-RAM tensors exactly.
  const backDir = join(root, "convert-back", "checkpoints");
  const storeCkpt = convertCheckpoint(ramCkpt, "store", backDir, join(root, "convert-back", "experts.sgxs"));
  const backCfg = parseTrainConfig({ ...cfg, out: join(root, "convert-back"), store: { ...cfg.store, path: join(root, "convert-back", "experts.sgxs") } });
  const b = resumeTrainer(storeCkpt, backCfg);
  const fromRam = resumeTrainer(ramCkpt, ramCfg);
  assert.equal(globalRelErr(expertPayloads(fromRam), expertPayloads(b)), 0);
  fromRam.close();
  b.close();
  assert.throws(() => convertCheckpoint(storeCkpt, "store", backDir, "x.sgxs"), sigmaError(/already keeps its experts in the store/));
  // Neither a conversion nor a fresh run replaces an existing store (its checkpoints would lose their experts).
  const storeFile = join(root, "convert-back", "experts.sgxs");
  const before = readFileSync(storeFile);
  assert.throws(() => convertCheckpoint(ramCkpt, "store", join(root, "convert-again"), storeFile), sigmaError(/expert store .*experts\.sgxs already exists/));
  assert.throws(() => new Trainer(backCfg), sigmaError(/expert store .*experts\.sgxs already exists/));
  assert.deepEqual(readFileSync(storeFile), before, "the existing store was changed");
});

test("a store checkpoint loads for inference with its experts read from the store", () => {
  const { dir, t } = storeRun("serve");
  const want = expertPayloads(t);
  t.close();
  const { model } = openModelSource(dir);
  const E = want.length;
  const w1 = model.namedParameters().get("blocks.1.moe.w1")!.tensor.data;
  const n = w1.length / E;
  for (let e = 0; e < E; e++) assert.deepEqual(w1.subarray(e * n, (e + 1) * n), want[e]!.subarray(0, n), `expert ${e} w1`);
});
