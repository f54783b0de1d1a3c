// Runs `sigma` subcommands in-process (faster than spawning, and errors keep
// their types) with only the given command groups registered. Not a test file.
import { Command } from "commander";

// Tests run the heavy commands (sigma train, demo) many times: no first-use
// GEMM tuning there, and no tuning file from the developer's cache
// (test/tune.test.ts tests both on its own files).
process.env.SIGMA_TUNE ??= "off";

/** Runs `sigma <args>` with the commands that `registers` add; returns everything printed. */
export async function runCli(registers: ((program: Command) => void)[], args: string[]): Promise<string> {
  const program = new Command().exitOverride();
  for (const register of registers) register(program);
  const lines: string[] = [];
  const [log, err] = [console.log, console.error];
  console.log = console.error = (...a: unknown[]) => lines.push(a.join(" "));
  try {
    await program.parseAsync(args, { from: "user" });
  } finally {
    [console.log, console.error] = [log, err];
  }
  return lines.join("\n");
}

/**
 * Runs the whole `sigma <args>` (src/cli/program.ts) in-process; returns the
 * exit code and everything printed to the console and stderr, in order.
 */
export async function sigma(...args: string[]): Promise<{ code: number; out: string }> {
  const { runCli: run } = await import("../src/cli/program.js");
  const lines: string[] = [];
  const [log, err, write] = [console.log, console.error, process.stderr.write];
  console.log = console.error = (...a: unknown[]) => void lines.push(a.join(" "));
  process.stderr.write = ((chunk: string | Uint8Array) => (lines.push(String(chunk)), true)) as typeof process.stderr.write;
  try {
    const code = await run(args);
    return { code, out: lines.join("\n") };
  } finally {
    [console.log, console.error, process.stderr.write] = [log, err, write];
  }
}
