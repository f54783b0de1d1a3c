/**
 * `npm run bench -- model`: forward+backward tokens/s of the reference config R
 * (d=512, 8 heads, 2 dense + 2 sparse layers, 8 experts, top-2, F=2048,
 * V=8192, T=256, B=8) for each router and for the dense twin, with the FLOP
 * count per token and the fraction of this machine's FMA peak (measured in the
 * same run) that it reaches.
 */
import { backward, zeroGrad } from "../src/autograd/tape.js";
import { getBackend } from "../src/backend/index.js";
import { PEAK_LEGEND, fmaPeak } from "./util.js";
import { loadNative } from "../src/backend/native/index.js";
import { modelRouter, parseModelConfig, type ModelConfig, type ModelConfigInput, type RouterConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { Rng } from "../src/util/rng.js";

const R = { width: 512, heads: 8, dense: 2, sparse: 2, experts: 8, k: 2, ffn: 2048, vocab: 8192, T: 256, B: 8 };

const domains = ["zh", "en", "bi", "code"].map((name, i) => ({ name, slot: 0, group: i }));

function configR(router: RouterConfig | null): ModelConfig {
  const c: ModelConfigInput = {
    vocabSize: R.vocab, width: R.width, heads: R.heads, seqLen: R.T, ffnWidth: R.ffn,
    denseLayers: router ? R.dense : R.dense + R.sparse,
    sparseLayers: router ? R.sparse : 0,
    domains,
    experts: router ? { count: R.experts, router } : undefined,
  };
  return parseModelConfig(c);
}

/** Forward FLOPs per token (multiply-add = 2): projections, causal attention (T/2 keys on average), FFNs, routers, logits. */
export function forwardFlopsPerToken(c: ModelConfig): number {
  const C = c.width, T = c.seqLen, F = c.ffnWidth, V = c.vocabSize;
  const attn = 2 * 4 * C * C + 2 * 2 * (T / 2) * C;
  const ffn = (width: number) => 2 * 2 * C * width;
  let total = 0;
  for (let l = 0; l < c.denseLayers; l++) total += attn + ffn(F);
  for (let l = 0; l < c.sparseLayers; l++) {
    const ex = c.experts!;
    const { spec } = modelRouter(c)!;
    total += attn + (spec.k + spec.sharedExperts) * ffn(ex.width ?? F) + (spec.learned ? 2 * C * ex.count : 0);
  }
  total += attn + ffn(F); // query layer
  total += 2 * C * V; // tied logits
  return total;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

export async function run(args: string[]): Promise<void> {
  const native = loadNative();
  if (!native.backend) throw new Error(`bench model needs the native backend: ${native.error}`);
  const steps = Number(args.find((a) => a.startsWith("--steps="))?.slice(8) ?? 5);
  const threads = getBackend().getThreads();
  // FMA peak with the same thread count, measured now (and probed again beside every step for the ratios).
  const peak = fmaPeak(threads);
  console.log(`FMA peak (${threads} threads): ${(peak / 1e9).toFixed(1)} GFLOP/s`);
  console.log(PEAK_LEGEND);
  console.log(`config R: d=${R.width}, ${R.heads} heads, ${R.dense} dense + ${R.sparse} sparse layers, ${R.experts} experts, F=${R.ffn}, V=${R.vocab}, T=${R.T}, B=${R.B}\n`);
  console.log("model    | tokens/s | fwd+bwd ms (median) | GFLOP/token | GFLOP/s | % of local peak | % of run peak");
  console.log("---------|----------|---------------------|-------------|---------|-----------------|--------------");
  let runPeak = peak;
  const only = args.find((a) => a.startsWith("--only="))?.slice(7);
  const all: [string, RouterConfig | null][] = [
    ["dense", null],
    ["rre", { kind: "rre", groups: 4, seed: 1 }],
    ["moge", { kind: "moge", groups: 2, perGroup: 1, auxLossCoef: 0.01, sharedExperts: 0 }],
    ["topk", { kind: "topk", k: 2, renormalize: true, auxLossCoef: 0.01, zLossCoef: 0, capacityFactor: null }],
  ];
  const variants = only ? all.filter(([n]) => only.split(",").includes(n)) : all;
  const rng = new Rng(1);
  const tokens = Int32Array.from({ length: R.B * R.T }, () => rng.int(R.vocab));
  const targets = Int32Array.from({ length: R.B * R.T }, () => rng.int(R.vocab));
  const doms = Int32Array.from({ length: R.B }, (_, b) => b % domains.length);
  for (const [name, router] of variants) {
    const config = configR(router);
    const model = new PanguSigma(config);
    const input = { tokens, domains: doms, B: R.B, T: R.T };
    const flops = 3 * forwardFlopsPerToken(config); // backward ≈ 2× forward
    const times: number[] = [], ratios: number[] = [];
    for (let s = 0; s < steps + 1; s++) {
      // The peak probed beside each step: a noisy neighbour on the host slows both alike.
      const localPeak = s > 0 ? fmaPeak(threads, 3) : 0;
      runPeak = Math.max(runPeak, localPeak);
      zeroGrad(model.parameters());
      const t0 = performance.now();
      backward(model.loss(input, targets).loss, undefined, { freeActivations: true }); // as a training step does
      const ms = performance.now() - t0;
      if (s === 0) continue; // the first step warms caches and allocates gradients
      times.push(ms);
      ratios.push((flops * R.B * R.T) / (ms / 1000) / localPeak);
    }
    const ms = median(times);
    const tps = (R.B * R.T) / (ms / 1000);
    const achieved = flops * tps;
    console.log(
      `${name.padEnd(8)} | ${tps.toFixed(0).padStart(8)} | ${ms.toFixed(0).padStart(19)} | ${(flops / 1e9).toFixed(3).padStart(11)} | ${(achieved / 1e9).toFixed(1).padStart(7)} | ${(100 * median(ratios)).toFixed(1).padStart(15)}% | ${(100 * achieved / runPeak).toFixed(1).padStart(12)}%`,
    );
  }
}

