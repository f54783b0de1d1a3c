/**
 * The decode kernels over stored weights (./quant.ts; docs/decode.md): the
 * product of a few rows of activations with a weight matrix in any format,
 * grouped by expert, and dequantization. Two implementations, as for the
 * Backend contract: the native addon's (native/src/kernels/quant_decode*.cpp:
 * AVX-512, AVX2 or portable by the kernel path, threads over output rows) and
 * the TypeScript twin (./reference/decode.ts), the definition and test oracle.
 * The native one is used whenever the native backend is.
 */
import { getBackend } from "./index.js";
import { loadNative } from "./native/index.js";
import { groupsOf, rowElements, type DecodeKernels, type StoredMatrix } from "./quant.js";
import { referenceDecode } from "./reference/decode.js";

type Fn = (...args: unknown[]) => void;

interface Packed {
  E: number;
  N: number;
  packed: Uint8Array;
  scales: Uint16Array;
}

/**
 * q8 and q4 matrices repacked for the AVX-512 and AVX2 integer kernels
 * (native/include/quant.h "packed q8 and q4": sixteen rows side by side, so
 * that one instruction adds four products of each of sixteen rows), made on
 * a matrix's first product and kept with it: as many bytes again as its
 * stored weights; the row layout stays for the other paths, the dequantizer
 * and saving.
 */
const packedMatrices = new WeakMap<StoredMatrix, Packed>();

/** The addon's decode exports, dispatched by format. */
function nativeDecode(addon: Record<string, unknown>): DecodeKernels {
  const fn = (name: string) => addon[name] as Fn;
  const path = addon.decodePath as () => string;
  const packs = (): boolean => typeof addon.packQ4 === "function" && (addon.decodePacks as () => boolean)();
  type PackFn = (...a: unknown[]) => { packed: Uint8Array; scales: Uint16Array };
  const pack = (w: StoredMatrix, E: number, N: number): Packed => {
    let p = packedMatrices.get(w);
    if (!p || p.E !== E || p.N !== N) {
      const made = w.format === "q4" ? (addon.packQ4 as PackFn)(w.data, w.scales, w.mins, E, N, w.K) : (addon.packQ8 as PackFn)(w.data, w.scales, E, N, w.K);
      packedMatrices.set(w, (p = { E, N, ...made }));
    }
    return p;
  };
  return {
    get name() {
      return `native/${path()}`;
    },
    decodeMatmul(y, x, w, offsets, E, N, K, ep) {
      // The epilogue's three arguments go after the format's own (quant_napi.cpp).
      const tail = ep ? [ep.bias ?? null, ep.act === "fastgelu" ? 1 : ep.act === "gelu" ? 2 : 0, ep.residual ?? null] : [];
      switch (w.format) {
        case "f32": return fn("decodeMatmulF32")(y, x, w.data, offsets, E, N, K, ...tail);
        case "bf16": return fn("decodeMatmulBf16")(y, x, w.data, offsets, E, N, K, ...tail);
        case "f16": return fn("decodeMatmulF16")(y, x, w.data, offsets, E, N, K, ...tail);
        case "q8":
        case "q4": {
          const [name, groups] = w.format === "q8" ? ["decodeMatmulQ8", [w.scales]] : ["decodeMatmulQ4", [w.scales, w.mins]];
          if (!packs()) return fn(name)(y, x, w.data, offsets, E, N, K, ...groups, ...tail);
          // The packed copy comes after the epilogue's three arguments (quant_napi.cpp).
          const p = pack(w, E, N);
          return fn(name)(y, x, w.data, offsets, E, N, K, ...groups, ...(ep ? tail : [null, 0, null]), p.packed, p.scales);
        }
      }
    },
    dequantize(out, w) {
      switch (w.format) {
        case "f32": return out.set(w.data as Float32Array);
        case "bf16": return fn("dequantizeBf16")(out, w.data, w.rows, w.K);
        case "f16": return fn("dequantizeF16")(out, w.data, w.rows, w.K);
        case "q8": return fn("dequantizeQ8")(out, w.data, w.rows, w.K, w.scales);
        case "q4": return fn("dequantizeQ4")(out, w.data, w.rows, w.K, w.scales, w.mins);
      }
    },
  };
}

let native: DecodeKernels | null | undefined;

/** The addon's decode kernels, or null when the addon is missing or predates them. */
export function nativeDecodeKernels(): DecodeKernels | null {
  if (native === undefined) {
    const n = loadNative();
    const addon = n.backend as unknown as Record<string, unknown> | null;
    native = addon && typeof addon.decodeMatmulQ4 === "function" && typeof addon.decodePath === "function" ? nativeDecode(addon) : null;
  }
  return native;
}

/** The decode kernels of the backend in use: native with the native backend, else the TypeScript twin. */
export function decodeKernels(): DecodeKernels {
  if (getBackend().name !== "native") return referenceDecode;
  return nativeDecodeKernels() ?? referenceDecode;
}

/** Checks that w holds E·N rows of K inputs in its format (a programming error otherwise). */
export function checkStored(w: StoredMatrix, E: number, N: number, K: number): void {
  const rows = E * N;
  const G = groupsOf(K);
  const bad =
    w.K !== K || w.rows !== rows || w.data.length < rows * rowElements(w.format, K) ||
    ((w.format === "q8" || w.format === "q4") && (w.scales?.length ?? 0) < rows * G) || (w.format === "q4" && (w.mins?.length ?? 0) < rows * G);
  if (bad) throw new RangeError(`stored weights: a ${w.format} matrix of ${w.rows}×${w.K} used as ${E}×${N}×${K}`);
}

export { referenceDecode, type DecodeKernels };
