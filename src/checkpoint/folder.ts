/**
 * A checkpoint as a folder of files written all-or-nothing:
 *
 *   <dir>/step-00000120/
 *     <file>…            e.g. model.safetensors, optimizer.safetensors, tokenizer.json
 *     state.json         written last: caller's JSON plus the size and sha256 of every other file
 *
 * Saving writes every file into `<dir>/.tmp-step-…-<pid>/`, fsyncs each one,
 * then renames the folder into place and fsyncs `<dir>`: a crash at any moment
 * leaves either no new checkpoint (a stale .tmp folder, ignored and cleaned up
 * later) or a complete one. Loading checks every file against the sizes and
 * hashes in state.json, so truncation or corruption after the fact is reported
 * with the file's name instead of surfacing as a confusing load error.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { SigmaError } from "../util/errors.js";
import { diskFull, fsyncDir, writeFileSynced } from "../util/fs.js";

export const STATE_FILE = "state.json";
const STEP_DIR = /^step-(\d{8,})$/;

export interface FileRecord {
  bytes: number;
  sha256: string;
}

export interface CheckpointState {
  /** Files of the checkpoint besides state.json, with their sizes and hashes. */
  files: Record<string, FileRecord>;
  [key: string]: unknown;
}

export const stepDirName = (step: number): string => `step-${String(step).padStart(8, "0")}`;

const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

/**
 * Writes a checkpoint for `step` under `dir` and returns its folder. `files`
 * are written in order (a test hook, `onFile`, runs after each one); state.json last.
 */
export function saveCheckpointFolder(
  dir: string,
  step: number,
  files: Map<string, Uint8Array | string>,
  state: Record<string, unknown>,
  onFile?: (name: string) => void,
): string {
  mkdirSync(dir, { recursive: true });
  const final = join(dir, stepDirName(step));
  const tmp = join(dir, `.tmp-${stepDirName(step)}-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp);
  const records: Record<string, FileRecord> = {};
  try {
    for (const [name, content] of files) {
      if (name === STATE_FILE || basename(name) !== name) throw new Error(`bad checkpoint file name "${name}"`);
      const bytes = typeof content === "string" ? Buffer.from(content, "utf8") : content;
      writeFileSynced(join(tmp, name), bytes);
      records[name] = { bytes: bytes.length, sha256: sha256(bytes) };
      onFile?.(name);
    }
    writeFileSynced(join(tmp, STATE_FILE), JSON.stringify({ ...state, files: records }, null, 1));
    fsyncDir(tmp);
    // Re-saving the same step replaces the old folder; the window between the
    // two renames only ever loses this step, never an older checkpoint.
    if (existsSync(final)) renameSync(final, `${tmp}.old`);
    renameSync(tmp, final);
    rmSync(`${tmp}.old`, { recursive: true, force: true });
    fsyncDir(dir);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    const err = e as NodeJS.ErrnoException;
    throw new SigmaError(`could not write checkpoint ${final}: ${err.message}`, diskFull(err) ? "the disk is full: free space and retry; older checkpoints are untouched" : undefined);
  }
  return final;
}

/** Complete checkpoints under `dir`, oldest first, as {step, path}. */
export function listCheckpoints(dir: string): { step: number; path: string }[] {
  if (!existsSync(dir)) return [];
  const out: { step: number; path: string }[] = [];
  for (const name of readdirSync(dir)) {
    const m = STEP_DIR.exec(name);
    if (m && existsSync(join(dir, name, STATE_FILE))) out.push({ step: Number(m[1]), path: join(dir, name) });
  }
  return out.sort((a, b) => a.step - b.step);
}

/** Keeps the newest `keep` checkpoints and removes older ones and leftover temporary folders. */
export function pruneCheckpoints(dir: string, keep: number): void {
  const all = listCheckpoints(dir);
  for (const c of all.slice(0, Math.max(0, all.length - keep))) rmSync(c.path, { recursive: true, force: true });
  for (const name of readdirSync(dir)) {
    // Another live process's temp folder ends in its pid; ours and dead ones go.
    const m = /^\.tmp-step-\d+-(\d+)(\.old)?$/.exec(name);
    if (m && !isAlive(Number(m[1]))) rmSync(join(dir, name), { recursive: true, force: true });
  }
}

function isAlive(pid: number): boolean {
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Resolves a path to one checkpoint folder: a folder with state.json is
 * itself; a folder of checkpoints gives its newest complete one.
 */
export function resolveCheckpoint(path: string): string {
  if (!existsSync(path)) throw new SigmaError(`checkpoint ${path} does not exist`, "pass a step-NNNNNNNN folder or the folder that holds them (a run's checkpoints/)");
  if (!statSync(path).isDirectory()) throw new SigmaError(`checkpoint ${path} is a file, not a checkpoint folder`, "pass the step-NNNNNNNN folder that holds state.json");
  if (existsSync(join(path, STATE_FILE))) return path;
  const sub = existsSync(join(path, "checkpoints")) ? join(path, "checkpoints") : path;
  const all = listCheckpoints(sub);
  if (all.length === 0) throw new SigmaError(`${path} holds no complete checkpoint (no step-*/state.json)`, "train first (`sigma train`), or pass a step-NNNNNNNN folder");
  return all[all.length - 1]!.path;
}

/** A verified checkpoint: its state and a reader for its files (each checked against state.json). */
export interface LoadedFolder {
  path: string;
  state: CheckpointState;
  read(name: string): Buffer;
}

/** Opens a checkpoint folder and checks that state.json is sound; files are verified as they are read. */
export function openCheckpointFolder(path: string): LoadedFolder {
  const dir = resolveCheckpoint(path);
  const statePath = join(dir, STATE_FILE);
  const hint = `the checkpoint is damaged; use an earlier one${siblings(dir)}`;
  let state: CheckpointState;
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(readFileSync(statePath));
    state = JSON.parse(text) as CheckpointState;
  } catch (e) {
    throw new SigmaError(`${statePath} is not readable JSON (${(e as Error).message})`, hint);
  }
  if (typeof state !== "object" || state === null || typeof state.files !== "object" || state.files === null) {
    throw new SigmaError(`${statePath} has no "files" table`, hint);
  }
  return {
    path: dir,
    state,
    read(name: string): Buffer {
      const rec = state.files[name];
      const file = join(dir, name);
      if (!rec) throw new SigmaError(`${statePath} does not list ${name}`, "the checkpoint was written by another tool or version");
      let buf: Buffer;
      try {
        buf = readFileSync(file);
      } catch (e) {
        throw new SigmaError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, hint);
      }
      if (buf.length !== rec.bytes) throw new SigmaError(`${file} is truncated or altered: ${buf.length} bytes, state.json records ${rec.bytes}`, hint);
      if (sha256(buf) !== rec.sha256) throw new SigmaError(`${file} is corrupted: its sha256 does not match the one in state.json`, hint);
      return buf;
    },
  };
}

function siblings(dir: string): string {
  const parent = join(dir, "..");
  const others = listCheckpoints(parent).filter((c) => c.path !== dir);
  return others.length ? ` (${others.map((c) => basename(c.path)).join(", ")} in ${parent})` : "";
}
