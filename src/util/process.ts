/** Whether a process with this id exists (EPERM: it does, but belongs to someone else). */
export function processAlive(pid: number): boolean {
  // kill(0) and kill(-n) address process groups, not a process.
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Whether `pid` is another live process: a leftover named after this process's own id is from a dead one. */
export const otherProcessAlive = (pid: number): boolean => pid !== process.pid && processAlive(pid);
