/**
 * The GEMM autotuner: times the addon's register tiles and cache blockings
 * on the products that matter and keeps the fastest (`sigma tune`, and once
 * at first use of the heavy commands; ./tune-cache.ts keeps the result).
 *
 * The shapes: config R's feed-forward layer (d = 512, F = 2048) in the three
 * products a training step runs, for 1024 rows (a dense layer's batch) and
 * 64 rows (one expert's share), plus a 512³ square:
 *   large   sq512    512 × 512 × 512
 *           fwd1024  x[1024,512]·Wᵀ, W [2048,512]       (forward, B transposed)
 *           dx1024   dy[1024,2048]·W                    (input gradient, plain)
 *           dw1024   dyᵀ·x: [2048,1024]ᵀ-stored × [1024,512] (weight gradient, A transposed)
 *   short K dw64     the weight gradient over 64 rows (K = 64)
 *   small M fwd64    x[64,512]·Wᵀ, and dx64: dy[64,2048]·W
 * Each class gets its own winner (gemm_config.cpp keeps a tile and blocking
 * for products with K > 256 and one for K ≤ 256), at one thread and at all
 * threads (the winners may differ: two threads share the L3 and memory).
 *
 * The search, per thread count, coarse to fine. Candidates are always timed
 * side by side (rounds that run each once per shape, medians over rounds),
 * so that a busy spell on a shared machine hits all of them alike:
 *  1. every tile this kernel path runs, with the blocking the cache-size rule
 *     gives it (one round after a warm-up one);
 *  2. the three best within 10% of the best, and the rule's own choice, in
 *     three rounds (five for short products, as everywhere below);
 *  3. for the best two, the blocking's neighbours, one size at a time (KC,
 *     then MC, then NC; halved and doubled), each timed beside the blocking
 *     it would replace and kept when 1% faster;
 *  4. the small-M paths (x·Wᵀ and x·W over 64 rows) against the blocked path
 *     with the large class's winner.
 * A class's score is the geometric mean of its shapes' GFLOP/s. The winner
 * must beat the rule's choice by 2% in a final side-by-side of five rounds,
 * else the rule's choice is kept (timing noise must not move the kernels);
 * likewise the blocked path must beat the small-M path by 2% at 64 rows.
 * Stages 2 and 3 run while the budget lasts (each thread count gets its
 * share); stages 1 and 4 always run (stage 4 times 64-row products only). A budget under 8 s also halves the shapes (every
 * size above 64), for tests.
 */
import { SigmaError } from "../../util/errors.js";
import { loadNative, type NativeBackend } from "./index.js";
import {
  SMALL_M_MAX,
  needsTuning,
  saveTuneEntry,
  tuneFilePath,
  tuneKey,
  tuningDisabled,
  type GemmChoice,
  type GemmTunedThreads,
  type GemmTuning,
  type TuneEntry,
  type TuneKey,
  type TuneMeasurement,
} from "./tune-cache.js";

/** Seconds a tuning may take unless told otherwise (SIGMA_TUNE_BUDGET, `sigma tune --budget`). */
export const DEFAULT_TUNE_BUDGET = 30;
/** A budget under this many seconds halves the shapes. */
const QUICK_BUDGET = 8;
/** How much faster than the rule's choice a winner must be. */
const MARGIN = 1.02;
/** How much faster a blocking neighbour must be to be kept. */
const STEP_MARGIN = 1.01;
/**
 * When the blocked path beats the small-M path at 64 rows, products of up to
 * this many rows keep the small-M path: a 12- or 14-row tile wastes most of
 * its rows on a handful, and the small-M kernels were built for those.
 */
const SMALL_M_WHEN_BLOCKED_WINS = 32;

interface Shape {
  name: string;
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
}
type ShapeClass = TuneMeasurement["shapeClass"];

const D = 512;
const F = 2048;
const shape = (name: string, M: number, N: number, K: number, transA = false, transB = false): Shape => ({ name, M, N, K, transA, transB });
const SHAPES: Record<ShapeClass, Shape[]> = {
  large: [shape("sq512", 512, 512, 512), shape("fwd1024", 1024, F, D, false, true), shape("dx1024", 1024, D, F), shape("dw1024", F, D, 1024, true)],
  "short-k": [shape("dw64", F, D, 64, true)],
  "small-m-nt": [shape("fwd64", 64, F, D, false, true)],
  "small-m-nn": [shape("dx64", 64, D, F)],
};

export interface TuneOptions {
  /** Seconds the tuning may take (default: SIGMA_TUNE_BUDGET, else 30). Stage 1 always runs. */
  budgetSeconds?: number;
  /** Write the result to the cache file (default true). */
  save?: boolean;
  /** The cache file (default: tuneFilePath()). */
  file?: string;
  /** Called after each measurement: the fraction done (0–1) and what was measured. */
  onProgress?: (fraction: number, label: string) => void;
}

export interface TuneResult {
  /** What the tuning is valid for: CPU, addon build, threads, kernel path. */
  key: TuneKey;
  /** The winners, as set on the addon. */
  tuning: GemmTuning;
  /** The rule's choice (tile and blocking from the cache sizes), for comparison. */
  rule: GemmChoice;
  /** Every candidate measured: GFLOP/s per shape and their geometric mean; `winner` marks the choices. */
  table: TuneMeasurement[];
  seconds: number;
  budgetSeconds: number;
  /** Where the result was saved (null: not saved). */
  file: string | null;
}

/** SIGMA_TUNE_BUDGET in seconds (or the default); a SigmaError for a value that is not a positive number. */
export function tuneBudgetSetting(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.SIGMA_TUNE_BUDGET;
  if (v === undefined || v === "") return DEFAULT_TUNE_BUDGET;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0 || n > 3600) {
    throw new SigmaError(`SIGMA_TUNE_BUDGET="${v}" is not a number of seconds`, "use a number from 1 to 3600, or leave it unset (30)");
  }
  return n;
}

const RANK: Record<string, number> = { portable: 0, "avx2-fma": 1, avx512: 2 };

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const geomean = (xs: number[]) => Math.exp(xs.reduce((s, x) => s + Math.log(x), 0) / xs.length);
const label = (c: GemmChoice) => `${c.tile} MC ${c.mc} KC ${c.kc} NC ${c.nc}`;
const yieldToLoop = () => new Promise<void>((r) => setImmediate(r));

/** A candidate: a tile and blocking, through the blocked path only when blockedOnly. */
interface Candidate {
  label: string;
  choice: GemmChoice;
  blockedOnly?: boolean;
}
const candidate = (choice: GemmChoice): Candidate => ({ label: label(choice), choice });

/** One tuning run: the addon, its shapes' buffers, the clock and the table. */
class Tuner {
  private readonly buffers = new Map<string, { a: Float32Array; b: Float32Array; c: Float32Array }>();
  readonly table: TuneMeasurement[] = [];
  private deadline = Infinity;
  private done = 0;

  constructor(
    private readonly n: NativeBackend,
    private readonly shapes: Record<ShapeClass, Shape[]>,
    private readonly total: number,
    private readonly onProgress: TuneOptions["onProgress"],
  ) {}

  setDeadline(ms: number): void {
    this.deadline = ms;
  }

  private buffersFor(s: Shape) {
    let b = this.buffers.get(s.name);
    if (!b) {
      // Values in [-1, 1) from a fixed sequence: no denormals, nothing special for the FMAs.
      let x = 12345;
      const fill = (n: number) => Float32Array.from({ length: n }, () => ((x = (x * 1103515245 + 12345) >>> 0) / 2 ** 31) - 1);
      b = { a: fill(s.M * s.K), b: fill(s.K * s.N), c: new Float32Array(s.M * s.N) };
      this.buffers.set(s.name, b);
    }
    return b;
  }

  /** Seconds of one product of shape `s` with candidate `c` set. */
  private runOnce(s: Shape, c: Candidate): number {
    const { a, b, c: out } = this.buffersFor(s);
    this.n.setGemmConfig(c.choice.tile, c.choice.mc, c.choice.kc, c.choice.nc, c.blockedOnly === true);
    const t0 = performance.now();
    this.n.matmul(out, a, b, s.M, s.N, s.K, s.transA, s.transB, false);
    return (performance.now() - t0) / 1000;
  }

  /**
   * Times candidates side by side on a class's shapes: a warm-up round, then
   * `reps` rounds that each run every candidate once per shape, so that a
   * busy spell on a shared machine hits them all alike; the median per shape
   * (short products get two more rounds). Returns null, untimed, when the
   * budget is spent and `force` is not set.
   */
  async compare(threads: number, cls: ShapeClass, cands: Candidate[], reps: number, force = false): Promise<TuneMeasurement[] | null> {
    this.done += cands.length;
    const progress = (what: string) => this.onProgress?.(Math.min(1, this.done / this.total), `${threads} thread(s), ${cls}: ${what}`);
    if (!force && performance.now() > this.deadline) {
      progress(`${cands.map((c) => c.label).join(", ")} skipped (budget spent)`);
      return null;
    }
    const secs = cands.map(() => new Map<string, number[]>());
    for (const s of this.shapes[cls]) {
      const rounds = s.M * s.N * s.K < 2e8 ? reps + 2 : reps;
      for (let r = -1; r < rounds; r++) {
        cands.forEach((c, i) => {
          const t = this.runOnce(s, c);
          if (r >= 0) secs[i]!.set(s.name, [...(secs[i]!.get(s.name) ?? []), t]);
        });
      }
    }
    const out = cands.map((c, i): TuneMeasurement => {
      const shapes: Record<string, number> = {};
      for (const s of this.shapes[cls]) shapes[s.name] = (2 * s.M * s.N * s.K) / median(secs[i]!.get(s.name)!) / 1e9;
      return { threads, shapeClass: cls, candidate: c.label, gflops: geomean(Object.values(shapes)), shapes, winner: false };
    });
    this.table.push(...out);
    progress(out.map((m) => `${m.candidate} ${m.gflops.toFixed(1)}`).join(", "));
    await yieldToLoop();
    return out;
  }

  /** A tile with the rule's blocking for it (what the addon derives with no blocking given). */
  ruleChoice(tile: string): GemmChoice {
    this.n.setGemmConfig(tile, 0, 0, 0, false);
    const g = this.n.gemmConfig();
    return { tile: g.tile, mc: g.mc, kc: g.kc, nc: g.nc };
  }

  /** Stages 1–3 for one shape class: the winning tile and blocking (the rule's unless clearly beaten). */
  async searchClass(threads: number, cls: "large" | "short-k", tiles: string[], rule: GemmChoice): Promise<GemmChoice> {
    // 1. Every tile with its rule blocking.
    const all = tiles.map((t) => candidate(this.ruleChoice(t)));
    const coarse = (await this.compare(threads, cls, all, 1, true))!;
    const order = all.map((c, i) => ({ c, g: coarse[i]!.gflops })).sort((x, y) => y.g - x.g);
    // 2. The best three within 10% (and the rule's own choice), again with medians.
    const top = order.filter((t, i) => (i < 3 && t.g >= 0.9 * order[0]!.g) || t.c.label === label(rule)).map((t) => t.c);
    const fine = await this.compare(threads, cls, top, 3);
    const ranked = fine ? top.map((c, i) => ({ c, g: fine[i]!.gflops })).sort((x, y) => y.g - x.g) : order;
    // 3. Blocking neighbours of the best two tiles, one size at a time, each
    //    step timed beside the blocking it would replace.
    let best = ranked[0]!.c;
    let bestG = ranked[0]!.g;
    for (const start of ranked.slice(0, 2)) {
      const tile = this.n.gemmTiles().find((t) => t.name === start.c.choice.tile)!;
      let cur = start.c;
      let curG = start.g;
      for (const size of cls === "large" ? (["kc", "mc", "nc"] as const) : (["mc", "nc"] as const)) {
        const next = [0.5, 2]
          .map((f) => ({ ...cur.choice, [size]: neighbour(size, cur.choice[size] * f, tile.mr, tile.nr) }))
          .filter((c) => c[size] !== cur.choice[size])
          .map(candidate);
        const m = await this.compare(threads, cls, [cur, ...next], 3);
        if (!m) break;
        curG = m[0]!.gflops;
        const i = m.reduce((bi, x, j) => (x.gflops > m[bi]!.gflops ? j : bi), 0);
        if (i > 0 && m[i]!.gflops > curG * STEP_MARGIN) [cur, curG] = [[cur, ...next][i]!, m[i]!.gflops];
      }
      if (curG > bestG) [best, bestG] = [cur, curG];
    }
    // The rule's choice stays unless the winner beats it clearly, timed side by side.
    let chosen = candidate(rule);
    if (best.label !== chosen.label) {
      const ab = await this.compare(threads, cls, [chosen, best], 5);
      if (ab ? ab[1]!.gflops >= ab[0]!.gflops * MARGIN : bestG >= (order.find((t) => t.c.label === label(rule))?.g ?? 0) * MARGIN) chosen = best;
    }
    this.markWinner(threads, cls, chosen.label);
    return chosen.choice;
  }

  /** Stage 4: rows up to which one direction keeps the small-M path. */
  async smallM(threads: number, cls: "small-m-nt" | "small-m-nn", large: GemmChoice): Promise<number> {
    const small: Candidate = { label: "small-M path", choice: large };
    const blocked: Candidate = { label: `blocked, ${label(large)}`, choice: large, blockedOnly: true };
    const m = await this.compare(threads, cls, [small, blocked], 3, true);
    const blockedWins = m !== null && m[1]!.gflops >= m[0]!.gflops * MARGIN;
    if (m) this.markWinner(threads, cls, blockedWins ? blocked.label : small.label);
    return blockedWins ? SMALL_M_WHEN_BLOCKED_WINS : SMALL_M_MAX;
  }

  /** Marks the last measurement of the chosen candidate. */
  private markWinner(threads: number, cls: ShapeClass, candidateLabel: string): void {
    const m = [...this.table].reverse().find((x) => x.threads === threads && x.shapeClass === cls && x.candidate === candidateLabel);
    if (m) m.winner = true;
  }
}

/** A blocking size near `x`: KC a multiple of 16 in [32, 2048], MC a multiple of MR, NC of NR (at least one tile). */
function neighbour(size: "kc" | "mc" | "nc", x: number, mr: number, nr: number): number {
  if (size === "kc") return Math.min(2048, Math.max(32, Math.round(x / 16) * 16));
  const unit = size === "mc" ? mr : nr;
  return Math.min(8192, Math.max(unit, Math.round(x / unit) * unit));
}

/**
 * Tunes the GEMM for this CPU (see the top of this file), sets the winners on
 * the addon and (unless `save: false`) writes them to the cache file.
 * Throws a SigmaError when the native addon is unavailable or the file
 * cannot be written.
 */
export async function tune(options: TuneOptions = {}): Promise<TuneResult> {
  const native = loadNative();
  if (!native.backend || !native.path) throw new SigmaError(`cannot tune the GEMM: ${native.error}`, "build the addon with `npm run build:native`");
  const n = native.backend;
  const budget = options.budgetSeconds ?? tuneBudgetSetting();
  if (!(budget > 0)) throw new SigmaError(`the tuning budget must be a positive number of seconds, got ${budget}`);
  const key = tuneKey(n, native.path);
  const path = n.cpuFeatures().path;
  const threadCounts = key.threads > 1 ? [1, key.threads] : [1];
  const quick = budget < QUICK_BUDGET;
  const shapes = quick
    ? (Object.fromEntries(Object.entries(SHAPES).map(([c, ss]) => [c, ss.map((s) => ({ ...s, M: half(s.M), N: half(s.N), K: half(s.K) }))])) as Record<ShapeClass, Shape[]>)
    : SHAPES;
  const tiles = n.gemmTiles().filter((t) => t.runnable && RANK[t.isa]! <= RANK[path]!).map((t) => t.name);
  // Candidates timed per thread count, at most (for the progress fraction): per class, every tile, four again,
  // three per blocking size for two tiles and the final two side by side; two per small-M direction.
  const perThreads = 2 * tiles.length + (4 + 18 + 2) + (4 + 12 + 2) + 4;
  const previous = n.gemmTuning();
  const threadsBefore = n.getThreads();
  const t0 = performance.now();
  const tuner = new Tuner(n, shapes, perThreads * threadCounts.length, options.onProgress);
  let rule: GemmChoice;
  const chosen: GemmTunedThreads[] = [];
  try {
    // Time the kernels as they are without any tuning: the rule plus each candidate's override.
    n.setGemmTuning(null);
    n.setGemmConfig("auto", 0, 0, 0, false);
    const g = n.gemmConfig();
    rule = { tile: g.tile, mc: g.mc, kc: g.kc, nc: g.nc };
    for (const [i, threads] of threadCounts.entries()) {
      n.setThreads(threads);
      tuner.setDeadline(t0 + (budget * 1000 * (i + 1)) / threadCounts.length);
      const large = await tuner.searchClass(threads, "large", tiles, rule);
      const shortK = await tuner.searchClass(threads, "short-k", tiles, rule);
      const smallMRowsNT = await tuner.smallM(threads, "small-m-nt", large);
      const smallMRowsNN = await tuner.smallM(threads, "small-m-nn", large);
      chosen.push({ large, shortK, smallMRowsNT, smallMRowsNN });
    }
  } catch (e) {
    n.setGemmTuning(previous);
    throw e;
  } finally {
    n.setGemmConfig("auto", 0, 0, 0, false);
    n.setThreads(threadsBefore);
  }
  const tuning: GemmTuning = { path: path as GemmTuning["path"], one: chosen[0]!, many: chosen[chosen.length - 1]! };
  n.setGemmTuning(tuning);
  const seconds = (performance.now() - t0) / 1000;
  const entry: TuneEntry = { key, tunedAt: new Date().toISOString(), seconds, budgetSeconds: budget, tuning, table: tuner.table };
  const file = options.save === false ? null : saveTuneEntry(entry, options.file ?? tuneFilePath());
  return { key, tuning, rule, table: tuner.table, seconds, budgetSeconds: budget, file };
}

const half = (x: number) => (x > 64 ? x >> 1 : x);

/**
 * First use: when tuning is on (SIGMA_TUNE is not "off"), the native addon is
 * in use and no tuning for this CPU, build and thread count was found, says
 * so in one line and tunes (and saves; a file that cannot be written is a
 * warning, the tuning still applies to this process). Returns the result,
 * or null when nothing needed tuning.
 */
let firstUseDone = false;

export async function ensureTuned(opts: { log: (line: string) => void; onProgress?: TuneOptions["onProgress"] }): Promise<TuneResult | null> {
  if (tuningDisabled() || firstUseDone) return null;
  const native = loadNative();
  if (!native.backend || !needsTuning()) return null;
  firstUseDone = true;
  const budget = tuneBudgetSetting();
  opts.log(`tuning the GEMM for this CPU once (up to ${budget} s); \`sigma tune\` redoes it, SIGMA_TUNE=off skips it`);
  const result = await tune({ budgetSeconds: budget, save: false, onProgress: opts.onProgress });
  const entry: TuneEntry = { key: result.key, tunedAt: new Date().toISOString(), seconds: result.seconds, budgetSeconds: budget, tuning: result.tuning, table: result.table };
  try {
    result.file = saveTuneEntry(entry);
  } catch (e) {
    opts.log(`warning: the tuning applies to this run only: ${(e as Error).message.split("\n")[0]}`);
  }
  return result;
}
