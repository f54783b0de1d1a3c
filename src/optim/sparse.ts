/**
 * The sparse expert step of ECSS (docs/design.md §7.4): only the experts a step
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

/**
 * One expert's update in place in its record payload: params [P] | m [P] | v
 * [P], params laid out as [w1 | w2 | b1 | b2]; `grad` [P] in the same layout.
 * Weight decay on the matrices (the first `at.decayed` values), none on the
 * biases: two fused calls.
 */
export function expertAdamW(payload: Float32Array, at: { decayed: number; P: number }, grad: Float32Array, lr: number, h: GroupHyper, step: number, gradScale = 1): void {
  const be = backendFor(payload);
  const P = at.P;
  for (const [o, n, wd] of [[0, at.decayed, h.weightDecay], [at.decayed, P - at.decayed, 0]] as const) {
    be.adamw(payload.subarray(o, o + n), grad.subarray(o, o + n), payload.subarray(P + o, P + o + n), payload.subarray(2 * P + o, 2 * P + o + n), n, lr, h.beta1, h.beta2, h.eps, wd, step, gradScale);
  }
}
