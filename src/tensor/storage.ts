/**
 * Where a tensor's numbers live, separate from what they mean (shape, dtype).
 * Today every storage is a heap typed array; the expert store will hand out
 * storages backed by regions of a file-backed buffer, and tensors will not
 * know the difference.
 */
import type { DType, FloatArray } from "./dtype.js";
import { acquire } from "./pool.js";

export class Storage {
  constructor(readonly data: FloatArray) {}

  get dtype(): DType {
    return this.data instanceof Float64Array ? "float64" : "float32";
  }

  get length(): number {
    return this.data.length;
  }

  /** A zeroed storage of n elements (large ones may come from the buffer pool). */
  static alloc(n: number, dtype: DType = "float32"): Storage {
    return new Storage(acquire(n, dtype));
  }
}
