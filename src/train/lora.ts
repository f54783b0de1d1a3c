/**
 * LoRA-style low-rank adapters on the dense part's linear layers, by
 * reparametrisation rather than by new layers.
 *
 * Each adapted weight W [out, in] (every 2-D dense ".weight": attention
 * projections and dense FFN layers; not the embeddings, norms, biases or
 * experts) is held as
 *
 *   W = W0 + s · B A        B [out, r] (starts at 0), A [r, in] (small random)
 *
 * with W0, the base weight, frozen and s = alpha / r (alpha = r here, so
 * s = 1). Before each forward, `apply` writes W0 + s·BA into the layer's own
 * weight tensor, so the model runs unchanged. The backward then gives
 * G = dL/dW in that tensor's gradient, and since W is linear in B A the
 * chain rule gives the adapters' gradients exactly:
 *
 *   dL/dB = s · G Aᵀ        dL/dA = s · Bᵀ G
 *
 * (`collectGrads`). The optimizer updates A and B only. The extra work per
 * step is a few out × in × r products, small beside the forward.
 *
 * Saving: the weight tensor always holds W0 + s·BA, so the checkpoint's
 * model.safetensors is the merged model that every command opens (serve,
 * eval, extract). For resuming, the checkpoint also holds lora.safetensors
 * beside it: W0, A and B of every adapted layer.
 */
import { gradOf } from "../autograd/tape.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import type { ParamInfo } from "../nn/module.js";
import { Tensor } from "../tensor/tensor.js";
import { Rng } from "../util/rng.js";

interface Adapted {
  name: string;
  weight: Tensor;
  base: Float32Array;
  A: Tensor;
  B: Tensor;
  out: number;
  in: number;
}

/** The dense part's linear weights: 2-D dense parameters named "….weight". */
export function loraTargets(model: PanguSigma): [string, ParamInfo][] {
  return [...model.namedParameters()].filter(([n, p]) => p.group === "dense" && p.tensor.ndim === 2 && n.endsWith(".weight"));
}

export class LoraAdapters {
  readonly layers: Adapted[];
  readonly scale: number;

  constructor(model: PanguSigma, readonly rank: number, seed: number) {
    const rng = new Rng((seed ^ 0x10ba) >>> 0);
    this.scale = 1; // alpha = rank
    this.layers = loraTargets(model).map(([name, p]) => {
      const [out, inp] = p.tensor.shape as [number, number];
      const A = Tensor.zeros([rank, inp], "float32");
      const std = 1 / Math.sqrt(inp);
      for (let i = 0; i < A.size; i++) A.data[i] = rng.normal() * std;
      return { name, weight: p.tensor, base: Float32Array.from(p.tensor.data as Float32Array), A, B: Tensor.zeros([out, rank], "float32"), out, in: inp };
    });
  }

  /** The adapters as optimizer parameters: "lora.<weight>.A" and ".B", dense group, no weight decay. */
  parameters(): Map<string, ParamInfo> {
    const m = new Map<string, ParamInfo>();
    for (const l of this.layers) {
      m.set(`lora.${l.name}.A`, { tensor: l.A, group: "dense", decay: false });
      m.set(`lora.${l.name}.B`, { tensor: l.B, group: "dense", decay: false });
    }
    return m;
  }

  /** Writes W0 + s·BA into every adapted weight. */
  apply(): void {
    const s = this.scale;
    const r = this.rank;
    for (const l of this.layers) {
      const W = l.weight.data as Float32Array;
      const A = l.A.data as Float32Array;
      const B = l.B.data as Float32Array;
      for (let o = 0; o < l.out; o++) {
        const row = o * l.in;
        for (let i = 0; i < l.in; i++) W[row + i] = l.base[row + i]!;
        for (let k = 0; k < r; k++) {
          const b = s * B[o * r + k]!;
          if (b === 0) continue;
          const a = k * l.in;
          for (let i = 0; i < l.in; i++) W[row + i] += b * A[a + i]!;
        }
      }
    }
  }

  /** From each adapted weight's gradient G, the adapters' gradients s·G Aᵀ (B) and s·Bᵀ G (A), added into them. */
  collectGrads(): void {
    const s = this.scale;
    const r = this.rank;
    for (const l of this.layers) {
      if (!l.weight.grad) continue;
      const G = l.weight.grad.data as Float32Array;
      const A = l.A.data as Float32Array;
      const B = l.B.data as Float32Array;
      const gA = gradOf(l.A).data as Float32Array;
      const gB = gradOf(l.B).data as Float32Array;
      for (let o = 0; o < l.out; o++) {
        const row = o * l.in;
        for (let k = 0; k < r; k++) {
          const a = k * l.in;
          let dot = 0;
          for (let i = 0; i < l.in; i++) dot += G[row + i]! * A[a + i]!;
          gB[o * r + k] += s * dot;
          const b = s * B[o * r + k]!;
          if (b !== 0) for (let i = 0; i < l.in; i++) gA[a + i] += b * G[row + i]!;
        }
      }
    }
  }

  /** lora.safetensors' tensors: base.<weight>, A.<weight>, B.<weight>. */
  tensors(): Map<string, { shape: number[]; data: Float32Array }> {
    const m = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const l of this.layers) {
      m.set(`base.${l.name}`, { shape: [l.out, l.in], data: l.base });
      m.set(`A.${l.name}`, { shape: [this.rank, l.in], data: l.A.data as Float32Array });
      m.set(`B.${l.name}`, { shape: [l.out, this.rank], data: l.B.data as Float32Array });
    }
    return m;
  }

  /** Restores W0, A and B from lora.safetensors' tensors; returns the name of the first one missing or misshapen, or null. */
  restore(get: (name: string) => { data: ArrayLike<number>; dtype: string } | undefined): string | null {
    for (const l of this.layers) {
      for (const [key, dst] of [[`base.${l.name}`, l.base], [`A.${l.name}`, l.A.data], [`B.${l.name}`, l.B.data]] as const) {
        const src = get(key);
        if (!src || src.dtype !== "F32" || src.data.length !== dst.length) return key;
        (dst as Float32Array).set(src.data);
      }
    }
    this.apply();
    return null;
  }
}
