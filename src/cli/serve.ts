/**
 * `sigma serve` (the library's serve() behind flags; runs until Ctrl-C or
 * SIGTERM) and `sigma chat` (an interactive terminal chat over Model.chat).
 */
import type { Command } from "commander";
import { createInterface } from "node:readline";
import { openModel, type ChatMessage } from "../api/model.js";
import { serve } from "../api/serve.js";
import { newSpeculativeStats, type SpeculativeStats } from "../serve/speculative.js";
import { SigmaError } from "../util/errors.js";
import { streamOut } from "./output.js";
import { kvCacheOption, openOptions, weightsOption } from "./quantize.js";
import type { WeightFormat } from "../backend/quant.js";
import type { KVFormat } from "../nn/attention.js";
import { FLAG_LIMITS, parseIntOpt, parseNumOpt } from "./tokenizer.js";

export function register(program: Command): void {
  const serveCmd = program
    .command("serve")
    .description("serve a model over an OpenAI-compatible HTTP API with continuous batching (docs/serving.md)")
    .requiredOption("--ckpt <path>", "checkpoint folder, a run folder, an ECSS checkpoint, or a model .safetensors with tokenizer.json beside it")
    .option("--host <address>", "address to listen on (0.0.0.0 opens it to the network)", "127.0.0.1")
    .option("--port <n>", "port (0 = any free port)", parseIntOpt("port", 0, 65535), 8080)
    .option("--max-batch <n>", "sequences decoded together at most", parseIntOpt("max-batch", 1, 4096), 16)
    .option("--max-queue <n>", "sequences that may wait for a place in the batch; more get 429", parseIntOpt("max-queue", 0, 1e6), 64)
    .option("--prefill-chunk <n>", "prompt tokens prefilled per step, beside the running streams", parseIntOpt("prefill-chunk", 1, 1e6), 64)
    .option("--name <name>", "model name in the ids sigma/<name>/<domain> (default: from the path)")
    .option("--api-key <key>", "require Authorization: Bearer <key> on /v1/ (default: $SIGMA_API_KEY, else none)")
    .option("--draft <model>", "speculative decoding: a smaller model with the same tokenizer (opened like --ckpt, with the same --weights), or ngram (prompt lookup)")
    .option("--draft-tokens <k>", "tokens the draft proposes per step", parseIntOpt("draft-tokens", 1, 64), 4);
  kvCacheOption(weightsOption(serveCmd))
    .action(async (o: { ckpt: string; host: string; port: number; maxBatch: number; maxQueue: number; prefillChunk: number; name?: string; apiKey?: string; weights?: WeightFormat; kvCache?: KVFormat; draft?: string; draftTokens: number }) => {
      const model = await openModel(o.ckpt, openOptions(o, true));
      const draft = o.draft === undefined || o.draft === "ngram" ? undefined : await openModel(o.draft, openOptions(o, true));
      const apiKey = o.apiKey ?? process.env.SIGMA_API_KEY ?? null;
      const draftTokens = o.draft !== undefined ? o.draftTokens : 0;
      const server = await serve(model, { host: o.host, port: o.port, maxBatch: o.maxBatch, maxQueue: o.maxQueue, prefillChunk: o.prefillChunk, apiKey, draftTokens, ...(draft ? { draft } : {}), ...(o.name !== undefined ? { name: o.name } : {}) });
      console.log(`sigma serve: ${model.path} on ${server.url} (OpenAI API under ${server.url}/v1)`);
      const drafts = draft ? `; drafts of ${draftTokens} tokens from ${draft.path} (acceptance in /metrics)` : draftTokens ? `; n-gram drafts of ${draftTokens} tokens (acceptance in /metrics)` : "";
      console.log(`models: ${server.models.join(", ")}${apiKey ? "; a bearer key is required" : ""}; batch ≤ ${o.maxBatch}, queue ≤ ${o.maxQueue}${o.kvCache === "f16" ? "; keys and values cached in f16" : ""}${drafts}`);
      if (o.host !== "127.0.0.1" && o.host !== "localhost" && o.host !== "::1" && !apiKey) console.log("warning: listening beyond this machine without --api-key: anyone who reaches the port can use the model");
      // Serve until asked to stop; then finish cleanly (open streams are cancelled).
      await new Promise<void>((resolve) => {
        const stop = () => {
          process.off("SIGINT", stop);
          process.off("SIGTERM", stop);
          resolve();
        };
        process.on("SIGINT", stop);
        process.on("SIGTERM", stop);
      });
      console.log("sigma serve: stopping");
      await server.close();
    });

  const chatCmd = program
    .command("chat")
    .description("chat with a model in the terminal: /reset clears the history, /domain NAME switches, Ctrl-C stops a reply, Ctrl-D quits")
    .requiredOption("--ckpt <path>", "checkpoint folder, a run folder, or a model .safetensors with tokenizer.json beside it")
    .option("--domain <name>", "domain to start in (default: the model's first)")
    .option("--system <text>", "a system message at the start of the conversation")
    .option("--max-tokens <n>", "tokens per reply at most", parseIntOpt("max-tokens", 1, FLAG_LIMITS.maxTokens), 256)
    .option("--temperature <t>", "0 = greedy", parseNumOpt("temperature", 0, 1e6), 0.8)
    .option("--top-k <k>", "sample among the k most likely tokens (0 = all)", parseIntOpt("top-k", 0, Number.MAX_SAFE_INTEGER), 40)
    .option("--top-p <p>", "nucleus: the most likely tokens up to this probability (1 = all)", parseNumOpt("top-p", 0, 1, { above: true }), 0.95)
    .option("--seed <n>", "sampling seed of the first reply (each reply takes the next)", parseIntOpt("seed", 0, FLAG_LIMITS.seed), 1)
    .option("--draft <model>", "speculative decoding: a smaller model with the same tokenizer (opened like --ckpt, with the same --weights), or ngram (prompt lookup)")
    .option("--draft-tokens <k>", "tokens the draft proposes per step", parseIntOpt("draft-tokens", 1, 64), 4);
  kvCacheOption(weightsOption(chatCmd))
    .action(async (o: { ckpt: string; domain?: string; system?: string; maxTokens: number; temperature: number; topK: number; topP: number; seed: number; weights?: WeightFormat; kvCache?: KVFormat; draft?: string; draftTokens: number }) => {
      const model = await openModel(o.ckpt, openOptions(o, true));
      const domains = model.domains;
      const domain = o.domain ?? domains[0]!;
      if (!domains.includes(domain)) throw new SigmaError(`Unknown domain "${domain}"; the model knows ${domains.join(", ")}`, "pass one of them with --domain");
      const draft = o.draft === undefined ? undefined : o.draft === "ngram" ? ("ngram" as const) : await openModel(o.draft, openOptions(o, true));
      await chatLoop(model, domains, domain, { ...o, draft });
    });
}

type ChatModel = Awaited<ReturnType<typeof openModel>>;

/** The conversation: one line per user turn, the reply streamed after it. */
async function chatLoop(model: ChatModel, domains: string[], start: string, o: { system?: string; maxTokens: number; temperature: number; topK: number; topP: number; seed: number; draft: ChatModel | "ngram" | undefined; draftTokens: number }): Promise<void> {
  // With a draft, every reply decodes speculatively; the acceptance over the whole chat is printed at the end.
  const draftStats = newSpeculativeStats();
  const spec = o.draft === undefined ? {} : { draft: o.draft, draftTokens: o.draftTokens, draftStats };
  let domain = start;
  const fresh = (): ChatMessage[] => (o.system ? [{ role: "system", content: o.system }] : []);
  let history = fresh();
  let seed = o.seed;
  const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY === true });
  rl.setPrompt("you> ");
  console.log(`chatting with ${model.path} in domain ${domain}; /reset, /domain NAME (${domains.join(", ")}), Ctrl-C stops a reply, Ctrl-D quits`);
  // While a reply streams, Ctrl-C stops it; at the prompt it clears the line (readline's SIGINT on a terminal, the signal otherwise).
  let reply: AbortController | null = null;
  const interrupt = () => {
    if (reply) reply.abort();
    else {
      streamOut("\n(Ctrl-D quits)\n");
      rl.prompt();
    }
  };
  rl.on("SIGINT", interrupt);
  process.on("SIGINT", interrupt);
  const lines = rl[Symbol.asyncIterator]();
  try {
    for (;;) {
      rl.prompt();
      const next = await lines.next();
      if (next.done) break;
      const line = next.value.trim();
      if (line === "") continue;
      if (line === "/reset") {
        history = fresh();
        console.log("(history cleared)");
        continue;
      }
      const d = /^\/domain(?:\s+(\S+))?$/.exec(line);
      if (d) {
        if (d[1] === undefined) console.log(`(domain ${domain}; the model knows ${domains.join(", ")})`);
        else if (!domains.includes(d[1])) console.log(`(unknown domain "${d[1]}"; the model knows ${domains.join(", ")})`);
        else {
          domain = d[1];
          console.log(`(domain ${domain})`);
        }
        continue;
      }
      if (line.startsWith("/")) {
        console.log("(commands: /reset, /domain NAME; Ctrl-D quits)");
        continue;
      }
      history.push({ role: "user", content: line });
      reply = new AbortController();
      let text = "";
      for await (const p of model.chat(history, { domain, maxTokens: o.maxTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, seed: seed++, signal: reply.signal, ...spec })) {
        text += p.text;
        streamOut(p.text);
      }
      streamOut(reply.signal.aborted ? " [stopped]\n" : "\n");
      reply = null;
      history.push({ role: "assistant", content: text });
    }
  } finally {
    process.off("SIGINT", interrupt);
    rl.close();
  }
  streamOut("\n");
  if (o.draft !== undefined) console.error(draftSummary(draftStats));
}

/** "draft: A of P proposed tokens accepted (R%), S verification steps" (sigma generate prints the same). */
export function draftSummary(s: SpeculativeStats): string {
  const rate = s.proposed ? ((100 * s.accepted) / s.proposed).toFixed(0) : "–";
  return `draft: ${s.accepted} of ${s.proposed} proposed tokens accepted (${rate}%), ${s.steps} verification steps`;
}
