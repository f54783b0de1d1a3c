/**
 * Where commands stream text that is not a whole line (sigma generate's
 * tokens). Whole lines go through console.log; this is its unbuffered twin,
 * which an embedding program (or a test running the CLI in-process) can
 * redirect without touching process.stdout.
 */
let sink: (text: string) => void = (text) => void process.stdout.write(text);

/** Writes streamed text to the current sink (stdout by default). */
export function streamOut(text: string): void {
  sink(text);
}

/** Runs `fn` with streamed text going to `to`; restores the previous sink after. */
export async function withStreamOut<T>(to: (text: string) => void, fn: () => Promise<T>): Promise<T> {
  const saved = sink;
  sink = to;
  try {
    return await fn();
  } finally {
    sink = saved;
  }
}
