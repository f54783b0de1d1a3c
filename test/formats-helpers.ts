// Shared by the formats-*.test.ts files (not a test file): running the real
// CLI in-process, and swapping an fs function for a test (to simulate a full
// disk or a read-only file, which chmod cannot do for root).
import assert from "node:assert/strict";
import fs from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { runCli } from "../src/cli/program.js";
import { withStreamOut } from "../src/cli/output.js";
import { SigmaError } from "../src/util/errors.js";

// No first-use GEMM tuning in the commands these tests run, and no tuning file from the developer's cache.
process.env.SIGMA_TUNE ??= "off";

/** Runs `sigma <argv>` through runCli; returns the exit code and what it printed (stdout and stderr apart). */
export async function cli(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const [log, error] = [console.log, console.error];
  const saved = process.exitCode;
  console.log = (...a: unknown[]) => void out.push(a.join(" "));
  console.error = (...a: unknown[]) => void err.push(a.join(" "));
  // Streamed text (sigma generate) too, through the CLI's own sink: process.stdout carries the
  // test runner's reports (written while a test awaits), and stray bytes there break its protocol.
  try {
    const code = await withStreamOut((t) => void out.push(t), () => runCli(argv));
    return { code, out: out.join("\n"), err: err.join("\n") };
  } finally {
    [console.log, console.error] = [log, error];
    process.exitCode = saved;
  }
}

/**
 * Asserts that a CLI run failed as bad input should: exit 1 and one
 * `sigma: ` line that names `file` and matches `re`; any further lines are
 * indented (a hint, or one line per bad field) — no stack trace, no
 * "internal error". Warnings printed before the run began (`warning: …`)
 * are not part of the refusal.
 */
export function assertRefused(r: { code: number; err: string }, file: string, re: RegExp): void {
  assert.equal(r.code, 1, `exit code 1 expected, got ${r.code}: ${r.err}`);
  const lines = r.err.split("\n").filter((l) => l.length > 0 && !l.startsWith("warning: "));
  const top = lines.filter((l) => !l.startsWith("  "));
  assert.equal(top.length, 1, `one unindented line expected:\n${r.err}`);
  assert.ok(top[0]!.startsWith("sigma: "), r.err);
  assert.ok(!/internal error/.test(r.err), r.err);
  assert.ok(r.err.includes(file), `the message should name ${file}:\n${r.err}`);
  assert.match(r.err, re);
}

/** A predicate for assert.throws: a SigmaError whose message names `file` and matches `re`. */
export const sigmaError =
  (file: string, re: RegExp) =>
  (e: unknown): boolean => {
    if (!(e instanceof SigmaError)) throw new assert.AssertionError({ message: `expected a SigmaError, got ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}` });
    if (!e.message.includes(file)) throw new assert.AssertionError({ message: `the error should name ${file}: ${e.message}` });
    if (!re.test(e.message)) throw new assert.AssertionError({ message: `${e.message}\ndoes not match ${re}` });
    return true;
  };

/**
 * Runs every case and returns "what: why" for each that failed, so that one
 * test over many bad files reports all of them, not only the first.
 */
export function failures(cases: [string, () => void][]): string[] {
  const out: string[] = [];
  for (const [what, run] of cases) {
    try {
      run();
    } catch (e) {
      out.push(`${what}: ${(e as Error).message.split("\n")[0]}`);
    }
  }
  return out;
}

type FsName = "openSync" | "writeSync" | "fsyncSync" | "renameSync";

/**
 * Replaces `fs[name]` (for ESM importers too) while `fn` runs; `impl` gets
 * the original to call through. Restored even when `fn` throws.
 */
export async function withFs<T>(name: FsName, impl: (orig: (...a: any[]) => any, ...args: any[]) => any, fn: () => T | Promise<T>): Promise<T> {
  const orig = (fs as any)[name] as (...a: any[]) => any;
  (fs as any)[name] = (...args: any[]) => impl(orig, ...args);
  syncBuiltinESMExports();
  try {
    return await fn();
  } finally {
    (fs as any)[name] = orig;
    syncBuiltinESMExports();
  }
}

/** An Error like the ones fs throws. */
export function errnoError(code: string, message: string): NodeJS.ErrnoException {
  const e = new Error(`${code}: ${message}`) as NodeJS.ErrnoException;
  e.code = code;
  return e;
}
