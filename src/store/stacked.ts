/**
 * Between store records and stacked `[E, …]` arrays: every expert of one
 * sparse layer read out of the store as the stacked weights (and moments)
 * an in-RAM model keeps — for converting checkpoints and for loading a store
 * checkpoint for inference.
 */
import type { ExpertStoreFile } from "./file.js";
import { RECORD_HEADER, payloadFloats, tensorOffsets } from "./format.js";

export const EXPERT_TENSORS = ["w1", "w2", "b1", "b2"] as const;
export type ExpertTensor = (typeof EXPERT_TENSORS)[number];

export interface StackedLayer {
  /** w1 [E, F, C], w2 [E, C, F], b1 [E, F], b2 [E, C]. */
  shapes: Record<ExpertTensor, number[]>;
  /** Weights, then Adam m and v, each stacked over the experts. */
  params: Record<ExpertTensor, Float32Array>;
  m: Record<ExpertTensor, Float32Array>;
  v: Record<ExpertTensor, Float32Array>;
  /** Each expert's optimizer step count. */
  steps: Float32Array;
}

/** Reads (and checks) every live record of `layer`; `moments` false skips m and v. */
export function readStackedLayer(store: ExpertStoreFile, layer: number, moments = true): StackedLayer {
  const lay = store.layout(layer);
  const [E, F, C] = [lay.experts, lay.expertWidth, lay.width];
  const o = tensorOffsets(lay);
  const size: Record<ExpertTensor, number> = { w1: F * C, w2: F * C, b1: F, b2: C };
  const alloc = (): Record<ExpertTensor, Float32Array> => ({ w1: new Float32Array(E * size.w1), w2: new Float32Array(E * size.w2), b1: new Float32Array(E * size.b1), b2: new Float32Array(E * size.b2) });
  const out: StackedLayer = { shapes: { w1: [E, F, C], w2: [E, C, F], b1: [E, F], b2: [E, C] }, params: alloc(), m: moments ? alloc() : ({} as StackedLayer["m"]), v: moments ? alloc() : ({} as StackedLayer["v"]), steps: new Float32Array(E) };
  const rec = new Uint8Array(store.recordBytes(layer));
  const payload = new Float32Array(rec.buffer, RECORD_HEADER, payloadFloats(lay));
  for (let e = 0; e < E; e++) {
    out.steps[e] = store.read(layer, e, rec).step;
    for (const n of EXPERT_TENSORS) {
      const parts = moments ? ([out.params, out.m, out.v] as const) : ([out.params] as const);
      parts.forEach((dst, part) => dst[n].set(payload.subarray(part * o.P + o[n], part * o.P + o[n] + size[n]), e * size[n]));
    }
  }
  return out;
}
