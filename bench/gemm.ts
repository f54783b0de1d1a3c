/**
 * `npm run bench -- gemm`: our matmul as a fraction of this machine's FMA peak.
 * Validates against the reference backend first, measures the peak with 1 and
 * 2 threads, then times square products and the MoE shapes, and the grouped
 * expert product against one matmul of the same total size.
 */
import { referenceBackend } from "../src/backend/reference/index.js";
import { fmaPeak, measureVsPeak, median, native, randomArray, table } from "./util.js";

function validate(): void {
  const b = native(true);
  for (const [M, N, K] of [[17, 33, 257], [64, 100, 31]] as const) {
    for (const ta of [false, true]) {
      for (const tb of [false, true]) {
        const a = randomArray(M * K, 1), bb = randomArray(K * N, 2);
        const c1 = new Float32Array(M * N), c2 = new Float32Array(M * N);
        b.matmul(c1, a, bb, M, N, K, ta, tb, false);
        referenceBackend.matmul(c2, a, bb, M, N, K, ta, tb, false);
        for (let i = 0; i < c1.length; i++) {
          if (Math.abs(c1[i]! - c2[i]!) > 1e-4 * Math.sqrt(K)) throw new Error(`matmul disagrees with the reference at ${M}x${N}x${K} ta=${ta} tb=${tb}`);
        }
      }
    }
  }
}

export async function run(args: string[]): Promise<void> {
  const b = native(true);
  const quick = args.includes("--quick");
  validate();
  console.log(`kernel path: ${b.cpuFeatures().path}`);
  const threadsList = [1, 2];
  const peaks = new Map(threadsList.map((t) => [t, fmaPeak(t)]));
  for (const [t, p] of peaks) console.log(`FMA peak, ${t} thread(s): ${(p / 1e9).toFixed(1)} GFLOP/s`);

  const shapes: { label: string; M: number; N: number; K: number; tb: boolean }[] = [];
  for (const n of quick ? [256, 1024] : [256, 512, 1024, 2048]) {
    shapes.push({ label: `square ${n}`, M: n, N: n, K: n, tb: false });
    shapes.push({ label: `square ${n} ·Bᵀ`, M: n, N: n, K: n, tb: true });
  }
  for (const rows of [1, 16, 64, 256, 1024]) {
    for (const [K, N] of [[512, 2048], [2048, 512]] as const) {
      shapes.push({ label: `x[${rows},${K}]·Wᵀ (W ${N}x${K})`, M: rows, N, K, tb: true });
      shapes.push({ label: `x[${rows},${K}]·W (W ${K}x${N})`, M: rows, N, K, tb: false });
    }
  }
  const rows: (string | number)[][] = [];
  for (const s of shapes) {
    const a = randomArray(s.M * s.K, 3), w = randomArray(s.K * s.N, 4), c = new Float32Array(s.M * s.N);
    const cells: (string | number)[] = [s.label];
    for (const t of threadsList) {
      b.setThreads(t);
      const flops = 2 * s.M * s.N * s.K;
      const reps = flops > 4e9 ? 3 : flops > 1e8 ? 7 : 31;
      const m = measureVsPeak(() => b.matmul(c, a, w, s.M, s.N, s.K, false, s.tb, false), flops, t, reps);
      cells.push((m.flops / 1e9).toFixed(1), `${(100 * m.ratio).toFixed(0)}%`);
    }
    rows.push(cells);
  }
  console.log("\nGFLOP/s and fraction of the FMA peak with the same thread count, probed beside each measurement (medians of 3 rounds):\n");
  console.log(table(["shape", "1 thr GFLOP/s", "1 thr % peak", "2 thr GFLOP/s", "2 thr % peak"], rows));

  // Grouped product: 8 experts × 64 rows versus one matmul of the same total size.
  console.log("\nGrouped expert product (8 experts × 64 rows) vs one matmul [512 rows] of the same FLOPs:\n");
  const E = 8, per = 64, R = E * per;
  const offsets = Int32Array.from({ length: E + 1 }, (_, e) => e * per);
  const grows: (string | number)[][] = [];
  // transW: y = x·W[e]ᵀ (the expert forward, W [E,N,K]); otherwise y = x·W[e] (the input gradient, W read as [E,K,N]).
  // The two are timed alternately, so that a noisy neighbour slows both alike.
  for (const [K, N] of [[512, 2048], [2048, 512]] as const) {
    for (const tw of [true, false]) {
      const x = randomArray(R * K, 5), w = randomArray(E * N * K, 6), y = new Float32Array(R * N);
      const single = randomArray(N * K, 7);
      for (const t of threadsList) {
        b.setThreads(t);
        const gs: number[] = [], ms: number[] = [];
        b.groupedMatmul(y, x, w, offsets, E, N, K, tw, false);
        b.matmul(y, x, single, R, N, K, false, tw, false);
        for (let r = 0; r < 21; r++) {
          let t0 = performance.now();
          b.groupedMatmul(y, x, w, offsets, E, N, K, tw, false);
          gs.push(performance.now() - t0);
          t0 = performance.now();
          b.matmul(y, x, single, R, N, K, false, tw, false);
          ms.push(performance.now() - t0);
        }
        const g = median(gs), m = median(ms);
        const label = tw ? `x[${R},${K}] · W[e]ᵀ (${N}x${K})` : `x[${R},${K}] · W[e] (${K}x${N})`;
        grows.push([label, t, g.toFixed(2), m.toFixed(2), `${((g / m - 1) * 100).toFixed(1)}%`]);
      }
    }
  }
  console.log(table(["product", "threads", "grouped ms (median)", "single ms (median)", "grouped slower by"], grows));
  b.setThreads(2);
}
