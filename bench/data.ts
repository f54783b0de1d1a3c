/**
 * The prepared data the training benchmarks (train, upcycle, ecss) run on:
 * the folder `sigma data prepare` writes by default. When it is missing or
 * not whole, it is prepared here from the default corpus — with the default
 * tokenizer, trained first if that is missing too — and one line says so;
 * later runs reuse it.
 */
import { existsSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { assembleDefaultCorpus } from "../src/data/defaultCorpus.js";
import type { Manifest } from "../src/data/manifest.js";
import { checkPrepared, ensurePrepared } from "../src/data/prepare.js";
import { DEFAULT_VOCAB, trainOnCorpus } from "../src/data/vocab.js";
import { saveTokenizer } from "../src/tokenizer/hfjson.js";

export const BENCH_DATA = ".sigma/data/default";
/** Where `sigma tokenizer train` and `sigma data prepare` keep the default tokenizer. */
const DEFAULT_TOKENIZER = ".sigma/tokenizer.json";

export interface BenchDataOptions {
  /** Corpus folder; default: the default corpus, assembled if needed. */
  corpus?: string;
  /** tokenizer.json; default: .sigma/tokenizer.json, trained on the corpus if missing. */
  tokenizer?: string;
  log?: (line: string) => void;
}

/** The manifest of `dir`, which is prepared first (atomically) unless it already holds whole prepared data. */
export async function benchData(dir = BENCH_DATA, o: BenchDataOptions = {}): Promise<Manifest> {
  const found = checkPrepared(dir);
  if ("manifest" in found) return found.manifest;
  const t0 = performance.now();
  const corpus = o.corpus ?? assembleDefaultCorpus().dir;
  const tokenizer = o.tokenizer ?? DEFAULT_TOKENIZER;
  if (!existsSync(tokenizer)) {
    mkdirSync(dirname(tokenizer), { recursive: true });
    saveTokenizer((await trainOnCorpus(corpus, { vocabSize: DEFAULT_VOCAB })).tokenizer, tokenizer);
  }
  const r = await ensurePrepared({ corpus, tokenizer, out: dir });
  if (!r.reused) {
    const tokens = r.manifest.domains.reduce((n, d) => n + d.train.tokens + d.val.tokens, 0);
    (o.log ?? console.log)(`prepared the benchmark data in ${dir} (${found.problem}): ${tokens.toLocaleString("en-US")} tokens of ${corpus} with ${tokenizer}, ${((performance.now() - t0) / 1000).toFixed(1)} s; later runs reuse it`);
  }
  return r.manifest;
}
