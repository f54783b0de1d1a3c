/**
 * `sigma store inspect` (size, layout, residency, hit rates of an expert
 * store) and `sigma store convert` (a checkpoint between the in-RAM and store
 * layouts), plus the store options of `sigma train`.
 */
import type { Command } from "commander";
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { openCheckpointFolder } from "../checkpoint/folder.js";
import { ExpertStoreFile } from "../store/file.js";
import { RECORD_HEADER, formatBytes, paramsPerExpert, parseBytes, totalExperts, type IndexEntry } from "../store/format.js";
import { parseTrainConfig, type TrainConfig } from "../train/config.js";
import { readTrainState } from "../train/checkpoint.js";
import { statsPath, type EcssStats } from "../train/ecss.js";
import type { StoreSummary } from "../api/train.js";
import { convertCheckpoint } from "../train/ecss-convert.js";
import { SigmaError } from "../util/errors.js";
import { readRegularFile } from "../util/read.js";
import { ensureWritableDir, ensureWritableFile } from "../util/fs.js";

/** Applies `--store [path]` and `--expert-memory` to a train config. */
export function withStoreOptions(cfg: TrainConfig, o: { store?: string | true; expertMemory?: string }, source: string): TrainConfig {
  if (o.store === undefined && o.expertMemory === undefined) return cfg;
  if (o.expertMemory !== undefined) {
    try {
      parseBytes(o.expertMemory);
    } catch (e) {
      if (e instanceof SigmaError) throw new SigmaError(`--expert-memory: ${e.message}`);
      throw e;
    }
  }
  const store = { ...cfg.store, enabled: true, ...(typeof o.store === "string" ? { path: o.store } : {}), ...(o.expertMemory !== undefined ? { memory: o.expertMemory } : {}) };
  return parseTrainConfig({ ...cfg, store }, source);
}

const pct = (a: number, b: number): string => (b === 0 ? "-" : `${((100 * a) / b).toFixed(1)}%`);

/** One paragraph on a store in use: budget, residency, hit rates, I/O. */
export function describeStats(s: EcssStats): string {
  const looked = s.hits + s.misses;
  return [
    `resident: ${s.residentExperts}/${s.totalExperts} experts, ${formatBytes(s.residentBytes)} of a ${formatBytes(s.budget)} budget (peak ${formatBytes(s.peakBytes)}${s.overBudget ? `, ${s.overBudget} steps over budget: the step's working set did not fit` : ""})`,
    `cache hit rate: ${pct(s.hits, looked)} of ${looked} expert lookups (${s.prefetchHits} served by prefetch, ${s.prefetchRequested} prefetched); ${s.evictions} evictions, ${s.writeBacks} write-backs`,
    `I/O: ${s.io.reads} demand reads (${formatBytes(s.io.bytesRead)}), ${s.io.writes} writes (${formatBytes(s.io.bytesWritten)})`,
  ].join("\n");
}

export function describeStore(s: StoreSummary): string {
  const params = s.expertParameters;
  return `expert store ${s.path} (${(params / 1e6).toFixed(2)}M expert parameters, ${formatBytes(12 * params)} with their moments):\n  ${describeStats(s.stats).replaceAll("\n", "\n  ")}`;
}

interface Inspection {
  path: string;
  fileBytes: number;
  storeId: string;
  layers: { experts: number; width: number; expertWidth: number; paramsPerExpert: number; recordBytes: number }[];
  experts: number;
  parameters: number;
  /** Parameters plus both Adam moments, float32. */
  stateBytes: number;
  index: string;
  steps: { min: number; max: number; neverUpdated: number };
  verified: { ok: number; bad: string[] } | null;
  lastRun: (EcssStats & { writtenAt: string }) | null;
}

const num = z.number().finite();
/** The statistics a run writes beside its store at each checkpoint (shown by inspect; informative only). */
const StatsSchema = z
  .object({
    writtenAt: z.string().max(64),
    hits: num, misses: num, prefetchHits: num, prefetchRequested: num, evictions: num, writeBacks: num,
    residentExperts: num, totalExperts: num, residentBytes: num, budget: num, peakBytes: num, overBudget: num,
    io: z.object({ reads: num, writes: num, bytesRead: num, bytesWritten: num }).passthrough(),
  })
  .passthrough();

/** The last run's statistics, or null when there are none or the file is damaged (they are not needed for anything). */
function readLastRun(path: string): (EcssStats & { writtenAt: string }) | null {
  if (!existsSync(path)) return null;
  try {
    const r = StatsSchema.safeParse(JSON.parse(readRegularFile(path, "store statistics", "", 2 ** 20).toString("utf8")));
    return r.success ? (r.data as unknown as EcssStats & { writtenAt: string }) : null;
  } catch {
    return null;
  }
}

export function inspectStore(path: string, opts: { ckpt?: string; verify?: boolean } = {}): Inspection {
  const store = ExpertStoreFile.open(path, { readOnly: true }); // inspect only reads: a read-only store file opens
  try {
    const h = store.header;
    let index = "the store's own index (as created or converted)";
    if (opts.ckpt) {
      const f = openCheckpointFolder(opts.ckpt);
      const s = readTrainState(f);
      if (s.store?.storeId !== h.storeId) throw new SigmaError(`${f.path} was not written with the store ${path}`, "pass the checkpoint of the run that uses this store");
      store.restore(f.read("experts.index"), join(f.path, "experts.index"));
      index = `${f.path}/experts.index`;
    }
    const entries: IndexEntry[] = [];
    h.layers.forEach((l, li) => {
      for (let e = 0; e < l.experts; e++) entries.push(store.locate(li, e).entry);
    });
    const steps = entries.map((e) => e.step);
    let verified: Inspection["verified"] = null;
    if (opts.verify) {
      verified = { ok: 0, bad: [] };
      h.layers.forEach((l, li) => {
        const rec = new Uint8Array(h.recordBytes[li]!);
        for (let e = 0; e < l.experts; e++) {
          try {
            store.read(li, e, rec);
            verified!.ok++;
          } catch (err) {
            verified!.bad.push((err as Error).message.split("\n")[0]!);
          }
        }
      });
    }
    const sp = statsPath(path);
    const parameters = h.layers.reduce((s, l) => s + l.experts * paramsPerExpert(l), 0);
    return {
      path,
      fileBytes: statSync(path).size,
      storeId: h.storeId,
      layers: h.layers.map((l, i) => ({ ...l, paramsPerExpert: paramsPerExpert(l), recordBytes: h.recordBytes[i]! })),
      experts: totalExperts(h),
      parameters,
      stateBytes: 12 * parameters,
      index,
      steps: { min: Math.min(...steps), max: Math.max(...steps), neverUpdated: steps.filter((s) => s === 0).length },
      verified,
      lastRun: readLastRun(sp),
    };
  } finally {
    store.close();
  }
}

function formatInspection(r: Inspection): string {
  const lines = [
    `${r.path}: Sigma expert store ${r.storeId}, ${formatBytes(r.fileBytes)} on disk (two record slots per expert; ${RECORD_HEADER}-byte record headers, 4 KiB pages)`,
    ...r.layers.map((l, i) => `  sparse layer ${i}: ${l.experts} experts, C=${l.width}, F=${l.expertWidth}, ${l.paramsPerExpert} parameters each, ${formatBytes(l.recordBytes)} per record (weights + m + v)`),
    `  ${r.experts} experts, ${(r.parameters / 1e6).toFixed(2)}M expert parameters, ${formatBytes(r.stateBytes)} with their Adam moments`,
    `index: ${r.index}`,
    `  per-expert steps: min ${r.steps.min}, max ${r.steps.max}; ${r.steps.neverUpdated} experts never updated`,
  ];
  if (r.verified) lines.push(r.verified.bad.length ? `verify: ${r.verified.bad.length} unusable records:\n  ${r.verified.bad.join("\n  ")}` : `verify: all ${r.verified.ok} live records intact (crc32, generation)`);
  if (r.lastRun) lines.push(`last run (at its last checkpoint, ${r.lastRun.writtenAt}):\n  ${describeStats(r.lastRun).replaceAll("\n", "\n  ")}`);
  else lines.push("last run: no statistics yet (written at each checkpoint of a run using the store)");
  return lines.join("\n");
}

export function register(program: Command): void {
  const store = program.command("store").description("ECSS expert stores: inspect one, convert checkpoints between the in-RAM and store layouts");
  store
    .command("inspect <store>")
    .description("size, layout, per-expert step counts, and the last run's residency and hit rates")
    .option("--ckpt <path>", "read the index of this checkpoint (default: the store's own, which follows the newest checkpoint)")
    .option("--verify", "read and check every live record")
    .option("--json", "print JSON")
    .action((path: string, o: { ckpt?: string; verify?: boolean; json?: boolean }) => {
      const r = inspectStore(path, o);
      console.log(o.json ? JSON.stringify(r, null, 2) : formatInspection(r));
      const bad = r.verified?.bad.length ?? 0;
      if (bad) throw new SigmaError(`${bad} of ${bad + r.verified!.ok} live records of ${path} are unusable (listed above)`, "resume from a checkpoint whose records are intact (--ckpt names one to check), or restore the store from a backup");
    });
  store
    .command("convert")
    .description("write a copy of a checkpoint with the experts in RAM (--to ram) or in an expert store (--to store)")
    .requiredOption("--from <ckpt>", "checkpoint folder (or a run's checkpoints/ folder: its newest)")
    .requiredOption("--to <layout>", "ram or store")
    .requiredOption("--out <dir>", "checkpoints folder to write the converted step-NNNNNNNN into")
    .option("--store <path>", "the store file: to write (--to store), or to read instead of the one the checkpoint names (--to ram)")
    .action((o: { from: string; to: string; out: string; store?: string }) => {
      if (o.to !== "ram" && o.to !== "store") throw new SigmaError(`--to must be ram or store, got "${o.to}"`);
      ensureWritableDir(o.out, "--out");
      if (o.to === "store" && o.store !== undefined) ensureWritableFile(o.store, "--store");
      const path = convertCheckpoint(o.from, o.to, o.out, o.store);
      console.log(`wrote ${path}`);
      console.log(o.to === "store" ? "resume it with store.enabled (and store.path) set, e.g. `sigma train --config run.json --store PATH --resume " + path + "`" : "resume it with store.enabled off and optim.sparseExperts on (the sparse rule it was trained with)");
    });
}
