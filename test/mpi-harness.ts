// What the MPI tests share (test/distributed.test.ts, test/ecss-ranks.test.ts): whether MPI is
// here, a test wrapper that skips without it (and fails without it under SIGMA_REQUIRE_MPI=1,
// as CI sets), mpirun with the variables Open MPI needs as root on a small machine, and the
// comparison of two runs' logged steps.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadMpi } from "../src/comm/mpi.js";
import { readMetrics } from "../src/train/metrics.js";

export const REPO = fileURLToPath(new URL("..", import.meta.url));
/** The rank program the tests launch (runs jobs from a JSON file through the library). */
export const CHILD = join(REPO, "test", "distributed-child.ts");
/** Absolute, so that a rank started in another folder (--wdir) still finds it. */
export const TSX = import.meta.resolve("tsx");
export const REQUIRE_MPI = process.env.SIGMA_REQUIRE_MPI === "1";
const REQUIRE = REQUIRE_MPI;

/** Why MPI cannot be used here, or null when it can. */
function mpiMissing(): string | null {
  const m = loadMpi();
  if (!m.addon) return m.error;
  const r = spawnSync("mpirun", ["--version"], { encoding: "utf8" });
  if (r.error || r.status !== 0) return "mpirun is not on PATH (apt-get install openmpi-bin)";
  return null;
}
export const missing = mpiMissing();

/** A test that needs MPI: skipped without it, failed without it under SIGMA_REQUIRE_MPI=1. */
export function mpiTest(name: string, fn: () => Promise<void>): void {
  test(name, missing && !REQUIRE ? { skip: `MPI is not available: ${missing}` } : {}, async () => {
    if (missing) assert.fail(`SIGMA_REQUIRE_MPI=1 but MPI is not available: ${missing}`);
    await fn();
  });
}

export interface Launched {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
}

/** Open MPI as root on a small machine: allowed, and more ranks than cores. */
export const MPI_ENV = { ...process.env, OMPI_ALLOW_RUN_AS_ROOT: "1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: "1", OMPI_MCA_rmaps_base_oversubscribe: "1" };

/** Starts mpirun with `args` (after the rank count); resolves when it exits or after `timeoutMs` (then killed). */
export function mpirun(args: string[], timeoutMs: number, onStart?: (pid: number) => void): Promise<Launched> {
  return new Promise((resolve) => {
    const p = spawn("mpirun", ["--oversubscribe", ...args], { env: MPI_ENV, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (out += d));
    const timer = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
    onStart?.(p.pid!);
    p.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out });
    });
  });
}

/** A run folder's metrics records of one kind, by step. */
export function records(out: string, kind: "train" | "routing"): Map<number, Record<string, unknown>> {
  const m = new Map<number, Record<string, unknown>>();
  for (const r of readMetrics(join(out, "metrics.jsonl")) as unknown as Record<string, unknown>[]) if (r.kind === kind) m.set(r.step as number, r);
  return m;
}

/** The routing records' layers by step: tokens per expert and drops. */
export function routingLines(out: string): Map<number, { tokensPerExpert: number[]; dropped: number }[]> {
  return new Map([...records(out, "routing")].map(([s, r]) => [s, r.layers as { tokensPerExpert: number[]; dropped: number }[]]));
}

const close = (a: number, b: number, rel = 1e-5): boolean => Math.abs(a - b) <= rel * Math.max(Math.abs(a), Math.abs(b), 1e-6);

/** The steps `steps` of run `got` log what run `want` logs: losses, gradient norm within 1e-5 relative; tokens and routing counts exactly. */
export function assertSameSteps(got: string, want: string, steps: number[], what: string): void {
  const g = records(got, "train"), w = records(want, "train");
  const gr = routingLines(got), wr = routingLines(want);
  for (const s of steps) {
    const a = g.get(s), b = w.get(s);
    assert.ok(a && b, `${what}: step ${s} is missing`);
    for (const f of ["loss", "lm", "balanceLoss", "zLoss", "gradNorm", "lr"]) {
      assert.ok(close(a[f] as number, b[f] as number), `${what}, step ${s}: ${f} ${a[f]} vs ${b[f]} (the reference run)`);
    }
    assert.equal(a.tokens, b.tokens, `${what}, step ${s}: tokens`);
    assert.deepEqual(gr.get(s)?.map((l) => [l.tokensPerExpert, l.dropped]), wr.get(s)?.map((l) => [l.tokensPerExpert, l.dropped]), `${what}, step ${s}: tokens per expert and drops`);
  }
}
