/**
 * Runs untrusted JavaScript — a model's completion of a code task — and
 * returns what it printed. The code is hostile until shown otherwise, so it
 * runs behind several walls, each of which alone would stop the usual
 * attempts:
 *
 *   1. a child process of its own (never this one), with an empty
 *      environment and a fresh empty working folder, killed (SIGKILL, the
 *      whole process group) when the wall-clock limit passes or when it
 *      prints more than the output cap;
 *   2. Node's permission model (--permission, --experimental-permission on
 *      Node 20) with nothing allowed: no file reads or writes, no child
 *      processes, no worker threads, no native addons;
 *   3. inside that process the code runs in a fresh vm context that holds
 *      only a `console` (no require, no process, no module), with code
 *      generation from strings turned off in both realms, so the classic
 *      escape `this.constructor.constructor("return process")()` throws;
 *   4. resource limits: V8's heap (--max-old-space-size), CPU seconds and
 *      address space (prlimit, where the system has it; the CPU limit ends
 *      the process with SIGXCPU/SIGKILL), and the vm's own timeout;
 *   5. no network where the system lets an unprivileged user make a network
 *      namespace (`unshare -rn`: only a loopback that is down); elsewhere the
 *      code still has no way to reach a socket module (walls 2 and 3).
 *
 * What the code prints with console.log is its output; an exception, a
 * timeout or a kill is reported, never thrown.
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface SandboxLimits {
  /** Wall-clock limit in milliseconds (default 5,000). */
  timeoutMs?: number;
  /** CPU seconds (default 5; rounded up). */
  cpuSeconds?: number;
  /** V8 heap in MiB (default 64). */
  heapMb?: number;
  /** Bytes of output kept; more kills the run (default 64 KiB). */
  maxOutputBytes?: number;
}

export interface SandboxResult {
  /** What the code printed with console.log / info / warn / error, in order. */
  stdout: string;
  /** The exception or limit that ended it, in one line ("" when it ran to the end). */
  error: string;
  /** True when it ran to the end without an exception. */
  ok: boolean;
  /** Why it was stopped from outside, if it was. */
  killed: "timeout" | "output" | "cpu" | "memory" | null;
  /** Whether the run had no network (a network namespace of its own). */
  isolatedNetwork: boolean;
}

/** The largest program accepted (it travels as one command-line argument). */
export const MAX_PROGRAM_BYTES = 100_000;

/**
 * The program the child runs (`node -e`): it takes the code from its
 * argument, runs it in a context holding only a console, and prints what
 * the code logged. Written to run under the permission model.
 */
const RUNNER = String.raw`
const vm = require("node:vm");
const util = require("node:util");
const code = process.argv[1];
const timeout = Number(process.argv[2]);
const cap = Number(process.argv[3]);
const write = process.stdout.write.bind(process.stdout);
const fail = (m) => process.stderr.write(String(m).split("\n")[0] + "\n");
let out = "";
const show = (a) => (typeof a === "string" ? a : util.inspect(a));
const log = (...a) => { out += a.map(show).join(" ") + "\n"; if (out.length > cap) throw new Error("output limit"); };
const box = vm.createContext({ console: { log, info: log, warn: log, error: log } }, { codeGeneration: { strings: false, wasm: false }, microtaskMode: "afterEvaluate" });
// What the code logged goes out when the process ends, promise callbacks included.
process.on("exit", () => write(out));
process.on("unhandledRejection", (e) => { fail(e && e.message !== undefined ? e.name + ": " + e.message : e); process.exitCode = 1; });
try {
  vm.runInContext(code, box, { timeout, filename: "completion.js" });
} catch (e) {
  fail(e && e.message !== undefined ? e.name + ": " + e.message : e);
  process.exitCode = 1;
}
`;

let probed: { permission: string; unshare: boolean; prlimit: boolean } | null = null;

/** What this system offers: the permission flag's name, and whether unshare -rn and prlimit work. */
function probe(): { permission: string; unshare: boolean; prlimit: boolean } {
  if (probed) return probed;
  const flags = process.allowedNodeEnvironmentFlags;
  const permission = flags.has("--permission") ? "--permission" : "--experimental-permission";
  const works = (cmd: string, args: string[]): boolean => {
    try {
      return spawnSync(cmd, args, { stdio: "ignore", timeout: 5000 }).status === 0;
    } catch {
      return false;
    }
  };
  probed = { permission, unshare: works("unshare", ["-rn", "true"]), prlimit: works("prlimit", ["--cpu=1", "true"]) };
  return probed;
}

/** Runs `code` in the sandbox described above. */
export async function runSandboxed(code: string, limits: SandboxLimits = {}): Promise<SandboxResult> {
  const timeoutMs = limits.timeoutMs ?? 5000;
  const cpu = Math.max(1, Math.ceil(limits.cpuSeconds ?? 5));
  const heap = limits.heapMb ?? 64;
  const cap = limits.maxOutputBytes ?? 64 * 1024;
  const sys = probe();
  if (code.includes("\0")) return { stdout: "", error: "program contains a NUL character", ok: false, killed: null, isolatedNetwork: sys.unshare };
  if (Buffer.byteLength(code) > MAX_PROGRAM_BYTES) return { stdout: "", error: `program longer than ${MAX_PROGRAM_BYTES} bytes`, ok: false, killed: null, isolatedNetwork: sys.unshare };
  const nodeArgs = [sys.permission, "--disallow-code-generation-from-strings", `--max-old-space-size=${heap}`, "--no-warnings", "-e", RUNNER, "--", code, String(timeoutMs), String(cap)];
  // Wrappers, outermost first: a network namespace, then the resource limits, then node.
  let argv = [process.execPath, ...nodeArgs];
  if (sys.prlimit) argv = ["prlimit", `--cpu=${cpu}`, `--as=${2 * 2 ** 30}`, "--", ...argv];
  if (sys.unshare) argv = ["unshare", "-rn", ...argv];
  const cwd = mkdtempSync(join(tmpdir(), "sigma-sandbox-"));
  try {
    return await new Promise<SandboxResult>((resolve) => {
      const child = spawn(argv[0]!, argv.slice(1), { cwd, env: {}, stdio: ["ignore", "pipe", "pipe"], detached: true });
      let stdout = "";
      let stderr = "";
      let killed: SandboxResult["killed"] = null;
      const kill = (why: NonNullable<SandboxResult["killed"]>): void => {
        killed ??= why;
        try {
          process.kill(-child.pid!, "SIGKILL");
        } catch {
          child.kill("SIGKILL");
        }
      };
      const timer = setTimeout(() => kill("timeout"), timeoutMs + 1000);
      child.stdout.setEncoding("utf8").on("data", (d: string) => {
        stdout += d;
        if (stdout.length > cap) kill("output");
      });
      child.stderr.setEncoding("utf8").on("data", (d: string) => {
        if (stderr.length < cap) stderr += d;
      });
      child.on("error", (e) => {
        clearTimeout(timer);
        resolve({ stdout: "", error: `could not start the sandbox: ${e.message}`, ok: false, killed: null, isolatedNetwork: sys.unshare });
      });
      child.on("close", (status, signal) => {
        clearTimeout(timer);
        let error = stderr.trim().split("\n").filter((l) => l.trim()).at(-1) ?? "";
        if (/timed out/.test(error)) killed ??= "timeout";
        if (/heap out of memory|Array buffer allocation failed|Invalid array length/.test(stderr)) killed ??= "memory";
        if (signal === "SIGXCPU" || (signal === "SIGKILL" && killed === null)) killed = "cpu";
        if (killed === "memory" || (killed && !error)) error = `stopped: ${killed} limit`;
        if (!error && status !== 0) error = `exit status ${status ?? signal}`;
        resolve({ stdout: stdout.slice(0, cap), error, ok: status === 0 && killed === null, killed, isolatedNetwork: sys.unshare });
      });
    });
  } finally {
    rmSync(cwd, { recursive: true, force: true });
  }
}
