/** The basic layers: Linear, LayerNorm, RMSNorm, the FFN (FastGeLU-style or SwiGLU). */
import * as ops from "../ops/index.js";
import { storedLinear } from "../ops/stored.js";
import type { StoredMatrix } from "../backend/quant.js";
import { activate, type Activation } from "./activation.js";
import { Tensor } from "../tensor/tensor.js";
import type { DType } from "../tensor/dtype.js";
import type { Rng } from "../util/rng.js";
import { Module } from "./module.js";

export interface InitOptions {
  rng: Rng;
  dtype?: DType;
  /** Std of the normal init of weight matrices (GPT-2 / PanGu-α use 0.02). */
  std?: number;
}

/** y = x·Wᵀ + b with W [out, in]. */
export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  /** Inference only: the weight in a stored format (src/models/quantize.ts); forward then reads it instead of `weight`. */
  stored: StoredMatrix | null = null;
  constructor(readonly inFeatures: number, readonly outFeatures: number, init: InitOptions, bias = true) {
    super();
    const dtype = init.dtype ?? "float32";
    this.weight = this.param("weight", Tensor.randn([outFeatures, inFeatures], init.rng, init.std ?? 0.02, dtype));
    this.bias = bias ? this.param("bias", Tensor.zeros([outFeatures], dtype)) : null;
  }
  forward(x: Tensor): Tensor {
    if (this.stored) return storedLinear(x, this.stored, this.bias);
    return ops.linear(x, this.weight, this.bias, this.precision);
  }
}

export class LayerNorm extends Module {
  readonly gamma: Tensor;
  readonly beta: Tensor;
  constructor(readonly width: number, readonly eps: number, dtype: DType = "float32") {
    super();
    this.gamma = this.param("gamma", Tensor.full([width], 1, dtype), { decay: false });
    this.beta = this.param("beta", Tensor.zeros([width], dtype), { decay: false });
  }
  forward(x: Tensor): Tensor {
    return ops.layerNorm(x, this.gamma, this.beta, this.eps);
  }
}

/**
 * RMSNorm (Llama, Qwen, Pangu Pro MoE): x / √(mean(x²) + eps) ⊙ γ. Only a
 * gain, no bias; γ starts at 1.
 */
export class RMSNorm extends Module {
  readonly gamma: Tensor;
  constructor(readonly width: number, readonly eps: number, dtype: DType = "float32") {
    super();
    this.gamma = this.param("gamma", Tensor.full([width], 1, dtype), { decay: false });
  }
  forward(x: Tensor): Tensor {
    return ops.rmsNorm(x, this.gamma, this.eps);
  }
}

export const NORMS = ["layernorm", "rmsnorm"] as const;
export type NormKind = (typeof NORMS)[number];
export type Norm = LayerNorm | RMSNorm;

/** The norm a model config names. */
export function makeNorm(kind: NormKind, width: number, eps: number, dtype: DType = "float32"): Norm {
  return kind === "rmsnorm" ? new RMSNorm(width, eps, dtype) : new LayerNorm(width, eps, dtype);
}

export const FFN_KINDS = ["gelu", "swiglu"] as const;
/**
 * "gelu": fc2(act(fc1(x))), the PanGu FFN with the model's activation
 * (FastGeLU by default); "swiglu": fc2(SiLU(fc1(x)) ⊙ fc3(x)) — fc1 is the
 * gate, fc3 the up and fc2 the down projection (HF gate_proj, up_proj,
 * down_proj; Mixtral's w1, w3, w2).
 */
export type FfnKind = (typeof FFN_KINDS)[number];

export interface FfnOptions {
  activation?: Activation;
  kind?: FfnKind;
  /** Biases on the FFN's projections (PanGu, GPT-2); Llama-style FFNs have none. */
  bias?: boolean;
}

/** The dense FFN of every block (see FfnKind); defaults are PanGu's: FastGeLU, biases. */
export class FeedForward extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;
  /** SwiGLU's up projection; null for the GeLU-style FFN. */
  readonly fc3: Linear | null;
  readonly activation: Activation;
  readonly kind: FfnKind;
  constructor(width: number, hidden: number, init: InitOptions, outStd?: number, opts: Activation | FfnOptions = {}) {
    super();
    const o = typeof opts === "string" ? { activation: opts } : opts;
    this.activation = o.activation ?? "fastgelu";
    this.kind = o.kind ?? "gelu";
    const bias = o.bias ?? true;
    this.fc1 = this.child("fc1", new Linear(width, hidden, init, bias));
    this.fc2 = this.child("fc2", new Linear(hidden, width, { ...init, std: outStd ?? init.std }, bias));
    this.fc3 = this.kind === "swiglu" ? this.child("fc3", new Linear(width, hidden, init, bias)) : null;
  }
  forward(x: Tensor): Tensor {
    if (this.fc3) return this.fc2.forward(ops.swiglu(this.fc1.forward(x), this.fc3.forward(x)));
    return this.fc2.forward(activate(this.fc1.forward(x), this.activation));
  }
}
