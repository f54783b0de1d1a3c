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
import { existsSync, lstatSync, mkdirSync, readdirSync, renameSync, rmdirSync, rmSync, statSync, unlinkSync, type Stats } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { z } from "zod";
import { SigmaError } from "../util/errors.js";
import { parseWithSchema } from "../util/json.js";
import { otherProcessAlive as isAlive } from "../util/process.js";
import { readRegularFile } from "../util/read.js";
import { jsonErrorText, parseJsonStrict } from "../util/strict-json.js";
import { diskFull, fsyncDir, writeFileSynced } from "../util/fs.js";

export const STATE_FILE = "state.json";
const STEP_DIR = /^step-(\d{8,13})$/;
/** A temporary folder of a save in progress (or of one that died): `.tmp-step-N-<pid>`, `.old` while replacing step N. */
const TMP_DIR = /^\.tmp-step-(\d{8,13})-(\d{1,10})(\.old)?$/;
/** The largest step a checkpoint may carry: far beyond any run, and the optimizer's 32-bit step count (step + 1) still fits. */
export const MAX_STEP = 2_000_000_000;
/** File names a checkpoint may hold: one plain name, no folders, no dot files. */
export const CHECKPOINT_FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** Largest file a checkpoint records (2^48 bytes: 256 TiB). */
const MAX_FILE_BYTES = 2 ** 48;

/** A sha256 as the hex Sigma writes. */
export const Sha256Schema = z.string().regex(/^[0-9a-f]{64}$/, "must be 64 lowercase hex digits");

export const FileRecordSchema = z
  .object({
    bytes: z.number().int().min(0).max(MAX_FILE_BYTES),
    sha256: Sha256Schema,
  })
  .strict();
export type FileRecord = z.infer<typeof FileRecordSchema>;

/** A step number read from a file: an integer in [0, MAX_STEP]. */
export const StepSchema = z.number().int().min(0).max(MAX_STEP);

/**
 * What every checkpoint's state.json has: the table of its other files and,
 * for all but bare model folders, the training step. Callers parse the rest
 * of it with their own schema (src/train/checkpoint.ts for training runs).
 */
export const FilesSchema = z.record(
  z.string().regex(CHECKPOINT_FILE_NAME, "is not a plain file name").refine((n) => n !== STATE_FILE, "state.json cannot list itself"),
  FileRecordSchema,
);
export const CheckpointStateSchema = z.object({ files: FilesSchema, step: StepSchema.optional() }).passthrough();
export type CheckpointState = z.infer<typeof CheckpointStateSchema>;


/** What readers of any checkpoint (training, extracted, upcycled, imported) use from state.json besides the files. */
const ProvenanceSchema = z
  .object({
    step: StepSchema.optional(),
    tokenizer: z.object({ sha256: Sha256Schema }).passthrough().optional(),
    // A training checkpoint's config: where its data is, and how the run evaluated (sigma eval repeats it).
    config: z
      .object({
        data: z.object({ dir: z.string().min(1).max(4096) }).passthrough().optional(),
        batchSize: z.number().int().min(1).max(1e6).optional(),
        seed: z.number().int().safe().optional(),
        eval: z.object({ batches: z.number().int().min(1).max(1e6) }).passthrough().optional(),
      })
      .passthrough()
      .optional(),
    dataDir: z.string().min(1).max(4096).optional(),
    store: z.object({ path: z.string().min(1).max(4096), storeId: z.string().min(1).max(128) }).strict().optional(),
  })
  .passthrough();

export interface Provenance {
  /** Training step (0 when not recorded). */
  step: number;
  /** sha256 of the tokenizer the model was trained with, when recorded. */
  tokenizerSha256: string | null;
  /** The data folder it was trained on, when recorded (read only, for evaluation). */
  dataDir: string | null;
  /** With an expert store: its file and id. */
  store: { path: string; storeId: string } | null;
  /** The training run's batch size, seed and evaluation batches, when recorded (train/evaluate.ts derives how it evaluated). */
  run: { batchSize: number; seed: number; evalBatches: number } | null;
}

/** The validated provenance fields of an opened checkpoint's state.json. */
export function readProvenance(f: LoadedFolder): Provenance {
  const p = parseWithSchema(ProvenanceSchema, f.state, join(f.path, STATE_FILE), "the checkpoint is damaged or was edited; use an earlier one");
  const c = p.config;
  const run = c?.eval && c.batchSize !== undefined && c.seed !== undefined ? { batchSize: c.batchSize, seed: c.seed, evalBatches: c.eval.batches } : null;
  return { step: p.step ?? 0, tokenizerSha256: p.tokenizer?.sha256 ?? null, dataDir: c?.data?.dir ?? p.dataDir ?? null, store: p.store ?? null, run };
}

/** The folder name of a step; the step must be a validated integer (never a string from a file). */
export function stepDirName(step: number): string {
  if (!Number.isSafeInteger(step) || step < 0 || step > MAX_STEP) throw new SigmaError(`checkpoint step ${String(step)} is not an integer in [0, ${MAX_STEP}]`);
  return `step-${String(step).padStart(8, "0")}`;
}

const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

/** The names in a folder; none when it is missing or unreadable. */
const entries = (dir: string): string[] => {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
};

const lstatOrNull = (path: string): Stats | null => {
  try {
    return lstatSync(path);
  } catch {
    return null;
  }
};

/** `dir/name`, checked to be a direct child of `dir` (a name read from a file can never point elsewhere). */
export function childPath(dir: string, name: string): string {
  const p = resolve(dir, name);
  if (!CHECKPOINT_FILE_NAME.test(name) && !STEP_DIR.test(name) && !TMP_DIR.test(name)) throw new SigmaError(`"${name}" is not a plain file name`, "a checkpoint holds plain file names only");
  if (dirname(p) !== resolve(dir)) throw new SigmaError(`"${name}" would leave the folder ${dir}`);
  return p;
}

/** Throws when `path` is a symbolic link: Sigma never writes or deletes through a link inside a run or checkpoint folder. */
export function refuseSymlink(path: string): void {
  if (lstatOrNull(path)?.isSymbolicLink()) {
    throw new SigmaError(`${path} is a symbolic link`, "Sigma does not follow links inside a run or checkpoint folder: remove the link (or point --out at the real folder)");
  }
}

/** Removes a checkpoint folder so that it stops counting as complete first: state.json goes before the rest. */
function removeCheckpointDir(path: string): void {
  const st = lstatOrNull(path);
  if (!st) return;
  if (!st.isDirectory()) {
    unlinkSync(path); // a link or a stray file: the link itself, never its target
    return;
  }
  const state = join(path, STATE_FILE);
  if (lstatOrNull(state)) {
    unlinkSync(state);
    fsyncDir(path);
  }
  rmSync(path, { recursive: true, force: true }); // rmSync never follows links inside
}

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
  /**
   * Files other processes already wrote and fsynced, in `dir` (same
   * filesystem), with their records: renamed into the folder before
   * state.json, so they appear with it or not at all (an expert-parallel
   * run's shard files, src/train/checkpoint.ts).
   */
  adopted?: Map<string, { path: string; record: FileRecord }>,
): string {
  const name = stepDirName(step);
  try {
    mkdirSync(dir, { recursive: true });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new SigmaError(`could not create the checkpoint folder ${dir}: ${err.message}`, diskFull(err) ? "the disk is full: free space and retry" : "check that the path is a writable folder");
  }
  recoverCheckpoints(dir);
  const final = childPath(dir, name);
  const tmp = childPath(dir, `.tmp-${name}-${process.pid}`);
  refuseSymlink(final);
  const records: Record<string, FileRecord> = {};
  try {
    removeCheckpointDir(tmp);
    mkdirSync(tmp);
    for (const [file, content] of files) {
      if (file === STATE_FILE || !CHECKPOINT_FILE_NAME.test(file)) throw new Error(`bad checkpoint file name "${file}"`);
      const bytes = typeof content === "string" ? Buffer.from(content, "utf8") : content;
      writeFileSynced(childPath(tmp, file), bytes, "wx");
      records[file] = { bytes: bytes.length, sha256: sha256(bytes) };
      onFile?.(file);
    }
    for (const [file, { path, record }] of adopted ?? []) {
      if (file === STATE_FILE || !CHECKPOINT_FILE_NAME.test(file) || Object.hasOwn(records, file)) throw new Error(`bad checkpoint file name "${file}"`);
      if (dirname(resolve(path)) !== resolve(dir)) throw new Error(`an adopted file must be in ${dir}: ${path}`);
      renameSync(path, childPath(tmp, file));
      records[file] = record;
      onFile?.(file);
    }
    // state.json marks the folder complete, so it appears whole or not at all (a torn one would list as complete).
    writeFileSynced(join(tmp, `${STATE_FILE}.tmp`), JSON.stringify({ ...state, step, files: records }, null, 1), "wx");
    renameSync(join(tmp, `${STATE_FILE}.tmp`), join(tmp, STATE_FILE));
    fsyncDir(tmp);
    // Re-saving the same step replaces the old folder. A crash between the two
    // renames leaves both complete folders under temporary names; the next
    // save or listing recovers the new one (recoverCheckpoints), so even with
    // keep: 1 a complete checkpoint survives.
    if (lstatOrNull(final)) renameSync(final, `${tmp}.old`);
    renameSync(tmp, final);
    fsyncDir(dir);
    removeCheckpointDir(`${tmp}.old`);
  } catch (e) {
    try {
      if (!lstatOrNull(final) && lstatOrNull(`${tmp}.old`)) renameSync(`${tmp}.old`, final);
      removeCheckpointDir(tmp);
    } catch {
      /* the next save recovers or cleans what is left */
    }
    if (e instanceof SigmaError) throw e;
    const err = e as NodeJS.ErrnoException;
    throw new SigmaError(`could not write checkpoint ${final}: ${err.message}`, diskFull(err) ? "the disk is full: free space and retry; older checkpoints are untouched" : undefined);
  }
  return final;
}

interface Found {
  step: number;
  path: string;
}

/** Temporary folders of dead saves that hold a complete checkpoint whose step folder is missing (new one preferred). */
function recoverable(dir: string, names: string[], present: Set<number>): Found[] {
  const best = new Map<number, { path: string; old: boolean }>();
  for (const name of names) {
    const m = TMP_DIR.exec(name);
    if (!m) continue;
    const step = Number(m[1]);
    const old = m[3] !== undefined;
    const path = join(dir, name);
    if (present.has(step) || isAlive(Number(m[2])) || !lstatOrNull(path)?.isDirectory() || !lstatOrNull(join(path, STATE_FILE))?.isFile()) continue;
    const prev = best.get(step);
    if (!prev || (prev.old && !old)) best.set(step, { path, old });
  }
  return [...best].map(([step, { path }]) => ({ step, path }));
}

/**
 * Complete checkpoints under `dir`, oldest first, as {step, path}: real
 * step-N folders with a state.json (links are not followed), and the
 * complete leftovers of a save that died while replacing its step.
 */
export function listCheckpoints(dir: string): Found[] {
  const names = entries(dir);
  const out: Found[] = [];
  for (const name of names) {
    const m = STEP_DIR.exec(name);
    const path = join(dir, name);
    if (m && lstatOrNull(path)?.isDirectory() && lstatOrNull(join(path, STATE_FILE))?.isFile()) out.push({ step: Number(m[1]), path });
  }
  out.push(...recoverable(dir, names, new Set(out.map((c) => c.step))));
  return out.sort((a, b) => a.step - b.step);
}

/** Renames the complete leftovers of saves that died mid-replacement back to their step folders. */
export function recoverCheckpoints(dir: string): void {
  const names = entries(dir);
  const present = new Set(names.map((n) => STEP_DIR.exec(n)).filter((m) => m !== null).map((m) => Number(m[1])));
  for (const c of recoverable(dir, names, present)) renameSync(c.path, childPath(dir, stepDirName(c.step)));
}

/**
 * Temporary folders of saves under `dir` that hold a state.json, whatever
 * their process: a run's complete checkpoint may sit in one (a save killed
 * between its two renames whose pid was reused since).
 */
export function completeLeftovers(dir: string): string[] {
  const names = entries(dir);
  return names.filter((n) => TMP_DIR.test(n) && lstatOrNull(join(dir, n))?.isDirectory() && lstatOrNull(join(dir, n, STATE_FILE))?.isFile()).map((n) => join(dir, n));
}

/**
 * Removes a run's checkpoints from `dir` by name: the step folders and the
 * temporary folders of its saves (not those of a live process), state.json
 * first; anything else in the folder stays, and the folder goes only if empty.
 */
export function removeRunCheckpoints(dir: string): void {
  const names = entries(dir);
  for (const name of names) {
    const tmp = TMP_DIR.exec(name);
    if (STEP_DIR.test(name) || (tmp && !isAlive(Number(tmp[2])))) removeCheckpointDir(join(dir, name));
  }
  fsyncDir(dir);
  try {
    rmdirSync(dir);
  } catch {
    /* not empty: what the user put there stays */
  }
}

/**
 * Keeps the newest `keep` checkpoints and removes older ones (state.json
 * first, so a half-deleted folder never lists as complete) and the
 * temporary folders of dead saves.
 */
export function pruneCheckpoints(dir: string, keep: number): void {
  recoverCheckpoints(dir);
  const all = listCheckpoints(dir);
  for (const c of all.slice(0, Math.max(0, all.length - Math.max(1, keep)))) removeCheckpointDir(c.path);
  for (const name of readdirSync(dir)) {
    // Another live process's temp folder ends in its pid; ours and dead ones go.
    const m = TMP_DIR.exec(name);
    if (m && !isAlive(Number(m[2]))) removeCheckpointDir(join(dir, name));
  }
  fsyncDir(dir);
}


/**
 * Resolves a path to one checkpoint folder: a folder with state.json is
 * itself; a folder of checkpoints (or a run folder with checkpoints/) gives
 * its newest complete one.
 */
export function resolveCheckpoint(path: string): string {
  if (!existsSync(path)) throw new SigmaError(`checkpoint ${path} does not exist`, "pass a step-NNNNNNNN folder or the folder that holds them (a run's checkpoints/)");
  if (!statSync(path).isDirectory()) throw new SigmaError(`checkpoint ${path} is a file, not a checkpoint folder`, "pass the step-NNNNNNNN folder that holds state.json");
  if (lstatOrNull(join(path, STATE_FILE))) return path;
  const sub = lstatOrNull(join(path, "checkpoints"))?.isDirectory() ? join(path, "checkpoints") : path;
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

/** Largest state.json read (the config and tables are a few KiB; this leaves room for huge models). */
const MAX_STATE_BYTES = 64 * 2 ** 20;

/**
 * Reads a file of a checkpoint folder: a regular file, not a link (Sigma
 * never reads, writes or deletes through a link inside a checkpoint), of the
 * size state.json records when given.
 */
function readCheckpointFile(file: string, bytes: number | null, max: number, hint: string): Buffer {
  if (lstatOrNull(file)?.isSymbolicLink()) throw new SigmaError(`${file} is a symbolic link`, "a checkpoint holds regular files only: copy the real file in");
  return readRegularFile(file, "checkpoint file", hint, max, bytes === null ? undefined : { bytes, by: "state.json" });
}

/** Opens a checkpoint folder and checks that state.json is sound; files are verified as they are read. */
export function openCheckpointFolder(path: string): LoadedFolder {
  const dir = resolveCheckpoint(path);
  const statePath = join(dir, STATE_FILE);
  const hint = `the checkpoint is damaged; use an earlier one${siblings(dir)}`;
  let raw: unknown;
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(readCheckpointFile(statePath, null, MAX_STATE_BYTES, hint));
    raw = parseJsonStrict(text);
  } catch (e) {
    if (e instanceof SigmaError) throw e;
    throw new SigmaError(`${statePath} is not readable JSON (${jsonErrorText(e)})`, hint);
  }
  const state = parseWithSchema(CheckpointStateSchema, raw, statePath, hint);
  return {
    path: dir,
    state,
    read(name: string): Buffer {
      const rec = Object.hasOwn(state.files, name) ? state.files[name] : undefined;
      if (!rec) throw new SigmaError(`${statePath} does not list ${name}`, "the checkpoint was written by another tool or version");
      const file = childPath(dir, name);
      const buf = readCheckpointFile(file, rec.bytes, Number.MAX_SAFE_INTEGER, hint);
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
