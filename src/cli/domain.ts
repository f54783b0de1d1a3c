/**
 * `sigma domain add`: the library's addDomain (src/api/domain.ts) on files —
 * a new domain for a trained model, only its new parameters trained, every
 * old domain's sub-model left bit-identical (RRE; docs/domains.md).
 */
import type { Command } from "commander";
import { join } from "node:path";
import { openModel } from "../api/model.js";
import { addDomain } from "../api/domain.js";
import { SigmaError } from "../util/errors.js";
import { ensureWritableDir } from "../util/fs.js";
import { millions } from "./format.js";
import { FLAG_LIMITS, parseIntOpt, parseNumOpt } from "./tokenizer.js";

interface AddOpts {
  ckpt: string;
  name: string;
  data: string;
  out: string;
  expertsFrom?: string;
  fresh?: boolean;
  steps: number;
  lr: number;
  batchSize: number;
  seed: number;
}

export function register(program: Command): void {
  const domain = program.command("domain").description("add a domain to a trained model (new experts, embedding slot and control token; nothing old retrained)");
  domain
    .command("add")
    .description("add a domain: a new RRE expert group (or new experts for MoGE / top-k), a new embedding slot when the model has per-domain slots, its control token; trains only those on the domain's text")
    .requiredOption("--ckpt <path>", "the trained model: a checkpoint folder (a run's checkpoints/ gives its newest)")
    .requiredOption("--name <name>", "the new domain's name (a-z, 0-9, _ . -)")
    .requiredOption("--data <dir>", "the domain's text: a folder of files / JSONL records, or a corpus root with a <name>/ folder")
    .requiredOption("--out <dir>", "where the grown model's checkpoint goes (its prepared data goes to <out>/data)")
    .option("--experts-from <domain>", "RRE: start the new experts and embedding slot as copies of this domain's")
    .option("--fresh", "start the new experts fresh (the default)")
    .option("--steps <n>", "training steps on the new domain", parseIntOpt("steps", 1, 1e7), 200)
    .option("--lr <f>", "peak learning rate", parseNumOpt("lr", 0, 10, { above: true }), 3e-3)
    .option("--batch-size <n>", "sequences per step", parseIntOpt("batch-size", 1, FLAG_LIMITS.batchSize), 8)
    .option("--seed <n>", "seed of the data order and split", parseIntOpt("seed", 0, FLAG_LIMITS.seed), 1)
    .action(async (o: AddOpts) => {
      if (o.fresh && o.expertsFrom !== undefined) throw new SigmaError("--fresh and --experts-from are two ways to start the new experts", "pass one of them");
      ensureWritableDir(o.out, "--out");
      const model = await openModel(o.ckpt);
      let last = 0;
      const r = await addDomain(model, {
        name: o.name,
        data: o.data,
        dataOut: join(o.out, "data"),
        steps: o.steps,
        lr: o.lr,
        batchSize: o.batchSize,
        seed: o.seed,
        ...(o.expertsFrom !== undefined ? { expertsFrom: o.expertsFrom } : {}),
        names: { expertsFrom: "--experts-from", data: "--data", batchSize: "--batch-size" },
        onStep: (step, loss) => {
          if (step === o.steps || performance.now() - last > 2000) {
            last = performance.now();
            console.error(`step ${step}/${o.steps}  loss ${loss.toFixed(4)}`);
          }
        },
      });
      const path = r.model.save(o.out, { format: "sigma-domain-add", from: model.path, fromStep: model.step, domainAdded: { name: r.domain, router: r.router, experts: r.experts, slot: r.slot, vocabulary: r.vocabulary, steps: o.steps, valLoss: r.valLoss } });
      console.log(`domain "${r.domain}" added (${r.router}): experts per sparse layer ${r.experts.before} → ${r.experts.after}${r.experts.copiedFrom ? ` (new ones copied from "${r.experts.copiedFrom}")` : " (new ones fresh)"}, embedding slot ${r.slot.index}${r.slot.fresh ? " (new)" : " (shared)"}, control token ${r.vocabulary.controlToken} (vocabulary ${r.vocabulary.old} → ${r.vocabulary.new})`);
      console.log(`trained ${millions(r.parameters.trained)} new parameters of ${millions(r.parameters.total)}; the others are unchanged`);
      console.log(`validation loss on ${r.domain}: ${r.valLoss.before.toFixed(4)} before, ${r.valLoss.after.toFixed(4)} after ${o.steps} steps`);
      if (!r.exact) console.log(`note: ${r.router} routing is shared by all domains, so the old domains' loss moves a little (docs/domains.md)`);
      console.log(`checkpoint: ${path}`);
    });
}
