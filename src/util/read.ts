/**
 * Reading files that Sigma finds inside folders (data shards, manifests, a
 * tokenizer beside a model, a run's own bookkeeping): only regular files. A
 * FIFO, a device or a folder where a file should be is an error naming it —
 * never a read that blocks forever or never ends. The open is non-blocking,
 * so a FIFO with no writer cannot hang it either; links are followed (reading
 * through one writes nothing).
 */
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";
import { SigmaError } from "./errors.js";

/** Opens `path` for reading and checks it is a regular file; returns the descriptor. */
export function openRegularFile(path: string, what: string, hint: string): number {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new SigmaError(`cannot read ${what} ${path}: ${code === "ENOENT" ? "it does not exist" : (code ?? (e as Error).message)}`, hint);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new SigmaError(`${what} ${path} is ${st.isDirectory() ? "a folder" : st.isFIFO() ? "a FIFO" : "not a regular file"}, not a file`, hint);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  return fd;
}

/**
 * The bytes of a regular file of at most `maxBytes` (default 1 GiB); with
 * `expect`, exactly `expect.bytes` as recorded by `expect.by` (e.g. state.json).
 */
export function readRegularFile(path: string, what: string, hint: string, maxBytes = 2 ** 30, expect?: { bytes: number; by: string }): Buffer {
  const fd = openRegularFile(path, what, hint);
  try {
    const size = fstatSync(fd).size;
    if (expect && size !== expect.bytes) throw new SigmaError(`${path} is truncated or altered: ${size} bytes, ${expect.by} records ${expect.bytes}`, hint);
    if (size > maxBytes) throw new SigmaError(`${what} ${path} is ${size} bytes, more than the ${maxBytes} it may be`, hint);
    const buf = Buffer.allocUnsafe(size);
    let off = 0;
    while (off < size) {
      const n = readSync(fd, buf, off, size - off, off);
      if (n === 0) break;
      off += n;
    }
    if (off !== size) throw new SigmaError(`${what} ${path} shrank while being read (${off} of ${size} bytes)`, hint);
    return buf;
  } catch (e) {
    if (e instanceof SigmaError) throw e;
    throw new SigmaError(`cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, hint);
  } finally {
    closeSync(fd);
  }
}

/**
 * A file the user named (a config, a tokenizer): a pipe or process
 * substitution is fine, but the read stops with an error past `maxBytes`
 * (`/dev/zero` or a runaway pipe never fills memory or hangs).
 */
export function readCapped(path: string, what: string, hint: string, maxBytes: number): Buffer {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new SigmaError(`cannot read ${what} ${path}: ${code === "ENOENT" ? "it does not exist" : (code ?? (e as Error).message)}`, hint);
  }
  try {
    if (fstatSync(fd).isDirectory()) throw new SigmaError(`${what} ${path} is a folder, not a file`, hint);
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const buf = Buffer.allocUnsafe(1 << 16);
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      total += n;
      if (total > maxBytes) throw new SigmaError(`${what} ${path} is more than ${maxBytes} bytes`, hint);
      chunks.push(buf.subarray(0, n));
    }
    return Buffer.concat(chunks, total);
  } catch (e) {
    if (e instanceof SigmaError) throw e;
    throw new SigmaError(`cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, hint);
  } finally {
    closeSync(fd);
  }
}
