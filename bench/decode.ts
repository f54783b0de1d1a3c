/**
 * `npm run bench -- decode [--tokens=N] [--rounds=N] [--only=f32,q8] [--json]`:
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
 * in the same run (sumSquares over 256 MiB on the same 2 threads, best of 5).
 * Medians over rounds; each round decodes `tokens` steps after an 8-token prompt.
 *
 * With --json, stdout is one JSON object:
 *   { decode: { threads, cpu, readBandwidthGBs, tokens, rounds, config,
 *               formats: { <format>: { batch1: Run, batch8: Run } }, q8OverF32Batch1 } }
 *   Run = { tokensPerSecond, stepMs, bytesPerStep, bytesPerToken, bandwidthFraction }
 */
import { noGrad } from "../src/autograd/tape.js";
import { WEIGHT_FORMATS, storedBytes, type WeightFormat } from "../src/backend/quant.js";
import { nativeDecodeKernels } from "../src/backend/decode.js";
import { parseModelConfig } from "../src/models/config.js";
import { PanguSigma, type ModelCache } from "../src/models/pangu-sigma.js";
import { quantizeModel, storedSites } from "../src/models/quantize.js";
import { Rng } from "../src/util/rng.js";
import { median, native, randomArray, table } from "./util.js";

const THREADS = 2;
const SHAPE = { width: 512, heads: 8, dense: 2, sparse: 2, experts: 8, k: 2, ffn: 2048, vocab: 8192, seqLen: 256 };

interface Run {
  tokensPerSecond: number;
  stepMs: number;
  bytesPerStep: number;
  bytesPerToken: number;
  bandwidthFraction: number;
}

/** Read bandwidth in bytes/s: sumSquares streaming 256 MiB on `threads` threads, best of `runs`. */
function readBandwidth(threads: number, runs = 5): number {
  const b = native();
  b.setThreads(threads);
  const big = randomArray(64 << 20, 9);
  b.sumSquares(big, big.length);
  let best = Infinity;
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    b.sumSquares(big, big.length);
    best = Math.min(best, performance.now() - t0);
  }
  return big.byteLength / (best / 1000);
}

/** Bytes one decoding step reads: used stored matrices, the f32 parameters forward reads, the KV cache (k and v of every layer up to `positions`). */
function stepBytes(net: PanguSigma, expertsUsed: number[], B: number, positions: number): number {
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
  return bytes + layers * 2 * B * positions * net.config.width * 4;
}

function decodeRun(net: PanguSigma, B: number, tokens: number, rounds: number): Run {
  const rng = new Rng(5);
  const domains = Int32Array.from({ length: B }, () => 0);
  const times: number[] = [];
  const bytes: number[] = [];
  for (let round = 0; round < rounds + 1; round++) {
    const cache: ModelCache = net.newCache(B, 8 + tokens + 1);
    noGrad(() => net.forward({ tokens: Int32Array.from({ length: B * 8 }, () => rng.int(SHAPE.vocab)), domains, B, T: 8 }, cache));
    const used: { experts: number[]; positions: number }[] = [];
    const t0 = performance.now();
    for (let s = 0; s < tokens; s++) {
      const out = noGrad(() => net.forward({ tokens: Int32Array.from({ length: B }, () => rng.int(SHAPE.vocab)), domains, B, T: 1 }, cache));
      used.push({ experts: out.routings.map((r) => r.counts.filter((c) => c > 0).length), positions: cache.length });
    }
    const ms = performance.now() - t0;
    // Counted after the clock stops: the bytes of each step from its routing.
    const roundBytes = used.reduce((sum, u) => sum + stepBytes(net, u.experts, B, u.positions), 0);
    if (round === 0) continue; // warm-up: first touches, allocator
    times.push(ms / tokens);
    bytes.push(roundBytes / tokens);
  }
  const stepMs = median(times);
  const bytesPerStep = median(bytes);
  return { tokensPerSecond: (1000 * B) / stepMs, stepMs, bytesPerStep, bytesPerToken: bytesPerStep / B, bandwidthFraction: 0 };
}

export async function run(args: string[]): Promise<void> {
  const json = args.includes("--json");
  const say = json ? (s: string) => console.error(s) : (s: string) => console.log(s);
  const opt = (name: string, dflt: number) => Number(args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt);
  const tokens = opt("tokens", 32);
  const rounds = opt("rounds", 3);
  const only = args.find((a) => a.startsWith("--only="))?.slice(7).split(",");
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
  say(`config R's shape: d=${SHAPE.width}, ${SHAPE.heads} heads, ${SHAPE.dense} dense + ${SHAPE.sparse} sparse layers, ${SHAPE.experts} experts top-${SHAPE.k}, F=${SHAPE.ffn}, V=${SHAPE.vocab}; ${tokens} steps after an 8-token prompt, median of ${rounds} rounds\n`);
  const results: Partial<Record<WeightFormat, { batch1: Run; batch8: Run }>> = {};
  const rows: (string | number)[][] = [];
  for (const f of formats) {
    quantizeModel(net, f);
    const r = { batch1: decodeRun(net, 1, tokens, rounds), batch8: decodeRun(net, 8, Math.max(4, tokens >> 1), rounds) };
    for (const x of [r.batch1, r.batch8]) x.bandwidthFraction = (x.bytesPerStep * (1000 / x.stepMs)) / bw;
    results[f] = r;
    rows.push([f, r.batch1.tokensPerSecond.toFixed(1), (r.batch1.bytesPerToken / 1e6).toFixed(1), r.batch1.bandwidthFraction.toFixed(2), r.batch8.tokensPerSecond.toFixed(1), (r.batch8.bytesPerStep / 1e6).toFixed(1), r.batch8.bandwidthFraction.toFixed(2)]);
  }
  say(table(["weights", "batch 1 tokens/s", "MB/token", "bandwidth fraction", "batch 8 tokens/s", "MB/step", "bandwidth fraction"], rows));
  const q8 = results.q8?.batch1.tokensPerSecond;
  const f32 = results.f32?.batch1.tokensPerSecond;
  const q8OverF32Batch1 = q8 && f32 ? q8 / f32 : null;
  if (q8OverF32Batch1 !== null) say(`\nq8 / f32 tokens/s at batch 1: ${q8OverF32Batch1.toFixed(2)}×`);
  if (json) {
    const cpu = b.cpuInfo();
    console.log(JSON.stringify({ decode: { threads: THREADS, cpu: cpu.brand, kernels: decode.name, readBandwidthGBs: bw / 1e9, tokens, rounds, config: SHAPE, formats: results, q8OverF32Batch1 } }));
  }
}
