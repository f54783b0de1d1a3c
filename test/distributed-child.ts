// One rank of an MPI job for test/distributed.test.ts (not a test file): runs
// the library's train() once per job in the JSON list argv[2], one after the
// other, all ranks together, then ends MPI. A job: { config, resume? }.
// An error prints on its rank and aborts the whole MPI job, as `sigma train` does.
import { readFileSync } from "node:fs";
import { train } from "../src/api/train.js";
import { joinWorld } from "../src/comm/comm.js";
import type { TrainConfigInput } from "../src/train/config.js";

const world = joinWorld();
try {
  const jobs = JSON.parse(readFileSync(process.argv[2]!, "utf8")) as { config: TrainConfigInput; resume?: boolean }[];
  for (const j of jobs) await train(j.config, { comm: world.comm, ...(j.resume ? { resume: true } : { overwrite: true }) });
  world.finalize();
} catch (e) {
  console.error(`rank ${world.comm.rank}: ${(e as Error).message}`);
  world.comm.abort(1);
}
