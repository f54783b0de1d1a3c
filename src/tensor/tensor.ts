/**
 * Tensor: a shape over a contiguous, row-major range of a Storage.
 *
 * A tensor knows nothing of kernels; the autograd fields (`requiresGrad`,
 * `grad`) are plain data that src/autograd reads and writes. Views (reshape)
 * share storage with their source.
 */
import { Rng } from "../util/rng.js";
import { type Shape, checkShape, numel, shapeStr } from "./shape.js";
import type { DType, FloatArray } from "./dtype.js";
import { Storage } from "./storage.js";

export class Tensor {
  readonly shape: Shape;
  readonly storage: Storage;
  /** Element offset of this tensor's first element inside the storage. */
  readonly offset: number;
  readonly size: number;
  /** When true, backward() computes a gradient for this tensor. */
  requiresGrad = false;
  /** The accumulated gradient (same shape and dtype), or null before the first backward. */
  grad: Tensor | null = null;
  /** Optional name, used in error messages and checkpoints. */
  name: string | undefined;

  constructor(storage: Storage, shape: Shape, offset = 0) {
    checkShape(shape);
    const size = numel(shape);
    if (offset < 0 || offset + size > storage.length) {
      throw new RangeError(`Tensor ${shapeStr(shape)} at offset ${offset} does not fit in a storage of ${storage.length} elements`);
    }
    this.shape = Object.freeze([...shape]);
    this.storage = storage;
    this.offset = offset;
    this.size = size;
  }

  /** The elements, as a typed-array view (no copy). */
  get data(): FloatArray {
    const d = this.storage.data;
    return this.offset === 0 && this.size === d.length ? d : d.subarray(this.offset, this.offset + this.size);
  }

  get dtype(): DType {
    return this.storage.dtype;
  }

  get ndim(): number {
    return this.shape.length;
  }

  /** Size of dimension i; negative i counts from the end. */
  dim(i: number): number {
    const d = this.shape[i < 0 ? this.shape.length + i : i];
    if (d === undefined) throw new RangeError(`Tensor ${shapeStr(this.shape)} has no dimension ${i}`);
    return d;
  }

  /** A view with another shape of the same size (no copy; not recorded by autograd — use ops.reshape for that). */
  view(shape: Shape): Tensor {
    const resolved = resolveShape(shape, this.size, this.shape);
    return new Tensor(this.storage, resolved, this.offset);
  }

  /** A copy with its own storage. */
  clone(): Tensor {
    const s = Storage.alloc(this.size, this.dtype);
    s.data.set(this.data);
    return new Tensor(s, this.shape);
  }

  /** The same values in another dtype (a copy, or this tensor when the dtype already matches). */
  to(dtype: DType): Tensor {
    if (dtype === this.dtype) return this;
    const s = Storage.alloc(this.size, dtype);
    s.data.set(this.data);
    return new Tensor(s, this.shape);
  }

  toArray(): number[] {
    return Array.from(this.data);
  }

  /** The single value of a one-element tensor. */
  item(): number {
    if (this.size !== 1) throw new RangeError(`item() needs a one-element tensor, got ${shapeStr(this.shape)}`);
    return this.data[0]!;
  }

  toString(): string {
    return `Tensor(${shapeStr(this.shape)}, ${this.dtype}${this.name ? `, ${this.name}` : ""})`;
  }

  // ------------------------------------------------------------ constructors

  static zeros(shape: Shape, dtype: DType = "float32"): Tensor {
    return new Tensor(Storage.alloc(numel(shape), dtype), shape);
  }

  static full(shape: Shape, value: number, dtype: DType = "float32"): Tensor {
    const t = Tensor.zeros(shape, dtype);
    t.data.fill(value);
    return t;
  }

  /** Wraps (does not copy) a typed array, or copies a plain number array. */
  static from(data: FloatArray | number[], shape?: Shape, dtype: DType = "float32"): Tensor {
    const arr: FloatArray = Array.isArray(data) ? (dtype === "float64" ? Float64Array.from(data) : Float32Array.from(data)) : data;
    const s = shape ?? [arr.length];
    if (numel(s) !== arr.length) throw new RangeError(`Tensor.from: ${arr.length} values do not fill shape ${shapeStr(s)}`);
    return new Tensor(new Storage(arr), s);
  }

  /** Normal(0, std²) entries from a seeded generator. */
  static randn(shape: Shape, rng: Rng, std = 1, dtype: DType = "float32"): Tensor {
    const t = Tensor.zeros(shape, dtype);
    const d = t.data;
    for (let i = 0; i < d.length; i++) d[i] = rng.normal() * std;
    return t;
  }

  /** Uniform(lo, hi) entries from a seeded generator. */
  static uniform(shape: Shape, rng: Rng, lo = 0, hi = 1, dtype: DType = "float32"): Tensor {
    const t = Tensor.zeros(shape, dtype);
    const d = t.data;
    for (let i = 0; i < d.length; i++) d[i] = lo + (hi - lo) * rng.uniform();
    return t;
  }
}

/** Resolves one -1 dimension and checks the size is unchanged. */
export function resolveShape(shape: Shape, size: number, from: Shape): number[] {
  const out = [...shape];
  const free = out.indexOf(-1);
  if (free !== -1) {
    const rest = out.reduce((p, d, i) => (i === free ? p : p * d), 1);
    if (rest === 0 || size % rest !== 0) throw new RangeError(`cannot reshape ${shapeStr(from)} to ${shapeStr(shape)}`);
    out[free] = size / rest;
  }
  if (numel(out) !== size) throw new RangeError(`cannot reshape ${shapeStr(from)} (${size} elements) to ${shapeStr(shape)}`);
  return out;
}
