/**
 * The element types a tensor may have and the typed arrays that hold them.
 * In a file of their own so that the storage and the buffer pool, which both
 * need them, do not import each other.
 */
export type DType = "float32" | "float64";
export type FloatArray = Float32Array | Float64Array;
