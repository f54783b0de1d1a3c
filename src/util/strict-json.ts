/**
 * JSON read strictly: JSON.parse keeps the last of two equal keys in one
 * object without a word, so a file with `"step": 10, "step": 99` or two
 * "vocab" objects would load as something its writer never meant. Sigma's
 * files never repeat a key; these helpers find one that does.
 */

/**
 * The first key that appears twice in one object of `text` (which must be
 * valid JSON: call after JSON.parse succeeded), as `{ key, at }` with `at`
 * the path of the object holding it ("" for the top level), or null.
 * One pass, no recursion: linear in the text whatever its nesting.
 */
export function findDuplicateKey(text: string): { key: string; at: string } | null {
  // One entry per open object or array: the keys seen so far (null for an array) and the key being read.
  const keys: (Set<string> | null)[] = [];
  const names: string[] = [];
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      let escaped = false;
      for (;;) {
        const d = text.charCodeAt(j);
        if (d === 0x5c /* \ */) {
          escaped = true;
          j += 2;
        } else if (d === 0x22 || Number.isNaN(d)) break;
        else j++;
      }
      if (expectKey) {
        const key = escaped ? (JSON.parse(text.slice(i, j + 1)) as string) : text.slice(i + 1, j);
        const seen = keys[keys.length - 1]!;
        if (seen.has(key)) return { key, at: names.slice(0, -1).join(".").replaceAll(".[]", "[]") };
        seen.add(key);
        names[names.length - 1] = key;
        expectKey = false;
      }
      i = j;
    } else if (c === 0x7b /* { */) {
      keys.push(new Set());
      names.push("");
      expectKey = true;
    } else if (c === 0x5b /* [ */) {
      keys.push(null);
      names.push("[]");
      expectKey = false;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      keys.pop();
      names.pop();
      expectKey = false;
    } else if (c === 0x2c /* , */) {
      expectKey = keys[keys.length - 1] instanceof Set;
    }
  }
  return null;
}

/**
 * JSON.parse that also rejects a repeated key; the Error's message says what
 * is wrong (the caller adds the file name).
 */
export function parseJsonStrict(text: string): unknown {
  const value: unknown = JSON.parse(text);
  const dup = findDuplicateKey(text);
  if (dup) throw new SyntaxError(`the key ${JSON.stringify(dup.key)} appears twice in ${dup.at ? `"${dup.at}"` : "the top-level object"}`);
  return value;
}

/**
 * A value read from a file, shown in an error message: at most `max`
 * characters, nesting cut at three levels (so a 100,000-deep array prints as
 * `[[[…]]]` instead of overflowing the stack), control characters escaped.
 * Never throws.
 */
export function showJson(x: unknown, max = 80): string {
  const render = (v: unknown, depth: number): string => {
    if (v === null || typeof v !== "object") {
      if (typeof v === "string") return JSON.stringify(v.length > max ? `${v.slice(0, max)}…` : v);
      if (typeof v === "number" || typeof v === "boolean") return String(v);
      return v === undefined ? "undefined" : typeof v;
    }
    if (depth >= 3) return Array.isArray(v) ? "[…]" : "{…}";
    const parts: string[] = [];
    let len = 0;
    const entries = Array.isArray(v) ? v.map((e, i) => [String(i), e] as const) : Object.entries(v);
    for (const [k, e] of entries) {
      const s = Array.isArray(v) ? render(e, depth + 1) : `${JSON.stringify(k.slice(0, 40))}:${render(e, depth + 1)}`;
      parts.push(s);
      len += s.length + 1;
      if (len > max) {
        parts.push("…");
        break;
      }
    }
    return Array.isArray(v) ? `[${parts.join(",")}]` : `{${parts.join(",")}}`;
  };
  const s = render(x, 0);
  return oneLine(s.length > max ? `${s.slice(0, max)}…` : s);
}

/** `text` as one printable line: newlines and other control characters escaped, at most `max` characters. */
export function oneLine(text: string, max = 240): string {
  // eslint-disable-next-line no-control-regex
  const s = text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, (c) => (c === "\n" ? "\\n" : c === "\t" ? "\\t" : `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`));
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

/** Whether two parsed JSON values are the same (false, never a stack overflow, for absurdly deep input). */
export function sameJson(a: unknown, b: unknown): boolean {
  try {
    return JSON.stringify(a) === JSON.stringify(b);
  } catch {
    return false;
  }
}

/** A JSON.parse error as one printable line (V8's message quotes the file's bytes, newlines included). */
export const jsonErrorText = (e: unknown): string => oneLine(e instanceof Error ? e.message : String(e), 200);

/**
 * Checks the size of parsed JSON before a schema sees it: a schema reports one
 * issue per bad element, so a million-element array of the wrong type would
 * take seconds to refuse. Returns what is too big (a path and a count), or null.
 */
export function jsonTooBig(value: unknown, limits: { maxItems?: number; maxDepth?: number } = {}): string | null {
  const maxItems = limits.maxItems ?? 100_000;
  const maxDepth = limits.maxDepth ?? 32;
  const walk = (v: unknown, path: string, depth: number): string | null => {
    if (v === null || typeof v !== "object") return null;
    if (depth > maxDepth) return `${path || "(top level)"} is nested more than ${maxDepth} levels deep`;
    const entries = Array.isArray(v) ? v : Object.values(v);
    if (entries.length > maxItems) return `${path || "(top level)"} has ${entries.length} ${Array.isArray(v) ? "elements" : "keys"} (at most ${maxItems})`;
    const keys = Array.isArray(v) ? null : Object.keys(v);
    for (let i = 0; i < entries.length; i++) {
      const r = walk(entries[i], path ? `${path}.${keys ? keys[i]!.slice(0, 40) : i}` : keys ? keys[i]!.slice(0, 40) : String(i), depth + 1);
      if (r) return r;
    }
    return null;
  };
  return walk(value, "", 0);
}
