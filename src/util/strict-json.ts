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
