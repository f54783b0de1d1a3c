/** Argument checks shared by the reference kernels: the same errors the native layer gives. */
import type { Buf, Idx } from "../backend.js";

export function need(kernel: string, name: string, a: { readonly length: number }, n: number): void {
  if (a.length < n) throw new RangeError(`${kernel}: argument "${name}" has ${a.length} elements but the sizes given need ${n}`);
}

export function inRange(kernel: string, name: string, idx: Idx, n: number, hi: number, allow?: number): void {
  for (let i = 0; i < n; i++) {
    const v = idx[i]!;
    if ((v < 0 || v >= hi) && v !== allow) throw new RangeError(`${kernel}: ${name}[${i}] = ${v} is outside [0, ${hi})`);
  }
}

export function checkOffsets(kernel: string, offsets: Idx, E: number, rows: number): void {
  need(kernel, "offsets", offsets, E + 1);
  if (offsets[0] !== 0) throw new RangeError(`${kernel}: argument "offsets" must start at 0, got ${offsets[0]}`);
  for (let e = 0; e < E; e++) {
    if (offsets[e + 1]! < offsets[e]!) throw new RangeError(`${kernel}: argument "offsets" decreases at expert ${e} (${offsets[e]} > ${offsets[e + 1]})`);
  }
  if (offsets[E]! > rows) throw new RangeError(`${kernel}: argument "offsets" ends at ${offsets[E]} but only ${rows} rows are available`);
}
