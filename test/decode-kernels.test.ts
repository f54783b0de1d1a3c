// Weight formats for inference and their decode kernels (issue 24): the f16
// and bf16 conversions, the quantizers' error bounds, and every native
// decode kernel (f32, bf16, f16, q8, q4; on the avx512, avx2-fma and portable
// paths; 1 and 2 threads) against its TypeScript twin
// (src/backend/reference/decode.ts: dequantize, then a float64 dot) on odd
// shapes, several experts at once, and K not a multiple of 32.
//
// Tolerance: both sides use the same f32 weights (each format's weights are
// exact functions of its bits), so they differ only by the rounding of the
// native f32 sums: at most (K + 2)·2⁻²⁴·Σ_k |x·w| per output. A wrong scale,
// nibble or group index misses that by orders of magnitude.
//
// q8 and q4 take the integer kernels (x quantized per group of 32, exact
// int32 dots, f32 factors d·scale; q4's min·Σx): the twin quantizes x the same way (same bytes, same f32 factors),
// so the two differ only by the f32 sums over lanes and groups: at most
// (G + 40)·2⁻²⁴·(Σ_g |d·scale|·Σ_i |xq·q| + Σ_g |min|·Σ|x|) for G groups.
// The integer paths are avx512-vnni (vpdpbusd), avx512-bw (the same kernel
// with vpmaddubsw + vpmaddwd, VNNI held off), avx2 and portable.
import { test } from "node:test";
import { existsSync, readFileSync } from "node:fs";
import assert from "node:assert/strict";
import { kernelPathSetting, loadNative, type NativeBackend } from "../src/backend/native/index.js";
import { nativeDecodeKernels, referenceDecode } from "../src/backend/decode.js";
import { intDot, quantizeActivations, takesIntDot } from "../src/backend/reference/decode.js";
import { bf16Bits, bf16Value, dequantize, GROUP, halfBits, halfValue, quantize, QuantizeError, storedRows, WEIGHT_FORMATS, type StoredMatrix, type WeightFormat } from "../src/backend/quant.js";
import { Rng } from "../src/util/rng.js";

const load = loadNative();
const skip = !load.backend && process.env.SIGMA_ALLOW_NO_NATIVE === "1" ? `native backend unavailable: ${load.error}` : false;
const native = load.backend as NativeBackend;

const rng = new Rng(24);
const rand = (n: number, scale = 1) => Float32Array.from({ length: n }, () => (rng.uniform() * 2 - 1) * scale);

test("f16 bits: every finite half round-trips; rounding to nearest even, subnormals, overflow, NaN", () => {
  for (let h = 0; h < 0x10000; h++) {
    if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0) continue; // NaNs
    const v = halfValue(h);
    assert.equal(halfBits(v), h, `half 0x${h.toString(16)} = ${v}`);
  }
  assert.equal(halfBits(1), 0x3c00);
  assert.equal(halfBits(65504), 0x7bff);
  assert.equal(halfBits(65519), 0x7bff);
  assert.equal(halfBits(65520), 0x7c00); // ties to even: infinity
  assert.equal(halfBits(-1e6), 0xfc00);
  assert.equal(halfBits(2 ** -24), 1);
  assert.equal(halfBits(2 ** -25), 0); // tie between 0 and the least subnormal: even
  assert.equal(halfBits(3 * 2 ** -25), 2); // tie between 1 and 2 units: even
  assert.equal(halfBits(1 + 2 ** -11), 0x3c00); // tie: even mantissa
  assert.equal(halfBits(1 + 3 * 2 ** -11), 0x3c02);
  assert.ok(Number.isNaN(halfValue(halfBits(NaN))));
});

test("bf16 bits: the top half of the f32, rounded to nearest even", () => {
  for (const x of [1, -2.5, 3.14159, 1e-30, 6e37, 0.02]) {
    const v = bf16Value(bf16Bits(x));
    assert.ok(Math.abs(v - x) <= Math.abs(x) * 2 ** -8, `${x} → ${v}`);
  }
  assert.equal(bf16Bits(1 + 2 ** -8), 0x3f80); // tie: even
  assert.equal(bf16Bits(1 + 3 * 2 ** -8), 0x3f82);
});

test("quantizers: each weight within the format's rounding of its group; short last groups; refused values", () => {
  for (const K of [1, 17, 32, 33, 100]) {
    const rows = 3;
    const w = rand(rows * K, 0.1);
    w[0] = 0.5; // an outlier in the first group
    for (const format of WEIGHT_FORMATS) {
      const m = quantize(format, w, rows, K);
      const d = dequantize(m);
      for (let n = 0; n < rows; n++) {
        for (let k = 0; k < K; k++) {
          const x = w[n * K + k]!;
          const g0 = n * K + Math.floor(k / GROUP) * GROUP;
          const group = w.subarray(g0, Math.min(n * K + K, g0 + GROUP));
          const amax = Math.max(...Array.from(group, Math.abs));
          const range = Math.max(...group) - Math.min(...group);
          const bound = format === "f32" ? 0 : format === "bf16" ? Math.abs(x) * 2 ** -8 : format === "f16" ? Math.abs(x) * 2 ** -11 + 2 ** -25 : format === "q8" ? (amax / 127) * 0.51 + amax * 2 ** -10 : (range / 15) * 0.51 + (amax + range) * 2 ** -10;
          assert.ok(Math.abs(d[n * K + k]! - x) <= bound, `${format} K=${K} [${n},${k}]: ${x} → ${d[n * K + k]} (bound ${bound})`);
        }
      }
    }
  }
  assert.throws(() => quantize("q8", Float32Array.of(1, NaN), 1, 2), QuantizeError);
  assert.throws(() => quantize("f16", Float32Array.of(1e5), 1, 1), QuantizeError);
  assert.throws(() => quantize("q8", Float32Array.of(1e7), 1, 1), QuantizeError);
  // Padding of a short group is zero.
  const m = quantize("q8", Float32Array.of(1, 2, 3), 1, 3);
  assert.equal(m.data.length, 32);
  assert.ok(Array.from(m.data.subarray(3)).every((v) => v === 0));
});

type IntExports = { decodeIntPath(): string; setDecodeVnni(allow: boolean): void; decodeBf16Path(): string; setDecodeBf16Dot(allow: boolean): void };
const intExports = native as unknown as IntExports;

/**
 * Each kernel path of this machine, with its expected decode path name (and
 * integer and bf16 paths: on AVX-512 once with VNNI and vdpbf16ps where the
 * CPU has them, once held to vpmaddubsw and the f32 row kernels); restores
 * the settings.
 */
function eachPath(body: (where: string) => void): string[] {
  const cap = kernelPathSetting().path;
  const features = native.cpuFeatures();
  const paths: [string, "auto" | "avx2-fma" | "portable", boolean][] = [];
  if (cap === "auto" && features.avx512f) paths.push(["avx512", "auto", true], ["avx512", "auto", false]);
  if (cap !== "portable" && features.avx2 && features.fma) paths.push(["avx2-fma", "avx2-fma", true]);
  paths.push(["portable", "portable", true]);
  const threads = native.getThreads();
  const decode = nativeDecodeKernels()!;
  const seen: string[] = [];
  try {
    for (const [name, setting, vnni] of paths) {
      native.setKernelPath(setting);
      intExports.setDecodeVnni(vnni);
      intExports.setDecodeBf16Dot(vnni);
      assert.equal(decode.name, `native/${name}`);
      const int = intExports.decodeIntPath();
      const bf16 = intExports.decodeBf16Path();
      if (!vnni) assert.ok(int !== "avx512-vnni" && bf16 === "f32-fma", `${int} ${bf16}`);
      if (name !== "avx512") assert.equal(bf16, "f32-fma");
      const key = `${name}/${int}/${bf16}`;
      if (seen.includes(key)) continue; // VNNI and BF16 off on a CPU without them: the same paths again
      seen.push(key);
      for (const t of [1, 2]) {
        native.setThreads(t);
        body(`${name} (integer: ${int}, bf16: ${bf16}), ${t} thread${t > 1 ? "s" : ""}`);
      }
    }
  } finally {
    native.setKernelPath(cap);
    intExports.setDecodeVnni(true);
    intExports.setDecodeBf16Dot(true);
    native.setThreads(threads);
  }
  return seen;
}

/** The bound on |native − reference| for every output (see the file comment): [r·N + n]. */
function bounds(x: Float32Array, w: StoredMatrix, wf: Float32Array, offsets: Int32Array, N: number, K: number): Float64Array {
  const E = offsets.length - 1;
  const out = new Float64Array(offsets[E]! * N);
  for (let e = 0; e < E; e++) {
    const int = takesIntDot(w);
    const we = storedRows(w, e * N, N);
    for (let r = offsets[e]!; r < offsets[e + 1]!; r++) {
      const xq = int ? quantizeActivations(x, r * K, K) : null;
      for (let n = 0; n < N; n++) {
        if (xq) {
          out[r * N + n] = (Math.ceil(K / GROUP) + 40) * 2 ** -24 * intDot(xq, we, n).magnitude + 1e-30;
          continue;
        }
        let mag = 0;
        for (let k = 0; k < K; k++) mag += Math.abs(x[r * K + k]! * wf[(e * N + n) * K + k]!);
        out[r * N + n] = (K + 2) * 2 ** -24 * mag + 1e-30;
      }
    }
  }
  return out;
}

function compare(where: string, y: Float32Array, ref: Float32Array, bound: Float64Array, offsets: Int32Array, N: number): void {
  const E = offsets.length - 1;
  for (let e = 0; e < E; e++) {
    for (let r = offsets[e]!; r < offsets[e + 1]!; r++) {
      for (let n = 0; n < N; n++) {
        const err = Math.abs(y[r * N + n]! - ref[r * N + n]!);
        if (!(err <= bound[r * N + n]!)) assert.fail(`${where}: y[${r},${n}] = ${y[r * N + n]} but the reference gives ${ref[r * N + n]} (|diff| ${err} > ${bound[r * N + n]})`);
      }
    }
  }
}

/** Shapes: [rows of x per expert, N, K]; odd sizes, K below, at and past 32, not a multiple of it, and past the kernels' tiles. */
const SHAPES: [number[], number, number][] = [
  [[1], 1, 1],
  [[1], 3, 17],
  [[3], 17, 32],
  [[2], 5, 64],
  [[1], 17, 257],
  [[8], 9, 96],
  [[9], 7, 33],
  [[17], 4, 100],
  [[5], 257, 64],
  [[1, 0, 2], 6, 64], // three experts, one with no rows
  [[3, 1, 0, 4], 11, 40],
  // One and two rows of x (the streaming kernels): an odd number of whole groups, and a tail.
  [[2, 1], 7, 97],
  [[1], 5, 224],
  // The integer kernels (q8, q4; rows taken four, then two, then one at a time; AVX2 two): K = 1 … 257, experts with 1, 2, 3 and 0 rows,
  // partial blocks of 16 groups (K = 600: 19 groups), a last odd group (AVX2's q4 pairs).
  [[2], 5, 1],
  [[1, 0, 2], 9, 17],
  [[2, 1, 0], 7, 33],
  [[1, 2], 6, 40],
  [[1], 3, 100],
  [[2, 0, 1, 3], 5, 257],
  [[1, 2], 40, 600],
  [[2], 3, 544],
  // Large enough that two threads share the rows (64 KiB of weights per thread at least), splitting inside experts.
  [[2], 300, 512],
  [[3], 1030, 512],
  [[1, 2, 0, 1], 300, 256],
];

test("decode kernels: every format on every path, 1 and 2 threads, match the TypeScript twin (dequantize, then dot)", { skip }, () => {
  const decode = nativeDecodeKernels();
  assert.ok(decode, "the addon exports the decode kernels");
  const cases = SHAPES.map(([rowsPer, N, K]) => {
    const E = rowsPer.length;
    const offsets = Int32Array.from([0, ...rowsPer.map((_, i) => rowsPer.slice(0, i + 1).reduce((a, b) => a + b, 0))]);
    const R = offsets[E]!;
    const x = rand(R * K);
    const w = rand(E * N * K, 0.05);
    const stored = Object.fromEntries(WEIGHT_FORMATS.map((f) => [f, quantize(f, w, E * N, K)])) as Record<WeightFormat, StoredMatrix>;
    const refs = Object.fromEntries(
      WEIGHT_FORMATS.map((f) => {
        const y = new Float32Array(R * N);
        referenceDecode.decodeMatmul(y, x, stored[f], offsets, E, N, K);
        return [f, { y, bound: bounds(x, stored[f], dequantize(stored[f]), offsets, N, K) }];
      }),
    ) as Record<WeightFormat, { y: Float32Array; bound: Float64Array }>;
    return { E, N, K, R, offsets, x, stored, refs };
  });
  const seen = eachPath((where) => {
    for (const c of cases) {
      for (const f of WEIGHT_FORMATS) {
        const y = new Float32Array(c.R * c.N).fill(NaN);
        decode!.decodeMatmul(y, c.x, c.stored[f], c.offsets, c.E, c.N, c.K);
        compare(`${f}, ${where}, E=${c.E} R=${c.R} N=${c.N} K=${c.K}`, y, c.refs[f].y, c.refs[f].bound, c.offsets, c.N);
      }
    }
  });
  // This CPU's integer and bf16 paths were all visited: where Linux reports AVX512_VNNI, vpdpbusd and, held off,
  // vpmaddubsw; where it reports AVX512_BF16, vdpbf16ps and, held off, the f32 row kernels.
  const flags = existsSync("/proc/cpuinfo") ? readFileSync("/proc/cpuinfo", "utf8") : "";
  const has = (p: string) => seen.some((k) => k.startsWith(p));
  if (kernelPathSetting().path === "auto" && /\bavx512_vnni\b/.test(flags) && /\bavx512bw\b/.test(flags)) {
    assert.ok(has("avx512/avx512-vnni/") && has("avx512/avx512-bw/"), seen.join(", "));
  }
  if (kernelPathSetting().path === "auto" && /\bavx512_bf16\b/.test(flags)) {
    assert.ok(seen.some((k) => k.endsWith("/avx512-bf16")) && has("avx512/avx512-bw/f32-fma"), seen.join(", "));
  }
  if (has("avx512/avx512-vnni/")) assert.ok(has("avx512/avx512-bw/"), seen.join(", "));
  assert.ok(has("portable/portable/"), seen.join(", "));
});

test("decode epilogue: bias, activation and residual on every path, format and thread count match the twin; y is what it would be alone", { skip }, () => {
  const decode = nativeDecodeKernels()!;
  // [rows of x per expert, N, K]: odd N (the vector kernels' tails), several experts, one with no rows, K = 0, and a two-thread split.
  const shapes: [number[], number, number][] = [[[1], 1, 1], [[2], 17, 33], [[1, 0, 3], 257, 64], [[2, 1], 7, 0], [[1, 2], 300, 512]];
  for (const [rowsPer, N, K] of shapes) {
    const E = rowsPer.length;
    const offsets = Int32Array.from([0, ...rowsPer.map((_, i) => rowsPer.slice(0, i + 1).reduce((a, b) => a + b, 0))]);
    const R = offsets[E]!;
    const x = rand(R * K);
    const bias = rand(E * N, 0.5);
    const base = rand(R * N);
    for (const f of WEIGHT_FORMATS) {
      const w = quantize(f, rand(E * N * K, 0.05), E * N, K);
      for (const act of [null, "fastgelu", "gelu"] as const) {
        for (const withBias of [false, true]) {
          for (const withResidual of [false, true]) {
            // The twin with the epilogue, and the native plain product finished by hand with the reference ops.
            const ref = new Float32Array(R * N);
            const refRes = base.slice();
            const ep = { bias: withBias ? bias : null, act, residual: withResidual ? refRes : null };
            referenceDecode.decodeMatmul(ref, x, w, offsets, E, N, K, ep);
            eachPath((where) => {
              const plain = new Float32Array(R * N);
              decode.decodeMatmul(plain, x, w, offsets, E, N, K);
              const y = new Float32Array(R * N);
              const res = base.slice();
              decode.decodeMatmul(y, x, w, offsets, E, N, K, { bias: withBias ? bias : null, act, residual: withResidual ? res : null });
              const what = `${f} ${where} rows ${rowsPer} N=${N} K=${K} bias=${withBias} act=${act} residual=${withResidual}`;
              for (let e = 0; e < E; e++) {
                for (let r = offsets[e]!; r < offsets[e + 1]!; r++) {
                  for (let n = 0; n < N; n++) {
                    const i = r * N + n;
                    // Expected from the native plain product: the epilogue adds no error beyond the activation's.
                    let v = plain[i]! + (withBias ? bias[e * N + n]! : 0);
                    v = Math.fround(v);
                    if (act === "fastgelu") v = v / (1 + Math.exp(-1.702 * v));
                    else if (act === "gelu") v = 0.5 * v * (1 + erf(v / Math.SQRT2));
                    const tol = 1e-5 * (1 + Math.abs(v));
                    if (!(Math.abs(y[i]! - v) <= tol)) assert.fail(`${what}: y[${r},${n}] = ${y[i]}, expected ${v}`);
                    if (!(Math.abs(y[i]! - ref[i]!) <= tol + 2e-5 * (1 + Math.abs(ref[i]!)))) assert.fail(`${what}: y[${r},${n}] = ${y[i]} but the twin gives ${ref[i]}`);
                    const wantRes = withResidual ? Math.fround(base[i]! + y[i]!) : base[i]!;
                    if (res[i] !== wantRes) assert.fail(`${what}: residual[${r},${n}] = ${res[i]}, expected base + y = ${wantRes}`);
                  }
                }
              }
            });
          }
        }
      }
    }
  }
  // y itself as the residual, and an unknown activation, are refused.
  const w = quantize("f32", rand(4), 2, 2);
  const y = new Float32Array(2);
  assert.throws(() => decode.decodeMatmul(y, rand(2), w, Int32Array.of(0, 1), 1, 2, 2, { residual: y }), /residual/);
  assert.throws(() => referenceDecode.decodeMatmul(y, rand(2), w, Int32Array.of(0, 1), 1, 2, 2, { residual: y }), /residual/);
  const addon = native as unknown as Record<string, (...a: unknown[]) => void>;
  assert.throws(() => addon.decodeMatmulF32!(y, rand(2), w.data, Int32Array.of(0, 1), 1, 2, 2, null, 3, null), /act/);
});

/** erf to ~1e-7 (Abramowitz–Stegun 7.1.26 is too coarse for a 1e-5 check): the series and the continued fraction. */
function erf(z: number): number {
  const a = Math.abs(z);
  let r: number;
  if (a < 2.5) {
    let term = a;
    let sum = a;
    for (let n = 1; n < 60; n++) {
      term *= (-a * a) / n;
      sum += term / (2 * n + 1);
    }
    r = (2 / Math.sqrt(Math.PI)) * sum;
  } else {
    let cf = 0;
    for (let n = 60; n >= 1; n--) cf = n / 2 / (a + cf);
    r = 1 - Math.exp(-a * a) / Math.sqrt(Math.PI) / (a + cf);
  }
  return z < 0 ? -r : r;
}

test("integer decode twin: x's quantization is round-to-nearest-even per group, and the product stays within its error of the f32-weight product", () => {
  // Ties: 127/amax = 1 with amax = 127, so x = 0.5, 1.5, 2.5, −0.5 quantize to 0, 2, 2, −0.
  const x = new Float32Array(32);
  x.set([127, 0.5, 1.5, 2.5, -0.5, -1.5, 126.6, -127]);
  const xq = quantizeActivations(x, 0, 32);
  assert.deepEqual(Array.from(xq.q.subarray(0, 8)), [127, 0, 2, 2, 0, -2, 127, -127]);
  assert.equal(xq.d[0], Math.fround(1));
  assert.ok(Number.isNaN(quantizeActivations(Float32Array.of(1, NaN, 2), 0, 3).d[0]));
  assert.deepEqual(Array.from(quantizeActivations(new Float32Array(40), 0, 40).q), new Array(64).fill(0));
  // Against the f32-weight product: each xq·d is within d/2 of x, so |Δ| ≤ Σ_g (d_g/2)·Σ|w| (plus rounding).
  for (const K of [1, 17, 33, 100, 257]) {
    for (const f of ["q8", "q4"] as const) {
      const N = 5;
      const m = quantize(f, rand(N * K, 0.05), N, K);
      const wf = dequantize(m);
      const xs = rand(K);
      const xr = quantizeActivations(xs, 0, K);
      for (let n = 0; n < N; n++) {
        let exact = 0;
        let bound = 1e-6;
        for (let k = 0; k < K; k++) {
          exact += xs[k]! * wf[n * K + k]!;
          bound += (xr.d[Math.floor(k / GROUP)]! / 2) * Math.abs(wf[n * K + k]!);
        }
        const got = intDot(xr, m, n).value;
        assert.ok(Math.abs(got - exact) <= bound, `${f} K=${K} n=${n}: ${got} vs ${exact} (bound ${bound})`);
      }
    }
  }
});

test("decode kernels: a row's outputs are the same bits whatever rows share the call (batch, speculative step), every format and path", { skip }, () => {
  const decode = nativeDecodeKernels()!;
  for (const f of WEIGHT_FORMATS) {
    for (const [N, K] of [[7, 100], [40, 600], [300, 512]] as const) {
      const m = quantize(f, rand(N * K, 0.05), N, K);
      const R = 5;
      const x = rand(R * K);
      eachPath((where) => {
        const all = new Float32Array(R * N);
        decode.decodeMatmul(all, x, m, Int32Array.of(0, R), 1, N, K);
        for (let r = 0; r < R; r++) {
          const one = new Float32Array(N);
          decode.decodeMatmul(one, x.subarray(r * K, (r + 1) * K), m, Int32Array.of(0, 1), 1, N, K);
          assert.deepEqual(one, all.subarray(r * N, (r + 1) * N), `${f} ${where} N=${N} K=${K}: row ${r} of ${R}`);
        }
      });
    }
  }
});

test("integer decode kernels: a NaN in x makes its outputs NaN on every path", { skip }, () => {
  const decode = nativeDecodeKernels()!;
  const K = 70;
  const x = rand(2 * K);
  x[K + 40] = NaN; // row 1, group 1
  for (const f of ["q8", "q4"] as const) {
    const m = quantize(f, rand(3 * K, 0.05), 3, K);
    const ref = new Float32Array(6);
    referenceDecode.decodeMatmul(ref, x, m, Int32Array.of(0, 2), 1, 3, K);
    eachPath((where) => {
      const y = new Float32Array(6);
      decode.decodeMatmul(y, x, m, Int32Array.of(0, 2), 1, 3, K);
      for (let n = 0; n < 3; n++) {
        assert.ok(Number.isFinite(y[n]!) && Math.abs(y[n]! - ref[n]!) < 1e-4, `${f} ${where}: row 0 unaffected`);
        assert.ok(Number.isNaN(y[3 + n]!) && Number.isNaN(ref[3 + n]!), `${f} ${where}: row 1 NaN`);
      }
    });
  }
});

test("dequantize: the native kernels give the TypeScript definition's weights bit for bit", { skip }, () => {
  const decode = nativeDecodeKernels()!;
  for (const [rows, K] of [[1, 1], [3, 17], [5, 64], [4, 257]] as const) {
    const w = rand(rows * K, 0.3);
    for (const f of WEIGHT_FORMATS) {
      const m = quantize(f, w, rows, K);
      const out = new Float32Array(rows * K).fill(NaN);
      decode.dequantize(out, m);
      assert.deepEqual(out, dequantize(m), `${f} ${rows}×${K}`);
    }
  }
});

test("decode kernels: a short scale array or a bad offsets array is a RangeError naming it", { skip }, () => {
  const addon = native as unknown as Record<string, (...a: unknown[]) => void>;
  const m = quantize("q8", rand(4 * 64), 4, 64);
  const y = new Float32Array(8);
  const x = rand(2 * 64);
  assert.throws(() => addon.decodeMatmulQ8!(y, x, m.data, Int32Array.of(0, 2), 1, 4, 64, m.scales!.subarray(0, 3)), /decodeMatmulQ8: argument "scales" has 3 elements/);
  assert.throws(() => addon.decodeMatmulQ8!(y, x, m.data, Int32Array.of(0, 3), 1, 4, 64, m.scales), /decodeMatmulQ8: argument "offsets" ends at 3/);
  assert.throws(() => addon.decodeMatmulQ4!(y, x, m.data, Int32Array.of(0, 2), 1, 4, 64, m.scales, m.scales), /decodeMatmulQ4: argument "q" must be a Uint8Array/);
  assert.throws(() => addon.decodeMatmulBf16!(y, x, new Uint16Array(10), Int32Array.of(0, 2), 1, 4, 64), /decodeMatmulBf16: argument "w" has 10 elements/);
});
