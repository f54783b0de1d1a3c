/**
 * One training run at a time per expert store: `<store>.lock` holds the
 * owner's pid and host. Two runs writing the same store would each write
 * back into slots the other's index calls free, and each checkpoint would
 * then name records the other run had overwritten.
 *
 * A lock left by a process that is gone (killed, crashed) is taken over when
 * it was on this host; a lock from another host (a shared folder) is
 * reported, since whether that process lives cannot be told from here.
 */
import { closeSync, mkdirSync, openSync, readFileSync, unlinkSync, writeSync } from "node:fs";
import { hostname } from "node:os";
import { dirname } from "node:path";
import { SigmaError } from "../util/errors.js";
import { processAlive } from "../util/process.js";

interface LockInfo {
  pid: number;
  host: string;
  since: string;
}

const lockPath = (store: string): string => `${store}.lock`;

/** Whether a process with this pid exists on this host. */
export { processAlive };

function readLock(path: string): LockInfo | null {
  try {
    const info = JSON.parse(readFileSync(path, "utf8")) as Partial<LockInfo>;
    return typeof info.pid === "number" && typeof info.host === "string" ? { pid: info.pid, host: info.host, since: String(info.since ?? "?") } : null;
  } catch {
    return null; // gone meanwhile, or half written by a process that died mid-write
  }
}

/** Takes the store's lock or throws a SigmaError naming its owner; returns the release function. */
export function lockStore(store: string): () => void {
  const path = lockPath(store);
  const me: LockInfo = { pid: process.pid, host: hostname(), since: new Date().toISOString() };
  for (let attempt = 0; attempt < 4; attempt++) {
    let fd: number;
    try {
      mkdirSync(dirname(path), { recursive: true });
      fd = openSync(path, "wx");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") {
        throw new SigmaError(`could not create the lock ${path}: ${(e as Error).message}`, "check that the store's folder is writable");
      }
      const owner = readLock(path);
      // Unreadable twice in a row: left half written by a process that died.
      const stale = owner ? owner.host === me.host && !processAlive(owner.pid) : attempt > 0;
      if (stale) {
        try {
          unlinkSync(path);
        } catch {
          /* another process took it over first; the next attempt sees its lock */
        }
        continue;
      }
      if (!owner) continue; // being written right now: read it again
      throw new SigmaError(
        `the expert store ${store} is in use by process ${owner.pid} on ${owner.host} (since ${owner.since})`,
        `two runs must not train the same store: wait for that run to end or stop it; if it no longer exists, delete ${path}`,
      );
    }
    try {
      writeSync(fd, JSON.stringify(me) + "\n");
    } finally {
      closeSync(fd);
    }
    return () => {
      // Only our own lock: a later run may have taken over one we were thought to have abandoned.
      if (readLock(path)?.pid === me.pid) unlinkSync(path);
    };
  }
  throw new SigmaError(`could not take the lock ${path}: other processes keep replacing it`, `make sure one run at a time trains the store ${store}`);
}
