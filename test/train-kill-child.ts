// Child process for the "killed mid-write" test: resumes a run, takes one
// step, and starts saving a checkpoint, killing itself (SIGKILL, no cleanup)
// right after writing the file named on the command line.
import { loadTrainConfig } from "../src/train/config.js";
import { resumeTrainer, saveTrainCheckpoint } from "../src/train/checkpoint.js";

const [configPath, checkpoints, killAfter] = process.argv.slice(2) as [string, string, string];
const t = resumeTrainer(checkpoints, loadTrainConfig(configPath));
t.trainStep();
saveTrainCheckpoint(t, checkpoints, 2, (name) => {
  if (name === killAfter) process.kill(process.pid, "SIGKILL");
});
console.log("not killed");
