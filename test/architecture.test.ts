// The shape of the code (issue 20): every import in src/ is read with the
// TypeScript parser — `import … from`, `export … from`, `import("…")` in code
// and in types — and
//  (a) no file imports itself through a chain of imports;
//  (b) folders form layers that point one way: a file imports only from its
//      own folder or from a folder of strictly lower rank;
//  (c) routers are plug-ins: outside src/moe/routers/ no file imports a
//      concrete router file or spells a router kind as a string.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import ts from "typescript";
import { ROUTER_KINDS } from "../src/moe/routers/index.js";

const SRC = resolve(import.meta.dirname, "../src");

/**
 * Folder ranks, lowest first (util ← tensor ← backend ← autograd ← ops ← nn ←
 * moe ← models ← store ← serve ← train ← api ← cli). Folders of equal rank do
 * not import each other. A new folder must be given a rank here.
 */
const RANK: Record<string, number> = {
  util: 0,
  tensor: 1,
  tokenizer: 1,
  checkpoint: 1,
  backend: 2,
  data: 2,
  // The MPI binding's wrapper (communicators, bucketed allreduce): low, so that moe can exchange tokens over it.
  comm: 2,
  autograd: 3,
  ops: 4,
  nn: 5,
  moe: 6,
  optim: 6,
  models: 7,
  store: 8,
  serve: 9,
  train: 10,
  balance: 10,
  api: 11,
  /** src/index.ts, the package entry: it re-exports the api and the public types beneath it. */
  "index.ts": 12,
  cli: 12,
};

/** Files outside src/moe/routers/ that may spell a router kind: the demo's default config, the model presets (a preset is a named architecture, its router included: Pangu Pro MoE routes with MoGE), the synthetic balance study and scaling predictions, whose routing rules (their own, src/balance/synthetic.ts and scaling.ts) are named RRE, top-k and MoGE, and the Hugging Face adapter, which maps each architecture's routing rule to the Sigma router that computes it (and back). */
const KIND_ALLOWED = new Set(["cli/demo.ts", "models/presets.ts", "models/import/hf.ts", "balance/study.ts", "balance/scaling.ts"]);
const ROUTERS_DIR = "moe/routers/";
/** The router folder's public files: the interface and the registry. */
const ROUTERS_PUBLIC = new Set(["moe/routers/router.ts", "moe/routers/index.ts"]);

interface SourceFile {
  /** Path under src/, with "/". */
  path: string;
  /** Imported files (paths under src/) with the line of each import. */
  imports: { to: string; line: number }[];
  /** String literals in code (comments are not code), with their lines. */
  strings: { text: string; line: number }[];
}

function listTs(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? listTs(p) : p.endsWith(".ts") ? [p] : [];
  });
}

/** The relative import specifiers (with lines) and the string literals of a TypeScript text. */
function parse(text: string, name: string): { specs: { spec: string; line: number }[]; strings: { text: string; line: number }[] } {
  const sf = ts.createSourceFile(name, text, ts.ScriptTarget.ES2022, true);
  const lineOf = (n: ts.Node) => sf.getLineAndCharacterOfPosition(n.getStart(sf)).line + 1;
  const specs: { spec: string; line: number }[] = [];
  const strings: { text: string; line: number }[] = [];
  const addImport = (spec: ts.Node | undefined) => {
    if (spec && ts.isStringLiteralLike(spec) && spec.text.startsWith(".")) specs.push({ spec: spec.text, line: lineOf(spec) });
  };
  const visit = (n: ts.Node): void => {
    if (ts.isImportDeclaration(n) || ts.isExportDeclaration(n)) addImport(n.moduleSpecifier);
    else if (ts.isCallExpression(n) && n.expression.kind === ts.SyntaxKind.ImportKeyword) addImport(n.arguments[0]);
    else if (ts.isImportTypeNode(n) && ts.isLiteralTypeNode(n.argument)) addImport(n.argument.literal);
    else if (ts.isImportEqualsDeclaration(n) && ts.isExternalModuleReference(n.moduleReference)) addImport(n.moduleReference.expression);
    if (ts.isStringLiteral(n) || ts.isNoSubstitutionTemplateLiteral(n)) strings.push({ text: n.text, line: lineOf(n) });
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return { specs, strings };
}

function readSource(abs: string): SourceFile {
  const path = relative(SRC, abs).split("\\").join("/");
  const { specs, strings } = parse(readFileSync(abs, "utf8"), abs);
  const imports = specs.map(({ spec, line }) => {
    const target = resolve(dirname(abs), spec.replace(/\.js$/, ".ts"));
    assert.ok(existsSync(target), `${path}:${line}: import "${spec}" resolves to no file`);
    return { to: relative(SRC, target).split("\\").join("/"), line };
  });
  return { path, imports, strings };
}

const files = listTs(SRC).map(readSource);
const byPath = new Map(files.map((f) => [f.path, f]));

/** The folder (layer) of a path under src/: its first directory, or the file's own name at the top. */
const layerOf = (path: string): string => path.split("/")[0]!;

/** One import cycle through `start` (a list of paths ending where it starts), or null. */
function cycleThrough(start: string): string[] | null {
  const seen = new Set<string>();
  const stack: string[] = [];
  const dfs = (p: string): string[] | null => {
    stack.push(p);
    for (const { to } of byPath.get(p)?.imports ?? []) {
      if (to === start) return [...stack, to];
      if (!seen.has(to)) {
        seen.add(to);
        const found = dfs(to);
        if (found) return found;
      }
    }
    stack.pop();
    return null;
  };
  return dfs(start);
}

test("the import parser sees every form of import, and no comment", () => {
  const { specs, strings } = parse(
    [
      'import { a } from "./a.js";',
      'import type { B } from "./b.js";',
      'import "./c.js";',
      'export { d } from "./d.js";',
      'export * from "./e.js";',
      'const f = await import("./f.js");',
      'type G = import("./g.js").G;',
      'import h = require("./h.js");',
      '// import { x } from "./comment.js"; kind "rre"',
      '/* export * from "./block.js"; */',
      'const s = `${"rre"}` + "moge" + `topk`;',
      'import { z } from "zod";',
    ].join("\n"),
    "sample.ts",
  );
  assert.deepEqual(specs.map((s) => s.spec), ["./a.js", "./b.js", "./c.js", "./d.js", "./e.js", "./f.js", "./g.js", "./h.js"]);
  assert.deepEqual(strings.filter((s) => ["rre", "moge", "topk"].includes(s.text)).map((s) => [s.text, s.line]), [["rre", 11], ["moge", 11], ["topk", 11]]);
  // And on the real tree: one of each kind it uses.
  assert.ok(files.length > 100, `only ${files.length} files under src/`);
  const has = (from: string, to: string) => byPath.get(from)!.imports.some((i) => i.to === to);
  assert.ok(has("models/config.ts", "moe/routers/index.ts"), "static import");
  assert.ok(has("train/ecss.ts", "train/ecss-model.ts"), "export … from");
  assert.ok(has("tensor/pool.ts", "tensor/dtype.ts"), "import type");
});

test("(a) no file-level import cycle", () => {
  const cycles: string[] = [];
  const reported = new Set<string>();
  for (const f of files) {
    if (reported.has(f.path)) continue;
    const cycle = cycleThrough(f.path);
    if (!cycle) continue;
    cycle.forEach((p) => reported.add(p));
    cycles.push(cycle.join(" → "));
  }
  assert.deepEqual(cycles, [], `import cycles:\n  ${cycles.join("\n  ")}`);
});

test("(b) folders are layers that point one way: each import goes to the same folder or one of lower rank", () => {
  const unranked = [...new Set(files.map((f) => layerOf(f.path)))].filter((l) => RANK[l] === undefined);
  assert.deepEqual(unranked, [], `folders without a rank in test/architecture.test.ts: ${unranked.join(", ")}`);
  const bad: string[] = [];
  for (const f of files) {
    const from = layerOf(f.path);
    for (const { to, line } of f.imports) {
      const into = layerOf(to);
      if (into !== from && !(RANK[into]! < RANK[from]!)) bad.push(`${f.path}:${line} → ${to} (${from} ${RANK[from]} → ${into} ${RANK[into]})`);
    }
  }
  assert.deepEqual(bad, [], `imports against the layers:\n  ${bad.join("\n  ")}`);
});

test("(c) routers are plug-ins: outside src/moe/routers/ nothing imports a router's file or spells a router kind", () => {
  assert.ok(ROUTER_KINDS.length >= 3, `the registry lists ${ROUTER_KINDS.join(", ")}`);
  for (const p of KIND_ALLOWED) assert.ok(byPath.has(p), `the allow-list names ${p}, which no longer exists`);
  const kinds = new Set(ROUTER_KINDS);
  const bad: string[] = [];
  for (const f of files) {
    if (f.path.startsWith(ROUTERS_DIR)) continue;
    for (const { to, line } of f.imports) {
      if (to.startsWith(ROUTERS_DIR) && !ROUTERS_PUBLIC.has(to)) bad.push(`${f.path}:${line} imports ${to} (use moe/routers/index.ts or router.ts)`);
    }
    if (KIND_ALLOWED.has(f.path)) continue;
    for (const { text, line } of f.strings) if (kinds.has(text)) bad.push(`${f.path}:${line} spells the router kind "${text}"`);
  }
  assert.deepEqual(bad, [], `router names outside src/moe/routers/:\n  ${bad.join("\n  ")}`);
});
