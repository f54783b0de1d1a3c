/**
 * `sigma eval tasks`: the command-line face of the library's evalTasks
 * (src/api/eval-tasks.ts) — a subcommand of `sigma eval`, whose --ckpt,
 * --weights and --json it shares.
 */
import type { Command } from "commander";
import type { WeightFormat } from "../backend/quant.js";
import { evalTasks } from "../api/eval-tasks.js";
import { openModel } from "../api/model.js";
import { formatTaskTable } from "../train/tasks.js";
import { SigmaError } from "../util/errors.js";
import { FLAG_LIMITS, parseIntOpt } from "./tokenizer.js";

export function register(program: Command): void {
  const evalCmd = program.commands.find((c) => c.name() === "eval");
  if (!evalCmd) throw new Error("sigma eval tasks: register `sigma eval` first");
  evalCmd
    .command("tasks")
    .description("zero- and few-shot scores on task files: multiple choice by log-likelihood (acc, acc_norm), generation by exact match, code run in a sandbox (docs/eval.md); takes sigma eval's --ckpt, --weights and --json")
    .option("--tasks <files...>", "JSONL task files (the package ships some in tasks/)")
    .option("--shots <n>", "examples of the same task before each item", parseIntOpt("shots", 0, 64), 0)
    .option("--seed <n>", "seed of the few-shot draws", parseIntOpt("seed", 0, FLAG_LIMITS.seed), 1)
    .option("--domain <name>", "domain of items that name none (default: the model's first)")
    .option("--code-timeout <ms>", "wall-clock limit of each code task's program", parseIntOpt("code-timeout", 100, 600_000), 5000)
    .action(async (_o: unknown, cmd: Command) => {
      // --ckpt, --weights and --json belong to `sigma eval`: commander hands them to the parent.
      const o = cmd.optsWithGlobals<{ ckpt?: string; weights?: WeightFormat; json?: boolean; tasks?: string[]; shots: number; seed: number; domain?: string; codeTimeout: number }>();
      if (!o.ckpt) throw new SigmaError("sigma eval tasks needs --ckpt", "pass --ckpt <checkpoint folder, run folder or model file>");
      if (!o.tasks?.length) throw new SigmaError("sigma eval tasks needs --tasks", "pass one or more JSONL task files, e.g. --tasks tasks/*.jsonl");
      const model = await openModel(o.ckpt, o.weights ? { weights: o.weights } : {});
      const r = await evalTasks(model, {
        tasks: o.tasks,
        shots: o.shots,
        seed: o.seed,
        codeTimeoutMs: o.codeTimeout,
        ...(o.domain !== undefined ? { domain: o.domain } : {}),
        ...(o.json ? {} : { onTask: (t) => console.error(`${t.task}: ${Object.entries(t.metrics).map(([k, v]) => `${k} ${v.value.toFixed(3)}`).join(", ")}`) }),
      });
      if (o.json) return console.log(JSON.stringify(r, null, 2));
      console.log(`${r.checkpoint} (step ${r.step}), ${r.shots}-shot:`);
      console.log(formatTaskTable(r.tasks));
    });
}
