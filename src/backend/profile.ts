/**
 * Where a training step's time goes: a profiler that is off unless a
 * benchmark (or a curious user) turns it on.
 *
 * Two kinds of entries:
 *  - kernels: while profiling, the backend in use is replaced by a wrapper
 *    that times each call of each kernel of the Backend contract (wall time
 *    on the calling thread, which is the kernel's whole time: calls are
 *    synchronous and the addon's worker threads finish before they return);
 *  - sections: named stretches of the trainer that are not one kernel call —
 *    the loader, zeroing gradients, the clipping norm, the optimizer step —
 *    timed with `section(name, fn)`. Kernels called inside a section are
 *    counted in the kernel's entry too, and in its `inSectionMs`, so a
 *    breakdown can count each millisecond once (see exclusiveKernelMs).
 *
 * Off (the default), `section` is one branch and a call, and the backend is
 * the plain one: nothing is measured and nothing is allocated.
 */
import { KERNEL_NAMES, type Backend, type KernelName } from "./backend.js";
import { getBackend, setBackend } from "./index.js";

export interface ProfileEntry {
  calls: number;
  ms: number;
}

export interface KernelEntry extends ProfileEntry {
  /** The part of ms spent inside a section (e.g. adamw inside "optimizer"). */
  inSectionMs: number;
}

export interface Profile {
  kernels: Map<KernelName, KernelEntry>;
  sections: Map<string, ProfileEntry>;
}

let active: { profile: Profile; inner: Backend; depth: number } | null = null;

/** A backend that forwards every call to `inner`, timing each kernel into `profile`. */
function timedBackend(inner: Backend, profile: Profile): Backend {
  const wrapped: Record<string, unknown> = { ...inner };
  for (const name of KERNEL_NAMES) {
    const fn = inner[name] as (...a: unknown[]) => unknown;
    const entry: KernelEntry = { calls: 0, ms: 0, inSectionMs: 0 };
    profile.kernels.set(name, entry);
    wrapped[name] = (...args: unknown[]) => {
      const t0 = performance.now();
      try {
        return fn.apply(inner, args);
      } finally {
        const dt = performance.now() - t0;
        entry.calls++;
        entry.ms += dt;
        if (active && active.depth > 0) entry.inSectionMs += dt;
      }
    };
  }
  return wrapped as unknown as Backend;
}

/** Starts profiling the backend in use (getBackend()) and the trainer's sections. Throws if already on. */
export function startProfile(): Profile {
  if (active) throw new Error("startProfile: a profile is already running");
  const profile: Profile = { kernels: new Map(), sections: new Map() };
  const inner = getBackend();
  active = { profile, inner, depth: 0 };
  setBackend(timedBackend(inner, profile));
  return profile;
}

/** Stops profiling and puts the plain backend back; returns what was measured. */
export function stopProfile(): Profile {
  if (!active) throw new Error("stopProfile: no profile is running");
  const { profile, inner } = active;
  active = null;
  setBackend(inner);
  return profile;
}

/** True while a profile runs. */
export function profiling(): boolean {
  return active !== null;
}

/** Runs fn; while a profile runs, its wall time is added to the section `name`. */
export function section<T>(name: string, fn: () => T): T {
  if (!active) return fn();
  const a = active;
  const t0 = performance.now();
  a.depth++;
  try {
    return fn();
  } finally {
    a.depth--;
    const dt = performance.now() - t0;
    const e = a.profile.sections.get(name) ?? { calls: 0, ms: 0 };
    e.calls++;
    e.ms += dt;
    a.profile.sections.set(name, e);
  }
}

/** A kernel's time outside every section (so that sections and kernels add up without double counting). */
export const exclusiveKernelMs = (e: KernelEntry): number => e.ms - e.inSectionMs;
