/**
 * The training loop around a Trainer: steps, periodic evaluation and
 * checkpoints, metrics.jsonl, plots, and the stop conditions (the step
 * budget, the wall-time budget, or a stop request between steps).
 *
 *   <out>/metrics.jsonl
 *   <out>/checkpoints/step-NNNNNNNN/
 *   <out>/plots/loss.svg, <out>/plots/experts.svg
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic } from "../util/fs.js";
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
  metrics: join(out, "metrics.jsonl"),
  checkpoints: join(out, "checkpoints"),
  lossPlot: join(out, "plots", "loss.svg"),
  expertPlot: join(out, "plots", "experts.svg"),
});

const evalRecord = (step: number, evals: DomainEval[]) => ({ kind: "eval", step, domains: Object.fromEntries(evals.map((e) => [e.domain, { loss: e.loss, perplexity: e.perplexity }])) });

export async function runTraining(t: Trainer, hooks: RunHooks = {}, opts: RunOptions = {}): Promise<RunResult> {
  const c = t.config;
  const paths = runPaths(c.out);
  mkdirSync(c.out, { recursive: true });
  const log = new MetricsLog(paths.metrics, opts.resumed ? t.step : null);
  const startSeconds = t.seconds;
  const wallStart = performance.now();
  let stopped: RunResult["stopped"] = "done";
  let lastEval: DomainEval[] | null = null;
  let lastEvalStep = -1;
  let lastCkpt = "";
  let lastCkptStep = -1;
  const evaluate = (): DomainEval[] => {
    const ev = t.evaluate();
    log.append(evalRecord(t.step, ev));
    hooks.onEval?.(t.step, ev);
    lastEvalStep = t.step;
    return (lastEval = ev);
  };
  const checkpoint = (): void => {
    lastCkpt = saveTrainCheckpoint(t, paths.checkpoints);
    lastCkptStep = t.step;
    log.append({ kind: "checkpoint", step: t.step, path: lastCkpt });
    hooks.onCheckpoint?.(lastCkpt);
  };

  while (t.step < c.steps) {
    if (opts.stopAtStep !== undefined && t.step >= opts.stopAtStep) {
      stopped = "stopAtStep";
      break;
    }
    if (c.maxSeconds !== null && (performance.now() - wallStart) / 1000 >= c.maxSeconds) {
      stopped = "time";
      break;
    }
    if (hooks.shouldStop?.()) {
      stopped = "requested";
      break;
    }
    const r = t.trainStep();
    if (r.step % c.logEvery === 0 || r.step === c.steps) {
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
  log.append({ kind: "end", step: t.step, stopped, seconds: t.seconds - startSeconds });
  const plots = writePlots(c.out, c.name, opts.baselines);
  return { stopped, steps: t.step, finalEval, checkpoint: lastCkpt, metrics: paths.metrics, plots };
}

/** Draws the run's plots from its metrics.jsonl; returns their paths. */
export function writePlots(out: string, name: string, baselines: Record<string, number> = {}): string[] {
  const p = runPaths(out);
  const records = readMetrics(p.metrics);
  mkdirSync(join(out, "plots"), { recursive: true });
  writeFileAtomic(p.lossPlot, lossChart(records, baselines, `${name}: training and per-domain validation loss`));
  writeFileAtomic(p.expertPlot, expertLoadChart(records));
  return [p.lossPlot, p.expertPlot];
}
