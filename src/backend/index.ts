/**
 * Which backend runs the kernels. The native addon when it loads (float32),
 * the reference backend otherwise — with one clear warning per process — and
 * always the reference backend for float64 buffers (gradient checks).
 * SIGMA_BACKEND=reference|native overrides the choice; SIGMA_KERNEL_PATH
 * (auto|avx2-fma|portable) caps the native kernels' instruction set.
 */
import type { Backend, Buf } from "./backend.js";
import { kernelPathSetting, loadNative, type Bf16Path, type NativeBackend } from "./native/index.js";
import { referenceBackend } from "./reference/index.js";
import { SigmaError } from "../util/errors.js";

let current: Backend | null = null;

function choose(): Backend {
  const want = process.env.SIGMA_BACKEND;
  if (want === "reference") return referenceBackend;
  const setting = kernelPathSetting();
  if (setting.error) throw new SigmaError(setting.error);
  const native = loadNative();
  if (want === "native") {
    if (!native.backend) throw new SigmaError(`SIGMA_BACKEND=native but ${native.error}`, "build the addon with `npm run build:native`, or unset SIGMA_BACKEND");
    return native.backend;
  }
  if (want !== undefined && want !== "") throw new SigmaError(`SIGMA_BACKEND="${want}" is not a backend`, "use native or reference");
  if (native.backend) return native.backend;
  process.emitWarning(`sigma: native kernels unavailable (${native.error}); running on the reference backend, which is much slower. Build them with \`npm run build:native\`.`);
  return referenceBackend;
}

/** The backend in use for float32 work. */
export function getBackend(): Backend {
  current ??= choose();
  return current;
}

/** Replaces the backend (tests, benchmarks). */
export function setBackend(b: Backend): void {
  current = b;
}

/** Selects a backend by name; "native" throws a SigmaError when the addon is unavailable. */
export function useBackend(name: "native" | "reference"): Backend {
  if (name === "reference") current = referenceBackend;
  else {
    const native = loadNative();
    if (!native.backend) throw new SigmaError(`the native backend is unavailable: ${native.error}`);
    current = native.backend;
  }
  return current;
}

/** The backend for a buffer: float64 always runs on the reference backend (native is float32-only). */
export function backendFor(data: Buf): Backend {
  return data instanceof Float64Array ? referenceBackend : getBackend();
}

/**
 * The path bf16 products take on the backend in use: the addon's
 * "avx512-bf16" (vdpbf16ps) or "converted-f32" (inputs rounded to bf16, then
 * the f32 GEMM), or "reference" (the TypeScript kernels).
 */
export function bf16Path(): Bf16Path | "reference" {
  const b = getBackend() as Backend & Partial<Pick<NativeBackend, "bf16Path">>;
  return typeof b.bf16Path === "function" ? b.bf16Path() : "reference";
}

export { referenceBackend };
