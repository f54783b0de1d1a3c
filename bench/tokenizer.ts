/**
 * `npm run bench -- tokenizer`: byte-level BPE training time on the default
 * corpus, and single-thread encode throughput in MB/s.
 *
 * Validates before it times: the trained tokenizer must round-trip every
 * document of the corpus (decode(encode(s)) === s) before any throughput is
 * reported. Encode is timed twice: "cold" with a fresh tokenizer (every
 * pre-token goes through BPE) and "warm" (a second pass, pre-tokens cached),
 * since real data prep sees mostly the warm case after the first megabytes.
 *
 * A last line times the same vocabulary in a Hugging Face layout (Llama-3's
 * pre-tokenizer) through the general loader, src/tokenizer/hf.ts.
 *
 * Options: --vocab <n> (default 8192), --repeat <n> timed encode passes (default 3).
 */
import { assembleDefaultCorpus } from "../src/data/defaultCorpus.js";
import { readCorpus, SkipReport } from "../src/data/ingest.js";
import { trainOnCorpus } from "../src/data/vocab.js";
import { fromHfJson, parseTokenizerJson, toHfJson } from "../src/tokenizer/hfjson.js";
import { DEFAULT_DOMAINS, DEFAULT_LANGS } from "../src/tokenizer/specials.js";

function arg(args: string[], name: string, dflt: number): number {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
}

export async function run(args: string[]): Promise<void> {
  const vocab = arg(args, "vocab", 8192);
  const repeat = arg(args, "repeat", 3);

  let t = performance.now();
  const corpus = assembleDefaultCorpus();
  const assembleS = (performance.now() - t) / 1000;
  console.log(`default corpus ${corpus.reused ? "reused" : `assembled in ${assembleS.toFixed(2)} s`} at ${corpus.dir} (sha256 ${corpus.sha256})`);

  const r = await trainOnCorpus(corpus.dir, { vocabSize: vocab });
  console.log(`train: ${(r.bytes / 1e6).toFixed(2)} MB, ${r.words} distinct pre-tokens, vocab ${r.tokenizer.vocabSize}: count ${r.countSeconds.toFixed(2)} s + merges ${r.mergeSeconds.toFixed(2)} s = ${(r.countSeconds + r.mergeSeconds).toFixed(2)} s`);

  // Texts per domain, as prepare sees them.
  const byDomain = new Map<string, string[]>();
  for await (const rec of readCorpus(corpus.dir, { domains: DEFAULT_DOMAINS, langs: DEFAULT_LANGS }, new SkipReport())) {
    const texts = byDomain.get(rec.domain) ?? [];
    if (rec.text !== undefined) texts.push(rec.text);
    else for (const [, s] of rec.translation!) texts.push(s);
    byDomain.set(rec.domain, texts);
  }
  const json = toHfJson(r.tokenizer);
  for (const texts of byDomain.values()) {
    for (const s of texts) if (r.tokenizer.decode(r.tokenizer.encodeOrdinary(s)) !== s) throw new Error(`round trip failed on ${JSON.stringify(s.slice(0, 80))}`);
  }
  console.log("validated: every document round-trips");

  console.log("\ndomain   MB      tokens   bytes/token  cold MB/s  warm MB/s");
  let allBytes = 0;
  let allCold = 0;
  let allWarm = 0;
  for (const [domain, texts] of byDomain) {
    const bytes = texts.reduce((n, s) => n + Buffer.byteLength(s), 0);
    const cold = fromHfJson(json, "bench"); // fresh cache
    t = performance.now();
    let tokens = 0;
    for (const s of texts) tokens += cold.encodeOrdinary(s).length;
    const coldS = (performance.now() - t) / 1000;
    let warmS = Infinity;
    for (let k = 0; k < repeat; k++) {
      t = performance.now();
      for (const s of texts) cold.encodeOrdinary(s);
      warmS = Math.min(warmS, (performance.now() - t) / 1000);
    }
    allBytes += bytes;
    allCold += coldS;
    allWarm += warmS;
    console.log(`${domain.padEnd(6)} ${(bytes / 1e6).toFixed(2).padStart(5)} ${String(tokens).padStart(10)} ${(bytes / tokens).toFixed(2).padStart(12)} ${(bytes / 1e6 / coldS).toFixed(2).padStart(10)} ${(bytes / 1e6 / warmS).toFixed(2).padStart(10)}`);
  }
  console.log(`${"all".padEnd(6)} ${(allBytes / 1e6).toFixed(2).padStart(5)} ${"".padStart(10)} ${"".padStart(12)} ${(allBytes / 1e6 / allCold).toFixed(2).padStart(10)} ${(allBytes / 1e6 / allWarm).toFixed(2).padStart(10)}`);

  // The same vocabulary and merges in a Hugging Face layout (Llama-3's pre-tokenizer regex, ignore_merges),
  // read by the general loader (src/tokenizer/hf.ts): its encode speed beside Sigma's own codec's.
  const j = JSON.parse(json);
  j.pre_tokenizer.pretokenizers[0].pattern.Regex = LLAMA3_REGEX;
  j.model.ignore_merges = true;
  const hf = parseTokenizerJson(JSON.stringify(j), "bench (Llama-3 layout)");
  const texts = [...byDomain.values()].flat();
  t = performance.now();
  for (const s of texts) hf.encodeOrdinary(s);
  const hfCold = (performance.now() - t) / 1000;
  let hfWarm = Infinity;
  for (let k = 0; k < repeat; k++) {
    t = performance.now();
    for (const s of texts) hf.encodeOrdinary(s);
    hfWarm = Math.min(hfWarm, (performance.now() - t) / 1000);
  }
  console.log(`${"hf".padEnd(6)} ${(allBytes / 1e6).toFixed(2).padStart(5)} ${"".padStart(10)} ${"".padStart(12)} ${(allBytes / 1e6 / hfCold).toFixed(2).padStart(10)} ${(allBytes / 1e6 / hfWarm).toFixed(2).padStart(10)}   (Llama-3 layout; ${(allCold / hfCold).toFixed(2)}x / ${(allWarm / hfWarm).toFixed(2)}x Sigma's codec)`);
}

const LLAMA3_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// Runnable on its own too: node --import tsx bench/tokenizer.ts
if (import.meta.url === `file://${process.argv[1]}`) await run(process.argv.slice(2));
