/**
 * A pool of large float buffers. Fresh typed arrays of many megabytes cost a
 * page fault per 4 KiB on first touch; training allocates gigabytes of
 * short-lived gradients per step, so buffers whose owner is known to be done
 * with them (autograd's intermediate gradients) come back here and are handed
 * out again, zeroed, to the next allocation of the same length and type.
 */
import type { DType, FloatArray } from "./dtype.js";

/** Buffers smaller than this are not worth pooling (the allocator handles them well). */
const MIN_ELEMENTS = 1 << 14;
/** Upper bound on pooled bytes, so the pool never holds more than a working set. */
const MAX_POOLED_BYTES = 2 ** 31;

const free = new Map<string, FloatArray[]>();
let pooledBytes = 0;

const key = (n: number, dtype: DType) => `${dtype}:${n}`;

/** A zeroed buffer of n elements: a pooled one when available, else a new one. */
export function acquire(n: number, dtype: DType): FloatArray {
  if (n >= MIN_ELEMENTS) {
    const list = free.get(key(n, dtype));
    const buf = list?.pop();
    if (buf) {
      pooledBytes -= buf.byteLength;
      buf.fill(0);
      return buf;
    }
  }
  return dtype === "float64" ? new Float64Array(n) : new Float32Array(n);
}

/**
 * Returns a buffer to the pool. The caller guarantees nothing else reads or
 * writes it any more (views of it included).
 */
export function release(buf: FloatArray): void {
  if (buf.length < MIN_ELEMENTS || buf.byteOffset !== 0 || buf.length * buf.BYTES_PER_ELEMENT !== buf.buffer.byteLength) return;
  if (pooledBytes + buf.byteLength > MAX_POOLED_BYTES) return;
  const k = key(buf.length, buf instanceof Float64Array ? "float64" : "float32");
  let list = free.get(k);
  if (!list) free.set(k, (list = []));
  list.push(buf);
  pooledBytes += buf.byteLength;
}

/** Buffers and bytes the pool holds now (tests, memory diagnostics). */
export function poolStats(): { buffers: number; bytes: number } {
  let buffers = 0;
  for (const list of free.values()) buffers += list.length;
  return { buffers, bytes: pooledBytes };
}

/** Drops every pooled buffer (frees the memory to the garbage collector). */
export function clearPool(): void {
  free.clear();
  pooledBytes = 0;
}
