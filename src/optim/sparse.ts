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

/**
 * One expert's update over its record payload: params [P] | m [P] | v [P],
 * params laid out as [w1 | w2 | b1 | b2], the first `decayed` elements the
 * matrices (weight decay) and the rest the biases (none). grad: [P], same layout.
 */
export function expertAdamW(payload: Float32Array, grad: Float32Array, P: number, decayed: number, lr: number, h: GroupHyper, step: number): void {
  const be = backendFor(payload);
  const p = payload.subarray(0, P);
  const m = payload.subarray(P, 2 * P);
  const v = payload.subarray(2 * P, 3 * P);
  be.adamw(p.subarray(0, decayed), grad.subarray(0, decayed), m.subarray(0, decayed), v.subarray(0, decayed), decayed, lr, h.beta1, h.beta2, h.eps, h.weightDecay, step);
  be.adamw(p.subarray(decayed), grad.subarray(decayed, P), m.subarray(decayed), v.subarray(decayed), P - decayed, lr, h.beta1, h.beta2, h.eps, 0, step);
}
