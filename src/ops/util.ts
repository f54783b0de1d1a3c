/** Helpers shared by the op files: backend choice, output allocation, checks. */
import type { Backend } from "../backend/backend.js";
import { backendFor } from "../backend/index.js";
import { Tensor } from "../tensor/tensor.js";
import { type Shape, sameShape, shapeStr } from "../tensor/shape.js";

/** The backend that runs kernels on t's storage (float64 always runs on the reference backend). */
export function be(t: Tensor): Backend {
  return backendFor(t.data);
}

/** A new zeroed tensor with t's dtype. */
export function empty(t: Tensor, shape: Shape): Tensor {
  return Tensor.zeros(shape, t.dtype);
}

/** Throws unless all tensors share one dtype. */
export function sameDtype(op: string, ...ts: (Tensor | null | undefined)[]): void {
  const first = ts.find((t): t is Tensor => !!t);
  for (const t of ts) {
    if (t && first && t.dtype !== first.dtype) throw new TypeError(`${op}: mixed dtypes ${first.dtype} and ${t.dtype}`);
  }
}

export function expectShape(op: string, arg: string, t: Tensor, shape: Shape): void {
  if (!sameShape(t.shape, shape)) throw new RangeError(`${op}: ${arg} has shape ${shapeStr(t.shape)}, expected ${shapeStr(shape)}`);
}

export function expectNdim(op: string, arg: string, t: Tensor, ndim: number): void {
  if (t.ndim !== ndim) throw new RangeError(`${op}: ${arg} must have ${ndim} dimensions, got ${shapeStr(t.shape)}`);
}

/** Rows when t is viewed as [rows, last]. */
export function rowsOf(t: Tensor): number {
  const c = t.shape[t.shape.length - 1] ?? 1;
  return c === 0 ? 0 : t.size / c;
}
