/**
 * From text to the model's inputs at inference: a domain's index by name and
 * the prompt as token ids. Opening the model itself is src/serve/open.ts.
 */
import type { PanguSigma } from "../models/pangu-sigma.js";
import type { TextTokenizer } from "../tokenizer/codec.js";
import { SigmaError } from "../util/errors.js";

/** Index of a domain name in the model's domains, with a hint listing the known ones. */
export function domainIndexOf(model: PanguSigma, name: string): number {
  const names = model.config.domains.map((d) => d.name);
  const i = names.indexOf(name);
  if (i < 0) throw new SigmaError(`Unknown domain "${name}"; the model knows ${names.join(", ")}`, "pass one of them with --domain");
  return i;
}

/**
 * The prompt as token ids: the domain's control token first (as every
 * training document starts), then the text, where special tokens such as
 * <|lang:en|> are recognised.
 */
export function encodePrompt(tok: TextTokenizer, domain: string, text: string): number[] {
  const ids: number[] = [];
  if (tok.domains.includes(domain)) ids.push(tok.domainTokenId(domain));
  ids.push(...tok.encode(text, { allowSpecial: true }));
  return ids;
}
