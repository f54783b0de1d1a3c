/**
 * What the llama.cpp cross-checks share (test/gguf-llama.test.ts,
 * test/gguf-llama-family.test.ts): a small trained vocabulary, Sigma's and
 * llama.cpp's next-token log-probabilities, their gap, greedy comparison with
 * the tie rule, and @huggingface/gguf's reading of a written file.
 */
import assert from "node:assert/strict";
import { gguf as hfGguf } from "@huggingface/gguf";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { getLlama, LlamaLogLevel, type Llama, type Token } from "node-llama-cpp";
import { noGrad } from "../src/autograd/tape.js";
import { GGML_TYPES, readGguf, type GgufValue } from "../src/checkpoint/gguf.js";
import { modelOfGguf } from "../src/models/gguf.js";
import { HfTokenizer } from "../src/tokenizer/hf.js";
import { parseTokenizerJson } from "../src/tokenizer/hfjson.js";
import type { PanguSigma } from "../src/models/pangu-sigma.js";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import type { Tokenizer } from "../src/tokenizer/codec.js";

// Lines ending "!\n" and ".\n": Sigma's split keeps punctuation with the line break after it, so merges such as "!\n" are learnt — GPT-2's split would cut them apart.
export const TEXT = "the quick brown fox jumps over the lazy dog.\nthe cat sat on the mat, then the dog ate the cat's dinner!\n123 4567 wow!\n";
export function tokenizer(): Tokenizer {
  const wc = new WordCounter();
  wc.add(TEXT.repeat(3));
  return trainBpe(wc, { domains: ["en"], langs: [], vocabSize: 320, minFrequency: 1 });
}

export function logSoftmax(row: ArrayLike<number>): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < row.length; i++) m = Math.max(m, row[i]!);
  let s = 0;
  for (let i = 0; i < row.length; i++) s += Math.exp(row[i]! - m);
  const lse = m + Math.log(s);
  return Float64Array.from(row, (x) => x - lse);
}

/** Sigma's next-token log-probabilities after each prefix of `tokens` (one forward). */
export function sigmaLogProbs(model: PanguSigma, tokens: number[]): Float64Array[] {
  const V = model.config.vocabSize;
  const logits = noGrad(() => model.forward({ tokens: Int32Array.from(tokens), domains: Int32Array.of(0), B: 1, T: tokens.length }).logits.data);
  return tokens.map((_, t) => logSoftmax(logits.subarray(t * V, (t + 1) * V)));
}

export const argmax = (a: ArrayLike<number>): number => {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
};

/** llama.cpp's greedy continuation of `prompt` for `steps` tokens, with the log-probabilities it chose from at each step. */
export async function llamaGreedy(llama: Llama, path: string, prompt: number[], steps: number, V: number): Promise<{ tokens: number[]; logProbs: Float64Array[] }> {
  const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
  // f32 K/V cache (the default f16 one would round keys and values), no flash attention: the plain f32 attention path.
  const ctx = await model.createContext({ contextSize: 128, batchSize: 128, threads: 1, flashAttention: false, experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32" });
  try {
    const seq = ctx.getSequence();
    const tokens: number[] = [];
    const logProbs: Float64Array[] = [];
    const want = { generateNext: { token: true, probabilities: true } } as const;
    let input: Parameters<typeof seq.controlledEvaluate>[0] = (prompt as Token[]).map((t, i) => (i === prompt.length - 1 ? [t, want] : t));
    for (let s = 0; s < steps; s++) {
      const out = await seq.controlledEvaluate(input);
      const next = out[out.length - 1]!.next!;
      const lp = new Float64Array(V);
      assert.equal(next.probabilities!.size, V, "llama.cpp gives a probability for every token");
      for (const [id, p] of next.probabilities!) lp[id] = Math.log(p);
      logProbs.push(lp);
      tokens.push(next.token!);
      input = [[next.token! as Token, want]];
    }
    return { tokens, logProbs };
  } finally {
    await ctx.dispose();
    await model.dispose();
  }
}

/** max over the vocabulary of |a − b|, relative to max |a|. */
export function relativeGap(a: Float64Array, b: Float64Array): number {
  let gap = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    gap = Math.max(gap, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(a[i]!));
  }
  return gap / scale;
}

/** @huggingface/gguf's reading of the file agrees with what was written: every metadata value and tensor info. */
export async function checkWithHfParser(path: string, written: { metadata: Map<string, GgufValue>; tensors: { name: string; type: string; ne: number[] }[] }): Promise<void> {
  const { metadata, tensorInfos } = await hfGguf(path, { allowLocalFile: true });
  const plain = (v: GgufValue): unknown => (v.type === "array" ? v.value.map((x) => (typeof x === "object" ? plain(x as GgufValue) : x)) : v.value);
  for (const [k, v] of written.metadata) {
    const theirs = (metadata as Record<string, unknown>)[k];
    if (v.type === "f32") assert.equal(theirs, Math.fround(v.value), k);
    else if (v.type === "u64" || v.type === "i64") assert.equal(BigInt(theirs as number | bigint), v.value, k);
    else assert.deepEqual(theirs, plain(v), k);
  }
  assert.equal((metadata as Record<string, unknown>).version, 3);
  assert.equal(tensorInfos.length, written.tensors.length);
  written.tensors.forEach((t, i) => {
    const info = tensorInfos[i]!;
    assert.equal(info.name, t.name);
    assert.deepEqual(info.shape.map(Number), t.ne, t.name);
    assert.equal(info.dtype, GGML_TYPES[t.type as keyof typeof GGML_TYPES].id, t.name);
  });
}


/**
 * llama.cpp's greedy continuation of each prompt against Sigma's: the same
 * token at each step except near-ties (Sigma's two best within twice the
 * bound; both then continue with llama.cpp's token), at most `maxTies` of
 * them, and next-token log-probs within `bound` relative at every step.
 */
export async function compareGreedy(llama: Llama, path: string, model: PanguSigma, prompts: number[][], steps: number, bound = 1e-3, maxTies = 2): Promise<number> {
  let ties = 0;
  let worstAll = 0;
  const V = model.config.vocabSize;
  for (const prompt of prompts) {
    const theirs = await llamaGreedy(llama, path, prompt, steps, V);
    const seq = [...prompt];
    let worst = 0;
    for (let s = 0; s < steps; s++) {
      const mine = sigmaLogProbs(model, seq).at(-1)!;
      worst = Math.max(worst, relativeGap(mine, theirs.logProbs[s]!));
      const next = argmax(mine);
      const chosen = theirs.tokens[s]!;
      if (chosen !== next) {
        // A tie within the bound: two tokens whose log-probs differ by less than twice the allowed gap may swap places. Anything else is a different function.
        const margin = mine[next]! - mine[chosen]!;
        const eps = bound * Math.max(...mine.map(Math.abs));
        assert.ok(margin <= 2 * eps, `prompt [${prompt}] step ${s}: llama.cpp chose ${chosen}, Sigma ${next} (Sigma's margin ${margin.toExponential(2)} is no tie)`);
        ties++;
      }
      seq.push(chosen);
    }
    assert.ok(worst <= bound, `prompt [${prompt}]: log-probs differ by ${worst.toExponential(2)} relative (bound ${bound})`);
    worstAll = Math.max(worstAll, worst);
  }
  // Ties are rare; many would mean the rule above hides a real difference.
  assert.ok(ties <= maxTies, `${ties} near-ties in ${prompts.length * steps} steps`);
  return worstAll;
}

/**
 * A test file's temporary folder and llama.cpp (CPU, the prebuilt build, one
 * thread): llama.cpp is loaded before the file's tests, disposed and the
 * folder removed after them. `env.llama` is valid inside the tests.
 */
export function llamaFixture(prefix: string): { dir: string; llama: Llama } {
  const env = { dir: mkdtempSync(join(tmpdir(), prefix)), llama: null as unknown as Llama };
  before(async () => {
    env.llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, maxThreads: 1 });
  });
  after(async () => {
    await (env.llama as Llama | null)?.dispose();
    rmSync(env.dir, { recursive: true, force: true });
  });
  return env;
}

/** English, Chinese, code, emoji, whitespace runs, numbers, contractions, mixed scripts: the texts the tokenizer cross-checks share. */
export const MULTILINGUAL_TEXTS = [
  "Hello world! The quick brown fox jumps over the lazy dog.",
  "子曰：学而时习之，不亦说乎？有朋自远方来，不亦乐乎？",
  "function add(a, b) {\n  return a + b; // sum\n}\n\n\tconst x = [1, 2, 3];",
  "emoji 😀🎉👍🏽 and flags 🇫🇷 mixed with text",
  "spaces   and\ttabs\t\t and\n\n\nnewlines    \n  end  ",
  "numbers 1 12 123 1234 12345 3.14159 -42 1,000,000",
  "I'm sure they'll say it's fine, WE'RE NOT, you've seen",
  "Ünïcödé café naïve — Ελληνικά русский 日本語のテキスト 한국어",
  " leading space and trailing space ",
];

/** The tokenizer a GGUF holding a Hugging Face vocabulary gives back on import: rebuilt as a tokenizer.json, with no note. */
export function reimportedTokenizer(path: string): HfTokenizer {
  const back = modelOfGguf(readGguf(path), path);
  assert.equal(back.tokenizer, null);
  assert.equal(back.tokenizerNote, undefined);
  return parseTokenizerJson(back.tokenizerText!, "back.json") as HfTokenizer;
}

/**
 * The tokenizer.json of an npm tokenizer package (`pkg`/models/tokenizer.json),
 * optionally edited as JSON first: its text, path and parsed HfTokenizer.
 */
export function packageTokenizer(pkg: string, edit?: (j: Record<string, unknown>) => void): { text: string; path: string; tok: HfTokenizer } {
  const path = createRequire(import.meta.url).resolve(`${pkg}/models/tokenizer.json`);
  let text = readFileSync(path, "utf8");
  if (edit) {
    const j = JSON.parse(text) as Record<string, unknown>;
    edit(j);
    text = JSON.stringify(j);
  }
  const tok = parseTokenizerJson(text, path);
  assert.ok(tok instanceof HfTokenizer);
  return { text, path, tok };
}
