/**
 * `serve(model)`: the OpenAI-compatible server (src/serve/server.ts) over a
 * model, listening on 127.0.0.1 unless told otherwise. `sigma serve` is this
 * function behind flags; docs/serving.md describes the API, the scheduler
 * and the metrics.
 */
import { basename, dirname } from "node:path";
import { createServer } from "../serve/server.js";
import { SigmaError } from "../util/errors.js";
import { Model, openModel } from "./model.js";

export interface ServeOptions {
  /** Address to listen on (default 127.0.0.1: this machine only). */
  host?: string;
  /** Port (default 8080; 0 = any free port). */
  port?: number;
  /** The name in the model ids sigma/<name>/<domain> (default: from the model's path). */
  name?: string;
  /** Bearer token required on /v1/ routes (default: the SIGMA_API_KEY environment variable, else none). */
  apiKey?: string | null;
  /** Sequences decoded together at most (default 16). */
  maxBatch?: number;
  /** Sequences that may wait for a place in the batch; more are refused with 429 (default 64). */
  maxQueue?: number;
  /** Prompt tokens prefilled per step, over all new sequences (default 64). */
  prefillChunk?: number;
  /** KV-cache blocks of 16 positions (default: enough for maxBatch full-context sequences). */
  kvBlocks?: number;
  /** Most choices (n) per request (default 16). */
  maxChoices?: number;
  /** Speculative decoding (docs/decode.md): tokens proposed per step and sequence; 0 = none (default: 4 with `draft`, else 0). */
  draftTokens?: number;
  /** The draft model that proposes them (same tokenizer; its domain of the same name, else its first); without it, n-gram prompt lookup. */
  draft?: Model;
}

export interface ServerStats {
  /** Sequences waiting for a place in the batch. */
  waiting: number;
  /** Sequences being decoded. */
  running: number;
  /** KV blocks held by sequences (0 when idle) and in the pool. */
  kvBlocksUsed: number;
  kvBlocks: number;
  /** Sequences holding a place in the KV pool (0 when idle). */
  kvSequences: number;
}

export interface SigmaServer {
  /** e.g. http://127.0.0.1:8080 */
  url: string;
  /** The model ids (one per domain, the first the default). */
  models: string[];
  stats(): ServerStats;
  /** Stops listening, cancels what is running and frees the model's KV pool. */
  close(): Promise<void>;
}

/** A model name for ids from where it was opened: the run folder's name rather than step-NNNNNNNN or checkpoints. */
function nameOf(model: Model): string {
  let p = model.path ?? "model";
  while (/^(step-\d+|checkpoints|model\.safetensors)$/.test(basename(p)) && dirname(p) !== p) p = dirname(p);
  const name = basename(p).replace(/\.safetensors$/, "").toLowerCase().replace(/[^a-z0-9._-]+/g, "-").replace(/^-+|-+$/g, "");
  return name || "model";
}

/** Opens `model` (a Model or any path openModel accepts) and serves it; resolves once listening. */
export async function serve(model: Model | string, o: ServeOptions = {}): Promise<SigmaServer> {
  const m = typeof model === "string" ? await openModel(model) : model;
  if (!m.tokenizer) throw new SigmaError(`${m.path ?? "the model"} has no tokenizer, so it cannot be served`, "serve a checkpoint that carries its tokenizer.json, or put one beside the model file");
  const apiKey = o.apiKey !== undefined ? o.apiKey : (process.env.SIGMA_API_KEY ?? null);
  const name = o.name ?? nameOf(m);
  if (!/^[a-z0-9][a-z0-9._-]*$/i.test(name)) throw new SigmaError(`model name "${name}" is not usable in an id`, "use letters, digits, '.', '_' and '-'");
  const { draft, ...rest } = o;
  if (draft) m.checkDraft(draft);
  const drafting = draft ? { draftModel: draft.network, draftTokens: o.draftTokens ?? 4 } : {};
  const { app, scheduler, modelIds } = createServer(m.network, m.tokenizer, { ...rest, ...drafting, name, apiKey });
  try {
    await app.listen({ host: o.host ?? "127.0.0.1", port: o.port ?? 8080 });
  } catch (e) {
    await app.close();
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE") throw new SigmaError(`port ${o.port ?? 8080} on ${o.host ?? "127.0.0.1"} is in use`, "pass another --port, or stop what listens there");
    if (code === "EADDRNOTAVAIL" || code === "ENOTFOUND") throw new SigmaError(`cannot listen on host ${o.host}`, "pass an address of this machine, e.g. 127.0.0.1 or 0.0.0.0");
    throw e;
  }
  const addr = app.server.address();
  const port = typeof addr === "object" && addr ? addr.port : (o.port ?? 8080);
  const host = o.host ?? "127.0.0.1";
  const shown = host.includes(":") ? `[${host}]` : host === "0.0.0.0" ? "127.0.0.1" : host;
  return {
    url: `http://${shown}:${port}`,
    models: modelIds,
    stats: () => {
      const s = scheduler.stats;
      return { waiting: s.waiting, running: s.running, kvBlocksUsed: s.kvBlocksUsed, kvBlocks: s.kvBlocks, kvSequences: s.kvSequences };
    },
    // Cancel what is running first (open streams end at the next step), then stop listening.
    close: async () => {
      await scheduler.close();
      await app.close();
    },
  };
}
