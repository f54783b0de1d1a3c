/**
 * `evalTasks(model, options)`: zero- and few-shot scores of a model on task
 * files (multiple choice by log-likelihood, generation by exact match, code
 * by running it in a sandbox) — the function `sigma eval tasks` is a thin
 * shell over. The scoring itself is src/train/tasks.ts; this file gives it a
 * Sigma model: log-likelihoods from one forward pass per choice, greedy
 * completions from Model.complete.
 */
import { readFileSync } from "node:fs";
import { noGrad } from "../autograd/tape.js";
import { encodePrompt } from "../serve/prompt.js";
import { parseTask, scoreTask, type CodeRunner, type Task, type TaskModel, type TaskResult } from "../train/tasks.js";
import { SigmaError } from "../util/errors.js";
import { runSandboxed } from "../util/sandbox.js";
import { Model, openModel } from "./model.js";

export interface EvalTasksOptions {
  /** Task files (JSONL; docs/eval.md). */
  tasks: string[];
  /** Examples put before each item (default 0). */
  shots?: number;
  /** Seed of the few-shot draws (default 1). */
  seed?: number;
  /** Domain of items that name none (default: the model's first). */
  domain?: string;
  /** Wall-clock limit of each code task's program in ms (default 5,000). */
  codeTimeoutMs?: number;
  /** Heard after each task. */
  onTask?: (r: TaskResult) => void;
  /** @internal Runs code tasks' programs (default: the sandbox). */
  runCode?: CodeRunner;
}

export interface EvalTasksResult {
  checkpoint: string | null;
  step: number;
  shots: number;
  tasks: TaskResult[];
}

/** Reads and parses task files; errors name the file. */
export function readTasks(paths: string[]): Task[] {
  return paths.map((p) => {
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(readFileSync(p));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new SigmaError(code ? `cannot read the task file ${p}: ${code}` : `${p} is not UTF-8 text`, "pass --tasks with JSONL task files (docs/eval.md)");
    }
    return parseTask(text, p);
  });
}

/**
 * A Sigma model as the scorer sees it. The continuation is tokenized apart
 * from the context, as lm-evaluation-harness does (spaces at the end of the
 * context move to the continuation); the context starts with the domain's
 * control token, as every prompt does. When the two together are longer than
 * the model's window, the oldest context tokens go (the control token stays).
 */
export function taskModel(model: Model, defaultDomain?: string): TaskModel {
  const tok = model.tokenizer;
  if (!tok) throw new SigmaError(`${model.path ?? "the model"} has no tokenizer, so it cannot read task text`, "evaluate a checkpoint that carries its tokenizer.json");
  const net = model.network;
  const fallback = defaultDomain ?? model.domains[0]!;
  if (!model.domains.includes(fallback)) throw new SigmaError(`the model has no domain "${fallback}"; it knows ${model.domains.join(", ")}`, "pass one of them with --domain");
  const domainOf = (d: string | null): { name: string; index: number } => {
    const name = d ?? fallback;
    const index = model.domains.indexOf(name);
    if (index < 0) throw new SigmaError(`a task item names the domain "${name}", which the model does not have (it knows ${model.domains.join(", ")})`, 'fix the item\'s "domain", or leave it out to use --domain');
    return { name, index };
  };
  const V = model.config.vocabSize;
  const window = model.config.seqLen + 1;
  return {
    async loglikelihood(context, continuation, domain) {
      const d = domainOf(domain);
      const trailing = context.length - context.trimEnd().length;
      const ctx = encodePrompt(tok, d.name, context.slice(0, context.length - trailing));
      const cont = tok.encode(context.slice(context.length - trailing) + continuation, { allowSpecial: true });
      if (cont.length === 0) return { logprob: 0, greedy: true };
      let all = [...ctx, ...cont];
      if (all.length > window) all = ctx.length > 0 && cont.length < window - 1 ? [ctx[0]!, ...all.slice(all.length - window + 1)] : all.slice(all.length - window);
      const T = all.length - 1;
      net.eval();
      const logits = noGrad(() => net.forward({ tokens: Int32Array.from(all.slice(0, T)), domains: Int32Array.of(d.index), B: 1, T }).logits.data);
      let logprob = 0;
      let greedy = true;
      for (let j = 0; j < cont.length; j++) {
        const row = T - cont.length + j;
        const target = all[row + 1]!;
        let max = -Infinity;
        let best = 0;
        for (let v = 0; v < V; v++) if (logits[row * V + v]! > max) [max, best] = [logits[row * V + v]!, v];
        let z = 0;
        for (let v = 0; v < V; v++) z += Math.exp(logits[row * V + v]! - max);
        logprob += logits[row * V + target]! - max - Math.log(z);
        if (best !== target) greedy = false;
      }
      return { logprob, greedy };
    },
    async generate(context, o) {
      return model.complete(context, { domain: domainOf(o.domain).name, temperature: 0, maxTokens: o.maxTokens, stop: o.stop });
    },
  };
}

export async function evalTasks(model: Model | string, o: EvalTasksOptions): Promise<EvalTasksResult> {
  if (o.tasks.length === 0) throw new SigmaError("no task files given", "pass --tasks with one or more JSONL task files (the package ships some in tasks/)");
  const tasks = readTasks(o.tasks);
  const m = typeof model === "string" ? await openModel(model) : model;
  const scorer = taskModel(m, o.domain);
  const shots = o.shots ?? 0;
  const seed = o.seed ?? 1;
  const runCode = o.runCode ?? ((program: string) => runSandboxed(program, { timeoutMs: o.codeTimeoutMs ?? 5000, cpuSeconds: Math.ceil((o.codeTimeoutMs ?? 5000) / 1000) }));
  const results: TaskResult[] = [];
  for (const t of tasks) {
    const r = await scoreTask(scorer, t, { shots, seed, runCode });
    o.onTask?.(r);
    results.push(r);
  }
  return { checkpoint: m.path, step: m.step, shots, tasks: results };
}
