/**
 * A slot holding one long-lived fuzz worker (test/fuzz/worker.ts under tsx,
 * its data segment capped with `ulimit -d` so a mutant asking for a huge
 * allocation fails inside the worker instead of taking the machine's memory).
 * `run(job)` sends one job and waits for its answer within a wall-clock bound:
 *
 *   done      the command returned (exit code and output)
 *   escaped   an exception or rejection escaped the command (the worker then exits)
 *   crash     the worker process died mid-job (signal or exit code, its raw stderr)
 *   hang      no answer within the bound: the worker is killed
 *
 * After an escaped / crash / hang the next job starts a fresh worker.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { DoneMessage, EscapedMessage, JobMessage, WorkerMessage } from "./worker.js";

const WORKER = fileURLToPath(new URL("./worker.ts", import.meta.url));
const REPO = fileURLToPath(new URL("../../", import.meta.url));

export type JobResult =
  | ({ kind: "done" } & Omit<DoneMessage, "type">)
  | ({ kind: "escaped" } & Omit<EscapedMessage, "type">)
  | { kind: "crash"; id: number; exitCode: number | null; signal: string | null; stderr: string }
  | { kind: "hang"; id: number; ms: number; stderr: string };

export interface SlotOptions {
  /** Data segment limit of the worker in KiB (ulimit -d); 0 = none. */
  memoryKiB: number;
  /** Extra environment for the worker. */
  env?: Record<string, string>;
  /**
   * A worker whose resident memory exceeds this after a job is replaced before
   * the next one (default 1 GiB): what a command allocated and the process kept
   * (pools, caches) must not push a later job into the data limit — the real
   * `sigma` runs each command in a fresh process.
   */
  recycleBytes?: number;
}

export class WorkerSlot {
  private child: ChildProcess | null = null;
  private ready: Promise<void> | null = null;
  private rawStderr = "";
  private nextId = 1;
  /** Workers started so far (the first one plus restarts). */
  starts = 0;
  /** Workers replaced because they grew past recycleBytes. */
  recycled = 0;

  constructor(private readonly opts: SlotOptions) {}

  private start(): Promise<void> {
    const node = JSON.stringify(process.execPath);
    // No core files (a crashing mutant would leave one per crash), and a capped data segment.
    const limit = `ulimit -c 0 && ${this.opts.memoryKiB > 0 ? `ulimit -d ${this.opts.memoryKiB} && ` : ""}`;
    const child = spawn("/bin/sh", ["-c", `${limit}exec ${node} --import tsx ${JSON.stringify(WORKER)}`], {
      cwd: REPO,
      stdio: ["ignore", "pipe", "pipe", "ipc"],
      env: { ...process.env, ...this.opts.env },
    });
    this.child = child;
    this.starts++;
    this.rawStderr = "";
    const keep = (d: Buffer): void => {
      this.rawStderr = (this.rawStderr + d.toString("utf8")).slice(-8000);
    };
    child.stdout!.on("data", keep);
    child.stderr!.on("data", keep);
    return new Promise((resolve, reject) => {
      const onMsg = (m: WorkerMessage): void => {
        if (m.type === "ready") {
          child.off("message", onMsg);
          child.off("exit", onExit);
          resolve();
        }
      };
      const onExit = (code: number | null, signal: string | null): void => reject(new Error(`fuzz worker failed to start (${code ?? signal}):\n${this.rawStderr}`));
      child.on("message", onMsg);
      child.on("exit", onExit);
    });
  }

  private async ensure(): Promise<ChildProcess> {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) this.ready = this.start();
    await this.ready;
    return this.child!;
  }

  /** Kills the worker (the next job starts a new one). */
  kill(): void {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    this.child = null;
  }

  async run(cwd: string, argv: string[], timeoutMs: number): Promise<JobResult> {
    const child = await this.ensure();
    const id = this.nextId++;
    this.rawStderr = "";
    const t0 = performance.now();
    return new Promise<JobResult>((resolve) => {
      let settled = false;
      const finish = (r: JobResult): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        child.off("message", onMsg);
        child.off("exit", onExit);
        resolve(r);
      };
      const onMsg = (m: WorkerMessage): void => {
        if (m.type === "done" && m.id === id) {
          const { type: _, ...rest } = m;
          if (m.rss > (this.opts.recycleBytes ?? 1 << 30)) {
            this.recycled++;
            this.close();
          }
          finish({ kind: "done", ...rest });
        } else if (m.type === "escaped" && (m.id === id || m.id === -1)) {
          const { type: _, ...rest } = m;
          finish({ kind: "escaped", ...rest, id });
          this.child = null; // it exits by itself
        }
      };
      const onExit = (code: number | null, signal: string | null): void => {
        // Give the pipes a moment to deliver the dying process's last words.
        setTimeout(() => finish({ kind: "crash", id, exitCode: code, signal, stderr: this.rawStderr }), 50);
        this.child = null;
      };
      const timer = setTimeout(() => {
        const stderr = this.rawStderr;
        this.kill();
        finish({ kind: "hang", id, ms: performance.now() - t0, stderr });
      }, timeoutMs);
      child.on("message", onMsg);
      child.on("exit", onExit);
      child.send({ type: "job", id, cwd, argv } satisfies JobMessage);
    });
  }

  close(): void {
    if (this.child?.connected) this.child.disconnect();
    this.kill();
  }
}
