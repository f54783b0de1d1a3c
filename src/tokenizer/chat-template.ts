/**
 * A Hugging Face model's chat template: the Jinja text that turns a list of
 * messages into the prompt the model was tuned on. Sigma does not run it (its
 * own chat uses the plain-text template of src/serve/chat.ts); it keeps it
 * with the model so that it reaches the tools that do: `sigma import hf`
 * reads it, a checkpoint keeps it in its own tokenizer_config.json, GGUF
 * export writes it as tokenizer.chat_template (llama.cpp applies it), GGUF
 * import reads it back, and `sigma export hf` writes it in
 * tokenizer_config.json again — the same text, byte for byte.
 *
 * Where a Hugging Face folder keeps it, in the order transformers and
 * llama.cpp's converter look: tokenizer_config.json's `chat_template` (a
 * string, or a list of {name, template} of which "default" is taken), else
 * a chat_template.jinja file beside it.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { SigmaError } from "../util/errors.js";
import { readRegularFile } from "../util/read.js";
import { parseJsonStrict } from "../util/strict-json.js";

/** The file that holds the template, in an HF folder and in a Sigma checkpoint. */
export const TOKENIZER_CONFIG_FILE = "tokenizer_config.json";
const JINJA_FILE = "chat_template.jinja";
/** Longest template kept (real ones are a few KiB to some tens of KiB). */
export const MAX_CHAT_TEMPLATE_BYTES = 2 ** 20;
/** Largest tokenizer_config.json read (it may list every added token). */
const MAX_CONFIG_BYTES = 64 * 2 ** 20;

const HINT = `chat_template must be a string (Jinja) of at most ${MAX_CHAT_TEMPLATE_BYTES} bytes, or a list of {"name", "template"} with one named "default"; fix or remove it`;

/** `t`, checked to be a template Sigma keeps; `where` names the file and field in errors. */
export function checkChatTemplate(t: unknown, where: string): string {
  if (typeof t !== "string") throw new SigmaError(`${where} is ${t === null ? "null" : Array.isArray(t) ? "a list" : typeof t}, not a string`, HINT);
  const bytes = Buffer.byteLength(t, "utf8");
  if (bytes > MAX_CHAT_TEMPLATE_BYTES) throw new SigmaError(`${where} is ${bytes} bytes long, more than the ${MAX_CHAT_TEMPLATE_BYTES} a chat template may be`, HINT);
  return t;
}

/** The chat template of a parsed tokenizer_config.json (`file` names it in errors), or null when it has none. */
export function chatTemplateOf(config: unknown, file: string): string | null {
  if (typeof config !== "object" || config === null || Array.isArray(config)) throw new SigmaError(`${file} is not a JSON object`, "a tokenizer_config.json holds one object");
  const t = (config as Record<string, unknown>).chat_template;
  if (t === undefined || t === null) return null;
  if (!Array.isArray(t)) return checkChatTemplate(t, `${file}: chat_template`);
  // The named form: [{"name": "default", "template": "…"}, {"name": "tool_use", …}].
  t.forEach((e, i) => {
    const ok = typeof e === "object" && e !== null && typeof (e as Record<string, unknown>).name === "string";
    if (!ok) throw new SigmaError(`${file}: chat_template[${i}] is not an object with a string "name"`, HINT);
  });
  const d = t.findIndex((e) => (e as Record<string, unknown>).name === "default");
  if (d < 0) throw new SigmaError(`${file}: chat_template lists templates named ${t.map((e) => JSON.stringify((e as Record<string, unknown>).name)).join(", ")} but none "default"`, HINT);
  return checkChatTemplate((t[d] as Record<string, unknown>).template, `${file}: chat_template[${d}].template`);
}

/** The chat template of a Hugging Face (or Sigma checkpoint) folder, or null when it has none. */
export function readChatTemplate(folder: string): string | null {
  const configPath = join(folder, TOKENIZER_CONFIG_FILE);
  if (existsSync(configPath)) {
    const text = readRegularFile(configPath, "tokenizer config", "remove it or replace it with the model's own", MAX_CONFIG_BYTES).toString("utf8");
    let config: unknown;
    try {
      config = parseJsonStrict(text);
    } catch (e) {
      throw new SigmaError(`${configPath} is not valid JSON (${(e as Error).message})`, "remove it or replace it with the model's own");
    }
    const t = chatTemplateOf(config, configPath);
    if (t !== null) return t;
  }
  const jinja = join(folder, JINJA_FILE);
  if (!existsSync(jinja)) return null;
  return checkChatTemplate(readRegularFile(jinja, "chat template", HINT, MAX_CHAT_TEMPLATE_BYTES).toString("utf8"), jinja);
}

/** The tokenizer_config.json Sigma writes for a template (in a checkpoint, or an exported HF folder). */
export function chatTemplateConfig(template: string): string {
  return `${JSON.stringify({ chat_template: template }, null, 2)}\n`;
}
