/**
 * `npm run bench -- ops [--reps=N] [--paths=P,…] [--against=FILE] [--json]`:
 * the non-GEMM kernels of a training step at config R's shapes (2048 tokens of
 * width 512, FFN 2048, vocabulary 8192), timed on kernel paths this CPU has —
 * by default the AVX2 kernels (`avx2-fma`, held with setKernelPath) beside the
 * run-time choice (`auto`: AVX-512 where the CPU has it); --paths picks others
 * (`portable`, `avx2-fma`, `auto`) — in interleaved rounds, medians. Each
 * kernel is checked against the reference backend before it is timed. The
 * memory-bound ones are also given as GB/s of the bytes they must move.
 *
 * --against=FILE adds another build of the addon (e.g. one built from an
 * earlier commit), timed on the same paths in the same rounds: before and
 * after, path by path.
 *
 * With --json, stdout is one JSON object:
 *   { ops: { threads, paths, kernels: [{ name, shape, bytes, ms: { <column>: median ms } }] } }
 * where a column is a path name (`avx512`, `avx2-fma`, `portable`), and
 * `against <path>` for the other build.
 */
import { createRequire } from "node:module";
import { resolve } from "node:path";
import type { NativeBackend } from "../src/backend/native/index.js";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { median, native, randomArray, table } from "./util.js";

const ROWS = 2048, C = 512, F = 2048, V = 8192;

interface Case {
  name: string;
  shape: string;
  /** Bytes the kernel must read and write at least (for GB/s). */
  bytes: number;
  run: () => void;
  /** Native output vs the reference's on the same inputs (max relative difference). */
  check?: () => number;
}

function maxRel(a: Float32Array, b: Float32Array): number {
  let w = 0;
  for (let i = 0; i < a.length; i++) w = Math.max(w, Math.abs(a[i]! - b[i]!) / Math.max(1, Math.abs(b[i]!)));
  return w;
}

function cases(b: NativeBackend): Case[] {
  const x = randomArray(ROWS * C, 1), y = new Float32Array(ROWS * C), dy = randomArray(ROWS * C, 2), dx = new Float32Array(ROWS * C);
  const gamma = randomArray(C, 3), beta = randomArray(C, 4), mean = new Float32Array(ROWS), rstd = new Float32Array(ROWS);
  const dg = new Float32Array(C), db = new Float32Array(C);
  b.layerNorm(y, mean, rstd, x, gamma, beta, ROWS, C, 1e-5);
  const h = randomArray(ROWS * F, 5).map((v) => 4 * v), hy = new Float32Array(ROWS * F), hd = randomArray(ROWS * F, 6), hdx = new Float32Array(ROWS * F);
  const logits = randomArray(ROWS * V, 7).map((v) => 8 * v), dlogits = new Float32Array(ROWS * V);
  const targets = Int32Array.from({ length: ROWS }, (_, i) => (i * 7919) % V), loss = new Float32Array(ROWS), lse = new Float32Array(ROWS), dloss = new Float32Array(ROWS).fill(1 / ROWS);
  b.crossEntropy(loss, lse, logits, targets, ROWS, V, -1);
  const N = 4 << 20;
  const p = randomArray(N, 8), g = randomArray(N, 9).map((v) => 1e-3 * v), m = new Float32Array(N), v2 = new Float32Array(N);
  const sx = randomArray(ROWS * 256, 10).map((v) => 6 * v), sy = new Float32Array(ROWS * 256);
  const against = (run: (be: typeof ref, out: Float32Array) => void, size: number) => () => {
    const o1 = new Float32Array(size), o2 = new Float32Array(size);
    run(b, o1);
    run(ref, o2);
    return maxRel(o1, o2);
  };
  return [
    { name: "layerNorm", shape: `${ROWS}x${C}`, bytes: 8 * ROWS * C, run: () => b.layerNorm(y, mean, rstd, x, gamma, beta, ROWS, C, 1e-5),
      check: against((be, o) => be.layerNorm(o, new Float32Array(ROWS), new Float32Array(ROWS), x, gamma, beta, ROWS, C, 1e-5), ROWS * C) },
    { name: "layerNormBackward", shape: `${ROWS}x${C}`, bytes: 16 * ROWS * C, run: () => b.layerNormBackward(dx, dg, db, dy, x, mean, rstd, gamma, ROWS, C),
      check: against((be, o) => be.layerNormBackward(o, new Float32Array(C), new Float32Array(C), dy, x, mean, rstd, gamma, ROWS, C), ROWS * C) },
    { name: "fastGelu", shape: `${ROWS}x${F}`, bytes: 8 * ROWS * F, run: () => b.fastGelu(hy, h, ROWS * F), check: against((be, o) => be.fastGelu(o, h, ROWS * F), ROWS * F) },
    { name: "fastGeluBackward", shape: `${ROWS}x${F}`, bytes: 16 * ROWS * F, run: () => b.fastGeluBackward(hdx, h, hd, ROWS * F), check: against((be, o) => be.fastGeluBackward(o, h, hd, ROWS * F), ROWS * F) },
    { name: "gelu", shape: `${ROWS}x${F}`, bytes: 8 * ROWS * F, run: () => b.gelu(hy, h, ROWS * F), check: against((be, o) => be.gelu(o, h, ROWS * F), ROWS * F) },
    { name: "crossEntropy", shape: `${ROWS}x${V}`, bytes: 4 * ROWS * V, run: () => b.crossEntropy(loss, lse, logits, targets, ROWS, V, -1),
      check: against((be, o) => be.crossEntropy(new Float32Array(ROWS), o, logits, targets, ROWS, V, -1), ROWS) },
    { name: "crossEntropyBackward", shape: `${ROWS}x${V}`, bytes: 12 * ROWS * V, run: () => b.crossEntropyBackward(dlogits, logits, lse, targets, dloss, ROWS, V, -1),
      check: against((be, o) => be.crossEntropyBackward(o, logits, lse, targets, dloss, ROWS, V, -1), ROWS * V) },
    { name: "softmax", shape: `${ROWS}x256`, bytes: 8 * ROWS * 256, run: () => b.softmax(sy, sx, ROWS, 256), check: against((be, o) => be.softmax(o, sx, ROWS, 256), ROWS * 256) },
    { name: "adamw", shape: `${N}`, bytes: 28 * N, run: () => b.adamw(p, g, m, v2, N, 1e-4, 0.8, 0.95, 1e-8, 0.1, 3, 0.5) },
    { name: "sumSquares", shape: `${N}`, bytes: 4 * N, run: () => void b.sumSquares(g, N) },
    { name: "axpy", shape: `${N}`, bytes: 12 * N, run: () => b.axpy(m, g, 0.5, N) },
    { name: "addBiasBackward", shape: `${ROWS}x${F}`, bytes: 4 * ROWS * F, run: () => b.addBiasBackward(new Float32Array(F), hd, ROWS, F) },
  ];
}

type Path = "auto" | "avx2-fma" | "portable";
const PATHS: readonly Path[] = ["portable", "avx2-fma", "auto"];

export async function run(args: string[]): Promise<void> {
  const reps = Number(args.find((a) => a.startsWith("--reps="))?.slice(7) ?? 9);
  const json = args.includes("--json");
  const say = json ? (s: string) => console.error(s) : (s: string) => console.log(s);
  const b = native();
  const best = b.cpuFeatures().path;
  const threads = b.getThreads();
  // Kernel paths: --paths=avx2-fma,portable,… or, by default, AVX2 beside the run-time choice (the run-time choice alone on a CPU without AVX-512).
  const pathsArg = args.find((a) => a.startsWith("--paths="))?.slice(8);
  const paths: Path[] = pathsArg ? pathsArg.split(",").map((p) => p.trim() as Path) : best === "avx512" ? ["avx2-fma", "auto"] : ["auto"];
  for (const p of paths) if (!PATHS.includes(p)) throw new Error(`--paths: "${p}" is not a kernel path (use ${PATHS.join(", ")})`);
  // --against=FILE: the other build timed on the same paths, in the same rounds.
  const againstFile = args.find((a) => a.startsWith("--against="))?.slice(10);
  const other = againstFile ? (createRequire(import.meta.url)(resolve(againstFile)) as NativeBackend) : null;
  other?.setThreads(threads);
  const builds = other ? (["this", "against"] as const) : (["this"] as const);
  const columns = builds.flatMap((build) => paths.map((path) => ({ build, path })));
  const label = (c: (typeof columns)[number]) => `${c.build === "against" ? "against " : ""}${c.path === "auto" ? best : c.path}`;
  const all = cases(b);
  const allOther = other ? cases(other) : [];
  const select = (col: (typeof columns)[number], i: number): Case => {
    (col.build === "against" ? other! : b).setKernelPath(col.path);
    return col.build === "against" ? allOther[i]! : all[i]!;
  };
  try {
    for (const col of columns) {
      all.forEach((_, i) => {
        const c = select(col, i);
        const d = c.check?.() ?? 0;
        if (d > 1e-4) throw new Error(`${c.name} (${label(col)}) differs from the reference by ${d}`);
      });
    }
    const times = all.map(() => columns.map(() => [] as number[]));
    for (let r = 0; r < reps; r++) {
      for (const i of all.keys()) {
        // Alternate which column goes first: a neighbour slowing the host slows all of them.
        const order = [...columns.keys()];
        for (const j of r % 2 ? order.reverse() : order) {
          const c = select(columns[j]!, i);
          c.run();
          const t0 = performance.now();
          c.run();
          times[i]![j]!.push(performance.now() - t0);
        }
      }
    }
    const ms = times.map((perCol) => perCol.map(median));
    // Ratios: each path to the run-time choice (this build), and the other build to this one on each path.
    const autoCol = columns.findIndex((c) => c.build === "this" && c.path === "auto");
    const ratioHeads: string[] = [];
    const ratioOf: ((m: number[]) => string)[] = [];
    if (autoCol >= 0)
      columns.forEach((c, j) => {
        if (c.build === "this" && c.path !== "auto") {
          ratioHeads.push(`${label(c)} / ${best}`);
          ratioOf.push((m) => `${(m[j]! / m[autoCol]!).toFixed(2)}×`);
        }
      });
    if (other)
      paths.forEach((p) => {
        const j0 = columns.findIndex((c) => c.build === "this" && c.path === p), j1 = columns.findIndex((c) => c.build === "against" && c.path === p);
        ratioHeads.push(`against / this (${p === "auto" ? best : p})`);
        ratioOf.push((m) => `${(m[j1]! / m[j0]!).toFixed(2)}×`);
      });
    const rows = all.map((c, i) => [c.name, c.shape, ...ms[i]!.map((x) => x.toFixed(3)), ...ms[i]!.map((x) => (c.bytes / x / 1e6).toFixed(1)), ...ratioOf.map((f) => f(ms[i]!))]);
    say(`${threads} threads; medians of ${reps} interleaved rounds; GB/s of the bytes each kernel must move\n`);
    say(table(["kernel", "shape", ...columns.map((c) => `ms ${label(c)}`), ...columns.map((c) => `GB/s ${label(c)}`), ...ratioHeads], rows));
    if (json) {
      const kernels = all.map((c, i) => ({ name: c.name, shape: c.shape, bytes: c.bytes, ms: Object.fromEntries(columns.map((col, j) => [label(col), ms[i]![j]!])) }));
      console.log(JSON.stringify({ ops: { threads, paths: columns.map(label), kernels } }));
    }
  } finally {
    b.setKernelPath("auto");
    other?.setKernelPath("auto");
  }
}
