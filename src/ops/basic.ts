/** Shape and elementwise ops: reshape, add, mul, scale, addBias, sum, mean. */
import { gradOf, record } from "../autograd/tape.js";
import { Tensor, resolveShape } from "../tensor/tensor.js";
import type { Shape } from "../tensor/shape.js";
import { be, empty, expectShape, sameDtype } from "./util.js";

/** A view of x with another shape (no copy). */
export function reshape(x: Tensor, shape: Shape): Tensor {
  const y = x.view(resolveShape(shape, x.size, x.shape));
  // y shares x's storage, but gets its own gradient buffer.
  record(y, [x], (g) => be(x).axpy(gradOf(x).data, g.data, 1, x.size));
  return y;
}

/** a + b, same shapes. */
export function add(a: Tensor, b: Tensor): Tensor {
  sameDtype("add", a, b);
  expectShape("add", "b", b, a.shape);
  const y = empty(a, a.shape);
  be(a).add(y.data, a.data, b.data, a.size);
  record(y, [a, b], (g) => {
    if (a.requiresGrad) be(a).axpy(gradOf(a).data, g.data, 1, a.size);
    if (b.requiresGrad) be(b).axpy(gradOf(b).data, g.data, 1, b.size);
  });
  return y;
}

/** a ⊙ b, same shapes. */
export function mul(a: Tensor, b: Tensor): Tensor {
  sameDtype("mul", a, b);
  expectShape("mul", "b", b, a.shape);
  const y = empty(a, a.shape);
  be(a).mul(y.data, a.data, b.data, a.size);
  record(y, [a, b], (g) => {
    const k = be(a);
    const tmp = empty(a, a.shape).data;
    if (a.requiresGrad) {
      k.mul(tmp, g.data, b.data, a.size);
      k.axpy(gradOf(a).data, tmp, 1, a.size);
    }
    if (b.requiresGrad) {
      k.mul(tmp, g.data, a.data, a.size);
      k.axpy(gradOf(b).data, tmp, 1, b.size);
    }
  });
  return y;
}

/** alpha · x. */
export function scale(x: Tensor, alpha: number): Tensor {
  const y = empty(x, x.shape);
  be(x).scale(y.data, x.data, alpha, x.size);
  record(y, [x], (g) => be(x).axpy(gradOf(x).data, g.data, alpha, x.size));
  return y;
}

/** x + bias over the last dimension: x [..., C], bias [C]. */
export function addBias(x: Tensor, bias: Tensor): Tensor {
  sameDtype("addBias", x, bias);
  const C = x.dim(-1);
  expectShape("addBias", "bias", bias, [C]);
  const rows = x.size / Math.max(C, 1);
  const y = empty(x, x.shape);
  be(x).addBias(y.data, x.data, bias.data, rows, C);
  record(y, [x, bias], (g) => {
    if (x.requiresGrad) be(x).axpy(gradOf(x).data, g.data, 1, x.size);
    if (bias.requiresGrad) be(x).addBiasBackward(gradOf(bias).data, g.data, rows, C);
  });
  return y;
}

/** Σ x, as a one-element tensor. Not a hot path: a plain loop in float64. */
export function sum(x: Tensor): Tensor {
  const d = x.data;
  let s = 0;
  for (let i = 0; i < d.length; i++) s += d[i]!;
  const y = Tensor.zeros([1], x.dtype);
  y.data[0] = s;
  record(y, [x], (g) => {
    const gx = gradOf(x).data;
    const gv = g.data[0]!;
    for (let i = 0; i < gx.length; i++) gx[i] += gv;
  });
  return y;
}

/** mean of x, as a one-element tensor. */
export function mean(x: Tensor): Tensor {
  return scale(sum(x), 1 / Math.max(x.size, 1));
}
