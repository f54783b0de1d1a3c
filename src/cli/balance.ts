/**
 * `sigma balance …` (loads and imbalance of a checkpoint's routers on real
 * batches), `sigma simulate …` (expert-parallel step time, from a
 * checkpoint on data or from the synthetic router) and `sigma scale …`
 * (predicted step time and imbalance loss at 8–512 ranks per router, on an
 * interconnect profile or the figures bench comm measured).
 */
import type { Command } from "commander";
import { writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { balanceFromCheckpoint } from "../balance/checkpoint.js";
import { resolveHardware, HARDWARE_PRESETS } from "../balance/hardware.js";
import { choosePlacement } from "../balance/placement.js";
import { svgsToPng } from "../balance/png.js";
import { formatBalance, summarizeLayer, writeBalancePictures } from "../balance/report.js";
import { resolveShape, shapeFromConfig, SHAPE_PRESETS } from "../balance/shape.js";
import { simulateStep, type SimMode } from "../balance/simulator.js";
import { formatStudy, runStudy, writeStudyPictures } from "../balance/study.js";
import { formatScaling, INTERCONNECTS, predictScaling, resolveInterconnect } from "../balance/scaling.js";
import type { Split } from "../data/shards.js";
import { SigmaError } from "../util/errors.js";
import { DEFAULT_DATA } from "./data.js";
import { FLAG_LIMITS, parseIntOpt, parseList } from "./tokenizer.js";
import { MODEL_LIMITS } from "../models/config.js";
import { ensureWritableDir } from "../util/fs.js";

/** Tokens in one synthetic batch: past this the study's score matrices reach gigabytes. */
const MAX_SYNTHETIC_TOKENS = 2 ** 20;
/** Simulated steps per batch size. */
const MAX_SIM_STEPS = 1e4;

export const DEFAULT_BALANCE_OUT = ".sigma/balance";

const parsePositive = (name: string, max: number) => (v: string): number => {
  const n = v.trim() === "" ? NaN : Number(v);
  if (!(n > 0 && n <= max)) throw new SigmaError(`--${name} must be a positive number up to ${max}, got "${v}"`);
  return n;
};
const parseNonNegative = (name: string, max: number) => (v: string): number => {
  const n = v.trim() === "" ? NaN : Number(v);
  if (!(n >= 0 && n <= max)) throw new SigmaError(`--${name} must be a number from 0 to ${max}, got "${v}"`);
  return n;
};
const parseSplit = (v: string): Split => {
  if (v !== "train" && v !== "val") throw new SigmaError(`--split must be train or val, got "${v}"`);
  return v;
};
const parseMode = (v: string): SimMode => {
  if (v !== "infer" && v !== "train") throw new SigmaError(`--mode must be infer or train, got "${v}"`, "infer: forward only; train: forward and backward");
  return v;
};
const parseTokens = (v: string): number[] =>
  parseList(v).map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 1 || n > MAX_SYNTHETIC_TOKENS) throw new SigmaError(`--tokens: "${s}" is not a positive integer of at most ${MAX_SYNTHETIC_TOKENS}`, "give batch sizes in tokens, comma-separated: 16,256,4096");
    return n;
  });

interface CkptOpts {
  ckpt: string;
  data: string;
  devices?: number;
  placement?: string;
  batches: number;
  batchSize: number;
  seqLen?: number;
  capacityFactor?: number;
  split: Split;
  seed: number;
  out: string;
  json?: boolean;
  png?: boolean;
}

function checkpointOptions(cmd: Command): Command {
  return cmd
    .option("--data <dir>", "prepared data folder", DEFAULT_DATA)
    .option("--devices <D>", "devices; experts are placed in contiguous blocks unless --placement is given", parseIntOpt("devices", 1, FLAG_LIMITS.experts))
    .option("--placement <file>", 'placement JSON: {"devices": D, "experts": [device of each expert]} or {"devices": D, "groups": [[experts], …]}')
    .option("--batches <n>", "batches to route", parseIntOpt("batches", 1, FLAG_LIMITS.batches), 20)
    .option("--batch-size <B>", "sequences per batch", parseIntOpt("batch-size", 1, FLAG_LIMITS.batchSize), 8)
    .option("--seq-len <T>", "tokens per sequence (default: the model's seqLen)", parseIntOpt("seq-len", 1, MODEL_LIMITS.seqLen))
    .option("--split <split>", "data split: train or val", parseSplit, "val" as Split)
    .option("--seed <n>", "seed of the batch sampler", parseIntOpt("seed", 0, FLAG_LIMITS.seed), 1)
    .option("--out <dir>", "folder for the pictures", DEFAULT_BALANCE_OUT)
    .option("--png", "also write PNG copies of the SVG pictures (needs rsvg-convert)");
}

export function register(program: Command): void {
  checkpointOptions(
    program
      .command("balance")
      .description("route real batches through a checkpoint: per-layer, per-expert and per-device loads, the imbalance score IS per batch, drops under a capacity factor")
      .requiredOption("--ckpt <path>", "model .safetensors file or checkpoint folder"),
  )
    .option("--capacity-factor <c>", "count the assignments a capacity of ceil(c·tokens·k/E) per expert would drop", parsePositive("capacity-factor", MODEL_LIMITS.experts), 1.25)
    .option("--json", "print JSON")
    .action((o: CkptOpts) => {
      ensureWritableDir(o.out, "--out");
      const rep = balanceFromCheckpoint({ ...o, placementFile: o.placement, capacityFactor: o.capacityFactor ?? null });
      const sparseBase = rep.model.config.denseLayers;
      const summaries = rep.layers.map((l, i) => summarizeLayer(l, sparseBase + i));
      if (o.json) {
        console.log(JSON.stringify({ router: rep.router, experts: rep.experts, k: rep.k, devices: rep.placement.devices, tokensPerBatch: rep.tokensPerBatch, capacityFactor: rep.capacityFactor, layers: summaries.map((s, i) => ({ ...s, imbalancePerBatch: rep.layers[i]!.imbalance })) }, null, 2));
      } else {
        const head = `${rep.router} router, ${rep.experts} experts, ${rep.k} per token, ${rep.placement.devices} devices, ${o.batches} batches of ${rep.tokensPerBatch} tokens`;
        console.log(formatBalance(head, summaries, rep.capacityFactor));
      }
      const pics = writeBalancePictures(o.out, `${rep.router}`, summaries, rep.layers);
      console.error(`pictures: ${[...pics, ...(o.png ? svgsToPng(pics) : [])].join(", ")}`);
    });

  checkpointOptions(
    program
      .command("simulate")
      .description("simulate expert-parallel step time (compute, all-to-all, time lost to imbalance, tokens/s) from a checkpoint on data (--ckpt) or the synthetic router (top-k vs MoGE)")
      .option("--ckpt <path>", "route with this checkpoint on --data (else: the synthetic router)"),
  )
    .option("--hardware <name|file>", `hardware profile: ${Object.keys(HARDWARE_PRESETS).join(", ")}, or a JSON file`, "npu-cluster")
    .option("--shape <name|file>", `model shape for the synthetic router: ${Object.keys(SHAPE_PRESETS).join(", ")}, or a JSON file`, "pangu-pro-moe")
    .option("--mode <mode>", "infer (forward) or train (forward + backward)", parseMode, "infer" as SimMode)
    .option("--k <k>", "synthetic: experts per token", parseIntOpt("k", 1, FLAG_LIMITS.experts), 8)
    .option("--groups <G>", "synthetic: MoGE groups (default: --devices)", parseIntOpt("groups", 1, FLAG_LIMITS.experts))
    .option("--skew <s>", "synthetic: Zipf exponent of expert popularity (0 = uniform)", parseNonNegative("skew", 100), 0)
    .option("--tokens <list>", "synthetic: tokens per batch, comma-separated", parseTokens, [16, 64, 256, 1024, 4096])
    .option("--steps <n>", "synthetic: simulated steps per batch size", parseIntOpt("steps", 1, MAX_SIM_STEPS), 3)
    .action((o: CkptOpts & { ckpt?: string; hardware: string; shape: string; mode: SimMode; k: number; groups?: number; skew: number; tokens: number[]; steps: number }) => {
      ensureWritableDir(o.out, "--out");
      const hw = resolveHardware(o.hardware);
      if (o.ckpt !== undefined) {
        const rep = balanceFromCheckpoint({ ...o, ckpt: o.ckpt, placementFile: o.placement, capacityFactor: null, keepRoutings: true });
        const shape = shapeFromConfig(rep.model.config);
        const steps = rep.routings.map((r) => simulateStep(shape, hw, rep.placement, r, o.mode)).sort((a, b) => a.seconds - b.seconds);
        const mid = steps[Math.floor(steps.length / 2)]!;
        console.log(`${rep.router} router on ${hw.name} (${o.mode}), ${rep.placement.devices} devices, ${rep.tokensPerBatch} tokens per step (median of ${steps.length} batches):`);
        console.log(`  step ${(mid.seconds * 1e3).toFixed(4)} ms, lost to imbalance ${(mid.lostToImbalance * 1e3).toFixed(4)} ms (${((100 * mid.lostToImbalance) / mid.seconds).toFixed(1)}%), ${mid.tokensPerSecond.toFixed(0)} tokens/s`);
        return;
      }
      const shape = resolveShape(o.shape);
      if (o.devices === undefined && o.placement === undefined) throw new SigmaError("simulate needs --devices (or --placement)", "e.g. --devices 8 for Pangu Pro MoE's 8 groups");
      const placement = choosePlacement(shape.experts, o.devices, o.placement);
      const rows = runStudy({ shape, hardware: hw, devices: placement.devices, placement, k: o.k, groups: o.groups, skew: o.skew, tokens: o.tokens, batches: o.batches, steps: o.steps, mode: o.mode, seed: o.seed });
      console.log(`synthetic router, ${shape.name}: ${shape.experts} experts, top-${o.k}, ${placement.devices} devices, skew ${o.skew}, ${hw.name} (${o.mode}), ${o.batches} batches per size`);
      console.log(formatStudy(rows));
      const pics = writeStudyPictures(o.out, rows, `${shape.experts} experts, top-${o.k}, ${placement.devices} devices, skew ${o.skew}`);
      mkdirSync(o.out, { recursive: true });
      writeFileSync(join(o.out, "study.md"), formatStudy(rows) + "\n");
      console.error(`pictures: ${[...pics, ...(o.png ? svgsToPng(pics) : [])].join(", ")}`);
    });

  program
    .command("scale")
    .description("predict expert-parallel step time and the share lost to imbalance at 8–512 ranks for RRE, MoGE and top-k (one sparse layer of Pangu Pro MoE's size, training), on an interconnect profile or bench comm's measured figures")
    .option("--interconnect <name|file>", `link per rank: ${Object.keys(INTERCONNECTS).join(", ")}, or the JSON of \`npm run bench -- comm --json\``, "ib-hdr")
    .option("--hardware <name|file>", `compute per rank (its link is replaced by --interconnect): ${Object.keys(HARDWARE_PRESETS).join(", ")}, or a JSON file`, "a100-ib")
    .option("--ranks <list>", "rank counts, comma-separated (divisors or multiples of 64)", (v: string) => parseList(v).map(Number), [8, 16, 32, 64, 128, 256, 512])
    .option("--tokens-per-rank <n>", "tokens each rank holds in the step", parseIntOpt("tokens-per-rank", 1, 65536), 256)
    .option("--skew <s>", "Zipf exponent of expert popularity for the learned routers (0 = uniform)", parseNonNegative("skew", 100), 0)
    .option("--seed <n>", "seed of the synthetic routing", parseIntOpt("seed", 0, FLAG_LIMITS.seed), 1)
    .option("--json", "print JSON")
    .action((o: { interconnect: string; hardware: string; ranks: number[]; tokensPerRank: number; skew: number; seed: number; json?: boolean }) => {
      const interconnect = resolveInterconnect(o.interconnect);
      const hardware = resolveHardware(o.hardware);
      const rows = predictScaling({ hardware, interconnect, ranks: o.ranks, tokensPerRank: o.tokensPerRank, skew: o.skew, seed: o.seed });
      if (o.json) return console.log(JSON.stringify({ interconnect, hardware, tokensPerRank: o.tokensPerRank, skew: o.skew, rows }));
      console.log(`${interconnect.name}: ${interconnect.note}; compute ${hardware.name}; ${o.tokensPerRank} tokens per rank, skew ${o.skew}; step = one sparse layer, forward + backward; lost = share of the step lost to imbalance`);
      console.log(formatScaling(rows));
    });
}
