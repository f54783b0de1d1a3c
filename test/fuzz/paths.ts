/**
 * Path strings a mutant puts into a file: traversal out of the job's folder
 * (into the sentinel "victim" folders the harness watches), absolute paths,
 * odd names. Every string handed out is remembered in the context, so the
 * harness can check afterwards that none of them came into existence outside
 * the job's folder.
 *
 * No real system file is ever named as a target (the fuzzer may run as root):
 * "an existing file outside the folder" is the victim's keep.txt.
 */
import type { FuzzRng } from "./rng.js";

export interface PathContext {
  /** Absolute path of a watched sentinel folder outside the job's folder (holds keep.txt). */
  victimAbs: string;
  /** Absolute path that does not exist and must not come to exist. */
  escapeAbs: string;
  /** Path strings handed out so far (for the after-job check). */
  injected: string[];
}

/** A well-known absolute probe outside the run's folder; must never exist. */
export const GLOBAL_PROBE = "/tmp/sigma-fuzz-escape-probe";

export function pathString(r: FuzzRng, ctx: PathContext): string {
  const s = r.pick<() => string>([
    () => "../victim",
    () => "../victim/keep.txt",
    () => "../victim/new-file",
    () => "../../victim/keep.txt",
    () => "../../victim/sub",
    () => "a/../../victim/keep.txt",
    () => "./../victim/new-dir/x",
    () => "../".repeat(16) + GLOBAL_PROBE.slice(1),
    () => `${GLOBAL_PROBE}/x`,
    () => GLOBAL_PROBE,
    () => ctx.victimAbs,
    () => `${ctx.victimAbs}/keep.txt`,
    () => `${ctx.victimAbs}/new-file`,
    () => ctx.escapeAbs,
    () => `${ctx.escapeAbs}/x`,
    () => "/",
    () => ".",
    () => "..",
    () => "",
    () => "sub/dir/name",
    () => "name\u0000.bin",
    () => "x".repeat(300),
    () => `${"d/".repeat(200)}x`,
    () => "C:\\Windows\\system32",
    () => "~/x",
    () => "%2e%2e/victim",
    () => "/dev/null",
    () => "/dev/full",
    () => "file:///tmp/x",
  ])();
  ctx.injected.push(s);
  return s;
}
