/** File helpers: atomic writes (temporary file, fsync, rename, fsync of the folder). */
import { accessSync, closeSync, constants, fsyncSync, lstatSync, openSync, realpathSync, renameSync, statSync, statfsSync, unlinkSync, writeSync } from "node:fs";
import { basename, dirname, join, resolve, sep } from "node:path";
import { SigmaError } from "./errors.js";

/** Whether an I/O error means the disk (or the user's quota) is full. */
export const diskFull = (e: unknown): boolean => ["ENOSPC", "EDQUOT"].includes((e as NodeJS.ErrnoException).code ?? "");

/**
 * Writes `data` to `path` (created or truncated; with flag "wx" only created,
 * so an existing file or link there is an error) and fsyncs it before returning.
 */
export function writeFileSynced(path: string, data: Uint8Array | string | readonly Uint8Array[], flag: "w" | "wx" = "w"): void {
  // Parts are written one after another: a file larger than one buffer may hold (GGUF models) never needs one.
  const parts = typeof data === "string" ? [Buffer.from(data, "utf8")] : data instanceof Uint8Array ? [data] : data;
  const fd = openSync(path, flag);
  try {
    for (const bytes of parts) {
      let off = 0;
      while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
    }
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
export function writeFileAtomic(path: string, data: Uint8Array | string | readonly Uint8Array[]): void {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${Date.now()}`);
  try {
    writeFileSynced(tmp, data, "wx");
    renameSync(tmp, path);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      /* the temporary file may not exist */
    }
    throw writeError(path, e, "write", "the previous file is untouched");
  }
  fsyncDir(dirname(path));
}

/** What an errno code means, in words (for messages about files the system refused). */
const ERRNO_MEANING: Record<string, string> = {
  ENOSPC: "no space left on the device: the disk is full",
  EDQUOT: "the disk quota is used up",
  EIO: "an input/output error: the disk or its filesystem failed",
  EROFS: "the filesystem is read-only",
  EACCES: "permission denied",
  EPERM: "the operation is not permitted",
  EISDIR: "it is a folder",
  ENOTDIR: "a part of the path is a file, not a folder",
  ENOENT: "a folder on the path does not exist",
  EEXIST: "something is already there",
  EFBIG: "the file is larger than the filesystem allows",
  EMFILE: "too many open files",
  ENFILE: "too many open files on the system",
  ENAMETOOLONG: "the name is too long",
  ELOOP: "too many symbolic links",
  EBUSY: "the file is busy",
  ENXIO: "no such device",
  ENODEV: "no such device",
};

/** "ENOSPC: no space left on the device: the disk is full", or the error's own message. */
export function errnoMeaning(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  if (typeof code === "string" && ERRNO_MEANING[code]) return `${code}: ${ERRNO_MEANING[code]}`;
  return e instanceof Error ? e.message : String(e);
}

/** A write the system refused: the file, the errno, and what it means. A SigmaError (exit 1). */
export class WriteError extends SigmaError {
  constructor(
    readonly path: string,
    readonly code: string | undefined,
    /** The message without the hint line. */
    readonly detail: string,
    hint?: string,
  ) {
    super(detail, hint);
    this.name = "WriteError";
  }
}

/**
 * The error for a failed write of `path` (`action`: "write", "append to",
 * "create"…): it names the file and what the errno means; a full disk gets
 * a hint saying so, plus `kept` (what is still intact).
 */
export function writeError(path: string, e: unknown, action = "write", kept?: string): WriteError {
  if (e instanceof WriteError) return e;
  const code = (e as NodeJS.ErrnoException | null)?.code;
  const fix = diskFull(e) ? "free some space and retry" : code === "EIO" ? "check the disk (dmesg, SMART) and retry on a healthy one" : code === "EROFS" || code === "EACCES" || code === "EPERM" ? "write to a folder you can write to" : undefined;
  const hint = [fix, kept].filter(Boolean).join("; ") || undefined;
  return new WriteError(path, code, `could not ${action} ${path}: ${errnoMeaning(e)}`, hint);
}

/** Where the kernel's pseudo filesystems live: never a place for a run's files. /dev/shm is an ordinary tmpfs and allowed. */
const PSEUDO_ROOTS: [string, string][] = [
  ["/proc", "the kernel's process information filesystem"],
  ["/sys", "the kernel's device and driver filesystem"],
  ["/dev", "the device filesystem"],
];
const PSEUDO_ALLOWED = ["/dev/shm"];
/** statfs f_type of pseudo filesystems (linux/magic.h), for one mounted elsewhere. */
const PSEUDO_FS_TYPES = new Map<number, string>([
  [0x9fa0, "procfs"],
  [0x62656572, "sysfs"],
  [0x1cd1, "devpts"],
  [0x64626720, "debugfs"],
  [0x74726163, "tracefs"],
  [0x73636673, "securityfs"],
  [0x27e0eb, "cgroupfs"],
  [0x63677270, "cgroup2fs"],
  [0xcafe4a11, "bpffs"],
  [0x62656570, "configfs"],
  [0x6165676c, "pstorefs"],
  [0xde5e81e4, "efivarfs"],
]);

const under = (path: string, root: string): boolean => path === root || path.startsWith(root + sep);

/**
 * Checks, before anything is written, that `path` is (or can be made) a
 * folder Sigma may write into: not under /proc, /sys or /dev (after
 * symbolic links; nor on such a filesystem mounted elsewhere), not a file,
 * no file among the folders on the way, and writable (access(2): the
 * permission bits, and read-only filesystems even for root). `flag` names
 * where the path came from ("--out", "run.json: out") and starts the
 * message. Creates nothing.
 */
export function ensureWritableDir(path: string, flag: string): void {
  checkWritableDir(resolve(path), `${flag} ${path}`, flag);
}

/**
 * The same for a file Sigma will create or rewrite (a store, a tokenizer):
 * it must not be a folder or a device, and its folder must pass
 * ensureWritableDir.
 */
export function ensureWritableFile(path: string, flag: string): void {
  const abs = resolve(path);
  const what = `${flag} ${path}`;
  const hint = `give ${flag} the path of a file (its folder must exist or be creatable)`;
  const st = statOrNull(abs, what);
  if (st?.isDirectory()) throw new SigmaError(`${what} is a folder, not a file`, hint);
  if (st && !st.isFile()) throw new SigmaError(`${what} is not a regular file (a device, pipe or socket)`, hint);
  checkWritableDir(dirname(abs), what, flag);
  if (st) {
    try {
      accessSync(abs, constants.W_OK);
    } catch (e) {
      throw new SigmaError(`${what} is not writable: ${errnoMeaning(e)}`, `pass another ${flag}, or make the file writable`);
    }
  }
}

function statOrNull(path: string, what: string): ReturnType<typeof statSync> | null {
  try {
    return statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") {
      // A link whose target is missing would make a later mkdir fail with EEXIST.
      if (code === "ENOENT" && lstatSync(path, { throwIfNoEntry: false })?.isSymbolicLink()) throw new SigmaError(`${what}: ${path} is a symbolic link to nothing`, "remove the broken link or pass another path");
      return null;
    }
    throw new SigmaError(`${what} cannot be used: ${errnoMeaning(e)}`, "pass a folder you can read and write");
  }
}

function checkWritableDir(abs: string, what: string, flag: string): void {
  const hint = `pass a folder on an ordinary disk for ${flag}, e.g. runs/NAME`;
  // The nearest folder that exists; the rest will be created.
  let dir = abs;
  const missing: string[] = [];
  for (;;) {
    const st = statOrNull(dir, what);
    if (st) {
      if (!st.isDirectory()) throw new SigmaError(dir === abs ? `${what} is a file, not a folder` : `${what}: ${dir} is a file, not a folder`, hint);
      break;
    }
    const up = dirname(dir);
    if (up === dir) throw new SigmaError(`${what}: no folder on the path exists`, hint);
    missing.unshift(basename(dir));
    dir = up;
  }
  const real = realpathSync(dir);
  const target = join(real, ...missing);
  const via = target === abs ? "" : ` (it resolves to ${target})`;
  for (const [root, what2] of PSEUDO_ROOTS) {
    if (under(target, root) && !PSEUDO_ALLOWED.some((a) => under(target, a))) throw new SigmaError(`${what} is under ${root}${via}: that is ${what2}, not a place for files`, hint);
  }
  let fsType: number | null = null;
  try {
    fsType = Number(statfsSync(real).type);
  } catch {
    /* statfs is not available everywhere; the path checks above still hold */
  }
  const pseudo = fsType === null ? undefined : PSEUDO_FS_TYPES.get(fsType);
  if (pseudo) throw new SigmaError(`${what} is on a ${pseudo} filesystem${via}, not a place for files`, hint);
  try {
    accessSync(real, constants.W_OK | constants.X_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const where = real === abs ? "" : ` (the nearest existing folder, ${real}, refuses writes)`;
    const reason = code === "EROFS" ? "is on a read-only filesystem" : code === "EACCES" || code === "EPERM" ? "is not writable: permission denied" : `cannot be written: ${errnoMeaning(e)}`;
    throw new SigmaError(`${what} ${reason}${where}`, `pass a folder you can write to for ${flag}`);
  }
}
