/** File helpers: atomic writes (temporary file, fsync, rename, fsync of the folder). */
import { closeSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { SigmaError } from "./errors.js";

/** Whether an I/O error means the disk (or the user's quota) is full. */
export const diskFull = (e: unknown): boolean => ["ENOSPC", "EDQUOT"].includes((e as NodeJS.ErrnoException).code ?? "");

/** Writes `data` to `path` (created or truncated) and fsyncs it before returning. */
export function writeFileSynced(path: string, data: Uint8Array | string): void {
  const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  const fd = openSync(path, "w");
  try {
    let off = 0;
    while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Fsyncs a folder, so that renames and new entries in it survive a crash. */
export function fsyncDir(dir: string): void {
  try {
    const fd = openSync(dir, "r");
    fsyncSync(fd);
    closeSync(fd);
  } catch {
    /* some filesystems do not support fsync on folders */
  }
}

/**
 * Writes `data` to `path` so that a crash leaves either the old file or the
 * new one, never a torn mix. A full disk or a permission error is reported
 * with the path, and the old file is kept.
 */
export function writeFileAtomic(path: string, data: Uint8Array | string): void {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${Date.now()}`);
  try {
    writeFileSynced(tmp, data);
    renameSync(tmp, path);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      /* the temporary file may not exist */
    }
    const err = e as NodeJS.ErrnoException;
    const hint = diskFull(err) ? "the disk is full: free some space and retry; the previous file is untouched" : undefined;
    throw new SigmaError(`could not write ${path}: ${err.message}`, hint);
  }
  fsyncDir(dirname(path));
}
