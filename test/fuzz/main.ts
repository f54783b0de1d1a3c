/**
 * `npm run fuzz -- [--count N] [--seed S] [--format NAME[,NAME…]] [--index I] [--workers W]
 *                  [--timeout SECONDS] [--memory MiB] [--keep] [--json FILE] [--verbose] [--debug]`
 *
 * The long fuzz run (default 10,000 mutants per format): prints a table of
 * outcomes per format, the failures grouped by cause with a command that
 * re-runs each example, and a JSON summary; exits 1 on any failure.
 * `--format F --index I` re-runs one mutant and prints its full output
 * (`--keep` keeps its job folder; `--debug` sets SIGMA_DEBUG=1, so an internal
 * error prints its stack trace). `--list [REGEX]` prints the mutants (of --count,
 * from --start) whose description or command matches, without running them. When the native addon's own fuzz exists
 * (test/addon-fuzz-child.ts) it runs after this one, with the same seed.
 */
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { formatCauses, formatTable, listMutants, reproCommand, runFuzz } from "./runner.js";
import { FAILURES } from "./classify.js";

function parseArgs(argv: string[]): Record<string, string | true> {
  const out: Record<string, string | true> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith("--")) throw new Error(`unexpected argument ${a}`);
    const [k, v] = a.slice(2).split("=", 2) as [string, string | undefined];
    if (v !== undefined) out[k] = v;
    else if (argv[i + 1] !== undefined && !argv[i + 1]!.startsWith("--")) out[k] = argv[++i]!;
    else out[k] = true;
  }
  return out;
}

const a = parseArgs(process.argv.slice(2));
for (const sig of ["SIGINT", "SIGTERM"] as const) process.on(sig, () => process.exit(130));
const num = (k: string, d: number): number => {
  const v = a[k];
  if (v === undefined) return d;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${k} must be a number, got ${String(v)}`);
  return n;
};
const seed = num("seed", Date.now() % 1_000_000);
const index = a.index === undefined ? undefined : num("index", 0);
const formats = typeof a.format === "string" ? a.format.split(",") : undefined;
const single = index !== undefined;
if (a.list !== undefined) {
  // --list [REGEX]: the mutants (seed, formats, count, start) whose description or command matches, not run.
  const match = typeof a.list === "string" ? new RegExp(a.list, "i") : undefined;
  const found = await listMutants({ seed, count: num("count", 1000), start: num("start", 0), formats, match, memoryKiB: num("memory", 3072) * 1024 });
  for (const m of found) console.log(`${m.format} #${m.index}: ${m.target}: ${m.what.join("; ").slice(0, 200)} | sigma ${m.argv.join(" ")}`);
  console.error(`${found.length} mutants; re-run one with: npm run fuzz -- --seed ${seed} --format F --index I`);
  process.exit(0);
}
console.error(`fuzz: seed ${seed}${formats ? `, formats ${formats.join(",")}` : ""}${single ? `, mutant ${index}` : `, ${num("count", 10_000)} mutants per format`}`);
let done = 0;
const t0 = performance.now();
const summary = await runFuzz({
  seed,
  count: num("count", 10_000),
  start: num("start", 0),
  formats,
  index,
  workers: num("workers", Math.max(1, Math.min(availableParallelism(), 8))),
  timeoutMs: num("timeout", 20) * 1000,
  memoryKiB: num("memory", 3072) * 1024,
  keep: a.keep === true,
  env: a.debug ? { SIGMA_DEBUG: "1" } : undefined,
  onJob: (m, c) => {
    done++;
    if (single) {
      console.log(`${m.format} #${m.index}: ${m.target}\n  ${m.what.join("\n  ")}\nsigma ${m.argv.join(" ")}\n→ ${c.outcome}${c.code !== null ? ` (exit ${c.code})` : ""}: ${c.detail}\n${c.full}`);
    } else if (a.verbose) {
      console.error(`  ${c.outcome.padEnd(7)} ${m.format} #${m.index} [${m.argv.slice(0, 2).join(" ")}] ${m.what.join("; ").slice(0, 140)}\n          → ${c.detail.slice(0, 200)}`);
    } else if (FAILURES.has(c.outcome)) {
      console.error(`  ${c.outcome}: ${m.format} #${m.index} ${c.detail.slice(0, 160)}`);
    }
    if (!single && done % 500 === 0) console.error(`  ${done} mutants, ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  },
});
if (!single) {
  console.log(formatTable(summary));
  const h = summary.harness;
  console.log(`\nseed ${summary.seed}, seeds ${summary.seedsFingerprint}, ${summary.workers} workers (${h.workerStarts} started), ${summary.wallSeconds.toFixed(1)} s; summed over workers: jobs ${(h.runMs / 1000).toFixed(1)} s, job folders ${(h.prepareMs / 1000).toFixed(1)} s, checks ${(h.checkMs / 1000).toFixed(1)} s\n`);
  console.log(formatCauses(summary));
  if (summary.unconfirmed.length) console.log(`\ncrashes / hangs that did not recur in a fresh worker (counted as the second outcome):\n${summary.unconfirmed.map((u) => `  ${u.format} #${u.index}: ${u.first.slice(0, 120)} → ${u.again.slice(0, 120)}`).join("\n")}`);
  const leaked = Object.entries(summary.formats).filter(([, f]) => f.leaked > 0);
  if (leaked.length) console.log(`\njobs that left handles open in the in-process worker (not a failure: the real sigma exits): ${leaked.map(([n, f]) => `${n} ${f.leaked}`).join(", ")}`);
  console.log(`\nslowest jobs:\n${summary.slowest.map((j) => `  ${j.ms} ms ${j.outcome} ${j.format} #${j.index}: ${j.what.join("; ").slice(0, 160)}`).join("\n")}`);
  const json = JSON.stringify({ ...summary, causes: summary.causes.map((c) => ({ ...c, repro: c.examples.map((e) => reproCommand(summary.seed, e)) })) }, null, 2);
  if (typeof a.json === "string") writeFileSync(a.json, json + "\n");
  else console.log(`\n${json}`);
}
if (summary.root) console.error(`kept ${summary.root}`);

// The native addon's own fuzz (another helper's), when present.
let addonFailed = false;
const addonChild = fileURLToPath(new URL("../addon-fuzz-child.ts", import.meta.url));
if (!single && !formats && existsSync(addonChild)) {
  console.error("\naddon fuzz: test/addon-fuzz-child.ts");
  // Its count is of addon calls (a few microseconds each): 20 per mutant of ours.
  const r = spawnSync(process.execPath, ["--expose-gc", "--import", "tsx", addonChild, "--seed", String(seed), "--count", String(20 * num("count", 10_000))], { stdio: "inherit" });
  addonFailed = r.status !== 0;
}
process.exit(summary.total.failures > 0 || addonFailed ? 1 : 0);
