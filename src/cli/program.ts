/**
 * The `sigma` command line as a function: `runCli(argv)` builds the program
 * (demo, train, eval, eval tasks, finetune, generate, data, tokenizer, balance, upcycle, extract,
 * import, export, store, tune, quantize, serve, chat, preset, info), runs it and returns the exit code. Every error ends
 * as one `sigma: …` line on stderr:
 *
 *   0   success
 *   1   a user's mistake or bad input (SigmaError, a bad flag, a file the
 *       system refused: permissions, a full disk, a missing folder)
 *   70  an internal error (a bug in Sigma: the message says so; SIGMA_DEBUG=1
 *       prints the stack trace)
 */
import { Command, CommanderError } from "commander";
import { readFileSync } from "node:fs";
import { getBackend } from "../backend/index.js";
import { loadNative } from "../backend/native/index.js";
import { SigmaError } from "../util/errors.js";
import { activeWorld } from "../comm/comm.js";
import { loadMpi } from "../comm/mpi.js";
import { oneLine } from "../util/strict-json.js";
import { register as registerTokenizer } from "./tokenizer.js";
import { register as registerData } from "./data.js";
import { register as registerTrain } from "./train.js";
import { register as registerDemo } from "./demo.js";
import { register as registerBalance } from "./balance.js";
import { register as registerUpcycle } from "./upcycle.js";
import { register as registerExtract } from "./extract.js";
import { register as registerDomain } from "./domain.js";
import { register as registerImport } from "./import.js";
import { register as registerExport } from "./export.js";
import { register as registerStore } from "./store.js";
import { register as registerTune } from "./tune.js";
import { register as registerQuantize } from "./quantize.js";
import { tuneStatus, type TuneStatus } from "../backend/native/tune-cache.js";
import { register as registerServe } from "./serve.js";
import { register as registerFinetune } from "./finetune.js";
import { register as registerEvalTasks } from "./eval-tasks.js";
import { register as registerPreset } from "./preset.js";

const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };

/** Exit code of an internal error (BSD's EX_SOFTWARE): a bug, not the user's input. */
export const EXIT_INTERNAL = 70;

/** System error codes that come from the user's files, flags or machine, not from a bug. */
const USER_ERRNO = new Set(["ERR_FS_EISDIR", "ENOENT", "EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "EIO", "EISDIR", "ENOTDIR", "EEXIST", "ENOTEMPTY", "ELOOP", "ENAMETOOLONG", "EMFILE", "ENFILE", "EFBIG", "EBUSY", "ETXTBSY", "EXDEV", "EINVAL"]);

/** The program with every command registered; errors are thrown, never exit the process. */
export function buildProgram(): Command {
  const program = new Command();
  program
    .name("sigma")
    .description("Sparse Mixture-of-Experts language models: PanGu-Σ (RRE, ECSS) and Pangu Pro MoE (MoGE)")
    .version(pkg.version)
    .exitOverride()
    .configureOutput({ outputError: (str, write) => write(`sigma: ${str.replace(/^error: /, "")}`) });
  registerTokenizer(program);
  registerData(program);
  registerTrain(program);
  registerDemo(program);
  registerBalance(program);
  registerUpcycle(program);
  registerExtract(program);
  registerDomain(program);
  registerImport(program);
  registerExport(program);
  registerStore(program);
  registerTune(program);
  registerServe(program);
  registerFinetune(program);
  // After registerTrain: `sigma eval tasks` is a subcommand of its `sigma eval`.
  registerEvalTasks(program);
  registerQuantize(program);
  registerPreset(program);
  program
    .command("info")
    .description("show the kernel backend in use, the CPU features it detected and the thread count")
    .option("--json", "print JSON")
    .action((opts: { json?: boolean }) => {
      const native = loadNative();
      const backend = getBackend();
      const info = {
        version: pkg.version,
        node: process.version,
        backend: backend.name,
        threads: backend.getThreads(),
        native: native.backend
          ? {
              path: native.path,
              cpu: native.backend.cpuFeatures(),
              cpuInfo: native.backend.cpuInfo(),
              gemm: native.backend.gemmConfig(),
              gemmTuning: native.backend.gemmTuning(),
              tuneCache: tuneCacheSummary(tuneStatus()),
              bf16Path: native.backend.bf16Path(),
            }
          : { error: native.error },
        mpi: ((m) => (m.addon ? { path: m.path } : { error: m.error }))(loadMpi()),
      };
      if (opts.json) {
        console.log(JSON.stringify(info, null, 2));
        return;
      }
      console.log(`sigma ${info.version} on Node ${info.node}`);
      console.log(`backend: ${info.backend}, ${info.threads} thread(s)`);
      if (native.backend) {
        const cpu = native.backend.cpuFeatures();
        console.log(`native addon: ${native.path}`);
        console.log(`kernel path: ${cpu.path} (avx2 ${cpu.avx2}, fma ${cpu.fma}, avx512f ${cpu.avx512f})`);
        const ci = native.backend.cpuInfo(), g = native.backend.gemmConfig(), kib = (b: number) => (b ? `${b / 1024} KiB` : "?");
        console.log(`cpu: ${ci.brand || ci.vendor} (family ${ci.family} model ${ci.model}), ${ci.physicalCores} core(s), ${ci.logicalCores} thread(s); L1d ${kib(ci.l1d)}, L2 ${kib(ci.l2)}, L3 ${kib(ci.l3)} (${ci.cacheSource})`);
        const from = g.tuned ? "tuned" : g.tileOverride || g.blockingOverride ? "override" : "the cache-size rule";
        console.log(`gemm: tile ${g.tile} (${g.mr}×${g.nr}), blocking MC ${g.mc} KC ${g.kc} NC ${g.nc} (${from}), small-M path up to ${g.smallMRowsNT} rows (x·Wᵀ), ${g.smallMRowsNN} (x·W)`);
        const t = native.backend.gemmTuning();
        const pick = (c: { tile: string; mc: number; kc: number; nc: number }) => `${c.tile} MC ${c.mc} KC ${c.kc} NC ${c.nc}`;
        if (t && g.tuned) {
          console.log(`gemm tuning (${t.path}): one thread: large ${pick(t.one.large)}, short K ${pick(t.one.shortK)}; several: large ${pick(t.many.large)}, short K ${pick(t.many.shortK)}`);
        }
        console.log(`gemm tuning file: ${describeTuneStatus(tuneStatus())}`);
        const b16 = native.backend.bf16Path();
        console.log(`bf16 products ("precision": "bf16"): ${b16 === "avx512-bf16" ? "AVX512_BF16 (vdpbf16ps, f32 sums)" : "converted to f32 (this CPU path has no AVX512_BF16)"}`);
      } else {
        console.log(`native addon unavailable: ${native.error}`);
      }
      const mpi = loadMpi();
      console.log(mpi.addon ? `mpi: ${mpi.path} (distributed training: docs/distributed.md)` : `mpi: unavailable (${mpi.error}); distributed runs need Open MPI: apt-get install openmpi-bin libopenmpi-dev, then npm rebuild`);
    });
  return program;
}

/** The tuning cache's state for `sigma info --json` (the entry's key and date, not its table). */
function tuneCacheSummary(s: TuneStatus | null): Record<string, unknown> | null {
  if (!s) return null;
  if (s.state !== "applied") return s;
  return { state: s.state, file: s.file, key: s.entry.key, tunedAt: s.entry.tunedAt };
}

/** Where the GEMM's choice came from, in words. */
function describeTuneStatus(s: TuneStatus | null): string {
  if (!s) return "not read";
  switch (s.state) {
    case "off":
      return `not read (SIGMA_TUNE=off); ${s.file}`;
    case "missing":
      return `${s.file} (none yet: \`sigma tune\`, or the first \`sigma train\` or \`sigma demo\`, makes it)`;
    case "corrupt":
      return `${s.file}, ignored: ${s.reason}`;
    case "foreign":
      return `${s.file}, ignored: it holds tunings for other CPUs or builds only`;
    case "untuned":
      return `${s.file}, no tuning for this thread count or kernel path (tuned for ${s.threads.join(", ")} thread(s)); \`sigma tune\` adds one`;
    case "applied":
      return `${s.file} (tuned ${s.entry.tunedAt}, applied)`;
  }
}

/** The one line (plus hint) an error prints, and the exit code it gives. */
export function describeError(e: unknown): { text: string; code: number } {
  if (e instanceof SigmaError) return { text: `sigma: ${e.message}`, code: 1 };
  const errno = (e as NodeJS.ErrnoException | null)?.code;
  if (typeof errno === "string" && USER_ERRNO.has(errno) && e instanceof Error) return { text: `sigma: ${e.message}`, code: 1 };
  if (e instanceof Error && /Array buffer allocation failed|Invalid typed array length|Invalid array length/.test(e.message)) {
    return { text: `sigma: out of memory: ${e.message}\n  hint: use a smaller model or batch (the config's model and batchSize fields)`, code: 1 };
  }
  const msg = e instanceof Error ? e.message : String(e);
  const stack = process.env.SIGMA_DEBUG && e instanceof Error && e.stack ? `\n${e.stack}` : "";
  return { text: `sigma: internal error: ${msg}\n  hint: this is a bug in Sigma; please report it with the command you ran (SIGMA_DEBUG=1 prints the stack trace)${stack}`, code: EXIT_INTERNAL };
}

/**
 * An error's text as it reaches the terminal: control characters from file
 * contents escaped (no terminal escape sequences, no stray line breaks), and
 * every line after the first indented under the `sigma:` line.
 */
function printable(text: string): string {
  return text
    .split("\n")
    .map((l, i) => {
      const line = oneLine(l, 4000);
      return i === 0 || /^\s/.test(line) ? line : `  ${line}`;
    })
    .join("\n");
}

/** Runs `sigma <argv>` (argv without node and the script) and returns the exit code. */
export async function runCli(argv: string[]): Promise<number> {
  const program = buildProgram();
  // A command may set process.exitCode (e.g. `store inspect --verify` finding bad records);
  // read it for this run only, leaving the caller's own exit code as it was.
  const callers = process.exitCode;
  process.exitCode = undefined;
  try {
    await program.parseAsync(argv, { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (e) {
    // Commander has printed its own message (help, version, a bad flag).
    if (e instanceof CommanderError) return e.exitCode;
    const { text, code } = describeError(e);
    const world = activeWorld();
    if (world && world.comm.size > 1) {
      // One rank of a distributed run: say which, then stop every rank (the others may wait in a collective for this one).
      console.error(printable(text.replace(/^sigma: /, `sigma: rank ${world.comm.rank} of ${world.comm.size}: `)));
      world.comm.abort(code);
    }
    console.error(printable(text));
    return code;
  } finally {
    process.exitCode = callers;
  }
}
