/**
 * The ops of the block options that Llama-style models use (docs/design.md
 * §1.7): RMSNorm, SwiGLU's gated product, rotary position embedding, the
 * head repetition of grouped-query attention, and σ (a shared expert's gate).
 *
 * RMSNorm and SwiGLU run as backend kernels (a profile of a SwiGLU/RMSNorm
 * training step gave them about a fifth of the step as TypeScript loops);
 * the others are plain TypeScript over the tensors' arrays, angles in
 * float64, written out forward and backward here.
 */
import { gradOf, record } from "../autograd/tape.js";
import type { Tensor } from "../tensor/tensor.js";
import { shapeStr } from "../tensor/shape.js";
import { be, empty, expectShape, rowsOf, sameDtype } from "./util.js";

/**
 * RMSNorm over the last dimension: y = x / √(mean(x²) + eps) ⊙ γ, no mean
 * subtracted and no bias (Llama, Qwen, Pangu Pro MoE). x [..., C]; gamma [C].
 * Backend kernel (Backend.rmsNorm; native, with the reference twin in
 * src/backend/reference/norm.ts): with r = 1/√(mean(x²) + eps), x̂ = x·r and
 * g = dy ⊙ γ, dx = r · (g − x̂ · mean(g ⊙ x̂)) and dγ = Σ_rows dy ⊙ x̂.
 */
export function rmsNorm(x: Tensor, gamma: Tensor, eps = 1e-6): Tensor {
  sameDtype("rmsNorm", x, gamma);
  const C = x.dim(-1);
  expectShape("rmsNorm", "gamma", gamma, [C]);
  const rows = rowsOf(x);
  const y = empty(x, x.shape);
  const rstd = empty(x, [rows]);
  be(x).rmsNorm(y.data, rstd.data, x.data, gamma.data, rows, C, eps);
  record(y, [x, gamma], (g) => {
    // The kernel writes both gradients; send the one nobody needs to a scratch buffer.
    const dx = x.requiresGrad ? gradOf(x).data : empty(x, x.shape).data;
    const dgamma = gamma.requiresGrad ? gradOf(gamma).data : empty(x, [C]).data;
    be(x).rmsNormBackward(dx, dgamma, g.data, x.data, rstd.data, gamma.data, rows, C);
  });
  return y;
}

/** SwiGLU's gated product SiLU(g) ⊙ u (SiLU(g) = g·σ(g)), g and u of one shape; one backend kernel each way. */
export function swiglu(g: Tensor, u: Tensor): Tensor {
  sameDtype("swiglu", g, u);
  expectShape("swiglu", "u", u, g.shape);
  const y = empty(g, g.shape);
  be(g).swiglu(y.data, g.data, u.data, g.size);
  record(y, [g, u], (dy) => {
    const dg = g.requiresGrad ? gradOf(g).data : empty(g, g.shape).data;
    const du = u.requiresGrad ? gradOf(u).data : empty(u, u.shape).data;
    be(g).swigluBackward(dg, du, dy.data, g.data, u.data, g.size);
  });
  return y;
}

/**
 * Rotary position embedding, in the Hugging Face Llama convention
 * ("rotate_half"): x [..., H·D] is H heads of D (even) numbers per row, row r
 * at position positions[r]; inside each head, dimension i pairs with
 * i + D/2 (not with i + 1, GPT-J's interleaved layout), and the pair turns by
 * the angle pos·θ^(−2i/D), i < D/2:
 *
 *   y[i]       = x[i]·cos − x[i + D/2]·sin
 *   y[i + D/2] = x[i + D/2]·cos + x[i]·sin
 *
 * Hugging Face checkpoints (Llama, Qwen, Mixtral, Pangu Pro MoE) store their
 * q and k projections for this pairing, and GGUF's llama.cpp permutes them
 * into its own on export; the import and export helpers rely on it.
 * Angles are computed in float64. The backward turns the gradient back by
 * the same angle (a rotation's inverse is its transpose).
 */
export function rope(x: Tensor, positions: Int32Array, heads: number, theta: number): Tensor {
  const W = x.dim(-1);
  const rows = rowsOf(x);
  if (!(Number.isInteger(heads) && heads >= 1 && W % heads === 0)) throw new RangeError(`rope: ${heads} heads do not divide the last dimension of x ${shapeStr(x.shape)}`);
  const D = W / heads;
  if (D % 2 !== 0) throw new RangeError(`rope: the head size ${D} must be even`);
  if (positions.length !== rows) throw new RangeError(`rope: ${positions.length} positions for ${rows} rows of x ${shapeStr(x.shape)}`);
  const { cos, sin } = ropeAngles(positions, rows, D, theta);
  const y = empty(x, x.shape);
  turn(y.data, x.data, cos, sin, rows, heads, D, 1);
  record(y, [x], (g) => turn(gradOf(x).data, g.data, cos, sin, rows, heads, D, -1, true));
  return y;
}

/** cos and sin of each row's angles [rows, D/2]: position · θ^(−2i/D), in float64. */
function ropeAngles(positions: Int32Array, rows: number, D: number, theta: number): { cos: Float64Array; sin: Float64Array } {
  const half = D / 2;
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) invFreq[i] = Math.pow(theta, (-2 * i) / D);
  const cos = new Float64Array(rows * half);
  const sin = new Float64Array(rows * half);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < half; i++) {
      const a = positions[r]! * invFreq[i]!;
      cos[r * half + i] = Math.cos(a);
      sin[r * half + i] = Math.sin(a);
    }
  }
  return { cos, sin };
}

/**
 * rope's forward on buffers, in place: each of `rows` rows of x holds `heads`
 * heads of D, turned by its row's position (the same arithmetic as rope; the
 * decode step's q and k, src/models/decode-step.ts).
 */
export function ropeInPlace(x: Float32Array, positions: Int32Array, rows: number, heads: number, D: number, theta: number): void {
  const { cos, sin } = ropeAngles(positions, rows, D, theta);
  turn(x, x, cos, sin, rows, heads, D, 1);
}

/** out (+)= each head's pairs of `src` turned by sign·angle (out may be src: each pair is read before it is written). */
function turn(out: Tensor["data"], src: Tensor["data"], cos: Float64Array, sin: Float64Array, rows: number, heads: number, D: number, sign: 1 | -1, accumulate = false): void {
  const half = D / 2;
  for (let r = 0; r < rows; r++) {
    for (let h = 0; h < heads; h++) {
      const o = (r * heads + h) * D;
      for (let i = 0; i < half; i++) {
        const c = cos[r * half + i]!;
        const s = sign * sin[r * half + i]!;
        const a = src[o + i]!;
        const b = src[o + i + half]!;
        const ya = a * c - b * s;
        const yb = b * c + a * s;
        if (accumulate) {
          out[o + i] += ya;
          out[o + i + half] += yb;
        } else {
          out[o + i] = ya;
          out[o + i + half] = yb;
        }
      }
    }
  }
}

/**
 * Grouped-query attention's key/value sharing: x [B, T, G·D] holds G key (or
 * value) heads per position; returns [B, Tk, H·D] in which query head h reads
 * key head ⌊h / (H/G)⌋ (Hugging Face's repeat_kv: each key head serves H/G
 * consecutive query heads). Only the first Tk positions are copied (a KV
 * cache holds more rows than are filled). The backward sums each key head's
 * copies.
 */
export function repeatHeads(x: Tensor, groups: number, heads: number, Tk = x.dim(1)): Tensor {
  const [B, T, W] = x.shape as [number, number, number];
  if (!(W % groups === 0 && heads % groups === 0)) throw new RangeError(`repeatHeads: ${groups} key heads must divide both ${heads} query heads and the width ${W}`);
  if (!(Tk >= 0 && Tk <= T)) throw new RangeError(`repeatHeads: Tk = ${Tk} is outside [0, ${T}]`);
  const D = W / groups;
  const rep = heads / groups;
  const Wq = heads * D;
  const y = empty(x, [B, Tk, Wq]);
  const [xd, yd] = [x.data, y.data];
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < Tk; t++) {
      const src = (b * T + t) * W;
      const dst = (b * Tk + t) * Wq;
      for (let h = 0; h < heads; h++) {
        const from = src + Math.floor(h / rep) * D;
        for (let d = 0; d < D; d++) yd[dst + h * D + d] = xd[from + d]!;
      }
    }
  }
  record(y, [x], (g) => {
    const dx = gradOf(x).data;
    const gd = g.data;
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < Tk; t++) {
        const src = (b * T + t) * W;
        const dst = (b * Tk + t) * Wq;
        for (let h = 0; h < heads; h++) {
          const to = src + Math.floor(h / rep) * D;
          for (let d = 0; d < D; d++) dx[to + d] += gd[dst + h * D + d]!;
        }
      }
    }
  });
  return y;
}

/** σ(x) = 1/(1 + e^(−x)) elementwise (Qwen2-MoE's shared-expert gate); d/dx = σ(1 − σ). */
export function sigmoid(x: Tensor): Tensor {
  const y = empty(x, x.shape);
  const [xd, yd] = [x.data, y.data];
  for (let i = 0; i < xd.length; i++) yd[i] = 1 / (1 + Math.exp(-xd[i]!));
  record(y, [x], (g) => {
    const dx = gradOf(x).data;
    const gd = g.data;
    for (let i = 0; i < yd.length; i++) dx[i] += gd[i]! * yd[i]! * (1 - yd[i]!);
  });
  return y;
}
