/**
 * The fuzz run: builds the seeds, then hands mutants (format × index,
 * interleaved) to long-lived workers, one job folder per worker:
 *
 *   <root>/seeds/                  the valid inputs (test/fuzz/seeds.ts), never written by a job
 *   <root>/w<k>/victim/            sentinel folder (keep.txt, sub/file.bin): "../../victim" from a job
 *   <root>/w<k>/nest/victim/       sentinel folder: "../victim" from a job
 *   <root>/w<k>/nest/job/          the job's folder and working directory (copies of the seeds it uses,
 *                                  the mutated files; removed after the job)
 *
 * After every job: the sentinels' contents (hashed), the listings of w<k>/,
 * w<k>/nest/ and <root>/, the seeds (size and mtime), and every path string the
 * mutant injected that lies outside the run's folder must be as before — else
 * the job is an "escape", whatever its exit code.
 */
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { accessSync, constants, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, relative, resolve, sep } from "node:path";
import { classify, FAILURES, head, OUTCOMES, signature, type Classified, type Outcome } from "./classify.js";
import { FORMATS, makeMutant, Seeds, type Format, type Mutant } from "./formats.js";
import { GLOBAL_PROBE, type PathContext } from "./paths.js";
import { WorkerSlot } from "./pool.js";
import { buildSeeds, fingerprint } from "./seeds.js";

export interface FuzzOptions {
  seed: number;
  /** Mutants per format. */
  count: number;
  /** Formats to run (default: all). */
  formats?: string[];
  /** Only this mutant index (with formats: reproduce one mutant). */
  index?: number;
  /** Start at this index (mutants start..start+count-1). */
  start?: number;
  workers: number;
  /** Wall-clock bound of one job, ms. */
  timeoutMs: number;
  /** Data-segment limit of a worker, KiB. */
  memoryKiB: number;
  /** Keep the run folder (and the job folder of `index`) for inspection. */
  keep?: boolean;
  /** Extra environment for the workers (e.g. SIGMA_DEBUG=1 to see a stack trace when reproducing one mutant). */
  env?: Record<string, string>;
  /** Folder for the run's files (default: /dev/shm when writable, else the system's temp folder). */
  tmp?: string;
  /** Called after each job. */
  onJob?: (m: Mutant, c: Classified) => void;
}

export interface Failure {
  format: string;
  index: number;
  argv: string[];
  target: string;
  what: string[];
  outcome: Outcome;
  detail: string;
  code: number | null;
  output: string;
}

export interface FormatStats {
  mutants: number;
  outcomes: Record<Outcome, number>;
  /** Clean errors that were "out of memory" refusals. */
  oom: number;
  /** Jobs that left handles open (in-process; the real CLI exits). */
  leaked: number;
  ms: number;
  maxMs: number;
}

export interface FuzzSummary {
  seed: number;
  seedsFingerprint: string;
  workers: number;
  timeoutMs: number;
  wallSeconds: number;
  formats: Record<string, FormatStats>;
  total: { mutants: number; failures: number; outcomes: Record<Outcome, number> };
  /** Failures grouped by cause (signature), most frequent first. */
  causes: { signature: string; count: number; formats: string[]; examples: Failure[] }[];
  /** Time spent per phase, summed over the workers: writing job folders, running jobs (round trip), checking and cleaning up. */
  harness: { prepareMs: number; runMs: number; checkMs: number; workerStarts: number };
  /** Crashes and hangs that did not happen again in a fresh worker (counted by the outcome of the second run). */
  unconfirmed: { format: string; index: number; first: string; again: string }[];
  /** The slowest jobs (a sign of a missing bound even when they finish). */
  slowest: { format: string; index: number; ms: number; outcome: Outcome; argv: string[]; what: string[] }[];
  root?: string;
}

const sha = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

/** A listing of a tree: relative path, type, size and (with `content`) sha256; `skip` folders are left out. */
function tree(dir: string, opts: { content: boolean; skip?: string }): string {
  const out: string[] = [];
  const walk = (d: string): void => {
    let names: string[];
    try {
      names = readdirSync(d).sort();
    } catch (e) {
      out.push(`${relative(dir, d)}: ${(e as NodeJS.ErrnoException).code}`);
      return;
    }
    for (const name of names) {
      const p = join(d, name);
      if (p === opts.skip) continue;
      const st = statSync(p, { throwIfNoEntry: false });
      if (!st) continue;
      if (st.isDirectory()) {
        out.push(`${relative(dir, p)}/ ${st.mode.toString(8)}`);
        walk(p);
      } else out.push(`${relative(dir, p)} ${st.mode.toString(8)} ${st.size} ${opts.content && st.isFile() ? sha(readFileSync(p)) : st.mtimeMs}`);
    }
  };
  walk(dir);
  return out.join("\n");
}

function diffLines(a: string, b: string): string {
  const A = new Set(a.split("\n"));
  const B = new Set(b.split("\n"));
  const gone = [...A].filter((l) => !B.has(l)).map((l) => `- ${l}`);
  const added = [...B].filter((l) => !A.has(l)).map((l) => `+ ${l}`);
  return [...gone, ...added].slice(0, 6).join("; ");
}

function makeVictim(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, "sub"), { recursive: true });
  writeFileSync(join(dir, "keep.txt"), "precious: a fuzz job must never change this file\n");
  writeFileSync(join(dir, "sub", "file.bin"), Buffer.alloc(64, 7));
}

/** The first ancestor of `p` (or `p`) that does not exist, or null when `p` exists. */
function firstMissing(p: string): string | null {
  if (existsSync(p)) return null;
  let cur = p;
  while (!existsSync(dirname(cur)) && dirname(cur) !== cur) cur = dirname(cur);
  return cur;
}

interface Outside {
  path: string;
  /** Its first missing ancestor before the job (must still be missing), or null when it existed. */
  missing: string | null;
  /** Entries of its folder starting with its name before the job (no new ones may appear), or null. */
  siblings: string[] | null;
}

/** One worker's lane: its job folder, its sentinels, and the after-job escape check. */
export class Lane {
  readonly dir: string;
  readonly job: string;
  readonly victims: string[];
  readonly ctx: () => PathContext;
  private baseline = "";

  constructor(
    readonly root: string,
    readonly k: number,
    readonly slot: WorkerSlot,
  ) {
    this.dir = join(root, `w${k}`);
    this.job = join(this.dir, "nest", "job");
    this.victims = [join(this.dir, "victim"), join(this.dir, "nest", "victim")];
    this.ctx = () => ({ victimAbs: this.victims[0]!, escapeAbs: join(this.dir, "escape-target"), injected: [] });
    mkdirSync(join(this.dir, "nest"), { recursive: true });
    this.reset();
  }

  /** Rebuilds the sentinels and records the lane's state outside the job folder. */
  reset(): void {
    for (const v of this.victims) makeVictim(v);
    for (const name of readdirSync(this.dir)) if (name !== "victim" && name !== "nest") rmSync(join(this.dir, name), { recursive: true, force: true });
    for (const name of readdirSync(join(this.dir, "nest"))) if (name !== "victim" && name !== "job") rmSync(join(this.dir, "nest", name), { recursive: true, force: true });
    this.baseline = this.snapshot();
  }

  snapshot(): string {
    return tree(this.dir, { content: true, skip: this.job });
  }

  /** Writes the job folder: copies of the seeds the mutant uses, then its files. */
  prepare(seeds: string, m: Mutant): void {
    rmSync(this.job, { recursive: true, force: true });
    mkdirSync(this.job, { recursive: true });
    for (const u of m.uses) cpSync(join(seeds, u), join(this.job, u), { recursive: true });
    for (const [rel, b] of m.files) {
      mkdirSync(dirname(join(this.job, rel)), { recursive: true });
      writeFileSync(join(this.job, rel), b);
    }
    if (m.special) {
      const p = join(this.job, m.target);
      rmSync(p, { force: true });
      if (m.special.kind === "link") symlinkSync(m.special.to, p);
      else if (m.special.kind === "dir") mkdirSync(join(p, "inside"), { recursive: true });
      else execFileSync("mkfifo", [p]);
    }
  }

  /** Before a job: what to watch for the path strings a mutant injected that point outside the run's folder. */
  watch(injected: string[]): Outside[] {
    return injected
      .filter((p) => !p.includes("\0"))
      .map((p) => resolve(this.job, p))
      .filter((p) => p !== this.root && !p.startsWith(this.root + sep))
      .map((p) => {
        const parent = dirname(p);
        const listable = parent !== "/" && existsSync(parent) && statSync(parent).isDirectory();
        return { path: p, missing: firstMissing(p), siblings: listable ? readdirSync(parent).filter((n) => n.startsWith(basename(p))) : null };
      });
  }

  /** What changed outside the job folder, or null. */
  escapes(outside: Outside[]): string | null {
    const problems: string[] = [];
    const now = this.snapshot();
    if (now !== this.baseline) problems.push(`${relative(this.root, this.dir)}: ${diffLines(this.baseline, now)}`);
    for (const o of outside) {
      if (o.missing && existsSync(o.missing)) problems.push(`created ${o.missing} (from the path string ${JSON.stringify(o.path)})`);
      if (o.siblings) {
        const parent = dirname(o.path);
        const base = basename(o.path);
        const after = readdirSync(parent).filter((n) => n.startsWith(base));
        const added = after.filter((n) => !o.siblings!.includes(n));
        if (added.length) problems.push(`created ${added.map((n) => join(parent, n)).join(", ")} (from the path string ${JSON.stringify(o.path)})`);
      }
    }
    return problems.length ? problems.join("; ") : null;
  }
}

function emptyStats(): FormatStats {
  return { mutants: 0, outcomes: Object.fromEntries(OUTCOMES.map((o) => [o, 0])) as Record<Outcome, number>, oom: 0, leaked: 0, ms: 0, maxMs: 0 };
}

/** Builds the seeds in `dir` with a worker of `slot`. */
async function seedsWith(slot: WorkerSlot, dir: string): Promise<void> {
  await buildSeeds(dir, async (cwd, argv) => {
    const r = await slot.run(cwd, argv, 120_000);
    const c = classify(r);
    return { code: c.code ?? -1, text: r.kind === "done" ? r.out.map((x) => x.t).join("") : `${c.detail}\n${c.output}` };
  });
}

/**
 * The mutants without running them (format, index, target, command, what was done), those whose
 * description or command matches `match`: to find a mutant of a given kind to reproduce.
 */
export async function listMutants(o: { seed: number; count: number; start?: number; formats?: string[]; match?: RegExp; memoryKiB: number }): Promise<{ format: string; index: number; target: string; argv: string[]; what: string[] }[]> {
  const formats = o.formats?.length ? FORMATS.filter((f) => o.formats!.includes(f.name)) : FORMATS;
  const root = mkdtempSync(join(defaultTmp(), "sigma-fuzz-list-"));
  const slot = new WorkerSlot({ memoryKiB: o.memoryKiB });
  try {
    await seedsWith(slot, join(root, "seeds"));
    const seeds = new Seeds(join(root, "seeds"));
    const lane = { victimAbs: join(root, "w0", "victim"), escapeAbs: join(root, "w0", "escape-target") };
    const out = [];
    for (let i = o.start ?? 0; i < (o.start ?? 0) + o.count; i++) {
      for (const f of formats) {
        const m = makeMutant(seeds, o.seed, f, i, { ...lane, injected: [] });
        const line = `${m.target}: ${m.what.join("; ")} | sigma ${m.argv.join(" ")}`;
        if (!o.match || o.match.test(line)) out.push({ format: m.format, index: m.index, target: m.target, argv: m.argv, what: m.what });
      }
    }
    return out;
  } finally {
    slot.close();
    rmSync(root, { recursive: true, force: true });
  }
}

/** Runs the fuzz campaign; never throws for a mutant's outcome (only for a broken harness or seeds). */
export async function runFuzz(o: FuzzOptions): Promise<FuzzSummary> {
  const t0 = performance.now();
  const formats: Format[] = o.formats?.length ? o.formats.map((n) => FORMATS.find((f) => f.name === n) ?? fail(`unknown format "${n}"; formats: ${FORMATS.map((f) => f.name).join(", ")}`)) : FORMATS;
  // Job folders are written and removed thousands of times: in memory (tmpfs) when the machine has one.
  const root = mkdtempSync(join(o.tmp ?? defaultTmp(), "sigma-fuzz-"));
  if (existsSync(GLOBAL_PROBE)) rmSync(GLOBAL_PROBE, { recursive: true, force: true });
  const slots = Array.from({ length: o.workers }, () => new WorkerSlot({ memoryKiB: o.memoryKiB, env: o.env }));
  // Interrupted (npm run fuzz stopped with Ctrl-C; main.ts exits on SIGINT/SIGTERM): leave nothing behind.
  const cleanupOnExit = (): void => {
    for (const s of slots) s.close();
    if (!o.keep) rmSync(root, { recursive: true, force: true });
  };
  process.on("exit", cleanupOnExit);
  const stats: Record<string, FormatStats> = Object.fromEntries(formats.map((f) => [f.name, emptyStats()]));
  const failures: Failure[] = [];
  const slowest: FuzzSummary["slowest"] = [];
  const unconfirmed: FuzzSummary["unconfirmed"] = [];
  const harness = { prepareMs: 0, runMs: 0, checkMs: 0, workerStarts: 0 };
  let seedsFingerprint = "";
  try {
    const seedDir = join(root, "seeds");
    await seedsWith(slots[0]!, seedDir);
    seedsFingerprint = fingerprint(seedDir);
    const seeds = new Seeds(seedDir);
    const seedState = tree(seedDir, { content: false });
    const lanes = slots.map((s, k) => new Lane(root, k, s));
    const rootNames = readdirSync(root).sort().join(",");

    // Mutants interleaved across formats, so every format progresses together.
    const start = o.index ?? o.start ?? 0;
    const count = o.index !== undefined ? 1 : o.count;
    const queue: [Format, number][] = [];
    for (let i = start; i < start + count; i++) for (const f of formats) queue.push([f, i]);
    let next = 0;

    await Promise.all(
      lanes.map(async (lane) => {
        while (next < queue.length) {
          const [f, i] = queue[next++]!;
          const ctx = lane.ctx();
          const m = makeMutant(seeds, o.seed, f, i, ctx);
          let t = performance.now();
          lane.prepare(seedDir, m);
          const outside = lane.watch(ctx.injected);
          harness.prepareMs += performance.now() - t;
          t = performance.now();
          let c = classify(await lane.slot.run(lane.job, m.argv, m.timeoutMs ?? o.timeoutMs));
          harness.runMs += performance.now() - t;
          t = performance.now();
          let escaped = lane.escapes(outside);
          if (!escaped && (c.outcome === "crash" || c.outcome === "hang")) {
            // The mutant, or what earlier jobs left in the worker (memory, a lost timer)? Once more, in a fresh worker.
            lane.slot.kill();
            lane.prepare(seedDir, m);
            const again = classify(await lane.slot.run(lane.job, m.argv, m.timeoutMs ?? o.timeoutMs));
            if (!FAILURES.has(again.outcome)) unconfirmed.push({ format: f.name, index: i, first: `${c.outcome}: ${c.detail}`, again: `${again.outcome}: ${again.detail}` });
            c = again;
          }
          escaped ??= lane.escapes(outside) ?? (readdirSync(root).sort().join(",") !== rootNames ? `${root}: now holds ${readdirSync(root).join(", ")}` : null) ?? (tree(seedDir, { content: false }) !== seedState ? `the seed folder changed: ${diffLines(seedState, tree(seedDir, { content: false }))}` : null);
          if (escaped) {
            c = { ...c, outcome: "escape", detail: `wrote outside its folder: ${escaped} (the command: ${c.outcome}${c.detail ? `, ${c.detail.slice(0, 200)}` : ""})` };
            lane.reset();
            for (const p of outside) if (p.missing) rmSync(p.missing, { recursive: true, force: true });
          }
          const s = stats[f.name]!;
          s.mutants++;
          s.outcomes[c.outcome]++;
          if (c.oom) s.oom++;
          if (c.leaked.length) s.leaked++;
          s.ms += c.ms;
          s.maxMs = Math.max(s.maxMs, c.ms);
          if (slowest.length < 10 || c.ms > slowest[slowest.length - 1]!.ms) {
            slowest.push({ format: f.name, index: i, ms: Math.round(c.ms), outcome: c.outcome, argv: m.argv, what: m.what });
            slowest.sort((x, y) => y.ms - x.ms).splice(10);
          }
          if (FAILURES.has(c.outcome)) failures.push({ format: f.name, index: i, argv: m.argv, target: m.target, what: m.what, outcome: c.outcome, detail: c.detail, code: c.code, output: c.output });
          o.onJob?.(m, c);
          if (!(o.keep && o.index !== undefined)) rmSync(lane.job, { recursive: true, force: true });
          harness.checkMs += performance.now() - t;
        }
      }),
    );
  } finally {
    harness.workerStarts = slots.reduce((n, s) => n + s.starts, 0);
    process.off("exit", cleanupOnExit);
    cleanupOnExit();
  }

  const groups = new Map<string, Failure[]>();
  for (const f of failures) {
    const sig = `${f.outcome === "hang" ? `${f.format} ` : ""}${signature(f, f.what)}`;
    groups.set(sig, [...(groups.get(sig) ?? []), f]);
  }
  const total = { mutants: 0, failures: failures.length, outcomes: emptyStats().outcomes };
  for (const s of Object.values(stats)) {
    total.mutants += s.mutants;
    for (const k of OUTCOMES) total.outcomes[k] += s.outcomes[k];
  }
  return {
    seed: o.seed,
    seedsFingerprint,
    workers: o.workers,
    timeoutMs: o.timeoutMs,
    wallSeconds: (performance.now() - t0) / 1000,
    formats: stats,
    total,
    causes: [...groups.entries()]
      .map(([signature, fs]) => ({ signature, count: fs.length, formats: [...new Set(fs.map((f) => f.format))], examples: fs.slice(0, 3) }))
      .sort((a, b) => b.count - a.count),
    slowest,
    unconfirmed,
    harness,
    ...(o.keep ? { root } : {}),
  };
}

function defaultTmp(): string {
  try {
    const shm = "/dev/shm";
    if (statSync(shm).isDirectory()) {
      accessSync(shm, constants.W_OK);
      return shm;
    }
  } catch {
    /* no tmpfs: the system's temp folder */
  }
  return tmpdir();
}

function fail(msg: string): never {
  throw new Error(msg);
}

/** The command that re-runs one failing mutant. */
export const reproCommand = (seed: number, f: { format: string; index: number }): string => `npm run fuzz -- --seed ${seed} --format ${f.format} --index ${f.index}`;

/** A table: format, mutants, then one column per outcome. */
export function formatTable(s: FuzzSummary): string {
  const cols = ["format", "mutants", ...OUTCOMES, "oom-refused", "mean ms", "max ms"];
  const rows = Object.entries(s.formats).map(([name, f]) => [name, String(f.mutants), ...OUTCOMES.map((k) => String(f.outcomes[k])), String(f.oom), f.mutants ? (f.ms / f.mutants).toFixed(0) : "-", f.maxMs.toFixed(0)]);
  rows.push(["all", String(s.total.mutants), ...OUTCOMES.map((k) => String(s.total.outcomes[k])), String(Object.values(s.formats).reduce((n, f) => n + f.oom, 0)), "", ""]);
  const w = cols.map((c, i) => Math.max(c.length, ...rows.map((r) => r[i]!.length)));
  return [cols, ...rows].map((r) => r.map((x, i) => (i === 0 ? x.padEnd(w[i]!) : x.padStart(w[i]!))).join("  ")).join("\n");
}

/** The failures, grouped by cause, with a reproduction command for each example. */
export function formatCauses(s: FuzzSummary, examples = 2): string {
  if (!s.causes.length) return "no failures";
  return s.causes
    .map((c, i) =>
      [
        `${i + 1}. ${c.signature}  [${c.count}× in ${c.formats.join(", ")}]`,
        ...c.examples.slice(0, examples).map((e) =>
          [
            `   - ${e.format} #${e.index}: ${e.target}: ${e.what.join("; ").slice(0, 300)}`,
            `     sigma ${e.argv.map((a) => (/^[\w./=-]+$/.test(a) ? a : JSON.stringify(a))).join(" ")}  →  exit ${e.code ?? "-"}: ${e.detail.slice(0, 300)}`,
            `     ${head(e.output, 4, 400).replaceAll("\n", "\n     ")}`,
            `     repro: ${reproCommand(s.seed, e)}`,
          ].join("\n"),
        ),
      ].join("\n"),
    )
    .join("\n");
}
