/** Neural-network ops: activations, LayerNorm, softmax, cross-entropy, embedding. */
import { gradOf, record } from "../autograd/tape.js";
import { Tensor } from "../tensor/tensor.js";
import { shapeStr } from "../tensor/shape.js";
import { Rng } from "../util/rng.js";
import { mul } from "./basic.js";
import { be, empty, expectShape, rowsOf, sameDtype } from "./util.js";

/** GeLU(x) = x·Φ(x), exact. */
export function gelu(x: Tensor): Tensor {
  const y = empty(x, x.shape);
  be(x).gelu(y.data, x.data, x.size);
  record(y, [x], (g) => be(x).geluBackward(gradOf(x).data, x.data, g.data, x.size));
  return y;
}

/** FastGeLU(x) = x·σ(1.702·x), PanGu-α's activation. */
export function fastGelu(x: Tensor): Tensor {
  const y = empty(x, x.shape);
  be(x).fastGelu(y.data, x.data, x.size);
  record(y, [x], (g) => be(x).fastGeluBackward(gradOf(x).data, x.data, g.data, x.size));
  return y;
}

/** Softmax over the last dimension. */
export function softmax(x: Tensor): Tensor {
  const cols = x.dim(-1);
  const rows = rowsOf(x);
  const y = empty(x, x.shape);
  be(x).softmax(y.data, x.data, rows, cols);
  record(y, [x], (g) => be(x).softmaxBackward(gradOf(x).data, y.data, g.data, rows, cols));
  return y;
}

/** LayerNorm over the last dimension: x [..., C]; gamma, beta [C]. */
export function layerNorm(x: Tensor, gamma: Tensor, beta: Tensor, eps = 1e-5): Tensor {
  sameDtype("layerNorm", x, gamma, beta);
  const C = x.dim(-1);
  expectShape("layerNorm", "gamma", gamma, [C]);
  expectShape("layerNorm", "beta", beta, [C]);
  const rows = rowsOf(x);
  const y = empty(x, x.shape);
  const mean = empty(x, [rows]);
  const rstd = empty(x, [rows]);
  be(x).layerNorm(y.data, mean.data, rstd.data, x.data, gamma.data, beta.data, rows, C, eps);
  record(y, [x, gamma, beta], (g) => {
    // The kernel writes all three gradients; send the ones nobody needs to scratch buffers.
    const dx = x.requiresGrad ? gradOf(x).data : empty(x, x.shape).data;
    const dgamma = gamma.requiresGrad ? gradOf(gamma).data : empty(x, [C]).data;
    const dbeta = beta.requiresGrad ? gradOf(beta).data : empty(x, [C]).data;
    be(x).layerNormBackward(dx, dgamma, dbeta, g.data, x.data, mean.data, rstd.data, gamma.data, rows, C);
  });
  return y;
}

/**
 * Mean cross-entropy of logits [R,V] against targets [R]; rows whose target is
 * ignoreIndex count neither in the sum nor in the mean. When every row is
 * ignored the loss is 0 (not NaN) and no gradient flows.
 */
export function crossEntropy(logits: Tensor, targets: Int32Array, ignoreIndex = -1): Tensor {
  const V = logits.dim(-1);
  const rows = rowsOf(logits);
  if (targets.length !== rows) throw new RangeError(`crossEntropy: ${targets.length} targets for ${rows} rows of logits ${shapeStr(logits.shape)}`);
  const k0 = be(logits);
  const loss = empty(logits, [rows]);
  const lse = empty(logits, [rows]);
  k0.crossEntropy(loss.data, lse.data, logits.data, targets, rows, V, ignoreIndex);
  let count = 0;
  let total = 0;
  for (let r = 0; r < rows; r++) {
    if (targets[r] !== ignoreIndex) {
      count++;
      total += loss.data[r]!;
    }
  }
  const y = Tensor.zeros([1], logits.dtype);
  y.data[0] = count > 0 ? total / count : 0;
  record(y, [logits], (g) => {
    if (count === 0) return;
    const dloss = empty(logits, [rows]);
    dloss.data.fill(g.data[0]! / count);
    be(logits).crossEntropyBackward(gradOf(logits).data, logits.data, lse.data, targets, dloss.data, rows, V, ignoreIndex);
  });
  return y;
}

/**
 * Mean cross-entropy of logits [R,V] against target distributions p [R,V]
 * (each row sums to 1): the mean over rows of −Σ_v p_v·log softmax(logits)_v
 * = lse − Σ_v p_v·logits_v. With p a teacher's softmax it is the distillation
 * loss (its gradient is the KL divergence's: softmax(logits) − p per row).
 * p is a plain array (a teacher's output needs no gradient).
 */
export function softCrossEntropy(logits: Tensor, p: Float32Array | Float64Array): Tensor {
  const V = logits.dim(-1);
  const rows = rowsOf(logits);
  if (p.length !== rows * V) throw new RangeError(`softCrossEntropy: ${p.length} target probabilities for ${rows} rows of logits ${shapeStr(logits.shape)}`);
  const k0 = be(logits);
  // The log-sum-exp of each row, from the fused cross-entropy kernel (its per-row loss against target 0 is not used).
  const lse = empty(logits, [rows]);
  k0.crossEntropy(empty(logits, [rows]).data, lse.data, logits.data, new Int32Array(rows), rows, V, -1);
  const z = logits.data;
  let total = 0;
  for (let r = 0; r < rows; r++) {
    let dot = 0;
    for (let v = r * V; v < (r + 1) * V; v++) dot += p[v]! * z[v]!;
    total += lse.data[r]! - dot;
  }
  const y = Tensor.zeros([1], logits.dtype);
  y.data[0] = rows > 0 ? total / rows : 0;
  record(y, [logits], (g) => {
    if (rows === 0) return;
    const q = empty(logits, logits.shape);
    be(logits).softmax(q.data, z, rows, V);
    const d = gradOf(logits).data;
    const f = g.data[0]! / rows;
    for (let i = 0; i < rows * V; i++) d[i]! += f * (q.data[i]! - p[i]!);
  });
  return y;
}

/**
 * Rows of table [rows, C] picked by ids; the result has shape [...shape, C]
 * (shape defaults to [ids.length]).
 */
export function embedding(table: Tensor, ids: Int32Array, shape: readonly number[] = [ids.length]): Tensor {
  const C = table.dim(-1);
  const n = ids.length;
  const y = empty(table, [...shape, C]);
  if (y.size !== n * C) throw new RangeError(`embedding: shape ${shapeStr(shape)} does not hold ${n} ids`);
  be(table).embedding(y.data, table.data, ids, n, C);
  record(y, [table], (g) => be(table).embeddingBackward(gradOf(table).data, g.data, ids, n, C));
  return y;
}

/** log Σ exp over the last dimension: x [..., N] → [rows]. A plain loop (router-sized inputs). */
export function logsumexp(x: Tensor): Tensor {
  const N = x.dim(-1);
  const rows = rowsOf(x);
  const d = x.data;
  const y = empty(x, [rows]);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let j = 0; j < N; j++) m = Math.max(m, d[r * N + j]!);
    let s = 0;
    for (let j = 0; j < N; j++) s += Math.exp(d[r * N + j]! - m);
    y.data[r] = m + Math.log(s);
  }
  record(y, [x], (g) => {
    const gx = gradOf(x).data;
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < N; j++) gx[r * N + j] += g.data[r]! * Math.exp(d[r * N + j]! - y.data[r]!);
    }
  });
  return y;
}

/**
 * Inverted dropout: each element is zeroed with probability p and the others
 * are scaled by 1/(1 − p), so the expected value is unchanged. The mask is a
 * function of `seed` alone, so a recomputed forward (or a resumed run) draws
 * the same mask. The gradient is the product rule's: dy ⊙ mask.
 *
 * `skip`: x is a slice of a larger tensor that starts `skip` elements in (a
 * data-parallel rank's rows of a batch): the mask is that slice of the larger
 * tensor's mask, so every split of a batch drops the same elements.
 */
export function dropout(x: Tensor, p: number, seed: number, skip = 0): Tensor {
  if (!(p >= 0 && p < 1)) throw new RangeError(`dropout: p = ${p} is outside [0, 1)`);
  if (p === 0) return x;
  const mask = empty(x, x.shape);
  const m = mask.data;
  const rng = new Rng(seed);
  for (let i = 0; i < skip; i++) rng.nextU32();
  const cut = p * 2 ** 32, keep = 1 / (1 - p);
  for (let i = 0; i < m.length; i++) m[i] = rng.nextU32() < cut ? 0 : keep;
  return mul(x, mask);
}
