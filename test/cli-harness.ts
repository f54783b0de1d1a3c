// Runs `sigma` subcommands in-process (faster than spawning, and errors keep
// their types) with only the given command groups registered. Not a test file.
import { Command } from "commander";

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
