/**
 * `npm run bench -- balance [--skew=S,S] [--batches=N] [--steps=N] [--hardware=NAME] [--out=DIR] [--png]`:
 * Pangu Pro MoE's finding with the synthetic router. 64 experts, 8 per token,
 * 8 devices, batches of 16 … 4096 tokens: the fraction of batches with IS > 0
 * for global top-8 versus MoGE (top-1 in each of 8 groups) on the same scores,
 * and the simulated throughput of Pangu Pro MoE's shape under each.
 *
 * Validates before it reports: MoGE's IS must be 0 on every batch, and the
 * simulator must reproduce a hand-computed step.
 */
import { contiguousPlacement } from "../src/balance/placement.js";
import { resolveHardware } from "../src/balance/hardware.js";
import { svgsToPng } from "../src/balance/png.js";
import { SHAPE_PRESETS } from "../src/balance/shape.js";
import { simulateStep } from "../src/balance/simulator.js";
import { formatStudy, runStudy, writeStudyPictures } from "../src/balance/study.js";

const arg = (name: string, def: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? def;

/** Two devices, two experts, unit rates: 3 tokens on expert 0 and 1 on expert 1, by hand 3 s + 2·(1 + 1) s. */
function checkSimulator(): void {
  const shape = { ...SHAPE_PRESETS["pangu-pro-moe"]!, experts: 2, width: 1, expertWidth: 1, ffnMatrices: 2 as const, sparseLayers: 1, sharedExperts: 0, context: 0, vocabSize: 0, learnedRouter: false, bytesPerValue: 1 };
  const hw = { name: "unit", flops: 4, memoryBandwidth: 1e30, linkBandwidth: 1, linkLatency: 1 };
  // Tokens 0,1 on device 0, tokens 2,3 on device 1; token 2 goes to expert 0 (device 0).
  const t = simulateStep(shape, hw, contiguousPlacement(2, 2), [{ experts: 2, k: 1, expertIds: Int32Array.from([0, 0, 0, 1]) }]);
  // dense: 2 tokens × 8 FLOPs / 4 = 4 s; a2a: 1 + 1 vector = 2 s each way; experts: 3 × 4 / 4 = 3 s.
  const expected = 4 + 2 * 2 + 3;
  if (Math.abs(t.seconds - expected) > 1e-12) throw new Error(`simulator check failed: ${t.seconds} s, expected ${expected} s`);
}

export async function run(args: string[]): Promise<void> {
  void args;
  checkSimulator();
  const shape = SHAPE_PRESETS["pangu-pro-moe"]!;
  const hardware = resolveHardware(arg("hardware", "npu-cluster"));
  const skews = arg("skew", "0,1").split(",").map(Number);
  const out = arg("out", ".sigma/bench/balance");
  for (const skew of skews) {
    const t0 = performance.now();
    const rows = runStudy({
      shape, hardware, devices: 8, k: 8, skew,
      tokens: [16, 64, 256, 1024, 4096],
      batches: Number(arg("batches", "200")),
      steps: Number(arg("steps", "3")),
      mode: "infer",
      seed: 1,
    });
    const bad = rows.find((r) => r.moge.imbalance.max !== 0);
    if (bad) throw new Error(`MoGE gave IS ${bad.moge.imbalance.max} at ${bad.tokens} tokens: it must be 0 by construction`);
    console.log(`\n64 experts, top-8 vs MoGE (8 groups × top-1), 8 devices, skew ${skew}, ${shape.name} on ${hardware.name} (inference), ${arg("batches", "200")} batches per size:`);
    console.log(formatStudy(rows));
    const svgs = writeStudyPictures(`${out}/skew-${skew}`, rows, `64 experts, top-8, 8 devices, skew ${skew}`);
    const pics = process.argv.includes("--png") ? [...svgs, ...svgsToPng(svgs)] : svgs;
    console.log(`pictures: ${pics.join(", ")}  (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  }
}
