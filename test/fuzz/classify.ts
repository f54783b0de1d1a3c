/**
 * What a job's outcome means. The contract (issue 19): every outcome is a
 * success (exit 0) or a clean error — exit 1 with exactly one `sigma: …` line,
 * optionally followed by indented lines (a hint, the fields a message lists).
 * Anything else is a failure:
 *
 *   internal     exit 70 or a `sigma: internal error` line
 *   bad-output   a stack trace, exit 1 without a `sigma:` line or with several,
 *                unindented text after it, exit 0 with a `sigma:` line, any other exit code
 *   crash        the process would have died: the worker exited, or an exception /
 *                rejection escaped the command
 *   hang         no answer within the time bound
 *   escape       something outside the job's folder was created, changed or deleted
 */
import type { JobResult } from "./pool.js";

export type Outcome = "success" | "error" | "internal" | "bad-output" | "crash" | "hang" | "escape";
export const OUTCOMES: Outcome[] = ["success", "error", "internal", "bad-output", "crash", "hang", "escape"];
export const FAILURES = new Set<Outcome>(["internal", "bad-output", "crash", "hang", "escape"]);

export interface Classified {
  outcome: Outcome;
  /** One line on why (for failures), or the error's first line. */
  detail: string;
  /** The job's output, trimmed (first lines). */
  output: string;
  /** The job's whole output (up to 20,000 characters), for reproducing one mutant. */
  full: string;
  code: number | null;
  ms: number;
  /** Refused with "out of memory" (a clean error, but a sign of a missing bound). */
  oom: boolean;
  leaked: string[];
}

const STACK = /^\s+at .+(:\d+:\d+\)?|\(native\)|<anonymous>\)?)$/m;

export function head(s: string, lines = 8, chars = 1200): string {
  const h = s.split("\n").slice(0, lines).join("\n");
  return h.length > chars ? `${h.slice(0, chars)}…` : h;
}

export function classify(r: JobResult): Classified {
  const base = { code: null as number | null, ms: 0, oom: false, leaked: [] as string[], full: "" };
  if (r.kind === "hang") return { ...base, outcome: "hang", detail: `no answer in ${(r.ms / 1000).toFixed(1)} s (worker killed)`, output: head(r.stderr), full: r.stderr, ms: r.ms };
  if (r.kind === "crash") return { ...base, outcome: "crash", detail: `worker died: ${r.signal ?? `exit code ${r.exitCode}`}`, output: head(r.stderr.split("\n").slice(-12).join("\n"), 12), full: r.stderr };
  if (r.kind === "escaped") {
    const printed = r.out.map((o) => o.t).join("");
    return { ...base, outcome: "crash", detail: `${r.how} escaped the command: ${r.message.split("\n")[0]}`, output: head(`${printed}${r.stack}`, 10), full: `${printed}${r.stack}`.slice(0, 20_000) };
  }
  const all = r.out.map((o) => o.t).join("");
  const err = r.out.filter((o) => o.s === "e").map((o) => o.t).join("");
  const lines = err.split("\n");
  const sigma = lines.map((l, i) => [l, i] as const).filter(([l]) => l.startsWith("sigma:"));
  const out = { ...base, code: r.code, ms: r.ms, leaked: r.leaked, output: head(all), full: all.slice(0, 20_000) };
  const first = sigma[0]?.[0] ?? "";
  if (r.code === 70 || lines.some((l) => l.startsWith("sigma: internal error"))) return { ...out, outcome: "internal", detail: lines.find((l) => l.startsWith("sigma: internal error")) ?? `exit code 70: ${first}` };
  if (STACK.test(all)) return { ...out, outcome: "bad-output", detail: `stack trace in the output (exit ${r.code}): ${first || all.split("\n")[0]}` };
  if (r.code === 0) return sigma.length ? { ...out, outcome: "bad-output", detail: `exit 0 with an error line: ${first}` } : { ...out, outcome: "success", detail: "" };
  if (r.code !== 1) return { ...out, outcome: "bad-output", detail: `exit code ${r.code}: ${first || all.split("\n")[0]}` };
  if (sigma.length === 0) return { ...out, outcome: "bad-output", detail: `exit 1 without a sigma: line: ${all.trim().split("\n").slice(-1)[0] ?? ""}` };
  if (sigma.length > 1) return { ...out, outcome: "bad-output", detail: `${sigma.length} sigma: lines: ${sigma.map(([l]) => l).join(" | ")}` };
  const after = lines.slice(sigma[0]![1] + 1).filter((l) => l !== "");
  const stray = after.find((l) => !/^\s/.test(l));
  if (stray !== undefined) return { ...out, outcome: "bad-output", detail: `unindented text after the sigma: line: ${JSON.stringify(stray.slice(0, 120))} (after ${first.slice(0, 160)})` };
  return { ...out, outcome: "error", detail: first, oom: /out of memory/i.test(first) };
}

/**
 * A failure's cause, for grouping: its kind and the first line with the
 * specifics (numbers, quoted values, paths, hex) taken out. A hang says
 * nothing about its cause, so it is grouped by the format and the mutant's
 * first change instead (`what`).
 */
export function signature(c: Pick<Classified, "outcome" | "detail">, what: string[] = []): string {
  let d = c.detail;
  if (c.outcome === "hang") d = `timeout, ${(what[0] ?? "").replace(/\$[^:]*:/, (p) => p.replace(/\[\d+\]/g, "[i]"))}`;
  d = d
    // JSON.parse's messages quote the bad spot of the file: the same cause whatever the spot.
    .replace(/(Unexpected (token|end|non-whitespace|number|string)|Expected|Bad (control|escaped)|Unterminated|Exponent part|No number)[^]*$/, "<JSON.parse message>")
    .replace(/"(?:[^"\\]|\\.)*"/g, '"…"')
    .replace(/'[^']*'/g, "'…'")
    .replace(/(?:\.{0,2}\/)?(?:[\w.@-]+\/)+[\w.@-]*/g, "<path>")
    .replace(/\b[0-9a-f]{12,}\b/g, "<hex>")
    .replace(/-?\b\d+(\.\d+)?(e[+-]?\d+)?\b/gi, "N")
    .replace(/\s+/g, " ");
  return `${c.outcome}: ${d.slice(0, 200)}`;
}
