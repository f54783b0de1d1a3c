/** Shared benchmark helpers: timing medians, the FMA ceiling, tables. */
import { loadAddonExports, loadNative, type NativeBackend } from "../src/backend/native/index.js";

/** The native backend; with `partial`, the addon's exports even if some kernel families are missing. */
export function native(partial = false): NativeBackend {
  const n = loadNative();
  if (n.backend) return n.backend;
  if (partial) return loadAddonExports() as NativeBackend;
  throw new Error(`this benchmark needs the native backend: ${n.error}`);
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Median milliseconds of `reps` runs of fn after one warm-up run. */
export function timeMs(fn: () => void, reps = 5): number {
  fn();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    ts.push(performance.now() - t0);
  }
  return median(ts);
}

/**
 * The FMA ceiling of this machine with `threads` threads, in FLOP/s: the best
 * of several runs of independent FMA chains (a ceiling is the best the machine
 * shows; medians would fold in the noise of a shared machine).
 */
export function fmaPeak(threads: number, runs = 7): number {
  const b = native(true);
  const iters = 2e7;
  const flopsPerIter = (b as unknown as { fmaPeakFlopsPerIter: number }).fmaPeakFlopsPerIter;
  let best = 0;
  for (let i = 0; i < runs; i++) best = Math.max(best, (flopsPerIter * iters * threads) / b.fmaPeak(iters, threads));
  return best;
}

/**
 * FLOP/s of fn and its ratio to the FMA peak probed just before it, taken
 * `rounds` times; medians of both. This machine shares its host: a
 * neighbour that steals cycles for a while slows the probe beside a
 * measurement as much as the measurement, so the ratio stays meaningful
 * where a peak measured once at the start would not.
 */
export function measureVsPeak(fn: () => void, flops: number, threads: number, reps: number, rounds = 3): { flops: number; ratio: number } {
  const fs: number[] = [], rs: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const peak = fmaPeak(threads, 3);
    const f = flops / (timeMs(fn, reps) / 1000);
    fs.push(f);
    rs.push(f / peak);
  }
  return { flops: median(fs), ratio: median(rs) };
}

/** What the two ratios of the model and training benchmarks mean. */
export const PEAK_LEGEND = [
  `"% of local peak": median over steps of each step's ratio to a peak probed just before it (a neighbour that slows both cancels out);`,
  `"% of run peak": median GFLOP/s over the best peak probed in the whole run (never flattered by a probe a neighbour slowed)`,
].join("\n");

export function randomArray(n: number, seed = 1): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 2 ** 31 - 1;
  }
  return a;
}

export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const w = header.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  const line = (r: string[]) => "| " + r.map((c, i) => c.padStart(w[i]!)).join(" | ") + " |";
  return [line(header), "|" + w.map((x) => "-".repeat(x + 2)).join("|") + "|", ...cells.slice(1).map(line)].join("\n");
}
