/**
 * `sigma tune`: the command-line face of the GEMM autotuner
 * (src/backend/native/tune.ts), and `tuneFirst`, the first-use tuning the
 * heavy commands (`sigma train`, `sigma demo`) run before their work.
 */
import type { Command } from "commander";
import cliProgress from "cli-progress";
import { ensureTuned, tune, tuneBudgetSetting, type TuneResult } from "../backend/native/tune.js";
import type { GemmChoice, TuneMeasurement } from "../backend/native/tune-cache.js";
import { parseNumOpt } from "./tokenizer.js";

/** A progress bar on a terminal; nothing when stderr is not one (logs stay short). */
function tuneProgress(): { onProgress: (fraction: number) => void; stop: () => void } {
  if (!process.stderr.isTTY) return { onProgress: () => {}, stop: () => {} };
  const bar = new cliProgress.SingleBar({ format: "tuning the GEMM {bar} {percentage}% | {duration}s", hideCursor: true, barsize: 24 }, cliProgress.Presets.shades_classic);
  bar.start(100, 0);
  return { onProgress: (f) => bar.update(Math.round(100 * f)), stop: () => (bar.update(100), bar.stop()) };
}

/** Runs first-use tuning when it is due (see ensureTuned), with the progress bar. */
export async function tuneFirst(): Promise<void> {
  const p = tuneProgress();
  let started = false;
  try {
    await ensureTuned({
      log: (line) => console.error(line),
      onProgress: (f) => {
        started = true;
        p.onProgress(f);
      },
    });
  } finally {
    if (started) p.stop();
  }
}

const choice = (c: GemmChoice) => `${c.tile} MC ${c.mc} KC ${c.kc} NC ${c.nc}`;

const CLASS_TITLE: Record<TuneMeasurement["shapeClass"], string> = {
  large: "large products (K > 256)",
  "short-k": "short products (K ≤ 256)",
  "small-m-nt": "64-row x·Wᵀ: small-M path or blocked",
  "small-m-nn": "64-row dy·W: small-M path or blocked",
};

/** The table of candidates (the last measurement of each) and winners, as printed by `sigma tune`. */
export function formatTuneResult(r: TuneResult): string {
  const out: string[] = [];
  out.push(`GEMM tuning for ${r.key.cpu} (kernel path ${r.key.path}, ${r.key.threads} thread(s)) in ${r.seconds.toFixed(1)} s (budget ${r.budgetSeconds} s)`);
  out.push(`the cache-size rule's choice: ${choice(r.rule)}`);
  for (const threads of [...new Set(r.table.map((m) => m.threads))]) {
    for (const cls of Object.keys(CLASS_TITLE) as TuneMeasurement["shapeClass"][]) {
      const last = new Map<string, TuneMeasurement>();
      for (const m of r.table) if (m.threads === threads && m.shapeClass === cls) last.set(m.candidate, m);
      if (last.size === 0) continue;
      const rows = [...last.values()].sort((a, b) => b.gflops - a.gflops);
      const shapes = Object.keys(rows[0]!.shapes);
      out.push(`\n${threads} thread(s), ${CLASS_TITLE[cls]}: GFLOP/s (${shapes.join(", ")}${shapes.length > 1 ? "; geometric mean first" : ""})`);
      const width = Math.max(...rows.map((m) => m.candidate.length));
      for (const m of rows) {
        const per = shapes.length > 1 ? `  (${shapes.map((s) => m.shapes[s]!.toFixed(1)).join(" ")})` : "";
        out.push(`  ${m.winner ? "*" : " "} ${m.candidate.padEnd(width)}  ${m.gflops.toFixed(1).padStart(6)}${per}`);
      }
    }
  }
  const t = r.tuning;
  const bucket = (name: string, b: typeof t.one) =>
    `${name}: large ${choice(b.large)}; short K ${choice(b.shortK)}; small-M path up to ${b.smallMRowsNT} rows (x·Wᵀ), ${b.smallMRowsNN} (dy·W)`;
  out.push(`\nchosen (*): ${bucket("one thread", t.one)}`);
  if (r.key.threads > 1) out.push(`            ${bucket(`${r.key.threads} threads`, t.many)}`);
  out.push(r.file ? `saved to ${r.file} (applied whenever Sigma loads the addon on this CPU, build and thread count)` : "not saved");
  return out.join("\n");
}

export function register(program: Command): void {
  program
    .command("tune")
    .description("time the GEMM's register tiles and cache blockings on this CPU and keep the fastest (docs/kernels.md, section The autotuner)")
    .option("--budget <seconds>", "time the tuning may take (default: SIGMA_TUNE_BUDGET, else 30)", parseNumOpt("budget", 0, 3600, { above: true }))
    .option("--json", "print JSON")
    .action(async (o: { budget?: number; json?: boolean }) => {
      const budgetSeconds = o.budget ?? tuneBudgetSetting();
      const p = tuneProgress();
      let r: TuneResult;
      try {
        r = await tune({ budgetSeconds, onProgress: p.onProgress });
      } finally {
        p.stop();
      }
      console.log(o.json ? JSON.stringify(r, null, 2) : formatTuneResult(r));
    });
}
