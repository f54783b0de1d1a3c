/**
 * `npm run bench -- gemm`: our matmul as a fraction of this machine's FMA peak.
 * Validates against the reference backend first, measures the peak with 1 and
 * 2 threads, then times square products and the MoE shapes, the grouped
 * expert product against one matmul of the same total size, and the thin
 * products (an expert's few tokens) against the memory read bandwidth.
 */
import { referenceBackend } from "../src/backend/reference/index.js";
import { fmaPeak, measureVsPeak, median, native, randomArray, table, timeMs } from "./util.js";

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
  // The two are timed alternately (which goes first alternates too), and the
  // figure is the median of each round's ratio: a noisy neighbour then slows
  // both sides of a ratio alike, where a ratio of medians could pair a quiet
  // grouped median with a noisy single one.
  for (const [K, N] of [[512, 2048], [2048, 512]] as const) {
    for (const tw of [true, false]) {
      const x = randomArray(R * K, 5), w = randomArray(E * N * K, 6), y = new Float32Array(R * N);
      const single = randomArray(N * K, 7);
      for (const t of threadsList) {
        b.setThreads(t);
        const gs: number[] = [], ms: number[] = [];
        const grouped = () => b.groupedMatmul(y, x, w, offsets, E, N, K, tw, false);
        const one = () => b.matmul(y, x, single, R, N, K, false, tw, false);
        const timed = (f: () => void, into: number[]) => {
          const t0 = performance.now();
          f();
          into.push(performance.now() - t0);
        };
        grouped();
        one();
        for (let r = 0; r < 31; r++) {
          if (r % 2) timed(one, ms), timed(grouped, gs);
          else timed(grouped, gs), timed(one, ms);
        }
        const ratio = median(gs.map((g, r) => g / ms[r]!));
        const label = tw ? `x[${R},${K}] · W[e]ᵀ (${N}x${K})` : `x[${R},${K}] · W[e] (${K}x${N})`;
        grows.push([label, t, median(gs).toFixed(2), median(ms).toFixed(2), `${((ratio - 1) * 100).toFixed(1)}%`]);
      }
    }
  }
  console.log(table(["product", "threads", "grouped ms (median)", "single ms (median)", "grouped slower by (median of round ratios)"], grows));
  thin(b);
  decodeRows(b);
  b.setThreads(2);
}

/**
 * A batched decoding step: M sequences (1–16 rows of x) through one linear
 * layer, y = x·Wᵀ with W [N,K] as the layers store it (2 threads, as sigma
 * serve runs). Each weight should be read once whatever M is, so the time
 * should stay near M = 1's while the product is memory-bound. GB/s of weight
 * reads against the memory read bandwidth probed in the same run, with the
 * weights rotating over 12 distinct 4 MiB matrices (past the last-level
 * cache, as a model's layers are). The row counts are timed in turn within
 * each round (medians of 15 rounds), and the column "× M=1" is the median
 * of each round's ratio to M = 1: a neighbour that slows a round slows both.
 */
export function decodeRows(b: ReturnType<typeof native>): void {
  b.setThreads(2);
  const big = randomArray(64 << 20, 9);
  const bw = (big.byteLength / timeMs(() => b.sumSquares(big, big.length), 5)) / 1e6;
  console.log(`\nBatched decoding, x[M,K]·Wᵀ (2 threads), against this machine's memory read bandwidth: ${bw.toFixed(1)} GB/s (2 threads, sumSquares over 256 MiB):\n`);
  const NW = 12, Ms = [1, 2, 4, 8, 16];
  const rows: (string | number)[][] = [];
  for (const [N, K] of [[2048, 512], [512, 2048]] as const) {
    const ws = Array.from({ length: NW }, (_, i) => randomArray(N * K, 40 + i));
    const xs = Ms.map((M) => randomArray(M * K, 3)), ys = Ms.map((M) => new Float32Array(M * N));
    const ts = Ms.map(() => [] as number[]);
    let wi = 0;
    for (let r = 0; r < 16; r++) {
      Ms.forEach((M, i) => {
        const t0 = performance.now();
        for (let j = 0; j < NW; j++) b.matmul(ys[i]!, xs[i]!, ws[wi++ % NW]!, M, N, K, false, true, false);
        if (r > 0) ts[i]!.push((performance.now() - t0) / NW);  // round 0 warms up
      });
    }
    Ms.forEach((M, i) => {
      const ms = median(ts[i]!), gbs = (4 * N * K) / ms / 1e6;
      const vsOne = median(ts[i]!.map((t, r) => t / ts[0]![r]!));
      rows.push([`x[${M},${K}] · Wᵀ (W ${N}x${K})`, (ms * 1000).toFixed(0), gbs.toFixed(1), `${((100 * gbs) / bw).toFixed(0)}%`, vsOne.toFixed(2)]);
    });
  }
  console.log(table(["product", "µs (median)", "GB/s of weights", "% of read bandwidth", "× M=1 (median of round ratios)"], rows));
}

/**
 * Thin products: an expert that got a few tokens (ECSS steps, small batches)
 * and its weight gradient, a rank-few update. They are bound by streaming the
 * weights (or writing the gradient), so the ceiling is this machine's memory
 * read bandwidth, probed in the same run (sumSquares over 256 MiB). The
 * weights rotate over 48 distinct 1 MiB matrices, so they come from memory,
 * not from the last-level cache, as an expert's do. One thread (the grouped
 * product gives each expert to one thread).
 */
function thin(b: ReturnType<typeof native>): void {
  b.setThreads(1);
  const big = randomArray(64 << 20, 9);
  const bw = (big.byteLength / timeMs(() => b.sumSquares(big, big.length), 5)) / 1e6;
  console.log(`\nThin products (1 thread), against this machine's memory read bandwidth: ${bw.toFixed(1)} GB/s (sumSquares over 256 MiB):\n`);
  const F = 4096, C = 64, NW = 48;
  const ws = Array.from({ length: NW }, (_, i) => randomArray(F * C, 20 + i));
  const rows: (string | number)[][] = [];
  const run = (label: string, bytes: number, one: (w: Float32Array) => void) => {
    let i = 0;
    const ms = timeMs(() => {
      for (let r = 0; r < NW; r++) one(ws[i++ % NW]!);
    }, 5) / NW;
    rows.push([label, (ms * 1000).toFixed(1), (bytes / ms / 1e6).toFixed(1), `${((100 * bytes) / ms / 1e6 / bw).toFixed(0)}%`]);
  };
  for (const M of [1, 2, 4]) {
    const x = randomArray(M * F, 3), y = new Float32Array(M * F);
    run(`x[${M},${C}] · Wᵀ (W ${F}x${C})`, 4 * F * C, (w) => b.matmul(y, x, w, M, F, C, false, true, false));
    run(`x[${M},${F}] · Wᵀ (W ${C}x${F})`, 4 * F * C, (w) => b.matmul(y, x, w, M, C, F, false, true, false));
    run(`x[${M},${C}] · W (W ${C}x${F})`, 4 * F * C, (w) => b.matmul(y, x, w, M, F, C, false, false, false));
  }
  for (const R of [1, 2, 8]) {
    const dy = randomArray(R * F, 4), x = randomArray(R * C, 5);
    // dW [F,C] = dyᵀ·x, written (the step's first touch) — bytes are the gradient written.
    run(`dW[${F},${C}] = dyᵀ·x over ${R} row(s)`, 4 * F * C, (dw) => b.matmul(dw, dy, x, F, C, R, true, false, false));
  }
  console.log(table(["product", "µs (median)", "GB/s of weights", "% of read bandwidth"], rows));
}
