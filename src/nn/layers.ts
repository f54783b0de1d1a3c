/** The basic layers: Linear, LayerNorm, the FastGeLU FFN. */
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

/** The dense FFN of every PanGu block: fc2(FastGeLU(fc1(x))); imported models may name another activation. */
export class FeedForward extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;
  constructor(width: number, hidden: number, init: InitOptions, outStd?: number, readonly activation: Activation = "fastgelu") {
    super();
    this.fc1 = this.child("fc1", new Linear(width, hidden, init));
    this.fc2 = this.child("fc2", new Linear(hidden, width, { ...init, std: outStd ?? init.std }));
  }
  forward(x: Tensor): Tensor {
    return this.fc2.forward(activate(this.fc1.forward(x), this.activation));
  }
}
