/**
 * A long-lived fuzz worker (a child process started by test/fuzz/pool.ts with
 * an IPC channel). It receives jobs — `sigma` argv and the folder to run in —
 * runs the command line in-process through `runCli(argv)`, captures what it
 * prints, and answers with the exit code and the output. Process-global state
 * a command may leave behind (exit code, cwd, signal and process listeners,
 * the kernel thread count, environment) is put back after every job.
 *
 * An exception or rejection that escapes the command (a callback, a worker
 * thread's error event) would kill the real `sigma` process with a stack
 * trace: it is reported as such for the job in flight, and this worker then
 * exits (its state can no longer be trusted); the pool starts a new one.
 */
import { rmSync, writeFileSync } from "node:fs";

export interface JobMessage {
  type: "job";
  id: number;
  cwd: string;
  argv: string[];
}

export interface DoneMessage {
  type: "done";
  id: number;
  code: number;
  /** Everything printed, in order: "o" stdout, "e" stderr. */
  out: { s: "o" | "e"; t: string }[];
  ms: number;
  /** Resources the command left open (timers, handles, worker threads…) beyond those before the job. */
  leaked: string[];
  /** This process's resident memory after the job, bytes (the pool recycles a worker that grew too big). */
  rss: number;
}

export interface EscapedMessage {
  type: "escaped";
  id: number;
  how: "uncaughtException" | "unhandledRejection";
  message: string;
  stack: string;
  out: { s: "o" | "e"; t: string }[];
}

export type WorkerMessage = { type: "ready"; pid: number } | DoneMessage | EscapedMessage;

const send = (m: WorkerMessage): void => {
  process.send!(m);
};

const home = process.cwd();
// Fuzzed train and demo commands must not stop to tune the GEMM (issue 21's first-use tuning).
process.env.SIGMA_TUNE ??= "off";
const selftesting = process.env.SIGMA_FUZZ_SELFTEST === "1";

/** The command line and the kernel backend, loaded once (the self-test alone does without: it starts faster). */
async function loadCli() {
  const [{ runCli }, { getBackend }] = await Promise.all([import("../../src/cli/program.js"), import("../../src/backend/index.js")]);
  const backend = getBackend();
  // One kernel thread per worker: the pool runs as many workers as there are cores.
  backend.setThreads(1);
  return { runCli, backend, threads: backend.getThreads() };
}
let cli: Awaited<ReturnType<typeof loadCli>> | null = selftesting ? null : await loadCli();
const env = { ...process.env };
const TRACKED_EVENTS = ["SIGINT", "SIGTERM", "SIGHUP", "exit", "beforeExit", "warning", "uncaughtException", "unhandledRejection"] as const;

const realStdout = process.stdout.write.bind(process.stdout);
const realStderr = process.stderr.write.bind(process.stderr);
let current: { id: number; out: DoneMessage["out"] } | null = null;

function capture(s: "o" | "e") {
  return (chunk: unknown, ...rest: unknown[]): boolean => {
    const t = typeof chunk === "string" ? chunk : Buffer.from(chunk as Uint8Array).toString("utf8");
    if (current) current.out.push({ s, t });
    else (s === "o" ? realStdout : realStderr)(t);
    const cb = rest.find((r) => typeof r === "function") as (() => void) | undefined;
    cb?.();
    return true;
  };
}

function escaped(how: EscapedMessage["how"], e: unknown): void {
  const err = e instanceof Error ? e : new Error(String(e));
  send({ type: "escaped", id: current?.id ?? -1, how, message: err.message, stack: err.stack ?? "", out: current?.out ?? [] });
  // The job is lost; so is this process's state. The pool starts a new worker.
  setTimeout(() => process.exit(3), 50);
}
process.on("uncaughtException", (e) => escaped("uncaughtException", e));
process.on("unhandledRejection", (e) => escaped("unhandledRejection", e));

/** A count per resource type (process.getActiveResourcesInfo): what a job leaves open shows as a difference. */
function resources(): Map<string, number> {
  const m = new Map<string, number>();
  for (const r of process.getActiveResourcesInfo()) m.set(r, (m.get(r) ?? 0) + 1);
  return m;
}

/**
 * The harness's own test hooks (test/fuzz.test.ts), only with SIGMA_FUZZ_SELFTEST=1:
 * `__selftest <op> [arg]` misbehaves on purpose so the test can check that the
 * pool and the classifier catch each kind of failure.
 */
async function selftest(argv: string[]): Promise<number> {
  const [op, arg] = argv;
  switch (op) {
    case "ok":
      console.log("fine");
      return 0;
    case "clean":
      console.error("sigma: the file is bad\n  hint: use another");
      return 1;
    case "internal":
      console.error("sigma: internal error: boom\n  hint: this is a bug in Sigma");
      return 70;
    case "stack":
      console.error(`sigma: ${new Error("boom").stack}`);
      return 1;
    case "two-lines":
      console.error("sigma: first\nsigma: second");
      return 1;
    case "silent-1":
      console.log("some report");
      return 1;
    case "write":
      writeFileSync(arg!, "escaped\n");
      return 0;
    case "delete":
      rmSync(arg!, { recursive: true, force: true });
      return 0;
    case "hang":
      for (;;);
    case "abort":
      process.abort();
    case "async-throw":
      setTimeout(() => {
        throw new Error("late failure");
      }, 0);
      await new Promise((r) => setTimeout(r, 20));
      return 0;
    default:
      throw new Error(`unknown self-test op ${op}`);
  }
}

async function run(job: JobMessage): Promise<void> {
  const listeners = new Map(TRACKED_EVENTS.map((ev) => [ev, process.listeners(ev as NodeJS.Signals)]));
  const before = resources();
  const out: DoneMessage["out"] = [];
  current = { id: job.id, out };
  process.stdout.write = capture("o") as typeof process.stdout.write;
  process.stderr.write = capture("e") as typeof process.stderr.write;
  process.exitCode = undefined;
  const t0 = performance.now();
  let code: number;
  try {
    process.chdir(job.cwd);
    if (job.argv[0] === "__selftest" && selftesting) code = await selftest(job.argv.slice(1));
    else {
      cli ??= await loadCli();
      code = await cli.runCli(job.argv);
    }
  } catch (e) {
    // runCli catches everything; a throw here is the harness's or runCli's own bug.
    out.push({ s: "e", t: `[fuzz worker] runCli threw: ${(e as Error)?.stack ?? String(e)}\n` });
    code = -1;
  } finally {
    process.stdout.write = realStdout as typeof process.stdout.write;
    process.stderr.write = realStderr as typeof process.stderr.write;
  }
  const ms = performance.now() - t0;
  // Let anything the command scheduled but did not await settle inside this job.
  await new Promise((r) => setTimeout(r, 0));
  current = null;
  process.exitCode = undefined;
  process.chdir(home);
  for (const [ev, had] of listeners) {
    for (const l of process.listeners(ev as NodeJS.Signals)) if (!had.includes(l)) process.off(ev, l as () => void);
  }
  if (cli && cli.backend.getThreads() !== cli.threads) cli.backend.setThreads(cli.threads);
  for (const k of Object.keys(process.env)) if (!(k in env)) delete process.env[k];
  Object.assign(process.env, env);
  const after = resources();
  const leaked: string[] = [];
  for (const [r, n] of after) if (n > (before.get(r) ?? 0)) leaked.push(`${r}×${n - (before.get(r) ?? 0)}`);
  send({ type: "done", id: job.id, code, out, ms, leaked, rss: process.memoryUsage.rss() });
}

// Jobs run one at a time, in order.
let queue = Promise.resolve();
process.on("message", (m: JobMessage) => {
  if (m?.type === "job") queue = queue.then(() => run(m));
});
process.on("disconnect", () => process.exit(0));
send({ type: "ready", pid: process.pid });
