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
 * rows) and over store records (here); the fused kernels they call compute
 * every element alike (adamwExperts is adamw over many experts at once), so
 * the two agree to rounding.
 */
import { backendFor } from "../backend/index.js";
import type { GroupHyper } from "./adamw.js";

/**
 * The touched experts of one layer, each updated in place in its record
 * payload: params [P] | m [P] | v [P], params laid out as [w1 | w2 | b1 |
 * b2]; grads[i] [P] in the same layout; steps[i] the expert's own step
 * count (already advanced). Weight decay on the matrices (the first
 * `at.decayed` values), none on the biases. One kernel call for them all
 * (per-expert calls cost a call and a split over the threads each).
 */
export function expertsAdamW(payloads: Float32Array[], grads: Float32Array[], steps: Int32Array, at: { decayed: number; P: number }, lr: number, h: GroupHyper, gradScale = 1): void {
  if (payloads.length === 0) return;
  backendFor(payloads[0]!).adamwExperts(payloads, grads, steps, at.P, payloads.length, at.decayed, lr, h.beta1, h.beta2, h.eps, h.weightDecay, gradScale);
}
