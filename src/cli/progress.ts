/**
 * The training progress line: a bar with step, loss, tokens/s and ETA on a
 * terminal (cli-progress), or a plain line every few seconds when stderr is
 * not a terminal (logs, CI), so that piped output stays readable.
 */
import cliProgress from "cli-progress";
import type { StepResult } from "../train/trainer.js";

export class TrainProgress {
  private readonly bar: cliProgress.SingleBar | null;
  private lastLine = 0;
  private tps = 0;

  constructor(private readonly total: number, start: number, private readonly label = "train") {
    if (process.stderr.isTTY) {
      this.bar = new cliProgress.SingleBar(
        { format: `${label} {bar} {value}/{total} | loss {loss} | {tps} tok/s | ETA {eta_formatted}`, hideCursor: true, etaBuffer: 20, barsize: 24 },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(total, start, { loss: "-", tps: "-" });
    } else this.bar = null;
  }

  update(r: Pick<StepResult, "step" | "loss" | "tokens" | "seconds">): void {
    // Smoothed tokens/s: steps on a shared machine jitter.
    const now = r.tokens / r.seconds;
    this.tps = this.tps === 0 ? now : 0.8 * this.tps + 0.2 * now;
    if (this.bar) this.bar.update(r.step, { loss: r.loss.toFixed(3), tps: this.tps.toFixed(0) });
    else if (performance.now() - this.lastLine > 10_000 || r.step === this.total) {
      this.lastLine = performance.now();
      process.stderr.write(`${this.label} step ${r.step}/${this.total} | loss ${r.loss.toFixed(3)} | ${this.tps.toFixed(0)} tok/s\n`);
    }
  }

  /** Prints a line above the bar (e.g. an evaluation). */
  log(line: string): void {
    if (this.bar) process.stderr.write(`\r\x1b[2K${line}\n`);
    else process.stderr.write(`${line}\n`);
  }

  stop(): void {
    this.bar?.stop();
  }
}

/** What a long run's console gives the run: the stop signal, the progress bar once it exists, and a line printer that keeps lines above the bar. */
export interface RunConsole {
  readonly signal: AbortSignal;
  bar: TrainProgress | null;
  say(line: string): void;
}

/**
 * Runs `run` with Ctrl-C → stop after the current step, with a checkpoint
 * (a second Ctrl-C quits at once); `announce` false keeps the notice off
 * (MPI ranks other than 0). The bar stops and the handler goes when `run`
 * ends, however it ends.
 */
export async function runWithStop<T>(run: (con: RunConsole) => Promise<T>, o: { announce?: boolean } = {}): Promise<T> {
  const stop = new AbortController();
  const con: RunConsole = {
    signal: stop.signal,
    bar: null,
    say: (line) => (con.bar ? con.bar.log(line) : console.error(line)),
  };
  const onSigint = (): void => {
    if (stop.signal.aborted) process.exit(130);
    stop.abort();
    if (o.announce ?? true) con.say("stopping after this step (a checkpoint is written); Ctrl-C again to quit at once");
  };
  process.on("SIGINT", onSigint);
  try {
    return await run(con);
  } finally {
    con.bar?.stop();
    con.bar = null;
    process.off("SIGINT", onSigint);
  }
}

