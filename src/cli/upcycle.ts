/**
 * `sigma upcycle`: grow a sparse model from a dense checkpoint (inheritance
 * learning, src/models/upcycle.ts), extending the vocabulary when a larger
 * tokenizer is given, and check on the spot that the sparse model computes
 * the dense one's logits on the old vocabulary.
 */
import type { Command } from "commander";
import { readFileSync } from "node:fs";
import { noGrad } from "../autograd/tape.js";
import { modelRouter, parseModelConfig, type ModelConfig } from "../models/config.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import { upcycle } from "../models/upcycle.js";
import { identityVocab, newIdsOfOld, vocabMapping, type VocabMap } from "../models/vocab-map.js";
import { loadTokenizer } from "../tokenizer/hfjson.js";
import { Rng } from "../util/rng.js";
import { SigmaError } from "../util/errors.js";
import { millions, readModelSource, writeModelFolder } from "./model-folder.js";
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

/**
 * Largest |Δlogit| between the dense and the sparse model on random tokens
 * of the old vocabulary that both keep, every domain the two share by name.
 */
export function upcycleGap(dense: PanguSigma, sparse: PanguSigma, map: VocabMap, seed = 1): number {
  const toNew = newIdsOfOld(map);
  const shared = Array.from({ length: map.oldSize }, (_, i) => i).filter((i) => toNew[i]! >= 0);
  const T = Math.min(dense.config.seqLen, 32);
  const rng = new Rng(seed);
  const oldIds = Array.from({ length: T }, () => shared[rng.int(shared.length)]!);
  const [Vo, Vn] = [map.oldSize, map.newSize];
  let gap = 0;
  dense.config.domains.forEach((dom, d) => {
    const s = sparse.config.domains.findIndex((x) => x.name === dom.name);
    if (s < 0) return;
    const a = noGrad(() => dense.eval().forward({ tokens: Int32Array.from(oldIds), domains: Int32Array.of(d), B: 1, T }).logits.data);
    const b = noGrad(() => sparse.eval().forward({ tokens: Int32Array.from(oldIds, (i) => toNew[i]!), domains: Int32Array.of(s), B: 1, T }).logits.data);
    for (let t = 0; t < T; t++) for (const o of shared) gap = Math.max(gap, Math.abs(a[t * Vo + o]! - b[t * Vn + toNew[o]!]!));
  });
  return gap;
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
    .action((o: { from: string; config: string; out: string; tokenizer?: string; oldTokenizer?: string; noise: number; seed: number }) => {
      ensureWritableDir(o.out, "--out");
      // The sparse model is built from its config alone: refuse one the machine cannot hold before reading anything.
      const { config: target, source } = readSparseConfigFrom(o.config);
      checkModelFits(target, source);
      const src = readModelSource(o.from);
      let vocab = identityVocab(src.model.config.vocabSize);
      let tokenizerText = src.tokenizer?.text ?? null;
      if (o.tokenizer) {
        const oldTok = o.oldTokenizer ? loadTokenizer(o.oldTokenizer).tokenizer : src.tokenizer?.tokenizer;
        if (!oldTok) throw new SigmaError(`${src.path} carries no tokenizer, so its rows cannot be matched to ${o.tokenizer}`, "pass the dense model's tokenizer with --old-tokenizer");
        if (oldTok.vocabSize !== src.model.config.vocabSize) throw new SigmaError(`the old tokenizer has ${oldTok.vocabSize} tokens but the dense model's vocabulary is ${src.model.config.vocabSize}`, "pass the tokenizer the dense model was trained with");
        vocab = vocabMapping(oldTok, loadTokenizer(o.tokenizer).tokenizer);
        tokenizerText = readFileSync(o.tokenizer, "utf8");
      }
      const sparse = upcycle(src.model, target, { vocab, noise: o.noise, noiseSeed: o.seed });
      const kept = vocab.oldId.reduce((n, id) => n + (id >= 0 ? 1 : 0), 0);
      const gap = upcycleGap(src.model, sparse, vocab);
      const router = target.experts!.router;
      const path = writeModelFolder(o.out, 0, sparse, tokenizerText, {
        format: "sigma-upcycle",
        from: src.path,
        fromStep: src.step,
        ...(src.dataDir ? { dataDir: src.dataDir } : {}),
        noise: o.noise,
        vocabulary: { old: vocab.oldSize, new: vocab.newSize, kept },
      });
      console.log(`dense ${millions(src.model.parameterCount())} parameters → ${target.denseLayers} dense + ${target.sparseLayers} sparse layers of ${target.experts!.count} experts (${router.kind}): ${millions(sparse.parameterCount())} parameters`);
      console.log(`vocabulary ${vocab.oldSize} → ${vocab.newSize}: ${kept} rows kept, ${vocab.newSize - kept} new (mean of their old byte pieces)`);
      const { spec } = modelRouter(target)!;
      const exact = spec.weightsSumToOne && o.noise === 0;
      console.log(`check: max |Δlogit| vs the dense model on old-vocabulary tokens = ${gap.toExponential(2)}${exact ? (gap <= 1e-4 ? " (function preserved)" : " (EXPECTED ~0: please report)") : " (not expected to be 0 with this router/noise)"}`);
      if (spec.drawn) console.log(spec.drawn);
      console.log(`checkpoint: ${path}`);
    });
}
