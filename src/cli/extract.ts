/**
 * `sigma extract`: a domain's sub-model (src/models/extract.ts). RRE models
 * give the exact, loss-free sub-model; MoGE and top-k models keep the experts
 * the domain's training data uses most, up to --experts per layer, and the
 * command reports what that costs in validation loss.
 */
import type { Command } from "commander";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { noGrad } from "../autograd/tape.js";
import { Loader } from "../data/loader.js";
import { modelRouter } from "../models/config.js";
import { expertUsage, extractByDomain, extractByUsage, keptByUsage } from "../models/extract.js";
import type { ModelInput, PanguSigma } from "../models/pangu-sigma.js";
import * as ops from "../ops/index.js";
import { Rng } from "../util/rng.js";
import { SigmaError } from "../util/errors.js";
import { millions, readModelSource, writeModelFolder } from "./model-folder.js";
import { FLAG_LIMITS, parseIntOpt } from "./tokenizer.js";
import { checkBatchFits } from "../train/memory.js";
import { ensureWritableDir } from "../util/fs.js";

/** `count` batches of one domain's tokens from a split, with the model's domain index. */
function* domainBatches(dataDir: string, split: "train" | "val", domain: string, d: number, T: number, B: number, count: number): Generator<ModelInput & { targets: Int32Array }> {
  const loader = new Loader(dataDir, { split, seqLen: T, batchSize: B, seed: 1, weights: { [domain]: 1 } });
  try {
    for (let i = 0; i < count; i++) {
      const b = loader.next();
      yield { tokens: b.x, targets: b.y, domains: new Int32Array(b.B).fill(d), B: b.B, T: b.T };
    }
  } finally {
    loader.close();
  }
}

function meanLoss(model: PanguSigma, batches: Iterable<ModelInput & { targets: Int32Array }>): number {
  model.eval();
  let sum = 0, n = 0;
  for (const b of batches) {
    sum += noGrad(() => ops.crossEntropy(model.forward(b).logits, b.targets).item()) * b.B * b.T;
    n += b.B * b.T;
  }
  return sum / n;
}

/** Largest |Δlogit| between the full model on `domain` and its sub-model, on random tokens. */
function extractionGap(full: PanguSigma, sub: PanguSigma, d: number): number {
  const T = Math.min(full.config.seqLen, 32);
  const rng = new Rng(1);
  const tokens = Int32Array.from({ length: 2 * T }, () => rng.int(full.config.vocabSize));
  const a = noGrad(() => full.eval().forward({ tokens, domains: Int32Array.of(d, d), B: 2, T }).logits.data);
  const b = noGrad(() => sub.eval().forward({ tokens, domains: Int32Array.of(0, 0), B: 2, T }).logits.data);
  let gap = 0;
  for (let i = 0; i < a.length; i++) gap = Math.max(gap, Math.abs(a[i]! - b[i]!));
  return gap;
}

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
    .action((o: { ckpt: string; domain: string; out: string; experts?: number; data?: string; batches: number; batchSize: number }) => {
      ensureWritableDir(o.out, "--out");
      const src = readModelSource(o.ckpt);
      const full = src.model;
      const c = full.config;
      const router = c.experts?.router.kind;
      if (!router || c.sparseLayers === 0) throw new SigmaError(`${src.path} is a dense model: it has no experts to extract`, "extract from a sparse or mixed model");
      const d = c.domains.findIndex((x) => x.name === o.domain);
      if (d < 0) throw new SigmaError(`Unknown domain "${o.domain}"; the model knows ${c.domains.map((x) => x.name).join(", ")}`, "pass one of them with --domain");
      const before = full.parameterCount();
      let sub: PanguSigma;
      const state: Record<string, unknown> = { format: "sigma-extract", from: src.path, fromStep: src.step, domain: o.domain, router };
      if (modelRouter(c)!.spec.extraction.exact) {
        if (o.experts !== undefined) throw new SigmaError(`--experts is for routers without domain structure (MoGE, top-k); a ${router} sub-model keeps its domain's experts whole`, "leave out --experts");
        sub = extractByDomain(full, o.domain);
        const gap = extractionGap(full, sub, d);
        console.log(`check: max |Δlogit| vs the full model on ${o.domain} = ${gap.toExponential(2)} (loss-free extraction: expected 0)`);
        state.maxLogitGap = gap;
      } else {
        if (o.experts === undefined) throw new SigmaError(`a ${router} model has no domain structure: say how many experts per layer to keep`, `pass --experts N (of ${c.experts!.count}); the domain's most used experts are kept`);
        const dataDir = o.data ?? src.dataDir;
        if (!dataDir || !existsSync(join(dataDir, "manifest.json"))) throw new SigmaError(`no prepared data to measure expert usage on (${dataDir ?? "the checkpoint names none"})`, "pass --data <dir> (a folder written by `sigma data prepare`)");
        const T = c.seqLen;
        checkBatchFits(full, o.batchSize, "--batch-size");
        const usage = expertUsage(full, domainBatches(dataDir, "train", o.domain, d, T, o.batchSize, o.batches));
        sub = extractByUsage(full, o.domain, usage, o.experts);
        const lossFull = meanLoss(full, domainBatches(dataDir, "val", o.domain, d, T, o.batchSize, o.batches));
        const lossSub = meanLoss(sub, domainBatches(dataDir, "val", o.domain, 0, T, o.batchSize, o.batches));
        console.log(`validation loss on ${o.domain}: full ${lossFull.toFixed(4)}, sub-model ${lossSub.toFixed(4)} (${lossSub >= lossFull ? "+" : ""}${(lossSub - lossFull).toFixed(4)} nats/token)`);
        const kept = keptByUsage(full, usage, o.experts);
        usage.forEach((u, l) => {
          const total = u.reduce((a, b) => a + b, 0);
          const carried = kept[l]!.reduce((a, e) => a + u[e]!, 0);
          console.log(`  sparse layer ${l}: kept experts carried ${((100 * carried) / Math.max(total, 1)).toFixed(1)}% of the domain's assignments`);
        });
        Object.assign(state, { experts: o.experts, dataDir, valLoss: { full: lossFull, sub: lossSub } });
      }
      const after = sub.parameterCount();
      Object.assign(state, { parameters: { before, after } });
      const path = writeModelFolder(o.out, src.step, sub, src.tokenizer?.text ?? null, state);
      console.log(`parameters: ${millions(before)} → ${millions(after)} (${((100 * after) / before).toFixed(1)}%); experts per sparse layer ${c.experts!.count} → ${sub.config.experts!.count}`);
      console.log(`checkpoint: ${path}`);
    });
}

