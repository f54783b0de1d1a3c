/**
 * Structure-aware JSON mutation: parse, change one node (type swaps, huge and
 * odd numbers, path strings, deleted / extra / duplicated keys, deep nesting,
 * huge arrays), serialise. The serialiser writes two things JSON.stringify
 * cannot: raw number literals (1e999 parses as Infinity, 9007199254740993
 * loses a bit, -0) and objects with duplicate keys.
 */
import type { FuzzRng } from "./rng.js";
import { pathString, type PathContext } from "./paths.js";

/** Text written as is (a number literal JSON.stringify would not produce, deep nesting). */
export class Raw {
  constructor(readonly text: string) {}
}

/** An object as an ordered list of entries, duplicates and "__proto__" allowed. */
export class Entries {
  constructor(readonly entries: [string, unknown][]) {}
}

export function serialize(v: unknown): string {
  if (v instanceof Raw) return v.text;
  if (v instanceof Entries) return `{${v.entries.map(([k, x]) => `${JSON.stringify(k)}:${serialize(x)}`).join(",")}}`;
  if (Array.isArray(v)) return `[${v.map(serialize).join(",")}]`;
  if (v !== null && typeof v === "object") return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}:${serialize(x)}`).join(",")}}`;
  if (typeof v === "number" && !Number.isFinite(v)) return "null";
  return JSON.stringify(v) ?? "null";
}

type Path = (string | number)[];

/** Every node's path (the root is []); Raw and Entries nodes are leaves. */
function nodes(v: unknown, at: Path = [], out: Path[] = []): Path[] {
  out.push(at);
  if (v instanceof Raw || v instanceof Entries) return out;
  if (Array.isArray(v)) v.forEach((x, i) => nodes(x, [...at, i], out));
  else if (v !== null && typeof v === "object") for (const [k, x] of Object.entries(v)) nodes(x, [...at, k], out);
  return out;
}

function get(root: unknown, path: Path): unknown {
  let v = root;
  for (const k of path) v = (v as Record<string | number, unknown>)[k];
  return v;
}

/** Sets a node, returning the new root (the root itself may be replaced). */
function set(root: unknown, path: Path, value: unknown): unknown {
  if (path.length === 0) return value;
  const parent = get(root, path.slice(0, -1)) as Record<string | number, unknown>;
  Object.defineProperty(parent, path[path.length - 1]!, { value, writable: true, enumerable: true, configurable: true });
  return root;
}

export const showPath = (p: Path): string => "$" + p.map((k) => (typeof k === "number" ? `[${k}]` : /^[A-Za-z_$][\w$]*$/.test(k) ? `.${k}` : `[${JSON.stringify(k)}]`)).join("");

const short = (v: unknown): string => {
  const s = v instanceof Raw ? v.text : v instanceof Entries ? serialize(v) : JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 60)}…(${s.length} chars)` : s;
};

/** Numbers that break assumptions: bounds, precision, sign, overflow, subnormals. */
const NUMBERS: (number | Raw)[] = [
  0, -1, 1, 2, -0.5, 0.5, 1.5, 255, 256, 4096, 65535, 65536, 65537, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 32 + 1, 2 ** 53, 1e9, 1e15, 1e308, -1e308, -(2 ** 31), Number.MIN_VALUE,
  new Raw("9007199254740993"), new Raw("1e999"), new Raw("-1e999"), new Raw("-0"), new Raw("1e-400"), new Raw("18446744073709551616"), new Raw("1.0"), new Raw("1E2"),
];

function numberTweak(r: FuzzRng, n: number): number | Raw {
  return r.pick<() => number | Raw>([
    () => n + 1,
    () => n - 1,
    () => -n,
    () => n * 2,
    () => n * 1000,
    () => n * 1e6,
    () => n / 3,
    () => Math.floor(n / 2),
    () => r.pick(NUMBERS),
    () => r.pick(NUMBERS),
  ])();
}

const STRINGS = ["", " ", "x", "NaN", "Infinity", "-1", "1e308", "0x10", "true", "null", "__proto__", "constructor", "ünïcødé 测试", "\u0000", "\n  at evil (x.js:1:1)", "\ud800", "%s%n", "a".repeat(10_000)];

function stringTweak(r: FuzzRng, s: string, ctx: PathContext): string {
  return r.weighted<() => string>([
    [4, () => pathString(r, ctx)],
    [3, () => r.pick(STRINGS)],
    [1, () => s + s],
    [1, () => s.slice(0, r.int(s.length + 1))],
    [1, () => s.toUpperCase()],
    [1, () => s + "\u0000"],
  ])();
}

/** A value of another kind than `v`. */
function typeSwap(r: FuzzRng, v: unknown): unknown {
  const options: unknown[] = [null, true, false, 0, 1, -1, "", "1", "x", [], {}, [v], { value: v }, new Raw("1e999")];
  return r.pick(options.filter((o) => typeof o !== typeof v || (Array.isArray(o) !== Array.isArray(v) && o !== null)));
}

function deepNesting(r: FuzzRng): Raw {
  const depth = r.pick([100, 1000, 10_000, 200_000]);
  return r.chance(0.5) ? new Raw("[".repeat(depth) + "]".repeat(depth)) : new Raw('{"a":'.repeat(depth) + "1" + "}".repeat(depth));
}

/** One mutation of the tree; returns the new root and a description. */
export function mutateTree(r: FuzzRng, root: unknown, ctx: PathContext, opts: { avoid?: (p: Path) => boolean } = {}): { root: unknown; what: string } {
  const all = nodes(root).filter((p) => !opts.avoid?.(p));
  const path = all.length ? r.pick(all) : [];
  const v = get(root, path);
  const at = showPath(path);
  const put = (x: unknown, what: string) => ({ root: set(root, path, x), what: `${at}: ${what} ${short(x)}` });

  if (Array.isArray(v) && r.chance(0.5)) {
    const arr = v as unknown[];
    return r.pick<() => { root: unknown; what: string }>([
      () => put([], "emptied to"),
      () => (arr.length ? put(arr.filter((_, i) => i !== r.int(arr.length)), "dropped an element:") : put([null], "added an element:")),
      () => (arr.length ? put([...arr, arr[r.int(arr.length)]], "duplicated an element:") : put([0], "added an element:")),
      () => put([...arr].reverse(), "reversed:"),
      () => {
        const first = arr.length ? serialize(arr[0]) : "0";
        const elem = first.length <= 16 ? first : "0";
        return put(new Raw(`[${Array(r.pick([1000, 100_000, 1_000_000])).fill(elem).join(",")}]`), "huge array");
      },
      () => put([...arr, typeSwap(r, arr[0])], "appended an odd element:"),
    ])();
  }
  if (v !== null && typeof v === "object" && !(v instanceof Raw) && !(v instanceof Entries) && !Array.isArray(v) && r.chance(0.6)) {
    const obj = v as Record<string, unknown>;
    const keys = Object.keys(obj);
    const k = keys.length ? r.pick(keys) : "x";
    return r.pick<() => { root: unknown; what: string }>([
      () => {
        const { [k]: _, ...rest } = obj;
        return { root: set(root, path, rest), what: `${at}: deleted key "${k}"` };
      },
      () => {
        const extra = r.pick(["extra", "__proto__", "constructor", "toString", "", k.toUpperCase(), `${k} `]);
        const value = r.pick<unknown>([1, "x", null, {}, { polluted: true }, obj[k]]);
        return put(new Entries([...Object.entries(obj), [extra, value]]), `added key "${extra}":`);
      },
      () => put(new Entries([...Object.entries(obj), [k, typeSwap(r, obj[k])]]), `duplicated key "${k}" (last wins):`),
      () => put(new Entries([[k, typeSwap(r, obj[k])], ...Object.entries(obj)]), `duplicated key "${k}" (first differs):`),
      () => {
        const entries = Object.entries(obj).map(([kk, x]): [string, unknown] => [kk === k ? r.pick([`${k}_`, k.slice(1), "", "__proto__"]) : kk, x]);
        return put(new Entries(entries), `renamed key "${k}":`);
      },
      () => put({}, "emptied to"),
    ])();
  }
  if (typeof v === "number") {
    return r.chance(0.8) ? put(numberTweak(r, v), "number") : put(typeSwap(r, v), "type swap to");
  }
  if (typeof v === "string") return r.chance(0.8) ? put(stringTweak(r, v, ctx), "string") : put(typeSwap(r, v), "type swap to");
  return r.weighted<() => { root: unknown; what: string }>([
    [5, () => put(typeSwap(r, v), "type swap to")],
    [2, () => put(r.pick(NUMBERS), "number")],
    [2, () => put(pathString(r, ctx), "path string")],
    [1, () => put(deepNesting(r), "deep nesting")],
  ])();
}

/**
 * Mutates JSON text: mostly 1–3 structural mutations of the parsed tree,
 * sometimes a raw textual edit (handled by the caller's byte mutators).
 * Returns null when the text is not JSON (the caller falls back to bytes).
 */
export function mutateJsonText(r: FuzzRng, text: string, ctx: PathContext, opts: { avoid?: (p: Path) => boolean; pretty?: boolean } = {}): { text: string; what: string[] } | null {
  let root: unknown;
  try {
    root = JSON.parse(text);
  } catch {
    return null;
  }
  const what: string[] = [];
  const n = r.weighted([[6, 1], [3, 2], [1, 3]] as const);
  for (let i = 0; i < n; i++) {
    const m = mutateTree(r, root, ctx, opts);
    root = m.root;
    what.push(m.what);
  }
  return { text: serialize(root), what };
}
