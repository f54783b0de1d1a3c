/** The `sigma` executable: runs the command line (src/cli/program.ts) and exits with its code. */
import { runCli } from "./program.js";

const code = await runCli(process.argv.slice(2));
// On an error, exit at once: a worker thread left by a half-built run must not keep the process alive.
if (code !== 0) process.exit(code);
