/**
 * `sigma upcycle`: the library's upcycle (src/api/upcycle.ts) on files — grow
 * a sparse model from a dense checkpoint (inheritance), extending the vocabulary when a larger
 * tokenizer is given, and check on the spot that the sparse model computes
 * the dense one's logits on the old vocabulary.
 */
import type { Command } from "commander";
import { readFileSync } from "node:fs";
import { openModel } from "../api/model.js";
import { upcycle } from "../api/upcycle.js";
import { parseModelConfig, type ModelConfig } from "../models/config.js";
import { SigmaError } from "../util/errors.js";
import { millions } from "./format.js";
import { FLAG_LIMITS, parseIntOpt, parseNumOpt } from "./tokenizer.js";
import { ensureWritableDir } from "../util/fs.js";
import { checkModelFits } from "../train/memory.js";

/** The sparse model config from a JSON file: a model config, or a train config (its "model" section). */
export function readSparseConfig(path: string): ModelConfig {
  return readSparseConfigFrom(path).config;
}

/** The config and how errors name it ("run.json (model section)" for a train config). */
function readSparseConfigFrom(path: string): { config: ModelConfig; source: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new SigmaError(`cannot read the config ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "pass --config with a JSON model config (or a train config: its model section is used)");
  }
  const isTrain = typeof raw === "object" && raw !== null && "model" in raw;
  const source = isTrain ? `${path} (model section)` : path;
  return { config: parseModelConfig(isTrain ? (raw as { model: unknown }).model : raw, source), source };
}

export function register(program: Command): void {
  program
    .command("upcycle")
    .description("grow a sparse model from a dense checkpoint: experts start as the dense FFN, routers fresh, vocabulary extended (PanGu-Σ inheritance)")
    .requiredOption("--from <ckpt>", "dense checkpoint folder, or a model .safetensors (tokenizer.json beside it when there is one)")
    .requiredOption("--config <file>", "the sparse model's config (JSON model config, or a train config whose model section is used)")
    .requiredOption("--out <dir>", "where the upcycled checkpoint goes (<out>/step-00000000/)")
    .option("--tokenizer <file>", "a larger tokenizer.json to extend the vocabulary to (rows matched by token string)")
    .option("--old-tokenizer <file>", "the dense model's tokenizer, when its checkpoint does not carry one")
    .option("--noise <f>", "Gaussian noise on each expert copy, as a fraction of the weight's std (0 = exact copies)", parseNumOpt("noise", 0, 1e3), 0)
    .option("--seed <n>", "seed of the noise", parseIntOpt("seed", 0, FLAG_LIMITS.seed), 1)
    .action(async (o: { from: string; config: string; out: string; tokenizer?: string; oldTokenizer?: string; noise: number; seed: number }) => {
      ensureWritableDir(o.out, "--out");
      // The sparse model is built from its config alone: refuse one the machine cannot hold before reading anything.
      const { config: target, source } = readSparseConfigFrom(o.config);
      checkModelFits(target, source);
      const dense = await openModel(o.from);
      const r = upcycle(dense, target, { noise: o.noise, seed: o.seed, ...(o.tokenizer !== undefined ? { tokenizer: o.tokenizer } : {}), ...(o.oldTokenizer !== undefined ? { oldTokenizer: o.oldTokenizer } : {}) });
      const { vocabulary: v, gap } = r;
      const path = r.model.save(o.out, { format: "sigma-upcycle", from: dense.path, fromStep: dense.step, noise: o.noise, vocabulary: v });
      const router = target.experts!.router;
      console.log(`dense ${millions(dense.parameters.total)} parameters → ${target.denseLayers} dense + ${target.sparseLayers} sparse layers of ${target.experts!.count} experts (${router.kind}): ${millions(r.model.parameters.total)} parameters (${millions(r.model.parameters.active)} active per token)`);
      console.log(`vocabulary ${v.old} → ${v.new}: ${v.kept} rows kept, ${v.new - v.kept} new (mean of their old byte pieces)`);
      console.log(`check: max |Δlogit| vs the dense model on old-vocabulary tokens = ${gap.toExponential(2)}${r.exact ? (gap <= 1e-4 ? " (function preserved)" : " (EXPECTED ~0: please report)") : " (not expected to be 0 with this router/noise)"}`);
      if (r.drawn) console.log(r.drawn);
      console.log(`checkpoint: ${path}`);
    });
}
