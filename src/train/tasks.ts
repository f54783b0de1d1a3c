/**
 * Zero- and few-shot task evaluation: task files, and how each kind of task
 * is scored — against any model that can give a continuation's
 * log-likelihood and a greedy completion (TaskModel), so that the scoring is
 * tested on a model whose log-probabilities are known by hand.
 *
 * A task is one JSONL file (its name is the file's, without extension), one
 * item per line, every item of one kind:
 *
 *   multiple choice  {"context", "choices": [..], "answer": <index>, "delimiter"?: " "}
 *   generation       {"context", "answer": ".." | "answers": [..], "stop"?: [..], "maxTokens"?: 32}
 *   code             {"context", "test", "expected", "solution"?, "stop"?, "maxTokens"?}
 *
 * each with an optional "domain" (default: the run's). Scoring, as
 * lm-evaluation-harness does it:
 *
 *   - multiple choice: the log-likelihood of delimiter + choice after the
 *     context, for each choice; `acc` is 1 when the most likely choice is the
 *     answer, `acc_norm` when the most likely per character of the choice
 *     (the harness's length normalisation: the choice's length in characters,
 *     without the delimiter), `acc_bytes` per UTF-8 byte. Ties go to the
 *     first choice.
 *   - generation: greedy decoding from the context until a stop string (or
 *     maxTokens); `exact_match` is 1 when the output, trimmed, equals an
 *     answer, trimmed.
 *   - code: the program context + greedy completion + test (no separator:
 *     with stop "\n}", a test starting "\n}\n" closes the function the model
 *     was writing), run as JavaScript in the sandbox (src/util/sandbox.ts: a
 *     separate process with no file system, network or child processes, and
 *     time, CPU and memory limits); `pass` is 1 when it ran to the end and
 *     printed `expected` (both trimmed).
 *
 * Each metric is the mean over the task's items, with its standard error
 * (sample standard deviation / √n, as the harness reports).
 *
 * Few-shot: with shots k, each item's context is preceded by k other items of
 * the same task drawn at random (seeded by the run's seed and the item's
 * index), each written as context + delimiter + its answer (code: context +
 * solution, from items that have one), separated by blank lines.
 */
import { basename, extname } from "node:path";
import { SigmaError } from "../util/errors.js";
import { parseJsonLineObject } from "../util/json.js";
import { Rng } from "../util/rng.js";
import type { SandboxResult } from "../util/sandbox.js";

export type TaskKind = "multiple_choice" | "generation" | "code";

interface ItemBase {
  context: string;
  domain: string | null;
  line: number;
}
export interface McItem extends ItemBase {
  kind: "multiple_choice";
  choices: string[];
  answer: number;
  delimiter: string;
}
export interface GenItem extends ItemBase {
  kind: "generation";
  answers: string[];
  stop: string[];
  maxTokens: number;
  delimiter: string;
}
export interface CodeItem extends ItemBase {
  kind: "code";
  test: string;
  expected: string;
  solution: string | null;
  stop: string[];
  maxTokens: number;
}
export type TaskItem = McItem | GenItem | CodeItem;

export interface Task {
  name: string;
  file: string;
  kind: TaskKind;
  items: TaskItem[];
}

/** What scoring needs of a model. */
export interface TaskModel {
  /** Σ log p(continuation | context) over the continuation's tokens, and whether greedy decoding would write exactly it. */
  loglikelihood(context: string, continuation: string, domain: string | null): Promise<{ logprob: number; greedy: boolean }>;
  /** The greedy continuation of `context`, cut before the first stop string. */
  generate(context: string, o: { domain: string | null; stop: string[]; maxTokens: number }): Promise<string>;
}

/** Runs a program in the sandbox (runSandboxed; tests may pass a stand-in). */
export type CodeRunner = (program: string) => Promise<SandboxResult>;

const MAX_ITEMS = 100_000;
const KNOWN: Record<TaskKind, string[]> = {
  multiple_choice: ["context", "choices", "answer", "delimiter", "domain"],
  generation: ["context", "answer", "answers", "stop", "maxTokens", "delimiter", "domain"],
  code: ["context", "test", "expected", "solution", "stop", "maxTokens", "domain"],
};

/** Parses a task file's JSONL text; errors name the file, the line and the field. */
export function parseTask(text: string, file: string): Task {
  const items: TaskItem[] = [];
  const lines = text.split("\n");
  let kind: TaskKind | null = null;
  let firstLine = 0;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!.trim();
    if (!raw) continue;
    const item = parseItem(raw, file, i + 1);
    if (kind !== null && item.kind !== kind) throw new SigmaError(`${file} line ${i + 1}: a ${item.kind.replace("_", "-")} item in a ${kind.replace("_", "-")} task (line ${firstLine})`, "keep one kind of item per task file");
    if (kind === null) [kind, firstLine] = [item.kind, i + 1];
    items.push(item);
    if (items.length > MAX_ITEMS) throw new SigmaError(`${file} has more than ${MAX_ITEMS} items`, "split it into several task files");
  }
  if (kind === null) throw new SigmaError(`${file} holds no task items`, "write one JSON object per line (docs/eval.md lists the fields)");
  return { name: basename(file, extname(file)), file, kind, items };
}

function parseItem(text: string, file: string, line: number): TaskItem {
  const at = `${file} line ${line}`;
  const bad = (what: string): SigmaError => new SigmaError(`${at}: ${what}`, "docs/eval.md lists each kind of item's fields");
  const r = parseJsonLineObject(text, at, "docs/eval.md lists each kind of item's fields");
  const kind: TaskKind = "choices" in r ? "multiple_choice" : "test" in r || "expected" in r ? "code" : "answer" in r || "answers" in r ? "generation" : (() => {
    throw bad(`no "choices" (multiple choice), "answer" (generation) or "test" and "expected" (code)`);
  })();
  for (const k of Object.keys(r)) if (!KNOWN[kind].includes(k)) throw bad(`unknown field "${k}" in a ${kind.replace("_", "-")} item`);
  const str = (k: string, opt = false): string => {
    const v = r[k];
    if (v === undefined && opt) return "";
    if (typeof v !== "string") throw bad(`"${k}" must be a string${v === undefined ? " (it is missing)" : ""}`);
    return v;
  };
  const strs = (k: string, min: number): string[] => {
    const v = r[k];
    if (!Array.isArray(v) || v.length < min || v.some((s) => typeof s !== "string")) throw bad(`"${k}" must be an array of ${min > 0 ? `at least ${min} ` : ""}strings`);
    return v as string[];
  };
  const int = (k: string, dflt: number, max: number): number => {
    const v = r[k] ?? dflt;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > max) throw bad(`"${k}" must be an integer from 1 to ${max}`);
    return v;
  };
  const base = { context: str("context"), domain: "domain" in r ? str("domain") || null : null, line };
  if (kind === "multiple_choice") {
    const choices = strs("choices", 2);
    const answer = r.answer;
    if (typeof answer !== "number" || !Number.isInteger(answer) || answer < 0 || answer >= choices.length) throw bad(`"answer" must be the index of the right choice, 0 to ${choices.length - 1}`);
    choices.forEach((c, j) => {
      if (!c) throw bad(`choices[${j}] is empty (its per-character score would divide by 0)`);
    });
    return { kind, ...base, choices, answer, delimiter: "delimiter" in r ? str("delimiter") : " " };
  }
  const stop = "stop" in r ? strs("stop", 0) : ["\n"];
  if (kind === "generation") {
    if ("answer" in r && "answers" in r) throw bad(`give "answer" or "answers", not both`);
    const answers = "answers" in r ? strs("answers", 1) : [str("answer")];
    return { kind, ...base, answers, stop, maxTokens: int("maxTokens", 32, 4096), delimiter: "delimiter" in r ? str("delimiter") : "" };
  }
  return { kind, ...base, test: str("test"), expected: str("expected"), solution: "solution" in r ? str("solution") : null, stop: "stop" in r ? stop : ["\n}"], maxTokens: int("maxTokens", 64, 4096) };
}

/** What an item's answer reads like in a few-shot example. */
function shotText(item: TaskItem): string | null {
  if (item.kind === "multiple_choice") return item.context + item.delimiter + item.choices[item.answer];
  if (item.kind === "generation") return item.context + item.delimiter + item.answers[0];
  return item.solution === null ? null : item.context + item.solution;
}

/** Item `index`'s context with `shots` examples of the same task before it. */
export function fewShotContext(task: Task, index: number, shots: number, seed: number): string {
  const item = task.items[index]!;
  if (shots === 0) return item.context;
  const pool = task.items.map((_, j) => j).filter((j) => j !== index && shotText(task.items[j]!) !== null);
  if (pool.length < shots) throw new SigmaError(`task ${task.name} has ${pool.length} other items${task.kind === "code" ? ' with a "solution"' : ""} to draw ${shots} examples from`, `lower --shots to ${pool.length}, or add items to ${task.file}`);
  const rng = new Rng((Math.imul(seed + 1, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b)) >>> 0);
  // A partial Fisher–Yates shuffle: the first `shots` of the pool.
  for (let i = 0; i < shots; i++) {
    const j = i + rng.int(pool.length - i);
    [pool[i], pool[j]] = [pool[j]!, pool[i]!];
  }
  return pool.slice(0, shots).map((j) => shotText(task.items[j]!)!).join("\n\n") + "\n\n" + item.context;
}

/** Index of the largest value; the first on ties. */
export function argmax(xs: readonly number[]): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i]! > xs[best]!) best = i;
  return best;
}

/** A metric over a task's items: the mean and its standard error. */
export interface Metric {
  value: number;
  stderr: number;
}

export interface ItemResult {
  line: number;
  /** The chosen choice (multiple choice) or the output (generation, code). */
  prediction: number | string;
  correct: boolean;
  /** Multiple choice: each choice's log-likelihood. */
  logprobs?: number[];
  /** Code: why the program failed, if it did. */
  error?: string;
}

export interface TaskResult {
  task: string;
  file: string;
  kind: TaskKind;
  n: number;
  shots: number;
  metrics: Record<string, Metric>;
  items: ItemResult[];
}

const mean = (xs: number[]): Metric => {
  const n = xs.length;
  const m = xs.reduce((a, b) => a + b, 0) / n;
  const variance = n > 1 ? xs.reduce((a, b) => a + (b - m) ** 2, 0) / (n - 1) : 0;
  return { value: m, stderr: Math.sqrt(variance / n) };
};

/** Scores one task (see the file comment). */
export async function scoreTask(model: TaskModel, task: Task, o: { shots: number; seed: number; runCode: CodeRunner }): Promise<TaskResult> {
  const items: ItemResult[] = [];
  const columns: Record<string, number[]> = {};
  const add = (name: string, v: boolean): void => void (columns[name] ??= []).push(v ? 1 : 0);
  for (let i = 0; i < task.items.length; i++) {
    const item = task.items[i]!;
    const context = fewShotContext(task, i, o.shots, o.seed);
    if (item.kind === "multiple_choice") {
      const lls: number[] = [];
      for (const c of item.choices) lls.push((await model.loglikelihood(context, item.delimiter + c, item.domain)).logprob);
      const pred = argmax(lls);
      const perChar = argmax(lls.map((l, j) => l / [...item.choices[j]!].length));
      const perByte = argmax(lls.map((l, j) => l / Buffer.byteLength(item.choices[j]!, "utf8")));
      add("acc", pred === item.answer);
      add("acc_norm", perChar === item.answer);
      add("acc_bytes", perByte === item.answer);
      items.push({ line: item.line, prediction: pred, correct: pred === item.answer, logprobs: lls });
    } else if (item.kind === "generation") {
      const out = await model.generate(context + item.delimiter, { domain: item.domain, stop: item.stop, maxTokens: item.maxTokens });
      const ok = item.answers.some((a) => a.trim() === out.trim());
      add("exact_match", ok);
      items.push({ line: item.line, prediction: out, correct: ok });
    } else {
      const out = await model.generate(context, { domain: item.domain, stop: item.stop, maxTokens: item.maxTokens });
      const run = await o.runCode(item.context + out + item.test);
      const ok = run.ok && run.stdout.trim() === item.expected.trim();
      add("pass", ok);
      items.push({ line: item.line, prediction: out, correct: ok, ...(run.error ? { error: run.error } : {}) });
    }
  }
  return { task: task.name, file: task.file, kind: task.kind, n: task.items.length, shots: o.shots, metrics: Object.fromEntries(Object.entries(columns).map(([k, v]) => [k, mean(v)])), items };
}

/** The results as a table: one row per task and metric. */
export function formatTaskTable(results: TaskResult[]): string {
  const rows = [["task", "kind", "n", "shots", "metric", "value", "± stderr"]];
  for (const r of results) for (const [m, v] of Object.entries(r.metrics)) rows.push([r.task, r.kind, String(r.n), String(r.shots), m, v.value.toFixed(4), v.stderr.toFixed(4)]);
  const w = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  return rows.map((row) => row.map((x, c) => (c < 2 || c === 4 ? x.padEnd(w[c]!) : x.padStart(w[c]!))).join("  ")).join("\n");
}
