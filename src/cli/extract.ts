/**
 * `sigma extract`: the library's extract (src/api/extract.ts) on files. RRE models
 * give the exact, loss-free sub-model; MoGE and top-k models keep the experts
 * the domain's training data uses most, up to --experts per layer, and the
 * command reports what that costs in validation loss.
 */
import type { Command } from "commander";
import { openModel } from "../api/model.js";
import { extract } from "../api/extract.js";
import { millions } from "./format.js";
import { FLAG_LIMITS, parseIntOpt } from "./tokenizer.js";
import { ensureWritableDir } from "../util/fs.js";

export function register(program: Command): void {
  program
    .command("extract")
    .description("cut a domain's sub-model out of a sparse model: exact for RRE, by expert usage for MoGE and top-k")
    .requiredOption("--ckpt <path>", "checkpoint folder (a run's checkpoints/ gives its newest) or a model .safetensors")
    .requiredOption("--domain <name>", "the domain to keep")
    .requiredOption("--out <dir>", "where the sub-model's checkpoint goes")
    .option("--experts <n>", "MoGE / top-k: experts kept per sparse layer (the most used on the domain's training data)", parseIntOpt("experts", 1, FLAG_LIMITS.experts))
    .option("--data <dir>", "MoGE / top-k: prepared data to measure usage and validation loss on (default: the data the checkpoint was trained on)")
    .option("--batches <n>", "MoGE / top-k: batches for usage and for validation loss", parseIntOpt("batches", 1, FLAG_LIMITS.batches), 8)
    .option("--batch-size <n>", "sequences per batch", parseIntOpt("batch-size", 1, FLAG_LIMITS.batchSize), 8)
    .action(async (o: { ckpt: string; domain: string; out: string; experts?: number; data?: string; batches: number; batchSize: number }) => {
      ensureWritableDir(o.out, "--out");
      const full = await openModel(o.ckpt);
      const r = extract(full, { domain: o.domain, batches: o.batches, batchSize: o.batchSize, ...(o.experts !== undefined ? { experts: o.experts } : {}), ...(o.data !== undefined ? { data: o.data } : {}), names: { experts: "--experts", data: "--data", batchSize: "--batch-size" } });
      const state: Record<string, unknown> = { format: "sigma-extract", from: full.path, fromStep: full.step, domain: o.domain, router: r.router, parameters: r.parameters };
      if (r.maxLogitGap !== null) {
        console.log(`check: max |Δlogit| vs the full model on ${o.domain} = ${r.maxLogitGap.toExponential(2)} (loss-free extraction: expected 0)`);
        state.maxLogitGap = r.maxLogitGap;
      }
      if (r.valLoss && r.carried) {
        const { full: lf, sub: ls } = r.valLoss;
        console.log(`validation loss on ${o.domain}: full ${lf.toFixed(4)}, sub-model ${ls.toFixed(4)} (${ls >= lf ? "+" : ""}${(ls - lf).toFixed(4)} nats/token)`);
        r.carried.forEach((c, l) => console.log(`  sparse layer ${l}: kept experts carried ${(100 * c).toFixed(1)}% of the domain's assignments`));
        Object.assign(state, { experts: o.experts, dataDir: r.data, valLoss: r.valLoss });
      }
      const path = r.model.save(o.out, state);
      const { before, after } = r.parameters;
      console.log(`parameters: ${millions(before)} → ${millions(after)} (${((100 * after) / before).toFixed(1)}%); experts per sparse layer ${full.config.experts!.count} → ${r.model.config.experts!.count}`);
      console.log(`checkpoint: ${path}`);
    });
}

