/**
 * `sigma finetune`: the command-line face of the library's finetune
 * (src/api/finetune.ts), with a progress bar and Ctrl-C → a checkpoint and stop.
 */
import type { Command } from "commander";
import { finetune } from "../api/finetune.js";
import { FREEZE, type Freeze } from "../train/finetune.js";
import { SigmaError } from "../util/errors.js";
import { millions } from "./format.js";
import { runWithStop, TrainProgress } from "./progress.js";
import { FLAG_LIMITS, parseIntOpt, parseNumOpt } from "./tokenizer.js";

interface Flags {
  ckpt?: string;
  data: string;
  out: string;
  steps?: number;
  lr?: number;
  batchSize?: number;
  accumSteps?: number;
  freeze?: string;
  lora?: number;
  domain?: string;
  seed?: number;
  checkpointEvery?: number;
  resume?: string | true;
  overwrite?: boolean;
}

export function register(program: Command): void {
  program
    .command("finetune")
    .description("fine-tune a model on chat / instruction records (JSONL), the loss on the assistant's tokens only (docs/finetune.md)")
    .option("--ckpt <path>", "the model to fine-tune: a checkpoint folder, a run folder or a model file (not needed with --resume)")
    .requiredOption("--data <file>", 'JSONL records: {"messages": [{"role", "content"}, …]} or {"prompt", "completion"}')
    .requiredOption("--out <dir>", "run folder: checkpoints/, metrics.jsonl")
    .option("--steps <n>", "optimizer steps (default: one pass over the records)", parseIntOpt("steps", 1, 1e9))
    .option("--lr <rate>", "peak learning rate (default 1e-4; cosine decay to a tenth)", parseNumOpt("lr", 0, 10, { above: true }))
    .option("--batch-size <n>", "records per micro-batch (default 8)", parseIntOpt("batch-size", 1, FLAG_LIMITS.batchSize))
    .option("--accum-steps <n>", "micro-batches per optimizer step (default 1)", parseIntOpt("accum-steps", 1, 4096))
    .option("--freeze <part>", `keep a part fixed: ${FREEZE.join(", ")} (default none)`)
    .option("--lora <rank>", "train the dense part's linear layers through rank-r adapters, merged into the saved weights", parseIntOpt("lora", 1, 4096))
    .option("--domain <name>", "domain of records that name none (default: the model's first)")
    .option("--seed <n>", "seed of the record order and the adapters (default 1)", parseIntOpt("seed", 0, FLAG_LIMITS.seed))
    .option("--checkpoint-every <n>", "also checkpoint every n steps (default: only at the end)", parseIntOpt("checkpoint-every", 0, 1e9))
    .option("--resume [ckpt]", "continue the run (default: the newest checkpoint in --out)")
    .option("--overwrite", "replace the run --out already holds")
    .action(async (o: Flags) => {
      if (o.freeze !== undefined && !(FREEZE as readonly string[]).includes(o.freeze)) throw new SigmaError(`--freeze must be one of ${FREEZE.join(", ")}, got "${o.freeze}"`);
      await runWithStop(async (con) => {
        const say = con.say;
        const r = await finetune({
          data: o.data,
          out: o.out,
          ...(o.ckpt !== undefined ? { ckpt: o.ckpt } : {}),
          ...(o.steps !== undefined ? { steps: o.steps } : {}),
          ...(o.lr !== undefined ? { lr: o.lr } : {}),
          ...(o.batchSize !== undefined ? { batchSize: o.batchSize } : {}),
          ...(o.accumSteps !== undefined ? { accumSteps: o.accumSteps } : {}),
          ...(o.freeze !== undefined ? { freeze: o.freeze as Freeze } : {}),
          ...(o.lora !== undefined ? { lora: o.lora } : {}),
          ...(o.domain !== undefined ? { domain: o.domain } : {}),
          ...(o.seed !== undefined ? { seed: o.seed } : {}),
          ...(o.checkpointEvery !== undefined ? { checkpointEvery: o.checkpointEvery } : {}),
          ...(o.resume !== undefined ? { resume: o.resume } : {}),
          overwrite: !!o.overwrite,
          signal: con.signal,
          log: say,
          names: { out: "--out" },
          onProgress: (e) => {
            if (e.kind === "start") {
              if (e.resumedFrom) say(`resumed from step ${e.step} (${e.resumedFrom})`);
              say(`fine-tuning on ${e.records} records: ${millions(e.trainable)} of ${millions(e.total)} parameters train, ${e.steps} steps`);
              con.bar = new TrainProgress(e.steps, e.step, "finetune");
            } else if (e.kind === "step") con.bar?.update(e);
          },
        });
        con.bar?.stop();
        con.bar = null;
        console.log(`${r.stopped === "done" ? "finished" : "stopped (requested)"} at step ${r.steps}${r.loss !== null ? `, loss ${r.loss.toFixed(3)} on the assistant's tokens` : ""}`);
        console.log(`checkpoint: ${r.checkpoint}\nmetrics: ${r.metrics}`);
      });
    });
}
