/** Differentiable ops: forward through the backend, gradient rule in TypeScript. */
export { reshape, add, mul, scale, addBias, sum, mean } from "./basic.js";
export { matmul, linear, bmm, groupedMatmul, type ExpertParts } from "./linalg.js";
export { gelu, fastGelu, softmax, layerNorm, crossEntropy, softCrossEntropy, embedding, logsumexp, dropout } from "./nn.js";
export { attention, type AttentionOptions } from "./attention.js";
export { permuteByExpert, gatherRows, combine, type Permutation } from "./moe.js";
export { rmsNorm, swiglu, sigmoid, rope, repeatHeads } from "./block.js";
