// Child process for the ECSS crash tests: resumes a store-backed run and
// SIGKILLs itself in the middle of a record write (half the record on disk),
// either during a training step's write-back ("step") or during a
// checkpoint's flush ("checkpoint").
import { loadTrainConfig } from "../src/train/config.js";
import { resumeTrainer, saveTrainCheckpoint } from "../src/train/checkpoint.js";

const [configPath, checkpoints, mode] = process.argv.slice(2) as [string, string, "step" | "checkpoint"];
const t = resumeTrainer(checkpoints, loadTrainConfig(configPath));
const die = (): void => void process.kill(process.pid, "SIGKILL");
if (mode === "step") {
  // Evictions are written back by the I/O worker: it kills the process mid-record.
  t.ecss!.tier.killMidWrite = true;
  for (let i = 0; i < 5; i++) t.trainStep();
} else {
  t.trainStep();
  t.ecss!.store.onHalfWritten = die;
  saveTrainCheckpoint(t, checkpoints);
}
console.log("not killed");
