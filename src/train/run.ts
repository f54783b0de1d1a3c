/**
 * The training loop around a Trainer: steps, periodic evaluation and
 * checkpoints, metrics.jsonl, plots, and the stop conditions (the step
 * budget, the wall-time budget, or a stop request between steps).
 *
 *   <out>/metrics.jsonl
 *   <out>/checkpoints/step-NNNNNNNN/
 *   <out>/plots/loss.svg, <out>/plots/experts.svg
 */
import { existsSync, lstatSync, mkdirSync, readFileSync, rmdirSync, rmSync, statSync, unlinkSync } from "node:fs";
import { statsPath } from "./ecss-model.js";
import { join, resolve } from "node:path";
import { z } from "zod";
import { completeLeftovers, listCheckpoints, openCheckpointFolder, refuseSymlink, removeRunCheckpoints } from "../checkpoint/folder.js";
import { SigmaError } from "../util/errors.js";
import { otherProcessAlive as processAlive } from "../util/process.js";
import { readRegularFile } from "../util/read.js";
import { WriteError, writeError, writeFileAtomic } from "../util/fs.js";
import type { TrainConfig } from "./config.js";
import type { DomainEval } from "./evaluate.js";
import { MetricsLog, readMetrics } from "./metrics.js";
import { expertLoadChart, lossChart } from "./plots.js";
import { saveTrainCheckpoint } from "./checkpoint.js";
import type { StepResult, Trainer } from "./trainer.js";

export interface RunHooks {
  onStep?(r: StepResult): void;
  onEval?(step: number, evals: DomainEval[]): void;
  onCheckpoint?(path: string): void;
  /** Polled between steps; true stops the run (with a checkpoint), e.g. after Ctrl-C. */
  shouldStop?(): boolean;
}

export interface RunOptions {
  /** The trainer was restored from a checkpoint: keep metrics up to its step. */
  resumed?: boolean;
  /** Stop once this step is reached (e.g. to interrupt a run in tests); the schedule still spans config.steps. */
  stopAtStep?: number;
  /** Unigram baselines per domain, drawn on the loss plot. */
  baselines?: Record<string, number>;
}

export interface RunResult {
  stopped: "done" | "time" | "requested" | "stopAtStep";
  steps: number;
  finalEval: DomainEval[];
  checkpoint: string;
  metrics: string;
  plots: string[];
}

export const runPaths = (out: string) => ({
  /** Written when a fresh run starts: who runs here and which expert store it creates. */
  marker: join(out, "run.json"),
  metrics: join(out, "metrics.jsonl"),
  checkpoints: join(out, "checkpoints"),
  lossPlot: join(out, "plots", "loss.svg"),
  expertPlot: join(out, "plots", "experts.svg"),
});

const RunMarkerSchema = z.object({
  format: z.literal("sigma-run"),
  pid: z.number().int().min(0).max(2 ** 31),
  startedAt: z.string().max(64),
  /** The expert store this run created (it did not exist when the run started), or null. */
  store: z.string().min(1).max(4096).nullable(),
});

/** How a run may treat an --out folder that already holds something. */
export interface RunFolderOptions {
  /** Continuing from a checkpoint: the folder's run is the one being continued. */
  resume?: boolean;
  /** Replace the run that the folder holds (its checkpoints, metrics, plots and the store it created). */
  overwrite?: boolean;
  /** Where the folder was named, for error messages: "--out" (the default) or e.g. "out in run.json". */
  flag?: string;
  /** Told what was replaced. */
  log?: (line: string) => void;
  /** Whether the command can continue a run (sigma train --resume; sigma demo cannot): shapes the hint. */
  canResume?: boolean;
}


function readMarker(path: string): z.infer<typeof RunMarkerSchema> | null {
  if (!existsSync(path)) return null;
  try {
    const m = RunMarkerSchema.safeParse(JSON.parse(readRegularFile(path, "run marker", "remove it (Sigma writes it when a run starts)", 2 ** 20).toString("utf8")));
    return m.success ? m.data : null;
  } catch {
    return null;
  }
}

/**
 * Makes `config.out` ready for a run, before anything is written or
 * allocated, and never changes an earlier run's files unless asked:
 *
 *   - links at the paths a run writes (checkpoints/, metrics.jsonl, plots/,
 *     run.json) are refused: a run never writes through a link;
 *   - a fresh run into a folder that holds another run's checkpoints is
 *     refused, naming --resume and --overwrite; with `overwrite` that run's
 *     checkpoints, metrics, plots and the expert store it created go;
 *   - a run that was killed before its first checkpoint left nothing to
 *     resume: starting it again replaces what it left (its metrics and the
 *     store it created, as recorded in run.json);
 *   - a fresh run records itself in run.json, with the store it is about to
 *     create (only a store that does not exist yet is recorded, so a store
 *     that belongs to someone else is never removed).
 */
export function prepareRunFolder(config: Pick<TrainConfig, "out">, storePath: string | null, opts: RunFolderOptions = {}): void {
  const flag = opts.flag ?? "--out";
  const out = config.out;
  const p = runPaths(out);
  if (existsSync(out) && !statSync(out).isDirectory()) throw new SigmaError(`${out} (${flag}) is a file, not a folder`, `pass a folder as ${flag.split(" ")[0]}`);
  for (const path of [p.marker, p.metrics, p.checkpoints, join(out, "plots"), p.lossPlot, p.expertPlot]) refuseSymlink(path);
  for (const path of [p.marker, p.metrics]) {
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (st && !st.isFile()) throw new SigmaError(`${path} is not a file (a run writes it)`, `remove it, or choose another ${flag.split(" ")[0]}`);
  }
  const marker = readMarker(p.marker);
  // A live run is never joined or replaced, --overwrite or not.
  if (marker && processAlive(marker.pid)) throw new SigmaError(`another run (process ${marker.pid}) is writing to ${out} (${flag})`, `wait for it to finish or stop it, or choose another ${flag.split(" ")[0]}`);
  const writeMarker = (store: string | null): void => {
    mkdirSync(out, { recursive: true });
    writeFileAtomic(p.marker, JSON.stringify({ format: "sigma-run", pid: process.pid, startedAt: new Date().toISOString(), store }, null, 1) + "\n");
  };
  if (opts.resume) {
    if (existsSync(out)) writeMarker(marker?.store ?? null);
    return;
  }
  const ckpts = listCheckpoints(p.checkpoints);
  const leftovers = completeLeftovers(p.checkpoints);
  const holdsRun = ckpts.length > 0 || leftovers.length > 0 || (!marker && existsSync(p.metrics));
  if (holdsRun && !opts.overwrite) {
    const what = ckpts.length ? `checkpoints up to step ${ckpts[ckpts.length - 1]!.step}` : leftovers.length ? `a complete checkpoint in ${leftovers[0]}` : "metrics.jsonl";
    throw new SigmaError(`${out} (${flag}) already holds a run (${what})`, `${opts.canResume === false ? "pass" : "pass --resume to continue it,"} --overwrite to replace it, or choose another ${flag.split(" ")[0]}`);
  }
  if (holdsRun || marker) {
    const leftBehind = holdsRun || existsSync(p.metrics) || (marker?.store != null && existsSync(marker.store));
    // Replace the earlier run's files by name only: its checkpoint folders, metrics.jsonl, its two
    // plots and run.json; whatever else the folder holds stays. Its store goes only when this run's
    // own store path names it (run.json alone never steers a delete) and that run created it (or it
    // is the default store inside the folder, with --overwrite).
    const ours = storePath !== null && ((marker?.store ?? null) === resolve(storePath) || (opts.overwrite && resolve(storePath) === resolve(out, "experts.sgxs")));
    removeRunCheckpoints(p.checkpoints);
    for (const f of [p.metrics, p.lossPlot, p.expertPlot, ...(ours ? [storePath, statsPath(storePath)] : [])]) if (lstatSync(f, { throwIfNoEntry: false })?.isFile()) unlinkSync(f);
    try {
      rmdirSync(join(out, "plots"));
    } catch {
      /* not empty, or not there */
    }
    rmSync(p.marker, { force: true });
    if (leftBehind) opts.log?.(holdsRun ? `replacing the run in ${out} (--overwrite)` : `the earlier run in ${out} stopped before its first checkpoint: starting it again`);
  }
  writeMarker(storePath !== null && !existsSync(storePath) ? resolve(storePath) : null);
}

const evalRecord = (step: number, evals: DomainEval[]) => ({ kind: "eval", step, domains: Object.fromEntries(evals.map((e) => [e.domain, { loss: e.loss, perplexity: e.perplexity }])) });

export async function runTraining(t: Trainer, hooks: RunHooks = {}, opts: RunOptions = {}): Promise<RunResult> {
  try {
    return await trainLoop(t, hooks, opts);
  } catch (e) {
    throw stoppedByOutputError(e, t);
  }
}

/**
 * A write of metrics.jsonl or a plot that the system refused (a full disk,
 * an I/O error) stops the run with one error naming the file, the errno and
 * the step, and says which checkpoint is complete to resume from: checkpoints
 * are written all-or-nothing, and nothing more is written after the failure.
 */
function stoppedByOutputError(e: unknown, t: Trainer): unknown {
  const p = runPaths(t.config.out);
  if (!(e instanceof WriteError) || !(e.path === p.metrics || e.path.startsWith(join(t.config.out, "plots")))) return e;
  const fix = e.code === "ENOSPC" || e.code === "EDQUOT" ? "free some space" : e.code === "EIO" ? "check the disk" : "fix the folder";
  const newest = listCheckpoints(p.checkpoints).at(-1);
  let ckpt = `no checkpoint was written: ${fix}, then start the run again`;
  if (newest) {
    try {
      openCheckpointFolder(newest.path);
      ckpt = `the newest checkpoint, ${newest.path} (step ${newest.step}), is complete: ${fix}, then continue with --resume`;
    } catch (err) {
      ckpt = `the newest checkpoint, ${newest.path}, could not be read back either (${(err as Error).message.split("\n")[0]})`;
    }
  }
  return new SigmaError(`training stopped at step ${t.step}: ${e.detail}`, ckpt);
}

async function trainLoop(t: Trainer, hooks: RunHooks, opts: RunOptions): Promise<RunResult> {
  const c = t.config;
  const paths = runPaths(c.out);
  // Several ranks (docs/distributed.md): all train, rank 0 alone evaluates (expert parallel: all evaluate) and writes; the others write nothing.
  const lead = t.comm.rank === 0;
  if (lead) mkdirSync(c.out, { recursive: true });
  const log = lead ? new MetricsLog(paths.metrics, opts.resumed ? t.step : null) : null;
  const startSeconds = t.seconds;
  const wallStart = performance.now();
  let stopped: RunResult["stopped"] = "done";
  let lastEval: DomainEval[] | null = null;
  let lastEvalStep = -1;
  let lastCkpt = "";
  let lastCkptStep = -1;
  const evaluate = (): DomainEval[] => {
    // Expert parallel: every rank takes part (rank 0 does not hold every expert); rank 0 alone logs.
    if (!log && !t.expertParallel) return (lastEval = []);
    const ev = t.evaluate();
    if (!log) return (lastEval = []);
    log.append(evalRecord(t.step, ev));
    hooks.onEval?.(t.step, ev);
    lastEvalStep = t.step;
    return (lastEval = ev);
  };
  const checkpoint = (): void => {
    // What rank 0 saves stands for every rank: check that they all hold it.
    t.assertRanksInSync(`checkpoint at step ${t.step}`);
    lastCkptStep = t.step;
    // Expert parallel: the first expert group's ranks each write their shard of the experts.
    // ECSS on several ranks: every rank flushes its own store and hands rank 0 its index.
    const writes = log || (t.ecss !== null && t.comm.size > 1) || (t.expertParallel !== null && t.comm.rank < t.expertParallel.layout.group.size);
    if (!writes) return;
    const saved = saveTrainCheckpoint(t, paths.checkpoints);
    if (!log) return;
    lastCkpt = saved;
    log.append({ kind: "checkpoint", step: t.step, path: lastCkpt });
    hooks.onCheckpoint?.(lastCkpt);
  };
  /** Why to stop before the next step; on several ranks, agreed (any rank's reason stops all, at the same step). */
  const stopReason = (): RunResult["stopped"] | null => {
    const codes: RunResult["stopped"][] = ["done", "stopAtStep", "time", "requested"];
    let code = 0;
    if (opts.stopAtStep !== undefined && t.step >= opts.stopAtStep) code = 1;
    else if (c.maxSeconds !== null && (performance.now() - wallStart) / 1000 >= c.maxSeconds) code = 2;
    else if (hooks.shouldStop?.()) code = 3;
    if (t.comm.size > 1) {
      const v = Int32Array.of(code);
      t.comm.allreduce(v, "max");
      code = v[0]!;
    }
    return code ? codes[code]! : null;
  };

  while (t.step < c.steps) {
    const why = stopReason();
    if (why) {
      stopped = why;
      break;
    }
    const r = t.trainStep();
    // A diverged run stops before anything of it is logged or saved: the newest checkpoint stays the last good one.
    if (!Number.isFinite(r.loss)) {
      const newest = listCheckpoints(paths.checkpoints).at(-1);
      throw new SigmaError(
        `training diverged at step ${r.step}: the loss is ${r.loss} (learning rate ${r.lr.toPrecision(3)}, gradient norm ${r.gradNorm})`,
        `lower optim.lr or raise optim.warmupSteps, then ${newest ? `--resume from ${newest.path} (step ${newest.step}), or start again` : "start again"}`,
      );
    }
    if (log && (r.step % c.logEvery === 0 || r.step === c.steps)) {
      const { routing, ...scalars } = r;
      log.append({ kind: "train", ...scalars, tokensSeen: t.tokens, tokensPerSec: r.tokens / r.seconds, elapsed: t.seconds });
      if (routing.length) log.append({ kind: "routing", step: r.step, layers: routing });
    }
    hooks.onStep?.(r);
    if (c.eval.every > 0 && r.step % c.eval.every === 0) evaluate();
    if (c.checkpoint.every > 0 && r.step % c.checkpoint.every === 0) checkpoint();
    // Let signals and timers in between steps (each step runs synchronously).
    await new Promise((res) => setImmediate(res));
  }
  const finalEval = lastEvalStep === t.step && lastEval ? lastEval : evaluate();
  if (lastCkptStep !== t.step) checkpoint();
  if (!log) return { stopped, steps: t.step, finalEval, checkpoint: lastCkpt, metrics: paths.metrics, plots: [] };
  log.append({ kind: "end", step: t.step, stopped, seconds: t.seconds - startSeconds });
  const plots = writePlots(c.out, c.name, opts.baselines);
  return { stopped, steps: t.step, finalEval, checkpoint: lastCkpt, metrics: paths.metrics, plots };
}

/** Draws the run's plots from its metrics.jsonl; returns their paths. */
export function writePlots(out: string, name: string, baselines: Record<string, number> = {}): string[] {
  const p = runPaths(out);
  const records = readMetrics(p.metrics);
  try {
    mkdirSync(join(out, "plots"), { recursive: true });
  } catch (e) {
    throw writeError(join(out, "plots"), e, "create");
  }
  writeFileAtomic(p.lossPlot, lossChart(records, baselines, `${name}: training and per-domain validation loss`));
  writeFileAtomic(p.expertPlot, expertLoadChart(records));
  return [p.lossPlot, p.expertPlot];
}
