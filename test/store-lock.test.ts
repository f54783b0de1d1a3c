// The expert store against misuse and a hostile disk: one training run per
// store (a lock that a dead owner's run leaves behind is taken over), a full
// disk during write-back is a clear error that leaves the checkpoint intact,
// and half-built stores of killed runs are cleared away.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { Trainer } from "../src/train/trainer.js";
import { resumeTrainer, saveTrainCheckpoint } from "../src/train/checkpoint.js";
import { lockStore } from "../src/store/lock.js";
import { SigmaError } from "../src/util/errors.js";
import { ROUTERS, cleanup, root, tinyConfig, tinyData } from "./train-fixture.js";

after(cleanup);
const data = await tinyData();
const storeRun = (name: string) => tinyConfig(data, join(root, name), ROUTERS.rre!, { store: { enabled: true, memory: "64KiB" } });
/** The pid of a process that has exited. */
const deadPid = (): number => Number(spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" }).stdout);

test("a second run on a store in use is refused, naming the owner; after close the store is free", () => {
  const a = new Trainer(storeRun("lock"));
  const lock = join(root, "lock", "experts.sgxs.lock");
  assert.equal(JSON.parse(readFileSync(lock, "utf8")).pid, process.pid);
  assert.throws(() => new Trainer(storeRun("lock")), (e: unknown) => e instanceof SigmaError && e.message.includes(`in use by process ${process.pid}`) && e.hint!.includes(lock));
  a.trainStep();
  a.close();
  assert.ok(!existsSync(lock), "close gives the lock back");
  // The refused run did not take the lock or touch the store: a resume-style open works now.
  const relock = lockStore(join(root, "lock", "experts.sgxs"));
  relock();
});

test("a lock left by a process that is gone is taken over; one from another host is not", () => {
  const store = join(root, "stale", "experts.sgxs");
  const a = new Trainer(storeRun("stale"));
  a.close();
  const pid = deadPid();
  writeFileSync(`${store}.lock`, JSON.stringify({ pid, host: hostname(), since: "earlier" }));
  const release = lockStore(store);
  assert.equal(JSON.parse(readFileSync(`${store}.lock`, "utf8")).pid, process.pid);
  release();
  // A lock half written by a process that died (empty) is stale too.
  writeFileSync(`${store}.lock`, "");
  lockStore(store)();
  writeFileSync(`${store}.lock`, JSON.stringify({ pid, host: "another-host", since: "earlier" }));
  assert.throws(() => lockStore(store), (e: unknown) => e instanceof SigmaError && /another-host/.test(e.message));
});

test("a full disk while writing experts back is an error naming the store and what to do, and the checkpoint resumes; half-built stores of dead runs are removed", { skip: !existsSync("/dev/full") && "needs /dev/full" }, () => {
  const dir = join(root, "full");
  const leftover = join(dir, `.experts.sgxs.tmp-${deadPid()}`);
  const other = join(dir, "unrelated.tmp");
  // A killed run's half-built store, and a file that is not one.
  mkdirSync(dir, { recursive: true });
  writeFileSync(leftover, "half");
  writeFileSync(other, "keep");
  // Room for every expert: nothing is evicted, so the flush below is the only writer.
  const cfg = tinyConfig(data, dir, ROUTERS.rre!, { store: { enabled: true, memory: "64MiB" } });
  const t = new Trainer(cfg);
  assert.ok(!existsSync(leftover), "the dead builder's temporary store is removed");
  assert.ok(existsSync(other));
  const ckpt = join(dir, "checkpoints");
  t.trainStep();
  saveTrainCheckpoint(t, ckpt);
  t.trainStep();
  // From here every write to the store's file meets a full device (a real ENOSPC from the kernel).
  (t.ecss!.store as unknown as { fd: number }).fd = openSync("/dev/full", "r+");
  assert.throws(() => t.ecss!.flush(), (e: unknown) => e instanceof SigmaError && e.message.includes(join(dir, "experts.sgxs")) && /ENOSPC/.test(e.message) && /disk is full/.test(e.hint!) && /--resume/.test(e.hint!));
  t.close();
  const r = resumeTrainer(ckpt, cfg);
  assert.equal(r.step, 1);
  r.trainStep();
  r.close();
});
