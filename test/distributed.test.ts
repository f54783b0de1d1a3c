// Distributed training on MPI (docs/distributed.md): the data-parallel run
// logs what the one-process run logs, on 2 and 4 ranks, for every router;
// its checkpoints resume on another number of ranks; a killed rank stops the
// job and its last checkpoint resumes; a rank with bad input aborts the job.
//
// The MPI tests need Open MPI (mpirun) and the sigma_mpi addon. Without them
// they are skipped — unless SIGMA_REQUIRE_MPI=1 (CI sets it), which makes a
// missing MPI a failure. The unit tests at the end run everywhere.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { train } from "../src/api/train.js";
import { backward, gradOf, noGrad } from "../src/autograd/tape.js";
import { openModelSource } from "../src/serve/open.js";
import { BucketedAllreduce } from "../src/comm/buckets.js";
import { soloComm, type Communicator } from "../src/comm/comm.js";
import { detectLaunch } from "../src/comm/mpi.js";
import { listCheckpoints } from "../src/checkpoint/folder.js";
import * as ops from "../src/ops/index.js";
import { Tensor } from "../src/tensor/tensor.js";
import { Rng } from "../src/util/rng.js";
import { parseTrainConfig, type TrainConfig } from "../src/train/config.js";
import { parallelPlan, sliceRows } from "../src/train/data-parallel.js";
import { cleanup, root, ROUTERS, tinyConfig, tinyData } from "./train-fixture.js";
import { assertSameSteps, CHILD, missing, mpirun, mpiTest, REPO, REQUIRE_MPI as REQUIRE, routingLines, TSX } from "./mpi-harness.js";

after(cleanup);

const CLI = join(REPO, "src", "cli", "main.ts");
const node = (...args: string[]): string[] => [process.execPath, "--import", TSX, ...args];

/** The four routers, each with a batch-level quantity worth getting wrong: dropout masks, balance losses, z-loss, capacity drops, an uneven split with accumulation. */
function cases(data: string): Record<string, (out: string, steps: number) => TrainConfig> {
  const base = { optim: { lr: 3e-3, warmupSteps: 2, decay: "constant" }, eval: { every: 0, batches: 1 }, checkpoint: { every: 0, keep: 2 } };
  const make = (router: keyof typeof ROUTERS, extra: Record<string, unknown>, model: Record<string, unknown> = {}) => (out: string, steps: number): TrainConfig => {
    const c = tinyConfig(data, out, ROUTERS[router]!, { ...base, ...extra, steps });
    return parseTrainConfig({ ...c, model: { ...c.model, ...model } });
  };
  return {
    dense: make("dense", {}, { dropout: 0.1 }),
    rre: make("rre", {}),
    moge: make("moge", {}),
    // 6 rows over 4 ranks: 1, 2, 1, 2; capacity 1.0 drops assignments.
    topk: make("topk", { batchSize: 6, accumSteps: 2 }, { experts: { count: 4, router: { ...ROUTERS.topk!, capacityFactor: 1.0 } } }),
  };
}

mpiTest("data parallel on 2 and 4 ranks logs the one-process losses, gradient norms and routing (dense, RRE, MoGE, top-k); a 2-rank checkpoint resumes on 1 and on 4 ranks with the same next steps", async () => {
  const data = await tinyData();
  const dir = join(root, "dp");
  mkdirSync(dir, { recursive: true });
  const C = cases(data);
  const names = Object.keys(C);
  // One process, five steps: the reference.
  for (const n of names) await train(C[n]!(join(dir, `ref-${n}`), 5));
  const refTopk = routingLines(join(dir, "ref-topk"));
  assert.ok([...refTopk.values()].some((ls) => ls[0]!.dropped > 0), "the top-k case drops assignments (capacity is exercised)");

  // Two ranks, three steps, a checkpoint at the end.
  const jobs2 = join(dir, "jobs2.json");
  writeFileSync(jobs2, JSON.stringify(names.map((n) => ({ config: C[n]!(join(dir, `two-${n}`), 3) }))));
  const r2 = await mpirun(["-np", "2", ...node(CHILD, jobs2)], 240_000);
  assert.equal(r2.code, 0, r2.out);
  for (const n of names) {
    assertSameSteps(join(dir, `two-${n}`), join(dir, `ref-${n}`), [1, 2, 3], `${n} on 2 ranks`);
    cpSync(join(dir, `two-${n}`), join(dir, `on1-${n}`), { recursive: true });
    cpSync(join(dir, `two-${n}`), join(dir, `on4-${n}`), { recursive: true });
  }

  // Four ranks: three steps from scratch, then the 2-rank checkpoints continued to step 5.
  const jobs4 = join(dir, "jobs4.json");
  writeFileSync(jobs4, JSON.stringify([...names.map((n) => ({ config: C[n]!(join(dir, `four-${n}`), 3) })), ...names.map((n) => ({ config: C[n]!(join(dir, `on4-${n}`), 5), resume: true }))]));
  const r4 = await mpirun(["-np", "4", ...node(CHILD, jobs4)], 240_000);
  assert.equal(r4.code, 0, r4.out);
  for (const n of names) {
    assertSameSteps(join(dir, `four-${n}`), join(dir, `ref-${n}`), [1, 2, 3], `${n} on 4 ranks`);
    assertSameSteps(join(dir, `on4-${n}`), join(dir, `ref-${n}`), [4, 5], `${n}: a 2-rank checkpoint resumed on 4 ranks`);
    // And on one process.
    await train(C[n]!(join(dir, `on1-${n}`), 5), { resume: true });
    assertSameSteps(join(dir, `on1-${n}`), join(dir, `ref-${n}`), [4, 5], `${n}: a 2-rank checkpoint resumed on 1 process`);
  }
});

/** The learned and table routers under expert parallelism: RRE, MoGE (with a shared expert, and recomputation), top-k with capacity drops and an uneven split with accumulation. */
function epCases(data: string): Record<string, (out: string, steps: number, parallel: Record<string, number>) => TrainConfig> {
  const base = { optim: { lr: 3e-3, warmupSteps: 2, decay: "constant" }, eval: { every: 0, batches: 1 }, checkpoint: { every: 0, keep: 2 } };
  const make = (router: keyof typeof ROUTERS, extra: Record<string, unknown>, model: Record<string, unknown> = {}) => (out: string, steps: number, parallel: Record<string, number>): TrainConfig => {
    const c = tinyConfig(data, out, ROUTERS[router]!, { ...base, ...extra, steps, parallel });
    return parseTrainConfig({ ...c, model: { ...c.model, ...model } });
  };
  return {
    rre: make("rre", {}),
    moge: make("moge", { recompute: true }),
    // 6 rows over 4 ranks: 1, 2, 1, 2; capacity 1.0 drops assignments.
    topk: make("topk", { batchSize: 6, accumSteps: 2 }, { experts: { count: 4, router: { ...ROUTERS.topk!, capacityFactor: 1.0 } } }),
  };
}

mpiTest("expert parallel ({data 1, expert 2} on 2 ranks; {2, 2} and {1, 4} on 4) logs the one-process losses, gradient norms and routing for RRE, MoGE and top-k with capacity drops; its per-rank expert checkpoints resume on 4, 2 and 1 ranks and back with the same next steps, and open as one model", async () => {
  const data = await tinyData();
  const dir = join(root, "ep");
  mkdirSync(dir, { recursive: true });
  const C = epCases(data);
  const names = Object.keys(C);
  // One process: five steps (the reference), and three steps for a whole-model checkpoint.
  for (const n of names) {
    await train(C[n]!(join(dir, `ref-${n}`), 5, {}));
    await train(C[n]!(join(dir, `one-${n}`), 3, {}));
  }
  assert.ok([...routingLines(join(dir, "ref-topk")).values()].some((ls) => ls[0]!.dropped > 0), "the top-k case drops assignments (capacity is exercised)");
  // A copy of a run folder, without the marker naming the process that wrote it (this one, for a one-process run).
  const copy = (from: string, to: string) =>
    names.forEach((n) => {
      cpSync(join(dir, `${from}-${n}`), join(dir, `${to}-${n}`), { recursive: true });
      rmSync(join(dir, `${to}-${n}`, "run.json"), { force: true });
    });
  const launch = async (np: number, jobs: { config: TrainConfig; resume?: boolean }[]) => {
    const file = join(dir, `jobs-${np}-${jobs.length}-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(file, JSON.stringify(jobs));
    const r = await mpirun(["-np", String(np), ...node(CHILD, file)], 240_000);
    assert.equal(r.code, 0, r.out);
  };
  const fresh = (tag: string, p: Record<string, number>) => names.map((n) => ({ config: C[n]!(join(dir, `${tag}-${n}`), 3, p) }));
  const resumed = (tag: string, p: Record<string, number>) => names.map((n) => ({ config: C[n]!(join(dir, `${tag}-${n}`), 5, p), resume: true }));

  // 4 ranks: {2, 2} and {1, 4} from scratch; the one-process checkpoint continued on {2, 2}.
  copy("one", "one-on4");
  await launch(4, [...fresh("d2e2", { data: 2, expert: 2 }), ...fresh("d1e4", { data: 1, expert: 4 }), ...resumed("one-on4", { data: 2, expert: 2 })]);
  // 2 ranks: {1, 2} from scratch; the {1, 4} checkpoint continued on {1, 2}.
  copy("d1e4", "d1e4-on2");
  await launch(2, [...fresh("d1e2", { expert: 2 }), ...resumed("d1e4-on2", { expert: 2 })]);
  // Back: the {1, 2} checkpoint continued on {1, 4}; the {2, 2} one on one process.
  copy("d1e2", "d1e2-on4");
  await launch(4, resumed("d1e2-on4", { data: 1, expert: 4 }));
  copy("d2e2", "d2e2-on1");
  for (const n of names) await train(C[n]!(join(dir, `d2e2-on1-${n}`), 5, {}), { resume: true });

  for (const n of names) {
    for (const [tag, what] of [["d1e2", "2 ranks {1, 2}"], ["d2e2", "4 ranks {2, 2}"], ["d1e4", "4 ranks {1, 4}"]]) assertSameSteps(join(dir, `${tag}-${n}`), join(dir, `ref-${n}`), [1, 2, 3], `${n} on ${what}`);
    for (const [tag, what] of [["one-on4", "one process → {2, 2}"], ["d1e4-on2", "{1, 4} → {1, 2}"], ["d1e2-on4", "{1, 2} → {1, 4}"], ["d2e2-on1", "{2, 2} → one process"]]) {
      assertSameSteps(join(dir, `${tag}-${n}`), join(dir, `ref-${n}`), [4, 5], `${n}: checkpoint resumed ${what}`);
    }
  }

  // The layout on disk: rank 0's dense part, one shard per rank of an expert group, listed in state.json.
  const ckpt = listCheckpoints(join(dir, "d1e4-rre", "checkpoints")).at(-1)!.path;
  const state = JSON.parse(readFileSync(join(ckpt, "state.json"), "utf8"));
  const shards = ["experts-rank-0000.safetensors", "experts-rank-0001.safetensors", "experts-rank-0002.safetensors", "experts-rank-0003.safetensors"];
  assert.deepEqual(state.experts, { shards: 4, experts: 4, files: shards });
  for (const f of shards) assert.ok(state.files[f] && existsSync(join(ckpt, f)), f);
  // Opened as one model (sigma eval, generate, extract, the library's openModel), it computes what the one-process checkpoint does.
  const a = openModelSource(ckpt).model;
  const b = openModelSource(listCheckpoints(join(dir, "one-rre", "checkpoints")).at(-1)!.path).model;
  const input = { tokens: Int32Array.from({ length: 32 }, (_, i) => (i * 37) % 320), domains: Int32Array.of(0, 3), B: 2, T: 16 };
  const [la, lb] = noGrad(() => [a.forward(input).logits.data, b.forward(input).logits.data]);
  let worst = 0;
  for (let i = 0; i < la.length; i++) worst = Math.max(worst, Math.abs(la[i]! - lb[i]!) / Math.max(Math.abs(lb[i]!), 1e-3));
  assert.ok(worst < 1e-4, `logits of the assembled model differ by ${worst} (relative)`);
  assert.throws(() => openModelSource(join(ckpt, "model.safetensors")), /holds the dense part of an expert-parallel checkpoint/);
});

/** The pid of `rank` among mpirun's children (from each child's OMPI_COMM_WORLD_RANK). */
function rankPid(mpirunPid: number, rank: number): number | null {
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid !== mpirunPid) continue;
      if (readFileSync(`/proc/${name}/environ`, "utf8").split("\0").includes(`OMPI_COMM_WORLD_RANK=${rank}`)) return Number(name);
    } catch {
      /* gone, or not ours */
    }
  }
  return null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

mpiTest("a rank killed with kill -9 mid-run stops the whole job within 30 s, naming the rank; only rank 0 wrote, and its last checkpoint resumes exactly", async () => {
  const data = await tinyData();
  const dir = join(root, "kill");
  const [a, b] = [join(dir, "a"), join(dir, "b")];
  mkdirSync(a, { recursive: true });
  mkdirSync(b, { recursive: true });
  // A long run with a checkpoint every 2 steps; out is relative, and rank 1 runs in another folder.
  const make = (out: string, steps: number) => parseTrainConfig({ ...cases(data).rre!(out, steps), checkpoint: { every: 2, keep: 2 } });
  for (const d of [a, b]) writeFileSync(join(d, "run.json"), JSON.stringify(make("out", 100_000)));
  const sigma = (d: string) => ["-np", "1", "--wdir", d, ...node(CLI, "train", "--config", "run.json")];
  let pid = 0;
  const job = mpirun([...sigma(a), ":", ...sigma(b)], 120_000, (p) => (pid = p));
  // Once rank 0 has written a checkpoint, kill rank 1 in the middle of whatever it is doing.
  const ckpts = join(a, "out", "checkpoints");
  for (let i = 0; i < 600 && !(existsSync(ckpts) && listCheckpoints(ckpts).length > 0); i++) await sleep(100);
  assert.ok(listCheckpoints(ckpts).length > 0, "the run wrote a checkpoint within a minute");
  await sleep(150);
  const victim = rankPid(pid, 1);
  assert.ok(victim, "rank 1's process found");
  const t0 = performance.now();
  process.kill(victim, "SIGKILL");
  const r = await job;
  const seconds = (performance.now() - t0) / 1000;
  assert.ok(seconds < 30, `the job stopped ${seconds.toFixed(1)} s after the kill`);
  assert.notEqual(r.code, 0, "the job failed");
  assert.match(r.out, /rank 1\b/, `the error names rank 1:\n${r.out}`);
  assert.ok(!existsSync(join(b, "out")), "rank 1 wrote nothing");

  // The newest complete checkpoint continues on one process as the uninterrupted run does.
  const last = listCheckpoints(ckpts).at(-1)!.step;
  await train(make(join(a, "out"), last + 2), { resume: true });
  await train(make(join(dir, "ref"), last + 2));
  assertSameSteps(join(a, "out"), join(dir, "ref"), [last + 1, last + 2], `resumed from step ${last} after the kill`);
});

mpiTest("a rank whose data shard is missing aborts the whole job with its message, not a hang", async () => {
  const data = await tinyData();
  const dir = join(root, "bad");
  const [a, b] = [join(dir, "a"), join(dir, "b")];
  for (const d of [a, b]) {
    cpSync(data, join(d, "data"), { recursive: true });
    writeFileSync(join(d, "run.json"), JSON.stringify(cases(data).rre!("out", 50)).replace(JSON.stringify(data), JSON.stringify("data")));
  }
  const shard = readdirSync(join(b, "data", "shards")).find((f) => f.includes("-train-"))!;
  spawnSync("rm", [join(b, "data", "shards", shard)]);
  const sigma = (d: string) => ["-np", "1", "--wdir", d, ...node(CLI, "train", "--config", "run.json")];
  const t0 = performance.now();
  const r = await mpirun([...sigma(a), ":", ...sigma(b)], 60_000);
  assert.ok(performance.now() - t0 < 60_000, "the job did not hang");
  assert.notEqual(r.code, 0);
  assert.match(r.out, new RegExp(`sigma: rank 1 of 2: cannot read shard data/shards/${shard}: it does not exist`), r.out);
});

// ---- Without MPI ----

test("parallel.* must fit the ranks launched; an expert split that does not fit the model, and a batch smaller than the ranks are refused by name", async () => {
  const data = await tinyData();
  const c = (extra: Record<string, unknown>) => parseTrainConfig({ ...tinyConfig(data, join(root, "p"), ROUTERS.rre!), ...extra });
  assert.deepEqual(parallelPlan(c({}), 4), { data: 4, expert: 1 });
  assert.deepEqual(parallelPlan(c({ parallel: { data: 2 } }), 2), { data: 2, expert: 1 });
  assert.throws(() => parallelPlan(c({ parallel: { data: 2 } }), 4), /4 rank\(s\) were launched but parallel\.data × parallel\.expert = 2 × 1 = 2[\s\S]*mpirun -np 2/);
  assert.deepEqual(parallelPlan(c({ parallel: { expert: 2 } }), 4), { data: 2, expert: 2 });
  assert.deepEqual(parallelPlan(c({ parallel: { expert: 2 } }), 1), { data: 1, expert: 1 }, "one process ignores parallel");
  assert.throws(() => parallelPlan(parseTrainConfig({ ...tinyConfig(data, join(root, "p"), null), parallel: { expert: 2 } }), 2), /parallel\.expert = 2 .*the model has no experts/);
  assert.throws(() => parallelPlan(c({ parallel: { expert: 8 } }), 8), /parallel\.expert = 8 .* does not divide the 4 experts/);
  assert.throws(() => parallelPlan(c({ parallel: { expert: 3 } }), 4), /parallel\.expert = 3 does not divide them/);
  assert.throws(() => parallelPlan(c({ batchSize: 2 }), 4), /batchSize 2 .* cannot be split over 4/);
  assert.throws(() => parallelPlan(c({ batchSize: 2, parallel: { data: 1, expert: 4 } }), 4), /batchSize 2 .* cannot be split over 4 ranks/, "every rank takes rows, expert parallel or not");
  assert.deepEqual(parallelPlan(c({ store: { enabled: true }, parallel: { expert: 2 } }), 4), { data: 2, expert: 2 }, "ECSS runs per rank (test/ecss-ranks.test.ts)");
  assert.deepEqual(parallelPlan(c({ batchSize: 1, store: { enabled: true } }), 1), { data: 1, expert: 1 });
  assert.throws(() => parseTrainConfig({ ...tinyConfig(data, join(root, "p"), null), parallel: { data: 0 } }), /parallel\.data/);
});

test("sliceRows cuts a batch into contiguous slices, one per rank, sizes within one", () => {
  for (const [B, N] of [[4, 2], [6, 4], [5, 3], [1, 1], [17, 5]] as const) {
    const s = Array.from({ length: N }, (_, q) => sliceRows(q, N, B));
    assert.equal(s[0]!.first, 0);
    s.forEach((x, q) => q > 0 && assert.equal(x.first, s[q - 1]!.first + s[q - 1]!.count));
    assert.equal(s.at(-1)!.first + s.at(-1)!.count, B);
    assert.ok(Math.max(...s.map((x) => x.count)) - Math.min(...s.map((x) => x.count)) <= 1);
  }
});

test("the MPI launch is read from Open MPI's, PMI's and PMIx's variables", () => {
  assert.equal(detectLaunch({}), null);
  assert.deepEqual(detectLaunch({ OMPI_COMM_WORLD_SIZE: "4", OMPI_COMM_WORLD_RANK: "2" }), { evidence: "OMPI_COMM_WORLD_SIZE=4", size: 4, rank: 2 });
  assert.deepEqual(detectLaunch({ PMI_SIZE: "8", PMI_RANK: "0" }), { evidence: "PMI_SIZE=8", size: 8, rank: 0 });
  assert.deepEqual(detectLaunch({ PMIX_RANK: "3", SLURM_STEP_NUM_TASKS: "16" }), { evidence: "PMIX_RANK=3", size: 16, rank: 3 });
  assert.deepEqual(detectLaunch({ PMIX_RANK: "3" }), { evidence: "PMIX_RANK=3", size: null, rank: 3 });
});

test("sigma train launched as one of several ranks without the MPI addon says that distributed runs need Open MPI and how to install it", () => {
  const r = spawnSync(process.execPath, ["--import", TSX, CLI, "train", "--config", join(root, "none.json")], {
    env: { ...process.env, OMPI_COMM_WORLD_SIZE: "2", OMPI_COMM_WORLD_RANK: "1", SIGMA_NO_MPI: "1" },
    encoding: "utf8",
  });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /sigma: this process was started by an MPI launcher \(OMPI_COMM_WORLD_SIZE=2: rank 1 of 2\), but Sigma's MPI support is not available/);
  assert.match(r.stderr, /hint: distributed runs need Open MPI: on Debian or Ubuntu `apt-get install openmpi-bin libopenmpi-dev`, then rebuild/);
});

test("the build looks for mpi.h: without it (SIGMA_NO_MPI=1) node-gyp configures the main addon only; with it, the sigma_mpi target too", (t) => {
  const gyp = join(process.execPath, "..", "..", "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js");
  if (!existsSync(gyp)) return t.skip(`node-gyp not found at ${gyp}`);
  const configure = (env: Record<string, string>): string => {
    const d = join(root, `gyp-${Object.keys(env).length}`);
    mkdirSync(join(d, "scripts"), { recursive: true });
    // binding.gyp lists the main addon's sources by reading these folders.
    for (const f of ["kernels", "napi"]) mkdirSync(join(d, "native", "src", f), { recursive: true });
    cpSync(join(REPO, "binding.gyp"), join(d, "binding.gyp"));
    cpSync(join(REPO, "scripts", "mpi-detect.cjs"), join(d, "scripts", "mpi-detect.cjs"));
    cpSync(join(REPO, "node_modules", "node-addon-api"), join(d, "node_modules", "node-addon-api"), { recursive: true, dereference: true });
    const r = spawnSync(process.execPath, [gyp, "configure"], { cwd: d, env: { ...process.env, npm_config_nodedir: process.env.npm_config_nodedir ?? "/usr", ...env }, encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    return readFileSync(join(d, "build", "Makefile"), "utf8");
  };
  const without = configure({ SIGMA_NO_MPI: "1" });
  assert.match(without, /sigma_native\.target\.mk/);
  assert.doesNotMatch(without, /sigma_mpi/);
  const detected = spawnSync(process.execPath, [join(REPO, "scripts", "mpi-detect.cjs")], { encoding: "utf8" }).stdout;
  if (detected === "1") assert.match(configure({}), /sigma_mpi\.target\.mk/);
  else assert.ok(!REQUIRE, "SIGMA_REQUIRE_MPI=1 but scripts/mpi-detect.cjs finds no mpi.h");
});

test("bucketed allreduce: small arrays share a bucket, large ones go alone and in place; buckets start in order, as soon as complete, and the sums land back", () => {
  const started: { len: number; shared: boolean }[] = [];
  const pending: (() => void)[] = [];
  // A fake two-rank world whose other rank holds the same values: a sum doubles them, on wait.
  const fake: Communicator = {
    ...soloComm,
    size: 2,
    iallreduce(buf) {
      started.push({ len: buf.length, shared: !arrays.some((a) => a === buf) });
      let done = false;
      const finish = () => {
        if (!done) for (let i = 0; i < buf.length; i++) buf[i]! *= 2;
        done = true;
      };
      pending.push(finish);
      return { test: () => done, wait: finish };
    },
  };
  const arrays = [3, 5, 300, 2, 1].map((n, i) => Float32Array.from({ length: n }, (_, j) => i + j / 1000));
  const before = arrays.map((a) => a.slice());
  const r = new BucketedAllreduce(fake, arrays, 64 * 4); // 64 floats per bucket
  assert.equal(r.bucketCount, 3); // [0, 1] [2] [3, 4]
  r.ready(1);
  assert.equal(started.length, 0, "a bucket waits for all its arrays");
  r.ready(3);
  r.ready(4);
  assert.equal(started.length, 0, "bucket 2 is complete but waits for buckets 0 and 1 to start first");
  r.ready(0);
  assert.deepEqual(started, [{ len: 8, shared: true }], "bucket 0 starts once complete");
  r.ready(2);
  assert.deepEqual(started.slice(1), [{ len: 300, shared: false }, { len: 3, shared: true }], "the large array in place, then the waiting bucket");
  r.finish();
  arrays.forEach((a, i) => assert.deepEqual(Array.from(a), Array.from(before[i]!, (v) => v * 2)));
  // finish() alone starts everything, in order.
  started.length = 0;
  r.reset();
  r.finish();
  assert.deepEqual(started.map((s) => s.len), [8, 300, 3]);
});

test("backward's onLeafReady reports each parameter once, after its last gradient contribution", () => {
  const w1 = Tensor.randn([4, 3], new Rng(3), 1);
  w1.requiresGrad = true;
  const w2 = Tensor.full([4, 4], 0.25, "float32");
  w2.requiresGrad = true;
  const x = Tensor.full([2, 3], 1, "float32");
  // w2 is used twice, at both ends of the graph: it is final only after the earliest use.
  const h = ops.linear(ops.linear(x, w1), w2);
  const loss = ops.sum(ops.mul(ops.linear(h, w2), h));
  const seen: [Tensor, number[]][] = [];
  backward(loss, undefined, { onLeafReady: (t) => seen.push([t, Array.from(gradOf(t).data)]) });
  assert.deepEqual(seen.map(([t]) => t).sort((p, q) => p.size - q.size), [w1, w2]);
  for (const [t, g] of seen) assert.deepEqual(g, Array.from(t.grad!.data), "the gradient seen is the final one");
});

// ---- The cluster examples (docs/distributed.md, On a cluster) ----

const EXAMPLES = join(REPO, "examples");
const sigmaTrain = /\bnpx sigma train --config \S+/;

test("examples/slurm.sbatch is a bash script whose #SBATCH lines parse and whose srun starts one sigma train per task", () => {
  const path = join(EXAMPLES, "slurm.sbatch");
  assert.equal(spawnSync("bash", ["-n", path]).status, 0, "bash -n");
  const text = readFileSync(path, "utf8");
  const opts = new Map([...text.matchAll(/^#SBATCH --([a-z-]+)=(\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
  for (const k of ["nodes", "ntasks-per-node", "cpus-per-task"]) assert.match(opts.get(k) ?? "", /^\d+$/, `#SBATCH --${k}`);
  const srun = text.split("\n").find((l) => l.startsWith("srun "));
  assert.ok(srun && sigmaTrain.test(srun) && /--mpi=pmix/.test(srun), `srun line: ${srun}`);
  assert.match(text, /SIGMA_THREADS="\$\{SLURM_CPUS_PER_TASK\}"/);
});

test("examples/hostfile lists hosts with slots, and examples/mpirun-hostfile.sh launches as many ranks over TCP", () => {
  const hosts = readFileSync(join(EXAMPLES, "hostfile"), "utf8").split("\n").filter((l) => l.trim() && !l.startsWith("#"));
  assert.ok(hosts.length >= 2);
  let slots = 0;
  for (const h of hosts) {
    const m = /^([A-Za-z0-9.-]+) slots=(\d+)$/.exec(h);
    assert.ok(m, `hostfile line: ${h}`);
    slots += Number(m[2]);
  }
  const script = join(EXAMPLES, "mpirun-hostfile.sh");
  assert.equal(spawnSync("bash", ["-n", script]).status, 0, "bash -n");
  const text = readFileSync(script, "utf8").replace(/\\\n\s*/g, "");
  const line = text.split("\n").find((l) => l.startsWith("mpirun "))!;
  assert.match(line, /--hostfile "\$here\/hostfile"/);
  assert.equal(Number(/-np (\d+)/.exec(line)?.[1]), slots, "-np is the hostfile's slots");
  assert.match(line, /--mca btl tcp,self/);
  assert.ok(sigmaTrain.test(line), line);
});

/** A YAML subset (block maps and lists, flow lists as JSON, plain scalars): enough for the example manifest. */
function parseYaml(text: string): unknown {
  const lines = text.split("\n").map((l) => l.replace(/\s+#.*$|^#.*$/, "")).filter((l) => l.trim());
  let i = 0;
  const indent = (l: string) => l.length - l.trimStart().length;
  const scalar = (v: string): unknown => (/^[[{"]/.test(v) ? JSON.parse(v) : /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v === "true" ? true : v === "false" ? false : v);
  function block(at: number): unknown {
    if (lines[i]!.trimStart().startsWith("- ")) {
      const list: unknown[] = [];
      while (i < lines.length && indent(lines[i]!) === at && lines[i]!.trimStart().startsWith("- ")) {
        // "- key: value" opens a map whose keys sit two columns further in.
        lines[i] = " ".repeat(at + 2) + lines[i]!.trimStart().slice(2);
        list.push(block(at + 2));
      }
      return list;
    }
    const map: Record<string, unknown> = {};
    while (i < lines.length && indent(lines[i]!) === at) {
      const m = /^\s*([A-Za-z0-9_.-]+):(?: (.*))?$/.exec(lines[i]!);
      assert.ok(m, `YAML line ${lines[i]}`);
      i++;
      if (m[2] !== undefined && m[2] !== "") map[m[1]!] = scalar(m[2]);
      else map[m[1]!] = block(indent(lines[i]!));
    }
    return map;
  }
  const doc = block(0);
  assert.equal(i, lines.length, `YAML parsed to line ${i} of ${lines.length}`);
  return doc;
}

test("examples/kubeflow-mpijob.yaml is an MPIJob whose launcher starts one sigma train rank per worker slot", () => {
  const job = parseYaml(readFileSync(join(EXAMPLES, "kubeflow-mpijob.yaml"), "utf8")) as {
    apiVersion: string;
    kind: string;
    spec: { slotsPerWorker: number; mpiReplicaSpecs: Record<string, { replicas: number; template: { spec: { containers: { image: string; command?: string[] }[] } } }> };
  };
  assert.equal(job.kind, "MPIJob");
  assert.match(job.apiVersion, /^kubeflow\.org\/v2/);
  const { Launcher, Worker } = job.spec.mpiReplicaSpecs;
  assert.equal(Launcher!.replicas, 1);
  const cmd = Launcher!.template.spec.containers[0]!.command!;
  assert.equal(cmd[0], "mpirun");
  assert.equal(Number(cmd[cmd.indexOf("-np") + 1]), Worker!.replicas * job.spec.slotsPerWorker, "-np = workers × slots");
  assert.ok(sigmaTrain.test(cmd.join(" ")), cmd.join(" "));
  assert.equal(Worker!.template.spec.containers[0]!.image, Launcher!.template.spec.containers[0]!.image);
});
