/**
 * The regular expressions of tokenizer.json files, read into JS RegExps.
 *
 * Hugging Face's Rust `tokenizers` compiles Split and Replace patterns with
 * Oniguruma. Its syntax is close to JS's but not equal, so a pattern is
 * rewritten piece by piece, and any construct outside the subset below is
 * refused with its name rather than run with a different meaning:
 *
 *   literals, alternation |, groups ( ) (?: ) (?= ) (?! ) (?<= ) (?<! )
 *   (?i: ) case-insensitive groups (letters outside character classes)
 *   quantifiers ? * + {n} {n,} {n,m} {,m} and their lazy forms (?? *? +?)
 *   character classes [...] [^...] with ranges and the escapes below
 *   \p{…} \P{…} (general categories, binary properties, scripts: Oniguruma
 *     accepts \p{Han}, JS wants \p{Script=Han})
 *   \s \S  → White_Space (Oniguruma's Unicode \s; JS's \s also takes U+FEFF
 *            and leaves out U+0085)
 *   \d \D  → Decimal_Number
 *   .      → any character but \n (JS's . also stops at \r, U+2028, U+2029)
 *   ^ $    → start / end of a line (only \n separates lines in Oniguruma)
 *   \t \n \r \f \v \a \e \xHH \x{H…} \uHHHH, escaped punctuation
 *
 * Refused: \w \W \b \B \h \H (their Unicode sets differ between engines),
 * \A \z \Z \G \K \R \X, back-references, atomic groups (?>…), possessive
 * quantifiers (X*+, X++, X?+) and stacked ones (X{2}+), POSIX brackets
 * [:alpha:], class set operations (&&, nested [...]), inline flags (?i) (?m)
 * (?x), and case-insensitive character classes.
 *
 * Case-insensitive groups: Oniguruma folds case with Unicode's case folding,
 * so (?i:s) also matches U+017F (ſ, long s) and (?i:k) U+212A (the Kelvin
 * sign) — the only non-ASCII characters that fold to ASCII letters. Each
 * letter becomes a class of the characters that fold to it.
 */
import { SigmaError } from "../util/errors.js";

/** Characters that must be escaped to be literal in a JS `u` RegExp (outside a class). */
const JS_SYNTAX = new Set("^$\\.*+?()[]{}|/".split(""));
/** Non-ASCII characters whose case folding is an ASCII letter. */
const FOLDS_TO: Readonly<Record<string, string>> = { s: "\u017f", k: "\u212a" };

const SIMPLE_ESCAPES: Readonly<Record<string, string>> = { t: "\\t", n: "\\n", r: "\\r", f: "\\f", v: "\\v", a: "\\x07", e: "\\x1B" };
const CLASS_ESCAPES: Readonly<Record<string, string>> = { s: "\\p{White_Space}", S: "\\P{White_Space}", d: "\\p{Nd}", D: "\\P{Nd}" };
const REFUSED_ESCAPES: Readonly<Record<string, string>> = {
  w: "\\w (word characters)",
  W: "\\W (non-word characters)",
  b: "\\b (word boundary)",
  B: "\\B (non-word boundary)",
  h: "\\h (hex digit)",
  H: "\\H (non-hex digit)",
  A: "\\A (start of text)",
  z: "\\z (end of text)",
  Z: "\\Z (end of text)",
  G: "\\G (match start)",
  K: "\\K (keep)",
  R: "\\R (line break)",
  X: "\\X (grapheme cluster)",
  k: "\\k (named back-reference)",
  g: "\\g (subexpression call)",
  N: "\\N (non-newline)",
  O: "\\O (any character)",
  y: "\\y (text segment boundary)",
  Y: "\\Y (text segment boundary)",
};

export const SUPPORTED_REGEX =
  "literals, | ( ) (?: ) (?= ) (?! ) (?<= ) (?<! ) (?i: ), quantifiers ? * + {n,m} and lazy forms, classes [...] [^...], \\p{…} \\P{…}, \\s \\S \\d \\D, ., ^, $, \\t \\n \\r \\f \\v \\xHH \\x{…} \\uHHHH";

class Refused extends Error {}

/** The JS RegExp (flags "gu") for Oniguruma `pattern`; `where` names the file and field in errors. */
export function onigurumaToRegExp(pattern: string, where: string): RegExp {
  let source: string;
  try {
    source = translate(pattern);
  } catch (e) {
    if (!(e instanceof Refused)) throw e;
    throw new SigmaError(`${where}: the regular expression ${JSON.stringify(pattern.length > 120 ? `${pattern.slice(0, 120)}…` : pattern)} uses ${e.message}, which Sigma does not read`, `supported: ${SUPPORTED_REGEX}`);
  }
  try {
    return new RegExp(source, "gu");
  } catch (e) {
    throw new SigmaError(`${where}: the regular expression ${JSON.stringify(pattern)} does not compile (${(e as Error).message})`, `supported: ${SUPPORTED_REGEX}`);
  }
}

/** A property name as JS writes it: as given when JS knows it, else as a script name. */
function propertyName(name: string): string {
  for (const candidate of [name, `Script=${name}`]) {
    try {
      new RegExp(`\\p{${candidate}}`, "u");
      return candidate;
    } catch {
      // try the next spelling
    }
  }
  throw new Refused(`the unknown property \\p{${name}}`);
}

const codePointEscape = (hex: string): string => {
  const cp = Number.parseInt(hex, 16);
  if (!/^[0-9a-fA-F]{1,6}$/.test(hex) || cp > 0x10ffff) throw new Refused(`the bad code point escape \\x{${hex}}`);
  return `\\u{${cp.toString(16)}}`;
};

/**
 * Reads one escape at `p[i]` (the backslash). Returns the JS text and the
 * index after it. `inClass`: inside [...], where only single characters and
 * sets may appear.
 */
function escape(p: string, i: number, inClass: boolean, fold: boolean): [string, number] {
  const c = p[i + 1];
  if (c === undefined) throw new Refused("a trailing backslash");
  if (c === "p" || c === "P") {
    const m = /^\{(\^?)([A-Za-z0-9_ =-]+)\}/.exec(p.slice(i + 2));
    if (!m) throw new Refused(`a \\${c} without {name}`);
    const negated = (c === "P") !== (m[1] === "^");
    return [`\\${negated ? "P" : "p"}{${propertyName(m[2]!)}}`, i + 2 + m[0].length];
  }
  if (c === "x") {
    const braced = /^\{([^}]*)\}/.exec(p.slice(i + 2));
    if (braced) return [codePointEscape(braced[1]!), i + 2 + braced[0].length];
    const two = /^[0-9a-fA-F]{1,2}/.exec(p.slice(i + 2));
    if (!two) throw new Refused("a \\x without hex digits");
    return [codePointEscape(two[0]), i + 2 + two[0].length];
  }
  if (c === "u") {
    const four = /^[0-9a-fA-F]{4}/.exec(p.slice(i + 2));
    if (!four) throw new Refused("a \\u without four hex digits");
    return [codePointEscape(four[0]), i + 6];
  }
  if (SIMPLE_ESCAPES[c] !== undefined) return [SIMPLE_ESCAPES[c]!, i + 2];
  if (CLASS_ESCAPES[c] !== undefined) return [CLASS_ESCAPES[c]!, i + 2];
  if (REFUSED_ESCAPES[c] !== undefined) throw new Refused(REFUSED_ESCAPES[c]!);
  if (/[0-9]/.test(c)) throw new Refused(`\\${c} (a back-reference or octal escape)`);
  if (/[A-Za-z]/.test(c)) throw new Refused(`the escape \\${c}`);
  // Escaped punctuation or any other character: that character, literally.
  const ch = String.fromCodePoint(p.codePointAt(i + 1)!);
  return [literal(ch, inClass, fold), i + 1 + ch.length];
}

/** One literal character as JS text. */
function literal(ch: string, inClass: boolean, fold: boolean): string {
  if (fold && /^[A-Za-z]$/.test(ch)) {
    if (inClass) throw new Refused("a case-insensitive character class");
    const lo = ch.toLowerCase();
    return `[${lo}${lo.toUpperCase()}${FOLDS_TO[lo] ?? ""}]`;
  }
  if (inClass) return ch === "\\" || ch === "]" || ch === "[" || ch === "-" || ch === "^" ? `\\${ch}` : ch;
  return JS_SYNTAX.has(ch) ? `\\${ch}` : ch;
}

/** Reads the class starting at `p[i]` ("["); returns the JS text and the index after "]". */
function charClass(p: string, i: number, fold: boolean): [string, number] {
  let out = "[";
  let j = i + 1;
  if (p[j] === "^") {
    out += "^";
    j++;
  }
  if (p[j] === "]") {
    out += "\\]"; // a "]" first in the class is literal in Oniguruma
    j++;
  }
  for (;;) {
    const c = p[j];
    if (c === undefined) throw new Refused("an unclosed character class");
    if (c === "]") return [out + "]", j + 1];
    if (c === "[") throw new Refused(p.startsWith("[:", j) ? "a POSIX bracket class like [:alpha:]" : "a nested character class");
    if (c === "&" && p[j + 1] === "&") throw new Refused("class intersection &&");
    if (c === "\\") {
      const [text, next] = escape(p, j, true, fold);
      out += text;
      j = next;
      continue;
    }
    if (c === "-" && out.length > 1 && !out.endsWith("[^") && p[j + 1] !== "]") {
      out += "-"; // a range between the characters on either side
      j++;
      continue;
    }
    const ch = String.fromCodePoint(p.codePointAt(j)!);
    out += literal(ch, true, fold);
    j += ch.length;
  }
}

function translate(p: string): string {
  let out = "";
  /** Whether the last thing emitted can take a quantifier, and whether it already has one. */
  let atom = false;
  let quantified = false;
  let lazyable = false;
  /** Per open group: whether it switched case folding on, and the folding outside it. */
  const groups: boolean[] = [];
  let fold = false;
  const emitAtom = (text: string): void => {
    out += text;
    atom = true;
    quantified = false;
  };
  const emitOther = (text: string): void => {
    out += text;
    atom = false;
    quantified = false;
  };
  for (let i = 0; i < p.length; ) {
    const c = p[i]!;
    if (c === "\\") {
      const [text, next] = escape(p, i, false, fold);
      emitAtom(text);
      i = next;
      continue;
    }
    if (c === "[") {
      const [text, next] = charClass(p, i, fold);
      emitAtom(text);
      i = next;
      continue;
    }
    if (c === "(") {
      const rest = p.slice(i);
      const known = /^\(\?(?::|=|!|<=|<!|i:)/.exec(rest);
      if (known) {
        groups.push(fold);
        if (known[0] === "(?i:") fold = true;
        emitOther(known[0] === "(?i:" ? "(?:" : known[0]);
        i += known[0].length;
      } else if (rest.startsWith("(?")) {
        if (rest.startsWith("(?>")) throw new Refused("an atomic group (?>…)");
        if (rest.startsWith("(?#")) throw new Refused("a comment group (?#…)");
        if (/^\(\?<[A-Za-z_]/.test(rest)) throw new Refused("a named group (?<name>…)");
        throw new Refused(`the group or inline flag ${rest.slice(0, 5)}…`);
      } else {
        groups.push(fold);
        emitOther("(?:"); // captures mean nothing to a splitter
        i++;
      }
      continue;
    }
    if (c === ")") {
      if (groups.length === 0) throw new Refused("an unbalanced )");
      fold = groups.pop()!;
      emitAtom(")");
      i++;
      continue;
    }
    if (c === "|") {
      emitOther("|");
      i++;
      continue;
    }
    if (c === "?" || c === "*" || c === "+" || c === "{") {
      let q: string;
      let len: number;
      if (c === "{") {
        const m = /^\{(\d*)(,?)(\d*)\}/.exec(p.slice(i));
        if (!m || (m[1] === "" && m[3] === "") || (m[1] === "" && m[2] === "")) {
          emitAtom("\\{"); // not a quantifier: a literal brace, as in Oniguruma
          i++;
          continue;
        }
        q = `{${m[1] === "" ? "0" : m[1]}${m[2]}${m[3]}}`;
        len = m[0].length;
      } else {
        q = c;
        len = 1;
      }
      if (quantified) {
        // X*? X+? X?? X{n,m}? are lazy; anything else after a quantifier is possessive or stacked
        // (Oniguruma reads X{n}? as (?:X{n})?, so that one is refused too).
        if (c === "?" && lazyable) {
          out += "?";
          lazyable = false;
          i++;
          continue;
        }
        throw new Refused(c === "+" ? "a possessive or stacked quantifier (X*+, X++, X{n}+)" : c === "?" ? "X{n}? (an optional exact repeat)" : "a stacked quantifier");
      }
      if (!atom) throw new Refused(`a quantifier ${c} with nothing before it`);
      out += q;
      quantified = true;
      lazyable = !/^\{\d+\}$/.test(q);
      i += len;
      continue;
    }
    if (c === ".") {
      emitAtom("[^\\n]");
      i++;
      continue;
    }
    if (c === "^") {
      emitOther("(?<![^\\n])");
      i++;
      continue;
    }
    if (c === "$") {
      emitOther("(?![^\\n])");
      i++;
      continue;
    }
    const ch = String.fromCodePoint(p.codePointAt(i)!);
    emitAtom(c === "]" || c === "}" ? `\\${c}` : literal(ch, false, fold));
    i += ch.length;
  }
  if (groups.length > 0) throw new Refused("an unclosed (");
  return out;
}
