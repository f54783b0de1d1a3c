// Child process for the "keep: 1, killed between the two renames" test:
// re-saves the newest checkpoint's step (as a run resumed at its last step
// does) and SIGKILLs itself right after the old folder was moved aside,
// before the new one takes its name.
import fs from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { loadTrainConfig } from "../src/train/config.js";
import { resumeTrainer, saveTrainCheckpoint } from "../src/train/checkpoint.js";

const [configPath, checkpoints] = process.argv.slice(2) as [string, string];
const t = resumeTrainer(checkpoints, loadTrainConfig(configPath));
const rename = fs.renameSync;
fs.renameSync = (from: fs.PathLike, to: fs.PathLike): void => {
  rename(from, to);
  if (String(to).endsWith(".old")) process.kill(process.pid, "SIGKILL");
};
syncBuiltinESMExports();
saveTrainCheckpoint(t, checkpoints, 1);
console.log("not killed");
