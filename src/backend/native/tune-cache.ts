/**
 * The GEMM tuner's cache file: where it lives, what it holds, how it is read
 * when the addon loads and how the tuner (./tune.ts) writes it.
 *
 * Where: `SIGMA_TUNE_FILE` if set, else `$XDG_CACHE_HOME/sigma/tune.json`
 * (an absolute XDG_CACHE_HOME only, as the XDG spec says), else
 * `~/.cache/sigma/tune.json`.
 *
 * What: `{ sigmaTune: 1, entries: [...] }`, each entry one tuning, keyed by
 *  - `cpu`: vendor, family, model and brand string from cpuid,
 *  - `build`: sha256 of the loaded addon file (a rebuilt or upgraded addon
 *    may have other kernels, so its timings say nothing about the new one),
 *  - `threads`: the kernel threads the tuning ran with,
 *  - `path`: the kernel path it ran on (SIGMA_KERNEL_PATH may hold it lower),
 * with the winners (`tuning`, what setGemmTuning takes) and the table of
 * every candidate measured (GFLOP/s). Several machines may share a home
 * folder, so entries of other CPUs and builds are kept when one is written
 * (the newest 16).
 *
 * Reading happens once per process, when the addon loads (loadNative): a
 * small file read, a zod check and a hash of the addon. A file that is not
 * JSON or not this schema, or that holds no tuning for this CPU and build,
 * is ignored with ONE warning line naming the file and what happens next;
 * it is never an error. Entries for this CPU and build with another thread
 * count or kernel path are ignored quietly (nothing is wrong: that setting
 * was just never tuned). `SIGMA_TUNE=off` skips the file altogether.
 */
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "../../util/fs.js";

// ---- What the addon's setGemmTuning takes (gemm_config.cpp applies it) ----

const int = (lo: number, hi: number) => z.number().int().min(lo).max(hi);
/** The largest block size the addon accepts (gemm_napi.cpp). */
const MAX_BLOCK = 65536;
/** The small-M paths' row limit (kGemmSmallMMax in gemm.h). */
export const SMALL_M_MAX = 96;

const choiceSchema = z.object({ tile: z.string().min(1), mc: int(1, MAX_BLOCK), kc: int(1, MAX_BLOCK), nc: int(1, MAX_BLOCK) }).strict();
const threadsSchema = z
  .object({ large: choiceSchema, shortK: choiceSchema, smallMRowsNT: int(0, SMALL_M_MAX), smallMRowsNN: int(0, SMALL_M_MAX) })
  .strict();
const tuningSchema = z.object({ path: z.enum(["avx512", "avx2-fma", "portable"]), one: threadsSchema, many: threadsSchema }).strict();

/** One tuned tile and blocking. */
export type GemmChoice = z.infer<typeof choiceSchema>;
/**
 * The tuner's choice for products on one thread or on several: a tile and
 * blocking for large products (K > 256) and for short ones (K ≤ 256, an
 * expert's weight gradient over its rows), and the rows up to which x·Wᵀ (NT)
 * and x·W (NN) keep the small-M paths.
 */
export type GemmTunedThreads = z.infer<typeof threadsSchema>;
/** What setGemmTuning takes: the kernel path it was measured on, and the choices for one thread and for several. */
export type GemmTuning = z.infer<typeof tuningSchema>;

// ---- The file ----

const keySchema = z.object({ cpu: z.string(), build: z.string(), threads: int(1, 1024), path: z.string() }).strict();
const measurementSchema = z
  .object({
    threads: int(1, 1024),
    shapeClass: z.enum(["large", "short-k", "small-m-nt", "small-m-nn"]),
    candidate: z.string(),
    gflops: z.number(),
    shapes: z.record(z.string(), z.number()),
    winner: z.boolean(),
  })
  .strict();
const entrySchema = z
  .object({ key: keySchema, tunedAt: z.string(), seconds: z.number(), budgetSeconds: z.number(), tuning: tuningSchema, table: z.array(measurementSchema) })
  .strict();
const fileSchema = z.object({ sigmaTune: z.literal(1), entries: z.array(entrySchema) }).strict();

export type TuneKey = z.infer<typeof keySchema>;
/** One candidate's figures: GFLOP/s per shape and their geometric mean (`gflops`). */
export type TuneMeasurement = z.infer<typeof measurementSchema>;
export type TuneEntry = z.infer<typeof entrySchema>;

/** Entries kept in the file (newest first). */
const MAX_ENTRIES = 16;

/** The cache file's path (see the top of this file). */
export function tuneFilePath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.SIGMA_TUNE_FILE) return resolve(env.SIGMA_TUNE_FILE);
  const xdg = env.XDG_CACHE_HOME;
  return join(xdg && isAbsolute(xdg) ? xdg : join(homedir(), ".cache"), "sigma", "tune.json");
}

/** SIGMA_TUNE=off: no cache read, no tuning at first use (`sigma tune` still tunes when asked). */
export function tuningDisabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.SIGMA_TUNE === "off";
}

/** The part of the addon this file needs. */
export interface TunableAddon {
  cpuInfo(): { vendor: string; brand: string; family: number; model: number };
  cpuFeatures(): { path: string };
  getThreads(): number;
  setGemmTuning(tuning: GemmTuning | null): void;
}

const buildHashes = new Map<string, string>();

/** This CPU, addon build, thread count and kernel path: what a tuning is valid for. */
export function tuneKey(addon: TunableAddon, addonPath: string): TuneKey {
  const c = addon.cpuInfo();
  let build = buildHashes.get(addonPath);
  if (build === undefined) {
    build = createHash("sha256").update(readFileSync(addonPath)).digest("hex");
    buildHashes.set(addonPath, build);
  }
  return { cpu: `${c.vendor} family ${c.family} model ${c.model}: ${c.brand.trim()}`, build, threads: addon.getThreads(), path: addon.cpuFeatures().path };
}

const sameMachine = (a: TuneKey, b: TuneKey) => a.cpu === b.cpu && a.build === b.build;
const sameKey = (a: TuneKey, b: TuneKey) => sameMachine(a, b) && a.threads === b.threads && a.path === b.path;

/** What reading the cache found. */
export type TuneFileRead =
  | { state: "missing" }
  | { state: "corrupt"; reason: string }
  | { state: "ok"; entries: TuneEntry[] };

/** Reads and checks the cache file; never throws. */
export function readTuneFile(file: string): TuneFileRead {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return { state: "missing" };
    return { state: "corrupt", reason: `it cannot be read (${code ?? (e as Error).message})` };
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    return { state: "corrupt", reason: `it is not JSON (${(e as Error).message})` };
  }
  const parsed = fileSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    return { state: "corrupt", reason: `it is not a tuning file (${issue.path.join(".") || "top level"}: ${issue.message})` };
  }
  return { state: "ok", entries: parsed.data.entries };
}

/** Where this process's tuning came from (for `sigma info` and first-use tuning). */
export type TuneStatus =
  | { state: "off"; file: string }
  | { state: "missing"; file: string }
  | { state: "corrupt"; file: string; reason: string }
  | { state: "foreign"; file: string }
  | { state: "untuned"; file: string; threads: number[] }
  | { state: "applied"; file: string; entry: TuneEntry };

let status: TuneStatus | null = null;
/** Warnings printed in this process: each problem is said once. */
const warned = new Set<string>();

/** What the last applyCachedTuning found (null before the addon loaded). */
export function tuneStatus(): TuneStatus | null {
  return status;
}

/** True when the heavy commands should tune first: tuning is on and no tuning for this CPU, build and threads was applied. */
export function needsTuning(): boolean {
  return status !== null && status.state !== "off" && status.state !== "applied";
}

function warnOnce(line: string): void {
  if (warned.has(line)) return;
  warned.add(line);
  process.stderr.write(`sigma: warning: ${line}\n`);
}

const RETUNE = "the GEMM uses its cache-size rule until it is tuned again (`sigma tune`, or the next `sigma train` or `sigma demo`)";

/**
 * Reads the cache file and sets the tuning that matches this CPU, build,
 * thread count and kernel path on the addon. Called once by loadNative;
 * never throws (a bad file is a warning, see the top of this file).
 */
export function applyCachedTuning(addon: TunableAddon, addonPath: string): TuneStatus {
  const file = tuneFilePath();
  if (tuningDisabled()) return (status = { state: "off", file });
  try {
    const read = readTuneFile(file);
    if (read.state === "missing") return (status = { state: "missing", file });
    if (read.state === "corrupt") {
      warnOnce(`ignoring the GEMM tuning file ${file}: ${read.reason}; ${RETUNE}, which rewrites it`);
      return (status = { state: "corrupt", file, reason: read.reason });
    }
    const key = tuneKey(addon, addonPath);
    const mine = read.entries.filter((e) => sameMachine(e.key, key));
    if (mine.length === 0) {
      warnOnce(`ignoring the GEMM tuning file ${file}: it holds tunings for other CPUs or builds of the addon only (this is ${key.cpu}, build ${key.build.slice(0, 12)}); ${RETUNE}`);
      return (status = { state: "foreign", file });
    }
    const entry = mine.find((e) => sameKey(e.key, key));
    if (!entry) return (status = { state: "untuned", file, threads: mine.map((e) => e.key.threads) });
    try {
      addon.setGemmTuning(entry.tuning);
    } catch (e) {
      warnOnce(`ignoring the GEMM tuning file ${file}: the addon refused its tuning (${(e as Error).message}); ${RETUNE}, which rewrites it`);
      return (status = { state: "corrupt", file, reason: (e as Error).message });
    }
    return (status = { state: "applied", file, entry });
  } catch (e) {
    // Hashing the addon failed, or something else unforeseen: the rule is a safe place to be.
    warnOnce(`ignoring the GEMM tuning file ${file}: ${(e as Error).message}; ${RETUNE}`);
    return (status = { state: "corrupt", file, reason: (e as Error).message });
  }
}

/**
 * Adds `entry` to the cache file (replacing any entry with its key; a
 * corrupt file is replaced), written atomically, and marks it applied for
 * this process. Throws a SigmaError naming the file when it cannot be written.
 */
export function saveTuneEntry(entry: TuneEntry, file = tuneFilePath()): string {
  const read = readTuneFile(file);
  const others = read.state === "ok" ? read.entries.filter((e) => !sameKey(e.key, entry.key)) : [];
  const content = { sigmaTune: 1 as const, entries: [entry, ...others].slice(0, MAX_ENTRIES) };
  try {
    mkdirSync(dirname(file), { recursive: true });
  } catch {
    /* writeFileAtomic reports the folder's problem with the file's name */
  }
  writeFileAtomic(file, `${JSON.stringify(content, null, 1)}\n`);
  status = { state: "applied", file, entry };
  return file;
}
