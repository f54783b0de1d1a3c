/**
 * A saved model as a library user holds it: `openModel(path)` gives a
 * `Model` with its config, tokenizer and parameter counts; `generate` streams
 * text as an async iterator, `complete` returns it whole, `save` writes a
 * checkpoint folder that every command reads back.
 */
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { saveCheckpointFolder } from "../checkpoint/folder.js";
import { activeParameters, parameterCounts, type ModelConfig } from "../models/config.js";
import { encodeModel } from "../models/io.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import { CHAT_STOPS, chatPrompt, ReplyTrimmer, type ChatMessage } from "../serve/chat.js";
import { generateIds } from "../serve/generate.js";
import { checkDraftModel, speculativeIds, type SpeculativeStats } from "../serve/speculative.js";
import { domainIndexOf, encodePrompt } from "../serve/prompt.js";
import { openModelSource, type ModelSource, type OpenOptions, type RunSettings } from "../serve/open.js";
import { StopMatcher } from "../serve/stop.js";
import type { TextTokenizer } from "../tokenizer/codec.js";
import { sha256Hex, toHfJson } from "../tokenizer/hfjson.js";
import { chatTemplateConfig, TOKENIZER_CONFIG_FILE } from "../tokenizer/chat-template.js";
import { SigmaError } from "../util/errors.js";

export interface GenerateOptions {
  /** Domain whose embedding slot and experts are used (default: the model's first). */
  domain?: string;
  /** Tokens to generate at most (default 100). */
  maxTokens?: number;
  /** 0 = greedy (default 0.8). */
  temperature?: number;
  /** Sample among the k most likely tokens; 0 = all (default 40). */
  topK?: number;
  /** Nucleus: the most likely tokens up to this probability; 1 = all (default 0.95). */
  topP?: number;
  /** Sampling seed: a seed fixes the text (default 1). */
  seed?: number;
  /** Stop before any of these strings; the text never contains them. */
  stop?: string[];
  /** Show special tokens such as <|endoftext|> in the text (default false: hidden). */
  showSpecial?: boolean;
  /** Stops generation after the current token. */
  signal?: AbortSignal;
  /**
   * Speculative decoding (docs/decode.md): a smaller model with the same
   * tokenizer, or "ngram" (prompt lookup), proposes tokens that this model
   * verifies several at a time. The text keeps this model's distribution
   * (at temperature 0 it is the text of plain decoding).
   */
  draft?: Model | "ngram";
  /** Tokens the draft proposes per step (default 4). */
  draftTokens?: number;
  /** Filled as generation runs: draft tokens proposed and accepted, verification steps. */
  draftStats?: SpeculativeStats;
}

/** One generated token and the text it adds (may be "" while a character or a possible stop string is incomplete). */
export type { ChatMessage, SpeculativeStats };

export interface GeneratedPiece {
  id: number;
  text: string;
}

export interface ParameterSummary {
  /** Every parameter of the model (all experts). */
  total: number;
  /** Parameters one token uses: everything but the experts it is not routed to. */
  active: number;
}

export class Model {
  /** @internal Use openModel(path). */
  constructor(
    /** The network itself (forward, parameters); for advanced use. */
    readonly network: PanguSigma,
    readonly tokenizer: TextTokenizer | null,
    /** Where it was opened from (the resolved checkpoint folder or file), or null for a model made in memory. */
    readonly path: string | null,
    /** Training step of the checkpoint (0 when unknown). */
    readonly step: number,
    /** The data folder it was trained on, when recorded. */
    readonly dataDir: string | null,
    /** @internal Its training run's batch size, seed and evaluation batches, when known. */
    readonly run: RunSettings | null = null,
    /** @internal tokenizer.json's text, kept to save it byte for byte. */
    readonly tokenizerText: string | null = null,
    /** A Hugging Face chat template (Jinja) kept with the model: GGUF and HF export write it; Sigma's own chat does not run it. */
    readonly chatTemplate: string | null = null,
  ) {}

  /** @internal */
  static fromSource(s: ModelSource): Model {
    return new Model(s.model, s.tokenizer?.tokenizer ?? null, s.path, s.step, s.dataDir, s.run, s.tokenizer?.text ?? null, s.chatTemplate);
  }

  get config(): ModelConfig {
    return this.network.config;
  }

  /** The names of the model's domains, in index order. */
  get domains(): string[] {
    return this.network.config.domains.map((d) => d.name);
  }

  get parameters(): ParameterSummary {
    return { total: parameterCounts(this.config).total, active: activeParameters(this.config) };
  }

  private requireTokenizer(): TextTokenizer {
    if (this.tokenizer) return this.tokenizer;
    throw new SigmaError(`${this.path ?? "this model"} has no tokenizer, so it cannot read or write text`, "open a checkpoint that carries its tokenizer.json, or put one beside the model file");
  }

  /**
   * Streams the continuation of `prompt`, one piece per token. The prompt may
   * contain special tokens such as <|lang:en|>; the domain's control token is
   * put first, as in training. Generation ends at <|endoftext|>, at a stop
   * string, after maxTokens, or when `signal` aborts.
   */
  async *generate(prompt: string, o: GenerateOptions = {}): AsyncGenerator<GeneratedPiece> {
    const tok = this.requireTokenizer();
    const domain = o.domain ?? this.domains[0]!;
    const d = domainIndexOf(this.network, domain);
    const ids = encodePrompt(tok, domain, prompt);
    const stop = new StopMatcher(o.stop ?? []);
    // Text as it completes: a character cut across tokens is held back until its last byte arrives.
    const text = tok.streamDecoder({ skipSpecial: !o.showSpecial });
    const sampling = { temperature: o.temperature ?? 0.8, topK: o.topK ?? 40, topP: o.topP ?? 0.95, seed: o.seed ?? 1, maxTokens: o.maxTokens ?? 100, stopId: tok.eotId };
    const spec = { ...sampling, draftTokens: o.draftTokens ?? 4 };
    const draft = o.draft;
    const tokens =
      draft === undefined ? generateIds(this.network, ids, d, sampling)
      : draft === "ngram" ? speculativeIds(this.network, ids, d, spec, { kind: "ngram" }, o.draftStats)
      : speculativeIds(this.network, ids, d, spec, { kind: "model", model: draft.network, domain: this.draftDomain(draft, domain) }, o.draftStats);
    for (const id of tokens) {
      if (o.signal?.aborted) break;
      const r = stop.push(text.push(id));
      yield { id, text: r.text };
      if (r.stopped) return;
      // Let timers, I/O and other requests run between tokens.
      await yieldToEventLoop();
    }
    const r = stop.push(text.end());
    const rest = r.text + (r.stopped ? "" : stop.end());
    if (rest) yield { id: -1, text: rest };
  }

  /** The draft's domain of the same name (else its first), after checking that it reads and writes the same tokens. */
  private draftDomain(draft: Model, domain: string): number {
    this.checkDraft(draft);
    const i = draft.domains.indexOf(domain);
    return i >= 0 ? i : 0;
  }

  /** Refuses a draft model that does not read and write this model's tokens (vocabulary size, and the tokenizer when both have one). */
  checkDraft(draft: Model): void {
    const where = draft.path ?? "the draft model";
    checkDraftModel(this.network, draft.network);
    const mine = this.tokenizer ? toHfJson(this.tokenizer) : null;
    const theirs = draft.tokenizer ? toHfJson(draft.tokenizer) : null;
    if (theirs !== null && mine !== theirs) throw new SigmaError(`${where} has another tokenizer than ${this.path ?? "the target model"}: a draft must share the target's vocabulary`, "use a model trained on the same data folder, or one cut from the target with sigma extract; or --draft ngram");
  }

  /**
   * Streams the assistant's reply to a conversation (`messages` oldest
   * first), written with the plain-text chat template (docs/serving.md):
   * "System: …", "User: …" and "Assistant: …" paragraphs ending with
   * "Assistant:". The reply ends at <|endoftext|>, where the model starts the
   * next turn, at a stop string, after maxTokens, or when `signal` aborts; its
   * leading space is dropped. `sigma chat` and the server's
   * /v1/chat/completions use the same template.
   */
  async *chat(messages: readonly ChatMessage[], o: GenerateOptions = {}): AsyncGenerator<GeneratedPiece> {
    const trim = new ReplyTrimmer();
    for await (const p of this.generate(chatPrompt(messages), { ...o, stop: [...(o.stop ?? []), ...CHAT_STOPS] })) yield { id: p.id, text: trim.push(p.text) };
  }

  /** The whole continuation of `prompt` (see generate). */
  async complete(prompt: string, o: GenerateOptions = {}): Promise<string> {
    let text = "";
    for await (const p of this.generate(prompt, o)) text += p.text;
    return text;
  }

  /**
   * Writes the model as a checkpoint folder `<dir>/step-NNNNNNNN/` (weights,
   * tokenizer, state.json with every file's sha256), all or nothing, and
   * returns its path. `state` adds provenance fields.
   */
  save(dir: string, state: Record<string, unknown> = {}): string {
    return writeModelFolder(dir, this.step, this.network, this.tokenizerText ?? (this.tokenizer ? toHfJson(this.tokenizer) : null), { format: "sigma-model", ...(this.path ? { from: this.path } : {}), ...(this.dataDir ? { dataDir: this.dataDir } : {}), ...state }, this.chatTemplate);
  }
}

/** Writes `<out>/step-NNNNNNNN/` and returns it. `state` records the provenance; a chat template goes in tokenizer_config.json. */
export function writeModelFolder(out: string, step: number, model: PanguSigma, tokenizerText: string | null, state: Record<string, unknown>, chatTemplate: string | null = null): string {
  const files = new Map<string, Uint8Array | string>([["model.safetensors", encodeModel(model)]]);
  if (tokenizerText !== null) files.set("tokenizer.json", tokenizerText);
  if (chatTemplate !== null) files.set(TOKENIZER_CONFIG_FILE, chatTemplateConfig(chatTemplate));
  const tok = tokenizerText !== null ? { tokenizer: { sha256: sha256Hex(tokenizerText), vocabSize: model.config.vocabSize } } : {};
  return saveCheckpointFolder(out, step, files, { ...state, step, ...tok });
}

/** Options of openModel. */
export type OpenModelOptions = OpenOptions;

/**
 * Opens a saved model: a run folder (its newest checkpoint), a checkpoint
 * folder, an ECSS checkpoint (experts read from its store), an upcycled or
 * extracted model, or a model .safetensors with tokenizer.json beside it.
 * `weights` ("bf16", "f16", "q8", "q4", "f32") converts its matrices for
 * inference at load (docs/decode.md); a model so opened generates and
 * evaluates, but cannot be trained. `decodeStep: true` (what `sigma
 * generate`, `chat` and `serve` pass without --weights) takes an f32 model's
 * matrices as stored f32 views, so decoding runs through the decode step. `kvCache: "f16"` keeps decoding's keys
 * and values in f16 (half the bytes; generate, chat and serve).
 */
export async function openModel(path: string, opts: OpenModelOptions = {}): Promise<Model> {
  return Model.fromSource(openModelSource(path, opts));
}
