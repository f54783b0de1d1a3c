// ECSS per rank (docs/distributed.md, ECSS per rank): each rank's expert
// store holds its own experts. Data parallel ({2, 1}), expert parallel
// ({1, 2}) and both ({2, 2}) log the one-process losses — of the ECSS run and
// of the ordinary in-RAM run under the same sparse rule — and their
// checkpoints resume in the same layout, in another, on one process, and a
// one-process ECSS checkpoint on two ranks.
//
// Needs Open MPI and the sigma_mpi addon: skipped without them, failed
// without them under SIGMA_REQUIRE_MPI=1 (as test/distributed.test.ts).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { train } from "../src/api/train.js";
import { listCheckpoints } from "../src/checkpoint/folder.js";
import { parseTrainConfig, type TrainConfig } from "../src/train/config.js";
import { parallelPlan } from "../src/train/data-parallel.js";
import { rankStorePath } from "../src/train/ecss-ranks.js";
import { cleanup, root, ROUTERS, tinyConfig, tinyData } from "./train-fixture.js";
import { assertSameSteps, CHILD, missing, mpirun, REQUIRE_MPI as REQUIRE, TSX } from "./mpi-harness.js";

after(cleanup);

/** Runs `jobs` ({config, resume?}, one after the other) on `np` ranks; fails the test unless the job ends well. */
async function launch(dir: string, np: number, jobs: { config: TrainConfig; resume?: boolean }[]): Promise<void> {
  const file = join(dir, `jobs-${np}-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, JSON.stringify(jobs));
  const r = await mpirun(["-np", String(np), process.execPath, "--import", TSX, CHILD, file], 240_000);
  assert.equal(r.code, 0, r.out);
}


/** RRE (its experts read ahead) and top-k (capacity drops, an uneven split over 4 ranks, accumulation); a budget of one resident expert, so nearly every step evicts and writes back. */
function cases(data: string): Record<string, (out: string, steps: number, parallel: Record<string, number>, store?: boolean) => TrainConfig> {
  const base = { optim: { lr: 3e-3, warmupSteps: 2, decay: "constant", sparseExperts: true }, eval: { every: 0, batches: 1 }, checkpoint: { every: 0, keep: 2 } };
  const make = (router: keyof typeof ROUTERS, extra: Record<string, unknown>, model: Record<string, unknown> = {}) => (out: string, steps: number, parallel: Record<string, number>, store = true): TrainConfig => {
    const c = tinyConfig(data, out, ROUTERS[router]!, { ...base, ...extra, steps, parallel, store: { enabled: store, memory: "64KiB" } });
    return parseTrainConfig({ ...c, model: { ...c.model, ...model } });
  };
  return {
    rre: make("rre", {}),
    topk: make("topk", { batchSize: 6, accumSteps: 2 }, { experts: { count: 4, router: { ...ROUTERS.topk!, capacityFactor: 1.0 } } }),
    // Only on {2, 2} (below): a shared expert, recomputed activations.
    moge: make("moge", { recompute: true }),
  };
}

test(
  "ECSS per rank: {2, 1}, {1, 2} and {2, 2} log the one-process losses (ECSS and in RAM) for RRE and top-k (MoGE on {2, 2}); checkpoints resume in the same layout, resharded on 4, 2 and 1 ranks, and a one-process one on 2",
  missing && !REQUIRE ? { skip: `MPI is not available: ${missing}` } : {},
  async () => {
    if (missing) assert.fail(`SIGMA_REQUIRE_MPI=1 but MPI is not available: ${missing}`);
    const data = await tinyData();
    const dir = join(root, "ecss-ranks");
    mkdirSync(dir, { recursive: true });
    const C = cases(data);
    const names = ["rre", "topk"];
    const out = (tag: string, n: string) => join(dir, `${tag}-${n}`);
    // A copy of a run folder (its stores inside), without the marker naming the process that wrote it.
    const copy = (from: string, to: string) =>
      names.forEach((n) => {
        cpSync(out(from, n), out(to, n), { recursive: true });
        rmSync(join(out(to, n), "run.json"), { force: true });
      });
    const fresh = (tag: string, steps: number, p: Record<string, number>) => names.map((n) => ({ config: C[n]!(out(tag, n), steps, p) }));
    const resumed = (tag: string, steps: number, p: Record<string, number>) => names.map((n) => ({ config: C[n]!(out(tag, n), steps, p), resume: true }));

    // One process: in RAM under the sparse rule (the reference), with the store, and a store checkpoint at step 3.
    await train(C.moge!(out("ref", "moge"), 3, {}, false));
    for (const n of names) {
      await train(C[n]!(out("ref", n), 6, {}, false));
      await train(C[n]!(out("one", n), 6, {}));
      await train(C[n]!(out("one3", n), 3, {}));
    }
    copy("one3", "one3-on2");
    // 2 ranks: data parallel and expert parallel from scratch; {1, 2} resumed in its own layout; the one-process checkpoint on {1, 2}.
    await launch(dir, 2, [...fresh("d2e1", 3, { data: 2, expert: 1 }), ...fresh("d1e2", 3, { data: 1, expert: 2 }), ...resumed("d1e2", 5, { data: 1, expert: 2 }), ...resumed("one3-on2", 5, { data: 1, expert: 2 })]);
    copy("d2e1", "d2e1-on4");
    // 4 ranks: {2, 2} from scratch and resumed in its own layout; the {2, 1} checkpoint resharded onto {2, 2}.
    await launch(dir, 4, [{ config: C.moge!(out("d2e2", "moge"), 3, { data: 2, expert: 2 }) }, ...fresh("d2e2", 3, { data: 2, expert: 2 }), ...resumed("d2e2", 5, { data: 2, expert: 2 }), ...resumed("d2e1-on4", 5, { data: 2, expert: 2 })]);
    // One process: the {2, 2} checkpoint.
    copy("d2e2", "d2e2-on1");
    for (const n of names) await train(C[n]!(out("d2e2-on1", n), 6, {}), { resume: true });

    assertSameSteps(out("d2e2", "moge"), out("ref", "moge"), [1, 2, 3], "moge on {2, 2}");
    for (const n of names) {
      const ref = out("ref", n);
      assertSameSteps(out("one", n), ref, [1, 2, 3, 4, 5, 6], `${n}: one process with the store`);
      assertSameSteps(out("d2e1", n), ref, [1, 2, 3], `${n} on {2, 1}`);
      assertSameSteps(out("d1e2", n), ref, [1, 2, 3, 4, 5], `${n} on {1, 2}, resumed on {1, 2}`);
      assertSameSteps(out("d2e2", n), ref, [1, 2, 3, 4, 5], `${n} on {2, 2}, resumed on {2, 2}`);
      assertSameSteps(out("one3-on2", n), ref, [4, 5], `${n}: one process → {1, 2}`);
      assertSameSteps(out("d2e1-on4", n), ref, [4, 5], `${n}: {2, 1} → {2, 2}`);
      assertSameSteps(out("d2e2-on1", n), ref, [6], `${n}: {2, 2} → one process`);
    }

    // The layout on disk: one store per rank in a folder of its own, each holding its shard; the checkpoint lists every rank's index.
    const cfg = C.rre!(out("d2e2", "rre"), 5, { data: 2, expert: 2 });
    const plan = parallelPlan(cfg, 4);
    const stores = [0, 1, 2, 3].map((r) => rankStorePath(cfg, plan, r));
    assert.deepEqual(stores, [0, 1, 2, 3].map((r) => join(out("d2e2", "rre"), "store", "d2e2", `rank-000${r}`, "experts.sgxs")));
    for (const s of stores) assert.ok(existsSync(s), s);
    const ckpt = listCheckpoints(join(out("d2e2", "rre"), "checkpoints")).at(-1)!.path;
    const state = JSON.parse(readFileSync(join(ckpt, "state.json"), "utf8"));
    assert.equal(state.stores.data, 2);
    assert.equal(state.stores.expert, 2);
    assert.equal(state.stores.ids.length, 4);
    assert.equal(new Set(state.stores.ids).size, 4, "every rank has a store of its own");
    assert.equal(state.store, undefined);
    assert.deepEqual(readdirSync(ckpt).filter((f) => f.endsWith(".index")).sort(), ["experts-rank-0000.index", "experts-rank-0001.index", "experts-rank-0002.index", "experts-rank-0003.index"]);
    // Two experts per shard: each index has 2 entries of 16 bytes.
    assert.equal(readFileSync(join(ckpt, "experts-rank-0001.index")).length, 2 * 16);
  },
);
