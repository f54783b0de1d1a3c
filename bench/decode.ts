/**
 * `npm run bench -- decode [--tokens=N] [--rounds=N] [--only=f32,q8] [--generic] [--f32-kernels] [--spec-only] [--kernels]
 *   [--spec-target=DIR] [--spec-draft=DIR] [--spec-weights=FMT] [--spec-draft-weights=FMT] [--spec-tokens=N] [--spec-rounds=N] [--spec-k=K] [--json]`:
 * KV-cache decoding of config R's shape (d=512, 8 heads, 2 dense + 2 sparse
 * layers, 8 experts top-2, F=2048, V=8192; random weights) with its matrices
 * in each weight format (docs/decode.md), on 2 threads.
 *
 * For each format: tokens/s at batch 1 (one sequence, one token per step) and
 * at batch 8 (eight sequences in step, one forward of 8 rows per step: the
 * model's own batched cache, not a server's scheduler); the bytes read per
 * step — the stored matrices the step uses (experts: those its tokens were
 * routed to, counted from the routing), the f32 parameters it reads (biases,
 * norms, router gates) and the KV cache up to the step's position — and
 * bandwidthFraction = bytes per step × steps/s ÷ the read bandwidth measured
 * just before each round (sumSquares over 256 MiB on the same 2 threads,
 * best of 3: the bandwidth of a shared machine moves from minute to minute),
 * the median of the rounds' fractions; the bandwidths measured are reported
 * beside it. Medians over rounds; each round decodes `tokens` steps after an 8-token prompt.
 * Steps run through the decode step (src/models/decode-step.ts) as forward
 * does; `--generic` turns it off (forward's general path, for a before/after
 * on the same build; JSON: decode.decodeStep false). `--f32-kernels` holds
 * q8/q4 to the f32-dequantizing kernels (setDecodeIntRows(0): the before of
 * the integer kernels on the same build; JSON: decode.intKernels false).
 *
 * With --json, stdout is one JSON object:
 *   { decode: { threads, cpu, readBandwidthGBs, tokens, rounds, config, decodeStep,
 *               formats: { <format>: { batch1: Run, batch8: Run } }, q8OverF32Batch1 } }
 *   Run = { tokensPerSecond, stepMs, bytesPerStep, bytesPerToken, bandwidthFraction, readBandwidthGBs: { median, min, max } }
 *
 * Speculative decoding (src/serve/speculative.ts; `--spec-only` runs just
 * this section): greedy decoding of `--spec-tokens` tokens (default 48) after
 * each prompt of a repetitive set, plain vs speculative with k = 4, medians
 * of the rounds. Decoding tokens/s over the whole set counts the time after
 * each prompt's prefill (the prompt's forward, the same work either way:
 * plain decoding's first token is drawn from it, the speculative stats time
 * it), speedup = speculative ÷ plain (the median of the rounds' own ratios:
 * each round times both side by side, prompt by prompt); the same with the prefills counted
 * (…WithPrefill); acceptance = accepted ÷ proposed draft tokens. The target is the demo
 * model (`--spec-target=DIR`, default sigma-demo/, as `sigma demo` writes it)
 * with q8 weights, its prompts the repetitive texts below, each in the
 * domain it is written in (code or en, when the model has them); without it, config
 * R's shape with random q8 weights on repetitive token-id prompts (a random
 * model's greedy text loops, so its n-gram figure says little about text).
 * The model draft needs a trained smaller model with the target's tokenizer
 * (`--spec-draft=DIR`, in q8 or `--spec-draft-weights=FMT`; `--spec-k=K` drafts per step; `--spec-weights=FMT` the target's format
 * for it, q8 by default: f32 or bf16 on a target large enough that its steps stream from memory);
 * without a draft that figure is skipped (a random draft
 * agrees with nothing). N-gram drafting runs with the target's matrices in
 * f32, bf16 and q8 (`ngram` is q8's; a verification's rows cost more, next
 * to a plain step, where the products are compute-bound). JSON:
 * decode.speculative = { target, prompts, tokens, draftTokens,
 * ngram: { plainTokensPerSecond, tokensPerSecond, speedup, acceptance,
 *          plainTokensPerSecondWithPrefill, tokensPerSecondWithPrefill, speedupWithPrefill,
 *          tokensPerVerification, draftCost, verifyCost, ceiling },
 * (per verification: tokens emitted, and drafting's and verifying's time in
 * plain steps — the plain decoding's milliseconds per token in the same
 * rounds; ceiling = (k + 1) ÷ (draftCost + verifyCost), the speedup if every
 * draft were kept at those costs — a draft whose ceiling is below a speedup
 * cannot reach that speedup at any acceptance),
 * ngramByFormat: { f32, bf16, q8: same }, model: same | null, modelWeights: the model draft's target format,
 * adaptive: { ngramByFormat, model }: the same drafts with k chosen step by step (at most k;
 * src/serve/draft-length.ts), each figure also with draftsPerStep }.
 */
import { noGrad } from "../src/autograd/tape.js";
import { WEIGHT_FORMATS, quantize, storedBytes, type StoredMatrix, type WeightFormat } from "../src/backend/quant.js";
import { nativeDecodeKernels } from "../src/backend/decode.js";
import { parseModelConfig } from "../src/models/config.js";
import { PanguSigma, type ModelCache } from "../src/models/pangu-sigma.js";
import { parseWeightFormat, quantizeModel, storedSites } from "../src/models/quantize.js";
import { useDecodeStep } from "../src/models/decode-step.js";
import { KV_FORMATS, type KVFormat } from "../src/nn/attention.js";
import { Rng } from "../src/util/rng.js";
import { SigmaError } from "../src/util/errors.js";
import { existsSync } from "node:fs";
import { generateIds } from "../src/serve/generate.js";
import { openModelSource } from "../src/serve/open.js";
import { encodePrompt } from "../src/serve/prompt.js";
import { newSpeculativeStats, speculativeIds, type Draft } from "../src/serve/speculative.js";
import { median, native, randomArray, table } from "./util.js";

const THREADS = 2;
const SHAPE = { width: 512, heads: 8, dense: 2, sparse: 2, experts: 8, k: 2, ffn: 2048, vocab: 8192, seqLen: 256 };

interface Run {
  tokensPerSecond: number;
  stepMs: number;
  bytesPerStep: number;
  bytesPerToken: number;
  /** Median over rounds of (bytes per step × steps/s) ÷ the read bandwidth measured just before that round. */
  bandwidthFraction: number;
  /** The read bandwidths measured before the rounds (GB/s): median, lowest, highest. */
  readBandwidthGBs: { median: number; min: number; max: number };
}

let bandwidthBuffer: Float32Array | null = null;

/** Read bandwidth in bytes/s: sumSquares streaming 256 MiB on `threads` threads, best of `runs`. */
function readBandwidth(threads: number, runs = 5): number {
  const b = native();
  b.setThreads(threads);
  const big = (bandwidthBuffer ??= randomArray(64 << 20, 9));
  b.sumSquares(big, big.length);
  let best = Infinity;
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    b.sumSquares(big, big.length);
    best = Math.min(best, performance.now() - t0);
  }
  return big.byteLength / (best / 1000);
}

/** Bytes one decoding step reads: used stored matrices, the f32 parameters forward reads, the KV cache (k and v of every layer up to `positions`, 4 or 2 bytes a number). */
function stepBytes(net: PanguSigma, expertsUsed: number[], B: number, positions: number, kv: KVFormat = "f32"): number {
  let bytes = 0;
  const sites = new Set(storedSites(net).map((s) => s.tensor));
  for (const s of storedSites(net)) {
    const m = s.current()!;
    const moe = net.blocks.find((b) => b.moe && (b.moe.w1 === s.tensor || b.moe.w2 === s.tensor));
    if (!moe) bytes += storedBytes(m);
    else bytes += (storedBytes(m) * expertsUsed[net.blocks.indexOf(moe) - net.config.denseLayers]!) / s.E;
  }
  for (const [name, p] of net.namedParameters()) {
    if (sites.has(p.tensor) || name === "positionEmbedding" || name === "queryEmbedding") continue;
    // Expert biases: only the used experts' rows.
    const m = /^blocks\.(\d+)\.moe\.b[12]$/.exec(name);
    bytes += m ? (p.tensor.size * 4 * expertsUsed[Number(m[1]) - net.config.denseLayers]!) / net.config.experts!.count : p.tensor.size * 4;
  }
  const layers = net.blocks.length + (net.queryLayer ? 1 : 0);
  return bytes + layers * 2 * B * positions * net.config.width * (kv === "f16" ? 2 : 4);
}

/** `tokens` steps of B sequences after a `prompt`-token prompt, caches in `kv`; medians of `rounds` (after a warm-up round). */
function decodeRun(net: PanguSigma, B: number, tokens: number, rounds: number, prompt = 8, kv: KVFormat = "f32"): Run {
  const rng = new Rng(5);
  const domains = Int32Array.from({ length: B }, () => 0);
  const times: number[] = [];
  const bytes: number[] = [];
  const fractions: number[] = [];
  const bandwidths: number[] = [];
  for (let round = 0; round < rounds + 1; round++) {
    // The machine's read bandwidth moves (a shared VM): each round is judged against the one measured just before it.
    const bw = round === 0 ? 0 : readBandwidth(THREADS, 3);
    const cache: ModelCache = net.newCache(B, prompt + tokens + 1, kv);
    noGrad(() => net.forward({ tokens: Int32Array.from({ length: B * prompt }, () => rng.int(SHAPE.vocab)), domains, B, T: prompt }, cache));
    const used: { experts: number[]; positions: number }[] = [];
    const t0 = performance.now();
    for (let s = 0; s < tokens; s++) {
      const out = noGrad(() => net.forward({ tokens: Int32Array.from({ length: B }, () => rng.int(SHAPE.vocab)), domains, B, T: 1 }, cache));
      used.push({ experts: out.routings.map((r) => r.counts.filter((c) => c > 0).length), positions: cache.length });
    }
    const ms = performance.now() - t0;
    // Counted after the clock stops: the bytes of each step from its routing.
    const roundBytes = used.reduce((sum, u) => sum + stepBytes(net, u.experts, B, u.positions, kv), 0);
    if (round === 0) continue; // warm-up: first touches, allocator
    times.push(ms / tokens);
    bytes.push(roundBytes / tokens);
    fractions.push(roundBytes / (ms / 1000) / bw);
    bandwidths.push(bw / 1e9);
  }
  const stepMs = median(times);
  const bytesPerStep = median(bytes);
  return {
    tokensPerSecond: (1000 * B) / stepMs, stepMs, bytesPerStep, bytesPerToken: bytesPerStep / B, bandwidthFraction: median(fractions),
    readBandwidthGBs: { median: median(bandwidths), min: Math.min(...bandwidths), max: Math.max(...bandwidths) },
  };
}

interface SpecFigure {
  plainTokensPerSecond: number;
  tokensPerSecond: number;
  speedup: number;
  acceptance: number;
  plainTokensPerSecondWithPrefill: number;
  tokensPerSecondWithPrefill: number;
  speedupWithPrefill: number;
  /** Tokens emitted per verification (1 + the drafts kept). */
  tokensPerVerification: number;
  /** Tokens drafted per step (k, less where the prompt lookup found nothing or the adaptive choice took fewer). */
  draftsPerStep: number;
  /** Drafting and verifying, per verification, in plain steps (the plain decoding's milliseconds per token, same rounds). */
  draftCost: number;
  verifyCost: number;
  /** The speedup if every draft were kept at these costs: (k + 1) ÷ (draftCost + verifyCost). */
  ceiling: number;
}

/** Texts that repeat themselves: what prompt-lookup drafting is for, each with the domain it is written in. */
const REPETITIVE: { domain: string; text: string }[] = [
  { domain: "code", text: "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n    return a * b\n\ndef" },
  { domain: "en", text: "The cat sat on the mat. The dog sat on the log. The cat sat on the mat. The dog sat on the log. The cat" },
  { domain: "code", text: "for (let i = 0; i < n; i++) sum += a[i];\nfor (let i = 0; i < n; i++) sum += b[i];\nfor (let i = 0; i < n; i++)" },
  { domain: "en", text: "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20," },
];

/** A prompt's token ids and its domain index in the target (and in the draft model, when there is one). */
interface SpecPrompt {
  ids: number[];
  domain: number;
  draftDomain: number;
}

/**
 * Greedy decoding of `tokens` tokens after each prompt, plain and
 * speculative: decoding tokens/s over the set (median of rounds; the
 * prefills apart, and with them) and the acceptance.
 */
function speculativeRun(net: PanguSigma, prompts: SpecPrompt[], draft: ((p: SpecPrompt) => Draft), tokens: number, rounds: number, k: number, adaptive: boolean): SpecFigure {
  const o = { temperature: 0, topK: 0, topP: 1, seed: 1, maxTokens: tokens, stopId: null, adaptive };
  const [plainMs, specMs, plainAll, specAll]: number[][] = [[], [], [], []];
  let emittedPlain = 0;
  let emittedSpec = 0;
  const stats = newSpeculativeStats();
  for (let round = 0; round < rounds + 1; round++) {
    let [a, b, aAll, bAll, np, ns] = [0, 0, 0, 0, 0, 0];
    for (const p of prompts) {
      // Plain: the first token is drawn from the prefill's logits, so the first next() is the prefill.
      let t0 = performance.now();
      const gen = generateIds(net, p.ids, p.domain, o);
      let first = gen.next();
      const prefill = performance.now() - t0;
      for (; !first.done; first = gen.next()) np++;
      const plain = performance.now() - t0;
      a += plain - prefill;
      aAll += plain;
      const st = newSpeculativeStats();
      t0 = performance.now();
      ns += [...speculativeIds(net, p.ids, p.domain, { ...o, draftTokens: k }, draft(p), st)].length;
      const spec = performance.now() - t0;
      b += spec - st.prefillMs;
      bAll += spec;
      if (round > 0) for (const k of ["steps", "proposed", "accepted", "emitted", "draftMs", "verifyMs"] as const) stats[k] += st[k];
    }
    if (round === 0) continue; // warm-up
    plainMs.push(a);
    specMs.push(b);
    plainAll.push(aAll);
    specAll.push(bAll);
    emittedPlain = np;
    emittedSpec = ns;
  }
  const rate = (n: number, ms: number[]) => (1000 * n) / median(ms);
  // Speedups: the median of each round's own (plain and speculative timed side by side, prompt by prompt),
  // so that the machine's speed drifting between rounds cancels instead of entering a ratio of medians.
  const speedup = (plain: number[], spec: number[]) => median(plain.map((a, i) => (emittedSpec * a) / (emittedPlain * spec[i]!)));
  // Where the time of a verification goes, in the plain decoding's steps of the same rounds.
  const plainStepMs = plainMs.reduce((x, y) => x + y, 0) / (emittedPlain * plainMs.length);
  const perStep = (ms: number) => ms / Math.max(1, stats.steps) / plainStepMs;
  const [draftCost, verifyCost] = [perStep(stats.draftMs), perStep(stats.verifyMs)];
  return {
    plainTokensPerSecond: rate(emittedPlain, plainMs), tokensPerSecond: rate(emittedSpec, specMs), speedup: speedup(plainMs, specMs), acceptance: stats.proposed ? stats.accepted / stats.proposed : 0,
    plainTokensPerSecondWithPrefill: rate(emittedPlain, plainAll), tokensPerSecondWithPrefill: rate(emittedSpec, specAll), speedupWithPrefill: speedup(plainAll, specAll),
    tokensPerVerification: stats.steps ? stats.emitted / stats.steps : 0, draftsPerStep: stats.steps ? stats.proposed / stats.steps : 0, draftCost, verifyCost,
    ceiling: (k + 1) / (draftCost + verifyCost),
  };
}

function speculativeSection(args: string[], fallback: PanguSigma, say: (s: string) => void, opt: (name: string, dflt: number) => number) {
  const str = (name: string) => args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const tokens = opt("spec-tokens", 48);
  const rounds = opt("spec-rounds", 2);
  const k = opt("spec-k", 4);
  const targetPath = str("spec-target") ?? "sigma-demo";
  const draftPath = str("spec-draft");
  const modelWeights = parseWeightFormat(str("spec-weights") ?? "q8", "bench decode: --spec-weights");
  const draftWeights = parseWeightFormat(str("spec-draft-weights") ?? "q8", "bench decode: --spec-draft-weights");
  let net: PanguSigma;
  let prompts: SpecPrompt[];
  let target: string;
  let draftModel: PanguSigma | null = null;
  /** The target with its matrices in format f (n-gram drafting is measured for each of NGRAM_FORMATS). */
  let inFormat: (f: WeightFormat) => PanguSigma;
  if (existsSync(targetPath)) {
    const src = openModelSource(targetPath, { weights: "q8" });
    net = src.model;
    inFormat = (f) => (f === "q8" ? net : openModelSource(targetPath, { weights: f }).model);
    if (draftPath) draftModel = openModelSource(draftPath, { weights: draftWeights }).model;
    const tok = src.tokenizer!.tokenizer;
    const index = (m: PanguSigma, name: string) => Math.max(0, m.config.domains.findIndex((d) => d.name === name));
    prompts = REPETITIVE.map(({ domain, text }) => {
      const d = index(net, domain);
      return { ids: encodePrompt(tok, net.config.domains[d]!.name, text), domain: d, draftDomain: draftModel ? index(draftModel, domain) : 0 };
    });
    target = `${src.path}`;
  } else {
    quantizeModel(fallback, "q8");
    net = fallback;
    inFormat = (f) => {
      quantizeModel(fallback, f);
      return fallback;
    };
    const rng = new Rng(11);
    prompts = [5, 7, 11, 13].map((period) => {
      const unit = Array.from({ length: period }, () => rng.int(SHAPE.vocab));
      return { ids: Array.from({ length: 48 }, (_, i) => unit[i % period]!), domain: 0, draftDomain: 0 };
    });
    target = "config R's shape, random weights (no demo model at " + targetPath + ")";
  }
  say(`\nspeculative decoding, greedy, k = ${k}, ${tokens} tokens after each of ${prompts.length} repetitive prompts, median of ${rounds} rounds; target: ${target}`);
  // n-gram drafting with the target's matrices in several formats: a verification's few rows cost more,
  // relative to a plain step, where the products are compute-bound (q8's integer kernels) than where they stream.
  // Each draft twice on the same model: k fixed, and chosen step by step (src/serve/draft-length.ts, at most k).
  const ngramByFormat: Partial<Record<WeightFormat, SpecFigure>> = {};
  const adaptiveNgram: Partial<Record<WeightFormat, SpecFigure>> = {};
  for (const f of NGRAM_FORMATS) {
    const m = inFormat(f);
    ngramByFormat[f] = speculativeRun(m, prompts, () => ({ kind: "ngram" }), tokens, rounds, k, false);
    adaptiveNgram[f] = speculativeRun(m, prompts, () => ({ kind: "ngram" }), tokens, rounds, k, true);
  }
  if (!existsSync(targetPath)) quantizeModel(fallback, "q8");
  const ngram = ngramByFormat.q8!;
  const modelTarget = draftModel ? inFormat(modelWeights) : null;
  const modelDraft = (p: SpecPrompt): Draft => ({ kind: "model", model: draftModel!, domain: p.draftDomain });
  const model = modelTarget ? speculativeRun(modelTarget, prompts, modelDraft, tokens, rounds, k, false) : null;
  const adaptiveModel = modelTarget ? speculativeRun(modelTarget, prompts, modelDraft, tokens, rounds, k, true) : null;
  const named: [string, SpecFigure, boolean][] = [];
  for (const f of NGRAM_FORMATS) named.push([`ngram, ${f} target`, ngramByFormat[f]!, false], [`ngram, ${f} target`, adaptiveNgram[f]!, true]);
  const modelName = `model ${draftPath} (${draftWeights}), ${modelWeights} target`;
  if (model) named.push([modelName, model, false], [modelName, adaptiveModel!, true]);
  const rows = named.map(([name, f, adaptive]) => [
    name, adaptive ? `adaptive ≤ ${k}` : `${k}`, f.draftsPerStep.toFixed(2), f.plainTokensPerSecond.toFixed(1), f.tokensPerSecond.toFixed(1), `${f.speedup.toFixed(2)}×`, `${(100 * f.acceptance).toFixed(0)}%`,
    `${f.speedupWithPrefill.toFixed(2)}×`, f.tokensPerVerification.toFixed(2), f.draftCost.toFixed(2), f.verifyCost.toFixed(2), adaptive ? "—" : `${f.ceiling.toFixed(2)}×`,
  ]);
  say("tokens/s of decoding: after each prompt's prefill (the same forward of the prompt either way); 'with prefill' counts the prefills too");
  say(`k: drafts asked for per step, fixed or chosen step by step from the acceptance and costs measured so far (at most ${k}; drafts/step: what was drafted)`);
  say(`per verification: the tokens it emits, and the time drafting and verifying take in plain steps (the plain decoding's time per token); ceiling: the speedup if all ${k} drafts were kept at those costs, (k + 1) ÷ (draft + verify)`);
  say(table(["draft", "k", "drafts/step", "plain tokens/s", "speculative tokens/s", "speedup", "acceptance", "speedup with prefill", "tokens/verification", "draft (steps)", "verify (steps)", "ceiling"], rows));
  if (!model) say(`model draft: skipped — ${existsSync(targetPath) ? "no --spec-draft=DIR (a trained smaller model with the demo's tokenizer)" : "no demo model (run sigma demo, or pass --spec-target=DIR and --spec-draft=DIR)"}; a draft with random weights would agree with nothing`);
  return { target, prompts: prompts.length, tokens, draftTokens: k, ngram, ngramByFormat, model, modelWeights, draftWeights, adaptive: { ngramByFormat: adaptiveNgram, model: adaptiveModel } };
}

/**
 * The KV cache in f32 and in f16 at a long context: q8 weights, a prompt of
 * KV_PROMPT tokens, then KV_TOKENS steps (positions up to seqLen), batch 1 and
 * 8, the two formats alternating round by round (each round a decodeRun of
 * one measured round); medians, and f16 ÷ f32 tokens/s.
 */
const KV_PROMPT = 216;
const KV_TOKENS = 32;
function kvSection(net: PanguSigma, say: (s: string) => void, rounds: number) {
  quantizeModel(net, "q8");
  const runs: Record<KVFormat, { batch1: Run[]; batch8: Run[] }> = { f32: { batch1: [], batch8: [] }, f16: { batch1: [], batch8: [] } };
  for (let r = 0; r < rounds; r++) {
    for (const kv of r % 2 ? (["f16", "f32"] as const) : (["f32", "f16"] as const)) {
      runs[kv].batch1.push(decodeRun(net, 1, KV_TOKENS, 1, KV_PROMPT, kv));
      runs[kv].batch8.push(decodeRun(net, 8, KV_TOKENS >> 1, 1, KV_PROMPT, kv));
    }
  }
  const summary = (xs: Run[]) => ({ tokensPerSecond: median(xs.map((x) => x.tokensPerSecond)), bytesPerStep: median(xs.map((x) => x.bytesPerStep)), bandwidthFraction: median(xs.map((x) => x.bandwidthFraction)) });
  const out = Object.fromEntries(KV_FORMATS.map((kv) => [kv, { batch1: summary(runs[kv].batch1), batch8: summary(runs[kv].batch8) }])) as Record<KVFormat, { batch1: ReturnType<typeof summary>; batch8: ReturnType<typeof summary> }>;
  const ratio = (b: "batch1" | "batch8") => median(runs.f16[b].map((x, i) => x.tokensPerSecond / runs.f32[b][i]!.tokensPerSecond));
  const f16OverF32 = { batch1: ratio("batch1"), batch8: ratio("batch8") };
  say(`\nKV cache at a long context: q8 weights, ${KV_TOKENS} steps after a ${KV_PROMPT}-token prompt, f32 and f16 caches alternating, median of ${rounds} rounds`);
  say(table(["KV cache", "batch 1 tokens/s", "MB/token", "bandwidth fraction", "batch 8 tokens/s", "MB/step", "bandwidth fraction"], KV_FORMATS.map((kv) => {
    const x = out[kv];
    return [kv, x.batch1.tokensPerSecond.toFixed(1), (x.batch1.bytesPerStep / 1e6).toFixed(1), x.batch1.bandwidthFraction.toFixed(2), x.batch8.tokensPerSecond.toFixed(1), (x.batch8.bytesPerStep / 1e6).toFixed(1), x.batch8.bandwidthFraction.toFixed(2)];
  })));
  say(`f16 ÷ f32 KV cache tokens/s (median of the rounds' own ratios): batch 1 ${f16OverF32.batch1.toFixed(2)}×, batch 8 ${f16OverF32.batch8.toFixed(2)}×`);
  return { weights: "q8", prompt: KV_PROMPT, tokens: KV_TOKENS, rounds, ...out, f16OverF32 };
}

/** The target's formats n-gram drafting is measured in (the headline `ngram` figure is q8's, as before). */
const NGRAM_FORMATS: WeightFormat[] = ["f32", "bf16", "q8"];

/**
 * `--kernels`: the decode kernels alone, no model. For q8, q4 (and f32 as the
 * yardstick) and the shapes 2048×512 and 512×2048 (N×K), one, two or eight rows of
 * x, on 1 and 2 threads: weight bytes read per second, from memory (the
 * matrix taken in turn from enough distinct copies, ≥ 256 MiB together, that
 * every call reads from memory) and from cache (one copy, over and over: the
 * kernel's own speed). q8 and q4 run with the integer kernels and without
 * them (setDecodeIntRows(0): the f32-dequantizing kernels), interleaved
 * round by round so that both see the same machine. Medians of `rounds`.
 */
function kernelSection(say: (s: string) => void, rounds: number, bw: number) {
  const b = native();
  const addon = b as unknown as { setDecodeIntRows(rows: number): void; decodeIntPath(): string };
  const decode = nativeDecodeKernels()!;
  const rng = new Rng(7);
  const out: Record<string, { memoryGBs: number; cacheGBs: number; f32KernelMemoryGBs?: number; f32KernelCacheGBs?: number }> = {};
  const rows: (string | number)[][] = [];
  const GBs = (bytes: number, s: number[]) => bytes / median(s) / 1e9;
  try {
    for (const f of ["f32", "q8", "q4"] as const) {
      for (const [N, K] of [[2048, 512], [512, 2048]] as const) {
        const one = quantize(f, randomArray(N * K, 3), N, K);
        const bytes = storedBytes(one);
        const copies = Math.max(2, Math.ceil((256 << 20) / bytes));
        // Distinct copies of the same matrix (its arrays cloned; a copy is all the kernel reads).
        const mats = Array.from({ length: copies }, () => ({ ...one, data: one.data.slice(), scales: one.scales?.slice() ?? null, mins: one.mins?.slice() ?? null }) as StoredMatrix);
        const modes = f === "f32" ? [-1] : [-1, 0];
        for (const R of [1, 2, 8]) {
          const x = Float32Array.from({ length: R * K }, () => rng.uniform() * 2 - 1);
          const y = new Float32Array(R * N);
          const offsets = Int32Array.of(0, R);
          for (const t of [1, 2]) {
            b.setThreads(t);
            const mem = new Map<number, number[]>(modes.map((m) => [m, []]));
            const cache = new Map<number, number[]>(modes.map((m) => [m, []]));
            for (let i = 0; i < rounds; i++) {
              for (const m of modes) {
                addon.setDecodeIntRows(m);
                let t0 = performance.now();
                for (const w of mats) decode.decodeMatmul(y, x, w, offsets, 1, N, K);
                mem.get(m)!.push((performance.now() - t0) / 1000);
                t0 = performance.now();
                for (let c = 0; c < copies; c++) decode.decodeMatmul(y, x, one, offsets, 1, N, K);
                cache.get(m)!.push((performance.now() - t0) / 1000);
              }
            }
            const total = bytes * copies;
            const fig = { memoryGBs: GBs(total, mem.get(-1)!), cacheGBs: GBs(total, cache.get(-1)!) } as (typeof out)[string];
            if (f !== "f32") {
              fig.f32KernelMemoryGBs = GBs(total, mem.get(0)!);
              fig.f32KernelCacheGBs = GBs(total, cache.get(0)!);
            }
            out[`${f} ${N}x${K} rows${R} threads${t}`] = fig;
            const was = (v?: number) => (v === undefined ? "" : v.toFixed(1));
            rows.push([f, `${N}×${K}`, R, t, fig.memoryGBs.toFixed(1), was(fig.f32KernelMemoryGBs), (fig.memoryGBs * 1e9 / bw).toFixed(2), fig.cacheGBs.toFixed(1), was(fig.f32KernelCacheGBs)]);
          }
        }
      }
    }
  } finally {
    addon.setDecodeIntRows(-1);
  }
  say(`integer kernels: ${addon.decodeIntPath()}`);
  say(table(["weights", "N×K", "rows of x", "threads", "memory GB/s", "f32 kernel", "÷ read bw", "cache GB/s", "f32 kernel"], rows));
  return out;
}

export async function run(args: string[]): Promise<void> {
  const json = args.includes("--json");
  const say = json ? (s: string) => console.error(s) : (s: string) => console.log(s);
  // Counts (rounds, tokens, k): a positive integer, or one line naming the flag (bench/main.ts prints a SigmaError so).
  const opt = (name: string, dflt: number) => {
    const given = args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
    const v = given === undefined ? dflt : Number(given);
    if (!(Number.isInteger(v) && v >= 1)) throw new SigmaError(`bench decode: --${name} must be a positive integer, got ${given}`, `e.g. --${name}=${dflt}`);
    return v;
  };
  if (args.includes("--kernels")) {
    const decode = nativeDecodeKernels();
    if (!decode) throw new Error("bench decode needs an addon with the decode kernels (rebuild: npm run build:native)");
    const bw = readBandwidth(THREADS);
    say(`decode kernels alone: ${decode.name}; read bandwidth ${(bw / 1e9).toFixed(1)} GB/s (sumSquares over 256 MiB, ${THREADS} threads, best of 5)`);
    const kernels = kernelSection(say, opt("rounds", 5), bw);
    if (json) console.log(JSON.stringify({ decodeKernels: { kernels: decode.name, readBandwidthGBs: bw / 1e9, gbs: kernels } }));
    return;
  }
  const tokens = opt("tokens", 32);
  const rounds = opt("rounds", 3);
  const only = args.find((a) => a.startsWith("--only="))?.slice(7).split(",");
  const decodeStep = !args.includes("--generic");
  useDecodeStep(decodeStep);
  const intKernels = !args.includes("--f32-kernels");
  (native() as unknown as { setDecodeIntRows(rows: number): void }).setDecodeIntRows(intKernels ? -1 : 0);
  const formats = WEIGHT_FORMATS.filter((f) => !only || only.includes(f));
  const b = native();
  const decode = nativeDecodeKernels();
  if (!decode) throw new Error("bench decode needs an addon with the decode kernels (rebuild: npm run build:native)");
  const bw = readBandwidth(THREADS);
  b.setThreads(THREADS);
  const config = parseModelConfig({
    vocabSize: SHAPE.vocab, width: SHAPE.width, heads: SHAPE.heads, seqLen: SHAPE.seqLen, ffnWidth: SHAPE.ffn,
    denseLayers: SHAPE.dense, sparseLayers: SHAPE.sparse,
    domains: [{ name: "en", slot: 0, group: 0 }],
    experts: { count: SHAPE.experts, router: { kind: "topk", k: SHAPE.k, renormalize: true, auxLossCoef: 0, zLossCoef: 0, capacityFactor: null } },
  });
  const net = new PanguSigma(config).eval();
  say(`decode kernels: ${decode.name}, ${THREADS} threads; read bandwidth ${(bw / 1e9).toFixed(1)} GB/s (sumSquares over 256 MiB, best of 5)`);
  const bf16Kernel = (b as unknown as { decodeBf16Path(): string }).decodeBf16Path();
  say(`decode step: ${decodeStep ? "on" : "off (--generic: forward's general path)"}; q8/q4: ${intKernels ? `integer kernels (${(b as unknown as { decodeIntPath(): string }).decodeIntPath()})` : "f32 kernels (--f32-kernels)"}; bf16: ${bf16Kernel}`);
  say(`config R's shape: d=${SHAPE.width}, ${SHAPE.heads} heads, ${SHAPE.dense} dense + ${SHAPE.sparse} sparse layers, ${SHAPE.experts} experts top-${SHAPE.k}, F=${SHAPE.ffn}, V=${SHAPE.vocab}; ${tokens} steps after an 8-token prompt, median of ${rounds} rounds\n`);
  const results: Partial<Record<WeightFormat, { batch1: Run; batch8: Run }>> = {};
  const rows: (string | number)[][] = [];
  const specOnly = args.includes("--spec-only");
  for (const f of specOnly ? [] : formats) {
    quantizeModel(net, f);
    const r = { batch1: decodeRun(net, 1, tokens, rounds), batch8: decodeRun(net, 8, Math.max(4, tokens >> 1), rounds) };
    results[f] = r;
    const gbs = (x: Run) => `${x.readBandwidthGBs.median.toFixed(1)} (${x.readBandwidthGBs.min.toFixed(1)}–${x.readBandwidthGBs.max.toFixed(1)})`;
    rows.push([f, r.batch1.tokensPerSecond.toFixed(1), (r.batch1.bytesPerToken / 1e6).toFixed(1), gbs(r.batch1), r.batch1.bandwidthFraction.toFixed(2), r.batch8.tokensPerSecond.toFixed(1), (r.batch8.bytesPerStep / 1e6).toFixed(1), r.batch8.bandwidthFraction.toFixed(2)]);
  }
  if (!specOnly) say(table(["weights", "batch 1 tokens/s", "MB/token", "read GB/s", "bandwidth fraction", "batch 8 tokens/s", "MB/step", "bandwidth fraction"], rows));
  const q8 = results.q8?.batch1.tokensPerSecond;
  const f32 = results.f32?.batch1.tokensPerSecond;
  const q8OverF32Batch1 = q8 && f32 ? q8 / f32 : null;
  if (q8OverF32Batch1 !== null) say(`\nq8 / f32 tokens/s at batch 1: ${q8OverF32Batch1.toFixed(2)}×`);
  const kvCache = specOnly || args.includes("--no-kv") ? null : kvSection(net, say, opt("kv-rounds", 3));
  const speculative = speculativeSection(args, net, say, opt);
  if (json) {
    const cpu = b.cpuInfo();
    console.log(JSON.stringify({ decode: { threads: THREADS, cpu: cpu.brand, kernels: decode.name, readBandwidthGBs: bw / 1e9, tokens, rounds, config: SHAPE, decodeStep, intKernels, bf16Kernel, formats: results, q8OverF32Batch1, kvCache, speculative } }));
  }
}
