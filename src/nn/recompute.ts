/**
 * Activation recomputation (gradient checkpointing): run a piece of the
 * forward pass without recording it — so none of its intermediate tensors are
 * kept — and run it again, recorded, when the backward pass reaches it.
 * Memory falls from every intermediate of every block to one block's worth
 * plus the block inputs; compute rises by one forward of the piece.
 *
 * The replay must compute exactly what the first pass did; Sigma's kernels
 * are deterministic for a fixed thread count, and routing is a function of
 * the replayed values, so it is.
 */
import { Tensor } from "../tensor/tensor.js";
import * as tape from "../autograd/tape.js";
import { add, mul, sum } from "../ops/index.js";

/**
 * Runs `fn(x)` unrecorded and returns its outputs, wired into the tape so
 * that backward replays `fn` and propagates into `x` and `params`.
 * outputs[0] must be the main output (on every path to the loss); the others
 * (e.g. auxiliary losses) may be null or unused.
 */
export function recompute(fn: (x: Tensor) => (Tensor | null)[], x: Tensor, params: Tensor[]): (Tensor | null)[] {
  if (!tape.isGradEnabled()) return fn(x);
  const outs = tape.noGrad(() => fn(x));
  // Gradients of the later outputs arrive first (reverse tape order) and are
  // kept until outputs[0]'s node runs; the pool reclaims the originals, hence the copies.
  const grads: (Tensor | null)[] = outs.map(() => null);
  const replay = (g0: Tensor): void => {
    grads[0] = g0;
    const xr = new Tensor(x.storage, x.shape, x.offset);
    xr.requiresGrad = x.requiresGrad;
    const again = fn(xr);
    // A scalar whose gradient with respect to each replayed output is exactly that output's gradient.
    let surrogate: Tensor | null = null;
    again.forEach((o, i) => {
      const g = grads[i];
      if (!o || !g || !o.requiresGrad) return;
      const term = sum(mul(o, g));
      surrogate = surrogate ? add(surrogate, term) : term;
    });
    if (surrogate) tape.backward(surrogate);
    if (x.requiresGrad && xr.grad) {
      const gx = tape.gradOf(x).data;
      const gr = xr.grad.data;
      for (let i = 0; i < gx.length; i++) gx[i] += gr[i]!;
    }
  };
  outs.forEach((o, i) => {
    if (!o) return;
    tape.record(o, [x, ...params], i === 0 ? replay : (g) => void (grads[i] = g.clone()));
  });
  return outs;
}
