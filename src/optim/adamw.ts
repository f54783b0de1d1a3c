/**
 * AdamW with PanGu-Σ's hybrid hyper-parameters (docs/design.md §7.1): two parameter
 * groups, dense and expert, sharing β = (0.8, 0.95) but with ε = 1e-8 for dense
 * parameters and ε = 1e-20 for expert parameters (their gradients are
 * smaller). Moments stay in float32 (float64 for float64 parameters). One fused
 * kernel call per parameter tensor.
 */
import { backendFor } from "../backend/index.js";
import type { ParamInfo, ParamGroup } from "../nn/module.js";
import { Tensor } from "../tensor/tensor.js";

export interface GroupHyper {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export interface AdamWOptions {
  dense?: Partial<GroupHyper>;
  expert?: Partial<GroupHyper>;
  /**
   * ECSS's sparse rule for stacked expert parameters (src/optim/sparse.ts):
   * update only the experts a step touched, each with its own step count.
   */
  sparseExperts?: boolean;
}

/** Per MoE layer (module path, e.g. "blocks.1.moe"): 1 for each expert the step routed tokens to. */
export type TouchedExperts = Map<string, Uint8Array>;

/** PanGu-Σ's defaults. Weight decay 0.1 as in GPT-3-style training [ours: the sources do not give it]. */
export const HYBRID_DEFAULTS: Record<ParamGroup, GroupHyper> = {
  dense: { beta1: 0.8, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 },
  expert: { beta1: 0.8, beta2: 0.95, eps: 1e-20, weightDecay: 0.1 },
};

interface Slot {
  name: string;
  info: ParamInfo;
  m: Tensor;
  v: Tensor;
}

export class AdamW {
  readonly hyper: Record<ParamGroup, GroupHyper>;
  private readonly slots: Slot[];
  /** Steps taken (bias correction uses it). */
  step = 0;
  readonly sparseExperts: boolean;
  /** Sparse rule: each expert's own step count, per MoE layer path. */
  readonly expertSteps = new Map<string, Int32Array>();

  constructor(params: Map<string, ParamInfo>, opts: AdamWOptions = {}) {
    this.hyper = {
      dense: { ...HYBRID_DEFAULTS.dense, ...opts.dense },
      expert: { ...HYBRID_DEFAULTS.expert, ...opts.expert },
    };
    this.slots = [...params].map(([name, info]) => ({
      name,
      info,
      m: Tensor.zeros(info.tensor.shape, info.tensor.dtype),
      v: Tensor.zeros(info.tensor.shape, info.tensor.dtype),
    }));
    this.sparseExperts = opts.sparseExperts ?? false;
    if (this.sparseExperts) {
      for (const s of this.slots) if (s.info.group === "expert") this.expertSteps.set(layerPath(s.name), new Int32Array(s.info.tensor.dim(0)));
    }
  }

  /**
   * Applies one update with learning rate lr to every parameter that has a
   * gradient. With sparseExperts, `touched` says which experts of each MoE
   * layer to update (the others stay frozen, moments and step count included).
   * gradScale multiplies every gradient (gradient clipping: clipScale).
   */
  update(lr: number, touched?: TouchedExperts, gradScale = 1): void {
    this.step++;
    if (this.sparseExperts) {
      if (!touched) throw new Error("AdamW.update: the sparse expert rule needs the touched experts of the step");
      for (const [path, steps] of this.expertSteps) {
        const t = touched.get(path);
        if (t) for (let e = 0; e < steps.length; e++) if (t[e]) steps[e]++;
      }
    }
    for (const s of this.slots) {
      const p = s.info.tensor;
      if (!p.grad) continue;
      const h = this.hyper[s.info.group];
      const wd = s.info.decay ? h.weightDecay : 0;
      const be = backendFor(p.data);
      if (this.sparseExperts && s.info.group === "expert") {
        const path = layerPath(s.name);
        const t = touched!.get(path);
        const steps = this.expertSteps.get(path)!;
        const E = p.dim(0);
        const n = p.size / E;
        if (!t) continue;
        for (let e = 0; e < E; e++) {
          if (!t[e]) continue;
          const [a, b] = [e * n, (e + 1) * n];
          be.adamw(p.data.subarray(a, b), p.grad.data.subarray(a, b), s.m.data.subarray(a, b), s.v.data.subarray(a, b), n, lr, h.beta1, h.beta2, h.eps, wd, steps[e]!, gradScale);
        }
        continue;
      }
      be.adamw(p.data, p.grad.data, s.m.data, s.v.data, p.size, lr, h.beta1, h.beta2, h.eps, wd, this.step, gradScale);
    }
  }

  /** The moments by parameter name (for checkpoints). */
  moments(): Map<string, { m: Tensor; v: Tensor }> {
    return new Map(this.slots.map((s) => [s.name, { m: s.m, v: s.v }]));
  }
}

/** "blocks.1.moe.w1" → "blocks.1.moe": the MoE layer an expert tensor belongs to. */
export const layerPath = (name: string): string => name.slice(0, name.lastIndexOf("."));

/** Σ g² over the parameters' gradients (the square of their global L2 norm). */
export function gradSquares(params: Tensor[]): number {
  let sq = 0;
  for (const p of params) if (p.grad) sq += backendFor(p.grad.data).sumSquares(p.grad.data, p.grad.size);
  return sq;
}

/**
 * Global-norm clipping as a factor: the gradients times clipScale(norm, maxNorm)
 * have norm at most maxNorm. The optimizer applies it inside its fused step
 * (update's gradScale), so the gradients are not rewritten in a pass of their own.
 */
export const clipScale = (norm: number, maxNorm: number): number => (norm > maxNorm && norm > 0 ? maxNorm / norm : 1);
