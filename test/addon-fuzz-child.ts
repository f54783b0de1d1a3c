/**
 * Fuzz target for the native addon (issue 19): calls every export of the
 * addon, enumerated from the addon object itself, with random and hostile
 * arguments, and checks that each call returns or throws a TypeError or
 * RangeError whose message starts with the export's name. A crash kills this
 * process, which is why test/addon-fuzz.test.ts runs it as a child.
 *
 *   node --expose-gc --import tsx test/addon-fuzz-child.ts [--count N] [--seed S] [--workers W] [--addon PATH] [--trace]
 *
 * Prints the seed first (stderr), then one JSON summary line (stdout):
 * { seed, calls, returned, threw, foreign, bad, seconds, byExport, unknownExports, badCalls }.
 * --workers W: W worker_threads fuzz the addon at the same time as the main
 * thread, N calls each (seeds S+1…S+W), sharing its one thread pool; the
 * summary adds them up.
 * `foreign` counts calls ended by an error the fuzz's own getters threw on
 * purpose; `bad` counts calls that threw anything else than a TypeError or
 * RangeError naming the export (the exit status is then 1). --trace writes
 * each call to stderr before making it, so that the last line names a call
 * that crashed. A run is reproducible from its seed and count.
 *
 * Arrays stay small (at most 4096 elements), so every size beyond that is
 * invalid for them: a huge size that passes the checks can only be a wrapped
 * product (the bug). fmaPeak's `iters` is a work count (a valid 2^31 − 1 is a
 * run of seconds, not a hazard): it is kept below 1000 unless invalid.
 */
import { createRequire } from "node:module";
import { writeSync } from "node:fs";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Rng } from "../src/util/rng.js";

type Kind = "f32" | "idx" | "offsets" | "i32out" | "parts" | "dim" | "num" | "int" | "bool" | "path" | "iters" | "threads" | "tile" | "block" | "bf16path" | "tuning" | "u8" | "i8" | "u16"
  // The dense step's (dense_napi.cpp): a plan's dims, nums and arrays, a plan, a step's caches.
  | "ddims" | "dnums" | "darrays" | "dplan" | "dcaches";

const f = "f32" as const, d = "dim" as const, n = "num" as const, b = "bool" as const, i = "idx" as const;
/** The argument kinds of every export this fuzz knows. An export missing here is still called (with random arguments) and reported in unknownExports. */
export const SIGNATURES: Record<string, Kind[]> = {
  matmul: [f, f, f, d, d, d, b, b, b],
  bmm: [f, f, f, d, d, d, d, b, b, b],
  groupedMatmul: [f, f, "parts", "offsets", d, d, d, b, b],
  groupedMatmulWeightGrad: ["parts", f, f, "offsets", d, d, d, b, b],
  groupedMatmulWeightGradSquares: ["parts", f, f, "offsets", d, d, d, b, b],
  matmulBf16: [f, f, f, d, d, d, b, b, b],
  groupedMatmulBf16: [f, f, "parts", "offsets", d, d, d, b, b],
  groupedMatmulWeightGradBf16: ["parts", f, f, "offsets", d, d, d, b, b],
  addBias: [f, f, f, d, d],
  addBiasBackward: [f, f, d, d],
  add: [f, f, f, d],
  mul: [f, f, f, d],
  scale: [f, f, n, d],
  axpy: [f, f, n, d],
  sumSquares: [f, d],
  gelu: [f, f, d],
  geluBackward: [f, f, f, d],
  fastGelu: [f, f, d],
  fastGeluBackward: [f, f, f, d],
  swiglu: [f, f, f, d],
  swigluBackward: [f, f, f, f, f, d],
  layerNorm: [f, f, f, f, f, f, d, d, n],
  rmsNorm: [f, f, f, f, d, d, n],
  rmsNormBackward: [f, f, f, f, f, f, d, d],
  layerNormBackward: [f, f, f, f, f, f, f, f, d, d],
  softmax: [f, f, d, d],
  softmaxBackward: [f, f, f, d, d],
  crossEntropy: [f, f, f, i, d, d, "int"],
  crossEntropyBackward: [f, f, f, i, f, d, d, "int"],
  embedding: [f, f, i, d, d],
  embeddingBackward: [f, f, i, d, d],
  gatherRows: [f, f, i, d, d],
  scatterAddRows: [f, f, i, d, d],
  combine: [f, f, i, f, d, d],
  combineBackward: [f, f, f, f, i, f, d, d],
  permuteByExpert: ["i32out", "i32out", i, d, d],
  attention: [f, f, f, f, f, d, d, d, d, d, d, n, d], // with kvHeads (grouped-query): the long form
  attentionBackward: [f, f, f, f, f, f, f, f, f, d, d, d, d, d, d, n],
  attentionHalf: [f, f, f, "u16", "u16", d, d, d, d, d, d, n, d],
  toHalf: ["u16", f, d],
  fromHalf: [f, "u16", d],
  adamw: [f, f, f, f, d, n, n, n, n, n, d, n],
  adamwExperts: ["parts", "parts", i, d, d, d, n, n, n, n, n, n],
  fmaPeak: ["iters", "threads"],
  setThreads: ["threads"],
  getThreads: [],
  cpuFeatures: [],
  setKernelPath: ["path"],
  cpuInfo: [],
  gemmTiles: [],
  gemmConfig: [],
  setGemmConfig: ["tile", "block", "block", "block", b],
  bf16Path: [],
  setBf16Path: ["bf16path"],
  setGemmTuning: ["tuning"],
  gemmTuning: [],
  // Decode kernels over stored weights (native/src/napi/quant_napi.cpp): data, offsets, E, N, K, then scales and mins,
  // then the optional epilogue (bias, act, residual) — fuzzed in its long form; every other test calls the short one.
  decodeMatmulF32: [f, f, f, "offsets", d, d, d, f, "int", f],
  decodeMatmulBf16: [f, f, "u16", "offsets", d, d, d, f, "int", f],
  decodeMatmulF16: [f, f, "u16", "offsets", d, d, d, f, "int", f],
  decodeMatmulQ8: [f, f, "i8", "offsets", d, d, d, "u16", f, "int", f, "u8", "u16"], // and the packed copy (packQ8)
  decodeMatmulQ4: [f, f, "u8", "offsets", d, d, d, "u16", "u16", f, "int", f, "u8", "u16"], // and the packed copy (packQ4)
  dequantizeBf16: [f, "u16", d, d],
  dequantizeF16: [f, "u16", d, d],
  dequantizeQ8: [f, "i8", d, d, "u16"],
  dequantizeQ4: [f, "u8", d, d, "u16", "u16"],
  packQ8: ["i8", "u16", d, d, d],
  packQ4: ["u8", "u16", "u16", d, d, d],
  decodePacks: [],
  decodePath: [],
  decodeIntPath: [],
  setDecodeVnni: [b],
  decodeBf16Path: [],
  setDecodeBf16Dot: [b],
  setDecodeIntRows: ["int"],
  argmaxRows: [f, d, d, "i32out"],
  densePlan: ["ddims", "dnums", "darrays"],
  denseStep: ["dplan", i, i, i, "dcaches", d, d, d, d, i, f],
};
/** Where the grouped kernels take E (parts and offsets are sized from it). */
const E_AT = 4;
const LEN = 4096;

interface Options {
  count: number;
  seed: number;
  addon: string;
  trace: boolean;
  workers: number;
}

function parseArgs(argv: string[]): Options {
  const root = fileURLToPath(new URL("..", import.meta.url));
  const o: Options = { count: 5000, seed: (Date.now() ^ (process.pid << 8)) >>> 0, addon: join(root, "build", "Release", "sigma_native.node"), trace: false, workers: 0 };
  for (let k = 0; k < argv.length; k++) {
    const a = argv[k]!;
    const next = () => {
      const v = argv[++k];
      if (v === undefined) throw new Error(`addon-fuzz: ${a} needs a value`);
      return v;
    };
    if (a === "--count") o.count = Number(next());
    else if (a === "--seed") {
      const v = Number(next());
      if (!Number.isInteger(v) || v < 0 || v >= 2 ** 32) throw new Error("addon-fuzz: --seed must be an integer from 0 to 2^32 - 1");
      o.seed = v;
    }
    else if (a === "--addon") o.addon = next();
    else if (a === "--trace") o.trace = true;
    else if (a === "--workers") o.workers = Number(next());
    else throw new Error(`addon-fuzz: unknown argument ${a} (use --count N, --seed S, --workers W, --addon PATH, --trace)`);
  }
  if (!Number.isInteger(o.count) || o.count < 0) throw new Error("addon-fuzz: --count must be a non-negative integer");
  if (!Number.isInteger(o.workers) || o.workers < 0 || o.workers > 8) throw new Error("addon-fuzz: --workers must be an integer from 0 to 8");
  return o;
}

type Fn = (...args: unknown[]) => unknown;
type ResizableBuffer = ArrayBuffer & { resize(n: number): void; readonly resizable: boolean };
const resizable = (bytes: number, max: number): ResizableBuffer =>
  new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ResizableBuffer)(bytes, { maxByteLength: max });
const gc = (globalThis as { gc?: () => void }).gc;

/** Transfers a buffer away (the view passed stays, detached); the GC may then free its memory. */
function detach(buf: ArrayBufferLike): void {
  if (buf instanceof ArrayBuffer && buf.byteLength > 0) structuredClone(buf, { transfer: [buf] });
}

/** Outcomes of calls (in all, or of one export). */
export interface Tally {
  calls: number;
  returned: number;
  threw: number;
  foreign: number;
  bad: number;
}

export interface Summary extends Tally {
  seed: number;
  seconds: number;
  byExport: Record<string, Tally>;
  unknownExports: string[];
  values: string[];
  badCalls: string[];
}

export function fuzz(o: Options): Summary {
  const addon = createRequire(o.addon)(o.addon) as Record<string, unknown>;
  const names = Object.keys(addon).filter((k) => typeof addon[k] === "function").sort();
  const values = Object.keys(addon).filter((k) => typeof addon[k] !== "function");
  const unknownExports = names.filter((k) => !(k in SIGNATURES));
  const rng = new Rng(o.seed);
  const r = (k: number) => rng.int(k);
  const p = (x: number) => rng.uniform() < x;
  const pick = <T,>(xs: readonly T[]): T => xs[r(xs.length)]!;

  // Reused arrays: outputs written by one call are inputs of another, and two
  // arguments of one call are often the same array (aliasing).
  const pool = Array.from({ length: 12 }, () => new Float32Array(LEN).map(() => rng.uniform() * 2 - 1));
  const shared = Array.from({ length: 2 }, () => new Float32Array(new SharedArrayBuffer(4 * LEN)));
  const poolBuffers = new Set<ArrayBufferLike>(pool.map((a) => a.buffer));
  const poolF32 = () => (p(0.9) ? pick(pool) : pick(shared));

  let ctx: { name: string; args: unknown[]; labels: string[]; reentered: boolean } = { name: "", args: [], labels: [], reentered: false };

  const plausibleDim = () => (p(0.3) ? 1 + r(3) : r(7));
  const idxArray = (hi: number) => Int32Array.from({ length: 64 }, () => r(hi));
  const eOf = (args: unknown[]) => {
    const e = args[E_AT];
    return typeof e === "number" && Number.isInteger(e) && e >= 0 && e <= 64 ? e : 3;
  };
  const offsetsFor = (E: number) => {
    const off = new Int32Array(E + 1);
    for (let e = 0; e < E; e++) off[e + 1] = off[e]! + r(3);
    return off;
  };

  function plausible(kind: Kind, args: unknown[]): [unknown, string] {
    switch (kind) {
      case "ddims":
      case "dnums":
      case "darrays":
      case "dplan":
      case "dcaches":
        return plausibleDense(kind, args);
      case "f32":
        return [poolF32(), "f32(pool)"];
      case "idx":
        return [idxArray(4), "idx[0,4)"];
      case "offsets":
        return [offsetsFor(eOf(args)), "offsets(ok)"];
      case "i32out":
        return [new Int32Array(64), "i32(64)"];
      case "parts": {
        if (p(0.4)) return [poolF32(), "f32(pool)"];
        const E = eOf(args);
        return [Array.from({ length: E }, () => poolF32()), `parts(${E})`];
      }
      case "dim": {
        const v = plausibleDim();
        return [v, String(v)];
      }
      case "num":
        return p(0.2) ? [pick([1e-5, 0.9, 0.999, 1e-8, 0.01]), "num"] : [rng.uniform() * 2 - 1, "num"];
      case "int":
        return p(0.5) ? [-100, "-100"] : [r(4), "int"];
      case "bool":
        return [p(0.5), "bool"];
      case "path":
        return [pick(["auto", "avx2-fma", "portable"] as const), "path"];
      case "iters":
        return [r(1000), "iters"];
      case "threads":
        return [1 + r(4), "threads"];
      case "tile":
        return [pick(["auto", "avx512-12x32", "avx512-6x16", "avx2-6x16", "portable-6x16"] as const), "tile"];
      case "bf16path":
        return [pick(["auto", "converted-f32"] as const), "bf16path"];
      case "u8":
        return [Uint8Array.from({ length: LEN }, () => r(256)), "u8"];
      case "i8":
        return [Int8Array.from({ length: LEN }, () => r(256) - 128), "i8"];
      case "u16":
        return [Uint16Array.from({ length: LEN }, () => r(0x7c00)), "u16"];
      case "block": {
        const v = pick([0, 0, 1, 5, 13, 64, 512]);
        return [v, String(v)];
      }
      case "tuning": {
        if (p(0.3)) return [null, "null"];
        const tile = () => pick(["avx512-12x32", "avx512-8x32", "avx512-6x16", "avx2-6x16", "avx2-4x24", "portable-6x16"] as const);
        const choice = () => ({ tile: tile(), mc: 1 + r(200), kc: 1 + r(600), nc: 1 + r(600) });
        const bucket = () => ({ large: choice(), shortK: choice(), smallMRowsNT: r(97), smallMRowsNN: r(97) });
        return [{ path: pick(["avx512", "avx2-fma", "portable"] as const), one: bucket(), many: bucket() }, "tuning"];
      }
    }
  }

  // The dense step: a tiny dense model's dims and arrays, every option and format drawn
  // (dense_napi.cpp's layout; V = 4 and S = 4 slots, seqLen 8, so that idx arrays in [0, 4) are valid rows,
  // slots and positions), and plans made from some of them, each with its block count.
  const specs = new WeakMap<Int32Array, (ArrayBufferView | null)[]>();
  const plans = new WeakMap<object, number>();
  function denseSpec(): { dims: Int32Array; nums: Float64Array; arrays: (ArrayBufferView | null)[] } {
    const [V, S, seqLen] = [4, 4, 8];
    const C = pick([4, 8, 33]), H = pick([1, 2]), G = H === 2 && p(0.5) ? 1 : H, D = pick([2, 4]), F = pick([3, 8]), L = 1 + r(2);
    const [rms, rope, swiglu, act, format, query, tied] = [r(2), r(2), r(2), 1 + r(2), r(5), r(2), r(2)];
    const f32 = (n: number) => Float32Array.from({ length: n }, () => rng.uniform() - 0.5);
    const opt = (n: number) => (p(0.5) ? f32(n) : null);
    const mat = (rows: number, K: number): (ArrayBufferView | null)[] => {
      const Kp = Math.ceil(K / 32) * 32, groups = rows * Math.ceil(K / 32);
      const scales = () => Uint16Array.from({ length: groups }, () => 0x2000 + r(0x1000));
      if (format === 0) return [f32(rows * K), null, null];
      if (format <= 2) return [Uint16Array.from({ length: rows * K }, () => r(0x7c00)), null, null];
      if (format === 3) return [Int8Array.from({ length: rows * Kp }, () => r(255) - 127), scales(), null];
      return [Uint8Array.from({ length: (rows * Kp) / 2 }, () => r(256)), scales(), scales()];
    };
    const arrays: (ArrayBufferView | null)[] = [];
    for (let l = 0; l < L; l++) {
      const isQuery = query === 1 && l === L - 1;
      const kv = (isQuery ? 0 : H * D) + 2 * G * D, f1 = swiglu ? 2 * F : F;
      arrays.push(f32(C), rms ? null : f32(C), ...mat(kv, C), opt(kv), ...(isQuery ? mat(H * D, C) : [null, null, null]), isQuery ? opt(H * D) : null, opt(D), opt(D),
        ...mat(C, H * D), opt(C), f32(C), rms ? null : f32(C), ...mat(f1, C), opt(f1), ...mat(C, F), opt(C));
    }
    arrays.push(f32(C), rms ? null : f32(C), ...mat(S * V, C), tied ? null : f32(S * V * C), rope ? null : f32(seqLen * C), query ? f32(seqLen * C) : null);
    const dims = Int32Array.of(V, C, S, H, G, D, F, L, rms, rope, swiglu, act, format, seqLen, query, tied);
    specs.set(dims, arrays);
    return { dims, nums: Float64Array.of(1e-5, 10000), arrays };
  }
  const densePlans: object[] = [];
  const newPlan = (): object | null => {
    const { dims, nums, arrays } = denseSpec();
    try {
      const plan = (addon.densePlan as Fn)(dims, nums, arrays) as object;
      plans.set(plan, dims[7]! + 0);
      return plan;
    } catch {
      return null;
    }
  };
  const anyPlan = (): object | null => {
    if (densePlans.length < 6 || p(0.05)) {
      const plan = typeof addon.densePlan === "function" ? newPlan() : null;
      if (plan) densePlans.push(plan);
      if (densePlans.length > 12) densePlans.shift();
    }
    return densePlans.length ? pick(densePlans) : null;
  };
  const cachesFor = (plan: unknown) => Array.from({ length: 2 * (plans.get(plan as object) ?? 1) }, () => new Float32Array(LEN));

  function plausibleDense(kind: "ddims" | "dnums" | "darrays" | "dplan" | "dcaches", args: unknown[]): [unknown, string] {
    switch (kind) {
      case "ddims":
        return [denseSpec().dims, "dims(ok)"];
      case "dnums":
        return [Float64Array.of(1e-5, 10000), "nums(ok)"];
      case "darrays": {
        const arrays = args[0] instanceof Int32Array ? specs.get(args[0]) : undefined;
        return [arrays ? arrays.slice() : denseSpec().arrays, arrays ? "arrays(ok)" : "arrays(another model's)"];
      }
      case "dplan":
        return [anyPlan(), "plan"];
      case "dcaches":
        return [cachesFor(args[0]), "caches(ok)"];
    }
  }

  function hostileDense(kind: "ddims" | "dnums" | "darrays" | "dplan" | "dcaches", args: unknown[]): [unknown, string] {
    switch (kind) {
      case "ddims": {
        if (p(0.3)) return hostileF32("i32");
        const dims = denseSpec().dims;
        const at = r(16);
        dims[at] = pick([-1, 0, 2, 3, 17, 1 << 24, 2 ** 31 - 1, -(2 ** 31)]);
        return [dims, `dims([${at}] bad)`];
      }
      case "dnums":
        return ((v) => [v, describe(v)])(pick<unknown>([Float64Array.of(NaN, 1e4), Float64Array.of(1e-5, 0), Float64Array.of(1e-5, -1), Float64Array.of(-1, 1e4), new Float64Array(1), new Float64Array(3), Float32Array.of(1e-5, 1e4), null, [1e-5, 1e4]]));
      case "darrays": {
        const [ok] = plausibleDense("darrays", args);
        const arrays = ok as unknown[];
        const c = r(8);
        if (c === 0) return [arrays.slice(0, r(arrays.length)), "arrays(too few)"];
        if (c === 1) return [[...arrays, null], "arrays(too many)"];
        const at = r(arrays.length);
        if (c === 2) arrays[at] = null;
        else if (c === 3) arrays[at] = hostileF32("f32")[0];
        else if (c === 4) arrays[at] = hostileBytes(pick(["u8", "i8", "u16"] as const))[0];
        else if (c === 5) arrays[at] = new Float32Array(4096);
        else if (c === 6) return [new Proxy(arrays, { get: (t, k) => { detachSomething(); return Reflect.get(t, k); } }), "Proxy(arrays)"];
        else Object.defineProperty(arrays, at, { get: () => { throw new Error("fuzz: getter threw"); } });
        return [arrays, `arrays([${at}] hostile ${c})`];
      }
      case "dplan": {
        const c = r(4);
        if (c === 0) {
          // A plan one of whose arrays was transferred since: refused at the step, never read.
          const { dims, nums, arrays } = denseSpec();
          const plan = (addon.densePlan as Fn)(dims, nums, arrays) as object;
          plans.set(plan, dims[7]!);
          const held = arrays.filter((a): a is Float32Array => a !== null && a.buffer instanceof ArrayBuffer);
          detach(pick(held).buffer);
          gc?.();
          return [plan, "plan(an array detached)"];
        }
        return ((v) => [v, describe(v)])(pick<unknown>([null, undefined, {}, [], 0, "plan", () => 0, new Float32Array(4), Object.create(null)]));
      }
      case "dcaches": {
        const caches: unknown[] = cachesFor(args[0]);
        const c = r(6);
        if (c === 0) return [caches.slice(1), "caches(too few)"];
        if (c === 1) return [[...caches, new Float32Array(LEN)], "caches(too many)"];
        if (c === 2) {
          caches[r(caches.length)] = hostileF32("f32")[0];
          return [caches, "caches(one hostile)"];
        }
        if (c === 3) {
          const j = r(caches.length);
          const own = caches[j];
          Object.defineProperty(caches, j, { get: () => { detachSomething(); if (!ctx.reentered && p(0.5)) { ctx.reentered = true; try { (addon[ctx.name] as Fn)(...ctx.args); } catch { /* not this call's */ } } return own; } });
          return [caches, `caches(getter at ${j})`];
        }
        if (c === 4) return [new Array(caches.length), "caches(holes)"];
        return [pick<unknown>([null, new Float32Array(LEN), { length: 2 }]), "caches(not an array)"];
      }
    }
  }

  // Sizes: huge ones (alone, and powers of two whose products wrap 32 and 64
  // bits), zero, negative, not integers, not numbers.
  function hostileDim(): [unknown, string] {
    const c = r(10);
    if (c < 3) {
      const k = pick([16, 20, 21, 22, 24, 30, 31]);
      const v = k === 31 ? 2 ** 31 - 1 : 2 ** k;
      return [v, `2^${k}`];
    }
    if (c < 5) {
      const v = 2 ** 20 + r(2 ** 31 - 1 - 2 ** 20);
      return [v, String(v)];
    }
    if (c < 7) {
      const v = pick([0, 0, 1, 2, 5, 17, 4095, 4096, 4097, 65536]);
      return [v, String(v)];
    }
    const v = pick<unknown>([-1, -0, -(2 ** 31), 2 ** 31, 2 ** 32, 2 ** 32 + 1, 2 ** 53, 2 ** 64, 0.5, 1.5, NaN, Infinity, -Infinity, Number.MAX_VALUE, Number.MIN_VALUE,
      "3", 3n, null, undefined, true, {}, [3], () => 3, Symbol("s"), { valueOf: () => 3 }, { valueOf: () => { detachSomething(); return 3; } }]);
    return [v, describe(v)];
  }

  // Detaches a random array argument of the current call (used by valueOf and getters).
  function detachSomething(): void {
    const victims = ctx.args.filter((a): a is Float32Array | Int32Array => ArrayBuffer.isView(a) && a.buffer instanceof ArrayBuffer && !poolBuffers.has(a.buffer));
    if (victims.length) detach(pick(victims).buffer);
    gc?.();
  }

  function describe(v: unknown): string {
    if (typeof v === "bigint") return `${v}n`;
    if (typeof v === "symbol") return "Symbol";
    if (typeof v === "function") return "function";
    if (ArrayBuffer.isView(v)) return `${v.constructor.name}(${(v as Float32Array).length})`;
    if (Array.isArray(v)) return `Array(${v.length})`;
    if (v && typeof v === "object") return "object";
    if (typeof v === "string") return JSON.stringify(v.length > 12 ? `${v.slice(0, 12)}…` : v);
    return String(v);
  }

  function hostileF32(kind: "f32" | "i32"): [unknown, string] {
    const T = kind === "f32" ? Float32Array : Int32Array;
    const c = r(16);
    switch (c) {
      case 0: return [new T(r(16)), `${T.name}(short)`];
      case 1: return [new T(0), `${T.name}(0)`];
      case 2: {
        const a = new T(16);
        detach(a.buffer);
        return [a, `${T.name}(detached)`];
      }
      case 3: return [new T(new ArrayBuffer(4 * (LEN + 8)), 4 * r(8), LEN), `${T.name}(offset view)`];
      case 4: {
        const buf = resizable(4 * LEN, 8 * LEN);
        const a = new T(buf);
        const how = r(3);
        if (how === 0) buf.resize(0);
        else if (how === 1) buf.resize(4 * r(64));
        return [a, `${T.name}(resizable, ${a.length})`];
      }
      case 5: {
        // A view that starts past the end of its (shrunk) resizable buffer: out of bounds.
        const buf = resizable(4 * LEN, 4 * LEN);
        const a = new T(buf, 4 * 64, 16);
        buf.resize(4 * 8);
        return [a, `${T.name}(out of bounds)`];
      }
      case 6: return [kind === "f32" ? new Float64Array(LEN) : new Float32Array(LEN), "wrong element type"];
      case 7: return [pick<unknown>([new Uint8Array(LEN), new Int16Array(LEN), new Uint32Array(LEN), new DataView(new ArrayBuffer(64)), new BigInt64Array(8), Buffer.alloc(64)]), "other typed array"];
      case 8: return [pick<unknown>([new ArrayBuffer(4 * LEN), new SharedArrayBuffer(64)]), "ArrayBuffer"];
      case 9: return [pick<unknown>([[1, 2, 3], { length: 1e9 }, null, undefined, 0, "x", {}, () => 0, Symbol("s")]), "not an array"];
      case 10: return [new Proxy(new T(LEN), {}), "Proxy(typed array)"];
      case 11: return [kind === "f32" ? pick(shared) : new Int32Array(new SharedArrayBuffer(4 * 64)), "shared"];
      default: return [kind === "f32" ? poolF32() : idxArray(4), "plain"];
    }
  }

  // A byte or 16-bit array of stored weights gone wrong: short, empty, detached, another element type, shared, not an array.
  function hostileBytes(kind: "u8" | "i8" | "u16"): [unknown, string] {
    const T = kind === "u8" ? Uint8Array : kind === "i8" ? Int8Array : Uint16Array;
    const c = r(8);
    if (c === 0) return [new T(r(16)), `${T.name}(short)`];
    if (c === 1) {
      const a = new T(64);
      detach(a.buffer);
      return [a, `${T.name}(detached)`];
    }
    if (c === 2) return [pick<unknown>([new Float32Array(LEN), new Int16Array(LEN), kind === "u8" ? new Int8Array(LEN) : new Uint8Array(LEN), Buffer.alloc(LEN)]), "other typed array"];
    if (c === 3) return [new T(new SharedArrayBuffer(LEN * T.BYTES_PER_ELEMENT) as unknown as ArrayBuffer), `${T.name}(shared)`];
    if (c === 4) {
      const buf = resizable(LEN * 2, LEN * 2);
      const a = new T(buf);
      buf.resize(r(64));
      return [a, `${T.name}(resizable)`];
    }
    if (c === 5) return [pick<unknown>([null, undefined, 0, "x", [1, 2], {}]), "not an array"];
    return [new T(LEN), `${T.name}(zeros)`];
  }

  function hostileIdx(): [unknown, string] {
    const c = r(8);
    if (c < 3) return hostileF32("i32");
    const a = idxArray(4);
    if (c === 3) {
      a[r(a.length)] = pick([-1, 4096, 1 << 30, -(2 ** 31), 2 ** 31 - 1, 5, 7]);
      return [a, "idx(one bad)"];
    }
    if (c === 4) return [Int32Array.from({ length: 64 }, () => rng.nextU32() | 0), "idx(random)"];
    if (c === 5) {
      // Shares memory with a float argument, zeros (valid) when checked; that argument may be an output.
      const victim = pick(pool);
      victim.fill(0, 0, 64);
      return [new Int32Array(victim.buffer, 0, 64), "idx(aliases a float array)"];
    }
    return [idxArray(1 + r(64)), "idx(wide)"];
  }

  function hostileOffsets(args: unknown[]): [unknown, string] {
    const E = eOf(args);
    const c = r(8);
    if (c < 2) return hostileF32("i32");
    const off = offsetsFor(E);
    if (c === 2 && E > 0) {
      off[1 + r(E)] = pick([-1, 1 << 30, 2 ** 31 - 1, -(2 ** 31)]);
      return [off, "offsets(bad value)"];
    }
    if (c === 3) {
      off[0] = 1;
      return [off, "offsets(start 1)"];
    }
    if (c === 4 && E > 1) {
      off[1] = off[E]! + 1;
      return [off, "offsets(decreasing)"];
    }
    if (c === 5) return [offsetsFor(Math.max(0, E - 1)), "offsets(short)"];
    if (c === 6) {
      const v = pool[0]!;
      v.fill(0, 0, 128);
      return [new Int32Array(v.buffer, 0, E + 1), "offsets(aliases a float array)"];
    }
    return [off, "offsets(ok)"];
  }

  // Arrays of parts: wrong counts, holes, wrong elements, and getters that
  // run JS in the middle of the call.
  function hostileParts(args: unknown[]): [unknown, string] {
    const E = eOf(args);
    const c = r(12);
    const parts: unknown[] = Array.from({ length: E }, () => (p(0.5) ? poolF32() : new Float32Array(LEN)));
    if (c === 0) return [parts.slice(0, Math.max(0, E - 1 - r(2))), "parts(too few)"];
    if (c === 1) return [[...parts, new Float32Array(LEN)], "parts(too many)"];
    if (c === 2 && E > 0) {
      const h = new Array(E);
      for (let e = 0; e < E; e++) if (p(0.5)) h[e] = parts[e];
      return [h, "parts(holes)"];
    }
    if (c === 3 && E > 0) {
      parts[r(E)] = hostileF32("f32")[0];
      return [parts, "parts(one hostile)"];
    }
    if (c === 4) return [new Proxy(parts, { get: (t, k) => { detachSomething(); return Reflect.get(t, k); } }), "Proxy(parts)"];
    if (c === 5) return [{ length: E, 0: parts[0] }, "array-like"];
    if (c === 11 && p(0.5)) {
      // Cheap to make, and as long as E says: only the offsets' length bounds E before the parts are read.
      const holes = pick([2 ** 31 - 1, 2 ** 28, 2 ** 20]);
      args[E_AT] = holes;
      return [new Array(holes), `sparse parts(${holes}) and E = ${holes}`];
    }
    if (c >= 6 && E > 0) {
      // A getter at part j doing something hostile when the addon reads it.
      // Own parts (not the shared pool) so that a detach cannot hit the pool.
      for (let e = 0; e < E; e++) parts[e] = e % 2 ? new Float32Array(LEN) : new Float32Array(resizable(4 * LEN, 4 * LEN));
      const j = r(E);
      const own = parts.slice(); // read by the getter: parts[j] itself would call it again
      const value = own[j];
      const what = r(7);
      Object.defineProperty(parts, j, {
        enumerable: true,
        get() {
          switch (what) {
            case 0: // detach an earlier (or this) part, and let the GC free it
              detach((own[Math.max(0, j - 1)] as Float32Array).buffer);
              gc?.();
              break;
            case 1:
              throw new Error("fuzz: getter threw");
            case 2: { // rewrite the offsets argument
              const off = ctx.args[3];
              if (off instanceof Int32Array && off.length > 0) off[r(off.length)] = pick([1 << 30, -5, 2 ** 31 - 1]);
              break;
            }
            case 3: { // shrink a resizable part
              const buf = (own[0] as Float32Array).buffer as ResizableBuffer;
              if (buf.resizable) buf.resize(pick([0, 4, 4 * 64]));
              break;
            }
            case 4:
              detachSomething();
              break;
            case 5:
              (addon.setThreads as Fn)(1 + r(3));
              break;
            case 6: // call the same kernel again, once, from inside its argument reading
              if (!ctx.reentered) {
                ctx.reentered = true;
                try {
                  (addon[ctx.name] as Fn)(...ctx.args);
                } catch {
                  // its outcome is not this call's
                }
              }
              break;
          }
          return value;
        },
      });
      return [parts, `parts(getter ${what} at ${j})`];
    }
    return [parts, `parts(${E})`];
  }

  function hostile(kind: Kind, args: unknown[]): [unknown, string] {
    switch (kind) {
      case "ddims":
      case "dnums":
      case "darrays":
      case "dplan":
      case "dcaches":
        return hostileDense(kind, args);
      case "dim":
        return hostileDim();
      case "f32":
        return hostileF32("f32");
      case "i32out":
        return hostileF32("i32");
      case "idx":
        return hostileIdx();
      case "offsets":
        return hostileOffsets(args);
      case "parts":
        return p(0.3) ? hostileF32("f32") : hostileParts(args);
      case "num":
        return ((v) => [v, describe(v)])(pick<unknown>([NaN, Infinity, -Infinity, -0, 1e308, -1e308, 5e-324, "1", null, undefined, {}, { valueOf: () => 1 }, 1n, true]));
      case "int":
        return ((v) => [v, describe(v)])(pick<unknown>([-1, 2 ** 31, -(2 ** 31), 2 ** 31 - 1, 1.5, NaN, Infinity, "0", null, 4096, 5]));
      case "bool":
        return ((v) => [v, describe(v)])(pick<unknown>([0, 1, "true", "", null, undefined, {}, new Boolean(false), NaN]));
      case "path":
        return ((v) => [v, describe(v)])(pick<unknown>(["", "avx512", "AUTO", "auto\0", "x".repeat(1000), 1, null, undefined, {}, ["auto"], new String("auto")]));
      case "iters":
        return ((v) => [v, describe(v)])(pick<unknown>([-1, NaN, 1.5, 2 ** 31, 2 ** 53, Infinity, "10", null, {}, 0]));
      case "threads":
        return ((v) => [v, describe(v)])(pick<unknown>([0, -1, 1025, 2 ** 31 - 1, 2 ** 31, 1.5, NaN, Infinity, "2", null, undefined, {}, { valueOf: () => 2 }]));
      case "tile":
        return ((v) => [v, describe(v)])(pick<unknown>(["AVX512-6x16", "avx512-12x32\0", "x".repeat(1000), "6x16", 1, null, undefined, {}, new String("auto")]));
      case "block":
        return ((v) => [v, describe(v)])(pick<unknown>([-1, 65537, 2 ** 31, 65536, 1.5, NaN, Infinity, "64", null, {}]));
      case "u8":
      case "i8":
      case "u16":
        return hostileBytes(kind);
      case "bf16path":
        return ((v) => [v, describe(v)])(pick<unknown>(["", "converted", "AUTO", "auto\0", "x".repeat(1000), 1, null, undefined, {}, new String("auto")]));
      case "tuning": {
        // A plausible tuning with one field made hostile (or gone), or no object at all.
        const [ok] = plausible("tuning", args);
        if (ok === null || p(0.2)) return ((v) => [v, describe(v)])(pick<unknown>([undefined, 1, "tuning", [], [{}], () => ({}), Symbol("t")]));
        const t = ok as { one: Record<string, unknown> & { large: Record<string, unknown> } };
        const bad = pick<unknown>([-1, 0, 65537, 97, 2 ** 31, 1.5, NaN, Infinity, "64", null, undefined, {}, { valueOf: () => { detachSomething(); return 3; } }]);
        const at = r(4);
        if (at === 0) t.one.large[pick(["tile", "mc", "kc", "nc"] as const)] = bad;
        else if (at === 1) t.one[pick(["smallMRowsNT", "smallMRowsNN"] as const)] = bad;
        else if (at === 2) (t as unknown as Record<string, unknown>)[pick(["path", "one", "many"] as const)] = bad;
        else Object.defineProperty(t.one, "large", { get: () => { detachSomething(); return bad; } });
        return [t, `tuning(hostile ${describe(bad)})`];
      }
    }
  }

  const ANY: Kind[] = ["f32", "idx", "offsets", "parts", "dim", "num", "bool", "path"];

  function makeCall(name: string): { args: unknown[]; labels: string[] } {
    const sig = SIGNATURES[name] ?? Array.from({ length: r(13) }, () => pick(ANY));
    const args: unknown[] = [];
    const labels: string[] = [];
    // Sizes first (parts and offsets are sized from E), then the rest.
    const order = [...sig.keys()].sort((x, y) => Number(sig[y] === "dim") - Number(sig[x] === "dim"));
    for (const k of order) [args[k], labels[k]] = plausible(sig[k]!, args);
    const mode = r(10);
    if (mode < 3) {
      // plausible: small sizes, arrays large enough
    } else if (mode < 5) {
      // every size hostile
      for (const k of order) if (sig[k] === "dim") [args[k], labels[k]] = hostileDim();
      for (const k of order) if (sig[k] === "parts" || sig[k] === "offsets") [args[k], labels[k]] = plausible(sig[k]!, args);
    } else {
      // one to three arguments hostile
      const m = 1 + r(3);
      for (let t = 0; t < m && sig.length > 0; t++) {
        const k = r(sig.length);
        [args[k], labels[k]] = hostile(sig[k]!, args);
      }
    }
    if (p(0.03)) {
      args.pop();
      labels.pop();
    } else if (p(0.03)) {
      args.push(undefined);
      labels.push("(extra)");
    }
    return { args, labels };
  }

  const byExport: Record<string, Tally> = {};
  for (const nm of names) byExport[nm] = { calls: 0, returned: 0, threw: 0, foreign: 0, bad: 0 };
  const badCalls: string[] = [];
  const total: Tally = { calls: 0, returned: 0, threw: 0, foreign: 0, bad: 0 };
  const t0 = performance.now();
  for (let c = 0; c < o.count && names.length > 0; c++) {
    const name = pick(names);
    const { args, labels } = makeCall(name);
    ctx = { name, args, labels, reentered: false };
    const line = `${c} ${name}(${labels.join(", ")})`;
    if (o.trace) writeSync(2, line + "\n");
    const tally = byExport[name]!;
    tally.calls++;
    total.calls++;
    try {
      (addon[name] as Fn)(...args);
      tally.returned++;
      total.returned++;
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      if (e instanceof Error && msg.startsWith("fuzz:")) {
        tally.foreign++;
        total.foreign++;
      } else if ((e instanceof TypeError || e instanceof RangeError) && (msg.startsWith(`${name}: `) || !(name in SIGNATURES))) {
        tally.threw++;
        total.threw++;
      } else {
        tally.bad++;
        total.bad++;
        if (badCalls.length < 20) badCalls.push(`${line} threw ${e instanceof Error ? e.constructor.name : typeof e}: ${msg}`);
      }
    }
  }
  // Leave the process as it started for whatever runs after (the fuzz changes both).
  (addon.setKernelPath as Fn | undefined)?.("auto");
  (addon.setGemmConfig as Fn | undefined)?.("auto", 0, 0, 0, false);
  (addon.setGemmTuning as Fn | undefined)?.(null);
  const seconds = Math.round((performance.now() - t0) / 10) / 100;
  return { seed: o.seed, ...total, seconds, byExport, unknownExports, values, badCalls };
}

/** Sums the summaries of threads that fuzzed at once. */
function merge(all: Summary[]): Summary {
  const out: Summary = { ...all[0]!, byExport: {}, badCalls: [] };
  for (const key of ["calls", "returned", "threw", "foreign", "bad"] as const) out[key] = all.reduce((t, s) => t + s[key], 0);
  out.seconds = Math.max(...all.map((s) => s.seconds));
  for (const s of all) {
    for (const [name, t] of Object.entries(s.byExport)) {
      const m = (out.byExport[name] ??= { calls: 0, returned: 0, threw: 0, foreign: 0, bad: 0 });
      for (const key of Object.keys(t) as (keyof Tally)[]) m[key] += t[key];
    }
    out.badCalls.push(...s.badCalls);
  }
  return out;
}

// Start line for the threads: [0] threads ready, [1] go.
const START = 0, GO = 1;

if (!isMainThread && (workerData as { addonFuzz?: Options } | null)?.addonFuzz) {
  const { addonFuzz, start } = workerData as { addonFuzz: Options; start: Int32Array };
  Atomics.add(start, START, 1);
  Atomics.notify(start, START);
  Atomics.wait(start, GO, 0);
  parentPort!.postMessage(fuzz(addonFuzz));
} else if (isMainThread && process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const o = parseArgs(process.argv.slice(2));
  process.stderr.write(`addon-fuzz: seed ${o.seed}, ${o.count} calls${o.workers ? ` on the main thread and as many on each of ${o.workers} worker_threads (seeds ${o.seed + 1}…), at once` : ""}${gc ? "" : " (run node with --expose-gc to free detached buffers at once)"}\n`);
  // Worker threads fuzz the same addon (and its one thread pool) at the same time.
  const start = new Int32Array(new SharedArrayBuffer(8));
  const workers = Array.from({ length: o.workers }, (_, k) => {
    // tsx's hooks do not reach workers: a small script registers tsx, then loads this file.
    const boot = `import(${JSON.stringify(import.meta.resolve("tsx/esm/api"))}).then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); });`;
    const w = new Worker(boot, { eval: true, workerData: { addonFuzz: { ...o, seed: (o.seed + k + 1) >>> 0, workers: 0 }, start } });
    return new Promise<Summary>((resolve, reject) => {
      w.once("message", resolve);
      w.once("error", reject);
    });
  });
  // Everyone starts once every worker has loaded (a worker that failed to load rejects its promise).
  const deadline = Date.now() + 60_000;
  for (let ready; (ready = Atomics.load(start, START)) < o.workers; Atomics.wait(start, START, ready, 100)) {
    if (Date.now() > deadline) throw new Error(`addon-fuzz: ${o.workers - ready} worker_threads did not start within 60 s`);
  }
  Atomics.store(start, GO, 1);
  Atomics.notify(start, GO);
  const summary = merge([fuzz(o), ...(await Promise.all(workers))]);
  process.stdout.write(JSON.stringify({ ...summary, seed: o.seed, workers: o.workers }) + "\n");
  process.exitCode = summary.bad > 0 ? 1 : 0;
}
