import { readFileSync } from "node:fs";

/**
 * Whether a process with this id exists (EPERM: it does, but belongs to
 * someone else). A zombie — dead, waiting for its parent to collect its exit
 * status, as an MPI rank is for a moment after its job was killed — is not.
 */
export function processAlive(pid: number): boolean {
  // kill(0) and kill(-n) address process groups, not a process.
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
  return !isZombie(pid);
}

/** Linux: the state field of /proc/<pid>/stat is Z. Elsewhere (no /proc): false. */
function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) === "Z";
  } catch {
    return false;
  }
}

/** Whether `pid` is another live process: a leftover named after this process's own id is from a dead one. */
export const otherProcessAlive = (pid: number): boolean => pid !== process.pid && processAlive(pid);
