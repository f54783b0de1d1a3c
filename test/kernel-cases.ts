// Random inputs for every kernel of the Backend contract, shared by the
// conformance suite and the native argument-error tests. Not a test file.
import type { KernelName } from "../src/backend/backend.js";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { halfBits } from "../src/backend/quant.js";
import { Rng } from "../src/util/rng.js";

const rng = new Rng(2024);
const f32 = (n: number, scale = 1) => Float32Array.from({ length: n }, () => (rng.uniform() * 2 - 1) * scale);
const ints = (n: number, hi: number) => Int32Array.from({ length: n }, () => rng.int(hi));
export const clone = (x: unknown): unknown => (x instanceof Float32Array || x instanceof Int32Array || x instanceof Uint16Array ? x.slice() : Array.isArray(x) ? x.map(clone) : x);

/** A stacked [E, n] buffer as E separate buffers (experts that live apart, e.g. store records). */
const parts = (stacked: Float32Array, E: number): Float32Array[] => Array.from({ length: E }, (_, e) => stacked.slice((e * stacked.length) / E, ((e + 1) * stacked.length) / E));

/**
 * Cases of a grouped kernel (groupedMatmul, groupedMatmulWeightGrad) for each
 * expert grouping and both layouts, each also with its expert matrices (the
 * argument at `w`) as separate buffers.
 */
function groupedCases(shapes: { counts: number[]; N: number; K: number }[], w: number, args: (R: number, E: number, N: number, K: number) => Float32Array[], tol: (R: number, K: number) => number): Case[] {
  return shapes.flatMap(({ counts, N, K }) => {
    const E = counts.length, R = counts.reduce((a, b) => a + b, 0);
    return [true, false].flatMap((tw) => {
      const c: Case = { label: `counts ${counts} N=${N} K=${K} transW=${tw}`, args: [...args(R, E, N, K), offsetsOf(counts), E, N, K, tw, rng.uniform() < 0.5], outputs: [0], tol: tol(R, K) };
      return [c, { ...c, label: `${c.label} (in parts)`, args: c.args.map((a, i) => (i === w ? parts(a as Float32Array, E) : a)) }];
    });
  });
}

/** One case: arguments (buffers are copied per backend) and which of them are outputs to compare, with tolerance. */
export interface Case {
  label: string;
  args: unknown[];
  outputs: number[];
  tol: number;
  /** Compare the return value too (sumSquares). */
  result?: boolean;
}

const ODD = [1, 3, 17, 33, 257];
/** Sizes at the edges of 8- and 16-lane vectors and of the AVX2 and AVX-512 loops' 16-, 32- and 64-float steps (masked tails). */
const LANES = [7, 8, 9, 15, 16, 31, 48, 63, 65, 100];
const pick = <T,>(xs: T[]) => xs[rng.int(xs.length)]!;

function matmulCases(): Case[] {
  const cs: Case[] = [];
  for (const [M, N, K] of [[1, 1, 1], [1, 257, 33], [1, 33, 257], [3, 17, 33], [17, 3, 257], [33, 257, 17], [257, 33, 3], [64, 100, 300],
    // the blocked path: several row blocks (MC 96), column blocks (NC 1024) and k blocks (KC 512), each with an edge
    [131, 1041, 530],
    // few rows, a deep inner dimension: B·Aᵀ passes of up to 2048 k, blocks of B rows fewer as k grows (edges in both)
    [29, 203, 2100], [50, 130, 1100],
    // thin products (2–4 rows; an inner dimension of at most 8), with vector tails in N and K
    [2, 35, 19], [4, 7, 64], [3, 1, 9], [2, 1030, 3], [70, 21, 8], [5, 600, 2], [9, 13, 1]]) {
    for (const ta of [false, true]) for (const tb of [false, true]) for (const acc of [false, true]) {
      cs.push({ label: `${M}x${N}x${K} ta=${ta} tb=${tb} acc=${acc}`, args: [f32(M! * N!), f32(M! * K!), f32(K! * N!), M, N, K, ta, tb, acc], outputs: [0], tol: 1e-5 * Math.sqrt(K!) });
    }
  }
  return cs;
}

/**
 * The bf16-input products (inputs rounded to bf16, f32 sums) against their
 * reference twin: odd shapes, every transpose, accumulate on and off, and
 * shapes past the bf16 driver's blocks (KC 512 k, MC 192 rows, NC 2048
 * columns on Zen 4) with edges. test/bf16.test.ts checks more, per path.
 */
function matmulBf16Cases(): Case[] {
  const cs: Case[] = [];
  for (const [M, N, K] of [[1, 1, 1], [3, 17, 33], [17, 3, 257], [33, 257, 17], [257, 33, 3], [2, 9, 1], [13, 2100, 40], [200, 40, 530]]) {
    for (const ta of [false, true]) for (const tb of [false, true]) for (const acc of [false, true]) {
      cs.push({ label: `${M}x${N}x${K} ta=${ta} tb=${tb} acc=${acc}`, args: [f32(M! * N!), f32(M! * K!), f32(K! * N!), M, N, K, ta, tb, acc], outputs: [0], tol: 1e-5 * Math.sqrt(K!) });
    }
  }
  return cs;
}

/** Expert row counts with an empty expert, one holding everything, and random ones. */
function offsetsOf(counts: number[]): Int32Array {
  const o = new Int32Array(counts.length + 1);
  counts.forEach((c, e) => (o[e + 1] = o[e]! + c));
  return o;
}
const groupings = [[0, 5, 0, 12], [0, 0, 37, 0], [3, 1, 17, 0, 33, 2], [64, 64, 64, 64, 64, 64, 64, 64],
  // an expert step of few tokens each (the thin kernels)
  [1, 2, 4, 1, 0, 3, 2]];

export const CASES: Record<KernelName, () => Case[]> = {
  matmul: matmulCases,
  bmm: () =>
    [[2, 3, 17, 33], [5, 17, 1, 3], [1, 33, 33, 17]].flatMap(([S, M, N, K]) =>
      [false, true].flatMap((ta) => [false, true].map((tb) => ({ label: `${S}x${M}x${N}x${K} ${ta} ${tb}`, args: [f32(S! * M! * N!), f32(S! * M! * K!), f32(S! * K! * N!), S, M, N, K, ta, tb, true], outputs: [0], tol: 1e-5 * Math.sqrt(K!) }))),
    ),
  groupedMatmul: () =>
    groupedCases(
      [
        ...groupings.map((counts) => ({ counts, N: pick(ODD), K: pick(ODD) })),
        // Large enough to run threaded: whole experts per thread (many small experts), and the sliced fallback (one expert holds most rows).
        { counts: [64, 64, 64, 64, 17, 3, 64, 64], N: 257, K: 33 },
        { counts: [90, 1, 2, 1, 0, 1, 1, 1], N: 257, K: 257 },
      ],
      2, // y, x, w
      (R, E, N, K) => [f32(R * N), f32(R * K), f32(E * N * K)],
      (_R, K) => 1e-5 * Math.sqrt(K),
    ),
  groupedMatmulWeightGrad: () =>
    groupedCases(
      [
        ...groupings.map((counts) => ({ counts, N: pick(ODD), K: pick(ODD) })),
        // Threaded: whole experts per thread, and the sliced fallback.
        { counts: [64, 64, 0, 64, 17, 3, 64, 64], N: 257, K: 33 },
        { counts: [300, 1, 2, 1, 0, 1, 1, 1], N: 33, K: 257 },
      ],
      0, // dw, dy, x
      (R, E, N, K) => [f32(E * N * K), f32(R * N), f32(R * K)],
      (R) => 1e-5 * Math.sqrt(R + 1),
    ),
  // The same products, and Σ dw² returned: summed from the registers as the thin kernel stores
  // (an expert's few tokens: 1–8 rows, edges of the 8-lane vectors and of its 512-column chunks),
  // read back after the product on every other path (deeper experts, the portable path).
  groupedMatmulWeightGradSquares: () =>
    groupedCases(
      [
        ...groupings.map((counts) => ({ counts, N: pick(ODD), K: pick(ODD) })),
        { counts: [1, 2, 4, 1, 0, 3, 2, 8, 5], N: 257, K: 17 },
        { counts: [3, 1, 7, 2], N: 1, K: 1031 },
        { counts: [9, 1, 0, 2], N: 65, K: 33 },
        { counts: [64, 64, 0, 64, 17, 3, 64, 64], N: 257, K: 33 },
        { counts: [300, 1, 2, 1, 0, 1, 1, 1], N: 33, K: 257 },
      ],
      0,
      (R, E, N, K) => [f32(E * N * K), f32(R * N), f32(R * K)],
      (R) => 1e-5 * Math.sqrt(R + 1),
    ).map((c) => ({ ...c, result: true })),
  matmulBf16: matmulBf16Cases,
  groupedMatmulBf16: () =>
    groupedCases(
      [...groupings.map((counts) => ({ counts, N: pick(ODD), K: pick(ODD) })), { counts: [64, 64, 64, 64, 17, 3, 64, 64], N: 257, K: 33 }, { counts: [90, 1, 2, 1, 0, 1, 1, 1], N: 257, K: 257 }],
      2,
      (R, E, N, K) => [f32(R * N), f32(R * K), f32(E * N * K)],
      (_R, K) => 1e-5 * Math.sqrt(K),
    ),
  groupedMatmulWeightGradBf16: () =>
    groupedCases(
      [...groupings.map((counts) => ({ counts, N: pick(ODD), K: pick(ODD) })), { counts: [64, 64, 0, 64, 17, 3, 64, 64], N: 257, K: 33 }, { counts: [300, 1, 2, 1, 0, 1, 1, 1], N: 33, K: 257 }],
      0,
      (R, E, N, K) => [f32(E * N * K), f32(R * N), f32(R * K)],
      (R) => 1e-5 * Math.sqrt(R + 1),
    ),
  addBias: () => ODD.map((c) => ({ label: `cols ${c}`, args: [f32(7 * c), f32(7 * c), f32(c), 7, c], outputs: [0], tol: 1e-6 })),
  addBiasBackward: () => ODD.map((c) => ({ label: `cols ${c}`, args: [f32(c), f32(33 * c), 33, c], outputs: [0], tol: 1e-5 })),
  add: () => [...ODD, 100003].map((n) => ({ label: `n ${n}`, args: [f32(n), f32(n), f32(n), n], outputs: [0], tol: 1e-7 })),
  mul: () => [...ODD, 100003].map((n) => ({ label: `n ${n}`, args: [f32(n), f32(n), f32(n), n], outputs: [0], tol: 1e-7 })),
  scale: () => [...ODD, 100003].map((n) => ({ label: `n ${n}`, args: [f32(n), f32(n), -1.5, n], outputs: [0], tol: 1e-6 })),
  axpy: () => [...ODD, 100003].map((n) => ({ label: `n ${n}`, args: [f32(n), f32(n), 0.75, n], outputs: [0], tol: 1e-6 })),
  sumSquares: () => [...ODD, 100003].map((n) => ({ label: `n ${n}`, args: [f32(n), n], outputs: [], tol: 1e-5, result: true })),
  gelu: () => [...ODD, 4099].map((n) => ({ label: `n ${n}`, args: [f32(n), f32(n, 6), n], outputs: [0], tol: 1e-6 })),
  geluBackward: () => [...ODD, 4099].map((n) => ({ label: `n ${n}`, args: [f32(n), f32(n, 6), f32(n), n], outputs: [0], tol: 1e-6 })),
  fastGelu: () => [...ODD, ...LANES, 4099].map((n) => ({ label: `n ${n}`, args: [f32(n), f32(n, 60), n], outputs: [0], tol: 1e-5 })),
  fastGeluBackward: () => [...ODD, ...LANES, 4099].map((n) => ({ label: `n ${n}`, args: [f32(n), f32(n, 60), f32(n), n], outputs: [0], tol: 1e-5 })),
  swiglu: () => [...ODD, ...LANES, 4099].map((n) => ({ label: `n ${n}`, args: [f32(n), f32(n, 30), f32(n, 3), n], outputs: [0], tol: 1e-5 })),
  swigluBackward: () => [...ODD, ...LANES, 4099].map((n) => ({ label: `n ${n}`, args: [f32(n), f32(n), f32(n), f32(n, 30), f32(n, 3), n], outputs: [0, 1], tol: 1e-5 })),
  rmsNorm: () => [...ODD, ...LANES, 512].map((C) => ({ label: `C ${C}`, args: [f32(9 * C), f32(9), f32(9 * C, 3), f32(C), 9, C, 1e-5], outputs: [0, 1], tol: 1e-5 })),
  rmsNormBackward: () =>
    // [70, 1000]: the column sums (dgamma) split over threads in slices that do not start on a vector boundary.
    [...ODD.map((C) => [9, C]), ...LANES.map((C) => [9, C]), [70, 1000]].map(([rows, C]) => {
      const x = f32(rows! * C!, 3), rstd = new Float32Array(rows!), gamma = f32(C!);
      ref.rmsNorm(new Float32Array(rows! * C!), rstd, x, gamma, rows!, C!, 1e-5);
      return { label: `rows ${rows} C ${C}`, args: [f32(rows! * C!), f32(C!), f32(rows! * C!), x, rstd, gamma, rows, C], outputs: [0, 1], tol: 1e-4 };
    }),
  layerNorm: () =>
    [...ODD, ...LANES, 512].map((C) => {
      // A large common offset (the two-pass variance keeps its precision).
      const x = f32(9 * C, 3).map((v, i) => (i < C ? v + 1000 : v));
      return { label: `C ${C}`, args: [f32(9 * C), f32(9), f32(9), x, f32(C), f32(C), 9, C, 1e-5], outputs: [0, 1, 2], tol: 1e-4 };
    }),
  layerNormBackward: () =>
    // [70, 1000]: the column sums (dgamma, dbeta) split over threads in slices that do not start on a vector boundary.
    [...ODD.map((C) => [9, C]), ...LANES.map((C) => [9, C]), [70, 1000]].map(([rows, C]) => {
      const x = f32(rows! * C!, 3), mean = new Float32Array(rows!), rstd = new Float32Array(rows!), gamma = f32(C!);
      ref.layerNorm(new Float32Array(rows! * C!), mean, rstd, x, gamma, f32(C!), rows!, C!, 1e-5);
      return { label: `rows ${rows} C ${C}`, args: [f32(rows! * C!), f32(C!), f32(C!), f32(rows! * C!), x, mean, rstd, gamma, rows, C], outputs: [0, 1, 2], tol: 1e-4 };
    }),
  softmax: () => [...ODD, ...LANES, 8192].map((c) => ({ label: `cols ${c}`, args: [f32(5 * c), f32(5 * c, 10), 5, c], outputs: [0], tol: 1e-6 })),
  softmaxBackward: () =>
    [...ODD, ...LANES, 8192].map((c) => {
      const y = new Float32Array(5 * c);
      ref.softmax(y, f32(5 * c, 5), 5, c);
      return { label: `cols ${c}`, args: [f32(5 * c), y, f32(5 * c), 5, c], outputs: [0], tol: 1e-5 };
    }),
  crossEntropy: () =>
    [...ODD, ...LANES, 8192].map((V) => {
      const t = ints(6, V);
      t[2] = -100;
      return { label: `V ${V}`, args: [f32(6), f32(6), f32(6 * V, 8), t, 6, V, -100], outputs: [0, 1], tol: 1e-4 };
    }),
  crossEntropyBackward: () =>
    [...ODD, ...LANES, 8192].map((V) => {
      const logits = f32(6 * V, 8), t = ints(6, V), lse = new Float32Array(6);
      t[4] = -1;
      ref.crossEntropy(new Float32Array(6), lse, logits, t, 6, V, -1);
      return { label: `V ${V}`, args: [f32(6 * V), logits, lse, t, f32(6), 6, V, -1], outputs: [0], tol: 1e-5 };
    }),
  embedding: () => ODD.map((C) => ({ label: `C ${C}`, args: [f32(40 * C), f32(13 * C), ints(40, 13), 40, C], outputs: [0], tol: 0 })),
  embeddingBackward: () => ODD.map((C) => ({ label: `C ${C}`, args: [f32(13 * C), f32(40 * C), ints(40, 13), 40, C], outputs: [0], tol: 1e-5 })),
  attention: attentionCases(false),
  attentionBackward: attentionCases(true),
  attentionHalf: attentionHalfCases,
  // Finite values only here (the comparison is numeric); test/kv-half.test.ts checks NaN, infinities and ties bit for bit.
  toHalf: () => [...ODD, ...LANES].map((n) => ({ label: `n ${n}`, args: [new Uint16Array(n), Float32Array.from(f32(n, 70000), (x, i) => (i % 3 === 0 ? x * 1e-5 : x)), n], outputs: [0], tol: 0 })),
  fromHalf: () => [...ODD, ...LANES].map((n) => ({ label: `n ${n}`, args: [f32(n), Uint16Array.from({ length: n }, () => rng.int(0x7c00) | (rng.int(2) << 15)), n], outputs: [0], tol: 0 })),
  permuteByExpert: () => [[1, 1], [17, 3], [257, 8], [1000, 33]].map(([n, E]) => ({ label: `n ${n} E ${E}`, args: [new Int32Array(n!), new Int32Array(E! + 1), ints(n!, E!), n, E], outputs: [0, 1], tol: 0 })),
  gatherRows: () => ODD.map((C) => ({ label: `C ${C}`, args: [f32(30 * C), f32(7 * C), ints(30, 7), 30, C], outputs: [0], tol: 0 })),
  scatterAddRows: () => ODD.map((C) => ({ label: `C ${C}`, args: [f32(7 * C), f32(30 * C), ints(30, 7), 30, C], outputs: [0], tol: 1e-5 })),
  combine: () => ODD.map((C) => ({ label: `C ${C}`, args: [f32(7 * C), f32(30 * C), ints(30, 7), f32(30), 30, C], outputs: [0], tol: 1e-5 })),
  combineBackward: () => ODD.map((C) => ({ label: `C ${C}`, args: [f32(30 * C), f32(30), f32(7 * C), f32(30 * C), ints(30, 7), f32(30), 30, C], outputs: [0, 1], tol: 1e-4 })),
  adamw: () =>
    [1e-8, 1e-20].flatMap((eps) =>
      [...ODD, 100003].map((n) => ({ label: `n ${n} eps ${eps}`, args: [f32(n), f32(n, 1e-3), f32(n, 1e-3), Float32Array.from(f32(n, 1e-6), Math.abs), n, 1e-3, 0.8, 0.95, eps, 0.1, 7, 0.6], outputs: [0, 2, 3], tol: 1e-5 })),
    ),
  // Records params | m | v (v ≥ 0): odd P with the decay split anywhere (none, all, odd), one expert to many
  // (one thread's range then crosses experts), each with its own step count.
  adamwExperts: () =>
    [[1, 1, 1], [3, 17, 5], [17, 3, 0], [5, 257, 257], [40, 4099, 4001], [2, 100003, 99999]].map(([E, P, decayed]) => {
      // Params of order 1 (so that weight decay, lr·wd·p, shows above the tolerance), m and v small.
      const record = () => {
        const r = f32(3 * P!, 1e-3);
        r.set(f32(P!), 0);
        for (let i = 2 * P!; i < 3 * P!; i++) r[i] = Math.abs(r[i]!) * 1e-3;
        return r;
      };
      return { label: `E ${E} P ${P} decayed ${decayed}`, args: [Array.from({ length: E! }, record), Array.from({ length: E! }, () => f32(P!, 1e-3)), Int32Array.from({ length: E! }, () => 1 + rng.int(40)), P, E, decayed, 1e-2, 0.8, 0.95, 1e-8, 0.1, 0.6], outputs: [0], tol: 1e-5 };
    }),
};

/** attention's forward shapes (grouped ones included) over f16 keys and values. */
function attentionHalfCases(): Case[] {
  return [
    [2, 17, 17, 2, 1, 17, 2], [2, 3, 20, 2, 17, 32, 2], [1, 1, 257, 1, 64, 300, 1], [2, 8, 600, 2, 64, 640, 2],
    [1, 100, 100, 2, 33, 100, 2], [2, 40, 70, 3, 17, 80, 3], [2, 3, 20, 4, 17, 32, 2], [1, 1, 257, 6, 64, 300, 1], [2, 40, 70, 6, 17, 80, 3],
    [1, 1, 130, 8, 64, 200, 8], // decode past two chunks of 64 keys
  ].map(([b, tq, tk, h, d, kc, g]) => {
    const halves = (n: number, scale: number) => Uint16Array.from(f32(n, scale), halfBits);
    const q = f32(b! * tq! * h! * d!, 2), k = halves(b! * kc! * g! * d!, 2), v = halves(b! * kc! * g! * d!, 1);
    return { label: `B${b} Tq${tq} Tk${tk} H${h} D${d} cap${kc} kvHeads${g}`, args: [f32(b! * tq! * h! * d!), f32(b! * h! * tq!), q, k, v, b, tq, tk, h, d, kc, 1 / Math.sqrt(d!), g], outputs: [0, 1], tol: 1e-5 };
  });
}

function attentionCases(backward: boolean): () => Case[] {
  return () =>
    [
      [2, 17, 17, 2, 1, 17],
      [1, 33, 33, 3, 3, 33],
      [2, 5, 5, 4, 17, 5],
      [1, 64, 64, 2, 64, 64],
      [2, 3, 20, 2, 17, 32], // decode: Tq < Tk < kvCap
      [1, 1, 257, 1, 64, 300],
      [2, 8, 600, 2, 64, 640], // decode with a long cache: enough work per query row for two threads
      [1, 100, 100, 2, 33, 100], // blocks: several query blocks, a partial last one
      [2, 40, 70, 3, 17, 80], // blocks with a cache prefix: Tq < Tk < kvCap
      [1, 257, 257, 1, 64, 257],
      // Grouped-query attention (forward only; the 7th number is kvHeads G): decode rows, multi-query, query blocks over a cache prefix.
      ...(backward ? [] : [[2, 3, 20, 4, 17, 32, 2], [1, 1, 257, 6, 64, 300, 1], [2, 40, 70, 6, 17, 80, 3], [1, 17, 17, 4, 33, 17, 2], [2, 8, 600, 8, 64, 640, 2]]),
    ].map(([B, Tq, Tk, H, D, cap, G]) => {
      const [b, tq, tk, h, d, kc] = [B!, Tq!, Tk!, H!, D!, cap!];
      const g = G ?? h;
      const scale = 1 / Math.sqrt(d);
      const q = f32(b * tq * h * d, 2), k = f32(b * kc * g * d, 2), v = f32(b * kc * g * d);
      const label = `B${b} Tq${tq} Tk${tk} H${h} D${d} cap${kc}${G ? ` kvHeads${g}` : ""}`;
      if (!backward) return { label, args: [f32(b * tq * h * d), f32(b * h * tq), q, k, v, b, tq, tk, h, d, kc, scale, ...(G ? [g] : [])], outputs: [0, 1], tol: 1e-5 };
      const out = new Float32Array(b * tq * h * d), lse = new Float32Array(b * h * tq);
      ref.attention(out, lse, q, k, v, b, tq, tk, h, d, kc, scale);
      return { label, args: [f32(b * tq * h * d), f32(b * kc * h * d), f32(b * kc * h * d), f32(b * tq * h * d), q, k, v, out, lse, b, tq, tk, h, d, kc, scale], outputs: [0, 1, 2], tol: 1e-4 };
    });
}

