/**
 * `train(config, options)`: one training run as a library call — the
 * function `sigma train` and `sigma demo` are thin shells over.
 *
 * Before anything is written or allocated it checks the output folder, the
 * expert store's path and the machine's memory; it never joins or replaces
 * another run unless asked (`resume`, `overwrite`; see prepareRunFolder).
 * `signal` stops the run after the current step, with a checkpoint, and the
 * promise resolves with `stopped: "aborted"`; `onProgress` hears every step,
 * evaluation and checkpoint.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Precision } from "../backend/backend.js";
import { bf16Path } from "../backend/index.js";
import type { Bf16Path } from "../backend/native/index.js";
import { readManifest, readManifestIfPresent } from "../data/manifest.js";
import { activeParameters, parameterCounts } from "../models/config.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import { openModelSource } from "../serve/open.js";
import { sha256Hex } from "../tokenizer/hfjson.js";
import { diffFields, resumeTrainer } from "../train/checkpoint.js";
import { configWarnings, parseTrainConfig, type TrainConfig, type TrainConfigInput } from "../train/config.js";
import type { DomainEval } from "../train/evaluate.js";
import { allDomains } from "../train/evaluate.js";
import { unigramBaselines } from "../train/baseline.js";
import { checkRunFits } from "../train/memory.js";
import { prepareRunFolder, runPaths, runTraining } from "../train/run.js";
import { Trainer, storePath, type StepResult } from "../train/trainer.js";
import type { EcssStats } from "../train/ecss.js";
import { paramsPerExpert } from "../store/format.js";
import { SigmaError } from "../util/errors.js";
import { soloComm, type Communicator } from "../comm/comm.js";
import { parallelPlan } from "../train/data-parallel.js";
import { ensureWritableDir, ensureWritableFile } from "../util/fs.js";
import { Model, type ParameterSummary } from "./model.js";

/** An ECSS run's expert store: where it is, how many expert parameters it holds, and its residency and I/O so far. */
export interface StoreSummary {
  path: string;
  expertParameters: number;
  stats: EcssStats;
}

/** What `onProgress` hears. */
export type TrainEvent =
  | {
      kind: "start";
      step: number;
      steps: number;
      resumedFrom: string | null;
      parameters: ParameterSummary;
      router: string | null;
      store: StoreSummary | null;
      /** The run's precision, and for bf16 the path its products take (src/backend/index.ts bf16Path). */
      precision: Precision;
      bf16Path: Bf16Path | "reference" | null;
    }
  | ({ kind: "step"; steps: number } & StepResult)
  | { kind: "eval"; step: number; domains: DomainEval[]; all: DomainEval | null }
  | { kind: "checkpoint"; step: number; path: string };

export interface TrainOptions {
  /** Aborting stops the run after the current step, with a checkpoint. */
  signal?: AbortSignal;
  onProgress?: (event: TrainEvent) => void;
  /** Continue the run in config.out (true: its newest checkpoint), or from this checkpoint folder. */
  resume?: boolean | string;
  /** Replace the run config.out already holds (its checkpoints, metrics, plots and the store it created). */
  overwrite?: boolean;
  /** Start from these weights (a path any command reads, or an opened Model); its config must equal config.model. */
  init?: string | Model;
  /** Human-readable notes (warnings about the config, memory or data; a replaced run). Default: none. */
  log?: (line: string) => void;
  /** How errors name the config and its out folder / store path (the CLI passes its flags). */
  names?: { config?: string; out?: string; store?: string };
  /**
   * The ranks to train on (data parallel, docs/distributed.md): `joinWorld().comm`
   * in a process an MPI launcher started. Every rank calls train with the same
   * config and options; rank 0 alone writes the run folder and hears
   * onProgress and log. Default: one process.
   */
  comm?: Communicator;
  /** @internal Stop once this step is reached (tests of interrupted runs). */
  stopAtStep?: number;
}

export interface TrainResult {
  /** Why it ended: the step budget, the time budget, the signal, or stopAtStep. */
  stopped: "done" | "time" | "aborted" | "stopAtStep";
  /** Optimizer steps done. */
  steps: number;
  /** Tokens trained on, and seconds spent training, over the whole run (resumed parts included). */
  tokens: number;
  seconds: number;
  /** The final evaluation, per domain, and all domains together. */
  finalEval: DomainEval[];
  all: DomainEval | null;
  /** The newest checkpoint folder (openModel reads it). */
  checkpoint: string;
  metrics: string;
  plots: string[];
  parameters: ParameterSummary;
  /** Unigram cross-entropy of each domain's validation tokens: the loss a model that ignores context reaches. */
  baselines: Record<string, number>;
  /** The expert store at the end (ECSS runs), else null. */
  store: StoreSummary | null;
}

/** The starting weights of a new run: a model whose config equals the run's model section, made with the data's tokenizer. */
function initModel(init: string | Model, config: TrainConfig): PanguSigma {
  const m = typeof init === "string" ? Model.fromSource(openModelSource(init)) : init;
  const where = m.path ?? "the init model";
  const diff = diffFields(m.config, config.model);
  if (diff.length) throw new SigmaError(`--init ${where} does not match the run's model section:\n  ${diff.join("\n  ")}`, "copy the config the model was made with (e.g. the one given to `sigma upcycle --config`) into the run's model section");
  const manifest = join(config.data.dir, "manifest.json");
  if (m.tokenizerText !== null && existsSync(manifest) && sha256Hex(m.tokenizerText) !== readManifest(manifest).tokenizer.sha256) {
    throw new SigmaError(`--init ${where} was made with another tokenizer than the data in ${config.data.dir}`, "prepare the data with the model's tokenizer (sigma data prepare --tokenizer), or upcycle with the data's tokenizer");
  }
  return m.network;
}

function storeSummary(t: Trainer): StoreSummary | null {
  if (!t.ecss) return null;
  const expertParameters = t.ecss.store.header.layers.reduce((s, l) => s + l.experts * paramsPerExpert(l), 0);
  return { path: t.ecss.store.path, expertParameters, stats: t.ecss.stats() };
}

export async function train(config: TrainConfigInput | TrainConfig, o: TrainOptions = {}): Promise<TrainResult> {
  const names = { config: o.names?.config ?? "train config", out: o.names?.out ?? "out", store: o.names?.store ?? "store.path" };
  const cfg = parseTrainConfig(config, names.config);
  const comm = o.comm ?? soloComm;
  const lead = comm.rank === 0;
  const log = lead && o.log ? o.log : () => {};
  // Several ranks: parallel.* must fit the ranks launched (checked on every rank before anything else).
  parallelPlan(cfg, comm.size, names.config);
  if (o.resume && o.init) throw new SigmaError("--resume and --init exclude each other", "--init starts a new run from a model; --resume continues a run");
  if (o.resume && o.overwrite) throw new SigmaError("--resume and --overwrite exclude each other", "--resume continues the run in --out; --overwrite replaces it with a new one");
  // Before anything is written or allocated: a folder we can write, a store path that is a file, and memory for the run.
  if (lead) ensureWritableDir(cfg.out, names.out);
  if (lead && cfg.store.enabled) ensureWritableFile(storePath(cfg), names.store);
  const fit = checkRunFits(cfg, names.config);
  if (fit.warning) log(`warning: ${fit.warning}`);
  for (const w of configWarnings(cfg, readManifestIfPresent(cfg.data.dir))) log(`warning: ${w}`);
  for (const [flag, path] of [["--resume", typeof o.resume === "string" ? o.resume : undefined], ["--init", typeof o.init === "string" ? o.init : undefined]] as const) {
    if (path !== undefined && !existsSync(path)) throw new SigmaError(`${flag} ${path} does not exist`, `pass a checkpoint folder (a run's checkpoints/ gives its newest)${flag === "--init" ? " or a model .safetensors" : ""}`);
  }
  if (lead) prepareRunFolder(cfg, cfg.store.enabled ? storePath(cfg) : null, { resume: !!o.resume, overwrite: !!o.overwrite, flag: names.out, log });
  // ECSS on several ranks: a fresh run's ranks may replace their stores inside out only once rank 0 has allowed the run there.
  if (comm.size > 1 && cfg.store.enabled) comm.barrier();

  const resumedFrom = o.resume ? (o.resume === true ? runPaths(cfg.out).checkpoints : o.resume) : null;
  const t = resumedFrom !== null ? resumeTrainer(resumedFrom, cfg, comm) : new Trainer(cfg, o.init ? initModel(o.init, cfg) : undefined, comm);
  try {
    // Every rank starts from the same state (the same checkpoint, config and data order), or none starts.
    t.assertRanksInSync(resumedFrom !== null ? `resuming from ${resumedFrom}` : "starting the run");
    const parameters = { total: parameterCounts(cfg.model).total, active: activeParameters(cfg.model) };
    const emit = lead && o.onProgress ? o.onProgress : () => {};
    if (lead && t.resumedPrecision !== null && t.resumedPrecision !== cfg.precision) {
      log(`note: the checkpoint was trained with precision ${t.resumedPrecision}; this run continues in ${cfg.precision} (weights and optimizer state are f32 either way)`);
    }
    const path = cfg.precision === "bf16" ? bf16Path() : null;
    emit({ kind: "start", step: t.step, steps: cfg.steps, resumedFrom, parameters, router: cfg.model.experts?.router.kind ?? null, store: storeSummary(t), precision: cfg.precision, bf16Path: path });
    const baselines = lead ? Object.fromEntries(unigramBaselines(cfg.data.dir).map((b) => [b.domain, b.crossEntropy])) : {};
    const r = await runTraining(
      t,
      {
        onStep: (s) => emit({ kind: "step", steps: cfg.steps, ...s }),
        onEval: (step, domains) => emit({ kind: "eval", step, domains, all: allDomains(domains) }),
        onCheckpoint: (path) => emit({ kind: "checkpoint", step: t.step, path }),
        shouldStop: () => o.signal?.aborted === true,
      },
      { resumed: resumedFrom !== null, baselines, ...(o.stopAtStep !== undefined ? { stopAtStep: o.stopAtStep } : {}) },
    );
    return {
      stopped: r.stopped === "requested" ? "aborted" : r.stopped,
      steps: r.steps,
      tokens: t.tokens,
      seconds: t.seconds,
      finalEval: r.finalEval,
      all: allDomains(r.finalEval),
      checkpoint: r.checkpoint,
      metrics: r.metrics,
      plots: r.plots,
      parameters,
      baselines,
      store: storeSummary(t),
    };
  } finally {
    t.close();
  }
}
