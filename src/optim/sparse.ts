/**
 * The sparse expert step of ECSS (PAPERS.md §5): only the experts a step
 * touched are updated, and each keeps its own step count for Adam's bias
 * correction.
 *
 * How this differs from dense AdamW (documented on purpose): dense AdamW
 * advances every expert every step — an untouched expert (zero gradient)
 * still has its moments decay (m ← β1·m, v ← β2·v), still moves by its old
 * momentum, and still gets weight decay. Under the sparse rule an untouched
 * expert is frozen: its weights, m, v and step count stay exactly as they
 * were until a batch routes a token to it, and its bias correction uses the
 * number of steps it actually took part in. That is what lets the storage
 * tier skip reading and writing untouched experts altogether.
 *
 * The same rule runs in RAM (AdamW with sparseExperts, over stacked [E, …]
 * rows) and over store records (here); both call the same fused kernel on
 * the same elements, so the two agree to rounding.
 */
import { backendFor } from "../backend/index.js";
import type { GroupHyper } from "./adamw.js";

/** An expert's gradient, one view per tensor (w1 [F·C], w2 [C·F], b1 [F], b2 [C]). */
export interface ExpertGrad {
  w1: Float32Array;
  w2: Float32Array;
  b1: Float32Array;
  b2: Float32Array;
}

/**
 * One expert's update in place in its record payload: params [P] | m [P] | v
 * [P], params laid out as [w1 | w2 | b1 | b2] at the offsets `at`; weight
 * decay on the matrices, none on the biases.
 */
export function expertAdamW(payload: Float32Array, at: { w1: number; w2: number; b1: number; b2: number; P: number }, g: ExpertGrad, lr: number, h: GroupHyper, step: number, gradScale = 1): void {
  const be = backendFor(payload);
  const P = at.P;
  for (const name of ["w1", "w2", "b1", "b2"] as const) {
    const grad = g[name];
    const n = grad.length;
    const o = at[name];
    const wd = name === "w1" || name === "w2" ? h.weightDecay : 0;
    be.adamw(payload.subarray(o, o + n), grad, payload.subarray(P + o, P + o + n), payload.subarray(2 * P + o, 2 * P + o + n), n, lr, h.beta1, h.beta2, h.eps, wd, step, gradScale);
  }
}
