/**
 * The OpenAI-compatible HTTP server (fastify) over the scheduler.
 *
 *   POST /v1/completions        prompt → text; streamed as server-sent events with "stream": true
 *   POST /v1/chat/completions   messages → a reply (the plain-text chat template, src/serve/chat.ts)
 *   GET  /v1/models             one id per domain: sigma/<name>/<domain>
 *   GET  /health                {"status":"ok", …} with the batch and queue
 *   GET  /metrics               Prometheus text (src/serve/metrics.ts)
 *   GET  /, GET /v1/status      the web page and its live view (src/serve/page.ts)
 *
 * A request is checked whole before anything is queued: a body that is not
 * JSON, a field of the wrong type, an unknown field, a prompt longer than the
 * context or max_tokens past it is a 400 with OpenAI's error body
 * {error: {message, type, param, code}}; a missing or wrong bearer key (when
 * one is set) a 401; a full queue a 429 with Retry-After. Each prompt × n
 * choice is one sequence in the scheduler; a client that goes away has its
 * sequences cancelled at the next step. Errors inside a request end that
 * request (500), never the server.
 *
 * Streaming follows the OpenAI wire format: one `data: {json}\n\n` event per
 * chunk, `data: [DONE]\n\n` last; with stream_options.include_usage a final
 * chunk with empty choices carries the usage.
 */
import { randomUUID, timingSafeEqual } from "node:crypto";
import Fastify, { type FastifyInstance, type FastifyReply } from "fastify";
import { z } from "zod";
import type { PanguSigma } from "../models/pangu-sigma.js";
import type { TextTokenizer } from "../tokenizer/codec.js";
import { SigmaError } from "../util/errors.js";
import { CHAT_STOPS, chatPrompt, ReplyTrimmer, type ChatMessage } from "./chat.js";
import { ServerMetrics } from "./metrics.js";
import { addPage } from "./page.js";
import { encodePrompt } from "./prompt.js";
import { QueueFullError, Scheduler, SchedulerClosedError, type FinishReason, type SchedulerOptions, type SequenceEvent, type SequenceRequest, type SequenceStream, type TokenLogprob } from "./scheduler.js";

export interface ServerOptions extends Omit<SchedulerOptions, "metrics"> {
  /** The model's name in ids (sigma/<name>/<domain>). */
  name: string;
  /** Bearer token required on /v1/ routes; null or "" = none. */
  apiKey?: string | null;
  /** Most choices (n) one request may ask for (default 16). */
  maxChoices?: number;
}

export interface SigmaHttpServer {
  app: FastifyInstance;
  scheduler: Scheduler;
  metrics: ServerMetrics;
  /** The model ids, one per domain (the first is the default). */
  modelIds: string[];
}

/** An error answered to the client in OpenAI's shape. */
class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly type = status === 401 ? "invalid_request_error" : status === 429 ? "rate_limit_error" : status >= 500 ? "server_error" : "invalid_request_error",
  ) {
    super(message);
  }
  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

// ------------------------------------------------------------------ request bodies

const int = z.number().int();
const stopField = z.union([z.string(), z.array(z.string()).max(16)]).nullable().optional();
/** Fields clients send that Sigma accepts and ignores (when of the right type). */
const ignored = {
  user: z.string().optional(),
  frequency_penalty: z.number().nullable().optional(),
  presence_penalty: z.number().nullable().optional(),
  logit_bias: z.record(z.number()).nullable().optional(),
};
const sampling = {
  model: z.string().optional(),
  max_tokens: int.min(1).nullable().optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
  /** Extension: sample among the k most likely tokens; 0 or -1 = all. */
  top_k: int.min(-1).nullable().optional(),
  stop: stopField,
  seed: int.nullable().optional(),
  n: int.min(1).nullable().optional(),
  stream: z.boolean().nullable().optional(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).strict().nullable().optional(),
  /** Extension: the domain whose embedding slot and experts are used. */
  domain: z.string().optional(),
  ...ignored,
};
const CompletionBody = z
  .object({
    ...sampling,
    prompt: z.union([z.string(), z.array(z.string()).min(1).max(64)]),
    logprobs: int.min(0).max(20).nullable().optional(),
    echo: z.boolean().nullable().optional(),
  })
  .strict();
const Message = z
  .object({
    role: z.enum(["system", "developer", "user", "assistant"]),
    content: z.union([z.string(), z.array(z.object({ type: z.literal("text"), text: z.string() }).passthrough())]).nullable(),
    name: z.string().optional(),
  })
  .strict();
const ChatBody = z
  .object({
    ...sampling,
    messages: z.array(Message).min(1),
    max_completion_tokens: int.min(1).nullable().optional(),
    logprobs: z.boolean().nullable().optional(),
    top_logprobs: int.min(0).max(20).nullable().optional(),
  })
  .strict();
type SamplingBody = z.infer<typeof CompletionBody> | z.infer<typeof ChatBody>;

/** The body parsed by `schema`, or a 400 naming the first bad field. */
function parseBody<T extends z.ZodTypeAny>(schema: T, body: unknown): z.infer<T> {
  if (body === null || typeof body !== "object" || Array.isArray(body)) throw new ApiError(400, "the request body must be a JSON object");
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  if (issue.code === "unrecognized_keys") {
    const key = issue.keys[0]!;
    const where = issue.path.length ? `${issue.path.join(".")}.` : "";
    throw new ApiError(400, `Unrecognized request argument supplied: ${where}${key}`, `${where}${key}`, "unknown_parameter");
  }
  const param = issue.path.join(".") || null;
  throw new ApiError(400, `${param ?? "body"}: ${issue.message}`, param, "invalid_type");
}

// ------------------------------------------------------------------ the server

export function createServer(model: PanguSigma, tokenizer: TextTokenizer, o: ServerOptions): SigmaHttpServer {
  const metrics = new ServerMetrics();
  const scheduler = new Scheduler(model, tokenizer, { ...o, metrics });
  const c = model.config;
  const domains = c.domains.map((d) => d.name);
  const modelIds = domains.map((d) => `sigma/${o.name}/${d}`);
  const maxChoices = o.maxChoices ?? 16;
  const apiKey = o.apiKey ? Buffer.from(o.apiKey) : null;
  const created = Math.floor(Date.now() / 1000);
  const app = Fastify({ logger: false, bodyLimit: 8 * 2 ** 20 });

  // Every route's status in the metrics.
  app.addHook("onResponse", async (req, reply) => {
    metrics.request(req.routeOptions.url ?? "unknown", reply.statusCode);
  });
  app.addHook("onRequest", async (req) => {
    if (!apiKey || !req.url.startsWith("/v1/")) return;
    const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? "");
    const given = m ? Buffer.from(m[1]!) : null;
    if (!given || given.length !== apiKey.length || !timingSafeEqual(given, apiKey)) {
      throw new ApiError(401, given ? "Incorrect API key provided" : "Missing API key: send the header Authorization: Bearer <key>", null, "invalid_api_key");
    }
  });
  app.setErrorHandler((err: Error & { statusCode?: number }, _req, reply) => {
    const e =
      err instanceof ApiError
        ? err
        : err instanceof SigmaError
          ? new ApiError(400, err.message)
          : err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500
            ? new ApiError(err.statusCode, err.message.replace(/^Body is not valid JSON but content-type is set to 'application\/json'$/, "the request body is not valid JSON"))
            : new ApiError(500, `internal error: ${err.message}`);
    if (e.status === 429) void reply.header("retry-after", "1");
    void reply.code(e.status).send(e.body());
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send(new ApiError(404, `no route ${req.method} ${req.url.split("?")[0]}`, null, "not_found").body());
  });

  app.get("/health", async () => ({ status: "ok", model: modelIds[0], ...scheduler.stats }));
  app.get("/metrics", async (_req, reply) => {
    const s = scheduler.stats;
    void reply.header("content-type", "text/plain; version=0.0.4; charset=utf-8");
    return metrics.render({
      sigma_queue_length: { help: "Sequences waiting for a place in the batch.", value: s.waiting },
      sigma_running_sequences: { help: "Sequences being decoded.", value: s.running },
      sigma_last_batch_size: { help: "Sequences in the last step.", value: s.lastBatch },
      sigma_kv_blocks_used: { help: "KV-cache blocks held by sequences.", value: s.kvBlocksUsed },
      sigma_kv_blocks: { help: "KV-cache blocks in the pool.", value: s.kvBlocks },
    });
  });
  addPage(app, { scheduler, metrics, name: o.name, modelIds });
  app.get("/v1/models", async () => ({ object: "list", data: modelIds.map((id) => ({ id, object: "model", created, owned_by: "sigma" })) }));

  /** The domain a request asks for: the "domain" field, or the model id's last part; else the first domain. */
  const domainOf = (b: SamplingBody): number => {
    let name: string | undefined;
    if (b.model !== undefined && b.model.startsWith("sigma/")) {
      const i = modelIds.indexOf(b.model);
      if (i < 0 && b.model !== `sigma/${o.name}`) throw new ApiError(404, `The model ${b.model} does not exist; GET /v1/models lists ${modelIds.join(", ")}`, "model", "model_not_found");
      if (i >= 0) name = domains[i];
    }
    if (b.domain !== undefined) {
      if (!domains.includes(b.domain)) throw new ApiError(400, `unknown domain "${b.domain}"; the model knows ${domains.join(", ")}`, "domain", "invalid_value");
      if (name !== undefined && name !== b.domain) throw new ApiError(400, `the model id ${b.model} names domain "${name}" but "domain" is "${b.domain}"`, "domain", "invalid_value");
      name = b.domain;
    }
    return domains.indexOf(name ?? domains[0]!);
  };

  /** The scheduler's requests for each prompt × n choices (checked against the context). */
  const sequences = (b: SamplingBody, prompts: number[][], maxTokens: number | null, extra: { stop: string[]; logprobs: number | null; promptParam: string; defaultMax: number }): SequenceRequest[] => {
    const n = b.n ?? 1;
    if (n > maxChoices) throw new ApiError(400, `n = ${n} is more than this server allows (${maxChoices})`, "n", "invalid_value");
    if (prompts.length * n > scheduler.maxBatch + scheduler.maxQueue) throw new ApiError(400, `${prompts.length * n} sequences (prompts × n) are more than the server can hold (${scheduler.maxBatch + scheduler.maxQueue})`, "n", "invalid_value");
    const stop = [...(typeof b.stop === "string" ? [b.stop] : (b.stop ?? [])), ...extra.stop];
    stop.forEach((s) => {
      if (s.length === 0) throw new ApiError(400, "stop: a stop string needs at least one character", "stop", "invalid_value");
    });
    const topK = b.top_k ?? 0;
    const domain = domainOf(b);
    const reqs: SequenceRequest[] = [];
    for (const prompt of prompts) {
      if (prompt.length >= c.seqLen) {
        throw new ApiError(400, `This model's maximum context length is ${c.seqLen} tokens, but the prompt has ${prompt.length} tokens (leaving none to generate)`, extra.promptParam, "context_length_exceeded");
      }
      const max = maxTokens ?? Math.min(extra.defaultMax, c.seqLen - prompt.length);
      if (prompt.length + max > c.seqLen) {
        throw new ApiError(400, `This model's maximum context length is ${c.seqLen} tokens; the prompt has ${prompt.length} and max_tokens is ${max} (at most ${c.seqLen - prompt.length})`, "max_tokens", "context_length_exceeded");
      }
      for (let i = 0; i < n; i++) {
        const seed = b.seed != null ? (b.seed + i) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
        reqs.push({ prompt, domain, maxTokens: max, temperature: b.temperature ?? 1, topP: b.top_p ?? 1, topK: topK < 0 ? 0 : topK, seed, stop, logprobs: extra.logprobs });
      }
    }
    return reqs;
  };

  /** Queues `reqs`; a full queue is a 429. */
  const submit = (reqs: SequenceRequest[]): SequenceStream[] => {
    try {
      return scheduler.submit(reqs);
    } catch (e) {
      if (e instanceof QueueFullError) throw new ApiError(429, `${e.message}; retry later`, null, "rate_limit_exceeded");
      if (e instanceof SchedulerClosedError) throw new ApiError(503, e.message, null, "shutting_down");
      throw e;
    }
  };

  /** Cancels the streams when the client goes away before the reply is complete. */
  const cancelOnClose = (reply: FastifyReply, streams: SequenceStream[]): void => {
    reply.raw.on("close", () => {
      if (!reply.raw.writableFinished) for (const s of streams) s.cancel();
    });
  };

  /** Writes server-sent events; each chunk is `data: JSON\n\n`. */
  const openEvents = (reply: FastifyReply) => {
    void reply.hijack();
    reply.raw.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", connection: "keep-alive", "x-accel-buffering": "no" });
    // The headers go out now (else with the first token): the client knows its request is queued.
    reply.raw.flushHeaders();
    return {
      send: (data: unknown) => {
        if (!reply.raw.destroyed) reply.raw.write(`data: ${JSON.stringify(data)}\n\n`);
      },
      end: () => {
        if (!reply.raw.destroyed) reply.raw.end("data: [DONE]\n\n");
      },
    };
  };

  /** Runs every stream to its end, calling `on` for each event with the stream's index. */
  const drain = (streams: SequenceStream[], on: (i: number, e: SequenceEvent) => void): Promise<void> =>
    Promise.all(
      streams.map(async (s, i) => {
        for await (const e of s) on(i, e);
      }),
    ).then(() => undefined);

  const finishReason = (f: FinishReason): string => (f === "length" ? "length" : "stop");
  const usageOf = (prompts: number[][], completion: number) => {
    const prompt = prompts.reduce((a, p) => a + p.length, 0);
    return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
  };
  /** A sequence that failed inside the server is a 500 for the request (or an error event in a stream). */
  const failure = (e: SequenceEvent): ApiError | null => (e.kind === "done" && e.finish === "error" ? new ApiError(500, `generation failed: ${e.error ?? "unknown error"}`) : null);

  // ---------------------------------------------------------------- /v1/completions

  /** OpenAI's legacy logprobs object for a run of tokens. */
  const completionLogprobs = (lps: TokenLogprob[], offset: number) => {
    const text_offset: number[] = [];
    let at = offset;
    for (const l of lps) {
      text_offset.push(at);
      at += l.token.length;
    }
    return { tokens: lps.map((l) => l.token), token_logprobs: lps.map((l) => l.logprob), top_logprobs: lps.map((l) => Object.fromEntries(l.top.map((t) => [t.token, t.logprob]))), text_offset };
  };

  app.post("/v1/completions", async (req, reply) => {
    const b = parseBody(CompletionBody, req.body);
    if (b.echo) throw new ApiError(400, "echo is not supported", "echo", "unsupported_parameter");
    const domain = domainOf(b);
    const texts = typeof b.prompt === "string" ? [b.prompt] : b.prompt;
    const prompts = texts.map((t) => encodePrompt(tokenizer, domains[domain]!, t));
    const logprobs = b.logprobs ?? null;
    const reqs = sequences(b, prompts, b.max_tokens ?? null, { stop: [], logprobs, promptParam: "prompt", defaultMax: 16 });
    const streams = submit(reqs);
    cancelOnClose(reply, streams);
    const id = `cmpl-${randomUUID()}`;
    const head = { id, object: "text_completion", created: Math.floor(Date.now() / 1000), model: b.model ?? modelIds[domain]! };
    let completion = 0;

    if (b.stream) {
      const sse = openEvents(reply);
      const usageField = b.stream_options?.include_usage ? { usage: null } : {};
      const offsets = streams.map(() => 0);
      let failed: ApiError | null = null;
      await drain(streams, (i, e) => {
        failed ??= failure(e);
        if (e.kind === "token") {
          completion++;
          const lp = e.logprob ? completionLogprobs([e.logprob], offsets[i]!) : null;
          offsets[i]! += e.logprob?.token.length ?? 0;
          if (e.text || lp) sse.send({ ...head, choices: [{ index: i, text: e.text, logprobs: lp, finish_reason: null }], ...usageField });
        } else if (e.finish !== "cancelled" && e.finish !== "error") {
          sse.send({ ...head, choices: [{ index: i, text: e.text, logprobs: null, finish_reason: finishReason(e.finish) }], ...usageField });
        }
      });
      if (failed) sse.send((failed as ApiError).body());
      if (b.stream_options?.include_usage) sse.send({ ...head, choices: [], usage: usageOf(prompts, completion) });
      sse.end();
      return reply;
    }

    const choices = streams.map((_, index) => ({ index, text: "", logprobs: null as ReturnType<typeof completionLogprobs> | null, finish_reason: null as string | null, lps: [] as TokenLogprob[] }));
    let failed: ApiError | null = null;
    await drain(streams, (i, e) => {
      failed ??= failure(e);
      const ch = choices[i]!;
      if (e.kind === "token") {
        completion++;
        ch.text += e.text;
        if (e.logprob) ch.lps.push(e.logprob);
      } else {
        ch.text += e.text;
        ch.finish_reason = finishReason(e.finish);
      }
    });
    if (failed) throw failed;
    return {
      ...head,
      choices: choices.map(({ lps, ...ch }) => ({ ...ch, logprobs: logprobs !== null ? completionLogprobs(lps, 0) : null })),
      usage: usageOf(prompts, completion),
    };
  });

  // ---------------------------------------------------------------- /v1/chat/completions

  /** The chat API's logprobs content entries. */
  const chatLogprobs = (lps: TokenLogprob[]) =>
    lps.map((l) => ({ token: l.token, logprob: l.logprob, bytes: [...Buffer.from(l.token)], top_logprobs: l.top.map((t) => ({ token: t.token, logprob: t.logprob, bytes: [...Buffer.from(t.token)] })) }));

  app.post("/v1/chat/completions", async (req, reply) => {
    const b = parseBody(ChatBody, req.body);
    const domain = domainOf(b);
    const messages: ChatMessage[] = b.messages.map((m) => ({
      role: m.role === "developer" ? "system" : m.role,
      content: typeof m.content === "string" ? m.content : (m.content ?? []).map((p) => p.text).join(""),
    }));
    const prompts = [encodePrompt(tokenizer, domains[domain]!, chatPrompt(messages))];
    const logprobs = b.logprobs ? (b.top_logprobs ?? 0) : null;
    const maxTokens = b.max_completion_tokens ?? b.max_tokens ?? null;
    const reqs = sequences(b, prompts, maxTokens, { stop: [...CHAT_STOPS], logprobs, promptParam: "messages", defaultMax: c.seqLen });
    const streams = submit(reqs);
    cancelOnClose(reply, streams);
    const id = `chatcmpl-${randomUUID()}`;
    const head = { id, object: "chat.completion", created: Math.floor(Date.now() / 1000), model: b.model ?? modelIds[domain]! };
    const trim = streams.map(() => new ReplyTrimmer());
    let completion = 0;

    if (b.stream) {
      const sse = openEvents(reply);
      const chunk = { ...head, object: "chat.completion.chunk" };
      const usageField = b.stream_options?.include_usage ? { usage: null } : {};
      streams.forEach((_, index) => sse.send({ ...chunk, choices: [{ index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }], ...usageField }));
      let failed: ApiError | null = null;
      await drain(streams, (i, e) => {
        failed ??= failure(e);
        if (e.kind === "token") {
          completion++;
          const text = trim[i]!.push(e.text);
          const lp = e.logprob ? { content: chatLogprobs([e.logprob]) } : null;
          if (text || lp) sse.send({ ...chunk, choices: [{ index: i, delta: { content: text }, logprobs: lp, finish_reason: null }], ...usageField });
        } else if (e.finish !== "cancelled" && e.finish !== "error") {
          const text = trim[i]!.push(e.text);
          if (text) sse.send({ ...chunk, choices: [{ index: i, delta: { content: text }, logprobs: null, finish_reason: null }], ...usageField });
          sse.send({ ...chunk, choices: [{ index: i, delta: {}, logprobs: null, finish_reason: finishReason(e.finish) }], ...usageField });
        }
      });
      if (failed) sse.send((failed as ApiError).body());
      if (b.stream_options?.include_usage) sse.send({ ...chunk, choices: [], usage: usageOf(prompts, completion) });
      sse.end();
      return reply;
    }

    const choices = streams.map(() => ({ content: "", finish: "stop", lps: [] as TokenLogprob[] }));
    let failed: ApiError | null = null;
    await drain(streams, (i, e) => {
      failed ??= failure(e);
      const ch = choices[i]!;
      if (e.kind === "token") {
        completion++;
        ch.content += trim[i]!.push(e.text);
        if (e.logprob) ch.lps.push(e.logprob);
      } else {
        ch.content += trim[i]!.push(e.text);
        ch.finish = finishReason(e.finish);
      }
    });
    if (failed) throw failed;
    return {
      ...head,
      choices: choices.map((ch, index) => ({ index, message: { role: "assistant", content: ch.content }, logprobs: logprobs !== null ? { content: chatLogprobs(ch.lps) } : null, finish_reason: ch.finish })),
      usage: usageOf(prompts, completion),
    };
  });

  app.addHook("onClose", async () => {
    await scheduler.close();
  });
  return { app, scheduler, metrics, modelIds };
}
