/**
 * metrics.jsonl: one JSON object per line, each with a `kind` (train, eval,
 * routing, checkpoint, end) and the optimizer `step` it belongs to. Appended
 * as the run goes, so a crash keeps everything logged so far; a resumed run
 * first drops the lines past the step it resumes from, so the file reads as
 * one uninterrupted run.
 */
import { appendFileSync, closeSync, constants, existsSync, fstatSync, lstatSync, mkdirSync, openSync, readSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { z } from "zod";
import { SigmaError } from "../util/errors.js";
import { writeError, writeFileAtomic } from "../util/fs.js";

const notRegular = (path: string): SigmaError => new SigmaError(`${path} is not a regular file (a link, FIFO or device)`, "Sigma writes metrics.jsonl itself: move that away, then run again");

export interface MetricRecord {
  kind: string;
  step: number;
  [key: string]: unknown;
}

/**
 * The run's metrics.jsonl. A write the system refuses (a full disk, an I/O
 * error) throws a WriteError naming the file and what the errno means; the
 * lines written before it stay (a line cut short is skipped on reading).
 */
export class MetricsLog {
  constructor(readonly path: string, resumeStep: number | null = null) {
    // A FIFO or device there would block the open; a link would steer the writes elsewhere.
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (st && !st.isFile()) throw notRegular(path);
    try {
      mkdirSync(dirname(path), { recursive: true });
      if (resumeStep === null || !existsSync(path)) writeFileSync(path, "");
      else writeFileAtomic(path, readMetrics(path).filter((r) => r.step <= resumeStep).map((r) => JSON.stringify(r) + "\n").join(""));
    } catch (e) {
      throw writeError(path, e, "create");
    }
  }

  append(record: MetricRecord): void {
    try {
      appendFileSync(this.path, JSON.stringify(record) + "\n");
    } catch (e) {
      throw writeError(this.path, e, "append to", "the lines before this one are intact");
    }
  }
}

/** A loss or rate: JSON writes NaN and ±Infinity as null. */
const value = z.number().nullable();
const Base = z.object({ kind: z.string().max(64), step: z.number().int().min(0).max(1e12) }).passthrough();
/** What the plots read of each kind; other kinds need only a kind and a step. */
const KINDS: Record<string, z.ZodTypeAny> = {
  train: Base.extend({ lm: value.optional() }),
  eval: Base.extend({ domains: z.record(z.string().max(256), z.object({ loss: value }).passthrough()) }),
  routing: Base.extend({ layers: z.array(z.object({ tokensPerExpert: z.array(z.number().finite().min(0)).max(2 ** 16) }).passthrough()).max(2 ** 12) }),
};

/** Longest line kept (a routing line of 65,536 experts is well under 1 MiB); longer ones are damaged. */
const MAX_LINE = 16 * 2 ** 20;

/**
 * Reads a metrics file line by line (it may be larger than one string can
 * hold); a line that is not a record Sigma writes — torn by a crash
 * mid-append, or damaged — is skipped.
 */
export function readMetrics(path: string): MetricRecord[] {
  const out: MetricRecord[] = [];
  const take = (bytes: Buffer): void => {
    if (bytes.length === 0 || bytes.length > MAX_LINE) return;
    let raw: unknown;
    try {
      raw = JSON.parse(bytes.toString("utf8"));
    } catch {
      return; // a line cut by a crash
    }
    const base = Base.safeParse(raw);
    if (!base.success) return;
    const schema = KINDS[base.data.kind];
    if (!schema || schema.safeParse(raw).success) out.push(base.data as MetricRecord);
  };
  // Non-blocking, not through a link: a FIFO at the path must not hang the run.
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ELOOP") throw notRegular(path);
    throw e;
  }
  try {
    if (!fstatSync(fd).isFile()) throw notRegular(path);
    const chunk = Buffer.alloc(2 ** 20);
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    for (;;) {
      const n = readSync(fd, chunk, 0, chunk.length, null);
      if (n === 0) break;
      let start = 0;
      for (let i = chunk.indexOf(10, 0); i >= 0 && i < n; i = chunk.indexOf(10, i + 1)) {
        if (pendingBytes + i - start <= MAX_LINE) take(Buffer.concat([...pending, chunk.subarray(start, i)]));
        pending = [];
        pendingBytes = 0;
        start = i + 1;
      }
      // Keep the unfinished line (only its length once it is too long to be a record).
      if (pendingBytes + n - start <= MAX_LINE) pending.push(Buffer.from(chunk.subarray(start, n)));
      else pending = [];
      pendingBytes += n - start;
    }
    if (pendingBytes <= MAX_LINE) take(Buffer.concat(pending));
  } finally {
    closeSync(fd);
  }
  return out;
}
