/**
 * bench llamacpp — Sigma's batch-1 decoding beside llama.cpp's on the same
 * model, the comparison issue 24 opens with: a Llama-shaped MoE (width 512,
 * 8 heads over 4 key/value heads, 4 MoE layers of 8 SwiGLU experts of width
 * 2432, top-2 renormalised, RMSNorm, rotary positions, no biases, untied
 * output; ~133 MB of f32 weights read per token), random weights.
 *
 * For each format pair — Sigma f32 / GGUF F32, f16 / F16, q8 / Q8_0 — the
 * model is exported with `ggufOfModel` (the same weights; Q8_0 is Sigma's q8
 * layout, 32-weight groups with an f16 scale) and loaded by llama.cpp through
 * node-llama-cpp (CPU, prebuilt), while Sigma decodes from its own stored
 * matrices, each on 1 and then 2 threads (on a two-vCPU VM llama.cpp's two
 * threads cost it ~12 ms a token beside the JS thread, so both counts are
 * reported, and best against best). Each engine decodes `--tokens` (default 64)
 * greedy tokens after an 8-token prompt; the clock starts at the first token
 * (drawn from the prompt's forward, the same work in both) and stops at the
 * last, so tokens/s counts decoding steps only. The engines alternate,
 * `--rounds` (default 5) times each; the figures are medians, the ratio the
 * median of the rounds' own ratios. llama.cpp runs as its users get it: its
 * default f16 KV cache (Sigma's is f32; at 72 positions the cache is
 * <1% of the bytes read).
 *
 * JSON (--json): { llamacpp: { cpu, threads: [1, 2], tokens, rounds, bytesPerTokenF32,
 *   formats: { f32|f16|q8: { ggufType, bestRatio, byThreads: { 1|2: { sigmaTokensPerSecond, llamaTokensPerSecond, ratio } } } } } }
 * or { llamacpp: { skipped: reason } } when node-llama-cpp cannot load its CPU build.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeGguf } from "../src/checkpoint/gguf.js";
import { parseModelConfig } from "../src/models/config.js";
import { ggufOfModel } from "../src/models/gguf.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { quantizeModel } from "../src/models/quantize.js";
import { generateIds } from "../src/serve/generate.js";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import { SigmaError } from "../src/util/errors.js";
import { median, native, table } from "./util.js";

const THREAD_COUNTS = [1, 2];
const PAIRS = [
  ["f32", "f32"],
  ["f16", "f16"],
  ["q8", "q8_0"],
] as const;

// A small vocabulary (llama.cpp needs one in the file); the weights' bytes are in the experts, as in the issue's model.
const TEXT = "the quick brown fox jumps over the lazy dog.\nthe cat sat on the mat, then the dog ate the cat's dinner!\n123 4567 wow!\n";

export async function run(args: string[]): Promise<void> {
  const json = args.includes("--json");
  const say = (s: string) => (json ? console.error(s) : console.log(s));
  const opt = (name: string, dflt: number) => {
    const a = args.find((x) => x.startsWith(`--${name}=`));
    const v = a ? Number(a.slice(name.length + 3)) : dflt;
    if (!(Number.isInteger(v) && v >= 2)) throw new SigmaError(`bench llamacpp: --${name} must be an integer of at least 2, got ${a?.slice(name.length + 3)}`, `e.g. --${name}=${dflt}`);
    return v;
  };
  const tokens = opt("tokens", 64);
  const rounds = opt("rounds", 5);
  let nlc: typeof import("node-llama-cpp");
  let llama: import("node-llama-cpp").Llama;
  try {
    nlc = await import("node-llama-cpp");
    llama = await nlc.getLlama({ gpu: false, build: "never", logLevel: nlc.LlamaLogLevel.error, maxThreads: Math.max(...THREAD_COUNTS) });
  } catch (e) {
    const reason = `node-llama-cpp's CPU build did not load: ${(e as Error).message.split("\n")[0]}`;
    say(`skipped — ${reason}`);
    if (json) console.log(JSON.stringify({ llamacpp: { skipped: reason } }));
    return;
  }
  const wc = new WordCounter();
  wc.add(TEXT.repeat(3));
  const tok = trainBpe(wc, { domains: ["en"], langs: [], vocabSize: 320, minFrequency: 1 });
  const config = parseModelConfig({
    vocabSize: tok.vocabSize, width: 512, heads: 8, kvHeads: 4, denseLayers: 0, sparseLayers: 4, ffnWidth: 2432, seqLen: 256,
    queryLayer: false, norm: "rmsnorm", position: "rope", ffn: "swiglu", ffnBias: false, attentionBias: "none", tiedEmbeddings: false, layerNormEps: 1e-5,
    domains: [{ name: "en" }],
    experts: { count: 8, width: 2432, router: { kind: "topk", k: 2, renormalize: true, auxLossCoef: 0, zLossCoef: 0, capacityFactor: null } },
  });
  const net = new PanguSigma(config).eval();
  // Weights read per token in f32: per layer q, k, v, o (k and v 4 heads of 64), two of eight experts, the router; and the output matrix.
  const C = config.width;
  const perLayer = 2 * C * C + 2 * 256 * C + 2 * 3 * C * 2432 + 8 * C;
  const bytesPerTokenF32 = 4 * (4 * perLayer + config.vocabSize * C);
  say(`a Llama-shaped MoE: width 512, 8 heads over 4, 4 MoE layers of 8 SwiGLU experts (width 2432, top-2), vocabulary ${config.vocabSize}; ${(bytesPerTokenF32 / 1e6).toFixed(0)} MB of f32 weights read per token`);
  say(`${THREAD_COUNTS.join(" and ")} threads, each engine; ${tokens} greedy tokens after an 8-token prompt, timed from the first token; ${rounds} rounds, engines alternating\n`);
  const dir = mkdtempSync(join(tmpdir(), "sigma-llamacpp-"));
  const prompt = [5, 40, 7, 250, 3, 99, 17, 128];
  const sigmaRound = (): number => {
    const gen = generateIds(net, prompt, 0, { temperature: 0, topK: 0, topP: 1, seed: 1, maxTokens: tokens, stopId: null });
    gen.next(); // the first token: the prompt's forward
    const t0 = performance.now();
    let n = 1;
    for (let r = gen.next(); !r.done; r = gen.next()) n++;
    return (1000 * (n - 1)) / (performance.now() - t0);
  };
  type Figure = { sigmaTokensPerSecond: number; llamaTokensPerSecond: number; ratio: number };
  const results: Record<string, { ggufType: string; byThreads: Record<number, Figure>; bestRatio: number }> = {};
  try {
    for (const [format, ggufType] of PAIRS) {
      quantizeModel(net, format);
      const path = join(dir, `model-${ggufType}.gguf`);
      writeGguf(path, ggufOfModel(net, tok, { type: ggufType }));
      const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
      const byThreads: Record<number, Figure> = {};
      try {
        for (const threads of THREAD_COUNTS) {
          native().setThreads(threads);
          const ctx = await model.createContext({ contextSize: 256, batchSize: 64, threads });
          const seq = ctx.getSequence();
          const llamaRound = async (): Promise<number> => {
            await seq.clearHistory();
            let n = 0;
            let t0 = 0;
            for await (const _ of seq.evaluate(prompt as import("node-llama-cpp").Token[], { temperature: 0 })) {
              if (n === 0) t0 = performance.now();
              if (++n >= tokens) break;
            }
            return (1000 * (n - 1)) / (performance.now() - t0);
          };
          const mine: number[] = [];
          const theirs: number[] = [];
          try {
            sigmaRound();
            await llamaRound(); // warm-up
            for (let r = 0; r < rounds; r++) {
              mine.push(sigmaRound());
              theirs.push(await llamaRound());
            }
          } finally {
            await ctx.dispose();
          }
          byThreads[threads] = { sigmaTokensPerSecond: median(mine), llamaTokensPerSecond: median(theirs), ratio: median(mine.map((m, i) => m / theirs[i]!)) };
        }
      } finally {
        await model.dispose();
        rmSync(path, { force: true });
      }
      const best = (k: "sigmaTokensPerSecond" | "llamaTokensPerSecond") => Math.max(...Object.values(byThreads).map((f) => f[k]));
      results[format] = { ggufType, byThreads, bestRatio: best("sigmaTokensPerSecond") / best("llamaTokensPerSecond") };
    }
  } finally {
    await llama.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
  const rows = Object.entries(results).flatMap(([f, r]) =>
    Object.entries(r.byThreads).map(([t, x]) => [f, r.ggufType.toUpperCase(), t, x.sigmaTokensPerSecond.toFixed(1), x.llamaTokensPerSecond.toFixed(1), `${x.ratio.toFixed(2)}×`, `${r.bestRatio.toFixed(2)}×`]),
  );
  say(table(["Sigma weights", "GGUF type", "threads", "Sigma tokens/s", "llama.cpp tokens/s", "Sigma ÷ llama.cpp", "best ÷ best"], rows));
  if (json) console.log(JSON.stringify({ llamacpp: { cpu: native().cpuInfo().brand, threads: THREAD_COUNTS, tokens, rounds, bytesPerTokenF32, formats: results } }));
}
