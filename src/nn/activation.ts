/**
 * The FFN activations a model config may name. PanGu-α and Sigma use
 * FastGeLU; imported models bring their own (GPT-2: GeLU, tanh approximation).
 *
 *   fastgelu   x·σ(1.702·x)                               (PanGu-α; HF "quick_gelu")
 *   gelu       x·Φ(x), exact                              (HF "gelu")
 *   gelu_tanh  ½x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))    (GPT-2; HF "gelu_new")
 */
import * as ops from "../ops/index.js";
import { Tensor } from "../tensor/tensor.js";

export const ACTIVATIONS = ["fastgelu", "gelu", "gelu_tanh"] as const;
export type Activation = (typeof ACTIVATIONS)[number];

export function activate(x: Tensor, kind: Activation): Tensor {
  switch (kind) {
    case "fastgelu":
      return ops.fastGelu(x);
    case "gelu":
      return ops.gelu(x);
    case "gelu_tanh":
      return geluTanh(x);
  }
}

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

/**
 * GeLU's tanh approximation, composed from existing differentiable ops (there
 * is no kernel for it yet, so autograd needs no new rule): since
 * ½(1 + tanh(z)) = σ(2z), it is x·σ(2√(2/π)·(x + 0.044715·x³)), and σ(s) is
 * the first entry of softmax([s, 0]). Slower than a fused kernel — it only
 * serves imported models, whose function it must reproduce exactly.
 */
function geluTanh(x: Tensor): Tensor {
  const n = x.size;
  const cube = ops.mul(ops.mul(x, x), x);
  const s = ops.scale(ops.add(x, ops.scale(cube, 0.044715)), 2 * SQRT_2_OVER_PI);
  // [n,1]·[[1],[0]]ᵀ = [s, 0] per row; softmax; the first column is σ(s).
  const pair = ops.linear(ops.reshape(s, [n, 1]), Tensor.from([1, 0], [2, 1], x.dtype));
  const sigma = ops.linear(ops.softmax(pair), Tensor.from([1, 0], [1, 2], x.dtype));
  return ops.mul(x, ops.reshape(sigma, x.shape));
}
