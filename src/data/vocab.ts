/**
 * Training a tokenizer on a corpus folder: stream its records through the
 * word counter (optionally only the first `maxBytesPerDomain` of each domain,
 * to train fast on a large corpus), then run BPE. Lives in data/ because it
 * reads corpora; the tokenizer itself knows nothing about files.
 */
import { SigmaError } from "../util/errors.js";
import type { Tokenizer } from "../tokenizer/codec.js";
import { WordCounter, trainBpe } from "../tokenizer/trainer.js";
import { DEFAULT_DOMAINS, DEFAULT_LANGS } from "../tokenizer/specials.js";
import { readCorpus, recordBytes, SkipReport } from "./ingest.js";

export interface CorpusTrainOptions {
  vocabSize?: number;
  domains?: readonly string[];
  langs?: readonly string[];
  maxBytesPerDomain?: number;
  lenient?: boolean;
  onProgress?: (stage: "count" | "merge", done: number, total: number) => void;
}

export interface CorpusTrainResult {
  tokenizer: Tokenizer;
  bytes: number;
  words: number;
  countSeconds: number;
  mergeSeconds: number;
  skipped: SkipReport;
}

/** Default vocabulary: 8192 suits the small default corpus and the demo models [ours]. */
export const DEFAULT_VOCAB = 8192;

export async function trainOnCorpus(corpus: string, o: CorpusTrainOptions = {}): Promise<CorpusTrainResult> {
  const domains = o.domains ?? DEFAULT_DOMAINS;
  const langs = o.langs ?? DEFAULT_LANGS;
  const counter = new WordCounter();
  const skipped = new SkipReport();
  const perDomain = new Map<string, number>();
  const t0 = performance.now();
  let docs = 0;
  for await (const rec of readCorpus(corpus, { domains, langs, lenient: o.lenient }, skipped)) {
    const used = perDomain.get(rec.domain) ?? 0;
    if (o.maxBytesPerDomain !== undefined && used >= o.maxBytesPerDomain) continue; // sampling, not skipping
    perDomain.set(rec.domain, used + recordBytes(rec));
    if (rec.text !== undefined) counter.add(rec.text);
    else for (const [, s] of rec.translation!) counter.add(s);
    if (o.onProgress && ++docs % 2000 === 0) o.onProgress("count", counter.bytes, 0);
  }
  if (counter.counts.size === 0) {
    throw new SigmaError(`Empty corpus: ${corpus} has no text to train on${skipped.total > 0 ? ` (${skipped.total} records skipped)` : ""}`, "add text under <corpus>/<domain>/, or leave out --corpus to use the default corpus");
  }
  const t1 = performance.now();
  const tokenizer = trainBpe(counter, {
    vocabSize: o.vocabSize ?? DEFAULT_VOCAB,
    domains,
    langs,
    onProgress: o.onProgress ? (m, t) => o.onProgress!("merge", m, t) : undefined,
  });
  const t2 = performance.now();
  return { tokenizer, bytes: counter.bytes, words: counter.counts.size, countSeconds: (t1 - t0) / 1000, mergeSeconds: (t2 - t1) / 1000, skipped };
}
