/**
 * Special tokens. They take the first ids of the vocabulary, in this order:
 *   0  <|endoftext|>          ends every document in a token stream
 *   1  <|pad|>                fills unused positions (never trained on)
 *   …  <|domain:NAME|>        one control token per domain, in domain-id order
 *   …  <|lang:TAG|>           language tags that prefix each side of a translation pair
 * Domain ids are the positions of the domain tokens among themselves, so the
 * tokenizer is the single record of which id each domain has (RRE routes on it).
 */
import { SigmaError } from "../util/errors.js";

export const EOT = "<|endoftext|>";
export const PAD = "<|pad|>";

/** The four major PanGu-Σ domains, and the ones the default corpus has [ours: short names]. */
export const DEFAULT_DOMAINS: readonly string[] = ["zh", "en", "bi", "code"];
/** Language tags for the zh–en translation pairs of the bilingual domain. */
export const DEFAULT_LANGS: readonly string[] = ["zh", "en"];

const NAME_RE = /^[a-z0-9][a-z0-9_.-]{0,31}$/;

export function domainToken(name: string): string {
  return `<|domain:${name}|>`;
}
export function langToken(tag: string): string {
  return `<|lang:${tag}|>`;
}

export interface SpecialSpec {
  domains: readonly string[];
  langs: readonly string[];
}

/** The ordered list of special-token strings for these domains and language tags. */
export function specialTokens(spec: SpecialSpec): string[] {
  for (const [what, names] of [["domain", spec.domains], ["language tag", spec.langs]] as const) {
    const seen = new Set<string>();
    for (const n of names) {
      if (!NAME_RE.test(n)) {
        throw new SigmaError(`Bad ${what} name ${JSON.stringify(n)}`, "use 1–32 characters from a-z, 0-9, _ . - (starting with a letter or digit)");
      }
      if (seen.has(n)) throw new SigmaError(`Duplicate ${what} name "${n}"`);
      seen.add(n);
    }
  }
  if (spec.domains.length === 0) throw new SigmaError("A tokenizer needs at least one domain", "pass --domains zh,en,bi,code");
  return [EOT, PAD, ...spec.domains.map(domainToken), ...spec.langs.map(langToken)];
}

/** Recovers domains and language tags from the special-token strings, in id order. */
export function parseSpecials(contents: readonly string[], where: string): SpecialSpec {
  if (contents[0] !== EOT || contents[1] !== PAD) {
    throw new SigmaError(`${where}: the first special tokens must be ${EOT} (id 0) and ${PAD} (id 1)`, "write tokenizers with `sigma tokenizer train`");
  }
  const domains: string[] = [];
  const langs: string[] = [];
  for (const c of contents.slice(2)) {
    const d = /^<\|domain:(.+)\|>$/.exec(c);
    const l = /^<\|lang:(.+)\|>$/.exec(c);
    if (d && langs.length === 0) domains.push(d[1]!);
    else if (l) langs.push(l[1]!);
    else throw new SigmaError(`${where}: unexpected special token ${JSON.stringify(c)}`, "specials are <|endoftext|>, <|pad|>, then <|domain:…|> tokens, then <|lang:…|> tokens");
  }
  specialTokens({ domains, langs }); // validates names
  return { domains, langs };
}
