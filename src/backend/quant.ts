/**
 * Weight formats for inference (docs/decode.md): how a weight matrix of
 * `rows` rows of K inputs is stored in bf16, f16, q8 or q4, the quantizer
 * that makes the stored form from f32 weights, and the dequantizer that gives
 * back the f32 weights every decode kernel computes with — the definition the
 * native kernels (native/include/quant.h) follow bit for bit.
 *
 *   f32   Float32Array[rows·K]
 *   bf16  Uint16Array[rows·K]: the top half of each f32, rounded to nearest even
 *   f16   Uint16Array[rows·K]: IEEE half precision, rounded to nearest even
 *   q8    Int8Array[rows·Kp], Kp = K rounded up to 32; scales: Uint16Array (f16) [rows·Kp/32]
 *         w = scale·q, q in −127…127, scale = max|w| / 127 of the group (in f16)
 *   q4    Uint8Array[rows·Kp/2]; scales and mins: Uint16Array (f16) [rows·Kp/32]
 *         w = scale·q + min, q in 0…15, min = the group's least value (in f16),
 *         scale = (max − min) / 15 (in f16); byte j of a group holds element j
 *         in its low nibble and element j + 16 in its high one
 *
 * A group is 32 consecutive inputs of one row. When K is not a multiple of
 * 32 each row ends in a short group: its scale comes from the values it has,
 * its padding is zero, and no kernel reads it — so any K works, at the cost
 * of up to 31 padding bytes per row.
 *
 * The f32 weights of each format are exact functions of the stored bits:
 * scale·q is exact in f32 (an 11-bit by 8-bit product), and scale·q + min is
 * rounded to f32 once (as an FMA does). Kernels differ only in the order of
 * their f32 sums.
 */

export type WeightFormat = "f32" | "bf16" | "f16" | "q8" | "q4";
export const WEIGHT_FORMATS = ["f32", "bf16", "f16", "q8", "q4"] as const satisfies readonly WeightFormat[];

/** Inputs per q8/q4 group. */
export const GROUP = 32;

/** A weight matrix in a stored format: `rows` rows (a Linear's outputs, or E experts' E·N) of K inputs each. */
export interface StoredMatrix {
  format: WeightFormat;
  rows: number;
  K: number;
  data: Float32Array | Uint16Array | Int8Array | Uint8Array;
  /** q8, q4: one f16 scale per group. */
  scales: Uint16Array | null;
  /** q4: one f16 minimum per group. */
  mins: Uint16Array | null;
}

/** Groups per row. */
export const groupsOf = (K: number): number => Math.ceil(K / GROUP);

/** Stored elements per row: values (f32, bf16, f16) or bytes (q8, q4). */
export function rowElements(format: WeightFormat, K: number): number {
  if (format === "q8") return groupsOf(K) * GROUP;
  if (format === "q4") return (groupsOf(K) * GROUP) / 2;
  return K;
}

/** Bytes a kernel reads to use the whole matrix once (data, scales, mins). */
export function storedBytes(m: StoredMatrix): number {
  return m.data.byteLength + (m.scales?.byteLength ?? 0) + (m.mins?.byteLength ?? 0);
}

/**
 * What a decode product does to its outputs before it returns, in this
 * order: y += bias (row e of the [E, N] biases for expert e's rows, as
 * addBias), y = act(y) (fastGelu, gelu), residual += y (residual [R, N] laid
 * out as y; not y itself). Each thread finishes the outputs it computed
 * while they are still in its cache, and the step makes no separate call for them.
 */
export interface DecodeEpilogue {
  bias?: Float32Array | null;
  act?: "fastgelu" | "gelu" | null;
  residual?: Float32Array | null;
}

/**
 * The decode kernels' contract (implemented in ./decode.ts by the addon and
 * in ./reference/decode.ts by the TypeScript twin).
 */
export interface DecodeKernels {
  /** "reference", or "native/<path>" with the path the native kernels take now (avx512, avx2-fma, portable). */
  readonly name: string;
  /**
   * y [R, N] (overwritten): for each expert e, the rows offsets[e] … offsets[e+1] − 1 of x [R, K]
   * times expert e's weights (rows e·N … e·N + N − 1 of w): y[r, n] = Σ_k x[r, k]·w_e[n, k].
   * A plain linear layer is E = 1, offsets [0, R]. R = offsets[E]. q8 and q4 quantize x per group
   * of 32 first and take integer dots (./reference/decode.ts quantizeActivations, intDot; docs/decode.md).
   */
  decodeMatmul(y: Float32Array, x: Float32Array, w: StoredMatrix, offsets: Int32Array, E: number, N: number, K: number, epilogue?: DecodeEpilogue): void;
  /** out [w.rows, w.K] = the f32 weights of w. */
  dequantize(out: Float32Array, w: StoredMatrix): void;
}

// ------------------------------------------------------------------ f16 and bf16 bits

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** x (first rounded to f32) as IEEE half-precision bits: nearest, ties to even; past 65504 (from 65520), infinity; NaN stays NaN. */
export function halfBits(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  const sign = (b >>> 16) & 0x8000;
  const ax = b & 0x7fffffff;
  if (ax > 0x7f800000) return sign | 0x7e00 | ((ax >>> 13) & 0x3ff);
  if (ax >= 0x477ff000) return sign | 0x7c00;
  if (ax < 0x33000000) return sign;
  if (ax < 0x38800000) {
    // A half subnormal: the value in units of 2^-24, rounded to nearest even.
    const e = ax >>> 23;
    const m = (ax & 0x7fffff) | 0x800000;
    const shift = 126 - e;
    let r = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (r & 1) === 1)) r++;
    return sign | r;
  }
  const r = ax - 0x38000000;
  let h = r >>> 13;
  const rem = r & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++;
  return sign | h;
}

/** The value of half-precision bits h. */
export function halfValue(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0x1f) return man ? NaN : sign * Infinity;
  if (exp === 0) return sign * man * 2 ** -24;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

/** x (first rounded to f32) as bf16 bits: nearest, ties to even; subnormals become zero; NaN stays NaN (the rule of the bf16 products). */
export function bf16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  const mag = b & 0x7fffffff;
  if (mag > 0x7f800000) return ((b | 0x00400000) >>> 16) & 0xffff;
  if (mag < 0x00800000) return (b >>> 16) & 0x8000;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** The value of bf16 bits. */
export function bf16Value(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0]!;
}

// ------------------------------------------------------------------ quantize

/** Why a matrix cannot be stored in a format: a value that is not finite, or a q8/q4 scale past f16's range. */
export class QuantizeError extends RangeError {}

/**
 * The stored form of w [rows, K] (f32) in `format`. f32 keeps w itself (no
 * copy). Throws QuantizeError for a NaN or infinite weight, or a group whose
 * scale would overflow f16 (|w| beyond 8·10⁶ in q8).
 */
export function quantize(format: WeightFormat, w: Float32Array, rows: number, K: number): StoredMatrix {
  if (w.length < rows * K) throw new RangeError(`quantize: ${w.length} values for ${rows}×${K}`);
  const base = { format, rows, K, scales: null, mins: null };
  for (let i = 0; i < rows * K; i++) {
    if (!Number.isFinite(w[i]!)) throw new QuantizeError(`weight ${i} (row ${Math.floor(i / K)}, input ${i % K}) is ${w[i]}`);
  }
  switch (format) {
    case "f32":
      return { ...base, data: w.length === rows * K ? w : w.subarray(0, rows * K) };
    case "bf16": {
      const out = new Uint16Array(rows * K);
      for (let i = 0; i < out.length; i++) out[i] = bf16Bits(w[i]!);
      return { ...base, data: out };
    }
    case "f16": {
      const out = new Uint16Array(rows * K);
      for (let i = 0; i < out.length; i++) {
        out[i] = halfBits(w[i]!);
        if ((out[i]! & 0x7c00) === 0x7c00) throw new QuantizeError(`weight ${i} (row ${Math.floor(i / K)}, input ${i % K}) is ${w[i]}, beyond f16's largest value 65504`);
      }
      return { ...base, data: out };
    }
    case "q8":
      return quantizeQ8(w, rows, K);
    case "q4":
      return quantizeQ4(w, rows, K);
  }
}

/** A finite f16 scale for `v`, or a QuantizeError naming the group. */
function scaleBits(v: number, row: number, g: number): number {
  const h = halfBits(v);
  if ((h & 0x7c00) === 0x7c00) throw new QuantizeError(`row ${row}, group ${g}: its scale ${v} is beyond f16's largest value 65504`);
  return h;
}

/** Rounds half away from zero. */
const roundAway = (v: number): number => (v < 0 ? -Math.round(-v) : Math.round(v));

function quantizeQ8(w: Float32Array, rows: number, K: number): StoredMatrix {
  const G = groupsOf(K);
  const Kp = G * GROUP;
  const q = new Int8Array(rows * Kp);
  const scales = new Uint16Array(rows * G);
  for (let n = 0; n < rows; n++) {
    for (let g = 0; g < G; g++) {
      const k0 = g * GROUP;
      const k1 = Math.min(K, k0 + GROUP);
      let amax = 0;
      for (let k = k0; k < k1; k++) amax = Math.max(amax, Math.abs(w[n * K + k]!));
      const s = scaleBits(amax / 127, n, g);
      scales[n * G + g] = s;
      const d = halfValue(s);
      if (d === 0) continue;
      for (let k = k0; k < k1; k++) q[n * Kp + k] = Math.max(-127, Math.min(127, roundAway(w[n * K + k]! / d)));
    }
  }
  return { format: "q8", rows, K, data: q, scales, mins: null };
}

function quantizeQ4(w: Float32Array, rows: number, K: number): StoredMatrix {
  const G = groupsOf(K);
  const Kb = (G * GROUP) / 2;
  const q = new Uint8Array(rows * Kb);
  const scales = new Uint16Array(rows * G);
  const mins = new Uint16Array(rows * G);
  const nib = new Uint8Array(GROUP);
  for (let n = 0; n < rows; n++) {
    for (let g = 0; g < G; g++) {
      const k0 = g * GROUP;
      const k1 = Math.min(K, k0 + GROUP);
      let lo = Infinity;
      let hi = -Infinity;
      for (let k = k0; k < k1; k++) {
        lo = Math.min(lo, w[n * K + k]!);
        hi = Math.max(hi, w[n * K + k]!);
      }
      const mb = scaleBits(lo, n, g);
      const m = halfValue(mb);
      const sb = scaleBits(Math.max(0, hi - m) / 15, n, g);
      const d = halfValue(sb);
      mins[n * G + g] = mb;
      scales[n * G + g] = sb;
      nib.fill(0);
      if (d > 0) for (let k = k0; k < k1; k++) nib[k - k0] = Math.max(0, Math.min(15, Math.round((w[n * K + k]! - m) / d)));
      const at = n * Kb + g * (GROUP / 2);
      for (let j = 0; j < GROUP / 2; j++) q[at + j] = nib[j]! | (nib[j + GROUP / 2]! << 4);
    }
  }
  return { format: "q4", rows, K, data: q, scales, mins };
}

// ------------------------------------------------------------------ dequantize

/** The f32 weight at row n, input k: the definition of every format. */
export function weightAt(m: StoredMatrix, n: number, k: number): number {
  const K = m.K;
  switch (m.format) {
    case "f32":
      return m.data[n * K + k]!;
    case "bf16":
      return bf16Value(m.data[n * K + k]!);
    case "f16":
      return Math.fround(halfValue(m.data[n * K + k]!));
    case "q8": {
      const G = groupsOf(K);
      return halfValue(m.scales![n * G + Math.floor(k / GROUP)]!) * m.data[n * G * GROUP + k]!;
    }
    case "q4": {
      const G = groupsOf(K);
      const g = Math.floor(k / GROUP);
      const i = k % GROUP;
      const byte = m.data[n * (G * GROUP) / 2 + g * (GROUP / 2) + (i % (GROUP / 2))]!;
      const q = i < GROUP / 2 ? byte & 15 : byte >>> 4;
      // scale·q is exact; the sum is rounded to f32 once.
      return Math.fround(halfValue(m.scales![n * G + g]!) * q + halfValue(m.mins![n * G + g]!));
    }
  }
}

/** out [rows, K] = the f32 weights of m (a new array unless `out` is given). */
export function dequantize(m: StoredMatrix, out: Float32Array = new Float32Array(m.rows * m.K)): Float32Array {
  for (let n = 0; n < m.rows; n++) for (let k = 0; k < m.K; k++) out[n * m.K + k] = weightAt(m, n, k);
  return out;
}

/** Rows first … first + count − 1 of m, as a matrix of its own (views, no copy): one expert of a stacked bank. */
export function storedRows(m: StoredMatrix, first: number, count: number): StoredMatrix {
  const per = rowElements(m.format, m.K);
  const G = groupsOf(m.K);
  return {
    format: m.format,
    rows: count,
    K: m.K,
    data: m.data.subarray(first * per, (first + count) * per),
    scales: m.scales ? m.scales.subarray(first * G, (first + count) * G) : null,
    mins: m.mins ? m.mins.subarray(first * G, (first + count) * G) : null,
  };
}
