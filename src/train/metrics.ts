/**
 * metrics.jsonl: one JSON object per line, each with a `kind` (train, eval,
 * routing, checkpoint, end) and the optimizer `step` it belongs to. Appended
 * as the run goes, so a crash keeps everything logged so far; a resumed run
 * first drops the lines past the step it resumes from, so the file reads as
 * one uninterrupted run.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { writeError, writeFileAtomic } from "../util/fs.js";

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

/** Reads a metrics file; a torn last line (a crash mid-append) is skipped. */
export function readMetrics(path: string): MetricRecord[] {
  const out: MetricRecord[] = [];
  for (const line of readFileSync(path, "utf8").split("\n")) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as MetricRecord);
    } catch {
      /* a line cut by a crash */
    }
  }
  return out;
}
