/**
 * Fine-tuning data: instruction and chat records from a JSONL file, checked
 * line by line, rendered with the chat template `sigma serve` uses
 * (src/serve/chat.ts), and tokenized with a loss mask that covers only what
 * the assistant says.
 *
 * A record is one JSON object per line, either
 *
 *   {"messages": [{"role": "system"|"user"|"assistant", "content": "…"}, …]}
 *   {"prompt": "…", "completion": "…"}       (= one user turn, one assistant turn)
 *
 * with an optional "domain" (the model's domain whose control token, embedding
 * slot and experts the record uses; default: the run's). Blank lines are
 * skipped; anything else that is not such a record is an error naming the
 * line and the field.
 *
 * Rendering. For each assistant turn, the text before it is exactly what
 * serve sends the model when it asks for that reply — chatPrompt() of the
 * turns before it, ending in "Assistant:", with the domain's control token
 * first (encodePrompt) — and the reply follows as " " + its content, the
 * space that serve's ReplyTrimmer drops. After the last reply comes
 * <|endoftext|>, so the model learns where to stop. The pieces are tokenized
 * one by one (the first prompt exactly as serve tokenizes it), so a
 * completion's tokens never merge with the prompt's. The mask is 1 on the
 * reply tokens and the closing <|endoftext|>, 0 on everything else (system
 * and user turns, the "Assistant:" labels): only mask-1 tokens are targets.
 */
import { readFileSync } from "node:fs";
import { chatPrompt, type ChatMessage } from "../serve/chat.js";
import { encodePrompt } from "../serve/prompt.js";
import type { Tokenizer } from "../tokenizer/codec.js";
import { SigmaError } from "../util/errors.js";
import { parseJsonLineObject } from "../util/json.js";

/** One record as read: its turns (oldest first), its domain if it names one, and its line. */
export interface ChatRecord {
  messages: ChatMessage[];
  domain: string | null;
  line: number;
}

/** A rendered record: token ids and, per token, 1 when it is a target of the loss. */
export interface RenderedRecord {
  ids: Int32Array;
  mask: Uint8Array;
  /** Index into the model's domains. */
  domain: number;
  line: number;
}

const ROLES = ["system", "user", "assistant"] as const;
/** Largest data file read (the records are rendered in memory). */
export const MAX_DATA_BYTES = 2 ** 30;

/** Parses the JSONL text of a fine-tuning file; `file` names it in errors. */
export function parseRecords(text: string, file: string): ChatRecord[] {
  const out: ChatRecord[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (!line) continue;
    out.push(parseRecord(line, file, i + 1));
  }
  if (out.length === 0) throw new SigmaError(`${file} holds no records`, 'write one JSON object per line: {"messages": [...]} or {"prompt": "...", "completion": "..."}');
  return out;
}

function parseRecord(text: string, file: string, line: number): ChatRecord {
  const at = `${file} line ${line}`;
  const hint = 'each line is {"messages": [{"role": "user", "content": "…"}, {"role": "assistant", "content": "…"}]} or {"prompt": "…", "completion": "…"}, with an optional "domain"';
  const bad = (what: string): SigmaError => new SigmaError(`${at}: ${what}`, hint);
  const r = parseJsonLineObject(text, at, hint);
  const chat = "messages" in r;
  const allowed = chat ? ["messages", "domain"] : ["prompt", "completion", "domain"];
  for (const k of Object.keys(r)) if (!allowed.includes(k)) throw bad(`unknown field "${k}"${chat && (k === "prompt" || k === "completion") ? ' (a record has either "messages" or "prompt" and "completion")' : ""}`);
  let domain: string | null = null;
  if ("domain" in r) {
    if (typeof r.domain !== "string" || !r.domain) throw bad(`"domain" must be a non-empty string`);
    domain = r.domain;
  }
  const str = (v: unknown, field: string): string => {
    if (typeof v !== "string") throw bad(`"${field}" must be a string${v === undefined ? " (it is missing)" : ""}`);
    return v;
  };
  if (!chat) {
    const prompt = str(r.prompt, "prompt");
    const completion = str(r.completion, "completion");
    if (!completion.trim()) throw bad(`"completion" is empty: nothing to learn`);
    return { messages: [{ role: "user", content: prompt }, { role: "assistant", content: completion }], domain, line };
  }
  if (!Array.isArray(r.messages)) throw bad(`"messages" must be an array of {"role", "content"}`);
  if (r.messages.length === 0) throw bad(`"messages" is empty`);
  const messages = r.messages.map((m, j): ChatMessage => {
    const f = `messages[${j}]`;
    if (!m || typeof m !== "object" || Array.isArray(m)) throw bad(`${f} must be an object {"role", "content"}`);
    const o = m as Record<string, unknown>;
    for (const k of Object.keys(o)) if (k !== "role" && k !== "content") throw bad(`${f} has an unknown field "${k}"`);
    if (!ROLES.includes(o.role as (typeof ROLES)[number])) throw bad(`${f}.role is ${JSON.stringify(o.role) ?? "missing"}, not one of ${ROLES.join(", ")}`);
    return { role: o.role as ChatMessage["role"], content: str(o.content, `${f}.content`) };
  });
  const last = messages.length - 1;
  if (messages[last]!.role !== "assistant") throw bad(`messages[${last}] is the ${messages[last]!.role}'s: a record ends with the assistant's reply (nothing after it is learned)`);
  messages.forEach((m, j) => {
    if (m.role === "assistant" && !m.content.trim()) throw bad(`messages[${j}].content is empty: nothing to learn`);
  });
  return { messages, domain, line };
}

/** Reads and parses a fine-tuning JSONL file. */
export function readRecords(path: string): ChatRecord[] {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new SigmaError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "pass --data with a JSONL file of chat or prompt/completion records");
  }
  if (bytes.length > MAX_DATA_BYTES) throw new SigmaError(`${path} is ${bytes.length} bytes, more than the ${MAX_DATA_BYTES} a fine-tuning file may hold`, "split it, or sample it down");
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new SigmaError(`${path} is not UTF-8 text`, "save the records as UTF-8 JSONL");
  }
  return parseRecords(text, path);
}

/**
 * The record's tokens and loss mask (see the file comment). `domainName` is
 * the record's domain; `maxTokens` the most tokens a record may have (the
 * model's seqLen + 1: inputs and targets are the tokens shifted by one).
 */
export function renderRecord(tok: Tokenizer, record: ChatRecord, domainName: string, domainIndex: number, maxTokens: number, file = "data"): RenderedRecord {
  const ids: number[] = [];
  const mask: number[] = [];
  const put = (piece: number[], on: 0 | 1): void => {
    ids.push(...piece);
    for (let i = 0; i < piece.length; i++) mask.push(on);
  };
  const m = record.messages;
  let rendered = ""; // the text so far, to find each next prompt's new part
  for (let i = 0; i < m.length; i++) {
    if (m[i]!.role !== "assistant") continue;
    const prompt = chatPrompt(m.slice(0, i));
    if (rendered === "") put(encodePrompt(tok, domainName, prompt), 0);
    else {
      // chatPrompt of a longer history starts with the shorter one and the reply written as serve writes it.
      if (!prompt.startsWith(rendered)) throw new Error("renderRecord: the chat template does not extend earlier turns");
      put(tok.encode(prompt.slice(rendered.length), { allowSpecial: true }), 0);
    }
    const reply = ` ${m[i]!.content.trim()}`;
    put(tok.encode(reply, { allowSpecial: true }), 1);
    rendered = prompt + reply;
  }
  put([tok.eotId], 1);
  if (ids.length > maxTokens) {
    throw new SigmaError(`${file} line ${record.line}: the record is ${ids.length} tokens with the chat template, more than the model's seqLen + 1 (${maxTokens})`, "shorten or split the record (e.g. fewer earlier turns)");
  }
  return { ids: Int32Array.from(ids), mask: Uint8Array.from(mask), domain: domainIndex, line: record.line };
}

/**
 * Next-token targets of a rendered record: target[t] = ids[t + 1] where
 * that token is masked in (mask 1), else ignoreIndex — so the cross-entropy
 * (src/ops/nn.ts crossEntropy) counts it neither in the sum nor in the mean,
 * and no gradient flows from it.
 */
export function maskedTargets(ids: Int32Array, mask: Uint8Array, ignoreIndex = -1): Int32Array {
  const y = new Int32Array(ids.length - 1);
  for (let t = 0; t + 1 < ids.length; t++) y[t] = mask[t + 1] ? ids[t + 1]! : ignoreIndex;
  return y;
}
