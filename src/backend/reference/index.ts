/**
 * The reference backend: plain TypeScript loops over Float32Array or
 * Float64Array. It is the readable definition of every kernel in
 * src/backend/backend.ts, the fallback when the native addon is missing, and
 * the oracle the native kernels are tested against.
 */
import type { Backend } from "../backend.js";
import { attention, attentionBackward, attentionHalf, fromHalf, toHalf } from "./attention.js";
import { add, addBias, addBiasBackward, axpy, fastGelu, fastGeluBackward, gelu, geluBackward, mul, scale, sumSquares, swiglu, swigluBackward } from "./elementwise.js";
import { bmm, groupedMatmul, groupedMatmulWeightGrad, groupedMatmulWeightGradSquares, matmul } from "./matmul.js";
import { groupedMatmulBf16, groupedMatmulWeightGradBf16, matmulBf16 } from "./matmul-bf16.js";
import { adamw, adamwExperts, combine, combineBackward, embedding, embeddingBackward, gatherRows, permuteByExpert, scatterAddRows } from "./moe.js";
import { crossEntropy, crossEntropyBackward, layerNorm, layerNormBackward, rmsNorm, rmsNormBackward, softmax, softmaxBackward } from "./norm.js";

export const referenceBackend: Backend = {
  name: "reference",
  getThreads: () => 1,
  setThreads: () => {},
  matmul, bmm, groupedMatmul, groupedMatmulWeightGrad, groupedMatmulWeightGradSquares,
  matmulBf16, groupedMatmulBf16, groupedMatmulWeightGradBf16,
  addBias, addBiasBackward, add, mul, scale, axpy, sumSquares,
  gelu, geluBackward, fastGelu, fastGeluBackward, swiglu, swigluBackward,
  layerNorm, layerNormBackward, rmsNorm, rmsNormBackward, softmax, softmaxBackward, crossEntropy, crossEntropyBackward,
  embedding, embeddingBackward,
  attention, attentionBackward, attentionHalf, toHalf, fromHalf,
  permuteByExpert, gatherRows, scatterAddRows, combine, combineBackward,
  adamw, adamwExperts,
};
