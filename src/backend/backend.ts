/**
 * The Backend contract: every kernel Sigma runs, in one typed list.
 *
 * Two implementations exist:
 *  - `reference` (src/backend/reference): plain TypeScript loops. The readable
 *    definition of each kernel, the fallback when the addon is missing, and the
 *    oracle the native kernels are tested against. Accepts Float32Array and
 *    Float64Array (gradient checks run in float64).
 *  - `native` (src/backend/native): the Node-API C++ addon. Float32 only;
 *    AVX2/FMA paths chosen at run time, threads over the machine's cores.
 *
 * Conventions (every kernel follows them):
 *  - Flat signatures: outputs first, then inputs, then sizes and options.
 *  - All buffers are dense and row-major; the comment on each argument gives
 *    its layout in the dimension alphabet below.
 *  - Kernels never allocate and never resize their arguments.
 *  - Forward kernels OVERWRITE their outputs unless they take `accumulate`.
 *  - Backward kernels ADD INTO their gradient outputs (`dx += …`), so that a
 *    tensor used twice collects both contributions. The caller zeroes a
 *    gradient buffer before the first contribution.
 *  - Index buffers are Int32Array. An index out of range is an error (the
 *    native layer throws a RangeError naming the argument), never a crash.
 *
 * Dimension alphabet:
 *   B batch, T time (Tq queries, Tk keys), C model width, H heads, D head size,
 *   F FFN width, V vocabulary, E experts, K experts per token (or the inner
 *   dimension of a matrix product), M/N/K matrix product sizes: op(A) is [M,K],
 *   op(B) is [K,N], C is [M,N]. R rows (tokens or token-expert assignments).
 */

/** A float buffer: float32 everywhere; float64 on the reference backend for gradient checks. */
export type Buf = Float32Array | Float64Array;
/** An index buffer. */
export type Idx = Int32Array;

/**
 * The precision of a matrix product's inputs: "f32", or "bf16" — each input
 * element rounded to bfloat16 (round to nearest even), the products summed in
 * f32, the result f32 (the *Bf16 kernels below). Training in bf16 uses it for
 * the linear layers' and experts' products; everything else stays f32.
 */
export type Precision = "f32" | "bf16";
export const PRECISIONS = ["f32", "bf16"] as const satisfies readonly Precision[];

export interface Backend {
  /** "reference" or "native". */
  readonly name: string;
  /** Number of threads the kernels use (1 for the reference backend). */
  getThreads(): number;
  /** Sets the number of kernel threads (>= 1). The reference backend ignores it. */
  setThreads(n: number): void;

  // ---------------------------------------------------------------- matrix multiply

  /**
   * C[M,N] = op(A)·op(B)  (or C += … when accumulate).
   * a: [M,K], or [K,M] when transA.  b: [K,N], or [N,K] when transB.  c: [M,N].
   */
  matmul(c: Buf, a: Buf, b: Buf, M: number, N: number, K: number, transA: boolean, transB: boolean, accumulate: boolean): void;

  /**
   * `batch` independent matmuls over contiguous slabs:
   * c: [batch,M,N], a: [batch,M,K] (or [batch,K,M]), b: [batch,K,N] (or [batch,N,K]).
   */
  bmm(c: Buf, a: Buf, b: Buf, batch: number, M: number, N: number, K: number, transA: boolean, transB: boolean, accumulate: boolean): void;

  /**
   * Grouped matmul over stacked expert weights, rows of x sorted by expert.
   * offsets: [E+1], offsets[0] = 0, non-decreasing; expert e owns rows offsets[e]..offsets[e+1]-1; R = offsets[E].
   * x: [R,K]; y: [R,N].
   * transW: w is [E,N,K] ("[E, out, in]") and y_e = x_e · W[e]ᵀ;  otherwise w is [E,K,N] and y_e = x_e · W[e].
   * accumulate: y += … instead of y = ….
   * (The backward of y = x·Wᵀ with respect to x is this kernel with transW = false on the same w.)
   * w may also be E separate buffers of N·K each (W[e] = w[e]): experts that
   * live apart, e.g. in an expert store's records, need no stacking copy.
   */
  groupedMatmul(y: Buf, x: Buf, w: Buf | readonly Buf[], offsets: Idx, E: number, N: number, K: number, transW: boolean, accumulate: boolean): void;

  /**
   * Weight gradient of groupedMatmul. dy: [R,N], x: [R,K].
   * transW: dw is [E,N,K] and dw[e] (+)= dy_eᵀ · x_e;  otherwise dw is [E,K,N] and dw[e] (+)= x_eᵀ · dy_e.
   * An expert with no rows gets 0 (or keeps its value when accumulate).
   * dw may also be E separate buffers of N·K each, as w in groupedMatmul.
   */
  groupedMatmulWeightGrad(dw: Buf | readonly Buf[], dy: Buf, x: Buf, offsets: Idx, E: number, N: number, K: number, transW: boolean, accumulate: boolean): void;
  /**
   * groupedMatmulWeightGrad that also returns Σ dw² over every expert's
   * gradient as it stands after the call (float32 only). The native kernel
   * sums the squares as it writes them, so that global-norm clipping of
   * freshly written expert gradients (ECSS) needs no second pass over them.
   */
  groupedMatmulWeightGradSquares(dw: Buf | readonly Buf[], dy: Buf, x: Buf, offsets: Idx, E: number, N: number, K: number, transW: boolean, accumulate: boolean): number;

  // ---------------------------------------------------------------- bf16-input matrix multiply

  /**
   * matmul with every element of a and b first rounded to bf16 (nearest, ties
   * to even; NaN stays NaN; f32 subnormals become zero), the exact products of
   * the rounded values summed in f32. Same arguments and layouts as matmul;
   * a, b and c stay float32 in memory. The reference backend
   * (src/backend/reference/matmul-bf16.ts) is the definition.
   */
  matmulBf16(c: Buf, a: Buf, b: Buf, M: number, N: number, K: number, transA: boolean, transB: boolean, accumulate: boolean): void;
  /** groupedMatmul with bf16-rounded inputs (as matmulBf16). */
  groupedMatmulBf16(y: Buf, x: Buf, w: Buf | readonly Buf[], offsets: Idx, E: number, N: number, K: number, transW: boolean, accumulate: boolean): void;
  /** groupedMatmulWeightGrad with bf16-rounded inputs (dy and x; as matmulBf16). */
  groupedMatmulWeightGradBf16(dw: Buf | readonly Buf[], dy: Buf, x: Buf, offsets: Idx, E: number, N: number, K: number, transW: boolean, accumulate: boolean): void;

  // ---------------------------------------------------------------- elementwise

  /** y[r,c] = x[r,c] + bias[c].  y, x: [rows,cols]; bias: [cols]. y may be x. */
  addBias(y: Buf, x: Buf, bias: Buf, rows: number, cols: number): void;
  /** dbias[c] += Σ_r dy[r,c]. */
  addBiasBackward(dbias: Buf, dy: Buf, rows: number, cols: number): void;
  /** out = a + b, n elements. out may alias a or b. */
  add(out: Buf, a: Buf, b: Buf, n: number): void;
  /** out = a * b, n elements. out may alias a or b. */
  mul(out: Buf, a: Buf, b: Buf, n: number): void;
  /** out = alpha * x, n elements. out may be x. */
  scale(out: Buf, x: Buf, alpha: number, n: number): void;
  /** y += alpha * x, n elements. */
  axpy(y: Buf, x: Buf, alpha: number, n: number): void;
  /** Σ x[i]², accumulated in float64. */
  sumSquares(x: Buf, n: number): number;

  /** y = GeLU(x) = x·Φ(x) (exact, with erf). */
  gelu(y: Buf, x: Buf, n: number): void;
  /** dx += dy · GeLU'(x). */
  geluBackward(dx: Buf, x: Buf, dy: Buf, n: number): void;
  /** y = FastGeLU(x) = x·σ(1.702·x) (PanGu-α's FastGelu). */
  fastGelu(y: Buf, x: Buf, n: number): void;
  /** dx += dy · FastGeLU'(x). */
  fastGeluBackward(dx: Buf, x: Buf, dy: Buf, n: number): void;
  /** y = SiLU(g)·u, SiLU(g) = g·σ(g): SwiGLU's gated product (Llama-style FFNs). */
  swiglu(y: Buf, g: Buf, u: Buf, n: number): void;
  /** dg += dy·u·SiLU'(g), du += dy·SiLU(g). */
  swigluBackward(dg: Buf, du: Buf, dy: Buf, g: Buf, u: Buf, n: number): void;

  // ---------------------------------------------------------------- normalisation, softmax, loss

  /**
   * LayerNorm over the last dimension.
   * y, x: [rows,C]; gamma, beta: [C]; mean, rstd: [rows] (saved for the backward).
   * y = (x - mean)·rstd·gamma + beta,  rstd = 1/sqrt(var + eps), var the biased variance.
   */
  layerNorm(y: Buf, mean: Buf, rstd: Buf, x: Buf, gamma: Buf, beta: Buf, rows: number, C: number, eps: number): void;
  /** dx += …, dgamma += …, dbeta += …, from the saved mean and rstd. */
  layerNormBackward(dx: Buf, dgamma: Buf, dbeta: Buf, dy: Buf, x: Buf, mean: Buf, rstd: Buf, gamma: Buf, rows: number, C: number): void;
  /**
   * RMSNorm over the last dimension (no mean, no bias).
   * y, x: [rows,C]; gamma: [C]; rstd: [rows] (saved for the backward).
   * y = x·rstd·gamma,  rstd = 1/sqrt(mean(x²) + eps).
   */
  rmsNorm(y: Buf, rstd: Buf, x: Buf, gamma: Buf, rows: number, C: number, eps: number): void;
  /** dx += rstd·(g − x̂·mean(g·x̂)) with g = dy·gamma, x̂ = x·rstd; dgamma += Σ_rows dy·x̂. */
  rmsNormBackward(dx: Buf, dgamma: Buf, dy: Buf, x: Buf, rstd: Buf, gamma: Buf, rows: number, C: number): void;

  /** Row softmax. y, x: [rows,cols]. y may be x. */
  softmax(y: Buf, x: Buf, rows: number, cols: number): void;
  /** dx += y ⊙ (dy − Σ_c dy·y), per row. */
  softmaxBackward(dx: Buf, y: Buf, dy: Buf, rows: number, cols: number): void;

  /**
   * Fused softmax + cross-entropy, one loss per row.
   * logits: [rows,V]; targets: [rows]; loss, lse: [rows].
   * lse[r] = log Σ_v exp(logits[r,v]); loss[r] = lse[r] − logits[r,targets[r]];
   * a row whose target equals ignoreIndex gets loss 0 (its lse is still written).
   * Targets other than ignoreIndex must lie in [0,V).
   */
  crossEntropy(loss: Buf, lse: Buf, logits: Buf, targets: Idx, rows: number, V: number, ignoreIndex: number): void;
  /** dlogits[r,v] += dloss[r]·(softmax(logits)[r,v] − [v = targets[r]]); ignored rows get nothing. */
  crossEntropyBackward(dlogits: Buf, logits: Buf, lse: Buf, targets: Idx, dloss: Buf, rows: number, V: number, ignoreIndex: number): void;

  // ---------------------------------------------------------------- embedding

  /** out[i,:] = table[ids[i],:].  table: [rowsOfTable,C] (rowsOfTable = table.length / C); ids: [n]; out: [n,C]. */
  embedding(out: Buf, table: Buf, ids: Idx, n: number, C: number): void;
  /** dtable[ids[i],:] += dout[i,:]  (scatter-add; repeated ids accumulate). */
  embeddingBackward(dtable: Buf, dout: Buf, ids: Idx, n: number, C: number): void;

  // ---------------------------------------------------------------- attention

  /**
   * Causal multi-head attention, fused (no [Tq,Tk] score matrix is stored).
   * q, out: [B,Tq,H,D]; k, v: [B,kvCap,H,D] of which the first Tk positions are used (Tq <= Tk <= kvCap);
   * lse: [B,H,Tq], the log-sum-exp of each query's scaled scores, saved for the backward.
   * Query i sits at absolute position Tk − Tq + i and attends to keys 0..Tk − Tq + i.
   * Training uses Tq = Tk = kvCap = T; decoding with a KV cache uses Tq = new tokens, Tk = cached + new, kvCap = cache size.
   * scores = scale · q·kᵀ (scale is usually 1/sqrt(D)).
   * kvHeads G (given only for grouped-query attention; G divides H): k, v are [B,kvCap,G,D] and query head h
   * reads key/value head ⌊h/(H/G)⌋ in place. Forward only: attentionBackward takes G = H.
   */
  attention(out: Buf, lse: Buf, q: Buf, k: Buf, v: Buf, B: number, Tq: number, Tk: number, H: number, D: number, kvCap: number, scale: number, kvHeads?: number): void;
  /**
   * attention over an f16 cache: k, v hold f16 bits (Uint16Array) in attention's layout, G = kvHeads key/value heads
   * (H without grouped-query attention). Each output is attention's over the same values as f32, bit for bit on the native paths.
   */
  attentionHalf(out: Buf, lse: Buf, q: Buf, k: Uint16Array, v: Uint16Array, B: number, Tq: number, Tk: number, H: number, D: number, kvCap: number, scale: number, kvHeads: number): void;
  /** dst[i] = src[i] rounded to f16 (nearest, ties to even; NaN stays NaN), as bits, i < n. */
  toHalf(dst: Uint16Array, src: Buf, n: number): void;
  /** dst[i] = the value of the f16 bits src[i], i < n (exact). */
  fromHalf(dst: Buf, src: Uint16Array, n: number): void;
  /** dq += …, dk += …, dv += … (dk, dv: [B,kvCap,H,D], only the first Tk positions are touched). Uses out and lse from the forward. */
  attentionBackward(dq: Buf, dk: Buf, dv: Buf, dout: Buf, q: Buf, k: Buf, v: Buf, out: Buf, lse: Buf, B: number, Tq: number, Tk: number, H: number, D: number, kvCap: number, scale: number): void;

  // ---------------------------------------------------------------- MoE primitives

  /**
   * Stable permutation of n assignments by expert id (histogram + prefix sum).
   * expertIds: [n] in [0,E); order: [n], order[p] = the assignment at sorted position p
   * (assignments of expert 0 first, in their original order, then expert 1, …);
   * offsets: [E+1], offsets[e] = first sorted position of expert e, offsets[E] = n.
   */
  permuteByExpert(order: Idx, offsets: Idx, expertIds: Idx, n: number, E: number): void;
  /** out[i,:] = x[idx[i],:].  x: [rowsOfX,C] (rowsOfX = x.length / C); idx: [n]; out: [n,C]. */
  gatherRows(out: Buf, x: Buf, idx: Idx, n: number, C: number): void;
  /** out[idx[i],:] += x[i,:]  (the backward of gatherRows). */
  scatterAddRows(out: Buf, x: Buf, idx: Idx, n: number, C: number): void;
  /**
   * Weighted combine of expert outputs back to tokens: y[idx[i],:] += w[i]·x[i,:].
   * x: [n,C] (expert outputs in sorted order); idx: [n] token of each row; w: [n]; y: [rowsOfY,C].
   */
  combine(y: Buf, x: Buf, idx: Idx, w: Buf, n: number, C: number): void;
  /** dx[i,:] += w[i]·dy[idx[i],:];  dw[i] += dy[idx[i],:]·x[i,:]. */
  combineBackward(dx: Buf, dw: Buf, dy: Buf, x: Buf, idx: Idx, w: Buf, n: number, C: number): void;

  // ---------------------------------------------------------------- optimizer

  /**
   * One fused AdamW step over n parameters, in place (decoupled weight decay),
   * on the gradient scaled by gradScale (global-norm clipping folded in: no
   * separate pass over the gradients):
   *   g = gradScale·grad
   *   m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
   *   m̂ = m / (1−β1^step);  v̂ = v / (1−β2^step)
   *   p = p − lr·(m̂ / (sqrt(v̂) + eps) + weightDecay·p)
   * step counts from 1.
   */
  adamw(param: Buf, grad: Buf, m: Buf, v: Buf, n: number, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, step: number, gradScale: number): void;
  /**
   * adamw for E experts in one call (ECSS's sparse step over the touched
   * experts): payloads[e] holds expert e's params [P] | m [P] | v [P] (a
   * store record's layout), grads[e] its gradient [P], steps[e] its own
   * step count; weightDecay on the first `decayed` values, none on the rest
   * (the biases). Every value comes out exactly as adamw's on the same
   * inputs; the work is split over the threads once for all the experts.
   */
  adamwExperts(payloads: readonly Buf[], grads: readonly Buf[], steps: Idx, P: number, E: number, decayed: number, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, gradScale: number): void;
}

/** The kernel names, in the order above. The native loader checks the addon exports each one. */
export const KERNEL_NAMES = [
  "matmul", "bmm", "groupedMatmul", "groupedMatmulWeightGrad", "groupedMatmulWeightGradSquares",
  "matmulBf16", "groupedMatmulBf16", "groupedMatmulWeightGradBf16",
  "addBias", "addBiasBackward", "add", "mul", "scale", "axpy", "sumSquares",
  "gelu", "geluBackward", "fastGelu", "fastGeluBackward", "swiglu", "swigluBackward",
  "layerNorm", "layerNormBackward", "rmsNorm", "rmsNormBackward", "softmax", "softmaxBackward", "crossEntropy", "crossEntropyBackward",
  "embedding", "embeddingBackward",
  "attention", "attentionBackward", "attentionHalf", "toHalf", "fromHalf",
  "permuteByExpert", "gatherRows", "scatterAddRows", "combine", "combineBackward",
  "adamw", "adamwExperts",
] as const satisfies readonly (keyof Backend)[];

export type KernelName = (typeof KERNEL_NAMES)[number];
